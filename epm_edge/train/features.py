"""`train features` (the feature matcher, on the train splits) and `train cascade` (its routing cuts
and fusion with an LLM, on the valid splits). Neither reads a test split."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from epm_edge.data import load_pair_set
from epm_edge.evaluate.metrics import average_precision, best_threshold, compute_metrics
from epm_edge.features.matcher import FeatureMatcher, train_matcher
from epm_edge.features.pairs import PairFeaturizer
from epm_edge.model_store import sha256_file


def split_features(dirs: list[Path], split: str, on_set=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(features, labels, set name per pair, {set: file digests}) of one split of each set; the
    TF-IDF of each set is fitted on its own two catalogs, as `match` fits it on the two it is given."""
    xs, ys, names, digests = [], [], [], {}
    for d in dirs:
        ps = load_pair_set(d)
        pairs = ps.split(split)
        xs.append(PairFeaturizer(ps.a.records, ps.b.records).features(pairs.a_ids, pairs.b_ids))
        ys.append(pairs.labels)
        names += [ps.name] * len(pairs)
        digests[ps.name] = {f: sha256_file(d / f) for f in ("tableA.csv", "tableB.csv", f"{split}.csv")}
        if on_set:
            on_set(ps.name, len(pairs))
    return np.concatenate(xs), np.concatenate(ys).astype(int), np.array(names), digests


def per_set_figures(labels: np.ndarray, scores: np.ndarray, sets: np.ndarray) -> dict:
    """Per set: pairs, average precision and the F1 at the set's best cut (in-sample)."""
    out = {}
    for s in np.unique(sets):
        m = sets == s
        cut = best_threshold(labels[m], scores[m])
        out[str(s)] = {"pairs": int(m.sum()), "average_precision": average_precision(labels[m], scores[m]),
                       "best_f1": compute_metrics(labels[m], scores[m], cut).f1}
    return out


def train_feature_matcher(dirs: list[Path], out: Path, log=print) -> FeatureMatcher:
    """Train on the train splits, stop early on the valid splits, store in `out` (text model + JSON)."""
    start = time.perf_counter()
    x_train, y_train, _, train_digests = split_features(dirs, "train", lambda s, n: log(f"features: {s} train, {n} pairs"))
    x_valid, y_valid, valid_sets, valid_digests = split_features(dirs, "valid",
                                                                 lambda s, n: log(f"features: {s} valid, {n} pairs"))
    seconds = time.perf_counter() - start
    log(f"features of {len(y_train) + len(y_valid)} pairs in {seconds:.1f}s "
        f"({(len(y_train) + len(y_valid)) / seconds:.0f} pairs/s, catalog setup included)")
    info = {"data": {s: {"train": train_digests[s], "valid": valid_digests[s]} for s in train_digests},
            "train_pairs": int(len(y_train)), "valid_pairs": int(len(y_valid))}
    matcher = train_matcher(x_train, y_train, x_valid, y_valid, info)
    p = matcher.predict(x_valid)
    matcher.info["threshold"] = best_threshold(y_valid, p)  # pooled over the valid pairs of all sets
    matcher.info["valid"] = per_set_figures(y_valid, p, valid_sets)
    matcher.save(out)
    matcher.path = out
    return matcher


def fit_cascade_on_valid(scorer, adapter: Path, dirs: list[Path], scores_dir: Path | None, settings: dict,
                         budget: float = 0.005, limit: int | None = None, batch_size: int = 32,
                         record_tokens: int = 64, bar=None):
    """Score the valid pairs of `dirs` (the first `limit` of each) with the LLM in both orders (resumable
    in `scores_dir`), then fit the cascade of `adapter/features` against the LLM's own both-orders cut
    and store it there."""
    from epm_edge.evaluate.labelled import llm_scores
    from epm_edge.features.cascade import FEATURES_DIR, fit_cascade, save_cascade
    from epm_edge.features.matcher import load_matcher
    from epm_edge.runtime.orders import combine, stored_threshold

    features = Path(adapter) / FEATURES_DIR
    matcher = load_matcher(features)
    p_feat, ab, ba, labels, sets = [], [], [], [], []
    for d in dirs:
        ps = load_pair_set(d)
        pairs = ps.split("valid").head(limit)
        p_feat.append(matcher.predict(PairFeaturizer(ps.a.records, ps.b.records).features(pairs.a_ids, pairs.b_ids)))
        for swap, keep in ((False, ab), (True, ba)):
            keep.append(llm_scores(scorer, ps, pairs, "valid", 0, swap=swap, record_tokens=record_tokens,
                                   batch_size=batch_size, bar=bar, scores_dir=scores_dir, settings={
                                       **settings, "data": str(Path(d).resolve())})[0])
        labels.append(pairs.labels)
        sets += [ps.name] * len(pairs)
    p_feat, ab, ba, labels = (np.concatenate(v) for v in (p_feat, ab, ba, labels))
    cut = stored_threshold(scorer, both_orders=True)
    if cut is None:  # a model without a stored cut: its best one on these pairs
        cut = best_threshold(labels, combine(ab, ba))
    llm = {"adapter": Path(adapter).name, "quant": scorer.metadata.get("quant"), "record_tokens": record_tokens,
           "valid_limit_per_set": limit}
    fitted = fit_cascade(p_feat, ab, ba, labels, np.array(sets), cut, llm, budget=budget)
    return fitted, save_cascade(fitted, features)
