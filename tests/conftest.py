import csv
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EPM_EDGE_DATA", ROOT.parent / "shared" / "data"))
EXAMPLES = ROOT / "examples"

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "abt_buy" / "tableA.csv").exists():
        pytest.fail(f"benchmark data not found at {DATA}; set EPM_EDGE_DATA")
    return DATA


@pytest.fixture(scope="session")
def base_gguf() -> Path:
    from epm_edge.model_store import base_gguf

    return base_gguf()


@pytest.fixture(scope="session")
def f32_gguf(base_gguf, tmp_path_factory) -> Path:
    """The bundled base dequantized to F32 by llama.cpp: numerically stable for exactness tests."""
    import llama_cpp

    out = tmp_path_factory.mktemp("gguf") / "base-f32.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_ALL_F32
    params.allow_requantize = True
    assert llama_cpp.llama_model_quantize(str(base_gguf).encode(), str(out).encode(), params) == 0
    return out


@pytest.fixture(scope="session")
def nan_gguf(f32_gguf, tmp_path_factory) -> Path:
    """The F32 base with garbled tensor data that still loads: its output norm is all NaN."""
    import gguf
    import numpy as np

    norm = next(t for t in gguf.GGUFReader(f32_gguf).tensors if t.name == "output_norm.weight")
    data = bytearray(f32_gguf.read_bytes())
    data[norm.data_offset:norm.data_offset + norm.n_bytes] = np.full(norm.n_elements, np.nan, np.float32).tobytes()
    out = tmp_path_factory.mktemp("gguf") / "nan.gguf"
    out.write_bytes(bytes(data))
    return out


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A labelled set in the DeepMatcher layout: 16 valid pairs, and 16 train pairs (the importance matrix)."""
    root = tmp_path_factory.mktemp("pairs")
    brands = ["sony", "samsung", "lg", "philips", "canon", "nikon", "bose", "jbl"]
    with open(root / "tableA.csv", "w", newline="") as fa, open(root / "tableB.csv", "w", newline="") as fb:
        wa, wb = csv.writer(fa), csv.writer(fb)
        wa.writerow(["id", "title", "price"])
        wb.writerow(["id", "title", "price"])
        for i, b in enumerate(brands):
            wa.writerow([i, f"{b} model {100 + i}x black", f"{19 + i}.99"])
            wb.writerow([i, f"{b.upper()} {100 + i}X - black - free shipping", f"{19 + i}.95"])
    for split, shift in (("valid", 3), ("train", 5)):
        with open(root / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["ltable_id", "rtable_id", "label"])
            for i in range(len(brands)):
                w.writerow([i, i, 1])
                w.writerow([i, (i + shift) % len(brands), 0])
    return root
