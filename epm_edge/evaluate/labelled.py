"""Evaluate a scorer on labelled splits of benchmark dirs, optionally tuning the threshold first.

Tuning scores another split (valid) and keeps the threshold that maximizes F1 there, so a test
figure never sees its own labels; that is how the model card's per-set F1 is measured.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from epm_edge.data import load_pair_set
from epm_edge.evaluate.metrics import best_threshold, compute_metrics
from epm_edge.evaluate.scoring import score_pairs


def evaluate_set(scorer, data_dir: Path, split: str, *, limit: int | None = None, skip: int = 0,
                 threshold: float | None = None, tune_split: str | None = None, tune_limit: int | None = None,
                 record_tokens: int = 64, batch_size: int = 32, bar=None) -> tuple[dict, tuple | None]:
    """(metrics of `scorer` on one split, (labels, scores) of the tuning pairs or None).

    The threshold is the one given, else tuned on `tune_split`, else stored with the model, else 0.5.
    """
    ps = load_pair_set(data_dir)
    tuned_on = tuning = None
    if tune_split:
        tune = ps.split(tune_split).head(tune_limit)
        scores, _ = _score(scorer, ps, tune, f"{ps.name}/{tune_split} (threshold)", record_tokens, batch_size, bar)
        threshold, tuned_on = best_threshold(tune.labels, scores), f"{tune_split}:{len(tune)}"
        tuning = (tune.labels, scores)
    elif threshold is None:
        threshold = scorer.threshold if scorer.threshold is not None else 0.5
    pairs = ps.split(split).head(limit, skip)
    scores, seconds = _score(scorer, ps, pairs, f"{ps.name}/{split}", record_tokens, batch_size, bar)
    m = compute_metrics(pairs.labels, scores, threshold)
    return ({"data": str(data_dir), "split": split, "skipped": skip, "threshold_tuned_on": tuned_on,
             **m.as_dict(), "seconds": seconds, "pairs_per_second": len(pairs) / seconds if seconds else 0.0}, tuning)


def pooled_threshold(tunings: list[tuple]) -> tuple[float, int]:
    """(the threshold best over the tuning pairs of all sets together, their count): one cut for a
    model that serves every domain, as a shipped default adapter records it."""
    labels = np.concatenate([np.asarray(t[0]) for t in tunings])
    return best_threshold(labels, np.concatenate([t[1] for t in tunings])), len(labels)


def _score(scorer, ps, pairs, label, record_tokens, batch_size, bar):
    task = bar.add_task(label, total=len(pairs)) if bar else None
    return score_pairs(scorer, ps, pairs, record_tokens=record_tokens, batch_size=batch_size,
                       on_batch=(lambda n: bar.advance(task, n)) if bar else None)
