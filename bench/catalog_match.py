"""Catalog benchmark: `epm-edge match` of a benchmark's whole tableA against its tableB, end to end
(blocking, pair features, LLM, output), with the cascade on and off.

Reported per run: candidate pairs, wall time of the whole command (model load and blocking
included), candidate pairs per second, the share of pairs the LLM scored, matches, and the recall of
the labelled positives of all splits among the output matches. The LLM-only run scores every pair
twice (both record orders), which takes hours for a whole catalog on 2 cores, so both modes are
also run on the first `--sample` A records: that pair of runs is the like-for-like comparison.

    python bench/catalog_match.py --data ../shared/data/abt_buy --out bench/reports/catalog-abt_buy
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from epm_edge.data import load_pair_set


def run_match(table_a: Path, table_b: Path, out: Path, top_k: int, cascade: str, model: str | None) -> dict:
    cmd = [str(Path(sys.executable).with_name("epm-edge")), "match", str(table_a), str(table_b), "--top-k", str(top_k),
           "-o", str(out), "--force", "--cascade", cascade] + (["--model", model] if model else [])
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{done.stderr[-2000:]}")
    with open(out, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {"command": shlex.join(["epm-edge", *cmd[1:]]), "seconds": seconds, "candidates": len(rows),
            "pairs_per_second": len(rows) / seconds, "llm_share": sum(r["stage"] == "llm" for r in rows) / len(rows),
            "matches": {(r["a_id"], r["b_id"]) for r in rows if r["match"] == "1"}}


def recall(matches: set, positives: set) -> float:
    return len(matches & positives) / len(positives) if positives else float("nan")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/abt_buy"))
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--sample", type=int, default=100, help="A records of the like-for-like on/off comparison.")
    ap.add_argument("--model", default=None, help="As for match (default: the shipped model).")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    ps = load_pair_set(args.data)
    positives = ps.positives()
    raw = args.out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    sample_a = raw / "tableA-sample.csv"
    with open(args.data / "tableA.csv", encoding="utf-8", newline="") as src, \
            open(sample_a, "w", encoding="utf-8", newline="") as dst:
        reader = csv.reader(src)
        writer = csv.writer(dst)
        writer.writerow(next(reader))
        for _, row in zip(range(args.sample), reader):
            writer.writerow(row)
    sample_ids = set(list(ps.a.records)[:args.sample])
    sample_pos = {p for p in positives if p[0] in sample_ids}

    runs = []
    for name, table_a, cascade, pos in (("whole catalog, cascade", args.data / "tableA.csv", "auto", positives),
                                        (f"first {args.sample} A records, cascade", sample_a, "auto", sample_pos),
                                        (f"first {args.sample} A records, LLM only", sample_a, "off", sample_pos)):
        print(f"{name} ...", file=sys.stderr, flush=True)
        r = run_match(table_a, args.data / "tableB.csv", raw / f"{len(runs)}.csv", args.top_k, cascade, args.model)
        r.update(name=name, positives=len(pos), recall=recall(r.pop("matches"), pos))
        print(f"  {r['candidates']} pairs in {r['seconds']:.0f}s, {r['pairs_per_second']:.1f} pairs/s, "
              f"LLM share {r['llm_share']:.1%}, recall {r['recall']:.3f}", file=sys.stderr, flush=True)
        runs.append(r)

    report = {"data": str(args.data), "records": [len(ps.a), len(ps.b)], "top_k": args.top_k,
              "host": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
              "runs": runs}
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Catalog benchmark: {args.data.name}, whole tableA against tableB", "",
             f"Command: `python bench/catalog_match.py --data {args.data} --top-k {args.top_k} --sample {args.sample}"
             f" --out {args.out}`; {os.cpu_count()} cores. Each run is one `epm-edge match` process; its wall time "
             "includes model load, blocking and pair features. Recall: labelled positives of all splits "
             "(train, valid, test) whose A record was matched to the right B record, over those whose A record "
             "was in the run.", "",
             "| run | candidate pairs | wall s | pairs/s | LLM share | positives | recall |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['candidates']:,} | {r['seconds']:.0f} | {r['pairs_per_second']:.1f} | "
              f"{r['llm_share']:.1%} | {r['positives']} | {r['recall']:.3f} |" for r in runs]
    lines += ["", "Commands:", ""] + [f"- {r['name']}: `{r['command']}`" for r in runs]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
