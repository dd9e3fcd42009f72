"""Labelled pair sets in the DeepMatcher layout: tableA/tableB plus train/valid/test pair files."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from epm_edge.data.catalog import Catalog, read_catalog
from epm_edge.data.csvfile import read_csv
from epm_edge.errors import InputError

SPLITS = ("train", "valid", "test")
PAIR_COLUMNS = ("ltable_id", "rtable_id", "label")


@dataclass
class LabelledPairs:
    path: Path
    a_ids: list[str]
    b_ids: list[str]
    labels: np.ndarray  # int8, 1 = same product
    hard_negative: np.ndarray  # bool, False where the file has no such column

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None, skip: int = 0) -> "LabelledPairs":
        """The first `n` pairs (all when None) after the first `skip`."""
        if skip == 0 and (n is None or n >= len(self)):
            return self
        rows = slice(skip, None if n is None else skip + n)
        return LabelledPairs(self.path, self.a_ids[rows], self.b_ids[rows], self.labels[rows],
                             self.hard_negative[rows])

    def take(self, rows) -> "LabelledPairs":
        """The pairs at these row indices, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        return LabelledPairs(self.path, [self.a_ids[i] for i in rows], [self.b_ids[i] for i in rows],
                             self.labels[rows], self.hard_negative[rows])


@dataclass
class PairSet:
    """A benchmark directory: two catalogs and the labelled splits that exist."""

    root: Path
    a: Catalog
    b: Catalog

    @property
    def name(self) -> str:
        return self.root.name

    def split(self, name: str) -> LabelledPairs:
        return read_pairs(self.root / f"{name}.csv", self.a, self.b)

    def available_splits(self) -> list[str]:
        return [s for s in SPLITS if (self.root / f"{s}.csv").exists()]

    def positives(self) -> set[tuple[str, str]]:
        """The labelled matching (A id, B id) pairs of all splits: the reference for blocking recall."""
        found = set()
        for name in self.available_splits():
            split = self.split(name)
            found |= {(a, b) for a, b, y in zip(split.a_ids, split.b_ids, split.labels) if y == 1}
        return found


def spread_sample(sets: list[PairSet], split: str, n_pairs: int, sample: int = 1,
                  seed: int = 0) -> list[tuple[PairSet, LabelledPairs]]:
    """About `n_pairs` pairs of `split`, an even share from each set, drawn at random with a fixed seed
    (a set with fewer pairs gives what it has, an exhausted one nothing). Sample k (1, 2, ...) is the k-th
    share of each set's shuffled pairs, so two samples never hold the same pair."""
    share = math.ceil(n_pairs / len(sets))
    drawn = []
    for ps in sets:
        pairs = ps.split(split)
        rows = np.random.default_rng(seed).permutation(len(pairs))[(sample - 1) * share:sample * share]
        if len(rows):
            drawn.append((ps, pairs.take(np.sort(rows))))
    if not drawn:
        raise InputError(", ".join(str(ps.root) for ps in sets),
                         f"no {split} pairs left for sample {sample} ({share} pairs a set)")
    return drawn


def load_pair_set(root: str | Path) -> PairSet:
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "data directory not found (expected tableA.csv, tableB.csv and split files)")
    return PairSet(root=root, a=read_catalog(root / "tableA.csv"), b=read_catalog(root / "tableB.csv"))


def read_pairs(path: Path, a: Catalog, b: Catalog) -> LabelledPairs:
    header, rows = read_csv(path)
    for col in PAIR_COLUMNS:
        if col not in header:
            raise InputError(path, "required column missing from header", row=1, column=col)
    if not rows:
        raise InputError(path, "has a header but no pairs")
    a_ids, b_ids, labels, hard = [], [], [], []
    for number, row in rows:
        left, right, label = row["ltable_id"].strip(), row["rtable_id"].strip(), row["label"].strip()
        if left not in a.records:
            raise InputError(path, f"id '{left}' is not in {a.path.name}", row=number, column="ltable_id")
        if right not in b.records:
            raise InputError(path, f"id '{right}' is not in {b.path.name}", row=number, column="rtable_id")
        if label not in ("0", "1"):
            raise InputError(path, f"label must be 0 or 1, got '{label}'", row=number, column="label")
        a_ids.append(left)
        b_ids.append(right)
        labels.append(int(label))
        hard.append(row.get("is_hard_negative", "").strip().lower() in ("true", "1"))
    return LabelledPairs(path, a_ids, b_ids, np.array(labels, dtype=np.int8), np.array(hard, dtype=bool))
