"""`epm-edge bench`: parse options, run the benchmark, write the report."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import click

from epm_edge.cli_options import batch_option, data_option, limit_option, model_option, out_option, record_tokens_option


def _ints(ctx, param, value: str) -> tuple[int, ...]:
    try:
        out = tuple(int(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got '{value}'") from None
    if not out or min(out) < 1:
        raise click.BadParameter("thread counts must be 1 or more")
    return out


@click.command()
@model_option("Output dir of `epm-edge export` (or one .gguf / ONNX / HF dir). Default: the shipped model.")
@data_option()
@click.option("--split", default="test", show_default=True, type=click.Choice(["test", "valid", "train"]),
              help="Split the figures are reported on (thresholds always come from valid).")
@limit_option("Use only the first N pairs of each split.")
@click.option("--variants", default=None,
              help="Comma-separated variant names or patterns, e.g. 'gguf-q4*,onnx-int8,tfidf' (default: all found).")
@click.option("--threads", default=str(os.cpu_count() or 1), show_default=True, callback=_ints,
              help="CPU threads; several comma-separated values measure each variant at each.")
@batch_option
@click.option("--repeat", type=click.IntRange(1), default=3, show_default=True, help="Repetitions of every timing.")
@click.option("--timing-pairs", type=click.IntRange(1), default=256, show_default=True,
              help="Pairs (head of the split) scored in each repeated throughput run; accuracy uses the whole split.")
@click.option("--latency-pairs", type=click.IntRange(1), default=32, show_default=True,
              help="Pairs scored one at a time per repetition for the latency figures.")
@record_tokens_option
@click.option("--both-orders/--one-order", default=True, show_default=True,
              help="Score each pair as A/B and B/A, as `epm-edge match` does by default (pairs/s and latency "
                   "count the two scorings as one pair), or as A/B only.")
@click.option("--cascade", "cascade_mode", default="auto", show_default=True, metavar="auto|off|DIR",
              help="auto: when the export holds a feature stage (features/), every model variant runs inside "
                   "its cascade (and the feature matcher alone is a variant); off: the LLM scores every pair.")
@click.option("--usd-per-core-hour", type=float, default=None,
              help="Your price of one CPU core for an hour; adds cost per 1M pairs (no built-in prices).")
@out_option("Report dir.", required=True)
@click.option("--fresh", is_flag=True, help="Re-measure variants already measured in OUT/raw with the same settings.")
def bench(model_path, data, split, limit, variants, threads, batch_size, repeat, timing_pairs, latency_pairs,
          record_tokens, both_orders, cascade_mode, usd_per_core_hour, out_path, fresh):
    """Accuracy, throughput, latency, memory and cost of every exported variant, as a report."""
    from epm_edge.bench.report import dataset_tables, write_report
    from epm_edge.bench.run import BenchConfig, run_bench
    from epm_edge.console import err
    from epm_edge.resolve import default_model

    model = model_path or default_model()
    cascade = None
    if cascade_mode != "off":
        from epm_edge.features.cascade import cascade_dir

        cascade = cascade_dir(model) if cascade_mode == "auto" else Path(cascade_mode)
        if cascade is not None:
            from epm_edge.features.cascade import load_cascade

            load_cascade(cascade)  # a broken feature stage fails here, before any measuring
    cfg = BenchConfig(model=model, data_dirs=data,
                      out=out_path, split=split, limit=limit,
                      variants=[v.strip() for v in variants.split(",") if v.strip()] if variants else None,
                      threads=threads, batch_size=batch_size, repeat=repeat, timing_pairs=timing_pairs,
                      latency_pairs=latency_pairs,
                      record_tokens=record_tokens, both_orders=both_orders, usd_per_core_hour=usd_per_core_hour,
                      fresh=fresh, cascade=cascade)
    report = run_bench(cfg, log=err.print)
    # The exact command goes into the report, so it can be reproduced (only when run as `epm-edge`).
    command = shlex.join(["epm-edge", *sys.argv[1:]]) if Path(sys.argv[0]).name == "epm-edge" else None
    files = write_report(report, out_path, command)
    click.echo("\n".join(dataset_tables(report)))
    err.print("report: " + ", ".join(str(p) for p in files.values()))
