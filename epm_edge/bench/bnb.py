"""bitsandbytes int8 / nf4 variants of the merged model, for the transformers runtime.

The merged fp32 checkpoint is quantized once and saved as a pre-quantized checkpoint (its
config.json carries the `quantization_config`), cached under the epm-edge home. The plain
TransformersScorer then loads it like any HF dir, so load time, memory and disk size are those
of the quantized model, as a deployment would see them.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from epm_edge.model_store import home, sha256_file
from epm_edge.runtime.provenance import SIDECAR, read_sidecar, write_sidecar

MODES = ("int8", "nf4")


def _config(mode: str):
    import torch
    from transformers import BitsAndBytesConfig

    if mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    if mode == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    raise ValueError(f"unknown bitsandbytes mode '{mode}' (choose from {', '.join(MODES)})")


def _digest(merged: Path) -> str:
    """Content hash of the merged checkpoint: a retrained model gets a fresh quantized copy."""
    h = hashlib.sha256()
    for f in sorted(merged.glob("*.json")) + sorted(merged.glob("*.safetensors")):
        h.update(f.name.encode() + sha256_file(f).encode())
    return h.hexdigest()[:16]


def prepare(merged: str | Path, mode: str) -> Path:
    """The pre-quantized checkpoint of `merged` in `mode`, built on first use."""
    merged = Path(merged)
    target = home() / "bnb" / f"{_digest(merged)}-{mode}"
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(merged, quantization_config=_config(mode), device_map="cpu",
                                                 dtype=torch.float32)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(merged).save_pretrained(tmp)
    if (merged / SIDECAR).exists():
        write_sidecar(tmp, {**read_sidecar(merged), "bitsandbytes": mode})
    shutil.rmtree(target, ignore_errors=True)
    tmp.replace(target)
    return target
