"""Strict CSV reading: every failure names the file, row and column."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from epm_edge.errors import InputError

csv.field_size_limit(sys.maxsize)


def read_csv(path: str | Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Return (header, [(row_number, row_dict), ...]); row numbers count the header as row 1."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a directory, expected a CSV file")
    raw = path.read_bytes()
    if not raw.strip():
        raise InputError(path, "file is empty")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InputError(path, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                               "re-save the file as UTF-8", row=line) from None
    reader = csv.reader(text.splitlines(keepends=True), strict=True)
    try:
        header = next(reader)
    except csv.Error as e:
        raise InputError(path, f"malformed CSV header: {e}", row=1) from None
    header = [h.strip() for h in header]
    if not any(header):
        raise InputError(path, "header row is empty", row=1)
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise InputError(path, "duplicate column name in header", row=1, column=dupes[0])
    rows = []
    try:
        for values in reader:
            number = reader.line_num
            if not values or not any(v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise InputError(path, f"has {len(values)} fields, header has {len(header)}", row=number)
            rows.append((number, dict(zip(header, values))))
    except csv.Error as e:
        raise InputError(path, f"malformed CSV: {e}", row=reader.line_num) from None
    return header, rows
