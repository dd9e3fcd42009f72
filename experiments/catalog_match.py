"""Catalog benchmark: `epm-edge match` of a benchmark's tableA against its whole tableB, end to end
(blocking, pair features, LLM, output), with the cascade on and with `--cascade off`.

Reported per run: candidate pairs, wall time of the whole command (model load, blocking and pair
features included), candidate pairs per second, the share of pairs the LLM scored, and the recall of
the labelled positives of all splits among the output matches. `--a-records N` matches the first N
records of tableA only (default: all): LLM-only scoring of a whole catalog takes hours on 2 cores.

    python experiments/catalog_match.py --data ../shared/data/abt_buy --out reports/catalog-abt_buy
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from epm_edge.bench.hostinfo import host_facts
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
    ap.add_argument("--a-records", type=int, default=None, help="Match the first N records of tableA (default: all).")
    ap.add_argument("--model", default=None, help="As for match (default: the shipped model).")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    ps = load_pair_set(args.data)
    positives = ps.positives()
    raw = args.out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    table_a = args.data / "tableA.csv"
    if args.a_records:
        table_a = raw / "tableA-head.csv"
        with open(args.data / "tableA.csv", encoding="utf-8", newline="") as src, \
                open(table_a, "w", encoding="utf-8", newline="") as dst:
            reader, writer = csv.reader(src), csv.writer(dst)
            writer.writerow(next(reader))
            for _, row in zip(range(args.a_records), reader):
                writer.writerow(row)
    kept = set(list(ps.a.records)[:args.a_records])
    positives = {p for p in positives if p[0] in kept}

    runs = []
    for cascade in ("auto", "off"):
        name = "cascade" if cascade == "auto" else "LLM only"
        print(f"{name} ...", file=sys.stderr, flush=True)
        r = run_match(table_a, args.data / "tableB.csv", raw / f"{cascade}.csv", args.top_k, cascade, args.model)
        r.update(name=name, positives=len(positives), recall=recall(r.pop("matches"), positives))
        print(f"  {r['candidates']} pairs in {r['seconds']:.0f}s, {r['pairs_per_second']:.1f} pairs/s, "
              f"LLM share {r['llm_share']:.1%}, recall {r['recall']:.3f}", file=sys.stderr, flush=True)
        runs.append(r)

    host = host_facts()
    report = {"data": str(args.data), "records": [len(kept), len(ps.b)], "top_k": args.top_k,
              "host": {k: host[k] for k in ("cpu", "cpu_features", "logical_cores", "llama_cpp_features")},
              "runs": runs}
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    a_desc = f"the first {len(kept):,} of {len(ps.a):,} tableA records" if args.a_records else "the whole tableA"
    lines = [f"# Catalog benchmark: {args.data.name}, {a_desc} against tableB ({len(ps.b):,} records)", "",
             f"Command: `python experiments/catalog_match.py --data {args.data} --top-k {args.top_k}"
             + (f" --a-records {args.a_records}" if args.a_records else "") + f" --out {args.out}`; "
             f"{host['logical_cores']} cores, {host['cpu']} ({' '.join(host['cpu_features'])}). Each run is one `epm-edge match` process with the "
             "default model; its wall time includes model load, blocking and pair features. Recall: the labelled "
             "positives of all splits (train, valid, test) among the output matches, over those whose A record "
             "was matched.", "",
             "| run | candidate pairs | wall s | pairs/s | LLM share | positives | recall |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['candidates']:,} | {r['seconds']:.0f} | {r['pairs_per_second']:.1f} | "
              f"{r['llm_share']:.1%} | {r['positives']} | {r['recall']:.3f} |" for r in runs]
    lines += ["", "Commands:", ""] + [f"- {r['name']}: `{r['command']}`" for r in runs]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
