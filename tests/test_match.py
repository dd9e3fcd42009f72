"""Matching: blocking recall, one-to-one assignment, streamed output that resumes after a kill."""

import csv
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from epm_edge.data import load_pair_set, read_catalog
from epm_edge.errors import EpmError
from epm_edge.match.assign import one_to_one
from epm_edge.match.blocking import block, candidates, pair_completeness, product_codes
from epm_edge.match.output import ResultWriter

from conftest import EXAMPLES


def test_blocking_recall_on_real_data(data_dir):
    ps = load_pair_set(data_dir / "abt_buy")
    cands = block(ps.a, ps.b, top_k=10)
    assert len(cands) == 10 * len(ps.a)
    assert len(set(zip(cands.a_ids, cands.b_ids))) == len(cands)
    assert pair_completeness(cands, ps.positives()) >= 0.97


def test_product_codes_normalised():
    assert product_codes("sony wh-1000xm5/b headphones 4006381333931") == {"wh1000xm5/b".replace("/", ""),
                                                                          "4006381333931"}
    assert product_codes("red 64 gb") == set()


def test_small_catalogs_use_all_pairs():
    a, b = read_catalog(EXAMPLES / "retailer.csv"), read_catalog(EXAMPLES / "marketplace.csv")
    assert len(candidates(a, b, top_k=3)) == 3 * len(a)
    tiny = candidates(a, b, top_k=3, all_pairs_max=len(a) * len(b))
    assert len(tiny) == len(a) * len(b)


def test_blocking_finds_example_matches():
    a, b = read_catalog(EXAMPLES / "retailer.csv"), read_catalog(EXAMPLES / "marketplace.csv")
    truth = {(r["retailer_sku"], r["marketplace_id"]) for r in csv.DictReader(open(EXAMPLES / "matches.csv"))}
    assert pair_completeness(block(a, b, top_k=3), truth) == 1.0


def test_one_to_one_greedy_and_hungarian():
    a = ["a1", "a1", "a2", "a2"]
    b = ["b1", "b2", "b1", "b2"]
    s = np.array([0.9, 0.8, 0.85, 0.1])
    # greedy takes a1-b1 first, leaving a2 with only b2 (below threshold)
    assert one_to_one(a, b, s, 0.5).tolist() == [True, False, False, False]
    # hungarian maximises the total: a1-b2 + a2-b1 = 1.65 > 0.9
    assert one_to_one(a, b, s, 0.5, method="hungarian").tolist() == [False, True, True, False]
    assert not one_to_one(a, b, s, 0.95).any()


def test_writer_refuses_other_settings_and_recovers_torn_line(tmp_path):
    out = tmp_path / "r.csv"
    w = ResultWriter(out, {"threshold": 0.5})
    w.write([{"a_id": "1", "b_id": "x", "score": 0.7, "match": True}])
    w.close()
    with open(out, "a") as f:
        f.write("2,y,0.3")  # torn row, as after a hard kill
    with pytest.raises(EpmError, match="different settings \\(threshold\\)"):
        ResultWriter(out, {"threshold": 0.6})
    w = ResultWriter(out, {"threshold": 0.5})
    assert w.done == {("1", "x"): 0.7}
    w.close()
    assert out.read_text().splitlines() == ["a_id,b_id,score,match", "1,x,0.700000,1"]


def _match_cmd(out, *extra):
    return [sys.executable, "-m", "epm_edge", "match", str(EXAMPLES / "retailer.csv"),
            str(EXAMPLES / "marketplace.csv"), "--top-k", "3", "--batch-size", "4", "-o", str(out), *extra]


def _rows(out):
    with open(out, newline="") as f:
        return list(csv.DictReader(f))


def _interrupt_after(cmd, out, rows, sig):
    log = out.with_suffix(".log")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and len(out.read_text().splitlines()) > rows:
            break
        time.sleep(0.2)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    return proc.returncode, log.read_text()


def test_match_resumes_after_interrupt_and_kill(tmp_path, base_gguf):
    out = tmp_path / "matches.csv"
    cmd = _match_cmd(out)
    code, stderr = _interrupt_after(cmd, out, 8, signal.SIGINT)
    assert code == 130 and "rerun the same command to resume" in stderr
    assert out.read_text().endswith("\n")  # Ctrl-C leaves only whole rows
    kept = {(r["a_id"], r["b_id"]): r["score"] for r in _rows(out)}
    code, _ = _interrupt_after(cmd, out, len(kept) + 8, signal.SIGKILL)
    assert code == -signal.SIGKILL
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = _rows(out)
    keys = [(r["a_id"], r["b_id"]) for r in rows]
    a, b = read_catalog(EXAMPLES / "retailer.csv"), read_catalog(EXAMPLES / "marketplace.csv")
    cands = candidates(a, b, top_k=3)
    assert len(keys) == len(set(keys))  # nothing scored twice
    assert set(keys) == set(zip(cands.a_ids, cands.b_ids))  # nothing lost
    assert all(dict(zip(keys, (r["score"] for r in rows)))[k] == s for k, s in kept.items())
    assert "resumed" in done.stderr
    settings = json.loads((tmp_path / "matches.csv.run.json").read_text())
    assert settings["top_k"] == 3


