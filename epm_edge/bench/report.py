"""report.md (what a person reads first), report.json (every raw figure), scores.csv, plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from epm_edge.bench.plots import PLOTS, write_plots

COLUMNS = ("variant", "runtime", "threads", "threshold", "P", "R", "F1", "LLM share", "pairs/s", "prompt tok/s",
           "p50 ms", "p90 ms", "p99 ms", "peak RSS MB", "size MB", "load s")
COST_COLUMN = "USD / 1M pairs"
REFERENCE = "hf-fp32"  # with it in a run, each variant's F1 is also shown against it on the same pairs
DELTA_COLUMN = f"ΔF1 pt vs {REFERENCE}"


def num(x: float | None) -> str:
    """About three significant digits without exponents; '-' when there is no figure."""
    if x is None:
        return "-"
    digits = 0 if abs(x) >= 100 else 1 if abs(x) >= 10 else 2 if abs(x) >= 0.1 else 3
    return f"{x:.{digits}f}"


def _pm(stat: dict | None) -> str:
    return "-" if stat is None else f"{num(stat['mean'])} ± {num(stat['sd'])}"


def table_cells(r: dict, with_cost: bool, reference_f1: float | None = None) -> list[str]:
    lat = r["latency_ms"]
    delta = [] if reference_f1 is None else [f"{(r['f1'] - reference_f1) * 100:+.1f}"]
    cells = [r["variant"], r["runtime"], str(r["threads"]), f"{r['threshold']:.3f}", f"{r['precision']:.3f}",
             f"{r['recall']:.3f}", f"**{r['f1']:.3f}**", *delta, f"{r.get('llm_share', 1.0):.0%}",
             _pm(r["pairs_per_s"]),
             _pm(r["prompt_tokens_per_s"]),
             num(lat["p50"]), num(lat["p90"]), num(lat["p99"]), num(r["peak_rss_bytes"] / 1e6),
             num(r["size_bytes"] / 1e6), num(r["load_seconds"])]
    return cells + ([num(r["usd_per_million_pairs"])] if with_cost else [])


def _md_row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def _header(report: dict, command: str | None) -> list[str]:
    h, s = report["host"], report["settings"]
    v = h["versions"]
    ok = [r for r in report["results"] if "error" not in r]
    when, loads = [r["measured_at"] for r in ok], [r["load_average"][0] for r in ok]
    facts = [
        ("run started", h["date"]),
        ("CPU", f"{h['cpu']}; features: {' '.join(h['cpu_features']) or '-'}"),
        ("cores", f"{h['logical_cores']} logical, {h['physical_cores']} physical; threads used: "
                  f"{', '.join(map(str, s['threads']))}"),
        ("RAM", f"{h['ram_bytes'] / 2**30:.1f} GiB"),
        ("measured", f"{min(when)} to {max(when)} (UTC)" if when else "-"),
        ("load average", f"1-minute load average at the end of each variant: {min(loads):.2f} to "
                         f"{max(loads):.2f}" if loads else "-"),
        ("software", ", ".join(f"{k} {v[k]}" for k in v) + f", Python {h['python']}, {h['os']}"),
        ("llama.cpp build", " ".join(h["llama_cpp_features"]) or "-"),
        ("git commit", h["git_commit"]),
        ("model", s["model"]),
        ("data", ", ".join(s["data"])),
        ("settings", f"split {s['split']}, limit {s['limit'] or 'none'}, batch {s['batch_size']}, "
                     f"{s['repeat']} repetitions of {s['timing_pairs']} throughput pairs and "
                     f"{s['latency_pairs']} latency pairs, "
                     f"record tokens {s['record_tokens']}, prompt {s['prompt_version']}"),
        ("cascade", f"model variants run inside the feature cascade of {s['cascade']} (`+cascade`; LLM share: "
                    "the pairs it sent to the LLM)" if s.get("cascade") else "off: the LLM scores every pair"),
        ("scoring", "both record orders, A/B and B/A combined, as `epm-edge match` by default (a pair is "
                    "two scorings, counted once)" if s.get("both_orders") else "one record order (A/B)"),
    ]
    lines = ["# epm-edge bench", ""]
    if command:
        lines += ["```", command, "```", ""]
    # The bench's own threads make a load of about their number (a 1-minute average, so it lags into
    # the next, maybe lighter variant); half a core more than that means other work ran.
    if max(loads, default=0) > min(max(s["threads"]), h["logical_cores"]) + 0.5:
        lines += ["**Warning:** other work kept this host busy (load average above the bench's own threads): "
                  "timings are slower and noisier than on an idle host.", ""]
    return lines + ["| | |", "|---|---|"] + [_md_row([k, str(val).replace("|", "/")]) for k, val in facts] + [""]


NOTES = """\
How to read: the threshold of each variant maximizes F1 on the valid split and P, R, F1 are then
measured on the whole split above; with hf-fp32 in the run, ΔF1 is each variant's F1 minus its F1 on
the same pairs (a variant named `...-imatrix` was quantized with the importance matrix). pairs/s:
offline scoring in batches of the first pairs of the split (mean ± sd over repetitions, after the
accuracy pass has warmed up the runtime).
p50/p90/p99: one pair per call, pooled over repetitions. With both record orders (see "scoring"),
every figure is of a pair scored both ways, TF-IDF apart (a cosine, the same either way). prompt
tok/s: tokens of the full prompts (shared instruction prefix included) times pairs/s, so runtimes
that compute the prefix once show it as a higher effective rate. Peak RSS: the whole worker
process (Python, runtime, model). Size: the file(s) on disk (bitsandbytes: its pre-quantized
checkpoint; TF-IDF: its pickled vocabularies; a `-lora` variant: the base and its GGUF LoRA). Load: one sample per variant, page cache warm.
Cost: the given USD per core-hour, times the threads used, over the hours one million pairs take
at the measured pairs/s."""


def dataset_tables(report: dict) -> list[str]:
    """One Markdown table per dataset, then the variants that failed."""
    with_cost = report["settings"]["usd_per_core_hour"] is not None
    lines = []
    rows = report["results"]
    for name in dict.fromkeys(r["dataset"] for r in rows):
        rs = [r for r in rows if r["dataset"] == name]
        ok = [r for r in rs if "error" not in r]
        reference_f1 = next((r["f1"] for r in ok if r["variant"] == REFERENCE), None)
        f1_at = COLUMNS.index("F1") + 1
        cols = (COLUMNS[:f1_at] + ((DELTA_COLUMN,) if reference_f1 is not None else ()) + COLUMNS[f1_at:]
                + ((COST_COLUMN,) if with_cost else ()))
        counts = (f"{ok[0]['n_pairs']} pairs, threshold from {ok[0]['n_valid_pairs']} valid pairs" if ok
                  else "no results")
        lines += [f"## {name} ({rs[0]['split']}, {counts})", "", _md_row(cols), _md_row(["---"] * len(cols))]
        lines += [_md_row(table_cells(r, with_cost, reference_f1)) for r in ok]
        lines += [""] + [f"- {r['variant']}@{r['threads']} failed: {r['error']}" for r in rs if "error" in r]
        lines += [""]
    if with_cost:
        lines += [f"Cost assumes {report['settings']['usd_per_core_hour']} USD per core-hour (given by the user).", ""]
    return lines


def markdown(report: dict, plots: dict[str, str], command: str | None = None) -> str:
    lines = _header(report, command) + dataset_tables(report)
    lines += [NOTES, "", "## Plots", ""] + [f"![{PLOTS[k]}]({f})" for k, f in plots.items()]
    return "\n".join(lines) + "\n"


def write_scores(report: dict, path: Path) -> None:
    """Per-pair scores of every variant, for error analysis; kept out of report.json."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["dataset", "variant", "threads", "ltable_id", "rtable_id", "label", "score"])
        for r in report["results"]:
            if "scores" in r:
                p = report["pairs"][r["dataset"]]
                for a, b, y, s in zip(p["a_ids"], p["b_ids"], p["labels"], r["scores"]):
                    w.writerow([r["dataset"], r["variant"], r["threads"], a, b, y, f"{s:.6g}"])


def write_report(report: dict, out: Path, command: str | None = None) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    write_scores(report, out / "scores.csv")
    slim = {**report, "command": command,
            "results": [{k: v for k, v in r.items() if k != "scores"} for r in report["results"]]}
    slim.pop("pairs")
    plots = write_plots(report["results"], out)
    (out / "report.json").write_text(json.dumps(slim, indent=1) + "\n", encoding="utf-8")
    (out / "report.md").write_text(markdown(report, plots, command), encoding="utf-8")
    return {"report.md": out / "report.md", "report.json": out / "report.json", "scores.csv": out / "scores.csv",
            **{f: out / f for f in plots.values()}}
