"""Which GGUF type keeps the matcher's accuracy, and at what speed, against the F16 of one export.

Types: llama.cpp's own (F16, BF16, Q8_0, Q4_K_M, Q4_0, IQ4_NL) and Q4_0 with one class of tensors left
at Q8_0 (attention; ffn_down; ffn_up + ffn_gate), to find where 4-bit weights cost the accuracy.
On the same labelled pairs each type is scored by the batched llama.cpp scorer and reported with:
  - pairs/s of that scoring (one pass, 2 threads by default),
  - average precision and best F1 over all pairs: threshold-free, since quantization shifts every
    score of a type and each type runs at its own cut (`epm-edge export` stores one per artifact),
  - F1 on the second half of the pairs at the cut that is best on the first half,
  - mean |P - P(F16)| and the share of decisions that differ from F16's (each at its own cut).

    .venv/bin/python experiments/gguf_types.py --gguf epm-export/gguf/model-F16.gguf \
        --data ../shared/data/abt_buy --split valid --pairs 600 --out reports/gguf-types-epyc

Writes <out>.json and <out>.md; the quantized files go to a temporary dir.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
from sklearn.metrics import average_precision_score

from epm_edge.bench.hostinfo import host_facts
from epm_edge.data import load_pair_set
from epm_edge.evaluate.metrics import best_threshold, compute_metrics, flip_rate
from epm_edge.evaluate.scoring import score_texts, serialize_pairs
from epm_edge.export.gguf_metadata import write_like
from epm_edge.export.quantize import quantize
from epm_edge.runtime.llamacpp import LlamaCppScorer

# name -> (llama.cpp type, tensor name parts taken from the Q8_0 file instead)
TYPES = {
    "F16": ("F16", ()),
    "BF16": ("BF16", ()),
    "Q8_0": ("Q8_0", ()),
    "Q4_K_M": ("Q4_K_M", ()),
    "Q4_0": ("Q4_0", ()),
    "IQ4_NL": ("IQ4_NL", ()),
    "Q4_0, attention Q8_0": ("Q4_0", ("attn_q.", "attn_k.", "attn_v.", "attn_output.")),
    "Q4_0, ffn_down Q8_0": ("Q4_0", ("ffn_down.",)),
    "Q4_0, ffn_up+gate Q8_0": ("Q4_0", ("ffn_up.", "ffn_gate.")),
}


def mix(q4: Path, q8: Path, out: Path, from_q8: tuple[str, ...]) -> Path:
    """A GGUF with q4's metadata and tensors, except those whose name contains a part of `from_q8`."""
    r4, r8 = gguf.GGUFReader(q4), gguf.GGUFReader(q8)
    t8 = {t.name: t for t in r8.tensors}
    write_like(r4, out, tensors=[t8[t.name] if any(p in t.name for p in from_q8) else t for t in r4.tensors])
    return out


def best_f1(labels, scores) -> float:
    return compute_metrics(labels, scores, best_threshold(labels, scores)).f1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, default=Path("epm-export/gguf/model-F16.gguf"),
                    help="the F16 GGUF of an `epm-edge export`")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/abt_buy"))
    ap.add_argument("--split", default="valid")
    ap.add_argument("--pairs", type=int, default=600)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", type=Path, default=Path("reports/gguf-types"))
    args = ap.parse_args()

    ps = load_pair_set(args.data)
    pairs = ps.split(args.split).head(args.pairs)
    texts, labels = serialize_pairs(ps, pairs), np.asarray(pairs.labels)
    half = len(texts) // 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = {"F16": args.gguf}
        for q in ("BF16", "Q8_0", "Q4_K_M", "Q4_0", "IQ4_NL"):
            files[q] = quantize(args.gguf, Path(tmp) / f"{q}.gguf", q, args.threads)
        for i, (name, (base, from_q8)) in enumerate(TYPES.items()):
            if from_q8:
                files[name] = mix(files[base], files["Q8_0"], Path(tmp) / f"mix{i}.gguf", from_q8)
            scorer = LlamaCppScorer(files[name], threads=args.threads)
            score_texts(scorer, texts[:16])  # warm-up
            scores, seconds = score_texts(scorer, texts)
            scorer.close()
            cut = best_threshold(labels[:half], scores[:half])
            rows.append({"type": name, "megabytes": files[name].stat().st_size / 1e6,
                         "pairs_per_second": len(texts) / seconds,
                         "average_precision": float(average_precision_score(labels, scores)),
                         "best_f1": best_f1(labels, scores), "cut": cut, "f1_second_half": compute_metrics(labels[half:], scores[half:], cut).f1,
                         "scores": scores.tolist()})
            print({k: v for k, v in rows[-1].items() if k != "scores"}, flush=True)
    ref = next(r for r in rows if r["type"] == "F16")
    ref_cut = best_threshold(labels, ref["scores"])
    for r in rows:
        r["mean_abs_dp"] = float(np.mean(np.abs(np.subtract(r["scores"], ref["scores"]))))
        r["flips"] = flip_rate(ref["scores"], r["scores"], ref_cut, best_threshold(labels, r["scores"]))

    result = {"host": host_facts(), "llama_cpp_python": llama_cpp.__version__, "gguf": str(args.gguf),
              "data": str(args.data), "split": args.split, "pairs": len(texts), "positives": int(labels.sum()),
              "threads": args.threads, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [f"# GGUF types: accuracy and speed against F16 ({args.data.name}/{args.split}, {len(texts)} pairs, "
             f"{int(labels.sum())} positive; {args.threads} threads)", "",
             f"Host: {result['host'].get('cpu', '')}; llama-cpp-python {llama_cpp.__version__}; "
             f"{time.strftime('%Y-%m-%d')}. Flips and |dP| against F16, each type at its own best cut.", "",
             "| type | MB | pairs/s | avg precision | best F1 | cut (1st half) | F1 2nd half | mean abs dP | flips |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['type']} | {r['megabytes']:.0f} | {r['pairs_per_second']:.1f} | {r['average_precision']:.3f} | "
              f"{100 * r['best_f1']:.1f} | {r['cut']:.3f} | {100 * r['f1_second_half']:.1f} | "
              f"{r['mean_abs_dp']:.4f} | {100 * r['flips']:.1f}% |" for r in rows]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
