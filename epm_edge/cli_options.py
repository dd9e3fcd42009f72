"""Options shared by the `epm-edge` commands: one name, type and meaning per concept.

- `-o/--out`: where a command writes (a result file, a report dir, an export dir, an adapter dir);
- `--model`: the model a command runs (a .gguf, a trained adapter dir, an ONNX variant dir, a merged
  HF dir, or an `epm-edge export` dir where a command takes every variant of one);
- `--data`: labelled benchmark dirs (DeepMatcher layout), comma-separated where several are read;
- `--threads`, `--batch-size`, `--record-tokens`, `--limit`, `--quant`, `--backend`, `--threshold`.
"""

from __future__ import annotations

import math
from pathlib import Path

import click

from epm_edge.data.serialize import MIN_RECORD_TOKENS
from epm_edge.model_store import ADAPTER_QUANTS


class Probability(click.FloatRange):
    """A number in [0, 1]; click's FloatRange alone lets NaN through."""

    name = "probability"

    def __init__(self):
        super().__init__(0.0, 1.0)

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        if math.isnan(value):
            self.fail("nan is not a number in the range 0<=x<=1", param, ctx)
        return value


PROBABILITY = Probability()


def out_option(help: str, **kwargs):
    return click.option("-o", "--out", "out_path", type=click.Path(path_type=Path), help=help, **kwargs)


def model_option(help: str = "A .gguf file, a trained adapter dir (run as a GGUF, see --quant), an ONNX variant dir "
                             "or a merged HF dir (default: the shipped model, models/epm-smollm2-135m).", **kwargs):
    return click.option("--model", "model_path", type=click.Path(path_type=Path), default=None, help=help, **kwargs)


def data_dirs(ctx, param, value: str | None) -> list[Path] | None:
    """A comma-separated --data value as paths (click callback)."""
    return [Path(d.strip()) for d in value.split(",") if d.strip()] if value else None


def data_option(help: str = "Benchmark dir(s) with tableA.csv, tableB.csv and split files, comma-separated.",
                **kwargs):
    """--data as a list of paths."""
    return click.option("--data", required=True, callback=data_dirs, help=help, **kwargs)


def threads_option(default: str = "the cores other processes leave idle"):
    return click.option("--threads", type=click.IntRange(min=1), default=None,
                        help=f"CPU threads (default: {default}).")


def limit_option(help: str = "Use only the first N pairs."):
    return click.option("--limit", type=click.IntRange(min=1), default=None, help=help)


record_tokens_option = click.option("--record-tokens", type=click.IntRange(min=MIN_RECORD_TOKENS), default=64,
                                    show_default=True, help="Token budget per serialized record.")
threshold_option = click.option("--threshold", type=PROBABILITY, default=None,
                                help="Decision threshold (default: stored with the model, else 0.5).")
quant_option = click.option("--quant", type=click.Choice(ADAPTER_QUANTS), default=None,
                            help="GGUF type a trained adapter (and the default model) runs as, built once and "
                                 "cached [default: BF16 where llama.cpp has AVX512_BF16 and no AMX, else Q8_0].")
backend_option = click.option("--backend", type=click.Choice(["llamacpp", "onnx", "transformers"]), default=None,
                              help="Runtime (default: from the model path).")
batch_option = click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
                            help="Pairs per scoring call (the transformers backend runs them as one batch).")
# Both orders by default: a pair's score should not depend on which catalog came first, and on the four
# benchmarks' test splits it lifted the default model's mean F1 from 73.8 to 76.3 (model card).
both_orders_option = click.option("--both-orders/--one-order", default=None,
                                  help="Score each pair as A/B and B/A and combine (symmetric, more accurate), or "
                                       "as A/B only (one scoring a pair instead of two) [default: both, or what "
                                       "the model's cascade was fitted on].")
cascade_option = click.option("--cascade", "cascade_mode", default="auto", show_default=True, metavar="auto|off|DIR",
                              help="auto: the model's feature stage settles the pairs it is sure of and is fused with "
                                   "the LLM on the rest (when the model has one); off: the LLM scores every pair; DIR: "
                                   "a features dir (matcher.txt, cascade.json).")


def lora_options(f):
    """--lora/--lora-scale: a GGUF LoRA that llama.cpp applies to the --model base as it loads."""
    f = click.option("--lora-scale", type=click.FloatRange(min=0.0), default=1.0, show_default=True,
                     help="Strength of the --lora adapter (1: as trained).")(f)
    return click.option("--lora", "lora", type=click.Path(path_type=Path, dir_okay=False), default=None,
                        help="A GGUF LoRA (`epm-edge export --lora-gguf`: gguf/adapter-lora.gguf) applied at load "
                             "time to the --model base (gguf/base-TYPE.gguf): one base serves several adapters.")(f)


force_option = click.option("--force", is_flag=True, help="Start over: replace what an earlier run wrote to --out.")
