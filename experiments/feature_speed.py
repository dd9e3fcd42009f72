"""Speed of the feature stage on the labelled pairs of benchmark sets: catalog setup (record facts and
TF-IDF over both catalogs, once per pair of catalogs), pair features, and features plus the shipped
feature matcher's probability, in pairs per second (best of `--repeat` runs).

    python experiments/feature_speed.py --data ../shared/data --out reports/feature-speed.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from epm_edge.bench.hostinfo import host_facts
from epm_edge.data import load_pair_set
from epm_edge.features.matcher import load_matcher
from epm_edge.features.pairs import PairFeaturizer
from epm_edge.model_store import shipped_adapter

SETS = ("abt_buy", "amazon_google", "walmart_amazon", "wdc_products")


def best_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    matcher = load_matcher(shipped_adapter() / "features")
    host = host_facts()
    rows = []
    for name in SETS:
        ps = load_pair_set(args.data / name)
        pairs = ps.split(args.split)
        start = time.perf_counter()
        featurizer = PairFeaturizer(ps.a.records, ps.b.records)
        setup = time.perf_counter() - start
        features = best_seconds(lambda: featurizer.features(pairs.a_ids, pairs.b_ids), args.repeat)
        with_model = best_seconds(lambda: matcher.predict(featurizer.features(pairs.a_ids, pairs.b_ids)),
                                  args.repeat)
        rows.append((name, len(ps.a) + len(ps.b), setup, len(pairs), len(pairs) / features, len(pairs) / with_model))
        print(rows[-1], flush=True)
    lines = ["# Feature stage speed", "",
             f"`python experiments/feature_speed.py --data {args.data} --split {args.split} --repeat {args.repeat} "
             f"--out {args.out}`; {host['logical_cores']} cores, {host['cpu']} ({' '.join(host['cpu_features'])}). "
             "Setup: record facts "
             "and TF-IDF over both catalogs (once per run of `match`). pairs/s: best of the repeats, over all "
             f"labelled pairs of the {args.split} split.", "",
             "| set | catalog records | setup s | pairs | features pairs/s | features + matcher pairs/s |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {n} | {r:,} | {s:.1f} | {p:,} | {f:,.0f} | {m:,.0f} |" for n, r, s, p, f, m in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
