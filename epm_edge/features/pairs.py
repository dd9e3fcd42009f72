"""Pair features for the feature matcher: exact signals an LLM of this size misses, computed fast.

Records come from catalogs with different column names; each is read through generic fields
(title, brand, model, price, description) found by column name. Per record the expensive parts
(codes, numbers with units, normalised brand, price) are extracted once; per pair the features
are set comparisons, rapidfuzz ratios and TF-IDF cosines fitted on the two catalogs being matched.
Missing values are NaN (the gradient-boosted model routes them on their own branch).

No model here: `FeatureMatcher` (matcher.py) learns from these columns.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from rapidfuzz import fuzz, process
from rapidfuzz.distance import Indel

from epm_edge.match.blocking import product_codes, record_text, tfidf_vectorizers

# Generic fields by column name (lower-case); the first text column stands in for a missing title.
_FIELDS = {
    "title": ("title", "name", "product_name", "productname", "product_title"),
    "brand": ("brand", "manufacturer", "maker", "vendor"),
    "model": ("modelno", "model", "mpn", "model_no", "model_number", "part_number", "gtin", "ean", "upc"),
    "price": ("price",),
    "description": ("description", "spectablecontent", "specs", "details"),
}
_NUMBER = r"(\d+(?:[.,]\d+)?)"
# unit -> (quantity, factor to its base unit); longer spellings first so "mah" is not read as "m".
_UNITS = {
    "tb": ("bytes", 1000.0), "gb": ("bytes", 1.0), "mb": ("bytes", 0.001),
    "mah": ("charge", 1.0), "ghz": ("freq", 1e9), "mhz": ("freq", 1e6), "khz": ("freq", 1e3), "hz": ("freq", 1.0),
    "mm": ("length", 1.0), "cm": ("length", 10.0), "inches": ("length", 25.4), "inch": ("length", 25.4),
    '"': ("length", 25.4), "''": ("length", 25.4), "m": ("length", 1000.0),
    "ft": ("length", 304.8), "kw": ("power", 1000.0), "w": ("power", 1.0), "watts": ("power", 1.0),
    "watt": ("power", 1.0), "v": ("voltage", 1.0), "volt": ("voltage", 1.0), "ml": ("volume", 1.0),
    "l": ("volume", 1000.0), "oz": ("weight", 28.35), "lbs": ("weight", 453.6), "lb": ("weight", 453.6),
    "kg": ("weight", 1000.0), "g": ("weight", 1.0), "mp": ("pixels", 1.0), "rpm": ("rpm", 1.0),
}
_UNIT_RE = re.compile(_NUMBER + r"\s*-?\s*(" + "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True))
                      + r")(?![a-z0-9])", re.I)
_PACK_RE = re.compile(r"(?:(?:pack|set|box|case) of\s*(\d+))|(?:(\d+)\s*-?\s*(?:pack|pk|count|ct|pcs|pieces|pc)\b)"
                      r"|(?:\bx(\d+)\b)|(?:\b(\d+)\s*x\b(?!\s*\d))", re.I)
_PLAIN_NUMBER = re.compile(r"(?<![a-z0-9.])\d+(?:\.\d+)?(?![a-z0-9])", re.I)
_PRICE = re.compile(r"\d+(?:[.,]\d+)*")
_WORD = re.compile(r"[a-z0-9]+")

NAMES = (
    "code_shared", "code_conflict", "code_missing", "code_best_similarity", "code_in_other_text",
    "model_equal", "unit_agree", "unit_conflict", "unit_one_side", "pack_conflict",
    "numbers_jaccard", "numbers_a_not_in_b", "numbers_b_not_in_a",
    "brand_equal", "brand_in_other_title",
    "title_token_set", "title_token_sort", "title_partial", "title_ratio", "text_token_set",
    "tfidf_word", "tfidf_char",
    "price_ratio", "title_length_ratio", "text_length_ratio",
    "a_has_brand", "b_has_brand", "a_has_model", "b_has_model", "a_has_price", "b_has_price",
    "a_has_description", "b_has_description", "a_fields", "b_fields",
)



def _swapped(name: str) -> str:
    if name.startswith(("a_", "b_")):
        return {"a": "b", "b": "a"}[name[0]] + name[1:]
    return {"numbers_a_not_in_b": "numbers_b_not_in_a", "numbers_b_not_in_a": "numbers_a_not_in_b"}.get(name, name)


# Column order of the same pair with its records swapped: A-side and B-side columns trade places,
# the others are symmetric.
SWAP = tuple(NAMES.index(_swapped(n)) for n in NAMES)


def _field(record: dict[str, str], name: str) -> str:
    lowered = {k.lower(): v for k, v in record.items() if v and v.strip()}
    for col in _FIELDS[name]:
        if col in lowered:
            return lowered[col]
    if name == "title":  # the first column that is not another generic field
        others = {c for f, cols in _FIELDS.items() if f != "title" for c in cols}
        return next((v for k, v in lowered.items() if k not in others), "")
    return ""


def _quantities(text: str) -> dict[str, frozenset[float]]:
    """Numbers with units by quantity, in base units rounded to 3 significant digits; pack counts as 'pack'."""
    found: dict[str, set[float]] = {}
    for value, unit in _UNIT_RE.findall(text):
        quantity, factor = _UNITS[unit.lower()]
        v = float(value.replace(",", ".")) * factor
        found.setdefault(quantity, set()).add(float(f"{v:.3g}") if v else 0.0)
    for groups in _PACK_RE.findall(text):
        count = next(int(g) for g in groups if g)
        if 1 < count < 1000:
            found.setdefault("pack", set()).add(float(count))
    return {k: frozenset(v) for k, v in found.items()}


def _price(text: str) -> float:
    m = _PRICE.search(text.replace(" ", ""))
    if not m:
        return math.nan
    raw = m.group(0)
    # 1,299.00 and 1.299,00 -> 1299.00; a lone comma followed by two digits is a decimal comma
    if "," in raw and "." in raw:
        raw = raw.replace(",", "") if raw.rfind(".") > raw.rfind(",") else raw.replace(".", "").replace(",", ".")
    elif re.fullmatch(r"\d+,\d{2}", raw):
        raw = raw.replace(",", ".")
    else:
        raw = raw.replace(",", "")
    try:
        return float(raw)
    except ValueError:
        return math.nan


def _joined_codes(title: str) -> set[str]:
    """Codes written with spaces ("wh 1000xm5"): adjacent word pairs that form a code together."""
    words = _WORD.findall(title)
    return {j for x, y in zip(words, words[1:]) if (j := x + y) and any(c.isdigit() for c in j)
            and any(c.isalpha() for c in j) and 5 <= len(j) <= 20}


@dataclass(frozen=True)
class RecordFacts:
    """What the features need of one record, extracted once however many pairs it is in."""

    title: str
    text: str  # all attributes but price, lower-case
    brand: str
    model: str
    codes: frozenset[str]  # from title and model fields, normalised (case, dashes, dots, slashes)
    loose_codes: frozenset[str]  # codes plus codes written with spaces
    text_tokens: frozenset[str]  # normalised word tokens of the whole text, to find codes in
    quantities: dict
    numbers: frozenset[str]
    price: float
    has_description: bool
    fields: int


def record_facts(record: dict[str, str]) -> RecordFacts:
    title = " ".join(_field(record, "title").lower().split())
    model = re.sub(r"[\s\-/.]", "", _field(record, "model").lower())
    brand = " ".join(_WORD.findall(_field(record, "brand").lower()))
    text = record_text(record)
    codes = product_codes(title) | ({model} if len(model) >= 3 else set()) | product_codes(model)
    return RecordFacts(
        title=title, text=text, brand=brand, model=model, codes=frozenset(codes),
        loose_codes=frozenset(codes | _joined_codes(title)),
        text_tokens=frozenset(re.sub(r"[\-/.]", "", t) for t in text.split()) | frozenset(_WORD.findall(text)),
        quantities=_quantities(title), numbers=frozenset(_PLAIN_NUMBER.findall(title)),
        price=_price(_field(record, "price")), has_description=bool(_field(record, "description")),
        fields=sum(1 for v in record.values() if v and v.strip()))


def _code_features(a: RecordFacts, b: RecordFacts) -> tuple[float, float, float, float, float]:
    if not a.codes and not b.codes:
        return 0.0, 0.0, 2.0, math.nan, math.nan
    if not a.codes or not b.codes:
        one = a.codes or b.codes
        other = b if a.codes else a
        return 0.0, 0.0, 1.0, math.nan, float(bool(one & other.text_tokens))
    shared = len(a.loose_codes & b.loose_codes)
    best = max(Indel.normalized_similarity(x, y) for x in a.codes for y in b.codes)
    in_other = float(bool(a.codes & b.text_tokens) or bool(b.codes & a.text_tokens))
    return float(shared), float(shared == 0), 0.0, best, in_other


def _unit_features(a: RecordFacts, b: RecordFacts) -> tuple[float, float, float, float]:
    qa, qb = a.quantities, b.quantities
    both = qa.keys() & qb.keys()
    agree = sum(1 for k in both if qa[k] & qb[k])
    pack = float("pack" in both and not (qa["pack"] & qb["pack"]))
    return float(agree), float(len(both) - agree), float(len(qa.keys() ^ qb.keys())), pack


def _ratio(x: float, y: float) -> float:
    if math.isnan(x) or math.isnan(y) or max(x, y) <= 0:
        return math.nan
    return min(x, y) / max(x, y)


def _row(a: RecordFacts, b: RecordFacts) -> list[float]:
    na, nb = a.numbers, b.numbers
    union = na | nb
    brand = math.nan if not (a.brand and b.brand) else float(a.brand == b.brand or a.brand in b.brand
                                                             or b.brand in a.brand)
    brand_in = float(bool(a.brand) and a.brand in b.title or bool(b.brand) and b.brand in a.title)
    model_equal = math.nan if not (a.model and b.model) else float(a.model == b.model)
    return [*_code_features(a, b), model_equal, *_unit_features(a, b),
            len(na & nb) / len(union) if union else math.nan, float(len(na - nb)), float(len(nb - na)),
            brand, brand_in]


def _rest(a: RecordFacts, b: RecordFacts) -> list[float]:
    return [_ratio(a.price, b.price), _ratio(len(a.title), len(b.title)), _ratio(len(a.text), len(b.text)),
            float(bool(a.brand)), float(bool(b.brand)), float(bool(a.model)), float(bool(b.model)),
            float(not math.isnan(a.price)), float(not math.isnan(b.price)),
            float(a.has_description), float(b.has_description), float(a.fields), float(b.fields)]


def _fitted(texts: Sequence[str], transform: bool) -> list:
    """The TF-IDF vectorizers fitted on `texts` (with `transform`: the texts' rows instead); None for
    one that finds no token at all (its cosine says nothing)."""
    out = []
    for vec in tfidf_vectorizers():
        try:
            out.append(vec.fit_transform(texts).tocsr() if transform else vec.fit(texts))
        except ValueError:
            out.append(None)
    return out


def fit_tfidf(corpus: Sequence[str]) -> list:
    """The pair features' TF-IDF fitted on a fixed corpus (see PairFeaturizer)."""
    return _fitted(corpus, transform=False)


class PairFeaturizer:
    """Features of (A id, B id) pairs between two catalogs. TF-IDF is fitted on both catalogs' records,
    or given (`fit_tfidf` on a fixed corpus: then a record's features do not depend on the others)."""

    def __init__(self, records_a: dict[str, dict[str, str]], records_b: dict[str, dict[str, str]], tfidf=None):
        self.a = {rid: record_facts(r) for rid, r in records_a.items()}
        self.b = {rid: record_facts(r) for rid, r in records_b.items()}
        texts = [f.text for f in self.a.values()] + [f.text for f in self.b.values()]
        self._row_a = {rid: i for i, rid in enumerate(self.a)}
        self._row_b = {rid: i + len(self.a) for i, rid in enumerate(self.b)}
        self._tfidf = _fitted(texts, transform=True) if tfidf is None else [
            vec.transform(texts).tocsr() if vec is not None else None for vec in tfidf]

    def features(self, a_ids: Sequence[str], b_ids: Sequence[str]) -> np.ndarray:
        """A float32 matrix, one row per pair, columns named by NAMES."""
        fa = [self.a[i] for i in a_ids]
        fb = [self.b[i] for i in b_ids]
        exact = np.array([_row(x, y) for x, y in zip(fa, fb)], dtype=np.float32).reshape(len(fa), -1)
        ta, tb = [x.title for x in fa], [y.title for y in fb]
        # the whole text, cut so a long description cannot dominate the cost
        xa, xb = [x.text[:300] for x in fa], [y.text[:300] for y in fb]
        fuzzy = np.stack([process.cpdist(ta, tb, scorer=s, workers=-1) for s in
                          (fuzz.token_set_ratio, fuzz.token_sort_ratio, fuzz.partial_ratio, fuzz.ratio)]
                         + [process.cpdist(xa, xb, scorer=fuzz.token_set_ratio, workers=-1)], axis=1) / 100.0
        ia = np.fromiter((self._row_a[i] for i in a_ids), dtype=np.int64, count=len(a_ids))
        ib = np.fromiter((self._row_b[i] for i in b_ids), dtype=np.int64, count=len(b_ids))
        cos = np.stack([np.asarray(m[ia].multiply(m[ib]).sum(axis=1)).ravel() if m is not None
                        else np.full(len(ia), np.nan) for m in self._tfidf], axis=1)
        rest = np.array([_rest(x, y) for x, y in zip(fa, fb)], dtype=np.float32).reshape(len(fa), -1)
        out = np.concatenate([exact, fuzzy.astype(np.float32), cos.astype(np.float32), rest], axis=1)
        assert out.shape[1] == len(NAMES)
        return out
