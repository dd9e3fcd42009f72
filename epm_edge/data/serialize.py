"""Compact record serialization for the prompt: `name: value; name: value`, empty values dropped.

Columns are ordered by how much they tell about identity (title first, long descriptions last)
and the text is cut to a token budget so one verbose record cannot crowd out the other.
"""

from __future__ import annotations

import re

# Lower rank = earlier in the serialization. Unknown columns go between specs and descriptions.
_RANK = {
    "title": 0, "name": 0, "brand": 1, "manufacturer": 1, "modelno": 2, "model": 2, "mpn": 2,
    "gtin": 2, "ean": 2, "upc": 2, "price": 3, "pricecurrency": 3, "category": 4,
    "spectablecontent": 6, "description": 7,
}
_PIECE = re.compile(r"\w{1,5}|[^\w\s]")


def approx_tokens(text: str) -> int:
    """A tokenizer-free token count that errs high for BPE vocabularies (~4-5 chars per token)."""
    return len(_PIECE.findall(text))


def _clip(text: str, budget: int) -> str:
    if approx_tokens(text) <= budget:
        return text
    out, used = [], 0
    for word in text.split():
        cost = approx_tokens(word)
        if used + cost > budget:
            break
        out.append(word)
        used += cost
    return " ".join(out)


# Below this a record keeps hardly more than its first attribute name; at 0 every record is empty.
MIN_RECORD_TOKENS = 16


def _clean(text: str) -> str:
    return " ".join(text.split()).replace("|", "/")


def serialize_record(record: dict[str, str], max_tokens: int = 64) -> str:
    """Serialize one record; `price` and `priceCurrency` are joined into one field when both exist."""
    # Column names are data like the values: whitespace collapsed, `|` (it separates rationale fields) replaced.
    fields = {_clean(k): _clean(v) for k, v in record.items() if v and v.strip()}
    fields = {k: v for k, v in fields.items() if k}
    currency = next((fields.pop(k) for k in list(fields) if k.lower() == "pricecurrency"), None)
    if currency and "price" in fields:
        fields["price"] = f"{fields['price']} {currency}"
    parts, used = [], 0
    for name in sorted(fields, key=lambda k: _RANK.get(k.lower(), 5)):
        left = max_tokens - used - approx_tokens(name) - 2
        if left <= 0:
            break
        value = _clip(fields[name], left)
        if not value:
            break
        parts.append(f"{name}: {value}")
        used += approx_tokens(parts[-1]) + 1
    return "; ".join(parts)
