"""The `epm-edge` command line: thin wrappers that parse options, call the package, and print."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import click

from epm_edge import __version__
from epm_edge.cli_options import (PROBABILITY, backend_option, batch_option, both_orders_option, cascade_option,
                                  data_option, force_option, limit_option, lora_options, model_option, out_option,
                                  quant_option, record_tokens_option, threads_option, threshold_option)
from epm_edge.errors import EpmError
from epm_edge.model_settings import has_both_orders_cut, with_adapter_cut
from epm_edge.model_store import model_identity, sha256_file
from epm_edge.resolve import feature_stage, open_scorer

RAY_THREADS = 1  # llama.cpp threads per Ray actor unless told: more single-thread actors scored faster (docs/ray.md)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub at run time
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class Group(click.Group):
    """Turns EpmError into one clear line on stderr and exit code 2, without a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EpmError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except OSError as e:  # unwritable output dir, full disk, ...: the file and the reason
            where = f"{e.filename}: " if e.filename else ""
            click.echo(f"error: {where}{e.strerror or e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted: results written so far are kept; rerun the same command to resume", err=True)
            sys.exit(130)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="epm-edge")
@click.option("-v", "--verbose", is_flag=True, help="Show third-party warnings, logs and progress bars too.")
def main(verbose):
    """epm-edge: decide whether two e-commerce listings are the same product, on CPU."""
    from epm_edge.console import quiet_third_party

    quiet_third_party(verbose)


def _columns(value: str | None) -> list[str] | None:
    return [c.strip() for c in value.split(",") if c.strip()] if value else None


@main.command()
@click.argument("catalog_a", type=click.Path(path_type=Path))
@click.argument("catalog_b", type=click.Path(path_type=Path))
@out_option("Result file (.csv or .jsonl); resumable. Default: CSV on stdout.", default=None)
@model_option()
@lora_options
@quant_option
@backend_option
@threads_option()
@batch_option
@both_orders_option
@cascade_option
@click.option("--top-k", type=click.IntRange(min=1), default=20, show_default=True,
              help="Candidates per A record (blocking).")
@threshold_option
@click.option("--id-col-a", default=None, help="Id column of catalog A (default: auto-detect).")
@click.option("--id-col-b", default=None, help="Id column of catalog B (default: auto-detect).")
@click.option("--columns-a", default=None, help="Comma-separated attribute columns of A (default: all).")
@click.option("--columns-b", default=None, help="Comma-separated attribute columns of B (default: all).")
@record_tokens_option
@click.option("--one-to-one", "assignment", flag_value="greedy", default=None,
              help="Each record in at most one match (best score first).")
@click.option("--assignment", "assignment", type=click.Choice(["greedy", "hungarian"]),
              help="One-to-one assignment method.")
@click.option("--explain", is_flag=True, help="Add a grammar-constrained rationale (JSON) to matched pairs.")
@click.option("--explain-above", type=PROBABILITY, default=None,
              help="Explain pairs scoring at least this (default: the threshold).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS|auto|local]",
              help="Score on a Ray cluster ([ray] extra): HOST:PORT of its head, auto (the one this host joined) or "
                   "local (a new one on this host, the default value).")
@click.option("--actors", type=click.IntRange(min=1), default=None,
              help="With --ray: model copies scoring at once (default: the cluster's CPUs / --threads-per-actor).")
@click.option("--threads-per-actor", type=click.IntRange(min=1), default=None,
              help=f"With --ray: llama.cpp threads of each actor [default: {RAY_THREADS}].")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="N model copies on this host: --ray local --actors N, the cores shared out between them.")
