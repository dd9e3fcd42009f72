"""Candidate generation without the full cross product.

Each A record gets at most `top_k` B candidates: first those sharing an exact product code
(model number, MPN, GTIN-like token after normalisation), then the most similar by TF-IDF
cosine over word and character n-grams. B is vectorised once; A is processed in chunks of rows sized
from a memory budget, so the dense chunk x |B| similarity stays within the budget however large B is.
Each chunk is independent of the others: `block` takes the function that maps chunks to their
candidates (in this process by default; `ray_blocking.py` runs them as Ray tasks).
"""

from __future__ import annotations

import re
from array import array
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from epm_edge.data.catalog import Catalog
from epm_edge.errors import InputError

_TOKEN = re.compile(r"[a-z0-9][a-z0-9\-/\.]*[a-z0-9]|[a-z0-9]", re.I)
_SKIP_COLUMNS = {"price", "pricecurrency"}

DEFAULT_MEMORY_BUDGET = 256 << 20  # bytes for one chunk's similarity and its temporaries
MAX_CHUNK_ROWS = 512  # larger chunks save little: nearly all the work is per (A row, B record) cell
# What `BlockingIndex.top` holds per (A row, B record) cell at its peak: the float32 similarity, its
# negation and argpartition's int64 indices (4 + 4 + 8). Before that the sparse char product (float32
# value + int32 index per stored cell) sits beside the dense word and char similarities: 16 again.
BYTES_PER_CELL = 16


@dataclass
class Candidates:
    a_ids: list[str]
    b_ids: list[str]
    scores: np.ndarray  # blocking similarity, higher = more alike

    def __len__(self) -> int:
        return len(self.a_ids)


def record_text(record: dict[str, str]) -> str:
    return " ".join(v for k, v in record.items() if v and k.lower() not in _SKIP_COLUMNS).lower()


def product_codes(text: str) -> set[str]:
    """Tokens that look like model numbers or GTINs: letters+digits (>=4 chars) or >=6 digits."""
    codes = set()
    for tok in _TOKEN.findall(text):
        norm = re.sub(r"[\-/\.]", "", tok.lower())
        has_digit = any(c.isdigit() for c in norm)
        has_alpha = any(c.isalpha() for c in norm)
        if (has_digit and has_alpha and len(norm) >= 4) or (norm.isdigit() and len(norm) >= 6):
            codes.add(norm)
    return codes


def all_pairs(a: Catalog, b: Catalog) -> Candidates:
    a_ids = [x for x in a.ids for _ in range(len(b))]
    b_ids = b.ids * len(a)
    return Candidates(a_ids, b_ids, np.zeros(len(a_ids), dtype=np.float32))


def tfidf_vectorizers() -> list:
    """The word and character n-gram TF-IDF that blocking and the pair features compare records with."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return [TfidfVectorizer(analyzer="word", token_pattern=r"[a-z0-9]+", sublinear_tf=True, dtype=np.float32),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, dtype=np.float32)]


class BlockingIndex:
    """Catalog B ready for top-k queries: TF-IDF (words, character n-grams) fitted on `fit_texts`
    (both catalogs in `block`; B alone where the queries come later, as in `epm-edge serve`) and
    B's exact product codes."""

    def __init__(self, b: Catalog, fit_texts: list[str], a_path=None, max_code_df: int = 20):
        self.b_ids = b.ids
        b_text = [record_text(r) for r in b.records.values()]
        self.word, self.char = tfidf_vectorizers()
        try:
            self.word.fit(fit_texts)
            self.char.fit(fit_texts)
        except ValueError:  # sklearn: empty vocabulary
            names = ", ".join(p.name for p in (a_path, b.path) if p is not None)
            raise InputError(a_path or b.path, f"the records of {names} have no letters or digits to compare in "
                                               "the chosen columns; choose other --columns-a/-b") from None
        self.bw, self.bc = self.word.transform(b_text).T.tocsr(), self.char.transform(b_text).T.tocsr()
        self.max_code_df = max_code_df
        self.code_index: dict[str, list[int]] = defaultdict(list)
        for j, t in enumerate(b_text):
            for c in product_codes(t):
                self.code_index[c].append(j)

    def top(self, a_text: list[str], top_k: int) -> list[list[tuple[str, float]]]:
        """Per A text, its at most `top_k` B candidates (id, similarity): shared codes first, then TF-IDF."""
        k = min(top_k, len(self.b_ids))
        sim = (self.word.transform(a_text) @ self.bw).toarray() + (self.char.transform(a_text) @ self.bc).toarray()
        sim *= 0.5
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k] if k < sim.shape[1] else np.tile(np.arange(k), (len(sim), 1))
        out = []
        for row, text in enumerate(a_text):
            keyed = {j for c in product_codes(text) if len(self.code_index.get(c, ())) <= self.max_code_df
                     for j in self.code_index.get(c, ())}
            ranked = sorted(keyed, key=lambda j: -sim[row, j])
            ranked += [j for j in top[row][np.argsort(-sim[row, top[row]])] if j not in keyed]
            out.append([(self.b_ids[j], float(sim[row, j])) for j in ranked[:k]])
        return out


