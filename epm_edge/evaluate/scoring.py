"""Score a labelled split with any scorer."""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from epm_edge.data.pairs import LabelledPairs, PairSet
from epm_edge.data.serialize import serialize_record


def serialize_pairs(ps: PairSet, pairs: LabelledPairs, record_tokens: int = 64) -> list[tuple[str, str]]:
    a = {i: serialize_record(ps.a.records[i], record_tokens) for i in set(pairs.a_ids)}
    b = {i: serialize_record(ps.b.records[i], record_tokens) for i in set(pairs.b_ids)}
    return [(a[x], b[y]) for x, y in zip(pairs.a_ids, pairs.b_ids)]


def score_texts(scorer, texts: Sequence[tuple[str, str]], batch_size: int = 32,
                on_batch=None, on_scores=None) -> tuple[np.ndarray, float]:
    """(P(match) per serialized pair, seconds spent scoring), in batches of `batch_size`.

    `on_scores(first_index, scores)` gets each batch's scores as soon as they exist (to store them).
    """
    scores = np.empty(len(texts))
    start = time.perf_counter()
    for lo in range(0, len(texts), batch_size):
        scores[lo:lo + batch_size] = scorer.score(texts[lo:lo + batch_size])
        if on_scores:
            on_scores(lo, scores[lo:lo + batch_size])
        if on_batch:
            on_batch(min(batch_size, len(texts) - lo))
    return scores, time.perf_counter() - start
