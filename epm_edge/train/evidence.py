"""Evidence from two listings: normalised comparison and silver rationales.

Silver rationales stand in for a teacher where none exists: brand, model codes, quantities with
units (capacity, size, power, ...), colours and pack sizes are pulled from the two records and
compared after normalisation. The judge (train/judge.py) checks model-written evidence with the
same normalisation, so training targets and rewards agree on what "same" means.
"""

from __future__ import annotations

import re
import unicodedata

from epm_edge import prompt
from epm_edge.prompt import Answer, Evidence

MAX_LINES, MAX_VALUE = prompt.MAX_EVIDENCE, prompt.MAX_VALUE_CHARS  # what the answer grammar allows

_TOKEN = re.compile(r"[a-z0-9]+")
_TITLE_FIELDS = ("title", "name")
_BRAND_FIELDS = ("brand", "manufacturer")
_MODEL_FIELDS = ("modelno", "model", "mpn")

# unit -> (attribute, canonical unit)
_UNITS = {
    "tb": ("capacity", "tb"), "gb": ("capacity", "gb"), "mb": ("capacity", "mb"),
    "mah": ("battery", "mah"), "w": ("power", "w"), "watt": ("power", "w"), "watts": ("power", "w"),
    "v": ("voltage", "v"), "ghz": ("frequency", "ghz"), "mhz": ("frequency", "mhz"),
    "mm": ("size", "mm"), "cm": ("size", "cm"), "in": ("size", "in"), "inch": ("size", "in"),
    "inches": ("size", "in"), '"': ("size", "in"), "kg": ("weight", "kg"),
    "lb": ("weight", "lb"), "lbs": ("weight", "lb"), "oz": ("weight", "oz"), "ml": ("volume", "ml"),
    "l": ("volume", "l"), "mp": ("resolution", "mp"), "megapixel": ("resolution", "mp"),
    "megapixels": ("resolution", "mp"), "rpm": ("speed", "rpm"),
    "'": ("size", "in"),  # abt_buy writes inches as `13 '`
}
_QUANTITY = re.compile(r"(?<![\w.])(\d+(?:[.,]\d+)?)\s?(" + "|".join(
    sorted((re.escape(u) for u in _UNITS), key=len, reverse=True)) + r")(?![a-z0-9])", re.I)
_PACK = re.compile(r"\b(?:(\d+)\s?-?\s?(?:pack|pk|pcs|pieces|count|ct)\b|(?:pack|set) of (\d+))")
_CODE = re.compile(r"(?<![\w-])(?=[\w-]*\d)(?=[\w-]*[a-z])[a-z0-9][a-z0-9-]{2,}[a-z0-9](?![\w-])", re.I)
_NOT_CODE = re.compile(r"\d+(st|nd|rd|th|s)|\d+-[a-z]+", re.I)  # 2nd, 1990s, 24-port, 10-lic
_COLOURS = {"black", "white", "silver", "gray", "grey", "red", "blue", "green", "yellow", "orange", "pink",
            "purple", "gold", "brown", "beige", "navy", "bronze", "charcoal", "graphite", "titanium"}
_SAME_COLOUR = {"grey": "gray"}


def tokens(text: str) -> list[str]:
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return _TOKEN.findall(text)


def compact(text: str) -> str:
    """Lowercase alphanumerics only: `PS-LX350H` and `pslx350h` compare equal."""
    return "".join(tokens(text))


def mentions(value: str, text: str) -> bool:
    """Every word of `value` is a word of `text` (so `hp` is not found inside `shipping`)."""
    words = set(tokens(value))
    return bool(words) and words <= set(tokens(text))


def grounded(value: str, text: str) -> bool:
    """Does a cited value occur in a listing (after normalisation)? Empty values are trivially grounded.

    Beyond whole words, a value of 4+ characters may match across separators (`ps-lx350h` for
    `pslx350h`, `64gb` for `64 GB`).
    """
    v = compact(value)
    if not v:
        return True
    return mentions(value, text) or (len(v) >= 4 and v in compact(text))


def compare(a: str, b: str) -> str | None:
    """The verdict normalisation supports for two values, or None when it is a judgement call.

    Equal after normalisation: same. No token in common: different. One empty: missing.
    Partial overlap (`iphone 12` vs `iphone 12 pro`) is left to the rationale.
    """
    ca, cb = compact(a), compact(b)
    if not ca or not cb:
        return "missing" if (ca or cb) else None
    if ca == cb:
        return "same"
    if not set(tokens(a)) & set(tokens(b)):
        return "different"
    return None


def clean_value(value: str) -> str:
    """A value as the schema allows it: one line, no `|`, at most MAX_VALUE characters."""
    return " ".join(value.replace("|", "/").split())[:MAX_VALUE].strip()


def _field(record: dict[str, str], names: tuple[str, ...]) -> str:
    return next((v for k, v in record.items() if k.lower() in names and v.strip()), "")


def _first_word(record: dict[str, str]) -> str:
    words = [w for w in _field(record, _TITLE_FIELDS).split() if re.fullmatch(r"[^\W\d_][\w&'-]+", w)]
    return words[0] if words else ""


