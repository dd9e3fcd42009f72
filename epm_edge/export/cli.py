"""`epm-edge export` and `epm-edge verify` (registered in epm_edge/cli.py). Heavy imports stay inside."""

from __future__ import annotations

from pathlib import Path

import click

from epm_edge.cli_options import data_dirs, force_option, model_option, out_option, threads_option
from epm_edge.errors import EpmError

data_options = [
    click.option("--data", "data_dirs", default=None, callback=data_dirs,
                 help="Labelled pair sets to verify on, comma-separated (default: the adapter's training data, "
                      "else the recipe's; for verify, those of the export's last verification)."),
    click.option("--split", default=None, type=click.Choice(["train", "valid", "test"]),
                 help="Split to verify on (default: the recipe's, valid)."),
    click.option("--pairs", type=click.IntRange(min=1), default=None,
                 help="Pairs to verify on, drawn evenly from the sets with a fixed seed (default: the recipe's, 1000)."),
    threads_option("all cores"),
    click.option("--allow-fail", is_flag=True, help="Exit 0 even if a variant fails the gate."),
]


def with_data_options(f):
    for option in reversed(data_options):
        f = option(f)
    return f


def _finish(report: dict, root: Path, allow_fail: bool) -> None:
    from epm_edge.console import err
    from epm_edge.evaluate.gate import FAIL, INCONCLUSIVE
    from epm_edge.export.pipeline import REPORT_MD, verdict_names

    click.echo((root / REPORT_MD).read_text())
    inconclusive = verdict_names(report, INCONCLUSIVE)
    if inconclusive:
        err.print(f"[yellow]note:[/] inconclusive on these pairs: {', '.join(inconclusive)} (more pairs would "
                  f"decide: --pairs, see {root / REPORT_MD})")
    failed = verdict_names(report, FAIL)
    if failed:
        msg = f"failed the gate: {', '.join(failed)} (see {root / REPORT_MD})"
        if not allow_fail:
            raise EpmError(msg)
        err.print(f"[yellow]warning:[/] {msg}; kept because of --allow-fail")


@click.command("export")
@click.option("--recipe", default=None,
              help="Variants and accuracy budgets: a TOML file, or a packaged recipe by name ('default', "
                   "'imatrix-comparison'; epm_edge/export/recipes/) [default: default].")
@click.option("--base", type=click.Path(path_type=Path), default=None,
              help="Base model: a .gguf file or a Hugging Face dir (default: the bundled SmolLM2).")
@click.option("--adapter", type=click.Path(path_type=Path), default=None,
              help="PEFT adapter dir to merge (default: the shipped models/epm-smollm2-135m, unless --base is given).")
@click.option("--no-adapter", is_flag=True, help="Export the base model alone, untrained.")
@click.option("--lora-gguf", is_flag=True,
              help="Also write the adapter as a GGUF LoRA (gguf/adapter-lora.gguf) and the base alone at each GGUF "
                   "type (gguf/base-TYPE.gguf), and verify each base + LoRA applied at load time.")
@out_option("Export dir to create.", default=Path("epm-export"), show_default=True)
@force_option
@with_data_options
def export_cmd(recipe, base, adapter, no_adapter, lora_gguf, out_path, force, data_dirs, split, pairs, threads,
               allow_fail):
    """Merge the adapter, build GGUF and ONNX variants, and verify each keeps its accuracy budget."""
    from epm_edge.export.pipeline import run_export
    from epm_edge.export.recipe import load_recipe
    from epm_edge.model_store import DEFAULT_ADAPTER, shipped_adapter

    if no_adapter and adapter:
        raise click.UsageError("--adapter and --no-adapter are alternatives: pass one")
    if no_adapter and lora_gguf:
        raise click.UsageError("--lora-gguf writes the adapter as a GGUF LoRA: it needs an adapter")
    if not (adapter or no_adapter or base):  # the model every other command runs by default
        adapter = shipped_adapter()
        if adapter is None:
            raise click.UsageError(f"models/{DEFAULT_ADAPTER} not found: pass --adapter, or --no-adapter for the base")

    report = run_export(load_recipe(recipe), out_path, base=base, adapter=adapter, data=data_dirs, split=split,
                        pairs=pairs, force=force, threads=threads, lora_gguf=lora_gguf)
    _finish(report, out_path, allow_fail)


@click.command("verify")
@model_option("An export dir written by `epm-edge export`.", required=True)
@with_data_options
@click.option("--sample", type=click.IntRange(min=1), default=1, show_default=True,
              help="Which sample of pairs: sample K shares no pair with any other sample (a second opinion).")
def verify_cmd(model_path, data_dirs, split, pairs, threads, allow_fail, sample):
    """Re-verify an export's variants against its merged reference; rewrites its reports and thresholds."""
    from epm_edge.export.pipeline import load_export_recipe, verify_export

    report = verify_export(model_path, load_export_recipe(model_path), data=data_dirs, split=split, pairs=pairs,
                           sample=sample, threads=threads)
    _finish(report, model_path, allow_fail)
