"""The cascade: the feature matcher settles the pairs it is sure of, the LLM scores the rest, and
for those the two are fused.

Routing: a pair whose feature probability is below `low` or at least `high` keeps that probability
as its score and never reaches the LLM. The cuts are the widest pair whose decisions differ from the
LLM-only decisions on at most `budget` (0.5 %) of the valid pairs.

Fusion: for the pairs the LLM scores, P(match) = sigmoid(b + w_llm * logit(P_llm) + w_feat *
logit(P_feat)), a logistic regression fitted on the valid pairs between the cuts. P_llm is the
one-order score or the both-orders one (mean log-odds). Which of the two, and whether the fitted
fusion or the LLM's own score (b = 0, w_llm = 1, w_feat = 0) is used, is measured on valid and
stored (`fit_cascade`). Every decision is then `score >= threshold`: the LLM's own cut where the LLM's
score is kept, else the cut tuned on valid.
Everything here is fitted on valid pairs; test is never seen.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from epm_edge.errors import ModelError
from epm_edge.evaluate.metrics import best_threshold, compute_metrics
from epm_edge.features.matcher import MODEL_FILE, FeatureMatcher, load_matcher, read_json

CASCADE_FILE = "cascade.json"
FEATURES_DIR = "features"  # inside an adapter dir
VERSION = 1
_EPS = 1e-6
# One order is kept unless both orders lift the valid F1 (mean over sets) by more than this.
ORDERS_TOLERANCE = 0.005
# A way of scoring may lose at most this much F1 on any one set against LLM-only.
SET_TOLERANCE = 0.005


LLM_OWN = (0.0, 1.0, 0.0)  # fusion coefficients that keep the LLM's score as it is


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def fuse(coef: tuple[float, float, float], p_feat, p_llm) -> np.ndarray:
    b, w_llm, w_feat = coef
    return 1 / (1 + np.exp(-(b + w_llm * logit(p_llm) + w_feat * logit(p_feat))))


@dataclass
class CascadeSettings:
    low: float  # feature P below this: no match, decided without the LLM
    high: float  # feature P at or above this: match, decided without the LLM
    orders: int  # record orders the LLM scores a routed pair in (1 or 2)
    coef: tuple[float, float, float]  # intercept, weight of logit(P_llm), weight of logit(P_feat)
    threshold: float  # the cut on the cascade's scores
    llm: dict  # the LLM the fusion was fitted on (adapter, quant type, its own cut)
    fitted_on: dict  # valid pairs per set, disagreement with the LLM, LLM share, F1 of the candidates

    def to_json(self) -> dict:
        return {"version": VERSION, **asdict(self), "coef": list(self.coef)}

    @classmethod
    def from_json(cls, data: dict, path: Path) -> "CascadeSettings":
        if data.get("version") != VERSION:
            raise ModelError(f"{path}: cascade settings version {data.get('version')!r}, this epm-edge reads "
                             f"{VERSION}; refit with `epm-edge train cascade`")
        try:
            s = cls(low=float(data["low"]), high=float(data["high"]), orders=int(data["orders"]),
                    coef=tuple(float(c) for c in data["coef"]), threshold=float(data["threshold"]),
                    llm=dict(data["llm"]), fitted_on=dict(data["fitted_on"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"{path}: incomplete cascade settings ({type(e).__name__}: {e})") from None
        if not (0.0 <= s.low <= s.high <= 1.0) or s.orders not in (1, 2) or len(s.coef) != 3 \
                or not np.all(np.isfinite(s.coef)):
            raise ModelError(f"{path}: cascade settings out of range (low {s.low}, high {s.high}, "
                             f"orders {s.orders}, coef {s.coef})")
        return s


@dataclass
class Cascade:
    matcher: FeatureMatcher
    settings: CascadeSettings
    path: Path

    def to_llm(self, p_feat: np.ndarray) -> np.ndarray:
        """Mask of the pairs the feature matcher is not sure of."""
        p = np.asarray(p_feat)
        return (p >= self.settings.low) & (p < self.settings.high)

    def fuse(self, p_feat: np.ndarray, p_llm: np.ndarray) -> np.ndarray:
        return fuse(self.settings.coef, p_feat, p_llm)

    def cut(self, llm_cut: float | None) -> float:
        """The cut on the cascade's scores. Where the LLM's own score is kept between the routing cuts,
        it is the running LLM's own stored cut (each GGUF type has its own), so the cascade decides
        those pairs as `--cascade off` does; a fused score keeps the cut fitted with the fusion."""
        s = self.settings
        if s.coef == LLM_OWN and llm_cut is not None:
            return float(np.clip(llm_cut, s.low, s.high))
        return s.threshold


def cascade_dir(model_path: Path) -> Path | None:
    """The feature stage of a trained adapter dir, if it has a fitted one."""
    d = Path(model_path) / FEATURES_DIR
    return d if (d / CASCADE_FILE).exists() else None


def load_cascade(directory: str | Path) -> Cascade:
    directory = Path(directory)
    path = directory / CASCADE_FILE
    data = read_json(path, "fit it with `epm-edge train cascade`")
    return Cascade(load_matcher(directory), CascadeSettings.from_json(data, path), directory)


def routing_cuts(p_feat: np.ndarray, llm_match: np.ndarray, budget: float) -> tuple[float, float, int]:
    """(low, high, disagreements): the cuts that leave the fewest pairs to the LLM while the feature
    decisions (below low: no, from high: yes) differ from the LLM's on at most budget x n pairs."""
    p = np.asarray(p_feat, dtype=np.float64)
    y = np.asarray(llm_match, dtype=bool)
    n, allowed = len(p), int(np.floor(budget * len(p)))
    order = np.argsort(p, kind="stable")
    ps, ys = p[order], y[order]
    # cutting below sorted position i settles ps[:i] as no: LLM yeses there disagree
    lo_cost = np.r_[0, np.cumsum(ys)]
    # cutting at sorted position j settles ps[j:] as yes: LLM noes there disagree
    hi_cost = np.r_[np.cumsum((~ys)[::-1])[::-1], 0]
    # a cut must fall between different probabilities, so ties are decided together
    valid_cut = np.r_[True, ps[1:] != ps[:-1], True]
    best, k = (0, n), 0
    for i in np.flatnonzero(valid_cut):  # i grows, so the smallest k within budget only grows too
        if lo_cost[i] > allowed:
            break
        k = max(k, i)
        while not valid_cut[k] or lo_cost[i] + hi_cost[k] > allowed:
            k += 1  # ends at k = n at the latest, where nothing is settled as yes
        if i + n - k > best[0] + n - best[1]:
            best = (int(i), int(k))
    i, k = best
    low = 0.0 if i == 0 else float(np.nextafter(ps[-1], 2)) if i == n else float(ps[i - 1] + ps[i]) / 2
    high = 1.0 if k == n else 0.0 if k == 0 else float(ps[k - 1] + ps[k]) / 2
    return low, max(low, high), int(lo_cost[i] + hi_cost[k])


