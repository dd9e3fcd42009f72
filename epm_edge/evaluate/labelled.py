"""Evaluate a scorer on labelled splits of benchmark dirs, optionally tuning the threshold first.

Tuning scores another split (valid) and keeps the threshold that maximizes F1 there, so a test
figure never sees its own labels; that is how the model card's per-set F1 is measured.

With a scores dir, each pair's score is appended to `<set>-<split>-<skip>-<n>.jsonl` there as its
batch finishes, so a whole-split run that is stopped resumes with the pairs it has not scored yet.
Scoring both record orders keeps the B/A scores in `...-ba.jsonl` beside them, so the A/B scores
of an earlier run are reused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from epm_edge.data import load_pair_set
from epm_edge.evaluate.metrics import average_precision, best_threshold, compute_metrics
from epm_edge.evaluate.scoring import score_texts, serialize_pairs
from epm_edge.match.output import ResultWriter
from epm_edge.runtime.orders import combine, stored_threshold, swapped


def evaluate_set(scorer, data_dir: Path, split: str, *, limit: int | None = None, skip: int = 0,
                 threshold: float | None = None, tune_split: str | None = None, tune_limit: int | None = None,
                 record_tokens: int = 64, batch_size: int = 32, bar=None, scores_dir: Path | None = None,
                 settings: dict | None = None, both_orders: bool = False) -> tuple[dict, tuple | None]:
    """(metrics of `scorer` on one split, (labels, scores) of the tuning pairs or None).

    The threshold is the one given, else tuned on `tune_split`, else stored with the model, else 0.5.
    `settings` (model, backend) are stored beside the scores: a run with other settings will not reuse them.
    `both_orders`: each pair's score combines its A/B and B/A scores (runtime/orders.py).
    """
    ps = load_pair_set(data_dir)
    settings = {**(settings or {}), "data": str(Path(data_dir).resolve()), "record_tokens": record_tokens}

    def score_order(pairs, split_name: str, first: int, note: str, swap: bool) -> tuple[np.ndarray, float, int]:
        """(scores of `pairs` in one order, seconds spent, pairs scored now), reusing the scores already stored."""
        keys = list(zip(pairs.a_ids, pairs.b_ids))
        store = None
        if scores_dir:
            name = f"{ps.name}-{split_name}-{first}-{len(pairs)}{'-ba' if swap else ''}.jsonl"
            store = ResultWriter(Path(scores_dir) / name, settings,
                                 restart_hint="remove it or choose another --scores dir")
        done = store.done if store else {}
        todo = [i for i, k in enumerate(keys) if k not in done]
        label = f"{ps.name}/{split_name}{note}{' B/A' if swap else ''}"
        task = bar.add_task(label, total=len(keys), completed=len(keys) - len(todo)) \
            if bar else None

        def keep(lo: int, new: np.ndarray) -> None:
            store.write([{"a_id": keys[i][0], "b_id": keys[i][1], "score": float(s)}
                         for i, s in zip(todo[lo:lo + len(new)], new)])

        texts = serialize_pairs(ps, pairs, record_tokens)
        texts = swapped(texts) if swap else texts
        try:
            new, seconds = score_texts(scorer, [texts[i] for i in todo], batch_size,
                                       on_batch=(lambda n: bar.advance(task, n)) if bar else None,
                                       on_scores=keep if store else None)
        finally:
            if store:
                store.close()
        scores = np.array([done.get(k, np.nan) for k in keys])
        scores[todo] = new
        return scores, seconds, len(todo)

    def score(pairs, split_name: str, first: int, note: str = "") -> tuple[np.ndarray, float, int]:
        ab = score_order(pairs, split_name, first, note, swap=False)
        if not both_orders:
            return ab
        ba = score_order(pairs, split_name, first, note, swap=True)
        return combine(ab[0], ba[0]), ab[1] + ba[1], ab[2] + ba[2]

    tuned_on = tuning = tuning_f1 = None
    if tune_split:
        tune = ps.split(tune_split).head(tune_limit)
        scores, *_ = score(tune, tune_split, 0, " (threshold)")
        threshold, tuned_on = best_threshold(tune.labels, scores), f"{tune_split}:{len(tune)}"
        # the best F1 any cut reaches on the tuning pairs: an in-sample figure, but threshold-free across models
        tuning_f1 = compute_metrics(tune.labels, scores, threshold).f1
        tuning = (tune.labels, scores)
    elif threshold is None:
        stored = stored_threshold(scorer, both_orders)
        threshold = stored if stored is not None else 0.5
    pairs = ps.split(split).head(limit, skip)
    scores, seconds, scored = score(pairs, split, skip)
    m = compute_metrics(pairs.labels, scores, threshold)
    orders = 2 if both_orders else 1  # scored_pairs, resumed_pairs and pairs_per_second count scorings
    return ({"data": str(data_dir), "split": split, "orders": orders, "skipped": skip,
             "threshold_tuned_on": tuned_on, "tuning_f1": tuning_f1, **m.as_dict(),
             "average_precision": average_precision(pairs.labels, scores), "seconds": seconds,
             "scored_pairs": scored, "resumed_pairs": len(pairs) * orders - scored,
             "pairs_per_second": scored / seconds if scored else 0.0}, tuning)


def pooled_threshold(tunings: list[tuple]) -> tuple[float, int]:
    """(the threshold best over the tuning pairs of all sets together, their count): one cut for a
    model that serves every domain, as a shipped default adapter records it."""
    labels = np.concatenate([np.asarray(t[0]) for t in tunings])
    return best_threshold(labels, np.concatenate([t[1] for t in tunings])), len(labels)
