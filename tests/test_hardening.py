"""Hostile input to the real `match` command (bundled model, small catalogs): a resumed run never mixes
settings, one writer per output, empty records never reach the model, every error is one line."""

import csv
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from epm_edge.cli import main
from epm_edge.match.output import ResultWriter

from conftest import EXAMPLES


def _head(src: Path, dst: Path, n: int) -> Path:
    dst.write_text("".join(src.read_text(encoding="utf-8").splitlines(keepends=True)[:n + 1]), encoding="utf-8")
    return dst


@pytest.fixture
def small(tmp_path):
    """Three retailer and four marketplace records: all 12 pairs are candidates."""
    return _head(EXAMPLES / "retailer.csv", tmp_path / "a.csv", 3), _head(EXAMPLES / "marketplace.csv", tmp_path / "b.csv", 4)


def run(base_gguf, a, b, *extra):
    args = ["match", str(a), str(b), "--model", str(base_gguf), "--one-order", "--top-k", "2", *extra]
    return CliRunner().invoke(main, args)


def one_line_error(result, code: int = 2) -> str:
    """The error's line; fails on a traceback or any other exit code."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith(("error:", "Error:"))]
    assert len(errors) == 1, result.output
    return errors[0]


def rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_resume_refuses_changed_columns_records_or_assignment(base_gguf, small, tmp_path):
    a, b = small
    out = tmp_path / "m.csv"
    assert run(base_gguf, a, b, "-o", str(out)).exit_code == 0
    first = rows(out)
    assert len(first) == 12
    assert "columns_a" in one_line_error(run(base_gguf, a, b, "-o", str(out), "--columns-a", "title"))
    assert "assignment" in one_line_error(run(base_gguf, a, b, "-o", str(out), "--one-to-one"))
    a.write_text(a.read_text(encoding="utf-8").replace("Sony", "Bose", 1), encoding="utf-8")  # an edited record
    assert "catalog_a_sha256" in one_line_error(run(base_gguf, a, b, "-o", str(out)))
    assert rows(out) == first  # a refused run leaves the file as it was
    r = run(base_gguf, a, b, "-o", str(out), "--force", "--columns-a", "title")
    assert r.exit_code == 0 and "resumed" not in r.output
    assert len(rows(out)) == 12  # --force starts over, never appends


def test_a_second_writer_fails_at_once(base_gguf, small, tmp_path):
    a, b = small
    out = tmp_path / "m.csv"
    holder = ResultWriter(out, {"held": True})
    try:
        assert "another epm-edge run is writing" in one_line_error(run(base_gguf, a, b, "-o", str(out)))
    finally:
        holder.close()
    assert run(base_gguf, a, b, "-o", str(out), "--force").exit_code == 0  # free again


def test_empty_records_never_reach_the_model(base_gguf, small, tmp_path):
    a, b = small
    with open(a, "a", encoding="utf-8") as f:
        f.write("R999,,,,\n")  # an id and nothing else
    out = tmp_path / "m.csv"
    r = run(base_gguf, a, b, "-o", str(out))
    assert r.exit_code == 0, r.output
    assert "1 record(s) with no attribute text get no match" in r.output and "R999" in r.output
    got = rows(out)
    assert len(got) == 12 and "R999" not in {x["a_id"] for x in got}
    assert "--record-tokens" in one_line_error(run(base_gguf, a, b, "--record-tokens", "0"))
    only_ids = _head(a, tmp_path / "ids.csv", 5)
    only_ids.write_text("sku,title\n" + "".join(f"R{i},\n" for i in range(3)), encoding="utf-8")
    assert "no record has text" in one_line_error(run(base_gguf, only_ids, b))


def test_a_model_that_computes_nan_stops_the_run(nan_gguf, small, tmp_path):
    """Garbled tensor data that loads: one line and exit 2, not a file of 0.000000 scores."""
    assert "non-finite logits" in one_line_error(run(nan_gguf, *small, "-o", str(tmp_path / "m.csv")))


@pytest.mark.parametrize("option", [("--top-k", "0"), ("--top-k", "-1"), ("--threshold", "2"), ("--threshold", "nan"),
                                    ("--batch-size", "0"), ("--batch-size", "-3"), ("--explain-above", "1.5"),
                                    ("--threads", "0")])
def test_numeric_options_are_checked(base_gguf, small, option):
    assert option[0] in one_line_error(run(base_gguf, *small, *option))


@pytest.mark.parametrize("limit", ["0", "-5"])
def test_eval_limit_is_checked(limit, data_dir):
    r = CliRunner().invoke(main, ["eval", "--data", str(data_dir / "abt_buy"), "--limit", limit])
    assert "--limit" in one_line_error(r)


def test_output_that_cannot_be_written_is_one_line(base_gguf, small, tmp_path):
    a, b = small
    assert "is a directory" in one_line_error(run(base_gguf, a, b, "-o", str(tmp_path), "--force"))
    before = a.read_bytes()
    assert "is an input catalog" in one_line_error(run(base_gguf, a, b, "-o", str(a), "--force"))
    assert a.read_bytes() == before
    # /proc takes no new files, even from root
    one_line_error(run(base_gguf, a, b, "-o", "/proc/epm-edge-test/m.csv"), code=1)
    if Path("/dev/full").exists():  # a full disk
        assert "No space left" in one_line_error(run(base_gguf, a, b, "-o", "/dev/full"), code=1)
        assert not Path("/dev/full.run.json").exists()


def test_columns_without_words_are_one_line(base_gguf, tmp_path):
    """Catalogs past the all-pairs size go through TF-IDF blocking, which needs some letter or digit."""
    for name in ("a", "b"):
        (tmp_path / f"{name}.csv").write_text("id,title\n" + "".join(f"{i},--- !!\n" for i in range(25)),
                                              encoding="utf-8")
    r = run(base_gguf, tmp_path / "a.csv", tmp_path / "b.csv")
    assert "no letters or digits" in one_line_error(r)


def test_probability_rejects_nan():
    from epm_edge.cli import PROBABILITY

    assert PROBABILITY.convert("0.25", None, None) == 0.25
    with pytest.raises(Exception, match="nan"):
        PROBABILITY.convert(str(math.nan), None, None)


def test_fuzzed_catalogs_never_crash(base_gguf, small, tmp_path):
    """Random byte mutations (seeded, bounded) of small catalogs: exit 0 with a full result file, or
    exit 2 with one error line; never a traceback."""
    import random

    rng = random.Random(7)
    sources = [_head(small[0], tmp_path / "a2.csv", 2).read_bytes(), _head(small[1], tmp_path / "b3.csv", 3).read_bytes()]
    outcomes = set()
    for trial in range(12):
        data = [bytearray(s) for s in sources]
        for _ in range(rng.randint(1, 6)):
            buf = data[rng.randrange(2)]
            pos = rng.randrange(len(buf))
            op = rng.randrange(3)
            if op == 0:
                buf[pos] = rng.randrange(256)
            elif op == 1:
                buf.insert(pos, rng.choice(b'",\n\r\x00\xff;|<>'))
            else:
                del buf[pos]
        fa, fb, out = tmp_path / f"fa{trial}.csv", tmp_path / f"fb{trial}.csv", tmp_path / f"m{trial}.csv"
        fa.write_bytes(bytes(data[0]))
        fb.write_bytes(bytes(data[1]))
        r = run(base_gguf, fa, fb, "-o", str(out))
        if r.exit_code == 0:
            assert rows(out) and all(0.0 <= float(x["score"]) <= 1.0 for x in rows(out))
        else:
            one_line_error(r)
        outcomes.add(r.exit_code)
    assert outcomes == {0, 2}  # the mutations hit both kinds of input


def test_doctor_scores_the_default_model():
    r = CliRunner().invoke(main, ["doctor"])
    assert r.exit_code == 0, r.output
    line = " ".join(r.output.split())
    assert "default model" in line and "P(match)" in line and "problem" not in line
    assert "GGUF converter" in line and "convert_hf_to_gguf" in line and "not available" not in line
