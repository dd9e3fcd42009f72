"""Saving trained adapters: 16-bit safetensors plus the provenance that export checks.

The provenance sidecar (`runtime.provenance.SIDECAR`) records the prompt version and base sha256, which
`epm-edge export` verifies against the base it merges into, plus data and hyperparameters.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from epm_edge import __version__, prompt
from epm_edge.export.merge import BaseModel
from epm_edge.runtime.provenance import write_sidecar


def _hardware() -> str:
    """What the model card's training time was measured on."""
    import torch

    from epm_edge.doctor import cpu_info

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{cpu_info()[0]}, {os.cpu_count()} cores, torch {torch.get_num_threads()} threads"


def save_adapter(model, out_dir: Path, base: BaseModel, stage: str, **record) -> Path:
    """Write adapter_config.json, adapter_model.safetensors (fp16) and the provenance JSON."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    # fp16 halves the file (the r=32 adapter is 38 MB in fp32) and keeps more mantissa than bf16
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in get_peft_model_state_dict(model).items()}
    save_file(state, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    lora = model.peft_config["default"]
    lora.base_model_name_or_path = base.name  # peft writes the local dir it loaded from otherwise
    lora.save_pretrained(str(out_dir))
    modules = lora.target_modules  # peft resolves "all-linear" to module paths; a regex stays a string
    modules = modules if isinstance(modules, str) else sorted({m.rsplit(".", 1)[-1] for m in modules})
    shape = {"rank": lora.r, "alpha": lora.lora_alpha, "dropout": lora.lora_dropout, "target_modules": modules}
    provenance = {"stage": stage, "lora": shape, "prompt_version": prompt.PROMPT_VERSION,
                  "base": base.name, "base_sha256": base.sha256, "epm_edge_version": __version__,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "hardware": _hardware(), **record}
    write_sidecar(out_dir, provenance)
    return out_dir