def test_match_to_stdout_with_one_to_one(base_gguf):
    cmd = [sys.executable, "-m", "epm_edge", "match", str(EXAMPLES / "retailer.csv"),
           str(EXAMPLES / "marketplace.csv"), "--top-k", "2", "--one-to-one", "--threshold", "0.5"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(r.stdout.splitlines()))
    assert len(rows) == 2 * 40
    matched = [x for x in rows if x["match"] == "1"]
    assert len({x["a_id"] for x in matched}) == len(matched) == len({x["b_id"] for x in matched})
    assert all(float(x["score"]) >= 0.5 for x in matched)


def test_match_gives_swapped_catalogs_the_same_scores(base_gguf):
    """With the default model, LLM-only scoring uses both orders by default, so swapping the catalogs
    scores the same two prompts per pair, beside other neighbours: a pair's score does not depend on
    them. With the cascade, the feature stage is symmetric too: the same pairs are routed to the LLM
    either way, and every pair gets the same score."""
    def scores(a, b, *extra):
        cmd = [sys.executable, "-m", "epm_edge", "match", str(EXAMPLES / a), str(EXAMPLES / b), "--top-k", "2", *extra]
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return {(x["a_id"], x["b_id"]): x for x in csv.DictReader(r.stdout.splitlines())}, r.stderr

    (forward, log), (backward, _) = (scores("retailer.csv", "marketplace.csv", "--cascade", "off"),
                                     scores("marketplace.csv", "retailer.csv", "--cascade", "off"))
    assert "both orders" in log
    common = [k for k in forward if k[::-1] in backward]
    assert len(common) >= 20
    assert all(float(forward[k]["score"]) == pytest.approx(float(backward[k[::-1]]["score"]), abs=1e-3)
               for k in common)

    (forward, _), (backward, _) = scores("retailer.csv", "marketplace.csv"), scores("marketplace.csv", "retailer.csv")
    common = [k for k in forward if k[::-1] in backward]
    assert all(forward[k]["stage"] == backward[k[::-1]]["stage"] for k in common)
    assert {forward[k]["stage"] for k in common} == {"features", "llm"}
    assert all(float(forward[k]["score"]) == pytest.approx(float(backward[k[::-1]]["score"]), abs=1e-3)
               for k in common)


def test_match_explanations_follow_the_rows_decision(tmp_path, base_gguf):
    """At a `--threshold` other than the model's, each explanation argues the row's own decision."""
    out = tmp_path / "m.jsonl"
    cmd = [sys.executable, "-m", "epm_edge", "match", str(EXAMPLES / "retailer.csv"), str(EXAMPLES / "marketplace.csv"),
           "--model", str(base_gguf), "--top-k", "1", "--threshold", "0.62", "--explain", "--explain-above", "0.6",
           "-o", str(out), "--one-order"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    explained = [row for row in map(json.loads, out.read_text().splitlines()) if row.get("explanation")]
    assert {row["match"] for row in explained} == {True, False}
    assert all(row["explanation"]["match"] == row["match"] for row in explained)


def test_one_order_cut_stands_in_with_a_warning(tmp_path, base_gguf):
    """Both orders (the default) use the model's both-orders cut; a model with only a one-order cut
    warns and uses it; a model with no cut at all stays silent at 0.5."""
    import shutil

    from epm_edge.export.gguf_metadata import set_metadata

    for name in ("retailer.csv", "marketplace.csv"):  # three listings each keep the runs short
        (tmp_path / name).write_text("".join((EXAMPLES / name).read_text().splitlines(keepends=True)[:4]))
    one_cut, both_cuts = tmp_path / "one.gguf", tmp_path / "both.gguf"
    shutil.copy(base_gguf, one_cut)
    set_metadata(one_cut, {"threshold": 0.4})
    shutil.copy(one_cut, both_cuts)
    set_metadata(both_cuts, {"threshold_both_orders": 0.3})

    def stderr(model, *flags):
        cmd = [sys.executable, "-m", "epm_edge", "match", str(tmp_path / "retailer.csv"),
               str(tmp_path / "marketplace.csv"), "--model", str(model), *flags]
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return " ".join(r.stderr.split())  # rich wraps lines at 80 columns off a terminal

    warning = "no cut tuned on both orders"
    out = stderr(one_cut)
    assert warning in out and "threshold 0.400" in out
    out = stderr(both_cuts)
    assert warning not in out and "threshold 0.300" in out
    out = stderr(both_cuts, "--one-order")
    assert warning not in out and "threshold 0.400" in out
    out = stderr(base_gguf)
    assert warning not in out and "threshold 0.500" in out


@pytest.mark.parametrize("extra, says", [
    (["--actors", "2"], "--actors and --threads-per-actor go with --ray or --workers"),
    (["--ray", "--threads", "2"], "threads are per actor"),
    (["--workers", "2", "--ray", "head:6379"], "--workers N runs N actors on this host"),
])
def test_ray_options_that_do_not_fit_together_are_usage_errors(extra, says):
    from click.testing import CliRunner

    from epm_edge.cli import main

    r = CliRunner().invoke(main, ["match", str(EXAMPLES / "retailer.csv"), str(EXAMPLES / "marketplace.csv"), *extra])
    assert r.exit_code == 2 and says in r.output
