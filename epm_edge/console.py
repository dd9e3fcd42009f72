"""Shared terminal output: rich consoles (messages on stderr, results on stdout) and progress bars."""

from __future__ import annotations

import logging
import os
import time
import warnings

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

err = Console(stderr=True)
out = Console()


class RateColumn(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:6.1f} {self.unit}/s" if speed else f"   ... {self.unit}/s", style="cyan")


class LogProgress(Progress):
    """Progress for a stderr that is not a terminal (a background run's log): instead of a live bar,
    which a log file cannot redraw, one plain line per task every `every` seconds and at the end."""

    def __init__(self, *columns, every: float = 30.0, **kwargs):
        super().__init__(*columns, disable=True, **kwargs)
        self.every, self._logged = every, {}

    def _log(self, task_id) -> None:
        task, now = self._tasks[task_id], time.monotonic()
        if now - self._logged.setdefault(task_id, now) < self.every and not task.finished:
            return
        self._logged[task_id] = now
        speed = task.finished_speed or task.speed
        total = f"/{task.total:.0f}" if task.total else ""
        self.console.print(f"{task.description}: {task.completed:.0f}{total}"
                           + (f" ({speed:.1f}/s)" if speed else ""), highlight=False)

    def update(self, task_id, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._log(task_id)

    def advance(self, task_id, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log(task_id)


def progress_bar(unit: str = "pairs") -> Progress:
    """Count, rate and ETA on stderr; plain lines now and then where stderr is not a terminal."""
    if not err.is_terminal:
        return LogProgress(console=err)
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    RateColumn(unit), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=err)


# Libraries whose warnings, log lines and progress bars are noise to a user of the commands.
THIRD_PARTY_LOGGERS = ("transformers", "bitsandbytes", "torch", "peft", "trl", "optimum", "onnxruntime",
                       "accelerate", "datasets", "huggingface_hub")


def quiet_third_party(verbose: bool) -> None:
    """Silence third-party warnings and progress bars unless `verbose` (-v): our own progress stays.
    Must run before those libraries are imported: tqdm and transformers read their settings then.
    llama.cpp's log follows the same switch (runtime/llamacpp.py)."""
    if verbose:
        os.environ["EPM_EDGE_VERBOSE"] = "1"
        return
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore")
    # Some libraries log to the root logger, and onnxruntime's quantizer calls basicConfig(INFO) on
    # import; configured first, the root keeps ERROR (epm-edge itself prints with rich, not logging).
    logging.basicConfig(level=logging.ERROR)
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
