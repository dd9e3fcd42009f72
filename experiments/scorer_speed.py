"""Scorer speed: llama.cpp batched scorer vs the paths a user would take instead.

On the same labelled pairs, one process, one machine, each scorer loaded and measured in turn:
  - llama.cpp batched scorer (every GGUF of an export; "best GGUF" is the fastest whose F1 is
    within --max-delta-f1 points of transformers', else the fastest),
  - transformers fp32, batched, logits_to_keep=1 (epm-edge's reference scorer),
  - plain optimum + ONNX Runtime int8: ORTModelForCausalLM, full prompts, batched, no prefix
    reuse, full logits (what a user would write first),
  - epm-edge's own ONNX Runtime backend (prefix reuse, last-position logits) on int8 and int4,
then single-pair warm latency (p50/p99) and explanation mode (parse rate, pairs/s).

    .venv/bin/python experiments/scorer_speed.py --export out/export --data ../shared/data/abt_buy \
        --pairs 512 --out reports/scorer-speed

Writes <out>.json (every figure) and <out>.md (the table).
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
from epm_edge.evaluate.scoring import score_texts, serialize_pairs
from epm_edge.runtime import load_scorer
from epm_edge.runtime.llamacpp import amx_build
from epm_edge.runtime.provenance import read_sidecar


class PlainOptimumScorer:
    """The straightforward optimum + ONNX Runtime path: full prompt per pair, full logits."""

    name = "optimum-plain"

    def __init__(self, path: Path, threads: int, batch_size: int):
        import onnxruntime as ort
        from optimum.onnxruntime import ORTModelForCausalLM
        from transformers import AutoTokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.tok = AutoTokenizer.from_pretrained(path)
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:  # SmolLM2 has none; as in runtime.onnx, masked out anyway
            self.tok.pad_token = "<|endoftext|>"
        self.model = ORTModelForCausalLM.from_pretrained(path, session_options=options, use_cache=True,
                                                         file_name="model.onnx")
        self.threshold = read_sidecar(path).get("threshold")
        self.yes = self.tok(prompt.YES, add_special_tokens=False)["input_ids"][0]
        self.no = self.tok(prompt.NO, add_special_tokens=False)["input_ids"][0]

    def score(self, pairs):
        texts = [prompt.full_prompt(a, b) for a, b in pairs]
        enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        logits = self.model(**enc).logits[:, -1, :].float().numpy()
        return np.array([prompt.match_probability(r[self.yes], r[self.no]) for r in logits])

    def close(self):
        self.model = None


def measure(name, make, texts, labels, threshold, batch_size, repeat):
    t0 = time.perf_counter()
    scorer = make()
    load_s = time.perf_counter() - t0
    score_texts(scorer, texts[:batch_size], batch_size)  # warm-up
    runs = [score_texts(scorer, texts, batch_size) for _ in range(repeat)]
    scores = runs[0][0]
    rates = [len(texts) / s for _, s in runs]
    # each artifact's own cut from `epm-edge export` (the plain path: its int8 file's); else the reference's
    thr = scorer.threshold if scorer.threshold is not None else threshold
    m = compute_metrics(labels, scores, thr)
    scorer.close()
    print(f"{name:28s} {np.mean(rates):7.1f} pairs/s  F1 {m.f1:.3f}", flush=True)
    return {"name": name, "pairs_per_second": float(np.mean(rates)), "pairs_per_second_sd": float(np.std(rates)),
            "load_seconds": load_s, "f1": m.f1, "precision": m.precision, "recall": m.recall, "threshold": thr,
            "scores": scores.tolist()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", type=Path, required=True, help="an `epm-edge export` output dir")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/abt_buy"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--pairs", type=int, default=512)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--latency-pairs", type=int, default=100)
    ap.add_argument("--explain-pairs", type=int, default=20)
    ap.add_argument("--max-delta-f1", type=float, default=1.0,
                    help="F1 points a GGUF may lose to transformers and still be the best GGUF")
    ap.add_argument("--out", type=Path, default=Path("reports/scorer-speed"))
    args = ap.parse_args()

    ps = load_pair_set(args.data)
    pairs = ps.split(args.split).head(args.pairs)
    texts, labels = serialize_pairs(ps, pairs), pairs.labels
    report = json.loads((args.export / "report.json").read_text())
    threshold = report.get("threshold")  # the merged reference's
    ggufs = sorted((args.export / "gguf").glob("*.gguf"))
    onnx = {p.name: p for p in sorted((args.export / "onnx").iterdir()) if p.is_dir()}
    bs, th = args.batch_size, args.threads

    rows = []
    for g in ggufs:
        rows.append(measure(f"llama.cpp {g.stem}", lambda g=g: load_scorer(g, "llamacpp", th, bs),
                            texts, labels, threshold, bs, args.repeat))
    rows.append(measure("transformers fp32", lambda: load_scorer(args.export / "merged", "transformers", th, bs),
                        texts, labels, threshold, bs, args.repeat))
    int8 = next(p for n, p in onnx.items() if "int8" in n)
    rows.append(measure("optimum+ORT int8 (plain)", lambda: PlainOptimumScorer(int8, th, bs),
                        texts, labels, threshold, bs, args.repeat))
    for n, p in onnx.items():
        if "int" in n:
            rows.append(measure(f"epm-edge ORT {n}", lambda p=p: load_scorer(p, "onnx", th, bs),
                                texts, labels, threshold, bs, args.repeat))

    llama_rows = [r for r in rows if r["name"].startswith("llama.cpp")]
    hf = next(r for r in rows if r["name"] == "transformers fp32")
    # A 4-bit type can be the fastest and still lose points, so speed counts only among the GGUFs
    # that keep F1.
    kept = [r for r in llama_rows if 100 * (hf["f1"] - r["f1"]) <= args.max_delta_f1]
    best = max(kept or llama_rows, key=lambda r: r["pairs_per_second"])
    plain = next(r for r in rows if r["name"].startswith("optimum"))
    best_gguf = ggufs[llama_rows.index(best)]

    scorer = load_scorer(best_gguf, "llamacpp", th, bs)
    scorer.score(texts[:4])
    lat = np.array(single_pair_seconds(scorer, texts[:args.latency_pairs])) * 1000
    t0 = time.perf_counter()
    parsed, failures, sub = 0, [], texts[:args.explain_pairs]
    scores = scorer.score(sub)
    for i, ((a, b), s) in enumerate(zip(sub, scores)):
        text = scorer.generate(a, b, bool(s >= best["threshold"]))
        try:
            prompt.parse_answer(text)
            parsed += 1
        except prompt.AnswerFormatError as e:  # kept in the report: a parse failure is a bug to chase
            failures.append({"pair": i, "error": str(e), "text": text})
    explain_rate = len(sub) / (time.perf_counter() - t0)
    scorer.close()

    summary = {
        "best_gguf": best["name"], "best_gguf_keeps_f1": bool(kept),
        "speedup_vs_transformers": best["pairs_per_second"] / hf["pairs_per_second"],
        "speedup_vs_plain_optimum_int8": best["pairs_per_second"] / plain["pairs_per_second"],
        "delta_f1_vs_transformers_points": 100 * (best["f1"] - hf["f1"]),
        "single_pair_latency_ms": {"p50": float(np.percentile(lat, 50)), "p90": float(np.percentile(lat, 90)),
                                   "p99": float(np.percentile(lat, 99)), "n": len(lat)},
        "explain": {"pairs": len(sub), "parsed": parsed, "pairs_per_second": explain_rate,
                    "failures": failures},
    }
    result = {"host": host_facts(), "data": str(args.data), "split": args.split, "pairs": len(texts),
              "threads": th, "batch_size": bs, "repeat": args.repeat, "rows": rows, "summary": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [f"# Scorer speed: {args.data.name}/{args.split}, {len(texts)} pairs, {th} threads, batch {bs}",
             "", f"Host: {result['host'].get('cpu', '')}; command: `.venv/bin/python experiments/scorer_speed.py "
             f"--export {args.export} --data {args.data} --pairs {args.pairs} --repeat {args.repeat}`", "",
             f"Model: adapter {read_sidecar(args.export / 'merged').get('adapter') or 'none (the untrained base)'}; "
             f"llama.cpp weights {'in AMX tiles (AMX build)' if amx_build() else 'repacked (build without AMX)'}. "
             "Each scorer decides at the threshold its artifact stores (`epm-edge export` tunes one per variant).", "",
             "| scorer | pairs/s (mean ± sd) | threshold | F1 | load s |", "|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['pairs_per_second']:.1f} ± {r['pairs_per_second_sd']:.1f} | {r['threshold']:.4f} "
              f"| {r['f1']:.3f} | {r['load_seconds']:.1f} |" for r in rows]
    s = summary
    keeps = (f"fastest within {args.max_delta_f1:g} F1 point of transformers" if s["best_gguf_keeps_f1"]
             else f"fastest; none is within {args.max_delta_f1:g} F1 point of transformers")
    lines += ["", f"- best GGUF ({keeps}): {s['best_gguf']}; {s['speedup_vs_transformers']:.2f}x transformers fp32, "
              f"{s['speedup_vs_plain_optimum_int8']:.2f}x plain optimum+ORT int8; "
              f"F1 delta vs transformers {s['delta_f1_vs_transformers_points']:+.2f} points",
              f"- single pair, warm: p50 {s['single_pair_latency_ms']['p50']:.1f} ms, "
              f"p90 {s['single_pair_latency_ms']['p90']:.1f} ms, p99 {s['single_pair_latency_ms']['p99']:.1f} ms",
              f"- explanations: {parsed}/{len(sub)} parsed, {explain_rate:.2f} pairs/s"]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
