"""The JSON provenance sidecar of model dirs (merged HF checkpoints, ONNX variants).

GGUF files carry the same facts as `epm.*` metadata keys instead.
"""

from __future__ import annotations

import json
from pathlib import Path

from epm_edge.errors import ModelError

SIDECAR = "epm_edge.json"


def read_sidecar(model_dir: Path) -> dict:
    """Provenance of a model dir ({} when it has none)."""
    path = Path(model_dir) / SIDECAR
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}: corrupt provenance file ({e})") from None


def write_sidecar(model_dir: Path, data: dict) -> None:
    path = Path(model_dir) / SIDECAR
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
