"""`epm-edge bench` end to end on real runtimes: the real base GGUF (two quant types) through
llama.cpp, a tiny llama (real tokenizer) through transformers fp32 and bitsandbytes, and the TF-IDF
baseline, on 16 abt_buy pairs. Asserts the outputs agree with each other; never asserts timings."""

import csv
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from epm_edge.bench.figures import mean_sd, usd_per_million_pairs
from epm_edge.bench.report import num
from epm_edge.bench.variants import Variant, select
from epm_edge.errors import EpmError
from epm_edge.evaluate.metrics import compute_metrics

from conftest import ROOT

LIMIT, REPEAT, TIMING_PAIRS, LATENCY_PAIRS = 16, 2, 4, 2
VARIANTS = ["hf-fp32", "bnb-int8", "bnb-nf4", "gguf-q4_1", "gguf-q4_0", "tfidf"]
PLOTS = ("f1_vs_throughput.png", "latency.png", "size_vs_f1.png")


@pytest.fixture(scope="module")
def export_dir(base_gguf, tmp_path_factory):
    """The layout `epm-edge export` writes: merged/ (a tiny llama) and gguf/ (the real base, requantized)."""
    import llama_cpp
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("export")
    (root / "gguf").mkdir()
    (root / "gguf" / "model-q4_1.gguf").symlink_to(base_gguf)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    params.allow_requantize = True
    assert llama_cpp.llama_model_quantize(str(base_gguf).encode(), str(root / "gguf" / "model-q4_0.gguf").encode(),
                                          params) == 0
    tok = AutoTokenizer.from_pretrained(base_gguf.parent, gguf_file=base_gguf.name)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    LlamaForCausalLM(config).save_pretrained(root / "merged")
    tok.save_pretrained(root / "merged")
    from epm_edge.export import imatrix  # an export's importance matrix sits beside its GGUFs: not a variant

    imatrix.write(root / "gguf" / imatrix.FILE_NAME, {"blk.0.attn_q.weight": (np.ones(64), 10)}, ["x/train"], 1)
    return root


@pytest.fixture(scope="module")
def bench_out(export_dir, data_dir, tmp_path_factory):
    from epm_edge.cli import main

    out = tmp_path_factory.mktemp("bench")
    env = {"EPM_EDGE_HOME": str(tmp_path_factory.mktemp("home"))}  # the bnb checkpoints go here
    result = CliRunner(env=env).invoke(main, [
        "bench", "--model", str(export_dir), "--data", str(data_dir / "abt_buy"), "--limit", str(LIMIT),
        "--repeat", str(REPEAT), "--timing-pairs", str(TIMING_PAIRS), "--latency-pairs", str(LATENCY_PAIRS),
        # One thread: on a busy CI host, llama.cpp thread barriers crawl; figures are not asserted anyway.
        "--threads", "1", "--usd-per-core-hour", "0.04", "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out


def _markdown_rows(text: str) -> dict[str, dict[str, str]]:
    """The variant table of report.md as {variant: {column: cell}}."""
    lines = [ln for ln in text.splitlines()
             if ln.startswith("| variant |") or re.match(r"\| [a-z0-9_\-]+ \| [a-z]+ \|", ln)]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip().strip("*") for c in ln.strip("|").split("|")] for ln in lines[1:]]
    return {r[0]: dict(zip(header, r)) for r in rows}