def _brand(a: dict, b: dict, text_a: str, text_b: str) -> Evidence | None:
    ba, bb = _field(a, _BRAND_FIELDS), _field(b, _BRAND_FIELDS)
    ba, bb = (ba if grounded(ba, text_a) else ""), (bb if grounded(bb, text_b) else "")
    if ba and bb:
        same = compact(ba) == compact(bb) or mentions(ba, bb) or mentions(bb, ba)
        return Evidence("brand", ba, bb, "same" if same else "different")
    known, other = (ba, text_b) if ba else (bb, text_a)
    if known:
        return Evidence("brand", known, known, "same") if mentions(known, other) else Evidence("brand", ba, bb, "missing")
    # No brand column: listings usually start with the brand.
    for word, other in ((_first_word(a), text_b), (_first_word(b), text_a)):
        if word and mentions(word, other):
            return Evidence("brand", word, word, "same")
    return None


def _codes(record: dict[str, str]) -> list[str]:
    """Model codes: a model column as is (may be all digits), then letter+digit tokens of the title."""
    model = _field(record, _MODEL_FIELDS)
    found = [model.strip()] if re.search(r"\d", model) and len(model) <= MAX_VALUE else []
    found += [c for c in _CODE.findall(_field(record, _TITLE_FIELDS))
              if not _QUANTITY.fullmatch(c) and not _NOT_CODE.fullmatch(c)]
    return list(dict.fromkeys(found))


def _model(a: dict, b: dict, text_a: str, text_b: str) -> Evidence | None:
    ca, cb = _codes(a), _codes(b)
    for code in ca:
        if compact(code) in compact(text_b):
            return Evidence("model", code, code, "same")
    for code in cb:
        if compact(code) in compact(text_a):
            return Evidence("model", code, code, "same")
    if ca and cb:
        return Evidence("model", ca[0], cb[0], "different")
    if ca or cb:
        return Evidence("model", ca[0] if ca else "", cb[0] if cb else "", "missing")
    return None


def _number(raw: str) -> float:
    return float(raw.replace(",", "."))


def _quantities(text: str) -> dict[str, dict[tuple[float, str], str]]:
    """attribute -> {(number, unit): text as written}."""
    out: dict[str, dict] = {}
    for m in _QUANTITY.finditer(text):
        attr, unit = _UNITS[m[2].lower()]
        out.setdefault(attr, {}).setdefault((_number(m[1]), unit), m[0])
    return out


def _set_evidence(attr: str, va: dict, vb: dict) -> Evidence | None:
    """Evidence from two {normalised: as written} maps: common value same, disjoint different."""
    if not va and not vb:
        return None
    if not va or not vb:
        return Evidence(attr, next(iter(va.values()), ""), next(iter(vb.values()), ""), "missing")
    common = [k for k in va if k in vb]
    if common:
        return Evidence(attr, va[common[0]], vb[common[0]], "same")
    return Evidence(attr, next(iter(va.values())), next(iter(vb.values())), "different")


def _colours(text: str) -> dict[str, str]:
    found = {}
    for t in tokens(text):
        if t in _COLOURS:
            found.setdefault(_SAME_COLOUR.get(t, t), t)
    return found


def _packs(text: str) -> dict[int, str]:
    return {int(m[1] or m[2]): m[0] for m in _PACK.finditer(text.lower())}


def _title_words(a: dict, b: dict) -> tuple[str, str, str]:
    """(words only A's title has, only B's has, both share), each in title order."""
    ta, tb = _field(a, _TITLE_FIELDS).split(), _field(b, _TITLE_FIELDS).split()
    wa, wb = {compact(w) for w in ta}, {compact(w) for w in tb}

    def only(words, other):
        return " ".join(w for w in words if compact(w) and compact(w) not in other)

    return only(ta, wb), only(tb, wa), " ".join(w for w in ta if compact(w) in wb)


def silver_evidence(a: dict[str, str], b: dict[str, str], text_a: str, text_b: str, label: bool | None = None
                    ) -> list[Evidence]:
    """Evidence lines for two records, as the model sees them in `text_a`/`text_b`.

    Pass the clean records when the texts carry seller noise: fields are read from the records
    (no `HOT DEAL` for a brand), quantities and colours from the texts. With `label`, a `product`
    line of title words backs a decision the attributes leave unexplained (a `No` without any
    `different` line, a `Yes` without any `same` line).
    """
    lines = [_brand(a, b, text_a, text_b), _model(a, b, text_a, text_b)]
    qa, qb = _quantities(text_a), _quantities(text_b)
    lines += [_set_evidence(attr, qa.get(attr, {}), qb.get(attr, {})) for attr in dict.fromkeys([*qa, *qb])]
    lines += [_set_evidence("colour", _colours(text_a), _colours(text_b)),
              _set_evidence("pack_size", _packs(text_a), _packs(text_b))]
    lines = [Evidence(e.attribute, clean_value(e.a), clean_value(e.b), e.verdict) for e in lines if e]
    # Comparable attributes first: a `missing` line says least about identity.
    lines.sort(key=lambda e: e.verdict == "missing")
    only_a, only_b, shared = _title_words(a, b)
    if label is False and only_a and only_b and not any(e.verdict == "different" for e in lines):
        lines.insert(0, Evidence("product", clean_value(only_a), clean_value(only_b), "different"))
    elif (label or not lines) and shared and not any(e.verdict == "same" for e in lines):
        lines.insert(0, Evidence("product", clean_value(shared), clean_value(shared), "same"))
    if not lines:  # the grammar wants at least one line
        lines = [Evidence("product", clean_value(only_a), clean_value(only_b), "missing" if not (only_a and only_b)
                          else "different")]
    return lines[:MAX_LINES]


def silver_answer(label: bool, a: dict, b: dict, text_a: str, text_b: str) -> Answer:
    return Answer(label, silver_evidence(a, b, text_a, text_b, label))
