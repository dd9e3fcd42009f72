"""`match --ray`: a real local Ray instance (2 CPUs) scores as one process does, and resumes after the
driver is killed."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import EXAMPLES

pytest.importorskip("ray")


def _cmd(out, *extra):
    return [sys.executable, "-m", "epm_edge", "match", str(EXAMPLES / "retailer.csv"), str(EXAMPLES / "marketplace.csv"),
            "--top-k", "3", "--one-to-one", "-o", str(out), *extra]


def _rows(out) -> dict:
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    keys = [(r["a_id"], r["b_id"]) for r in rows]
    assert len(keys) == len(set(keys)), "a pair written twice"
    return dict(zip(keys, rows))


def _same_output(ray_rows: dict, local_rows: dict) -> None:
    assert ray_rows.keys() == local_rows.keys()
    for k, r in local_rows.items():
        assert float(ray_rows[k]["score"]) == pytest.approx(float(r["score"]), abs=2e-3)
        assert ray_rows[k]["stage"] == r["stage"]
    assert {k for k, r in ray_rows.items() if r["match"] == "1"} == {k for k, r in local_rows.items() if r["match"] == "1"}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, base_gguf):
    """The single-process run of the same job, with the cascade and without."""
    out = tmp_path_factory.mktemp("local")
    runs = {}
    for cascade in ("auto", "off"):
        r = subprocess.run(_cmd(out / f"{cascade}.csv", "--cascade", cascade), capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        runs[cascade] = _rows(out / f"{cascade}.csv")
    return runs


def test_ray_actors_give_the_single_process_output(tmp_path, local_run):
    out = tmp_path / "ray.csv"
    r = subprocess.run(_cmd(out, "--ray", "local", "--actors", "2", "--threads-per-actor", "1"),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "2 actor(s) x 1 thread(s)" in r.stderr
    rows = _rows(out)
    assert {r["stage"] for r in rows.values()} == {"features", "llm"}  # both stages ran in the actors
    _same_output(rows, local_run["auto"])


def test_ray_run_resumes_after_the_driver_is_killed(tmp_path, local_run):
    out = tmp_path / "ray.csv"
    cmd = _cmd(out, "--cascade", "off", "--workers", "2")
    # a session of its own: the kill takes the driver and the Ray instance it started, as a lost host would
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and len(out.read_text().splitlines()) > 10:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    kept = _rows(out)
    assert 0 < len(kept) < len(local_run["off"])
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"{len(kept)} resumed" in done.stderr
    rows = _rows(out)
    assert all(rows[k]["score"] == r["score"] for k, r in kept.items())  # what was written stays
    _same_output(rows, local_run["off"])


def test_a_node_with_other_model_bytes_is_named(tmp_path):
    import ray

    from epm_edge.errors import ModelError
    from epm_edge.match.on_ray import check_nodes, content_digest

    model = tmp_path / "model.gguf"
    model.write_bytes(b"weights")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        check_nodes({str(model): content_digest(model)})  # same bytes: passes
        with pytest.raises(ModelError, match=r"node \S+ \(.+\) holds another .*model\.gguf"):
            check_nodes({str(model): "0" * 64})
        with pytest.raises(ModelError, match=r"node \S+ \(.+\) cannot read .*missing\.gguf"):
            check_nodes({str(tmp_path / "missing.gguf"): "0" * 64})
    finally:
        ray.shutdown()
