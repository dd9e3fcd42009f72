"""llama.cpp scorer settings sweep: which settings are fastest on this host.

For one GGUF and the same labelled pairs, scores the pairs with flash attention on and off; then
scores blocking candidates (each A record
against its top-k B records, as `epm-edge match` does) with and without reuse of A's tokens; then
measures single-pair latency at several record token budgets (shorter records: fewer tokens, but
less of each listing is seen).

    .venv/bin/python experiments/llamacpp_settings.py --gguf epm-export/gguf/model-Q8_0.gguf \
        --data ../shared/data/abt_buy --pairs 192 --out reports/llamacpp-settings

Writes <out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from epm_edge import prompt
from epm_edge.bench.hostinfo import host_facts
from epm_edge.bench.measure import single_pair_seconds
from epm_edge.data import load_pair_set
from epm_edge.evaluate.metrics import compute_metrics
from epm_edge.evaluate.scoring import serialize_pairs
from epm_edge.match.blocking import block
from epm_edge.match.run import serialized
from epm_edge.runtime.llamacpp import LlamaCppScorer


def throughput(gguf: Path, texts, labels, threads: int, flash: bool, repeat: int) -> dict:
    scorer = LlamaCppScorer(gguf, threads, flash_attn=flash, share_records=False)
    n_tokens = sum(len(scorer.tokenize(prompt.pair_suffix(a, b))) for a, b in texts)
    scorer.score(texts[:4])  # warm-up
    seconds = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        scores = scorer.score(texts)
        seconds.append(time.perf_counter() - t0)
    scorer.close()
    rates = [len(texts) / s for s in seconds]
    row = {"flash_attn": flash, "pairs_per_second": float(np.mean(rates)), "pairs_per_second_sd": float(np.std(rates)),
           "suffix_tokens_per_second": n_tokens / float(np.mean(seconds)),
           "f1_at_0.5": compute_metrics(labels, scores, 0.5).f1}
    print(row, flush=True)
    return row


def candidate_rates(gguf: Path, ps, threads: int, top_k: int, n: int, repeat: int) -> list[dict]:
    """Pairs/s on blocking candidates (grouped by A, as a matching run scores them), A reuse on and off."""
    cands = block(ps.a, ps.b, top_k=top_k)
    sa, sb = serialized(ps.a, 64), serialized(ps.b, 64)
    texts = [(sa[a], sb[b]) for a, b in zip(cands.a_ids[:n], cands.b_ids[:n])]
    rows = []
    for share in (False, True):
        scorer = LlamaCppScorer(gguf, threads, share_records=share)
        scorer.score(texts[:top_k])  # warm-up
        rates = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            for lo in range(0, len(texts), 64):  # the batches of `epm-edge match`
                scorer.score(texts[lo:lo + 64])
            rates.append(len(texts) / (time.perf_counter() - t0))
        scorer.close()
        rows.append({"share_record_a": share, "top_k": top_k, "pairs": len(texts),
                     "pairs_per_second": float(np.mean(rates)), "pairs_per_second_sd": float(np.std(rates))})
        print(rows[-1], flush=True)
    return rows


def latency(gguf: Path, ps, pairs, threads: int, record_tokens: int, n: int) -> dict:
    texts = serialize_pairs(ps, pairs, record_tokens)[:n]
    scorer = LlamaCppScorer(gguf, threads)
    n_tokens = [len(scorer.tokenize(prompt.pair_suffix(a, b))) for a, b in texts]
    scorer.score(texts[:2])
    ms = np.array(single_pair_seconds(scorer, texts)) * 1000
    scorer.close()
    row = {"record_tokens": record_tokens, "mean_suffix_tokens": float(np.mean(n_tokens)),
           "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
           "p99_ms": float(np.percentile(ms, 99)), "n": len(ms)}
    print(row, flush=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/abt_buy"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--pairs", type=int, default=192)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--top-k", type=int, default=10, help="candidates per A record for the reuse rows")
    ap.add_argument("--candidate-pairs", type=int, default=320)
    ap.add_argument("--latency-pairs", type=int, default=60)
    ap.add_argument("--record-tokens", default="64,48,32", help="budgets for the latency rows")
    ap.add_argument("--out", type=Path, default=Path("reports/llamacpp-settings"))
    args = ap.parse_args()

    ps = load_pair_set(args.data)
    pairs = ps.split(args.split).head(args.pairs)
    texts = serialize_pairs(ps, pairs)
    shapes = [throughput(args.gguf, texts, pairs.labels, args.threads, flash, args.repeat) for flash in (True, False)]
    sharing = candidate_rates(args.gguf, ps, args.threads, args.top_k, args.candidate_pairs, args.repeat)
    latencies = [latency(args.gguf, ps, pairs, args.threads, int(r), args.latency_pairs)
                 for r in args.record_tokens.split(",")]
    result = {"host": host_facts(), "gguf": str(args.gguf), "data": str(args.data), "split": args.split,
              "pairs": len(texts), "threads": args.threads, "repeat": args.repeat,
              "throughput": shapes, "candidates": sharing, "latency": latencies}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [f"# llama.cpp settings: {args.gguf.name}, {args.data.name}/{args.split}, {len(texts)} pairs, "
             f"{args.threads} threads", "", f"Host: {result['host'].get('cpu', '')}", "",
             "Every pair scored from the shared prefix (A's tokens not reused):", "",
             "| flash attn | pairs/s (mean ± sd) | suffix tok/s |", "|---|---|---|"]
    lines += [f"| {r['flash_attn']} | {r['pairs_per_second']:.1f} ± {r['pairs_per_second_sd']:.1f} | {r['suffix_tokens_per_second']:.0f} |"
              for r in shapes]
    lines += ["", f"Blocking candidates ({sharing[0]['pairs']} pairs, top-{args.top_k} B records per A record, "
              "batches of 64 as in `epm-edge match`):", "",
              "| reuse A's tokens | pairs/s (mean ± sd) |", "|---|---|"]
    lines += [f"| {r['share_record_a']} | {r['pairs_per_second']:.1f} ± {r['pairs_per_second_sd']:.1f} |" for r in sharing]
    lines += ["", "Single pair, warm:", "", "| record tokens | suffix tokens (mean) | p50 ms | p90 ms | p99 ms |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['record_tokens']} | {r['mean_suffix_tokens']:.0f} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | "
              f"{r['p99_ms']:.1f} |" for r in latencies]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
