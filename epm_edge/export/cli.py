"""`epm-edge export` and `epm-edge verify` (registered in epm_edge/cli.py). Heavy imports stay inside."""

from __future__ import annotations

from pathlib import Path

import click

from epm_edge.errors import EpmError

data_options = [
    click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
                 help="Labelled pairs to verify on (default: the adapter's training data, else the recipe's)."),
    click.option("--split", default=None, type=click.Choice(["train", "valid", "test"]),
                 help="Split to verify on (default: the recipe's, valid)."),
    click.option("--limit", type=click.IntRange(min=1), default=None,
                 help="Verify on the first N pairs (default: the recipe's)."),
    click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads (default: all cores)."),
    click.option("--allow-fail", is_flag=True, help="Exit 0 even if a variant breaks its accuracy budget."),
]


def with_data_options(f):
    for option in reversed(data_options):
        f = option(f)
    return f


def _finish(report: dict, root: Path, allow_fail: bool) -> None:
    from epm_edge.console import err
    from epm_edge.export.pipeline import REPORT_MD

    click.echo((root / REPORT_MD).read_text())
    failed = [v["name"] for v in report["variants"] if not v["passed"]]
    if failed:
        msg = f"over budget: {', '.join(failed)} (see {root / REPORT_MD})"
        if not allow_fail:
            raise EpmError(msg)
        err.print(f"[yellow]warning:[/] {msg}; kept because of --allow-fail")


@click.command("export")
@click.option("--recipe", type=click.Path(path_type=Path), default=None,
              help="Variants and accuracy budgets (default: export/default.toml).")
@click.option("--base", type=click.Path(path_type=Path), default=None,
              help="Base model: a .gguf file or a Hugging Face dir (default: the bundled SmolLM2).")
@click.option("--adapter", type=click.Path(path_type=Path), default=None,
              help="PEFT adapter dir to merge (default: the shipped models/epm-smollm2-135m, unless --base is given).")
@click.option("--no-adapter", is_flag=True, help="Export the base model alone, untrained.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("epm-export"), show_default=True,
              help="Export dir to create.")
@click.option("--force", is_flag=True, help="Replace an existing export dir.")
@with_data_options
def export_cmd(recipe, base, adapter, no_adapter, out_dir, force, data_dir, split, limit, threads, allow_fail):
    """Merge the adapter, build GGUF and ONNX variants, and verify each keeps its accuracy budget."""
    from epm_edge.export.pipeline import run_export
    from epm_edge.export.recipe import load_recipe
    from epm_edge.model_store import DEFAULT_ADAPTER, shipped_adapter

    if no_adapter and adapter:
        raise click.UsageError("--adapter and --no-adapter are alternatives: pass one")
    if not (adapter or no_adapter or base):  # the model every other command runs by default
        adapter = shipped_adapter()
        if adapter is None:
            raise click.UsageError(f"models/{DEFAULT_ADAPTER} not found: pass --adapter, or --no-adapter for the base")

    report = run_export(load_recipe(recipe), out_dir, base=base, adapter=adapter, data=data_dir, split=split,
                        limit=limit, force=force, threads=threads)
    _finish(report, out_dir, allow_fail)


@click.command("verify")
@click.option("--export", "export_dir", type=click.Path(path_type=Path), required=True,
              help="An export dir written by `epm-edge export`.")
@with_data_options
def verify_cmd(export_dir, data_dir, split, limit, threads, allow_fail):
    """Re-verify an export's variants against its merged reference; rewrites its reports and thresholds."""
    from epm_edge.export.pipeline import load_export_recipe, verify_export

    report = verify_export(export_dir, load_export_recipe(export_dir), data=data_dir, split=split, limit=limit,
                           threads=threads)
    _finish(report, export_dir, allow_fail)
