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

from epm_edge.bench import measure
from epm_edge.data import load_pair_set, serialize_record
from epm_edge.evaluate.scoring import score_texts, serialize_pairs

# Part of every spec: bump when the result's fields change, so stored results are not reused.
RESULT_VERSION = 2


def load(variant: dict, threads: int, batch_size: int, sets: list, record_tokens: int, both_orders: bool):
    if variant["runtime"] == "tfidf":  # a cosine similarity: the same in either order, so scored once
        from epm_edge.bench.tfidf import TfidfScorer
        return TfidfScorer([serialize_record(r, record_tokens) for ps in sets
                            for cat in (ps.a, ps.b) for r in cat.records.values()])
    from epm_edge.runtime import load_scorer
    from epm_edge.runtime.orders import BothOrders
    scorer = load_scorer(variant["path"], backend=variant["runtime"], threads=threads, batch_size=batch_size)
    return BothOrders(scorer) if both_orders else scorer


def run(spec: dict) -> dict:
    sets = {d["name"]: load_pair_set(d["dir"]) for d in spec["datasets"]}
    texts = {}
    for d in spec["datasets"]:
        ps = sets[d["name"]]
        texts[d["name"]] = {split: serialize_pairs(ps, ps.split(split).head(d["limit"]), spec["record_tokens"])
                            for split in ("valid", d["split"])}

    rss_before = measure.rss_bytes()
    start = time.perf_counter()
    scorer = load(spec["variant"], spec["threads"], spec["batch_size"], list(sets.values()), spec["record_tokens"],
                  spec["both_orders"])
    result = {"load_seconds": time.perf_counter() - start, "rss_before_load_bytes": rss_before,
              "rss_after_load_bytes": measure.rss_bytes(), "provenance": dict(scorer.metadata), "datasets": {}}
    if hasattr(scorer, "size_bytes"):
        result["size_bytes"] = scorer.size_bytes()

    for d in spec["datasets"]:
        pairs = texts[d["name"]]
        # Accuracy needs every pair once; the valid pass also warms caches before the timed runs.
        valid_scores, _ = score_texts(scorer, pairs["valid"], spec["batch_size"])
        scores, scoring_seconds = score_texts(scorer, pairs[d["split"]], spec["batch_size"])
        # Repeated timings run on a fixed head of the split: mean +- sd without rescoring it all.
        timed = pairs[d["split"]][:spec["timing_pairs"]]
        seconds, latency = [], []
        for _ in range(spec["repeat"]):
            seconds.append(score_texts(scorer, timed, spec["batch_size"])[1])
            latency += measure.single_pair_seconds(scorer, timed[:spec["latency_pairs"]])
        result["datasets"][d["name"]] = {"valid_scores": valid_scores.tolist(), "scores": scores.tolist(),
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
