"""Why the ONNX scorer runs one pair at a time: in a left-padded batch, a pair's score moves with
its neighbours on quantized variants (int8 quantizes activations per tensor at run time).

Scores the first N test pairs one per run (as the scorer does) and in left-padded batches after the
shared prefix, then prints both speeds and the largest change in P(match) and in log-odds.

    .venv/bin/python experiments/onnx_batch_dependence.py --onnx EXPORT/onnx/int8 --data ../shared/data/abt_buy
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from epm_edge import prompt
from epm_edge.data import load_pair_set
from epm_edge.evaluate.scoring import serialize_pairs
from epm_edge.runtime.onnx import OnnxScorer, pair_ids


def padded_batch(s: OnnxScorer, pairs: list[tuple[str, str]]) -> np.ndarray:
    """One run for all `pairs`: suffixes left-padded after the prefix's past, padding masked out."""
    seqs = [pair_ids(s.tokenizer, s.format, a, b) for a, b in pairs]
    start, width = len(s.prefix), max(map(len, seqs))
    ids = np.zeros((len(seqs), width), np.int64)
    mask = np.zeros((len(seqs), start + width), np.int64)
    mask[:, :start] = 1
    pos = np.full((len(seqs), width), start, np.int64)
    for i, q in enumerate(seqs):
        ids[i, width - len(q):] = q
        mask[i, start + width - len(q):] = 1
        pos[i, width - len(q):] = np.arange(start, start + len(q))
    feed = {"input_ids": ids, "attention_mask": mask, "position_ids": pos,
            **{n: np.repeat(kv, len(seqs), axis=0) for n, kv in zip(s.past_names, s.prefix_past)}}
    logits = s.session.run(["logits"], feed)[0][:, -1]
    return np.array([prompt.match_probability(r[s.yes], r[s.no]) for r in logits])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", type=Path, required=True, help="an ONNX variant dir of an export")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/abt_buy"))
    ap.add_argument("--pairs", type=int, default=48)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    ps = load_pair_set(args.data)
    pairs = serialize_pairs(ps, ps.split("test").head(args.pairs))
    s = OnnxScorer(args.onnx, threads=args.threads)
    s.score(pairs[:2])  # warm-up
    t = time.perf_counter()
    batched = np.concatenate([padded_batch(s, pairs[i:i + args.batch]) for i in range(0, len(pairs), args.batch)])
    t_batched = time.perf_counter() - t
    t = time.perf_counter()
    alone = s.score(pairs)
    t_alone = time.perf_counter() - t
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    print(f"{args.onnx}: {len(pairs)} pairs; batches of {args.batch} {len(pairs) / t_batched:.2f} pairs/s, "
          f"one per run {len(pairs) / t_alone:.2f} pairs/s; max |dP| {np.abs(batched - alone).max():.4f}, "
          f"max |d log-odds| {np.abs(logit(batched) - logit(alone)).max():.3f}")


if __name__ == "__main__":
    main()
