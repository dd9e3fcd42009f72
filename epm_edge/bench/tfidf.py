"""The non-LLM baseline a user might try first: TF-IDF cosine between the two serialized records.

It sees exactly the text the LLM variants see. The vectorizers are fitted on the records of the
catalogs (no labels); like every variant, its threshold is then tuned on the valid split.
"""

from __future__ import annotations

import pickle
from typing import Sequence

import numpy as np


class TfidfScorer:
    name = "tfidf"
    threshold = None
    metadata: dict = {}

    def __init__(self, corpus: Sequence[str]):
        from sklearn.feature_extraction.text import TfidfVectorizer

        # Words catch shared model numbers; character n-grams survive spelling and spacing noise.
        self.vectorizers = [
            TfidfVectorizer(analyzer="word", token_pattern=r"[a-z0-9]+", sublinear_tf=True),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True),
        ]
        for v in self.vectorizers:
            v.fit(corpus)

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        a = [p[0] for p in pairs]
        b = [p[1] for p in pairs]
        sims = [np.asarray(v.transform(a).multiply(v.transform(b)).sum(axis=1)).ravel() for v in self.vectorizers]
        return np.clip(np.mean(sims, axis=0), 0.0, 1.0).astype(np.float64)  # rows are L2-normed: dot = cosine

    def size_bytes(self) -> int:
        """What the baseline has to ship: its fitted vocabularies and IDF weights."""
        return len(pickle.dumps(self.vectorizers))

    def close(self) -> None:
        pass
