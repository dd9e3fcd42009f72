"""Blocking at scale: wall time and peak memory of `block` on synthetic catalogs of N records a side,
in this process and with the chunks of A as Ray tasks, and the growth fitted to extrapolate to
10^6 x 10^6.

The catalogs are grown from the tableA (side A) and tableB (side B) records of the four benchmark
sets: the source records in turn (in a seeded shuffled order), each copy with a new id, seller noise
in its title and a random code-like variant, so no two copies are the same listing. Each size and way
runs in a fresh process, so its peak RSS is its own; "catalog RSS" is that process with both catalogs
built, before blocking. With Ray, the driver's peak is exact and the process tree's (driver, Ray's
daemons and workers, sampled every 0.2 s) counts the object store's shared pages once per process
that touched them.

    python experiments/blocking_scale.py --data ../shared/data --sizes 10000,30000,50000 \\
        --ray-sizes 10000,20000 --out reports/blocking-scale

Sizes can be added one invocation at a time (`--sizes 100000`: about 17 minutes on one core of a
2-core EPYC): the runs already in the report with the same settings on the same CPU are kept.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import string
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from epm_edge.bench.hostinfo import host_facts
from epm_edge.data import read_catalog
from epm_edge.data.augment import add_seller_noise
from epm_edge.data.catalog import Catalog
from epm_edge.match.blocking import DEFAULT_MEMORY_BUDGET, block, chunk_rows

SETS = ("abt_buy", "amazon_google", "walmart_amazon", "wdc_products")
TARGET = 10 ** 6  # records a side to extrapolate to
MB = 1 << 20


def source_records(data: Path, table: str) -> list[dict[str, str]]:
    return [r for name in SETS for r in read_catalog(data / name / f"{table}.csv").records.values()]


def synthetic_catalog(sources: list[dict[str, str]], n: int, rng: random.Random, side: str) -> Catalog:
    """`n` records cycled from `sources`: new ids, seller noise, and a variant code of each copy's own.
    The sources go in a shuffled order, so that any `n` draws from all four sets alike."""
    order = rng.sample(sources, len(sources))
    records = {}
    for i in range(n):
        variant = "".join(rng.choices(string.ascii_uppercase, k=3)) + f"-{rng.randint(1000, 9999)}"
        records[f"{side}{i}"] = {**add_seller_noise(order[i % len(order)], rng), "variant": variant}
    columns = list(dict.fromkeys(c for r in sources for c in r)) + ["variant"]
    return Catalog(path=Path(f"synthetic-{side}"), id_col="id", columns=columns, records=records)


def tree_rss() -> int:
    """RSS summed over this process and its descendants (Ray's daemons and workers)."""
    me = psutil.Process()
    total = me.memory_info().rss
    for p in me.children(recursive=True):
        try:
            total += p.memory_info().rss
        except psutil.Error:  # gone between listing and reading
            pass
    return total


class TreePeak:
    """Peak of `tree_rss`, sampled in a thread."""

    def __init__(self, every: float = 0.2):
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss())
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def measure(data: Path, n: int, way: str, top_k: int, budget: int, seed: int) -> dict:
    """Block two synthetic catalogs of `n` records in this process; time and memory."""
    if way == "ray":
        import ray

        start = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - start
    rng = random.Random(seed)
    a = synthetic_catalog(source_records(data, "tableA"), n, rng, "a")
    b = synthetic_catalog(source_records(data, "tableB"), n, rng, "b")
    gc.collect()
    catalog_rss, catalog_tree_rss = psutil.Process().memory_info().rss, tree_rss()
    first_chunk = []
    start = time.perf_counter()
    if way == "ray":
        from epm_edge.match.ray_blocking import block_on_ray as blocker
    else:
        blocker = block
    with TreePeak() as tree:
        cands = blocker(a, b, top_k, budget, progress=lambda _: first_chunk.append(time.perf_counter()))
    seconds = time.perf_counter() - start
    result = {"n": n, "way": way, "candidates": len(cands), "chunk_rows": chunk_rows(len(b), budget),
              "seconds": seconds, "index_and_first_chunk_s": first_chunk[0] - start,
              "catalog_rss": catalog_rss, "catalog_tree_rss": catalog_tree_rss,
              "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "tree_peak_rss": tree.peak}
    if way == "ray":
        result.update(ray_start_s=ray_start, cpus=int(ray.cluster_resources().get("CPU", 0)))
        ray.shutdown()
    return result


def run_fresh(args, n: int, way: str) -> dict:
    cmd = [sys.executable, __file__, "--data", str(args.data), "--top-k", str(args.top_k), "--budget",
           str(args.budget), "--seed", str(args.seed), "--one", str(n), way]
    load = os.getloadavg()[0]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "load_before": load}


# what is fitted against N: the index is built once (about linear), the chunks rank every A row against
# all of B (about quadratic); extrapolated apart, the two add up to a truer wall time than one fit
QUANTITIES = {"index + first chunk s": lambda r: r["index_and_first_chunk_s"],
              "later chunks s": lambda r: r["seconds"] - r["index_and_first_chunk_s"],
              "wall s": lambda r: r["seconds"],
              "peak RSS": lambda r: r["peak_rss"]}
FITS = ("all sizes", "two largest")


def growth(n: np.ndarray, y: np.ndarray) -> dict:
    """Log-log slope of `y` against `n`, over all sizes and over the two largest, each extrapolated
    from the largest size to TARGET records a side."""
    slopes = dict(zip(FITS, (np.polyfit(np.log(n), np.log(y), 1)[0], np.log(y[-1] / y[-2]) / np.log(n[-1] / n[-2]))))
    return {name: {"exponent": float(p), "at_target": float(y[-1] * (TARGET / n[-1]) ** p)}
            for name, p in slopes.items()}


