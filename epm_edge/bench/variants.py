"""What to benchmark: the variants an export dir holds, plus the TF-IDF baseline.

Export dir layout (from `epm-edge export`): <dir>/merged/ (HF model), <dir>/onnx/<name>/,
<dir>/gguf/*.gguf. The merged model also gives the bitsandbytes variants, quantized at load.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field
from pathlib import Path

from epm_edge.errors import EpmError, ModelError
from epm_edge.export.imatrix import FILE_NAME as IMATRIX, PROVENANCE_KEY
from epm_edge.export.pipeline import LORA_BASE_PREFIX, LORA_FILE


@dataclass
class Variant:
    name: str  # e.g. gguf-q4_k_m, onnx-int8, hf-fp32, bnb-nf4, tfidf
    runtime: str  # llamacpp | onnx | transformers | features (the feature matcher alone) | tfidf
    path: str | None = None
    options: dict = field(default_factory=dict)  # runtime-specific, e.g. {"bnb": "nf4"}

    def as_dict(self) -> dict:
        return asdict(self)


def disk_size(path: str | Path | None) -> int | None:
    """Bytes of a file, or of all files under a directory."""
    if path is None:
        return None
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def variant_size(v: Variant) -> int | None:
    """Bytes on disk of a variant's model: with a runtime LoRA, the base and the adapter."""
    size = disk_size(v.path)
    lora = v.options.get("lora")
    return size + disk_size(lora) if size is not None and lora else size


def gguf_name(path: Path) -> str:
    """Variant name from the GGUF header (e.g. gguf-q4_k_m, gguf-q4_k_m-imatrix when quantized with an
    importance matrix); file names are not trusted."""
    import llama_cpp as lc

    from epm_edge.runtime.llamacpp import load_model, read_gguf_metadata, weight_type

    model = load_model(path, vocab_only=True)  # header + vocab only: fast
    try:
        metadata = read_gguf_metadata(model)
    finally:
        lc.llama_model_free(model)
    quant = weight_type(metadata)
    if quant is None:
        return f"gguf-{path.stem.lower()}"
    return f"gguf-{quant.lower()}{'-imatrix' if 'epm.' + PROVENANCE_KEY in metadata else ''}"


def _gguf_variants(files: list[Path]) -> list[Variant]:
    out, seen = [], set()
    for f in sorted(files, key=lambda f: -f.stat().st_size):  # highest precision first
        name = gguf_name(f)
        if name in seen:  # two files of one quant type: tell them apart by file name
            name = f"gguf-{f.stem.lower()}"
        seen.add(name)
        out.append(Variant(name, "llamacpp", str(f)))
    return out


def discover(model: str | Path) -> list[Variant]:
    """All variants of an export dir (or of a single .gguf / ONNX / HF dir), then the baseline."""
    root = Path(model)
    if not root.exists():
        raise ModelError(f"{root}: model or export dir not found")
    found: list[Variant] = []
    if root.suffix == ".gguf":
        found = _gguf_variants([root])
    elif (root / "config.json").exists():
        found = [Variant("hf-fp32", "transformers", str(root))]
    elif any(root.glob("*.onnx")):
        found = [Variant(f"onnx-{root.name}", "onnx", str(root))]
    else:
        merged = root / "merged"
        if (merged / "config.json").exists():
            found += [Variant("hf-fp32", "transformers", str(merged)),
                      Variant("bnb-int8", "transformers", str(merged), {"bnb": "int8"}),
                      Variant("bnb-nf4", "transformers", str(merged), {"bnb": "nf4"})]
        onnx_dirs = [d for d in (root / "onnx").glob("*") if d.is_dir() and any(d.glob("*.onnx"))]
        found += [Variant(f"onnx-{d.name}", "onnx", str(d)) for d in sorted(onnx_dirs, key=lambda d: -disk_size(d))]
        gguf_files = [f for f in (root / "gguf").glob("*.gguf") if f.name not in (IMATRIX, LORA_FILE)]
        found += _gguf_variants([f for f in gguf_files if not f.name.startswith(LORA_BASE_PREFIX)])
        lora = root / "gguf" / LORA_FILE  # runtime LoRA: each base file with the adapter applied as it loads
        if lora.exists():
            found += [Variant(f"{v.name}-lora", "llamacpp", v.path, {"lora": str(lora)})
                      for v in _gguf_variants([f for f in gguf_files if f.name.startswith(LORA_BASE_PREFIX)])]
        if not found:
            raise ModelError(f"{root}: no merged/, onnx/<variant>/ or gguf/*.gguf inside; "
                             "pass the output dir of `epm-edge export`")
    features = root / "features"  # an export of an adapter with a feature stage: its matcher alone
    if (features / "matcher.txt").exists():
        found.append(Variant("features", "features", str(features)))
    return found + [Variant("tfidf", "tfidf")]


def select(variants: list[Variant], patterns: list[str] | None) -> list[Variant]:
    """Variants matching any of the names or shell patterns (gguf-q4*), in discovery order."""
    if not patterns:
        return variants
    for p in patterns:
        if not any(fnmatch.fnmatch(v.name, p) for v in variants):
            raise EpmError(f"--variants: '{p}' matches none of: {', '.join(v.name for v in variants)}")
    return [v for v in variants if any(fnmatch.fnmatch(v.name, p) for p in patterns)]
