"""Raw worker output -> the figures of one report row (threshold from valid, metrics on the split)."""

from __future__ import annotations

import numpy as np

from epm_edge.evaluate.metrics import best_threshold, compute_metrics


def mean_sd(values) -> dict:
    """Mean and sample standard deviation (0 for a single run), plus the runs themselves."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "runs": v.tolist()}


def latency_summary(seconds) -> dict:
    ms = np.asarray(seconds, dtype=np.float64) * 1000
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(ms.mean()),
            "n": len(ms), "samples": ms.tolist()}


def usd_per_million_pairs(usd_per_core_hour: float | None, cores: int, pairs_per_s: float) -> float | None:
    """Cores reserved for the run, priced per hour, over the hours 1M pairs take."""
    if usd_per_core_hour is None or pairs_per_s <= 0:
        return None
    return usd_per_core_hour * cores * (1e6 / pairs_per_s) / 3600


def row(raw: dict, valid_labels, labels, tokens_per_pair: float | None, cores: int,
        usd_per_core_hour: float | None) -> dict:
    """Figures for one (variant, threads, dataset) from the worker's raw scores and timings."""
    threshold = best_threshold(valid_labels, raw["valid_scores"])
    m = compute_metrics(labels, raw["scores"], threshold)
    rate = mean_sd([raw["timing_pairs"] / s for s in raw["throughput_seconds"]])
    return {**m.as_dict(), "valid_f1": compute_metrics(valid_labels, raw["valid_scores"], threshold).f1,
           "n_valid_pairs": len(valid_labels), "scoring_seconds": raw["scoring_seconds"],
           "timing_pairs": raw["timing_pairs"], "throughput_seconds": raw["throughput_seconds"],
           "pairs_per_s": rate, "latency_ms": latency_summary(raw["latency_seconds"]),
           "prompt_tokens_per_pair": tokens_per_pair,
           "prompt_tokens_per_s": mean_sd(np.asarray(rate["runs"]) * tokens_per_pair) if tokens_per_pair else None,
           "usd_per_million_pairs": usd_per_million_pairs(usd_per_core_hour, cores, rate["mean"])}
