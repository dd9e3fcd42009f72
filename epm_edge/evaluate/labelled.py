"""Evaluate a scorer on labelled splits of benchmark dirs, optionally tuning the threshold first.

Tuning scores another split (valid) and keeps the threshold that maximizes F1 there, so a test
figure never sees its own labels; that is how the model card's per-set F1 is measured.

With a scores dir, each pair's score is appended to `<set>-<split>-<skip>-<n>.jsonl` there as its
batch finishes, so a whole-split run that is stopped resumes with the pairs it has not scored yet.
Scoring both record orders keeps the B/A scores in `...-ba.jsonl` beside them, so the A/B scores
of an earlier run are reused.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from epm_edge.data import load_pair_set
from epm_edge.evaluate.metrics import average_precision, best_threshold, compute_metrics
from epm_edge.evaluate.scoring import score_texts, serialize_pairs
from epm_edge.match.output import ResultWriter
from epm_edge.runtime.orders import combine, stored_threshold, swapped


def llm_scores(scorer, ps, pairs, split_name: str, first: int, *, swap: bool, record_tokens: int = 64,
               batch_size: int = 32, bar=None, scores_dir: Path | None = None, settings: dict | None = None,
               note: str = "", only: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """(scores of `pairs` in one record order, pairs scored now), reusing the scores already stored in
    `scores_dir`. `only`: indices of the pairs wanted (the rest are neither scored nor returned)."""
    keys = list(zip(pairs.a_ids, pairs.b_ids))
    wanted = np.arange(len(keys)) if only is None else np.asarray(only, dtype=np.int64)
    store = None
    if scores_dir:
        name = f"{ps.name}-{split_name}-{first}-{len(pairs)}{'-ba' if swap else ''}.jsonl"
        store = ResultWriter(Path(scores_dir) / name, {**(settings or {}), "record_tokens": record_tokens},
                             restart_hint="remove it or choose another --scores dir")
    done = store.done if store else {}
    todo = [int(i) for i in wanted if keys[i] not in done]
    label = f"{ps.name}/{split_name}{note}{' B/A' if swap else ''}"
    task = bar.add_task(label, total=len(wanted), completed=len(wanted) - len(todo)) if bar else None

    def keep(lo: int, new: np.ndarray) -> None:
        store.write([{"a_id": keys[i][0], "b_id": keys[i][1], "score": float(s)}
                     for i, s in zip(todo[lo:lo + len(new)], new)])

    texts = serialize_pairs(ps, pairs, record_tokens)
    texts = swapped(texts) if swap else texts
    try:
        new, _ = score_texts(scorer, [texts[i] for i in todo], batch_size,
                             on_batch=(lambda n: bar.advance(task, n)) if bar else None,
                             on_scores=keep if store else None)
    finally:
        if store:
            store.close()
    scores = np.array([done.get(keys[i], np.nan) for i in wanted])
    scores[np.searchsorted(wanted, todo)] = new
    return scores, len(todo)


def evaluate_set(scorer, data_dir: Path, split: str, *, limit: int | None = None, skip: int = 0,
                 threshold: float | None = None, tune_split: str | None = None, tune_limit: int | None = None,
                 record_tokens: int = 64, batch_size: int = 32, bar=None, scores_dir: Path | None = None,
                 settings: dict | None = None, both_orders: bool = False, cascade=None,
                 matcher=None) -> tuple[dict, tuple | None]:
    """(metrics of `scorer` on one split, (labels, scores) of the tuning pairs or None).

    The threshold is the one given, else tuned on `tune_split`, else stored with the model, else 0.5.
    `settings` (model, backend) are stored beside the scores: a run with other settings will not reuse them.
    `both_orders`: each pair's score combines its A/B and B/A scores (runtime/orders.py).
    `cascade` (features/cascade.py): the feature matcher settles the pairs it is sure of and is fused
    with the LLM on the rest, scored in the cascade's own number of orders. `matcher` alone (no
    scorer): the feature matcher's probabilities, the LLM-free baseline.
    """
    start = time.perf_counter()  # the set's wall clock: loading it and fitting its features count too
    ps = load_pair_set(data_dir)
    settings = {**(settings or {}), "data": str(Path(data_dir).resolve())}
    featurizer = None
    if cascade or matcher:
        from epm_edge.features.pairs import PairFeaturizer

        featurizer = PairFeaturizer(ps.a.records, ps.b.records)
        matcher = matcher or cascade.matcher
        both_orders = cascade.settings.orders == 2 if cascade else both_orders

    def score(pairs, split_name: str, first: int, note: str = "") -> tuple[np.ndarray, int, int]:
        """(scores, LLM scorings made now, pairs sent to the LLM)."""
        if featurizer is None:
            wanted = None
        else:
            p_feat = matcher.predict(featurizer.features(pairs.a_ids, pairs.b_ids))
            if cascade is None:
                return p_feat, 0, 0
            wanted = np.flatnonzero(cascade.to_llm(p_feat))
            note += f" (LLM {len(wanted) / max(len(pairs), 1):.0%} of {len(pairs)})"
        kw = dict(record_tokens=record_tokens, batch_size=batch_size, bar=bar, scores_dir=scores_dir,
                  settings=settings, note=note, only=wanted)
        ab, n = llm_scores(scorer, ps, pairs, split_name, first, swap=False, **kw)
        if both_orders:
            ba, n_ba = llm_scores(scorer, ps, pairs, split_name, first, swap=True, **kw)
            ab, n = combine(ab, ba), n + n_ba
        if featurizer is None:
            return ab, n, len(pairs)
        p_feat[wanted] = cascade.fuse(p_feat[wanted], ab)
        return p_feat, n, len(wanted)

    tuned_on = tuning = tuning_f1 = None
    if tune_split:
        tuning_start = time.perf_counter()
        tune = ps.split(tune_split).head(tune_limit)
        scores, *_ = score(tune, tune_split, 0, " (threshold)")
        threshold, tuned_on = best_threshold(tune.labels, scores), f"{tune_split}:{len(tune)}"
        # the best F1 any cut reaches on the tuning pairs: an in-sample figure, but threshold-free across models
        tuning_f1 = compute_metrics(tune.labels, scores, threshold).f1
        tuning = (tune.labels, scores)
        start += time.perf_counter() - tuning_start  # scoring the tuning split is not the split's time
    elif threshold is None:
        llm_cut = stored_threshold(scorer, both_orders) if scorer is not None else None
        stored = cascade.cut(llm_cut) if cascade else matcher.info.get("threshold") if matcher else llm_cut
        threshold = stored if stored is not None else 0.5
    pairs = ps.split(split).head(limit, skip)
    scores, scored, to_llm = score(pairs, split, skip)
    seconds = time.perf_counter() - start
    m = compute_metrics(pairs.labels, scores, threshold)
    orders = 0 if scorer is None else 2 if both_orders else 1
    return ({"data": str(data_dir), "split": split, "orders": orders, "skipped": skip,
             "threshold_tuned_on": tuned_on, "tuning_f1": tuning_f1, **m.as_dict(),
             "average_precision": average_precision(pairs.labels, scores), "seconds": seconds,
             "llm_share": to_llm / len(pairs), "scorings": scored,
             "resumed_scorings": to_llm * orders - scored,
             "pairs_per_second": len(pairs) / seconds if seconds else 0.0}, tuning)


def pooled_threshold(tunings: list[tuple]) -> tuple[float, int]:
    """(the threshold best over the tuning pairs of all sets together, their count): one cut for a
    model that serves every domain, as a shipped default adapter records it."""
    labels = np.concatenate([np.asarray(t[0]) for t in tunings])
    return best_threshold(labels, np.concatenate([t[1] for t in tunings])), len(labels)
