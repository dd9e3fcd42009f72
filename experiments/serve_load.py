"""Load on `epm-edge serve`: 1, 4 and 16 concurrent clients, each sending one labelled abt_buy test
pair per request for a fixed time, against batch `eval` on the same pairs and model.

Loopback only; every level stops after --seconds. The service runs LLM-only (no catalog, as
`eval --cascade off`), both record orders, default batching (--max-batch 32, --max-wait-ms 10).

    .venv/bin/python experiments/serve_load.py --data ../shared/data/abt_buy --pairs 128 --seconds 30 \\
        --out reports/serve-load
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from epm_edge.bench.hostinfo import host_facts
from epm_edge.data import load_pair_set

LEVELS = (1, 4, 16)


def batch_eval(data: Path, pairs: int) -> float:
    """Pairs per second of `epm-edge eval --cascade off` on the first `pairs` test pairs."""
    r = subprocess.run([sys.executable, "-m", "epm_edge", "eval", "--data", str(data), "--split", "test", "--limit",
                        str(pairs), "--cascade", "off", "--json"], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])["pairs_per_second"]


def start_server() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "epm_edge", "serve", "--cascade", "off", "--port", str(port)],
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not become ready")


def load(url: str, records: list[dict], clients: int, seconds: float) -> dict:
    latencies, errors, lock = [], [], threading.Lock()
    stop = time.perf_counter() + seconds

    def client(offset: int) -> None:
        with httpx.Client(timeout=60) as http:
            n = offset
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                r = http.post(f"{url}/v1/score", json={"pairs": [records[n % len(records)]]})
                with lock:
                    (latencies if r.status_code == 200 else errors).append(time.perf_counter() - t0)
                n += clients

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"clients": clients, "requests": len(latencies), "errors": len(errors), "seconds": wall,
            "pairs_per_second": len(latencies) / wall,
            "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None}


def batch_totals(url: str) -> np.ndarray:
    """(pairs, batches) scored so far, from the service's metrics."""
    text = httpx.get(f"{url}/metrics").text
    value = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
             if line.startswith("epm_batch_pairs_")}
    return np.array([value["epm_batch_pairs_sum"], value["epm_batch_pairs_count"]])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/abt_buy"))
    ap.add_argument("--pairs", type=int, default=128, help="the first N test pairs, cycled by the clients")
    ap.add_argument("--seconds", type=float, default=30.0, help="per concurrency level (3 levels)")
    ap.add_argument("--out", type=Path, default=Path("reports/serve-load"))
    args = ap.parse_args()
    ps = load_pair_set(args.data)
    pairs = ps.split("test").head(args.pairs)
    records = [{"a": ps.a.records[a], "b": ps.b.records[b]} for a, b in zip(pairs.a_ids, pairs.b_ids)]

    eval_rate = batch_eval(args.data, args.pairs)
    proc, url = start_server()
    try:
        rows = []
        for clients in LEVELS:
            before = batch_totals(url)
            rows.append(load(url, records, clients, args.seconds))
            pairs, batches = batch_totals(url) - before
            rows[-1]["mean_batch_pairs"] = pairs / max(batches, 1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    for row in rows:
        row["share_of_eval"] = row["pairs_per_second"] / eval_rate

    args.out.mkdir(parents=True, exist_ok=True)
    command = shlex.join([".venv/bin/python", "experiments/serve_load.py", *sys.argv[1:]])
    host = host_facts()
    (args.out / "report.json").write_text(json.dumps({"command": command, "host": host, "eval_pairs_per_second":
                                                      eval_rate, "levels": rows}, indent=2) + "\n")
    lines = ["# Load on `epm-edge serve`", "", f"`{command}`", "",
             f"Host: {host['cpu']}, {host['logical_cores']} logical cores; commit {host['git_commit']}.", "",
             f"Batch `eval --cascade off` on the same {args.pairs} abt_buy test pairs: {eval_rate:.2f} pairs/s "
             "(both record orders).", "",
             "| clients | requests | errors | pairs/s | share of eval | p50 ms | p99 ms | mean pairs per batch |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['clients']} | {row['requests']} | {row['errors']} | {row['pairs_per_second']:.2f} | "
                     f"{row['share_of_eval']:.0%} | {row['p50_ms']:.0f} | {row['p99_ms']:.0f} | "
                     f"{row['mean_batch_pairs']:.1f} |")
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
