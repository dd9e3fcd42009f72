"""One deployable GGUF from a trained adapter: merge into the bundled base, convert, quantize.

This is how a trained adapter (the shipped default model, or any `epm-edge train` output passed
as `--model`) becomes something llama.cpp runs; the result is cached under
`model_store.home()/adapters/`, keyed by the adapter's sha256, so it is built once per adapter.
The decision threshold the adapter records for that quant type (chosen on valid splits, see
`adapter_threshold`) is written into the GGUF.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from epm_edge import __version__, model_store
from epm_edge.console import err
from epm_edge.errors import ModelError
from epm_edge.runtime.provenance import read_sidecar


def gguf_metadata(prov) -> dict:
    """`epm.*` keys every GGUF of an export carries (see runtime.llamacpp for the reader)."""
    # "none" rather than "": GGUF writers drop empty strings, and the key should always be there.
    return {"prompt_version": prov.prompt_version, "base_sha256": prov.base_sha256,
            "adapter_sha256": prov.adapter_sha256 or "none", "version": __version__}


def adapter_threshold(adapter: Path, quant: str) -> float | None:
    """The cut `eval --save-threshold` stored for this quant type, else the adapter's latest one:
    quantization shifts scores (4-bit more than 8-bit), so each type may have its own."""
    sidecar = read_sidecar(adapter)
    threshold = sidecar.get("thresholds", {}).get(quant, sidecar.get("threshold"))
    return None if threshold is None else float(threshold)


def cached_gguf(adapter: Path, quant: str | None = None) -> Path:
    """The adapter's GGUF of type `quant` (default: model_store.default_quant()), built on first use
    (about a minute) and cached."""
    from epm_edge.export.merge import adapter_sha256

    quant = quant or model_store.default_quant()
    target = model_store.home() / "adapters" / f"{Path(adapter).name}-{adapter_sha256(adapter)[:12]}.{quant}.gguf"
    if not target.exists():
        err.print(f"building {target.name} from {adapter} (once; cached in {target.parent})")
        build_gguf(adapter, target, quant)
    else:  # the key covers the weights only: a threshold stored later (eval --save-threshold) is stamped in
        from epm_edge.export.gguf_convert import read_metadata, set_metadata

        threshold, stamped = adapter_threshold(adapter, quant), read_metadata(target).get("threshold")
        if threshold is not None and (stamped is None or abs(stamped - threshold) > 1e-6):
            set_metadata(target, {"threshold": threshold})
    return target


def build_gguf(adapter: Path, target: Path, quant: str) -> Path:
    try:
        from epm_edge.export import gguf_convert, merge, quantize
        import torch  # noqa: F401  (merging needs it; say so before any work starts)
    except ModuleNotFoundError as e:
        raise ModelError(f"{adapter}: turning an adapter into a GGUF needs the build extra ({e.name} is missing): "
                         "pip install 'epm-edge[build]', or pass --model FILE.gguf") from None
    base = merge.resolve_base(None)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        tmp = Path(tmp)
        prov = merge.merge(base, Path(adapter), tmp / "merged")
        f16 = tmp / "model-F16.gguf"
        gguf_convert.convert(tmp / "merged", f16, source_gguf=base.gguf,
                             metadata={**gguf_metadata(prov), "quant": "F16"})
        built = quantize.quantize(f16, tmp / "model.gguf", quant)
        threshold = adapter_threshold(adapter, quant)
        if threshold is not None:
            gguf_convert.set_metadata(built, {"threshold": threshold})
        built.replace(target)
    return target
