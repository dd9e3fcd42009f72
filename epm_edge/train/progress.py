"""Trainer callbacks: one progress line per logging step (step, metrics, tokens/s, ETA), the
intervals of a resumed run, and a wall-clock limit.

Plain lines rather than a live bar, because long runs go to a log file under nohup. Imported only
from inside the training functions (it needs transformers).
"""

from __future__ import annotations

import time

from transformers import TrainerCallback

from epm_edge.console import err


# Logged keys left out of the line: timings it shows itself, and trl's many distribution details.
_NOISY = ("runtime", "per_second", "num_tokens", "num_input_tokens", "flos", "epoch", "step_time", "clip_ratio",
          "/std", "frac_reward", "completions/min", "completions/max", "terminated")


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressCallback(TrainerCallback):
    """Prints `step i/n`, the logged metrics, tokens/s since start and the ETA."""

    def __init__(self, label: str):
        self.label = label
        self.start = self.start_step = self.start_tokens = None

    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed run starts at its checkpoint's step: rate and ETA count from there.
        self.start, self.start_step, self.start_tokens = time.perf_counter(), state.global_step, state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.start is None or not logs:
            return
        elapsed = time.perf_counter() - self.start
        done = state.global_step - self.start_step
        eta = elapsed / done * (state.max_steps - state.global_step) if done else 0.0
        tokens = state.num_input_tokens_seen - self.start_tokens
        shown = {k: v for k, v in logs.items() if isinstance(v, (int, float)) and not any(n in k for n in _NOISY)}
        metrics = " ".join(f"{k}={v:.4g}" for k, v in shown.items())
        rate = f" {tokens / elapsed:.0f} tok/s" if tokens and elapsed else ""
        err.print(f"[bold]{self.label}[/] step {state.global_step}/{state.max_steps} {metrics}{rate} "
                  f"elapsed {_clock(elapsed)} ETA {_clock(eta)}", highlight=False, soft_wrap=True)


class IntervalsFromArgs(TrainerCallback):
    """A resumed run keeps its checkpoint's eval/save/logging intervals in transformers; this makes
    the intervals given now apply (e.g. `--resume --max-steps N --eval-steps K` to end a run early)."""

    def on_train_begin(self, args, state, control, **kwargs):
        state.compute_steps(args, state.max_steps)


class TimeLimit(TrainerCallback):
    """Ends training once `minutes` of it have passed, at the end of a step, with a last evaluation
    (where the run evaluates) and checkpoint, so the adapter is chosen and saved as at a planned end.
    For a fixed time slot (a rented GPU, a night): the schedule was planned for all steps, so the
    learning rate has not decayed to its end when the limit cuts in."""

    def __init__(self, minutes: float):
        self.seconds, self.start = minutes * 60, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if time.perf_counter() - self.start < self.seconds:
            return
        control.should_training_stop = control.should_save = True
        control.should_evaluate = args.eval_strategy != "no"
        err.print(f"time limit of {self.seconds / 60:g} min reached at step {state.global_step}/{state.max_steps}: "
                  "stopping", highlight=False)


def training_callbacks(label: str, time_limit: float | None) -> list:
    """The callbacks every epm-edge training run uses: progress lines, resumed intervals, time limit."""
    return [ProgressCallback(label), IntervalsFromArgs()] + ([TimeLimit(time_limit)] if time_limit else [])
