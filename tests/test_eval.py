"""`epm-edge eval`: several sets in one run, threshold tuned on valid, consistent figures."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from epm_edge.cli import main


def test_eval_tunes_threshold_per_set_on_valid(data_dir, base_gguf):
    sets = f"{data_dir / 'abt_buy'},{data_dir / 'amazon_google'}"
    result = CliRunner().invoke(main, ["eval", "--data", sets, "--model", str(base_gguf), "--limit", "12",
                                       "--tune-split", "valid", "--tune-limit", "16", "--batch-size", "8", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["data"].split("/")[-1] for r in rows] == ["abt_buy", "amazon_google"]
    for r in rows:
        assert r["split"] == "test" and r["n_pairs"] == 12 and r["threshold_tuned_on"] == "valid:16"
        assert r["tp"] + r["fp"] + r["fn"] + r["tn"] == 12
        assert 0.0 <= r["threshold"] <= 1.0 and r["pairs_per_second"] > 0
        precision = r["tp"] / (r["tp"] + r["fp"]) if r["tp"] + r["fp"] else 0.0
        assert r["precision"] == precision
    assert "threshold best over the 32 valid pairs of all sets together" in result.stderr


def test_eval_rejects_threshold_with_tuning(data_dir, base_gguf):
    result = CliRunner().invoke(main, ["eval", "--data", str(data_dir / "abt_buy"), "--model", str(base_gguf),
                                       "--threshold", "0.5", "--tune-split", "valid"])
    assert result.exit_code == 2 and "alternatives" in result.output


def test_quant_is_for_adapter_dirs_only(data_dir, base_gguf):
    result = CliRunner().invoke(main, ["eval", "--data", str(data_dir / "abt_buy"), "--model", str(base_gguf),
                                       "--quant", "Q8_0"])
    assert result.exit_code == 2 and "--quant applies to trained adapter dirs" in result.output


def test_eval_skip_must_clear_the_tuning_pairs(data_dir, base_gguf):
    args = ["eval", "--data", str(data_dir / "abt_buy"), "--model", str(base_gguf), "--split", "valid",
            "--tune-split", "valid", "--tune-limit", "8"]
    result = CliRunner().invoke(main, [*args, "--skip", "4"])
    assert result.exit_code == 2 and "threshold is tuned on" in result.output
    result = CliRunner().invoke(main, [*args, "--skip", "8", "--limit", "6", "--batch-size", "8", "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout.splitlines()[0])
    assert row["skipped"] == 8 and row["n_pairs"] == 6 and row["threshold_tuned_on"] == "valid:8"


def test_eval_with_scores_dir_resumes_a_cut_run(data_dir, base_gguf, tmp_path):
    args = ["eval", "--data", str(data_dir / "abt_buy"), "--model", str(base_gguf), "--limit", "12",
            "--tune-split", "valid", "--tune-limit", "8", "--batch-size", "4", "--json", "--scores", str(tmp_path),
            "--one-order"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    test_file = tmp_path / "abt_buy-test-0-12.jsonl"
    assert (tmp_path / "abt_buy-valid-0-8.jsonl").exists()
    lines = test_file.read_text().splitlines()
    assert len(lines) == 12
    # as after a kill mid-run: the first batch written, a torn line after it
    test_file.write_text("\n".join(lines[:4]) + "\n" + lines[4][:10])
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    before, after = json.loads(first.stdout.splitlines()[0]), json.loads(again.stdout.splitlines()[0])
    assert after["resumed_scorings"] == 4 and after["scorings"] == 8
    for key in ("threshold", "tp", "fp", "fn", "tn"):
        assert after[key] == before[key]
    # tuning_f1 is the F1 of the stored valid scores at the tuned cut, and no cut among them does better
    from epm_edge.data import load_pair_set
    from epm_edge.evaluate.metrics import average_precision, compute_metrics

    valid = load_pair_set(data_dir / "abt_buy").split("valid").head(8)
    stored_rows = map(json.loads, (tmp_path / "abt_buy-valid-0-8.jsonl").read_text().splitlines())
    stored = {(r["a_id"], r["b_id"]): r["score"] for r in stored_rows}
    scores = [stored[k] for k in zip(valid.a_ids, valid.b_ids)]
    assert after["tuning_f1"] == pytest.approx(compute_metrics(valid.labels, scores, after["threshold"]).f1)
    assert all(compute_metrics(valid.labels, scores, t).f1 <= after["tuning_f1"] for t in scores)
    rows = [json.loads(line) for line in test_file.read_text().splitlines()]
    assert len(rows) == 12 and len({(r["a_id"], r["b_id"]) for r in rows}) == 12
    # average_precision ranks the evaluated (test) pairs' scores, not the tuning ones
    test = load_pair_set(data_dir / "abt_buy").split("test").head(12)
    by_pair = {(r["a_id"], r["b_id"]): r["score"] for r in rows}
    test_scores = [by_pair[k] for k in zip(test.a_ids, test.b_ids)]
    assert after["average_precision"] == pytest.approx(average_precision(test.labels, test_scores))
    other = CliRunner().invoke(main, [*args, "--record-tokens", "32"])
    assert other.exit_code != 0 and "different settings (record_tokens)" in other.output


def test_scores_dir_survives_a_threshold_stamped_into_the_model(data_dir, base_gguf, tmp_path):
    """`eval --save-threshold` restamps the cached GGUF's metadata; its stored scores stay valid."""
    import shutil

    from epm_edge.export.gguf_metadata import set_metadata

    model = shutil.copy(base_gguf, tmp_path / "model.gguf")
    args = ["eval", "--data", str(data_dir / "abt_buy"), "--model", str(model), "--limit", "4",
            "--batch-size", "4", "--json", "--scores", str(tmp_path / "scores"), "--one-order"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    set_metadata(Path(model), {"threshold": 0.3})
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    row = json.loads(again.stdout.splitlines()[0])
    assert row["resumed_scorings"] == 4 and row["scorings"] == 0 and row["threshold"] == pytest.approx(0.3)


def test_average_precision_is_threshold_free():
    from epm_edge.evaluate.metrics import average_precision

    # matches ranked first and third: precision 1/1 at the first, 2/3 at the second
    assert average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx((1 + 2 / 3) / 2)
    # the same order on another scale: the F1 at a fixed cut changes, AP does not
    assert average_precision([1, 0, 1, 0], [0.2, 0.04, 0.03, 0.0]) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision([1, 0, 1, 0], [0.1, 0.8, 0.7, 0.9]) == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert average_precision([0, 0], [0.3, 0.6]) is None
