"""Quiet by default: a first run on a fresh machine (nothing cached: the base is dequantized, the
shipped adapter merged and quantized) prints epm-edge's own lines only (-v shows the rest)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# what transformers, bitsandbytes, tqdm, onnxruntime and llama.cpp print when left alone
THIRD_PARTY = re.compile(r"warn|deprecat|https?://|it/s\]|%\||legacy|kernels-community|\bINFO\b|llama_|ggml_|"
                         r"load_tensors|de-quantiz", re.I)


@pytest.mark.slow
def test_first_match_on_a_fresh_cache_prints_only_our_lines(tmp_path):
    env = {**os.environ, "EPM_EDGE_HOME": str(tmp_path / "home"), "COLUMNS": "400"}  # one line per message
    r = subprocess.run([sys.executable, "-m", "epm_edge", "match", str(EXAMPLES / "retailer.csv"),
                        str(EXAMPLES / "marketplace.csv"), "--top-k", "1", "-o", str(tmp_path / "m.csv")],
                       capture_output=True, text=True, env=env, timeout=1200)
    assert r.returncode == 0, r.stderr
    assert "building" in r.stderr  # the first-use path ran
    noise = [line for line in r.stderr.splitlines() if THIRD_PARTY.search(line)]
    assert noise == [], noise