def _fit_fusion(p_feat: np.ndarray, p_llm: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    from sklearn.linear_model import LogisticRegression

    x = np.stack([logit(p_llm), logit(p_feat)], axis=1)
    if len(set(labels.tolist())) < 2:  # nothing to learn between the cuts: trust the LLM as it is
        return 0.0, 1.0, 0.0
    lr = LogisticRegression(C=100.0, max_iter=1000).fit(x, labels)
    return float(lr.intercept_[0]), float(lr.coef_[0][0]), float(lr.coef_[0][1])


def _set_f1(labels: np.ndarray, scores: np.ndarray, sets: np.ndarray) -> dict[str, float]:
    """Each set's F1 at its own best cut (as eval --tune-split picks a cut per set)."""
    return {str(s): compute_metrics(labels[sets == s], scores[sets == s],
                                    best_threshold(labels[sets == s], scores[sets == s])).f1 for s in np.unique(sets)}


def fit_cascade(p_feat: np.ndarray, ab: np.ndarray, ba: np.ndarray, labels: np.ndarray, sets: np.ndarray,
                llm_cut: float, llm: dict, budget: float = 0.005) -> CascadeSettings:
    """Cuts, fusion, orders and threshold from valid pairs: the feature P, the LLM's A/B and B/A
    scores, the labels, each pair's set name, and the LLM-only cut (both orders) they are held to.

    Four ways of scoring the pairs between the cuts are measured: one or both record orders, each
    fused with the feature probability or taken as the LLM gives it (feature weight 0). Kept are
    those whose F1 (each set at its best cut) is within SET_TOLERANCE of LLM-only on every set: a
    cascade serves every domain, so a gain on one set must not be paid for by another; of those,
    the best mean F1, one order unless both lift it by more than ORDERS_TOLERANCE."""
    from epm_edge.runtime.orders import combine

    labels = np.asarray(labels).astype(int)
    both = combine(ab, ba)
    low, high, disagree = routing_cuts(p_feat, both >= llm_cut, budget)
    band = (p_feat >= low) & (p_feat < high)
    llm_only = _set_f1(labels, both, sets)
    candidates = []
    for orders, p_llm in ((1, np.asarray(ab, dtype=np.float64)), (2, both)):
        for fused in (True, False):
            coef = _fit_fusion(p_feat[band], p_llm[band], labels[band]) if fused else LLM_OWN
            scores = np.asarray(p_feat, dtype=np.float64).copy()
            scores[band] = fuse(coef, p_feat[band], p_llm[band])
            f1 = _set_f1(labels, scores, sets)
            candidates.append({"orders": orders, "fused": fused, "coef": coef, "scores": scores, "set_f1": f1,
                               "mean_f1": float(np.mean(list(f1.values()))),
                               "holds": all(f1[s] >= llm_only[s] - SET_TOLERANCE for s in f1)})
    pool = [c for c in candidates if c["holds"]] or candidates
    best = max(c["mean_f1"] for c in pool)
    chosen = min((c for c in pool if c["mean_f1"] >= best - ORDERS_TOLERANCE),
                 key=lambda c: (c["orders"], -c["mean_f1"]))
    # the LLM's own score between the cuts keeps the LLM's own cut (tuned on all its valid pairs), so
    # there the cascade decides as LLM-only does; a fused score gets the best cut on these pairs
    cut = best_threshold(labels, chosen["scores"]) if chosen["fused"] else llm_cut
    threshold = float(np.clip(cut, low, high))
    per_set = {}
    for s in np.unique(sets):
        m = sets == s
        per_set[str(s)] = {"pairs": int(m.sum()), "llm_share": float(band[m].mean()),
                           "disagreements": int(((both[m] >= llm_cut) != (chosen["scores"][m] >= threshold))
                                                [~band[m]].sum())}
    fitted_on = {"pairs": int(len(labels)), "budget": budget, "disagreements": disagree,
                 "llm_share": float(band.mean()), "llm_only_cut": float(llm_cut),
                 "set_f1": {"llm_only": llm_only, **{
                     f"{c['orders']}_order{'s' if c['orders'] == 2 else ''}_{'fused' if c['fused'] else 'llm'}":
                         {**c["set_f1"], "holds": c["holds"]} for c in candidates}},
                 "per_set": per_set}
    return CascadeSettings(low=low, high=high, orders=chosen["orders"], coef=chosen["coef"], threshold=threshold,
                           llm=llm, fitted_on=fitted_on)


def save_cascade(settings: CascadeSettings, directory: Path) -> Path:
    path = Path(directory) / CASCADE_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(settings.to_json(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def resolve_cascade(mode: str, model_path: Path | None) -> Cascade | FeatureMatcher | None:
    """What `--cascade MODE` means for a model: "off" -> None; "auto" -> the feature stage of the
    adapter dir (the shipped default when no model is given) if it has one, else None;
    "features-only" -> that stage's feature matcher alone; any other value is a features dir."""
    if mode == "off":
        return None
    if mode not in ("auto", "features-only"):
        return load_cascade(Path(mode))
    from epm_edge.model_store import shipped_adapter

    source = Path(model_path) if model_path is not None else shipped_adapter()
    if mode == "features-only":
        if source is None or not (source / FEATURES_DIR).is_dir():
            raise ModelError(f"{source}: has no feature stage ({FEATURES_DIR}/); train one with "
                             "`epm-edge train features`, or pass its dir as --cascade")
        return load_matcher(source / FEATURES_DIR)
    found = cascade_dir(source) if source is not None and source.is_dir() else None
    return load_cascade(found) if found else None


def identity(stage: Cascade | FeatureMatcher) -> str:
    """What resumable outputs record of a feature stage: the digest of its files."""
    from epm_edge.model_store import sha256_file

    files = [MODEL_FILE, CASCADE_FILE] if isinstance(stage, Cascade) else [MODEL_FILE]
    return "+".join(sha256_file(stage.path / f)[:16] for f in files)
