"""Binary matching metrics (positive class = same product) and threshold selection."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Metrics:
    n_pairs: int
    threshold: float
    precision: float
    recall: float
    f1: float
    accuracy: float
    tp: int
    fp: int
    fn: int
    tn: int

    def as_dict(self) -> dict:
        return asdict(self)


def compute_metrics(labels, scores, threshold: float = 0.5) -> Metrics:
    labels = np.asarray(labels).astype(bool)
    pred = np.asarray(scores) >= threshold
    tp = int(np.sum(pred & labels))
    fp = int(np.sum(pred & ~labels))
    fn = int(np.sum(~pred & labels))
    tn = int(np.sum(~pred & ~labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Metrics(len(labels), float(threshold), precision, recall, f1, (tp + tn) / max(len(labels), 1),
                   tp, fp, fn, tn)


def average_precision(labels, scores) -> float | None:
    """Area under the precision-recall curve (step-wise, as scikit-learn computes it): how well the scores
    rank matches above non-matches, whatever the cut; None without a positive pair."""
    labels = np.asarray(labels).astype(bool)
    if not labels.any():
        return None
    from sklearn.metrics import average_precision_score  # here: only eval needs it

    return float(average_precision_score(labels, np.asarray(scores, dtype=np.float64)))


def best_threshold(labels, scores) -> float:
    """The threshold that maximizes F1 on these pairs (midpoint between adjacent scores)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if not labels.any():
        return 0.5
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    f1 = 2 * tp / (tp + fp + y.sum())
    # Only cut where the score changes, so ties fall on one side together.
    last_of_run = np.r_[s[1:] != s[:-1], True]
    f1 = np.where(last_of_run, f1, -1)
    i = int(np.argmax(f1))
    return float((s[i] + s[i + 1]) / 2) if i + 1 < len(s) else float(s[i])


def flip_rate(scores_a, scores_b, threshold_a: float, threshold_b: float | None = None) -> float:
    """Share of pairs whose match decision differs between two scorings."""
    tb = threshold_a if threshold_b is None else threshold_b
    return float(np.mean((np.asarray(scores_a) >= threshold_a) != (np.asarray(scores_b) >= tb)))
