"""llama.cpp raw prompt-processing speed: one sequence from an empty cache, no batching of pairs, no reuse.

The per-token ceiling every llama.cpp scorer setting works under on this host: tokens/s of one
`llama_decode` pass over n tokens (n_batch 512), per GGUF type and thread count, median of --repeat.

    .venv/bin/python experiments/llamacpp_prompt_speed.py --gguf-dir epm-export/gguf --out reports/llamacpp-prompt-speed

Writes <out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import llama_cpp
from llama_cpp import Llama

from epm_edge.bench.hostinfo import host_facts
from epm_edge.data import load_pair_set
from epm_edge.evaluate.scoring import serialize_pairs


def prompt_speed(gguf: Path, tokens: list[int], threads: int, n: int, repeat: int) -> float:
    llm = Llama(str(gguf), n_ctx=2048, n_batch=512, n_ubatch=512, n_threads=threads, n_threads_batch=threads,
                flash_attn=True, verbose=False)
    # llm.reset() only rewinds the token count: the cache itself is cleared through the low-level API
    memory = llama_cpp.llama_get_memory(llm._ctx.ctx)
    seconds = []
    for _ in range(repeat + 1):  # the first pass is a warm-up
        llm.reset()
        llama_cpp.llama_memory_clear(memory, True)
        t0 = time.perf_counter()
        llm.eval(tokens[:n])
        seconds.append(time.perf_counter() - t0)
    llm.close()
    return n / statistics.median(seconds[1:])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf-dir", type=Path, default=Path("epm-export/gguf"))
    ap.add_argument("--data", type=Path, default=Path("../shared/data/abt_buy"),
                    help="the text decoded: serialized pairs of this set's test split, end to end")
    ap.add_argument("--threads", default=f"1,{os.cpu_count()}")
    ap.add_argument("--lengths", default="128,512")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("reports/llamacpp-prompt-speed"))
    args = ap.parse_args()

    ps = load_pair_set(args.data)
    text = "\n".join(f"A: {a}\nB: {b}" for a, b in serialize_pairs(ps, ps.split("test").head(40)))
    ggufs = sorted(args.gguf_dir.glob("*.gguf"))
    if not ggufs:
        raise SystemExit(f"no .gguf files in {args.gguf_dir}")
    rows = []
    vocab = Llama(str(ggufs[0]), vocab_only=True, verbose=False)  # every quant of one export shares the vocab
    tokens = vocab.tokenize(text.encode())
    vocab.close()
    for gguf in ggufs:
        for threads in map(int, args.threads.split(",")):
            for n in map(int, args.lengths.split(",")):
                rows.append({"gguf": gguf.name, "threads": threads, "tokens": n,
                             "tokens_per_second": prompt_speed(gguf, tokens, threads, n, args.repeat)})
                print(rows[-1], flush=True)
    result = {"host": host_facts(), "llama_cpp_python": llama_cpp.__version__,
              "system_info": llama_cpp.llama_print_system_info().decode().strip(), "repeat": args.repeat, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [f"# llama.cpp prompt speed: one sequence from an empty cache, n_batch 512, flash attention, "
             f"median of {args.repeat}", "", f"Host: {result['host'].get('cpu', '')}; llama-cpp-python "
             f"{llama_cpp.__version__}; {result['system_info']}", "",
             "| GGUF | threads | tokens | tokens/s |", "|---|---|---|---|"]
    lines += [f"| {r['gguf']} | {r['threads']} | {r['tokens']} | {r['tokens_per_second']:.0f} |" for r in rows]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
