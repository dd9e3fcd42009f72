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
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from epm_edge.bench.hostinfo import host_facts
from epm_edge.data import load_pair_set


def run_match(table_a: Path, table_b: Path, out: Path, top_k: int, cascade: str, model: str | None,
              extra: list[str] = ()) -> dict:
    """One `epm-edge match` process: its wall time, its own scoring time, pairs/s, LLM share, matches."""
    cmd = [str(Path(sys.executable).with_name("epm-edge")), "match", str(table_a), str(table_b), "--top-k", str(top_k),
           "-o", str(out), "--force", "--cascade", cascade] + (["--model", model] if model else []) + list(extra)
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{done.stderr[-2000:]}")
    with open(out, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    scoring = re.search(r"scored \d+ pairs in ([\d.]+)s", done.stderr)
    return {"command": shlex.join(["epm-edge", *cmd[1:]]), "seconds": seconds, "candidates": len(rows),
            "scoring_seconds": float(scoring.group(1)) if scoring else None,
            "pairs_per_second": len(rows) / seconds, "llm_share": sum(r["stage"] == "llm" for r in rows) / len(rows),
            "scores": {(r["a_id"], r["b_id"]): float(r["score"]) for r in rows},
            "matches": {(r["a_id"], r["b_id"]) for r in rows if r["match"] == "1"}}


NAMES = {"auto": "cascade", "off": "LLM only"}  # --cascade value -> run name


def head_csv(src: Path, dst: Path, rows: int) -> Path:
    """The header and first `rows` records of a catalog, written to `dst`."""
    with open(src, encoding="utf-8", newline="") as f, open(dst, "w", encoding="utf-8", newline="") as out:
        reader, writer = csv.reader(f), csv.writer(out)
        writer.writerow(next(reader))
        for _, row in zip(range(rows), reader):
            writer.writerow(row)
    return dst


def recall(matches: set, positives: set) -> float:
    return len(matches & positives) / len(positives) if positives else float("nan")


def llm_only_recall(auto_csv: Path, ps, positives: set, model: str | None, threads: int | None) -> dict:
    """The recall `--cascade off` reaches on the same candidates, exactly, from the cascade run: between
    its cuts the default cascade keeps the LLM's own score and cut, so there it decides as LLM-only
    does; the LLM scores only the positive candidates the feature stage settled."""
    from epm_edge.features.cascade import LLM_OWN
    from epm_edge.match.run import serialized
    from epm_edge.resolve import feature_stage, open_scorer

    cascade, both_orders = feature_stage("auto", model, None)
    _, scorer = open_scorer(model, threads=threads, both_orders=both_orders)
    cut = scorer.threshold
    if cascade is None or cascade.settings.coef != LLM_OWN or cascade.cut(cut) != cut:
        raise SystemExit("--llm-recall needs a cascade that keeps the LLM's own score and cut")
    with open(auto_csv, encoding="utf-8") as f:
        rows = {(r["a_id"], r["b_id"]): r for r in csv.DictReader(f)}
    found = [p for p in positives if p in rows]
    settled = [p for p in found if rows[p]["stage"] == "features"]
    sa, sb = serialized(ps.a, 64), serialized(ps.b, 64)
    scores = scorer.score([(sa[a], sb[b]) for a, b in settled]) if settled else []
    scorer.close()
    hits = sum(rows[p]["match"] == "1" for p in found if rows[p]["stage"] == "llm") + int(sum(s >= cut for s in scores))
    return {"positives": len(positives), "candidates": len(found), "rescored": len(settled), "cut": cut,
            "recall": hits / len(positives) if positives else float("nan")}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/abt_buy"))
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--a-records", type=int, default=None, help="Match the first N records of tableA (default: all).")
    ap.add_argument("--model", default=None, help="As for match (default: the shipped model).")
    ap.add_argument("--threads", type=int, default=None, help="As for match (default: the idle cores).")
    ap.add_argument("--runs", type=lambda v: [x for x in v.split(",") if x], default=list(NAMES),
                    help="Comma-separated: auto (the cascade), off (LLM only); default both; empty: none. A run left "
                         "out is kept from the last report in --out.")
    ap.add_argument("--llm-recall", action="store_true",
                    help="Also the recall LLM-only reaches on the cascade run's candidates, from that run "
                         "(the LLM scores only the positives the feature stage settled).")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if set(args.runs) - set(NAMES):
        ap.error(f"--runs takes {', '.join(NAMES)}")

    ps = load_pair_set(args.data)
    positives = ps.positives()
    raw = args.out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    table_a = args.data / "tableA.csv"
    if args.a_records:
        table_a = head_csv(args.data / "tableA.csv", raw / "tableA-head.csv", args.a_records)
    kept = set(list(ps.a.records)[:args.a_records])
    positives = {p for p in positives if p[0] in kept}

    report_path = args.out / "report.json"
    host = host_facts()
    report = {"data": str(args.data), "records": [len(kept), len(ps.b)], "top_k": args.top_k,
              "host": {k: host[k] for k in ("cpu", "cpu_features", "logical_cores", "llama_cpp_features")}}
    # a run not asked for this time is kept from the last report of the same catalogs on the same host,
    # so the two runs can be made one at a time
    earlier = json.loads(report_path.read_text()) if report_path.exists() else {}
    same = all(earlier.get(k) == v for k, v in report.items())
    runs = [r for r in earlier.get("runs", []) if same and r.get("mode") not in args.runs]
    for cascade in args.runs:
        name = NAMES[cascade]
        print(f"{name} ...", file=sys.stderr, flush=True)
        load = os.getloadavg()[0]
        r = run_match(table_a, args.data / "tableB.csv", raw / f"{cascade}.csv", args.top_k, cascade, args.model,
                      ["--threads", str(args.threads)] if args.threads else [])
        del r["scores"]
        r.update(name=name, mode=cascade, load_before=load, positives=len(positives),
                 recall=recall(r.pop("matches"), positives))
        print(f"  {r['candidates']} pairs in {r['seconds']:.0f}s, {r['pairs_per_second']:.1f} pairs/s, "
              f"LLM share {r['llm_share']:.1%}, recall {r['recall']:.3f}", file=sys.stderr, flush=True)
        runs.append(r)
    runs.sort(key=lambda r: list(NAMES).index(r["mode"]))
    derived = earlier.get("llm_only_recall") if same else None
    if args.llm_recall:
        print("LLM-only recall from the cascade run ...", file=sys.stderr, flush=True)
        derived = llm_only_recall(raw / "auto.csv", ps, positives, args.model, args.threads)
    report_path.write_text(json.dumps({**report, "runs": runs, "llm_only_recall": derived}, indent=2) + "\n")

    a_desc = f"the first {len(kept):,} of {len(ps.a):,} tableA records" if args.a_records else "the whole tableA"
    lines = [f"# Catalog benchmark: {args.data.name}, {a_desc} against tableB ({len(ps.b):,} records)", "",
             f"Command: `python experiments/catalog_match.py --data {args.data} --top-k {args.top_k}"
             + (f" --a-records {args.a_records}" if args.a_records else "")
             + (f" --threads {args.threads}" if args.threads else "") + f" --out {args.out}`; "
             f"{host['logical_cores']} cores, {host['cpu']} ({' '.join(host['cpu_features'])}). Each run is one "
             "`epm-edge match` process with the default model; its wall time includes model load, blocking and "
             "pair features. Recall: the labelled positives of all splits (train, valid, test) among the output "
             "matches, over those whose A record was matched. Load: the host's 1-minute load average as the run "
             "started (other work sharing the cores).", "",
             "| run | candidate pairs | wall s | pairs/s | LLM share | positives | recall | load |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['candidates']:,} | {r['seconds']:.0f} | {r['pairs_per_second']:.1f} | "
              f"{r['llm_share']:.1%} | {r['positives']} | {r['recall']:.3f} | {r['load_before']:.1f} |"
              for r in runs]
    if derived:
        lines += ["", f"LLM only, from the cascade run (`--llm-recall`): recall {derived['recall']:.3f} of the same "
                      f"{derived['positives']} positives at the LLM's cut {derived['cut']:.3f}. Between its cuts the "
                      "cascade keeps the LLM's own score and cut, so there it decides as `--cascade off` does; the "
                      f"{derived['rescored']} positive candidates the feature stage settled were scored by the LLM."]
    lines += ["", "Commands:", ""] + [f"- {r['name']}: `{r['command']}`" for r in runs]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
