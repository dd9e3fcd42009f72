"""Strict CSV reading: every failure names the file, row and column."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

from epm_edge.errors import InputError

csv.field_size_limit(sys.maxsize)


def read_csv(path: str | Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Return (header, [(row_number, row_dict), ...]).

    Row numbers count CSV records, not physical lines: the header is row 1, the first data record
    row 2, a quoted field spanning several lines is still one row, and blank rows are counted
    (as a spreadsheet shows them) but not returned."""
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
        # utf-8-sig reports e.start within e.object, the bytes after any BOM, not within raw.
        offset = len(raw) - len(e.object) + e.start
        # The bytes before the bad one decode; a stand-in for it makes the last record parsed the
        # one that holds it. Not strict: the prefix may stop inside a quoted field.
        before = e.object[: e.start].decode("utf-8") + "\ufffd"
        row = sum(1 for _ in csv.reader(io.StringIO(before, newline="")))
        raise InputError(path, f"not valid UTF-8 (byte 0x{e.object[e.start]:02x} at offset {offset}); "
                               "re-save the file as UTF-8", row=row) from None
    # newline="" hands csv the raw line ends, so records end only at \r, \n or \r\n; str.splitlines()
    # would also split on U+2028, U+2029, U+0085, \x0b, \x0c and \x1c-\x1e, ordinary characters in CSV.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
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
    number = 1
    try:
        for number, values in enumerate(reader, start=2):
            if not values or not any(v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise InputError(path, f"has {len(values)} fields, header has {len(header)}", row=number)
            rows.append((number, dict(zip(header, values))))
    except csv.Error as e:
        # raised while reading the record after the last one numbered
        raise InputError(path, f"malformed CSV: {e}", row=number + 1) from None
    return header, rows
