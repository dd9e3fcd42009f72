"""Model extrapolation (ExPO, Zheng et al. 2024): move an RL adapter further along the direction RL took it.

Per LoRA module, with D = (lora_alpha / r) B A the weight change of an adapter:
    D_out = D_rl + alpha (D_rl - D_sft) = (1 + alpha) D_rl - alpha D_sft
alpha 0 gives the RL adapter back. D_out has rank up to r_rl + r_sft; a truncated SVD brings it back to
the RL adapter's rank, so the result loads, merges and ships like any adapter of that shape.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from epm_edge.errors import ModelError
from epm_edge.export.merge import ADAPTER_WEIGHTS
from epm_edge.model_settings import without_cuts
from epm_edge.runtime.provenance import read_sidecar, write_sidecar

WEIGHTS = ADAPTER_WEIGHTS[0]  # safetensors: the form `train` writes and the one read here


def _lora(adapter: Path) -> tuple[dict, dict, dict]:
    """(weights, adapter_config, provenance) of an adapter dir."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    for name in ("adapter_config.json", WEIGHTS):
        if not (adapter / name).is_file():
            raise ModelError(f"{adapter}: not a LoRA adapter dir ({name} missing)")
    try:
        config = json.loads((adapter / "adapter_config.json").read_text())
        weights = load_file(str(adapter / WEIGHTS))
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError) as e:
        raise ModelError(f"{adapter}: unreadable adapter ({e})") from None
    return weights, config, read_sidecar(adapter)


def _delta(weights: dict, config: dict, key_a: str):
    scale = config["lora_alpha"] / config["r"]
    return scale * (weights[key_a.replace("lora_A", "lora_B")].float() @ weights[key_a].float())


def extrapolate(sft: Path, rl: Path, alpha: float, out: Path) -> dict:
    """Write the extrapolated adapter to `out`; returns its record (also stored in the provenance)."""
    import torch
    from safetensors.torch import save_file

    (w_sft, c_sft, p_sft), (w_rl, c_rl, p_rl) = _lora(Path(sft)), _lora(Path(rl))
    if w_sft.keys() != w_rl.keys():
        raise ModelError(f"{sft} and {rl} adapt different modules: extrapolation needs one module set")
    for field in ("base_sha256", "prompt_version"):
        if p_sft.get(field) != p_rl.get(field):
            raise ModelError(f"{sft} and {rl} differ in {field} ({p_sft.get(field)} vs {p_rl.get(field)})")
    rank, scale = c_rl["r"], c_rl["lora_alpha"] / c_rl["r"]
    state, dropped = {}, 0.0
    for key_a in sorted(k for k in w_rl if "lora_A" in k):
        d_out = (1 + alpha) * _delta(w_rl, c_rl, key_a) - alpha * _delta(w_sft, c_sft, key_a)
        u, s, vh = torch.linalg.svd(d_out / scale, full_matrices=False)  # B A, without the LoRA scale
        dropped = max(dropped, (s[rank:].norm() / s.norm()).item())
        root = s[:rank].sqrt()
        state[key_a.replace("lora_A", "lora_B")] = (u[:, :rank] * root).half().contiguous()
        state[key_a] = (root[:, None] * vh[:rank]).half().contiguous()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / WEIGHTS), metadata={"format": "pt"})
    shutil.copyfile(Path(rl) / "adapter_config.json", out / "adapter_config.json")
    record = {"alpha": alpha, "sft": str(sft), "rl": str(rl), "rank": rank, "svd_dropped_max": round(dropped, 6)}
    # thresholds belong to the weights they were tuned on: the new adapter gets its own from `eval`
    write_sidecar(out, {**without_cuts(p_rl), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "extrapolation": record})
    return record
