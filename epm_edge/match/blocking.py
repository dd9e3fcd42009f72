"""Candidate generation without the full cross product.

Each A record gets at most `top_k` B candidates: first those sharing an exact product code
(model number, MPN, GTIN-like token after normalisation), then the most similar by TF-IDF
cosine over word and character n-grams. B is vectorised once; A is processed in chunks so memory
stays at chunk x |B| floats.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from epm_edge.data.catalog import Catalog
from epm_edge.errors import InputError

_TOKEN = re.compile(r"[a-z0-9][a-z0-9\-/\.]*[a-z0-9]|[a-z0-9]", re.I)
_SKIP_COLUMNS = {"price", "pricecurrency"}


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


def block(a: Catalog, b: Catalog, top_k: int = 20, chunk: int = 512, max_code_df: int = 20,
          progress=None) -> Candidates:
    """Top-k candidates per A record. `max_code_df`: codes shared by more B records are ignored."""
    a_text = [record_text(r) for r in a.records.values()]
    index = BlockingIndex(b, a_text + [record_text(r) for r in b.records.values()], a.path, max_code_df)
    a_ids, b_ids, out_scores = [], [], []
    a_names = a.ids
    for start in range(0, len(a_text), chunk):
        block_text = a_text[start:start + chunk]
        for row, ranked in enumerate(index.top(block_text, top_k)):
            for b_id, score in ranked:
                a_ids.append(a_names[start + row])
                b_ids.append(b_id)
                out_scores.append(score)
        if progress:
            progress(len(block_text))
    return Candidates(a_ids, b_ids, np.array(out_scores, dtype=np.float32))


def candidates(a: Catalog, b: Catalog, top_k: int = 20, all_pairs_max: int = 400, progress=None) -> Candidates:
    """All pairs when the cross product is small, else `block`."""
    if len(a) * len(b) <= all_pairs_max:
        return all_pairs(a, b)
    return block(a, b, top_k=top_k, progress=progress)


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
