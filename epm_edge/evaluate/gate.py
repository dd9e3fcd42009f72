"""The accuracy gate's verdict, decided on evidence rather than on one sample's point estimate.

A variant and the reference score the same labelled pairs, each at the cut that maximizes its own F1
there (the cut it ships with). A paired bootstrap resamples the pairs (the same resample for both
scorings) and gives 95 % percentile intervals for delta F1 (variant - reference) and for the decision
flip rate at those cuts. The rule, per budget:

- fail: the whole interval is past the budget (delta F1's upper end below -max_delta_f1, or the flip
  rate's lower end above max_flip_rate): the variant is worse, and more pairs would not change that;
- pass: the whole interval is within it (delta F1's lower end at or above -max_delta_f1, the flip
  rate's upper end at or below max_flip_rate);
- inconclusive otherwise.

A variant fails when either budget fails and passes when both pass. Only a loss counts against the F1
budget: a variant that scores better than the reference is not held back for it. For an inconclusive
verdict the gate estimates the pairs that would decide it: an interval narrows as 1/sqrt(n), so it
clears the budget on the side its point estimate is on at about n * (half-width / distance)^2 pairs;
a budget whose point is past it decides alone (fail), else every open budget must clear (pass).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

from epm_edge.evaluate.metrics import best_threshold

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
RESAMPLES = 2000
LEVEL = 0.95
RULE = ("A variant fails when the 95 % paired-bootstrap interval of its delta F1 lies wholly below "
        "-max_delta_f1 or that of its flip rate wholly above max_flip_rate, passes when both intervals lie "
        "wholly within the budgets, and is inconclusive otherwise.")


@dataclass
class Evidence:
    delta_f1: float  # F1 - reference F1, fraction (x100 for points)
    delta_f1_low: float
    delta_f1_high: float
    flip_rate: float
    flip_rate_low: float
    flip_rate_high: float
    verdict: str  # pass | fail | inconclusive
    pairs_to_decide: int | None  # inconclusive only: about how many pairs would decide it; None if no number would

    def to_json(self) -> dict:
        return asdict(self)


def _f1(labels: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """F1 of each row of decisions (rows: resamples)."""
    tp = np.sum(pred & labels, axis=-1)
    denominator = np.sum(pred, axis=-1) + np.sum(labels, axis=-1)
    return np.divide(2 * tp, denominator, out=np.zeros(np.shape(tp)), where=denominator > 0)


class _Budget(NamedTuple):
    point: float
    low: float
    high: float
    limit: float
    worse_is_high: bool  # flips: more is worse; delta F1: less is worse

    @property
    def verdict(self) -> str:
        """The interval wholly past the limit on the worse side, wholly short of it, or across it."""
        eps = 1e-9  # a budget met exactly (2 flips of 200 at 1 %) is not failed by rounding
        if self.worse_is_high:
            return FAIL if self.low > self.limit + eps else PASS if self.high <= self.limit + eps else INCONCLUSIVE
        return FAIL if self.high < self.limit - eps else PASS if self.low >= self.limit - eps else INCONCLUSIVE

    @property
    def point_is_past(self) -> bool:
        return self.point > self.limit if self.worse_is_high else self.point < self.limit


def _pairs_to_decide(n: int, point: float, low: float, high: float, limit: float) -> int | None:
    """Pairs at which the interval, narrowing as 1/sqrt(n), would clear `limit` on the point's side."""
    distance = abs(point - limit)
    if distance < 1e-12:
        return None
    half_width = (point - low) if point > limit else (high - point)
    return max(n + 1, math.ceil(n * (half_width / distance) ** 2))


def judge(labels, ref_scores, scores, max_delta_f1: float, max_flip_rate: float,
          resamples: int = RESAMPLES, seed: int = 0) -> Evidence:
    """The gate's evidence and verdict for one variant; `max_delta_f1` in F1 points, `max_flip_rate` a fraction."""
    labels = np.asarray(labels).astype(bool)
    ref_pred = np.asarray(ref_scores) >= best_threshold(labels, ref_scores)
    pred = np.asarray(scores) >= best_threshold(labels, scores)
    n = len(labels)
    delta, flips = float(_f1(labels, pred) - _f1(labels, ref_pred)), float(np.mean(pred != ref_pred))
    rows = np.random.default_rng(seed).integers(0, n, (resamples, n))
    deltas = _f1(labels[rows], pred[rows]) - _f1(labels[rows], ref_pred[rows])
    flip_draws = np.mean(pred[rows] != ref_pred[rows], axis=1)
    tail = (1 - LEVEL) / 2 * 100
    d_low, d_high = np.percentile(deltas, [tail, 100 - tail])
    f_low, f_high = np.percentile(flip_draws, [tail, 100 - tail])
    budgets = [_Budget(delta, d_low, d_high, -max_delta_f1 / 100, False),
               _Budget(flips, f_low, f_high, max_flip_rate, True)]
    verdicts = {b.verdict for b in budgets}
    verdict = FAIL if FAIL in verdicts else PASS if verdicts == {PASS} else INCONCLUSIVE
    needed = None
    if verdict == INCONCLUSIVE:
        open_budgets = [b for b in budgets if b.verdict == INCONCLUSIVE]
        past = [b for b in open_budgets if b.point_is_past]  # one of these failing decides alone
        counts = [_pairs_to_decide(n, *b[:4]) for b in (past or open_budgets)]
        if past:
            needed = min((c for c in counts if c is not None), default=None)
        else:  # every open budget must clear
            needed = None if None in counts else max(counts)
    return Evidence(delta, float(d_low), float(d_high), flips, float(f_low), float(f_high), verdict, needed)
