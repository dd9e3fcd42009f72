"""Streaming, resumable result files (CSV or JSONL, by extension).

Rows are appended batch by batch and flushed, so an interrupted run keeps everything it scored.
On restart the file is read back, a torn last line (from a hard kill) is cut off, and the pairs
already present are skipped. A sidecar `<file>.run.json` records everything that decides the
rows (model, scorer settings, columns, the catalogs' content); resuming with any of it changed is
refused rather than mixing two runs in one file. The sidecar is also the run's lock: a second
process writing the same file fails at once.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
from pathlib import Path

from epm_edge.errors import EpmError

FIELDS = ("a_id", "b_id", "score", "match")


def _is_jsonl(path: Path) -> bool:
    return path.suffix.lower() in (".jsonl", ".ndjson")


class ResultWriter:
    def __init__(self, path: Path, settings: dict, explain: bool = False, force: bool = False,
                 restart_hint: str = "pass --force to start over or choose another -o", stage: bool = False):
        self.path = Path(path)
        self.restart_hint = restart_hint
        self.jsonl = _is_jsonl(self.path)
        # `stage`: which part of a cascade decided the row (features or llm)
        self.fields = FIELDS + (("stage",) if stage else ()) + (("explanation",) if explain else ())
        self.sidecar = self.path.with_name(self.path.name + ".run.json")
        self.done: dict[tuple[str, str], float] = {}  # pairs already in the file -> their score
        if self.path.is_dir():
            raise EpmError(f"{self.path}: is a directory; pass a result file (.csv or .jsonl)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.sidecar.exists()
        self.lock = open(self.sidecar, "a+", encoding="utf-8")
        try:
            fcntl.flock(self.lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.lock.close()
            raise EpmError(f"{self.path}: another epm-edge run is writing this file; wait for it to end "
                           "or choose another output") from None
        try:
            if force:
                self.path.unlink(missing_ok=True)
            if self.path.exists() and self.path.stat().st_size:
                self._check_settings(settings)
                self.done = self._recover()
            else:
                with open(self.path, "w", encoding="utf-8", newline="") as f:
                    if not self.jsonl:
                        f.write(",".join(self.fields) + "\n")
        except BaseException:
            self.lock.close()
            if not existed:
                self.sidecar.unlink(missing_ok=True)
            raise
        self.lock.seek(0)
        self.lock.truncate()
        self.lock.write(json.dumps(settings, indent=1, sort_keys=True))
        self.lock.flush()
        self.file = open(self.path, "a", encoding="utf-8", newline="")

    def _check_settings(self, settings: dict) -> None:
        self.lock.seek(0)
        text = self.lock.read()
        if not text.strip():
            raise EpmError(f"{self.path}: exists but was not written by epm-edge (no {self.sidecar.name}); "
                           f"{self.restart_hint}")
        old = json.loads(text)
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if changed:
            raise EpmError(f"{self.path}: an earlier run with different settings ({', '.join(changed)}) "
                           f"wrote this file; {self.restart_hint}")

    def _recover(self) -> dict[tuple[str, str], float]:
        data = self.path.read_bytes()
        cut = data.rfind(b"\n") + 1
        if cut < len(data):  # torn last row from a hard kill: drop it, it is scored again
            with open(self.path, "r+b") as f:
                f.truncate(cut)
            data = data[:cut]
        text = data.decode("utf-8")
        if self.jsonl:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            rows = list(csv.DictReader(io.StringIO(text)))
        return {(str(r["a_id"]), str(r["b_id"])): float(r["score"]) for r in rows}

    def write(self, rows: list[dict]) -> None:
        buf = io.StringIO()
        if self.jsonl:
            for r in rows:
                buf.write(json.dumps({k: r[k] for k in self.fields if k in r}, ensure_ascii=False) + "\n")
        else:
            w = csv.writer(buf, lineterminator="\n")
            for r in rows:
                w.writerow([_csv_value(r.get(k)) for k in self.fields])
        self.file.write(buf.getvalue())  # one write per batch: a batch lands whole or is rescored
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()
        self.lock.close()  # releases the lock


def _csv_value(v):
    if isinstance(v, float):
        return f"{v:.6f}"
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, dict):
        return json.dumps(v, ensure_ascii=False)
    return "" if v is None else v


def read_results(path: Path) -> list[dict]:
    """Read a result file back (used for one-to-one assignment and summaries)."""
    text = Path(path).read_text(encoding="utf-8")
    if _is_jsonl(Path(path)):
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
    for r in rows:
        r["score"] = float(r["score"])
        r["match"] = str(r["match"]).lower() in ("1", "true")
    return rows


def rewrite_results(path: Path, rows: list[dict], fields: tuple[str, ...]) -> None:
    """Atomically replace a result file (after one-to-one assignment changed `match`)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        if _is_jsonl(path):
            for r in rows:
                f.write(json.dumps({k: r[k] for k in fields if k in r}, ensure_ascii=False) + "\n")
        else:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(fields)
            for r in rows:
                w.writerow([_csv_value(r.get(k)) for k in fields])
    tmp.replace(path)
