"""Scoring both record orders: a symmetric score from the A/B and B/A scores of a real model."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from epm_edge.cli import main
from epm_edge.data import load_pair_set
from epm_edge.evaluate.scoring import serialize_pairs
from epm_edge.runtime import load_scorer
from epm_edge.runtime.orders import BothOrders, combine, swapped


def test_combine_is_the_mean_log_odds():
    p = np.array([0.1, 0.5, 0.9, 0.0, 1.0])
    assert combine(p, p) == pytest.approx(p, abs=1e-9)
    assert combine(p[:3], 1 - p[:3]) == pytest.approx(np.full(3, 0.5))
    assert combine(np.array([0.9]), np.array([0.5]))[0] == pytest.approx(0.75)  # odds 9 and 1: odds 3
    assert combine(p, p[::-1]) == pytest.approx(combine(p[::-1], p))


def test_both_orders_score_is_symmetric(data_dir, base_gguf):
    ps = load_pair_set(data_dir / "walmart_amazon")
    pairs = serialize_pairs(ps, ps.split("valid").head(8))
    inner = load_scorer(base_gguf, batch_size=8)
    ab, ba = inner.score(pairs), inner.score(swapped(pairs))
    assert np.abs(ab - ba).max() > 1e-3  # one order alone is not symmetric
    both = BothOrders(inner)
    assert both.threshold == inner.threshold and both.path == inner.path  # the rest shows through
    assert both.score(pairs) == pytest.approx(combine(ab, ba), abs=1e-6)
    assert both.score(swapped(pairs)) == pytest.approx(both.score(pairs), abs=1e-6)
    inner.close()


def test_eval_both_orders_keeps_each_order_and_reuses_them(data_dir, base_gguf, tmp_path):
    args = ["eval", "--data", str(data_dir / "abt_buy"), "--model", str(base_gguf), "--limit", "8",
            "--tune-split", "valid", "--tune-limit", "8", "--batch-size", "4", "--json", "--scores", str(tmp_path)]
    one = CliRunner().invoke(main, [*args, "--one-order"])
    assert one.exit_code == 0, one.output
    both = CliRunner().invoke(main, [*args, "--both-orders"])
    assert both.exit_code == 0, both.output
    row = json.loads(both.stdout.splitlines()[0])
    assert row["orders"] == 2 and row["resumed_scorings"] == 8 and row["scorings"] == 8  # A/B reused, B/A new
    stored = {}
    for order in ("", "-ba"):
        rows = map(json.loads, (tmp_path / f"abt_buy-test-0-8{order}.jsonl").read_text().splitlines())
        stored[order] = {(r["a_id"], r["b_id"]): r["score"] for r in rows}
    pairs = load_pair_set(data_dir / "abt_buy").split("test").head(8)
    keys = list(zip(pairs.a_ids, pairs.b_ids))
    scores = combine(np.array([stored[""][k] for k in keys]), np.array([stored["-ba"][k] for k in keys]))
    predicted = scores >= row["threshold"]
    labels = np.asarray(pairs.labels).astype(bool)
    assert row["tp"] == int(np.sum(predicted & labels)) and row["fp"] == int(np.sum(predicted & ~labels))
    again = CliRunner().invoke(main, [*args, "--both-orders"])
    assert json.loads(again.stdout.splitlines()[0])["scorings"] == 0
