"""The verification gate: does each exported variant still match products like the reference?

Every variant is scored through the runtime it ships for (transformers for the merged reference,
llama.cpp for GGUF, ONNX Runtime for ONNX) on the same labelled pairs. Each scoring gets its own
decision threshold, the one maximizing its F1 on these pairs, and ships with it: quantization can
shift every score of a variant while it ranks pairs about as well as the reference (the default
model's Q4_0 has its best cut at 0.38 where fp32 has it at 0.86), and the reference's cut would
then count as lost matches what a cut of its own keeps. "Decision flips" are pairs whose
match/no-match answer, each scoring at its own cut, differs from the reference's.

Pairs are scored in both record orders, the way `epm-edge match` scores them by default, and the
gate is judged on that scoring. The A/B scores alone give each artifact its one-order cut too
(`match --one-order`), at no extra cost.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from epm_edge.data.pairs import LabelledPairs, PairSet
from epm_edge.evaluate.metrics import best_threshold, compute_metrics, flip_rate
from epm_edge.evaluate.scoring import score_texts, serialize_pairs
from epm_edge.runtime.orders import combine, swapped

BACKEND = {"hf": "transformers", "gguf": "llamacpp", "onnx": "onnx"}


@dataclass
class Candidate:
    name: str
    format: str  # hf | gguf | onnx
    quant: str
    path: Path
    max_delta_f1: float | None = None  # F1 points; None for the reference
    max_flip_rate: float | None = None


@dataclass
class VariantResult:
    name: str
    format: str
    quant: str
    path: str
    threshold: float  # maximizes this scoring's F1 on the verification pairs (both orders); stored in the artifact
    threshold_one_order: float  # the same on the A/B scores alone; stored too
    precision: float
    recall: float
    f1: float
    delta_f1: float  # F1 - reference F1, as a fraction (x100 for points)
    flip_rate: float
    mean_abs_dp: float  # mean |P(match) - reference P(match)|
    size_bytes: int
    load_seconds: float
    pairs_per_second: float
    max_delta_f1: float | None
    max_flip_rate: float | None
    passed: bool

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Verification:
    threshold: float  # the reference's (both orders)
    n_pairs: int
    reference: VariantResult
    variants: list[VariantResult]

    @property
    def failed(self) -> list[VariantResult]:
        return [v for v in self.variants if not v.passed]


def artifact_size(path: Path) -> int:
    """Bytes on disk of a model file or a model dir's weights/graph files."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.iterdir()
               if f.is_file() and f.suffix in (".safetensors", ".bin", ".onnx", ".onnx_data", ".data"))


def _score(c: Candidate, texts: list[tuple[str, str]], threads: int | None,
           batch_size: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(A/B scores, B/A scores, load seconds, pairs per second with both orders scored)."""
    from epm_edge.console import progress_bar
    from epm_edge.runtime import load_scorer

    start = time.perf_counter()
    scorer = load_scorer(c.path, backend=BACKEND[c.format], threads=threads, batch_size=batch_size)
    load = time.perf_counter() - start
    try:
        with progress_bar() as bar:
            task = bar.add_task(f"{c.name} (both orders)", total=2 * len(texts))
            ab, ab_s = score_texts(scorer, texts, batch_size, on_batch=lambda n: bar.advance(task, n))
            ba, ba_s = score_texts(scorer, swapped(texts), batch_size, on_batch=lambda n: bar.advance(task, n))
    finally:
        scorer.close()
    return ab, ba, load, len(texts) / (ab_s + ba_s) if ab_s + ba_s else 0.0


def verify(reference: Candidate, candidates: list[Candidate], ps: PairSet, pairs: LabelledPairs,
           record_tokens: int = 64, threads: int | None = None, batch_size: int = 32,
           log: Callable[[str], None] = lambda msg: None) -> Verification:
    labels = pairs.labels
    texts = serialize_pairs(ps, pairs, record_tokens)
    log(f"scoring {len(pairs)} pairs in both orders with the reference ({reference.name})")
    ab, ba, load, rate = _score(reference, texts, threads, batch_size)
    ref_scores = combine(ab, ba)
    threshold = best_threshold(labels, ref_scores)
    ref_m = compute_metrics(labels, ref_scores, threshold)
    ref = VariantResult(reference.name, reference.format, reference.quant, str(reference.path), threshold,
                        best_threshold(labels, ab), ref_m.precision, ref_m.recall, ref_m.f1, 0.0, 0.0, 0.0,
                        artifact_size(reference.path), load, rate, None, None, True)
    log(f"reference F1 {ref_m.f1:.3f} at threshold {threshold:.4f} ({rate:.1f} pairs/s)")
    results = []
    for c in candidates:
        ab, ba, load, rate = _score(c, texts, threads, batch_size)
        scores = combine(ab, ba)
        own = best_threshold(labels, scores)
        m = compute_metrics(labels, scores, own)
        delta, flips = m.f1 - ref_m.f1, flip_rate(ref_scores, scores, threshold, own)
        # A small epsilon so a budget met exactly (e.g. 2 flips of 200 at 1 %) is not failed by rounding.
        passed = abs(delta) * 100 <= c.max_delta_f1 + 1e-9 and flips <= c.max_flip_rate + 1e-9
        results.append(VariantResult(c.name, c.format, c.quant, str(c.path), own, best_threshold(labels, ab),
                                     m.precision, m.recall, m.f1, delta, flips,
                                     float(np.mean(np.abs(scores - ref_scores))), artifact_size(c.path),
                                     load, rate, c.max_delta_f1, c.max_flip_rate, passed))
        log(f"{c.name}: F1 {m.f1:.3f} at threshold {own:.4f} (delta {delta * 100:+.2f} pt), flips {flips:.1%}, "
            f"{rate:.1f} pairs/s, {'pass' if passed else 'FAIL'}")
    return Verification(threshold, len(pairs), ref, results)
