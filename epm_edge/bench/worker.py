"""One variant in its own process: `python -m epm_edge.bench.worker SPEC.json OUT.json`.

A fresh process per variant makes load time and peak RSS that variant's own, and keeps one
runtime's threads and allocations from skewing the next. The worker only measures; the parent
turns scores and timings into figures.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time

import numpy as np

from epm_edge.bench import measure
from epm_edge.data import load_pair_set, serialize_record
from epm_edge.evaluate.scoring import score_texts, serialize_pairs

# Part of every spec: bump when the result's fields change, so stored results are not reused.
RESULT_VERSION = 3


class FeatureStage:
    """The feature matcher alone, or the cascade around an LLM scorer, over keyed pairs
    (a_text, b_text, a_id, b_id) of the dataset chosen with `use`: pair features first, the LLM
    only for the pairs the cascade sends it, fused with their feature probability."""

    def __init__(self, stage, llm, sets: dict):
        from epm_edge.features.pairs import PairFeaturizer

        self.stage, self.llm, self.featurizer = stage, llm, None
        self.matcher = getattr(stage, "matcher", stage)
        self.metadata = dict(llm.metadata) if llm is not None else {"feature_matcher": str(stage.path)}
        # the catalogs' TF-IDF and record facts are built once, as `match` builds its blocking index
        self.featurizers = {name: PairFeaturizer(ps.a.records, ps.b.records) for name, ps in sets.items()}
        self.pairs = self.to_llm = 0

    def use(self, name: str) -> None:
        self.featurizer = self.featurizers[name]

    def score(self, items) -> np.ndarray:
        p = self.matcher.predict(self.featurizer.features([i[2] for i in items], [i[3] for i in items]))
        self.pairs += len(items)
        if self.llm is None:
            return p
        unsure = np.flatnonzero(self.stage.to_llm(p))
        self.to_llm += len(unsure)
        if len(unsure):
            p[unsure] = self.stage.fuse(p[unsure], self.llm.score([items[i][:2] for i in unsure]))
        return p

    def close(self) -> None:
        if self.llm is not None:
            self.llm.close()


def load(variant: dict, threads: int, batch_size: int, sets: dict, record_tokens: int, both_orders: bool,
         cascade: str | None = None):
    if variant["runtime"] == "tfidf":  # a cosine similarity: the same in either order, so scored once
        from epm_edge.bench.tfidf import TfidfScorer
        return TfidfScorer([serialize_record(r, record_tokens) for ps in sets.values()
                            for cat in (ps.a, ps.b) for r in cat.records.values()])
    if variant["runtime"] == "features":
        from epm_edge.features.matcher import load_matcher
        return FeatureStage(load_matcher(variant["path"]), None, sets)
    from epm_edge.runtime import load_scorer
    from epm_edge.runtime.orders import BothOrders
    scorer = load_scorer(variant["path"], backend=variant["runtime"], threads=threads, batch_size=batch_size,
                         lora=variant["options"].get("lora"))
    if cascade:
        from epm_edge.features.cascade import load_cascade
        stage = load_cascade(cascade)
        return FeatureStage(stage, BothOrders(scorer) if stage.settings.orders == 2 else scorer, sets)
    return BothOrders(scorer) if both_orders else scorer


def run(spec: dict) -> dict:
    sets = {d["name"]: load_pair_set(d["dir"]) for d in spec["datasets"]}
    keyed = spec.get("cascade") or spec["variant"]["runtime"] == "features"
    texts = {}
    for d in spec["datasets"]:
        ps = sets[d["name"]]
        texts[d["name"]] = {}
        for split in ("valid", d["split"]):
            pairs = ps.split(split).head(d["limit"])
            serialized = serialize_pairs(ps, pairs, spec["record_tokens"])
            # the feature stage needs the records' ids beside their text
            texts[d["name"]][split] = [(*t, a, b) for t, a, b in zip(serialized, pairs.a_ids, pairs.b_ids)] \
                if keyed else serialized

    rss_before = measure.rss_bytes()
    start = time.perf_counter()
    scorer = load(spec["variant"], spec["threads"], spec["batch_size"], sets, spec["record_tokens"],
                  spec["both_orders"], spec.get("cascade"))
    result = {"load_seconds": time.perf_counter() - start, "rss_before_load_bytes": rss_before,
              "rss_after_load_bytes": measure.rss_bytes(), "provenance": dict(scorer.metadata), "datasets": {}}
    if hasattr(scorer, "size_bytes"):
        result["size_bytes"] = scorer.size_bytes()

    for d in spec["datasets"]:
        pairs = texts[d["name"]]
        if keyed:
            scorer.use(d["name"])
        # Accuracy needs every pair once; the valid pass also warms caches before the timed runs.
        valid_scores, _ = score_texts(scorer, pairs["valid"], spec["batch_size"])
        if keyed:
            scorer.pairs = scorer.to_llm = 0
        scores, scoring_seconds = score_texts(scorer, pairs[d["split"]], spec["batch_size"])
        llm_share = scorer.to_llm / scorer.pairs if keyed else (0.0 if spec["variant"]["runtime"] == "tfidf" else 1.0)
        # Repeated timings run on a fixed head of the split: mean +- sd without rescoring it all.
        timed = pairs[d["split"]][:spec["timing_pairs"]]
        seconds, latency = [], []
        for _ in range(spec["repeat"]):
            seconds.append(score_texts(scorer, timed, spec["batch_size"])[1])
            latency += measure.single_pair_seconds(scorer, timed[:spec["latency_pairs"]])
        result["datasets"][d["name"]] = {"valid_scores": valid_scores.tolist(), "scores": scores.tolist(),
                                         "llm_share": llm_share,
                                         "scoring_seconds": scoring_seconds, "timing_pairs": len(timed),
                                         "throughput_seconds": seconds, "latency_seconds": latency}
    scorer.close()
    result["peak_rss_bytes"] = measure.peak_rss_bytes()
    # When and how busy: a rerun that reuses this result must still report the host as measured.
    result["measured_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    result["load_average"] = os.getloadavg()
    return result


def main(argv: list[str]) -> None:
    spec_path, out_path = argv
    with open(spec_path) as f:
        spec = json.load(f)
    result = run(spec)
    tmp = out_path + ".tmp"  # a killed worker leaves no half-written result for a rerun to reuse
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, out_path)


if __name__ == "__main__":
    main(sys.argv[1:])
