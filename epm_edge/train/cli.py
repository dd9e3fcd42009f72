"""`epm-edge train sft|rl|extrapolate`: thin wrappers over the train modules (heavy imports inside)."""

from __future__ import annotations

from pathlib import Path

import click

from epm_edge.cli_options import (batch_option, data_option, limit_option, model_option, out_option, quant_option,
                                  record_tokens_option, threads_option)


def _data_options(f):
    options = [
        data_option(),
        click.option("--neg-ratio", type=float, default=2.0, show_default=True, help="Negatives per positive."),
        click.option("--max-per-set", type=int, default=None, help="Examples per set (balances sets)."),
        click.option("--noise", type=float, default=0.3, show_default=True,
                     help="Share of training pairs given seller noise (0: off)."),
        click.option("--swap", type=click.FloatRange(0, 1), default=0.0, show_default=True,
                     help="Share of training pairs shown in B/A order (teaches both orders; see --both-orders)."),
        click.option("--no-teacher", is_flag=True, help="Ignore teacher rationales (rationales_*.csv)."),
        record_tokens_option,
        limit_option("Use only the first N training examples."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--base", default=None, help="Base model: HF dir or .gguf (default: bundled SmolLM2)."),
        out_option("Adapter output dir.", required=True),
        click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in OUT."),
        click.option("--max-steps", type=int, default=None, help="Stop after N optimizer steps."),
        click.option("--lr", type=float, default=None, help="Learning rate."),
        click.option("--batch-size", type=int, default=None, help="Sequences per step (before accumulation)."),
        click.option("--grad-accum", type=int, default=None, help="Gradient accumulation steps."),
        click.option("--no-bf16", is_flag=True, help="Train in fp32 (bf16 autocast is ~3x faster on CPU)."),
        click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Stop after this many minutes of training, with a last checkpoint (and evaluation)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _data_config(data, neg_ratio, max_per_set, noise, swap, no_teacher, record_tokens, label_only, seed):
    from epm_edge.train.dataset import DataConfig

    return DataConfig(data, neg_ratio=neg_ratio, max_per_set=max_per_set, noise=noise, swap=swap,
                      teacher=not no_teacher, record_tokens=record_tokens, rationale=not label_only, seed=seed)


def _given(**kw) -> dict:
    """Options the user set; the rest keep the settings dataclass defaults."""
    return {k: v for k, v in kw.items() if v is not None}


@click.group()
def train():
    """Train the matcher: supervised LoRA (sft), then reinforcement learning (rl)."""


@train.command()
@_data_options
@click.option("--epochs", type=float, default=None, help="Epochs (default 2; --max-steps overrides).")
@click.option("--rank", type=int, default=None, help="LoRA rank (default 16).")
@click.option("--alpha", type=int, default=None, help="LoRA alpha (default 2x rank).")
@click.option("--eval-steps", type=int, default=None, help="Evaluate and checkpoint every N steps (default 200).")
@click.option("--eval-limit", type=int, default=None, help="Validation examples per evaluation (default 400).")
@click.option("--qlora", is_flag=True, help="Load the base in 4-bit (bitsandbytes nf4).")
@click.option("--decision-weight", type=float, default=None,
              help="Loss weight of the decision token against 1 per evidence token (default 20).")
@click.option("--init", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="Continue training this adapter (fresh optimizer and schedule).")
@click.option("--label-only", is_flag=True, help="Answers are the decision alone (no evidence lines).")
def sft(data, neg_ratio, max_per_set, noise, swap, no_teacher, record_tokens, limit, seed, base, out_path, resume,
        max_steps, lr, batch_size, grad_accum, no_bf16, time_limit, epochs, rank, alpha, eval_steps, eval_limit, qlora,
        decision_weight, init, label_only):
    """LoRA fine-tuning on prompt/answer pairs (teacher or silver rationales); loss on answers only."""
    from epm_edge.train.sft import SFTSettings, run_sft

    if rank is not None and alpha is None:
        alpha = 2 * rank
    data_cfg = _data_config(data, neg_ratio, max_per_set, noise, swap, no_teacher, record_tokens, label_only, seed)
    s = SFTSettings(data_cfg, out_path,
                    base=base, limit=limit, seed=seed, resume=resume, qlora=qlora, bf16=not no_bf16, init=init,
                    time_limit=time_limit,
                    **_given(max_steps=max_steps, lr=lr, batch_size=batch_size, grad_accum=grad_accum,
                             epochs=epochs, rank=rank, alpha=alpha, eval_steps=eval_steps, eval_limit=eval_limit,
                             decision_weight=decision_weight))
    click.echo(f"adapter: {run_sft(s)}")


@train.command()
@_data_options
@click.option("--init", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="The SFT adapter dir to start from.")
@click.option("--weights", default=None, help="Reward weights format,label,judge (default 0.2,0.5,0.3).")
@click.option("--judge", default="evidence", show_default=True,
              help="`evidence` (offline, deterministic) or a .gguf path for an LLM judge.")
@click.option("--rubric", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="LLM judge prompt file with {a}, {b} and {answer}.")
@click.option("--num-generations", type=int, default=None, help="Sampled answers per prompt (default 4).")
@click.option("--max-completion-length", type=int, default=None, help="Tokens per sampled answer (default 96).")
@click.option("--beta", type=float, default=None, help="KL weight to the SFT adapter (default 0).")
@click.option("--save-steps", type=int, default=None, help="Checkpoint every N steps (default 50).")
def rl(data, neg_ratio, max_per_set, noise, swap, no_teacher, record_tokens, limit, seed, base, out_path, resume,
       max_steps, lr, batch_size, grad_accum, no_bf16, time_limit, init, weights, judge, rubric, num_generations,
       max_completion_length, beta, save_steps):
    """GRPO on the SFT adapter; reward = weighted format + label + judge, each logged per step."""
    from epm_edge.train.rl import RLSettings, run_rl

    if weights is not None:
        try:
            weights = tuple(float(w) for w in weights.split(","))
        except ValueError:
            weights = ()
        if len(weights) != 3:
            raise click.BadParameter("three comma-separated numbers: format,label,judge", param_hint="--weights")
    data_cfg = _data_config(data, neg_ratio, max_per_set, noise, swap, no_teacher, record_tokens, False, seed)
    s = RLSettings(data_cfg, init, out_path,
                   base=base, judge=judge, rubric=rubric.read_text() if rubric else None, limit=limit, seed=seed,
                   resume=resume, bf16=not no_bf16, time_limit=time_limit,
                   **_given(weights=weights, max_steps=max_steps, lr=lr, batch_size=batch_size, grad_accum=grad_accum,
                            num_generations=num_generations, max_completion_length=max_completion_length, beta=beta,
                            save_steps=save_steps))
    click.echo(f"adapter: {run_rl(s)}")


@train.command()
@click.option("--sft", "sft_dir", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="The adapter RL started from.")
@click.option("--rl", "rl_dir", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="The RL adapter.")
@click.option("--alpha", type=click.FloatRange(min=0), required=True,
              help="How far past the RL adapter, in units of the SFT-to-RL change (0: the RL adapter).")
@out_option("Adapter output dir.", required=True)
def extrapolate(sft_dir, rl_dir, alpha, out_path):
    """Extrapolate an RL adapter away from its SFT start (ExPO); same rank, no training data needed."""
    from epm_edge.train.extrapolate import extrapolate as run

    record = run(sft_dir, rl_dir, alpha, out_path)
    click.echo(f"adapter: {out_path} (rank {record['rank']}; largest share dropped by the rank cut "
               f"{record['svd_dropped_max']:.2%})")


def _adapter_or_default(model: Path | None) -> Path:
    from epm_edge.errors import ModelError
    from epm_edge.model_store import shipped_adapter

    adapter = model or shipped_adapter()
    if adapter is None or not (Path(adapter) / "adapter_config.json").exists():
        raise ModelError(f"{adapter}: not a trained adapter dir (the feature stage is stored inside one)")
    return Path(adapter)


@train.command()
@data_option()
@model_option("The adapter dir whose features/ dir gets the matcher [default: models/epm-smollm2-135m].")
def features(data, model_path):
    """The feature matcher (LightGBM on pair features) on the train splits, early-stopped on valid."""
    from epm_edge.console import err
    from epm_edge.features.cascade import FEATURES_DIR
    from epm_edge.train.features import train_feature_matcher

    out = _adapter_or_default(model_path) / FEATURES_DIR
    matcher = train_feature_matcher(data, out, log=err.print)
    for name, fig in matcher.info["valid"].items():
        err.print(f"valid {name}: {fig['pairs']} pairs, AP {fig['average_precision']:.3f}, "
                  f"best F1 {fig['best_f1']:.3f}")
    click.echo(f"feature matcher: {out} ({matcher.info['rounds']} trees)")


@train.command()
@data_option("Benchmark dir(s) whose valid splits fit the cascade, comma-separated.")
@model_option("The adapter dir with a trained features/ dir [default: models/epm-smollm2-135m].")
@quant_option
@click.option("--scores", "scores_dir", type=click.Path(path_type=Path), default=None,
              help="Keep the LLM's valid scores here (eval's format); a rerun scores only what is missing.")
@limit_option("Fit on the first N valid pairs of each set (default: all).")
@click.option("--budget", type=click.FloatRange(0, 0.5), default=0.005, show_default=True,
              help="Share of valid pairs whose routed decision may differ from the LLM-only decision.")
@threads_option()
@batch_option
def cascade(data, model_path, quant, scores_dir, limit, budget, threads, batch_size):
    """Routing cuts and LLM fusion of the feature matcher, fitted on the valid splits."""
    from epm_edge.console import err, progress_bar
    from epm_edge.model_store import model_identity
    from epm_edge.resolve import open_scorer
    from epm_edge.train.features import fit_cascade_on_valid

    adapter = _adapter_or_default(model_path)
    _, scorer = open_scorer(adapter, threads=threads, batch_size=batch_size, quant=quant)
    settings = {"model": model_identity(scorer.path), "backend": scorer.name}
    try:
        with progress_bar() as bar:
            s, path = fit_cascade_on_valid(scorer, adapter, data, scores_dir, settings, budget=budget,
                                           limit=limit, batch_size=batch_size, bar=bar)
    finally:
        scorer.close()
    f = s.fitted_on
    err.print(f"cuts: feature P < {s.low:.4f} no, >= {s.high:.4f} yes; LLM share {f['llm_share']:.1%} of "
              f"{f['pairs']} valid pairs, {f['disagreements']} routed decisions differ from the LLM's")
    for name, f1 in f["set_f1"].items():
        held = "" if "holds" not in f1 else " (within the tolerance on every set)" if f1["holds"] else ""
        err.print(f"valid F1 per set at its best cut, {name}: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in f1.items() if k != "holds") + held)
    fused = "fused with the features" if s.coef[2] else "the LLM's own score"
    click.echo(f"cascade: {path} ({s.orders} order{'s' if s.orders == 2 else ''}, {fused}, "
               f"threshold {s.threshold:.4f})")