@force_option
@click.pass_context
def match(ctx, catalog_a, catalog_b, out_path, model_path, lora, lora_scale, quant, backend, threads, batch_size,
          both_orders, cascade_mode, top_k, threshold, id_col_a, id_col_b, columns_a, columns_b, record_tokens,
          assignment, explain, explain_above, ray_address, actors, threads_per_actor, workers, force):
    """Find the listings of CATALOG_B that are the same product as a record of CATALOG_A."""
    from epm_edge.console import err, progress_bar
    from epm_edge.data import read_catalog
    from epm_edge.features.cascade import identity
    from epm_edge.match.blocking import candidates, map_in_process
    from epm_edge.match.run import drop_empty_records, run_match
    from epm_edge.report.tables import match_table

    if out_path is not None:
        if out_path.is_dir():
            raise click.UsageError(f"-o {out_path} is a directory: pass a result file (.csv or .jsonl)")
        for catalog in (catalog_a, catalog_b):
            if out_path.resolve() == catalog.resolve():
                raise click.UsageError(f"-o {out_path} is an input catalog: choose another result file")
    ray = _ray_settings(ray_address, actors, threads_per_actor, workers, threads, ctx.find_root().params["verbose"])
    a = read_catalog(catalog_a, id_col=id_col_a, columns=_columns(columns_a))
    b = read_catalog(catalog_b, id_col=id_col_b, columns=_columns(columns_b))
    err.print(f"[bold]A[/] {a.path} ({len(a)} records)   [bold]B[/] {b.path} ({len(b)} records)")

    def without_empty(name, catalog):
        kept, empty = drop_empty_records(catalog, record_tokens)
        if empty:
            err.print(f"[yellow]{name}: {len(empty)} record(s) with no attribute text get no match:[/] "
                      + ", ".join(empty[:10]) + (", ..." if len(empty) > 10 else ""))
        return kept

    a, b = without_empty("A", a), without_empty("B", b)
    if ray:  # blocking ranks the chunks of A as Ray tasks too
        from epm_edge.match.on_ray import connect
        from epm_edge.match.ray_blocking import cluster_map_chunks

        ray.actors = connect(ray)
        err.print(f"Ray: {ray.address}, {ray.actors} actor(s) x {ray.threads} thread(s)")
    t0 = time.perf_counter()
    cands = candidates(a, b, top_k=top_k, map_chunks=cluster_map_chunks() if ray else map_in_process)
    err.print(f"blocking: {len(cands)} candidate pairs of {len(a) * len(b)} ({time.perf_counter() - t0:.1f}s)")
    cascade, both_orders = feature_stage(cascade_mode, model_path, both_orders)
    if cascade is not None and not hasattr(cascade, "settings"):
        raise click.UsageError("--cascade features-only is for eval: match needs a cascade dir, auto or off")
    path, scorer = open_scorer(model_path, backend, threads, batch_size, quant, both_orders, lora, lora_scale)
    if explain and not hasattr(scorer, "explain"):
        raise EpmError(f"--explain needs the llamacpp backend (got {scorer.name})")
    stored = cascade.cut(scorer.threshold) if cascade else scorer.threshold
    thr = threshold if threshold is not None else (stored if stored is not None else 0.5)
    if cascade is None and both_orders and threshold is None and scorer.threshold is not None \
            and not has_both_orders_cut(scorer.metadata):
        err.print("[yellow]no cut tuned on both orders is stored with this model; its one-order cut stands in "
                  "(set one with eval --save-threshold, or pass --threshold or --one-order)[/]")
    runs_as = f" as {scorer.path.name}" if Path(scorer.path) != Path(path) else ""
    err.print(f"model: {path}{runs_as} ({scorer.name}{', both orders' if both_orders else ''}), threshold {thr:.3f}"
              + (f"; cascade: {cascade.path}" if cascade else ""))
    target = out_path or Path(tempfile.mkdtemp(prefix="epm-edge-")) / "matches.csv"
    # everything that decides the rows: a resumed run with any of it changed would mix two runs
    settings = {"catalog_a": str(Path(catalog_a).resolve()), "catalog_b": str(Path(catalog_b).resolve()),
                "catalog_a_sha256": sha256_file(catalog_a), "catalog_b_sha256": sha256_file(catalog_b),
                "id_col_a": a.id_col, "columns_a": a.columns, "id_col_b": b.id_col, "columns_b": b.columns,
                "model_sha256": model_identity(scorer.path), "backend": scorer.name,
                **({"lora_sha256": model_identity(lora), "lora_scale": lora_scale} if lora else {}),
                "top_k": top_k, "threshold": thr, "record_tokens": record_tokens, "explain": explain,
                "explain_above": explain_above, "both_orders": both_orders, "assignment": assignment,
                "cascade": identity(cascade) if cascade else "off"}
    counts = {"pairs": 0, "llm": 0}

    def advance(n: int, n_llm: int) -> None:
        counts["pairs"] += n
        counts["llm"] += n_llm
        bar.update(task, advance=n, description=f"scoring (LLM {counts['llm'] / max(counts['pairs'], 1):.0%})"
                   if cascade else "scoring")

    with progress_bar() as bar:
        task = bar.add_task("scoring", total=len(cands))
        summary = run_match(a, b, cands, scorer, target, settings, thr, batch_size=batch_size,
                            record_tokens=record_tokens, explain=explain, explain_above=explain_above,
                            assignment=assignment, force=force or out_path is None, cascade=cascade,
                            on_start=lambda done: bar.update(task, completed=done), on_batch=advance, ray=ray)
    scorer.close()
    rate = summary.scored / summary.seconds if summary.seconds else 0.0
    err.print(f"scored {summary.scored} pairs in {summary.seconds:.1f}s ({rate:.1f} pairs/s"
              + (f", {summary.to_llm} by the LLM" if cascade else "") + ")"
              + (f", {summary.resumed} resumed from {out_path}" if summary.resumed else "")
              + f"; {summary.matches} matches")
    if out_path is None:
        sys.stdout.write(target.read_text(encoding="utf-8"))
    else:
        err.print(match_table(summary.rows, a, b))
        err.print(f"results: {out_path}")


