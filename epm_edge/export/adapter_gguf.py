"""One deployable GGUF from a trained adapter: merge into its base, convert, quantize.

This is how a trained adapter (the shipped default model, or any `epm-edge train` output passed
as `--model`) becomes something llama.cpp runs; the result is cached under
`model_store.home()/adapters/`, keyed by the adapter's sha256, so it is built once per adapter.
The decision thresholds the adapter records for that quant type (chosen on valid splits, see
`adapter_thresholds`) are written into the GGUF.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from epm_edge import __version__, model_store
from epm_edge.console import err
from epm_edge.errors import ModelError
from epm_edge.model_settings import adapter_file_cuts
from epm_edge.runtime.provenance import read_sidecar


def gguf_metadata(prov) -> dict:
    """`epm.*` keys every GGUF of an export carries (see runtime.llamacpp for the reader)."""
    # "none" rather than "": GGUF writers drop empty strings, and the key should always be there.
    return {"prompt_version": prov.prompt_version, "base_sha256": prov.base_sha256,
            "adapter_sha256": prov.adapter_sha256 or "none", "version": __version__}


def adapter_thresholds(adapter: Path, quant: str) -> dict[str, float]:
    """The GGUF keys of the cuts `eval --save-threshold` stored for this quant type."""
    return adapter_file_cuts(read_sidecar(adapter), quant)


def cached_gguf(adapter: Path, quant: str) -> Path:
    """The adapter's GGUF of type `quant`, built on first use (about a minute) and cached."""
    from epm_edge.export.merge import adapter_sha256

    target = model_store.home() / "adapters" / f"{Path(adapter).name}-{adapter_sha256(adapter)[:12]}.{quant}.gguf"
    if not target.exists():
        err.print(f"building {target.name} from {adapter} (once; cached in {target.parent})")
        build_gguf(adapter, target, quant)
    else:  # the key covers the weights only: a threshold stored later (eval --save-threshold) is stamped in
        from epm_edge.export.gguf_metadata import read_metadata, set_metadata

        stamped = read_metadata(target)
        changed = {k: v for k, v in adapter_thresholds(adapter, quant).items()
                   if stamped.get(k) is None or abs(stamped[k] - v) > 1e-6}
        if changed:
            set_metadata(target, changed)
    return target


def build_gguf(adapter: Path, target: Path, quant: str) -> Path:
    try:
        from epm_edge.export import gguf_convert, merge, quantize
        import torch  # noqa: F401  (merging needs it; say so before any work starts)
    except ModuleNotFoundError as e:
        raise ModelError(f"{adapter}: turning an adapter into a GGUF needs the build extra ({e.name} is missing): "
                         "pip install 'epm-edge[build]', or pass --model FILE.gguf") from None
    base = merge.resolve_base(None, Path(adapter))  # the base it was trained on
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        tmp = Path(tmp)
        prov = merge.merge(base, Path(adapter), tmp / "merged")
        f16 = tmp / "model-F16.gguf"
        gguf_convert.convert(tmp / "merged", f16, source_gguf=base.gguf,
                             metadata={**gguf_metadata(prov), "quant": "F16"})
        built = quantize.quantize(f16, tmp / "model.gguf", quant)
        thresholds = adapter_thresholds(adapter, quant)
        if thresholds:
            gguf_convert.set_metadata(built, thresholds)
        built.replace(target)
    return target
