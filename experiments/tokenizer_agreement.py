"""Whether training and llama.cpp read a base's prompts as the same tokens.

Training tokenizes with the transformers tokenizer of the dequantized base (`train.base.prompt_ids`);
llama.cpp scores with the GGUF's own vocabulary. This counts the valid-split training prompts of the
four sets that the two split identically, and the tokens each gives. `--hf-dir` checks another saved
tokenizer against the same GGUF (e.g. a dequantized base cached by an earlier epm-edge).

    python experiments/tokenizer_agreement.py --base ~/.cache/epm-edge/base/gemma-3-270m-q4_k_m.gguf \
        --data ../shared/data --limit 200
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from transformers import AutoTokenizer

from epm_edge.export.merge import resolve_base
from epm_edge.runtime.llamacpp import LlamaCppScorer
from epm_edge.train.base import base_format, prompt_ids
from epm_edge.train.dataset import DataConfig, build_examples

SETS = ("abt_buy", "amazon_google", "walmart_amazon", "wdc_products")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="The base GGUF.")
    ap.add_argument("--data", type=Path, required=True, help="Folder holding the four sets.")
    ap.add_argument("--limit", type=int, default=200, help="Valid examples over the four sets.")
    ap.add_argument("--hf-dir", type=Path, help="A saved tokenizer to check instead of the dequantized base's.")
    args = ap.parse_args()

    base = resolve_base(args.base)
    if args.hf_dir:
        base = replace(base, hf_dir=args.hf_dir)
    fmt = base_format(base)
    tok = AutoTokenizer.from_pretrained(base.hf_dir)
    scorer = LlamaCppScorer(args.base)
    try:
        examples = build_examples(DataConfig([args.data / s for s in SETS]), "valid", limit=args.limit, fmt=fmt)
        same = ours = theirs = 0
        for e in examples:
            a, b = prompt_ids(tok, fmt, e["prompt"]), scorer.tokenize(fmt.prompt_segments(e["prompt"]))
            same, ours, theirs = same + (a == b), ours + len(a), theirs + len(b)
    finally:
        scorer.close()
    print(f"{same} of {len(examples)} prompts tokenized identically; tokens: transformers {ours:,}, "
          f"llama.cpp {theirs:,}")


if __name__ == "__main__":
    main()
