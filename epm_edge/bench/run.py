"""Orchestration: one worker subprocess per (variant, threads), then figures and the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from epm_edge import prompt
from epm_edge.bench import figures, worker
from epm_edge.bench.variants import Variant, discover, select, variant_size
from epm_edge.data import load_pair_set
from epm_edge.evaluate.scoring import serialize_pairs
from epm_edge.runtime.orders import swapped


@dataclass
class BenchConfig:
    model: Path
    data_dirs: list[Path]
    out: Path
    split: str = "test"
    limit: int | None = None
    variants: list[str] | None = None  # names or shell patterns; None = all found
    threads: tuple[int, ...] = (os.cpu_count() or 1,)
    batch_size: int = 32
    repeat: int = 3
    timing_pairs: int = 256  # head of the split that the repeated throughput runs score
    latency_pairs: int = 32
    record_tokens: int = 64
    usd_per_core_hour: float | None = None
    both_orders: bool = True  # as `epm-edge match` scores by default: A/B and B/A, combined
    fresh: bool = False  # re-measure even where out/raw/ holds a result of the same spec
    cascade: Path | None = None  # a features dir: every model variant runs inside this cascade


def prompt_tokens_per_pair(gguf: Path, texts: list[tuple[str, str]]) -> float:
    """Mean tokens of the full prompt (shared prefix included), with the model family's tokenizer and chat
    format."""
    import llama_cpp as lc

    from epm_edge.runtime.llamacpp import load_model, model_chat_format

    model = load_model(gguf, vocab_only=True)
    vocab = lc.llama_model_get_vocab(model)
    fmt = model_chat_format(model, gguf)
    counts = []
    for a, b in texts:
        raw = fmt.full_prompt(a, b).encode("utf-8")
        buf = (lc.llama_token * (len(raw) + 8))()
        counts.append(lc.llama_tokenize(vocab, raw, len(raw), buf, len(buf), False, True))
    lc.llama_model_free(model)
    return float(np.mean(counts))


def _tokenizer_gguf(found: list[Variant]) -> Path:
    ggufs = [Path(v.path) for v in found if v.runtime == "llamacpp"]
    if ggufs:
        return ggufs[-1]  # the smallest file: same vocabulary as every other variant
    from epm_edge.model_store import base_gguf
    return base_gguf()


def _bnb_variant(v: Variant, log) -> Variant:
    """The variant pointed at its pre-quantized checkpoint (built here once, outside any measurement)."""
    from epm_edge.bench import bnb

    log(f"{v.name}: preparing the bitsandbytes checkpoint")
    return replace(v, path=str(bnb.prepare(v.path, v.options["bnb"])))


def run_worker(spec: dict, raw_dir: Path, key: str, fresh: bool) -> dict:
    """Measure one variant in a fresh process; reuse a stored result of the identical spec."""
    spec_path, out_path = raw_dir / f"{key}.spec.json", raw_dir / f"{key}.json"
    if not fresh and out_path.exists() and spec_path.exists() and json.loads(spec_path.read_text()) == spec:
        return {**json.loads(out_path.read_text()), "reused": True}
    out_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps(spec, indent=1))
    threads = str(spec["threads"])
    # Pin every thread pool a runtime might start, so --threads means the same for all of them.
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "epm_edge.bench.worker", str(spec_path), str(out_path)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not out_path.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"worker exit {proc.returncode}: " + " / ".join(tail)}
    return json.loads(out_path.read_text())


def _variant_rows(v: Variant, cfg: BenchConfig, datasets: list[dict], raw_dir: Path, log) -> list[dict]:
    """Report rows of one variant: one per (threads, dataset); a failure becomes rows with `error`."""
    thread_counts = (1,) if v.runtime == "tfidf" else cfg.threads  # TF-IDF uses one core whatever the setting
    failed = lambda threads, error: [{"variant": v.name, "runtime": v.runtime, "path": v.path,  # noqa: E731
                                      "threads": threads, "dataset": d["name"], "split": cfg.split,
                                      "error": error} for d in datasets]
    if "bnb" in v.options:
        try:
            v = _bnb_variant(v, log)
        except Exception as e:  # noqa: BLE001 - one variant failing must not lose the others
            log(f"{v.name}: failed: {e}")
            return [r for t in thread_counts for r in failed(t, f"bitsandbytes quantization: {e}")]
    rows = []
    for threads in thread_counts:
        key = f"{v.name}@{threads}"
        log(f"{key}: measuring")
        spec = {"result_version": worker.RESULT_VERSION, "variant": v.as_dict(), "threads": threads, "batch_size": cfg.batch_size,
                "cascade": str(cfg.cascade) if cfg.cascade and v.runtime not in ("tfidf", "features") else None,
                "repeat": cfg.repeat, "timing_pairs": cfg.timing_pairs, "latency_pairs": cfg.latency_pairs,
                "record_tokens": cfg.record_tokens, "both_orders": cfg.both_orders,
                "datasets": [{k: d[k] for k in ("name", "dir", "split", "limit")} for d in datasets]}
        raw = run_worker(spec, raw_dir, key, cfg.fresh)
        if raw.get("reused"):
            log(f"{key}: reused the measurement in {raw_dir} (same settings; --fresh to redo)")
        if "error" in raw:
            log(f"{key}: failed: {raw['error']}")
            rows += failed(threads, raw["error"])
            continue
        common = {"variant": v.name, "runtime": v.runtime, "path": v.path, "threads": threads, "split": cfg.split,
                  "load_seconds": raw["load_seconds"], "peak_rss_bytes": raw["peak_rss_bytes"],
                  "rss_after_load_bytes": raw["rss_after_load_bytes"],
                  "size_bytes": raw["size_bytes"] if "size_bytes" in raw else variant_size(v),
                  "provenance": raw["provenance"],
                  "measured_at": raw["measured_at"], "load_average": raw["load_average"],
                  "reused": raw.get("reused", False)}
        for d in datasets:
            r = raw["datasets"][d["name"]]
            # the prompts a pair costs on average: none for the baselines, the LLM's share in a cascade
            tokens = None if v.runtime in ("tfidf", "features") else d["tokens_per_pair"] * r["llm_share"]
            fig = figures.row(r, d["valid"].labels, d["test"].labels, tokens, threads, cfg.usd_per_core_hour)
            rows.append({**common, "dataset": d["name"], **fig, "llm_share": r["llm_share"], "scores": r["scores"]})
            log(f"{key} {d['name']}: F1 {fig['f1']:.3f}, {fig['pairs_per_s']['mean']:.1f} pairs/s")
    return rows


def run_bench(cfg: BenchConfig, log=print) -> dict:
    """Measure every chosen variant on every dataset; the report as one dict (see report.write_report)."""
    from epm_edge.bench.hostinfo import host_facts

    found = discover(cfg.model)
    chosen = select(found, cfg.variants)
    if cfg.cascade:  # the model variants run inside the cascade: named so, and measured apart from LLM-only runs
        chosen = [v if v.runtime in ("tfidf", "features") else replace(v, name=f"{v.name}+cascade") for v in chosen]
    sets = [load_pair_set(d) for d in cfg.data_dirs]  # bad data fails here, before any measuring
    gguf = _tokenizer_gguf(found)
    datasets = []
    for ps in sets:
        valid, test = ps.split("valid").head(cfg.limit), ps.split(cfg.split).head(cfg.limit)
        timed = serialize_pairs(ps, test.head(cfg.timing_pairs), cfg.record_tokens)  # what the throughput runs score
        # Both orders: a pair costs the tokens of both its prompts.
        tokens = (2 * prompt_tokens_per_pair(gguf, timed + swapped(timed)) if cfg.both_orders
                  else prompt_tokens_per_pair(gguf, timed))
        datasets.append({"name": ps.name, "dir": str(ps.root.resolve()), "split": cfg.split, "limit": cfg.limit,
                         "valid": valid, "test": test, "tokens_per_pair": tokens})

    facts = host_facts()
    raw_dir = cfg.out / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    rows = [r for v in chosen for r in _variant_rows(v, cfg, datasets, raw_dir, log)]
    settings = {"model": str(cfg.model), "data": [d["dir"] for d in datasets], "split": cfg.split,
                "limit": cfg.limit, "variants": [v.name for v in chosen], "threads": list(cfg.threads),
                "batch_size": cfg.batch_size, "repeat": cfg.repeat, "timing_pairs": cfg.timing_pairs,
                "latency_pairs": cfg.latency_pairs, "both_orders": cfg.both_orders,
                "cascade": str(cfg.cascade) if cfg.cascade else None,
                "record_tokens": cfg.record_tokens, "usd_per_core_hour": cfg.usd_per_core_hour,
                "prompt_version": prompt.PROMPT_VERSION, "tokenizer": str(gguf)}
    return {"schema": 1, "host": facts, "settings": settings, "results": rows,
            "pairs": {d["name"]: {"a_ids": d["test"].a_ids, "b_ids": d["test"].b_ids,
                                  "labels": d["test"].labels.tolist()} for d in datasets}}
