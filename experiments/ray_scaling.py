"""Ray benchmark: `epm-edge match` of the same candidates in one process and on a local Ray instance
with 1 actor x all cores and N actors x 1 thread, end to end.

Reported per run: wall time of the whole command, its own scoring time (after model load and
blocking), candidate pairs per second of scoring, and the largest score difference to the
single-process run. The Ray overhead per pair is (scoring seconds of 1 actor x all threads - those
of the single process with as many threads) / pairs: the same llama.cpp work, plus Ray's.

    python experiments/ray_scaling.py --data ../shared/data/abt_buy --a-records 40 --out reports/ray-scaling
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from catalog_match import head_csv, run_match  # noqa: E402

from epm_edge.bench.hostinfo import host_facts  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/abt_buy"))
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--a-records", type=int, default=40, help="Match the first N records of tableA.")
    ap.add_argument("--cascade", default="auto", help="As for match.")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    cores = os.cpu_count() or 1
    raw = args.out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    table_a = head_csv(args.data / "tableA.csv", raw / "tableA-head.csv", args.a_records)
    setups = [("one process", ["--threads", str(cores)]),
              (f"Ray, 1 actor x {cores} threads", ["--ray", "local", "--actors", "1", "--threads-per-actor", str(cores)])]
    if cores > 1:
        setups.append((f"Ray, {cores} actors x 1 thread", ["--ray", "local", "--actors", str(cores),
                                                             "--threads-per-actor", "1"]))
    runs, first = [], None
    for n, (name, extra) in enumerate(setups):
        print(f"{name} ...", file=sys.stderr, flush=True)
        r = run_match(table_a, args.data / "tableB.csv", raw / f"run{n}.csv", args.top_k, args.cascade, None, extra)
        scores = r.pop("scores")
        r.pop("matches")
        first = first or scores
        r.update(name=name, scoring_pairs_per_second=r["candidates"] / r["scoring_seconds"],
                 same_pairs=scores.keys() == first.keys(),
                 max_score_difference=max(abs(scores[k] - first[k]) for k in first if k in scores))
        print(f"  {r['candidates']} pairs, scoring {r['scoring_seconds']:.1f}s, whole command {r['seconds']:.1f}s",
              file=sys.stderr, flush=True)
        runs.append(r)
    overhead = (runs[1]["scoring_seconds"] - runs[0]["scoring_seconds"]) / runs[0]["candidates"]
    host = host_facts()
    report = {"data": str(args.data), "a_records": args.a_records, "top_k": args.top_k, "cascade": args.cascade,
              "host": {k: host[k] for k in ("cpu", "cpu_features", "logical_cores", "llama_cpp_features")},
              "ray_overhead_seconds_per_pair": overhead, "runs": runs}
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Ray benchmark: {args.data.name}, the first {args.a_records} tableA records against tableB, "
             f"top-{args.top_k}, cascade {args.cascade}", "",
             f"Command: `python experiments/ray_scaling.py --data {args.data} --a-records {args.a_records} "
             f"--top-k {args.top_k} --cascade {args.cascade} --out {args.out}`; {host['logical_cores']} cores, "
             f"{host['cpu']} ({' '.join(host['cpu_features'])}). Each run is one `epm-edge match` process on the "
             "same candidates; scoring s is its own figure (after model load, blocking and, for Ray, starting "
             "the local instance), command s the whole process.", "",
             "| run | pairs | scoring s | pairs/s (scoring) | command s | LLM share | max score diff vs one process |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['candidates']:,} | {r['scoring_seconds']:.1f} | {r['scoring_pairs_per_second']:.1f} | "
              f"{r['seconds']:.1f} | {r['llm_share']:.1%} | {r['max_score_difference']:.2g} |" for r in runs]
    lines += ["", f"Ray overhead per pair (1 actor x {cores} threads vs one process): {overhead * 1000:.1f} ms.", "",
              "Commands:", ""] + [f"- {r['name']}: `{r['command']}`" for r in runs]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
