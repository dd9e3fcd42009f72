"""GGUF quantization through llama.cpp's own quantizer (`llama_model_quantize`)."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import llama_cpp as lc
import numpy as np

from epm_edge.errors import ModelError
from epm_edge.export.gguf_metadata import set_metadata

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


def _imatrix_entries(means: dict[str, np.ndarray]):
    """The importance matrix as llama.cpp's C array (terminated by an entry with no name), and the
    buffers it points into (kept alive by the caller while llama.cpp reads them)."""
    buffers = [(name.encode(), np.ascontiguousarray(v, dtype=np.float32)) for name, v in means.items()]
    entries = (lc.llama_model_imatrix_data * (len(buffers) + 1))()
    for entry, (name, values) in zip(entries, buffers):
        entry.name = name
        entry.data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entry.size = values.size
    return entries, buffers


def quantize(src: Path, dst: Path, quant: str, threads: int | None = None, imatrix: Path | None = None,
             provenance: dict | None = None) -> Path:
    """Quantize an F16 GGUF to `quant`, weighted by the importance matrix file `imatrix` if given; the
    epm.* metadata is carried over with epm.quant updated and `provenance` added."""
    from epm_edge.export import imatrix as imx
    from epm_edge.runtime.llamacpp import _init_backend

    quant = check_quant(quant)
    _init_backend()
    params = lc.llama_model_quantize_default_params()
    params.ftype = GGUF_QUANTS[quant]
    params.nthread = threads or os.cpu_count() or 1
    if imatrix:
        entries, _buffers = _imatrix_entries(imx.load(imatrix))
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(lc.llama_model_imatrix_data))
    tmp = dst.with_name(dst.name + ".tmp")
    rc = lc.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
    if rc != 0:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"{src}: llama.cpp failed to quantize to {quant} (code {rc})")
    set_metadata(tmp, {"quant": quant, **(provenance or {})})
    tmp.replace(dst)
    return dst
