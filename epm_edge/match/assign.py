"""One-to-one assignment: each A and each B record takes part in at most one match."""

from __future__ import annotations

import numpy as np


def one_to_one(a_ids: list[str], b_ids: list[str], scores: np.ndarray, threshold: float,
               method: str = "greedy") -> np.ndarray:
    """Boolean mask of pairs kept as matches. Only pairs with score >= threshold compete.

    greedy: best score first, skipping records already taken (fast, the usual choice).
    hungarian: maximum total score over the above-threshold pairs (scipy's linear_sum_assignment).
    """
    scores = np.asarray(scores, dtype=np.float64)
    keep = np.zeros(len(scores), dtype=bool)
    eligible = np.flatnonzero(scores >= threshold)
    if method == "greedy":
        used_a, used_b = set(), set()
        for i in eligible[np.argsort(-scores[eligible], kind="stable")]:
            if a_ids[i] not in used_a and b_ids[i] not in used_b:
                keep[i] = True
                used_a.add(a_ids[i])
                used_b.add(b_ids[i])
        return keep
    if method == "hungarian":
        from scipy.optimize import linear_sum_assignment

        rows = {a: n for n, a in enumerate(dict.fromkeys(a_ids[i] for i in eligible))}
        cols = {b: n for n, b in enumerate(dict.fromkeys(b_ids[i] for i in eligible))}
        if not eligible.size:
            return keep
        weight = np.zeros((len(rows), len(cols)))
        index = {}
        for i in eligible:
            r, c = rows[a_ids[i]], cols[b_ids[i]]
            if scores[i] > weight[r, c]:
                weight[r, c], index[(r, c)] = scores[i], i
        r_idx, c_idx = linear_sum_assignment(weight, maximize=True)
        for r, c in zip(r_idx, c_idx):
            if (r, c) in index:
                keep[index[(r, c)]] = True
        return keep
    raise ValueError(f"unknown assignment method '{method}' (greedy or hungarian)")
