"""Trained adapters run through llama.cpp: merged into the bundled base, quantized, cached; a
shipped adapter in models/ is the default model of `epm-edge match`."""

import json

import numpy as np
import pytest

from epm_edge import model_store, resolve
from epm_edge.data import load_pair_set
from epm_edge.evaluate.scoring import serialize_pairs
from epm_edge.export.gguf_metadata import read_metadata
from epm_edge.export.merge import adapter_sha256, resolve_base
from epm_edge.runtime import load_scorer
from epm_edge.resolve import open_scorer
from epm_edge.runtime.provenance import SIDECAR


@pytest.fixture
def home(tmp_path, monkeypatch, base_gguf):
    """A fresh cache dir that reuses the bundled base's caches (copy + dequantized HF checkpoint)."""
    real = model_store.home()
    resolve_base(None)  # fills real/base-hf once
    for name in ("base", "base-hf"):
        (tmp_path / name).symlink_to(real / name)
    monkeypatch.setenv("EPM_EDGE_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def random_adapter(tmp_path, base_gguf):
    """A LoRA on the real base whose B matrices are not zero, so it changes the scores."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from epm_edge.train.adapter import save_adapter

    base = resolve_base(None)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base.hf_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    out = save_adapter(model, tmp_path / "adapter", base, "sft")
    meta = json.loads((out / SIDECAR).read_text())
    (out / SIDECAR).write_text(json.dumps({**meta, "threshold": 0.37}))
    return out


def test_adapter_dir_runs_as_cached_gguf(home, random_adapter, base_gguf, data_dir):
    ps = load_pair_set(data_dir / "abt_buy")
    pairs = serialize_pairs(ps, ps.split("valid").head(6))
    scorer = open_scorer(random_adapter, batch_size=6)[1]
    built = scorer.path
    assert built.parent == home / "adapters" and built.suffix == ".gguf"
    meta = read_metadata(built)
    assert meta["adapter_sha256"] == adapter_sha256(random_adapter) and meta["quant"] == resolve.default_quant()
    assert scorer.threshold == pytest.approx(0.37)
    tuned = scorer.score(pairs)
    scorer.close()
    base = load_scorer(base_gguf, batch_size=6)
    assert np.abs(tuned - base.score(pairs)).max() > 0.02  # the adapter is applied
    base.close()
    mtime = built.stat().st_mtime_ns
    again = open_scorer(random_adapter)[1]
    assert again.path == built and built.stat().st_mtime_ns == mtime  # cached, not rebuilt
    again.close()
    other = next(q for q in model_store.ADAPTER_QUANTS if q != resolve.default_quant())
    requantized = open_scorer(random_adapter, batch_size=6, quant=other)[1]  # `--quant`: a second cached GGUF
    assert requantized.path != built and read_metadata(requantized.path)["quant"] == other
    assert np.abs(requantized.score(pairs) - tuned).max() < 0.1  # the same model, quantized otherwise
    requantized.close()

    # `eval --save-threshold` stores the threshold tuned over all sets; the cached GGUF takes it up
    from click.testing import CliRunner

    from epm_edge.cli import main

    args = ["eval", "--model", str(random_adapter), "--data", f"{data_dir / 'abt_buy'},{data_dir / 'walmart_amazon'}",
            "--split", "valid", "--limit", "6", "--tune-split", "train", "--tune-limit", "12", "--json",
            "--save-threshold"]
    result = CliRunner().invoke(main, [*args, "--one-order"])
    assert result.exit_code == 0, result.output
    stored = json.loads((random_adapter / SIDECAR).read_text())
    assert stored["threshold"] != 0.37 and stored["threshold_tuned_on"].startswith("train: 24 pairs")
    assert stored["thresholds"] == {resolve.default_quant(): stored["threshold"]}
    restamped = open_scorer(random_adapter)[1]
    assert restamped.path == built and restamped.threshold == pytest.approx(stored["threshold"], abs=1e-6)
    restamped.close()
    # a quant type with a cut of its own gets it; the others get the latest one tuned
    (random_adapter / SIDECAR).write_text(json.dumps({**stored, "thresholds": {**stored["thresholds"], other: 0.21}}))
    for q, cut in ((other, 0.21), (resolve.default_quant(), stored["threshold"])):
        s = open_scorer(random_adapter, quant=q)[1]
        assert s.threshold == pytest.approx(cut, abs=1e-6)
        s.close()
    # scoring both orders (the default) has a cut of its own, stamped beside the one-order cut it leaves alone
    from epm_edge.runtime.orders import BothOrders

    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    both = json.loads((random_adapter / SIDECAR).read_text())
    cut = both["thresholds_both_orders"][resolve.default_quant()]
    assert both["thresholds"] == {**stored["thresholds"], other: 0.21}
    s = open_scorer(random_adapter)[1]
    assert read_metadata(s.path)["threshold_both_orders"] == pytest.approx(cut, abs=1e-6)
    assert s.threshold == pytest.approx(stored["threshold"], abs=1e-6)
    assert BothOrders(s).threshold == pytest.approx(cut, abs=1e-6)
    s.close()


def test_default_model_is_the_shipped_adapter_else_the_base(home):
    adapter = model_store.shipped_adapter()
    path = resolve.default_model()
    if adapter is None:  # no trained default committed yet: the bundled base, with a warning
        assert path == model_store.base_gguf()
    else:
        assert (adapter / "MODEL_CARD.md").exists()
        assert read_metadata(path)["adapter_sha256"] == adapter_sha256(adapter)


def test_shipped_adapter_tells_matches_from_non_matches(data_dir):
    """On real valid pairs of every training set, the default model ranks matches above
    non-matches far better than chance, and its stored threshold is a usable cut."""
    from sklearn.metrics import roc_auc_score

    if model_store.shipped_adapter() is None:
        pytest.skip(f"models/{model_store.DEFAULT_ADAPTER} is not committed")
    scorer = load_scorer(resolve.default_model(), batch_size=16)
    labels, scores = [], []
    for name in ("abt_buy", "amazon_google", "walmart_amazon", "wdc_products"):
        ps = load_pair_set(data_dir / name)
        pairs = ps.split("valid").head(40)
        labels += list(pairs.labels)
        scores += list(scorer.score(serialize_pairs(ps, pairs)))
    labels, scores = np.array(labels), np.array(scores)
    assert roc_auc_score(labels, scores) > 0.8
    predicted = scores >= scorer.threshold
    assert 0 < predicted.sum() < len(predicted)
    scorer.close()
