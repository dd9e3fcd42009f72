"""Scoring candidate pairs as `match` does, in one process or in each Ray actor.

With a cascade (features/cascade.py) a chunk of pairs gets pair features first: the pairs the
feature matcher is sure of become rows at once (stage `features`), the rest are scored by the LLM
in batches and fused (stage `llm`). Matched rows may get a rationale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence


@dataclass
class PairScoring:
    scorer: object  # runtime Scorer (None in the job sent to Ray actors, which open their own)
    texts_a: dict[str, str]  # serialized records by id
    texts_b: dict[str, str]
    threshold: float
    batch_size: int = 64  # pairs per LLM call
    cascade: object = None  # features.cascade.Cascade
    featurizer: object = None  # features.pairs.PairFeaturizer of the two catalogs, with a cascade
    explain: bool = False
    explain_above: float | None = None  # rationale for rows scoring at least this (default: threshold)

    @property
    def chunk(self) -> int:
        """Pairs per feature pass: with a cascade only its unsure pairs fill LLM batches."""
        return self.batch_size * 32 if self.cascade is not None else self.batch_size

    def batches(self, a_ids: Sequence[str], b_ids: Sequence[str]) -> Iterator[tuple[list[dict], int]]:
        """Result rows of the pairs (a_ids[i], b_ids[i]), batch by batch, each with how many of its
        rows the LLM scored."""
        for lo in range(0, len(a_ids), self.chunk):
            a, b = list(a_ids[lo:lo + self.chunk]), list(b_ids[lo:lo + self.chunk])
            if self.cascade is None:
                yield from self._llm(a, b, None)
                continue
            p_feat = self.cascade.matcher.predict(self.featurizer.features(a, b))
            unsure = self.cascade.to_llm(p_feat)
            settled = [n for n, u in enumerate(unsure) if not u]
            if settled:
                yield self._rows([a[n] for n in settled], [b[n] for n in settled], p_feat[~unsure], "features"), 0
            routed = [n for n, u in enumerate(unsure) if u]
            yield from self._llm([a[n] for n in routed], [b[n] for n in routed], p_feat[unsure])

    def _llm(self, a: list[str], b: list[str], p_feat) -> Iterator[tuple[list[dict], int]]:
        for lo in range(0, len(a), self.batch_size):
            pa, pb = a[lo:lo + self.batch_size], b[lo:lo + self.batch_size]
            scores = self.scorer.score([(self.texts_a[x], self.texts_b[y]) for x, y in zip(pa, pb)])
            if p_feat is not None:
                scores = self.cascade.fuse(p_feat[lo:lo + len(pa)], scores)
            yield self._rows(pa, pb, scores, "llm"), len(pa)

    def _rows(self, a: list[str], b: list[str], scores, stage: str) -> list[dict]:
        rows = [{"a_id": x, "b_id": y, "score": float(s), "match": bool(s >= self.threshold), "stage": stage}
                for x, y, s in zip(a, b, scores)]
        if self.explain:
            cut = self.threshold if self.explain_above is None else self.explain_above
            want = [n for n, r in enumerate(rows) if r["score"] >= cut]
            pairs = [(self.texts_a[a[n]], self.texts_b[b[n]]) for n in want]
            for n, answer in zip(want, self.scorer.explain(pairs, [rows[n]["match"] for n in want])):
                rows[n]["explanation"] = answer.to_json()
        return rows