def earlier_runs(path: Path, report: dict, todo: set) -> tuple[list[dict], list[str]]:
    """The runs of the report at `path`, made with the same settings on the same CPU, that this
    invocation does not redo, and the commands that made them: sizes can be measured one at a time."""
    earlier = json.loads(path.read_text()) if path.exists() else {}
    if any(earlier.get(k) != report[k] for k in ("top_k", "budget", "seed")) \
            or earlier["host"]["cpu"] != report["host"]["cpu"]:
        return [], []
    return ([r for r in earlier["runs"] if (r["n"], r["way"]) not in todo],
            earlier["commands"])


def fits(runs: list[dict]) -> dict:
    """Per way with two sizes or more: the growth of each quantity, and the wall time at TARGET as the
    sum of its two parts extrapolated apart."""
    ways = {}
    for way in ("in-process", "ray"):
        mine = sorted((r for r in runs if r["way"] == way), key=lambda r: r["n"])
        if len(mine) >= 2:
            n = np.array([r["n"] for r in mine], dtype=float)
            g = {q: growth(n, np.array([f(r) for r in mine], dtype=float)) for q, f in QUANTITIES.items()}
            g["wall s from its parts"] = {fit: {"at_target": g["index + first chunk s"][fit]["at_target"]
                                                + g["later chunks s"][fit]["at_target"]} for fit in FITS}
            ways[way] = g
    return ways


def markdown(report: dict) -> str:
    host = report["host"]
    lines = ["# Blocking at scale", "",
             "Commands: " + "; ".join(f"`{c}`" for c in report["commands"])
             + f". {host['logical_cores']} cores, {host['cpu']}, {host['ram_bytes'] / (1 << 30):.0f} GiB RAM. "
             "Synthetic catalogs of N records a side grown from the four benchmark sets (seller noise, a "
             f"variant code per copy); top-k {report['top_k']}, memory budget {report['budget'] / MB:.0f} MB a "
             "chunk. Each row is a fresh process. Catalog RSS: both catalogs built, before blocking. Peak RSS: "
             "the blocking process (the Ray driver); tree before and tree peak: with Ray's daemons and workers, "
             "before blocking and at the peak (sampled; shared pages counted per process). Load: 1-minute load "
             "average as the run started.", "",
             "| way | N a side | candidates | chunk rows | index + first chunk s | wall s | catalog RSS MB | "
             "peak RSS MB | tree before MB | tree peak MB | load |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['way']} | {r['n']:,} | {r['candidates']:,} | {r['chunk_rows']} | "
              f"{r['index_and_first_chunk_s']:.1f} | {r['seconds']:.1f} | {r['catalog_rss'] / MB:,.0f} | "
              f"{r['peak_rss'] / MB:,.0f} | {r['catalog_tree_rss'] / MB:,.0f} | {r['tree_peak_rss'] / MB:,.0f} | "
              f"{r['load_before']:.1f} |"
              for r in report["runs"]]
    lines += ["", f"Growth: log-log slope against N (over all sizes; over the two largest), extrapolated from "
              f"the largest size to {TARGET:,} x {TARGET:,}. Wall s from its parts: index and chunks extrapolated "
              "apart and added.", "",
              "| way | quantity | exponent, all sizes | at 10^6 | exponent, two largest | at 10^6 |",
              "|---|---|---|---|---|---|"]
    for way, quantities in report["growth"].items():
        for name, g in quantities.items():
            cells = [(f"{g[fit]['exponent']:.2f}" if "exponent" in g[fit] else "", at_target(name, g[fit]))
                     for fit in FITS]
            lines.append(f"| {way} | {name} | " + " | ".join(c for pair in cells for c in pair) + " |")
    return "\n".join(lines) + "\n"


def at_target(quantity: str, fitted: dict) -> str:
    value = fitted["at_target"]
    return f"{value / (1 << 30):,.1f} GiB" if quantity == "peak RSS" else duration(value)


def duration(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} h" if seconds >= 3600 else f"{seconds / 60:,.1f} min"


def sizes(value: str) -> list[int]:
    return [int(float(v)) for v in value.split(",") if v]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--sizes", type=sizes, default=[10 ** 4, 3 * 10 ** 4, 10 ** 5],
                    help="Records a side, comma-separated, blocked in this process (1e4 notation works).")
    ap.add_argument("--ray-sizes", type=sizes, default=[], help="Records a side blocked with Ray tasks.")
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--budget", type=int, default=DEFAULT_MEMORY_BUDGET, help="Bytes a chunk (memory_budget).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--one", nargs=2, metavar=("N", "WAY"), help=argparse.SUPPRESS)  # a child process: one run
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.data, int(args.one[0]), args.one[1], args.top_k, args.budget, args.seed)))
        return
    if args.out is None:
        ap.error("--out is required")

    command = "python experiments/blocking_scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    todo = sorted([(n, "in-process") for n in args.sizes] + [(n, "ray") for n in args.ray_sizes])
    report = {"top_k": args.top_k, "budget": args.budget, "seed": args.seed, "host": host_facts()}
    runs, commands = earlier_runs(args.out / "report.json", report, set(todo))
    report.update(commands=commands + [command], runs=runs, growth=fits(runs))
    # smallest first, so that a run stopped at a size that proves too slow still leaves all smaller ones
    for n, way in todo:
        print(f"{way} {n:,} a side ...", flush=True)
        run = run_fresh(args, n, way)
        print(json.dumps(run), flush=True)
        report["runs"] = sorted(report["runs"] + [run], key=lambda r: (r["n"], r["way"]))
        report["growth"] = fits(report["runs"])
        (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "report.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
