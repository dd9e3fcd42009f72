"""The verification gate: does each exported variant still match products like the reference?

Every variant is scored through the runtime it ships for (transformers for the merged reference,
llama.cpp for GGUF, ONNX Runtime for ONNX) on the same labelled pairs. Each scoring gets its own
decision threshold, the one maximizing its F1 on these pairs, and ships with it: quantization can
shift every score of a variant while it ranks pairs about as well as the reference (the default
model's Q4_0 has its best cut at 0.38 where fp32 has it at 0.86), and the reference's cut would
then count as lost matches what a cut of its own keeps. "Decision flips" are pairs whose
match/no-match answer, each scoring at its own cut, differs from the reference's.

The verdict rests on a paired bootstrap of delta F1 and the flip rate (evaluate/gate.py). Pairs are
scored in the A/B order, or in both record orders combined (`orders=2`) as `epm-edge match` scores
them by default; the A/B scores alone give each artifact its one-order cut either way.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from epm_edge.evaluate.gate import FAIL, judge
from epm_edge.evaluate.metrics import best_threshold, compute_metrics
from epm_edge.evaluate.scoring import score_texts
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
    imatrix: bool = False
    lora: Path | None = None  # a GGUF LoRA applied to `path` (the base alone) at load time


@dataclass
class VariantResult:
    name: str
    format: str
    quant: str
    path: str
    imatrix: bool
    threshold: float  # maximizes this scoring's F1 on the verification pairs; stored in the artifact
    threshold_one_order: float  # the same on the A/B scores alone; stored too
    precision: float
    recall: float
    f1: float
    delta_f1: float  # F1 - reference F1, as a fraction (x100 for points)
    delta_f1_low: float  # its 95 % paired-bootstrap interval
    delta_f1_high: float
    flip_rate: float
    flip_rate_low: float
    flip_rate_high: float
    mean_abs_dp: float  # mean |P(match) - reference P(match)|
    size_bytes: int
    load_seconds: float
    pairs_per_second: float
    max_delta_f1: float | None
    max_flip_rate: float | None
    verdict: str  # pass | fail | inconclusive ("reference" for the reference)
    pairs_to_decide: int | None  # inconclusive: about how many pairs would decide it
    lora: str | None = None  # the GGUF LoRA applied at load time to `path` (the base alone)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Verification:
    threshold: float  # the reference's
    n_pairs: int
    orders: int
    reference: VariantResult
    variants: list[VariantResult]
    scores: dict[str, np.ndarray]  # per pair, the scores judged: the reference's and each variant's, by name

    @property
    def failed(self) -> list[VariantResult]:
        return [v for v in self.variants if v.verdict == FAIL]


def artifact_size(path: Path) -> int:
    """Bytes on disk of a model file or a model dir's weights/graph files."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.iterdir()
               if f.is_file() and f.suffix in (".safetensors", ".bin", ".onnx", ".onnx_data", ".data"))


def _score(c: Candidate, texts: list[tuple[str, str]], orders: int, threads: int | None,
           batch_size: int) -> tuple[np.ndarray, np.ndarray | None, float, float]:
    """(A/B scores, B/A scores or None, load seconds, pairs per second with every order scored)."""
    from epm_edge.console import progress_bar
    from epm_edge.runtime import load_scorer

    start = time.perf_counter()
    scorer = load_scorer(c.path, backend=BACKEND[c.format], threads=threads, batch_size=batch_size, lora=c.lora)
    load = time.perf_counter() - start
    try:
        with progress_bar() as bar:
            task = bar.add_task(f"{c.name} ({'both orders' if orders == 2 else 'A/B'})", total=orders * len(texts))
            ab, seconds = score_texts(scorer, texts, batch_size, on_batch=lambda n: bar.advance(task, n))
            ba = None
            if orders == 2:
                ba, ba_s = score_texts(scorer, swapped(texts), batch_size, on_batch=lambda n: bar.advance(task, n))
                seconds += ba_s
    finally:
        scorer.close()
    return ab, ba, load, len(texts) / seconds if seconds else 0.0


def verify(reference: Candidate, candidates: list[Candidate], texts: list[tuple[str, str]], labels: np.ndarray,
           orders: int = 1, threads: int | None = None, batch_size: int = 32,
           log: Callable[[str], None] = lambda msg: None) -> Verification:
    """Score the serialized pairs `texts` with the reference and every candidate; judge each candidate."""
    labels = np.asarray(labels)

    def scored(c: Candidate):
        ab, ba, load, rate = _score(c, texts, orders, threads, batch_size)
        scores = ab if ba is None else combine(ab, ba)
        cut = best_threshold(labels, scores)
        return scores, cut, best_threshold(labels, ab), compute_metrics(labels, scores, cut), load, rate

    log(f"scoring {len(texts)} pairs ({'both orders' if orders == 2 else 'A/B'}) with the reference "
        f"({reference.name})")
    ref_scores, threshold, ref_one, ref_m, load, rate = scored(reference)
    ref = VariantResult(reference.name, reference.format, reference.quant, str(reference.path), False, threshold,
                        ref_one, ref_m.precision, ref_m.recall, ref_m.f1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                        artifact_size(reference.path), load, rate, None, None, "reference", None)
    log(f"reference F1 {ref_m.f1:.3f} at threshold {threshold:.4f} ({rate:.1f} pairs/s)")
    results, all_scores = [], {reference.name: ref_scores}
    for c in candidates:
        scores, own, one, m, load, rate = scored(c)
        all_scores[c.name] = scores
        e = judge(labels, ref_scores, scores, c.max_delta_f1, c.max_flip_rate)
        results.append(VariantResult(c.name, c.format, c.quant, str(c.path), c.imatrix, own, one, m.precision,
                                     m.recall, m.f1, e.delta_f1, e.delta_f1_low, e.delta_f1_high, e.flip_rate,
                                     e.flip_rate_low, e.flip_rate_high,
                                     float(np.mean(np.abs(scores - ref_scores))),
                                     artifact_size(c.path) + (artifact_size(c.lora) if c.lora else 0),
                                     load, rate, c.max_delta_f1, c.max_flip_rate, e.verdict, e.pairs_to_decide,
                                     str(c.lora) if c.lora else None))
        log(f"{c.name}: F1 {m.f1:.3f} at threshold {own:.4f}, delta {e.delta_f1 * 100:+.2f} pt "
            f"[{e.delta_f1_low * 100:+.2f}, {e.delta_f1_high * 100:+.2f}], flips {e.flip_rate:.1%} "
            f"[{e.flip_rate_low:.1%}, {e.flip_rate_high:.1%}], {rate:.1f} pairs/s: {e.verdict}")
    return Verification(threshold, len(texts), orders, ref, results, all_scores)