def test_bench_writes_all_outputs_that_agree(bench_out):
    report = json.loads((bench_out / "report.json").read_text())
    rows = {r["variant"]: r for r in report["results"]}
    assert list(rows) == VARIANTS
    assert all("error" not in r for r in rows.values()), [r.get("error") for r in rows.values()]
    host = report["host"]
    assert host["cpu"] and host["logical_cores"] >= 1 and host["ram_bytes"] > 0 and host["git_commit"]
    assert {"llama-cpp-python", "onnxruntime", "torch", "transformers"} <= set(host["versions"])

    for r in rows.values():
        assert r["n_pairs"] == LIMIT and r["n_valid_pairs"] == LIMIT and 0 <= r["f1"] <= 1
        assert len(r["pairs_per_s"]["runs"]) == REPEAT and r["pairs_per_s"]["mean"] > 0
        assert r["timing_pairs"] == TIMING_PAIRS and r["scoring_seconds"] > 0
        assert r["latency_ms"]["n"] == REPEAT * LATENCY_PAIRS
        assert r["latency_ms"]["p50"] <= r["latency_ms"]["p90"] <= r["latency_ms"]["p99"]
        assert r["peak_rss_bytes"] >= r["rss_after_load_bytes"] > 0 and r["size_bytes"] > 0
        expected_cost = 0.04 * r["threads"] * 1e6 / r["pairs_per_s"]["mean"] / 3600
        assert r["usd_per_million_pairs"] == pytest.approx(expected_cost)
    assert rows["tfidf"]["threads"] == 1 and rows["tfidf"]["prompt_tokens_per_s"] is None
    # bitsandbytes really quantized: the 4-bit checkpoint is smaller than the fp32 one.
    assert rows["bnb-nf4"]["size_bytes"] < rows["hf-fp32"]["size_bytes"]

    # Metrics in the JSON follow from the per-pair scores and the stored threshold.
    scores: dict[str, list] = {}
    with open(bench_out / "scores.csv", newline="") as f:
        for rec in csv.DictReader(f):
            scores.setdefault(rec["variant"], []).append((int(rec["label"]), float(rec["score"])))
    for name, r in rows.items():
        labels, s = np.array(scores[name]).T
        m = compute_metrics(labels, s, r["threshold"])
        assert (m.tp, m.fp, m.fn, m.tn) == (r["tp"], r["fp"], r["fn"], r["tn"])

    # The Markdown table shows the JSON's figures.
    md = _markdown_rows((bench_out / "report.md").read_text())
    assert list(md) == VARIANTS
    for name, r in rows.items():
        cells = md[name]
        assert cells["runtime"] == r["runtime"] and int(cells["threads"]) == r["threads"]
        for col, key in (("threshold", "threshold"), ("P", "precision"), ("R", "recall"), ("F1", "f1")):
            assert cells[col] == f"{r[key]:.3f}"
        assert cells["pairs/s"] == f"{num(r['pairs_per_s']['mean'])} ± {num(r['pairs_per_s']['sd'])}"
        for col in ("p50", "p90", "p99"):
            assert cells[f"{col} ms"] == num(r["latency_ms"][col])
        assert cells["peak RSS MB"] == num(r["peak_rss_bytes"] / 1e6)
        assert cells["size MB"] == num(r["size_bytes"] / 1e6)
        assert cells["USD / 1M pairs"] == num(r["usd_per_million_pairs"])
        assert cells["ΔF1 pt vs hf-fp32"] == f"{(r['f1'] - rows['hf-fp32']['f1']) * 100:+.1f}"