def _ray_settings(address, actors, threads_per_actor, workers, threads, verbose):
    """match's Ray options as RaySettings, or None for a single-process run."""
    from epm_edge.match.on_ray import RaySettings

    if workers is not None:
        if address not in (None, "local") or actors is not None:
            raise click.UsageError("--workers N runs N actors on this host: it is --ray local --actors N")
        address, actors = "local", workers
        threads_per_actor = threads_per_actor or max(1, (os.cpu_count() or 1) // workers)
    if address is None:
        if actors is not None or threads_per_actor is not None:
            raise click.UsageError("--actors and --threads-per-actor go with --ray or --workers")
        return None
    if threads is not None:
        raise click.UsageError("with --ray or --workers, threads are per actor: pass --threads-per-actor")
    return RaySettings(address, actors, threads_per_actor or RAY_THREADS, verbose)


@main.command("eval")
@data_option()
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "valid", "test"]))
@limit_option("Score only the first N pairs.")
@click.option("--skip", type=click.IntRange(min=0), default=0, show_default=True,
              help="Start after the first N pairs of --split (e.g. pairs a threshold was tuned on).")
@model_option()
@lora_options
@quant_option
@backend_option
@threads_option()
@batch_option
@both_orders_option
@click.option("--cascade", "cascade_mode", default="auto", show_default=True, metavar="auto|off|features-only|DIR",
              help="As for match; features-only: the feature matcher alone, no LLM (the baseline).")
@threshold_option
@click.option("--tune-split", type=click.Choice(["train", "valid"]), default=None,
              help="Choose each set's threshold on this split first (best F1 there).")
@click.option("--tune-limit", type=click.IntRange(min=1), default=None, help="Tune on the first N pairs of --tune-split.")
@record_tokens_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per set on stdout.")
@click.option("--scores", "scores_dir", type=click.Path(path_type=Path), default=None,
              help="Append each pair's score to a JSONL file per set and split in this dir as it is scored; "
                   "a rerun with the same arguments scores only the pairs not there yet.")
@click.option("--save-threshold", is_flag=True,
              help="Store the threshold tuned over all sets together in the --model adapter dir: its default "
                   "cut for this GGUF type and way of scoring (both orders, or one with --one-order).")
