"""A product catalog: an id column plus attribute columns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from epm_edge.data.csvfile import read_csv
from epm_edge.errors import InputError

ID_CANDIDATES = ("id", "sku", "product_id", "item_id", "offer_id", "ID", "Id")


@dataclass
class Catalog:
    path: Path
    id_col: str
    columns: list[str]
    records: dict[str, dict[str, str]]  # id -> {column: value}, in file order

    def __len__(self) -> int:
        return len(self.records)

    @property
    def ids(self) -> list[str]:
        return list(self.records)


def _detect_id_col(path: Path, header: list[str]) -> str:
    for name in ID_CANDIDATES:
        if name in header:
            return name
    lowered = [h for h in header if h.lower() == "id" or h.lower().endswith("_id")]
    if lowered:
        return lowered[0]
    raise InputError(path, f"no id column found (looked for {', '.join(ID_CANDIDATES[:5])}); "
                           f"columns are: {', '.join(header)}; choose one with --id-col", row=1)


def read_catalog(path: str | Path, id_col: str | None = None, columns: list[str] | None = None) -> Catalog:
    """Read a catalog CSV. `columns` selects attribute columns (default: all but the id)."""
    path = Path(path)
    header, rows = read_csv(path)
    if id_col is None:
        id_col = _detect_id_col(path, header)
    elif id_col not in header:
        raise InputError(path, f"id column not in header (columns: {', '.join(header)})", row=1, column=id_col)
    if columns:
        for c in columns:
            if c not in header:
                raise InputError(path, f"column not in header (columns: {', '.join(header)})", row=1, column=c)
    else:
        columns = [h for h in header if h != id_col and h]
    if not rows:
        raise InputError(path, "has a header but no records")
    records: dict[str, dict[str, str]] = {}
    first_seen: dict[str, int] = {}
    for number, row in rows:
        rid = row[id_col].strip()
        if not rid:
            raise InputError(path, "empty id", row=number, column=id_col)
        if rid in records:
            raise InputError(path, f"duplicate id '{rid}' (first seen at row {first_seen[rid]})",
                             row=number, column=id_col)
        first_seen[rid] = number
        records[rid] = {c: row[c].strip() for c in columns}
    return Catalog(path=path, id_col=id_col, columns=columns, records=records)