def test_bench_plots_are_real_pngs(bench_out):
    import matplotlib.image

    text = (bench_out / "report.md").read_text()
    for name in PLOTS:
        assert (bench_out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(bench_out / name)
        assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0  # not blank
        assert f"]({name})" in text


def test_rerun_reuses_measurements(bench_out, export_dir, data_dir):
    """Finished variants are not measured again (a long bench resumes); the report is rebuilt."""
    from epm_edge.bench.run import BenchConfig, run_bench

    before = json.loads((bench_out / "report.json").read_text())
    cfg = BenchConfig(model=export_dir, data_dirs=[data_dir / "abt_buy"], out=bench_out, limit=LIMIT,
                      variants=["gguf-q4_0", "tfidf"], threads=(1,), repeat=REPEAT, timing_pairs=TIMING_PAIRS,
                      latency_pairs=LATENCY_PAIRS,
                      usd_per_core_hour=0.04)
    again = {r["variant"]: r for r in run_bench(cfg, log=lambda _: None)["results"]}
    old = {r["variant"]: r for r in before["results"]}
    for name in ("gguf-q4_0", "tfidf"):
        assert again[name]["reused"] and again[name]["pairs_per_s"] == old[name]["pairs_per_s"]


def test_bench_scores_both_orders_unless_told_one(bench_out, export_dir, data_dir, tmp_path):
    """By default a pair's score is its A/B and B/A scores combined, as `epm-edge match` scores it;
    `--one-order` gives the A/B score. Checked against the llama.cpp scorer called directly."""
    from epm_edge.bench.run import BenchConfig, run_bench
    from epm_edge.data import load_pair_set
    from epm_edge.evaluate.scoring import serialize_pairs
    from epm_edge.runtime import load_scorer
    from epm_edge.runtime.orders import combine, swapped

    ps = load_pair_set(data_dir / "abt_buy")
    pairs = serialize_pairs(ps, ps.split("test").head(LIMIT), 64)
    scorer = load_scorer(export_dir / "gguf" / "model-q4_0.gguf", threads=1)
    ab, ba = scorer.score(pairs), scorer.score(swapped(pairs))
    scorer.close()
    assert np.abs(combine(ab, ba) - ab).max() > 0.01  # the orders really differ: the checks below can fail

    report = json.loads((bench_out / "report.json").read_text())
    assert report["settings"]["both_orders"] and "both record orders" in (bench_out / "report.md").read_text()
    with open(bench_out / "scores.csv", newline="") as f:
        both = [float(r["score"]) for r in csv.DictReader(f) if r["variant"] == "gguf-q4_0"]
    np.testing.assert_allclose(both, combine(ab, ba), atol=2e-3)

    cfg = BenchConfig(model=export_dir, data_dirs=[data_dir / "abt_buy"], out=tmp_path, limit=LIMIT,
                      variants=["gguf-q4_0"], threads=(1,), repeat=1, timing_pairs=TIMING_PAIRS,
                      latency_pairs=LATENCY_PAIRS, both_orders=False)
    [one] = run_bench(cfg, log=lambda _: None)["results"]
    np.testing.assert_allclose(one["scores"], ab, atol=2e-3)
    # a pair scored once costs the tokens of one prompt, half of what both orders cost
    [q4] = [r for r in report["results"] if r["variant"] == "gguf-q4_0"]
    assert one["prompt_tokens_per_pair"] == pytest.approx(q4["prompt_tokens_per_pair"] / 2, rel=0.02)


def test_bench_runs_model_variants_inside_the_cascade(export_dir, data_dir, tmp_path):
    """An export with a feature stage: the feature matcher alone is a variant, and a model variant runs
    inside the cascade, its scores the feature probability or its fusion with the LLM's score."""
    from epm_edge.bench.run import BenchConfig, run_bench
    from epm_edge.data import load_pair_set
    from epm_edge.evaluate.scoring import serialize_pairs
    from epm_edge.features.cascade import load_cascade
    from epm_edge.features.pairs import PairFeaturizer
    from epm_edge.runtime import load_scorer
    from epm_edge.runtime.orders import combine, swapped

    features = ROOT / "models" / "epm-smollm2-135m" / "features"
    export = tmp_path / "export"
    export.mkdir()
    (export / "gguf").symlink_to(export_dir / "gguf")
    (export / "features").symlink_to(features)
    cfg = BenchConfig(model=export, data_dirs=[data_dir / "walmart_amazon"], out=tmp_path / "out", limit=LIMIT,
                      variants=["gguf-q4_0", "features"], threads=(1,), repeat=1, timing_pairs=TIMING_PAIRS,
                      latency_pairs=LATENCY_PAIRS, cascade=features)
    rows = {r["variant"]: r for r in run_bench(cfg, log=lambda _: None)["results"]}
    assert set(rows) == {"gguf-q4_0+cascade", "features"}

    cascade = load_cascade(features)
    ps = load_pair_set(data_dir / "walmart_amazon")
    pairs = ps.split("test").head(LIMIT)
    p_feat = cascade.matcher.predict(PairFeaturizer(ps.a.records, ps.b.records).features(pairs.a_ids, pairs.b_ids))
    np.testing.assert_allclose(rows["features"]["scores"], p_feat, atol=1e-9)
    assert rows["features"]["llm_share"] == 0
    unsure = cascade.to_llm(p_feat)
    assert rows["gguf-q4_0+cascade"]["llm_share"] == pytest.approx(unsure.mean()) and 0 < unsure.mean() < 1
    # the routed pairs alone, in one batch as the bench sends them (a pair's score moves a little with
    # its batch company)
    scorer = load_scorer(export_dir / "gguf" / "model-q4_0.gguf", threads=1)
    texts = [t for t, u in zip(serialize_pairs(ps, pairs, 64), unsure) if u]
    llm = scorer.score(texts) if cascade.settings.orders == 1 else combine(scorer.score(texts),
                                                                          scorer.score(swapped(texts)))
    scorer.close()
    expected = p_feat.copy()
    expected[unsure] = cascade.fuse(p_feat[unsure], llm)
    np.testing.assert_allclose(rows["gguf-q4_0+cascade"]["scores"], expected, atol=2e-3)


def test_variant_selection_and_cost():
    vs = [Variant("gguf-q8_0", "llamacpp"), Variant("gguf-q4_0", "llamacpp"), Variant("tfidf", "tfidf")]
    assert [v.name for v in select(vs, ["gguf-q4*", "tfidf"])] == ["gguf-q4_0", "tfidf"]
    assert select(vs, None) == vs
    with pytest.raises(EpmError, match="onnx-int8"):
        select(vs, ["onnx-int8"])
    assert usd_per_million_pairs(None, 2, 10.0) is None
    assert usd_per_million_pairs(0.036, 2, 20.0) == pytest.approx(0.036 * 2 * 50_000 / 3600)  # 1M pairs = 50k s
    assert mean_sd([1.0, 3.0]) == {"mean": 2.0, "sd": pytest.approx(2 ** 0.5), "runs": [1.0, 3.0]}


def test_bench_cli_without_torch_and_with_clear_errors(tmp_path, data_dir):
    from epm_edge.cli import main

    code = "import sys, epm_edge.cli; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    result = CliRunner().invoke(main, ["bench", "--model", str(tmp_path), "--data", str(data_dir / "abt_buy"),
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "no merged/, onnx/<variant>/ or gguf/*.gguf" in result.output