def chunk_rows(n_b: int, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> int:
    """A rows per chunk so one chunk against `n_b` B records stays within `memory_budget` bytes."""
    return max(1, min(MAX_CHUNK_ROWS, memory_budget // (BYTES_PER_CELL * max(n_b, 1))))


def map_in_process(index: BlockingIndex, chunks, top_k: int):
    """`index.top` of each chunk of A texts, in order, one chunk at a time."""
    return (index.top(texts, top_k) for texts in chunks)


def block(a: Catalog, b: Catalog, top_k: int = 20, memory_budget: int = DEFAULT_MEMORY_BUDGET,
          max_code_df: int = 20, progress=None, map_chunks=map_in_process) -> Candidates:
    """Top-k candidates per A record. `max_code_df`: codes shared by more B records are ignored.

    `map_chunks(index, chunks, top_k)` yields `index.top(chunk, top_k)` for each chunk of A texts, in
    order; the chunks are a lazy iterator, so a mapper that keeps a few in flight holds only those.
    """
    a_text = [record_text(r) for r in a.records.values()]
    index = BlockingIndex(b, a_text + [record_text(r) for r in b.records.values()], a.path, max_code_df)
    rows = chunk_rows(len(b), memory_budget)
    chunks = (a_text[start:start + rows] for start in range(0, len(a_text), rows))
    a_ids, b_ids = [], []
    scores = array("f")  # 4 bytes a candidate instead of a Python float's 32: the output is |A| x top_k long
    a_names = iter(a.ids)
    for ranked_rows in map_chunks(index, chunks, top_k):
        for ranked in ranked_rows:
            a_id = next(a_names)
            for b_id, score in ranked:
                a_ids.append(a_id)
                b_ids.append(b_id)
                scores.append(score)
        if progress:
            progress(len(ranked_rows))
    return Candidates(a_ids, b_ids, np.array(scores, dtype=np.float32))


def candidates(a: Catalog, b: Catalog, top_k: int = 20, all_pairs_max: int = 400, progress=None,
               map_chunks=map_in_process) -> Candidates:
    """All pairs when the cross product is small, else `block` (its chunks ranked by `map_chunks`)."""
    if len(a) * len(b) <= all_pairs_max:
        return all_pairs(a, b)
    return block(a, b, top_k=top_k, progress=progress, map_chunks=map_chunks)


def pair_completeness(cands: Candidates, positives: set[tuple[str, str]]) -> float:
    """Recall of the known positive pairs among the candidates."""
    if not positives:
        return float("nan")
    found = set(zip(cands.a_ids, cands.b_ids)) & positives
    return len(found) / len(positives)


def write_candidates(cands: Candidates, path) -> None:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["a_id", "b_id", "similarity"])
        w.writerows((a, b, f"{s:.4f}") for a, b, s in zip(cands.a_ids, cands.b_ids, cands.scores))