def eval_cmd(data, split, limit, skip, model_path, lora, lora_scale, quant, backend, threads, batch_size,
             both_orders, cascade_mode, threshold, tune_split, tune_limit, record_tokens, as_json, scores_dir,
             save_threshold):
    """Precision, recall, F1 and speed on a labelled split of one or more sets."""
    from epm_edge.console import err, out, progress_bar
    from epm_edge.evaluate.labelled import evaluate_set, pooled_threshold
    from epm_edge.report.tables import metrics_table
    from epm_edge.runtime.provenance import SIDECAR, read_sidecar, write_sidecar

    if threshold is not None and tune_split:
        raise click.UsageError("--threshold and --tune-split are alternatives: pass one")
    if tune_split == split and (tune_limit is None or skip < tune_limit):
        raise click.UsageError(f"--skip {skip} would score pairs the threshold is tuned on: "
                               f"pass --tune-limit N and --skip N or more")
    if save_threshold and not (tune_split and model_path and (Path(model_path) / "adapter_config.json").exists()):
        raise click.UsageError("--save-threshold needs --tune-split and a trained adapter dir as --model")
    from epm_edge.features.cascade import Cascade

    stage, both_orders = feature_stage(cascade_mode, model_path, both_orders)
    cascade = stage if isinstance(stage, Cascade) else None
    if save_threshold and stage is not None:
        raise click.UsageError("--save-threshold stores the LLM's own cut: pass --cascade off "
                               "(a cascade's cut is fitted by `epm-edge train cascade`)")
    if cascade is None and stage is not None:  # the feature matcher alone: no LLM to load
        path, scorer, identity = stage.path, None, None
    else:
        path, scorer = open_scorer(model_path, backend, threads, batch_size, quant, lora=lora, lora_scale=lora_scale)
        # the stored scores' key; hashing the model costs a read of it, so only when scores are kept
        identity = {"model": model_identity(scorer.path), "backend": scorer.name} if scores_dir else None
        if identity and lora:
            identity.update(lora=model_identity(lora), lora_scale=lora_scale)
    name = "features" if scorer is None else scorer.name + ("+features" if cascade else "")
    results, tunings = [], []
    try:
        with progress_bar() as bar:
            for d in data:
                r, tuning = evaluate_set(scorer, d, split, limit=limit, skip=skip, threshold=threshold,
                                         tune_split=tune_split, tune_limit=tune_limit, record_tokens=record_tokens,
                                         batch_size=batch_size, bar=bar, scores_dir=scores_dir,
                                         settings=identity, both_orders=both_orders, cascade=cascade,
                                         matcher=None if cascade else stage)
                results.append({**r, "model": str(path), "backend": name})
                tunings += [tuning] if tuning else []
                if as_json:
                    click.echo(json.dumps(results[-1]))
    finally:
        if scorer is not None:
            scorer.close()
    if not as_json:
        out.print(metrics_table(results))
    if tunings:
        cut, n = pooled_threshold(tunings)
        err.print(f"threshold best over the {n} {tune_split} pairs of all sets together: {cut:.4f}")
        if save_threshold:  # for the quant type scored, and as the cut of types that have none yet
            q = scorer.metadata["quant"]  # an adapter dir runs as its cached GGUF, which records its type
            sidecar = read_sidecar(model_path)
            tuned_on = f"{tune_split}: {n} pairs of {', '.join(d.name for d in data)} ({q})"
            write_sidecar(model_path, with_adapter_cut(sidecar, q, cut, both_orders, tuned_on))
            err.print(f"threshold {cut:.4f} ({q}{', both orders' if both_orders else ''}) stored in "
                      f"{Path(model_path) / SIDECAR}")


@main.command()
@click.option("--data", "data_dir", type=click.Path(path_type=Path), required=True,
              help="Benchmark dir with tableA.csv, tableB.csv and split files.")
@click.option("--top-k", type=click.IntRange(min=1), default=20, show_default=True, help="Candidates per A record.")
@click.option("--eval", "evaluate", is_flag=True, help="Report pair completeness against the labelled positives.")
@out_option("Write the candidates as CSV.", default=None)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def block(data_dir, top_k, evaluate, out_path, as_json):
    """Candidate pairs for a benchmark dir, with blocking quality (--eval)."""
    from epm_edge.console import err, out
    from epm_edge.data import load_pair_set
    from epm_edge.match.blocking import block as make_candidates, pair_completeness, write_candidates

    ps = load_pair_set(data_dir)
    t0 = time.perf_counter()
    cands = make_candidates(ps.a, ps.b, top_k=top_k)
    result = {"data": str(data_dir), "top_k": top_k, "candidates": len(cands),
              "reduction_ratio": 1 - len(cands) / (len(ps.a) * len(ps.b)), "seconds": time.perf_counter() - t0}
    if evaluate:
        positives = ps.positives()
        result.update(positives=len(positives), pair_completeness=pair_completeness(cands, positives))
    if out_path:
        write_candidates(cands, out_path)
        err.print(f"candidates: {out_path}")
    if as_json:
        click.echo(json.dumps(result))
    else:
        out.print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))


@main.command()
def doctor():
    """Versions, CPU features, llama.cpp system info and default model status."""
    from epm_edge.console import out
    from epm_edge.doctor import report

    out.print(report())


# Commands defined next to the stage they drive (each module keeps heavy imports inside functions).
from epm_edge.bench.cli import bench  # noqa: E402
from epm_edge.export.cli import export_cmd, verify_cmd  # noqa: E402
from epm_edge.serve.cli import serve  # noqa: E402
from epm_edge.train.cli import train  # noqa: E402

main.add_command(export_cmd, "export")
main.add_command(verify_cmd, "verify")
main.add_command(train)
main.add_command(bench)
main.add_command(serve)
