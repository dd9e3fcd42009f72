"""GGUF quantization through llama.cpp's own quantizer (`llama_model_quantize`)."""

from __future__ import annotations

import os
from pathlib import Path

import llama_cpp as lc

from epm_edge.errors import ModelError
from epm_edge.export.gguf_convert import set_metadata

# Quant names as llama.cpp's `llama-quantize` spells them.
GGUF_QUANTS = {
    "F16": lc.LLAMA_FTYPE_MOSTLY_F16,
    "BF16": lc.LLAMA_FTYPE_MOSTLY_BF16,
    "Q8_0": lc.LLAMA_FTYPE_MOSTLY_Q8_0,
    "Q6_K": lc.LLAMA_FTYPE_MOSTLY_Q6_K,
    "Q5_K_M": lc.LLAMA_FTYPE_MOSTLY_Q5_K_M,
    "Q4_K_M": lc.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    "Q4_K_S": lc.LLAMA_FTYPE_MOSTLY_Q4_K_S,
    "Q4_0": lc.LLAMA_FTYPE_MOSTLY_Q4_0,
    "IQ4_NL": lc.LLAMA_FTYPE_MOSTLY_IQ4_NL,  # 4-bit non-linear, blocks of 32 like Q4_0; no imatrix needed
}


def check_quant(quant: str) -> str:
    if quant.upper() not in GGUF_QUANTS:
        raise ModelError(f"unknown GGUF quant type '{quant}' (choose from {', '.join(GGUF_QUANTS)})")
    return quant.upper()


def quantize(src: Path, dst: Path, quant: str, threads: int | None = None) -> Path:
    """Quantize an F16 GGUF to `quant`; the epm.* metadata is carried over with epm.quant updated."""
    from epm_edge.runtime.llamacpp import _init_backend

    quant = check_quant(quant)
    _init_backend()
    params = lc.llama_model_quantize_default_params()
    params.ftype = GGUF_QUANTS[quant]
    params.nthread = threads or os.cpu_count() or 1
    tmp = dst.with_name(dst.name + ".tmp")
    rc = lc.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
    if rc != 0:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"{src}: llama.cpp failed to quantize to {quant} (code {rc})")
    set_metadata(tmp, {"quant": quant})
    tmp.replace(dst)
    return dst
