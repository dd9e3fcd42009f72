"""Why the llama.cpp scorer decodes one pair at a time: where a pair's tokens sit in the shared KV
cache changes its score.

For each of the first N test pairs, scores the pair from the cached prefix (its cells start where
the prefix ends, as the scorer does), then again after another pair's tokens were decoded into the
cache first (the cells a multi-pair decode would give it), with flash attention on and off. Prints
the largest change in log-odds and in P(match).

    .venv/bin/python experiments/batch_dependence.py --gguf ~/.cache/epm-edge/adapters/<model>.Q8_0.gguf \\
        --data ../shared/data/abt_buy --pairs 24
"""

from __future__ import annotations

import argparse
from pathlib import Path

import llama_cpp as lc
import numpy as np

from epm_edge import prompt
from epm_edge.data import load_pair_set
from epm_edge.evaluate.scoring import serialize_pairs
from epm_edge.runtime.llamacpp import HEAD_SEQ, PAIR_SEQ, PREFIX_SEQ, LlamaCppScorer


def log_odds(scorer: LlamaCppScorer, tokens: list[int], shift: list[int] | None) -> float:
    """The pair's Yes-No log-odds, with `shift` (another pair's tokens) decoded into the cache first."""
    start = len(scorer.prefix)
    if shift:
        lc.llama_memory_seq_cp(scorer.mem, PREFIX_SEQ, HEAD_SEQ, -1, -1)
        scorer._decode(shift, HEAD_SEQ, start, logits=False)
    lc.llama_memory_seq_cp(scorer.mem, PREFIX_SEQ, PAIR_SEQ, -1, -1)
    row = lc.llama_get_logits_ith(scorer.ctx, scorer._decode(tokens, PAIR_SEQ, start))
    value = row[scorer.yes] - row[scorer.no]
    for seq in (PAIR_SEQ, HEAD_SEQ):
        lc.llama_memory_seq_rm(scorer.mem, seq, -1, -1)
    return value


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/abt_buy"))
    ap.add_argument("--pairs", type=int, default=24)
    args = ap.parse_args()
    ps = load_pair_set(args.data)
    texts = serialize_pairs(ps, ps.split("test").head(args.pairs + 1))
    for flash in (True, False):
        scorer = LlamaCppScorer(args.gguf, flash_attn=flash)
        tokens = [scorer.tokenize(prompt.pair_suffix(a, b)) for a, b in texts]
        alone = np.array([log_odds(scorer, t, None) for t in tokens[1:]])
        again = np.array([log_odds(scorer, t, None) for t in tokens[1:]])
        shifted = np.array([log_odds(scorer, t, tokens[i]) for i, t in enumerate(tokens[1:])])
        scorer.close()
        p = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
        print(f"flash attention {flash}: {len(alone)} pairs; same cells twice: max |d log-odds| "
              f"{np.abs(alone - again).max():.5f}; cells after another pair: max |d log-odds| "
              f"{np.abs(alone - shifted).max():.4f}, max |dP| {np.abs(p(alone) - p(shifted)).max():.4f}")


if __name__ == "__main__":
    main()
