"""llama.cpp scorer speed by thread count on an idle and on a busy host.

Scores the same pairs with the default thread count (the cores other processes leave idle) and
with 1..cores threads, first alone, then while `--busy` other processes spin on the CPU (each
stops by itself after `--seconds`). llama.cpp's threads wait for each other
by spinning, so a thread that shares its core with another process can stall all the others.

    .venv/bin/python experiments/threads_contention.py --gguf ~/.cache/epm-edge/adapters/<model>.Q8_0.gguf \\
        --data ../shared/data/abt_buy --pairs 24 --busy 1
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from pathlib import Path

from epm_edge.data import load_pair_set
from epm_edge.evaluate.scoring import serialize_pairs
from epm_edge.runtime.llamacpp import LlamaCppScorer


def spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def rate(gguf: Path, texts, threads: int | None) -> float:
    scorer = LlamaCppScorer(gguf, threads=threads)
    scorer.score(texts[:2])  # warm-up
    t0 = time.perf_counter()
    scorer.score(texts)
    seconds = time.perf_counter() - t0
    scorer.close()
    return len(texts) / seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/abt_buy"))
    ap.add_argument("--pairs", type=int, default=24)
    ap.add_argument("--busy", type=int, default=1, help="spinning processes for the busy rows")
    ap.add_argument("--seconds", type=float, default=300, help="the busy processes stop after this")
    args = ap.parse_args()
    ps = load_pair_set(args.data)
    texts = serialize_pairs(ps, ps.split("test").head(args.pairs))
    cores = os.cpu_count() or 1
    print("| host | threads | pairs/s |\n|---|---|---|")
    for busy in (0, args.busy):
        procs = [mp.Process(target=spin, args=(args.seconds,), daemon=True) for _ in range(busy)]
        for p in procs:
            p.start()
        try:
            for threads in (None, *range(1, cores + 1)):
                print(f"| {busy} busy process(es) | {threads or 'default'} | {rate(args.gguf, texts, threads):.2f} |",
                      flush=True)
        finally:
            for p in procs:
                p.terminate()


if __name__ == "__main__":
    main()
