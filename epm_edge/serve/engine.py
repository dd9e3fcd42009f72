"""What the service scores with: the model as `match` runs it, its feature stage, the threshold and
the catalog `/v1/match` searches. Used from one thread (batching.py), never concurrently.

A pair's result depends on that pair alone: the LLM scores each pair on its own (runtime/), and the
feature stage's TF-IDF is fitted once on the catalog, not on the request. Without a catalog the
feature stage has no corpus to fit on, so the LLM decides every pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from epm_edge.data import Catalog, serialize_record
from epm_edge.errors import EpmError
from epm_edge.features.cascade import Cascade
from epm_edge.match.blocking import BlockingIndex, record_text


class RequestError(EpmError):
    """A request the service cannot score (HTTP 422); the message names the pair and record."""


@dataclass
class Engine:
    scorer: object  # runtime Scorer, both orders already applied where wanted
    threshold: float
    record_tokens: int = 64
    cascade: Cascade | None = None
    catalog: Catalog | None = None
    top_k: int = 20

    def __post_init__(self):
        self.index = self.tfidf = None
        if self.catalog is not None:
            from epm_edge.features.pairs import fit_tfidf

            texts = [record_text(r) for r in self.catalog.records.values()]
            self.index = BlockingIndex(self.catalog, texts)
            self.tfidf = fit_tfidf(texts) if self.cascade is not None else None

    @property
    def uses_features(self) -> bool:
        return self.tfidf is not None

    def candidates(self, record: dict[str, str], top_k: int | None = None) -> list[tuple[str, float]]:
        """The catalog records `match` would pair with `record` (same blocking), best first."""
        if self.index is None:
            raise RequestError("this service was started without --catalog: /v1/match has nothing to search")
        return self.index.top([record_text(record)], top_k or self.top_k)[0]

    def texts(self, pairs: list[tuple[dict, dict]]) -> list[tuple[str, str]]:
        """The pairs serialized as the model reads them; RequestError for a record with no text (the
        service checks each request before it joins a batch)."""
        texts = []
        for n, (a, b) in enumerate(pairs):
            ta, tb = serialize_record(a, self.record_tokens), serialize_record(b, self.record_tokens)
            for side, text in (("a", ta), ("b", tb)):
                if not text:
                    raise RequestError(f"pairs[{n}].{side}: the record has no attribute text to compare")
            texts.append((ta, tb))
        return texts

    def score(self, pairs: list[tuple[dict, dict]], explain: list[bool]) -> list[dict]:
        """Per pair: P(match), the decision at the threshold, the stage that decided, and where asked
        for and matched, the model's rationale."""
        texts = self.texts(pairs)
        scores, stage = np.empty(len(pairs)), np.full(len(pairs), "llm", dtype=object)
        llm = np.arange(len(pairs))
        if self.uses_features:
            from epm_edge.features.pairs import PairFeaturizer

            keys = [str(n) for n in range(len(pairs))]
            featurizer = PairFeaturizer(dict(zip(keys, (a for a, _ in pairs))), dict(zip(keys, (b for _, b in pairs))),
                                        tfidf=self.tfidf)
            p_feat = self.cascade.matcher.predict(featurizer.features(keys, keys))
            unsure = self.cascade.to_llm(p_feat)
            scores[~unsure], stage[~unsure] = p_feat[~unsure], "features"
            llm = np.flatnonzero(unsure)
        if len(llm):
            p_llm = self.scorer.score([texts[i] for i in llm])
            scores[llm] = self.cascade.fuse(p_feat[llm], p_llm) if self.uses_features else p_llm
        out = [{"score": float(s), "match": bool(s >= self.threshold), "stage": st} for s, st in zip(scores, stage)]
        wanted = [n for n, r in enumerate(out) if explain[n] and r["match"]]
        if wanted:
            if not hasattr(self.scorer, "explain"):
                raise RequestError(f"explanations need the llamacpp backend (this service runs {self.scorer.name})")
            answers = self.scorer.explain([texts[n] for n in wanted], [True] * len(wanted))
            for n, answer in zip(wanted, answers):
                out[n]["explanation"] = answer.to_json()
        return out
