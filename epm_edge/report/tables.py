"""Rich tables for the terminal."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from epm_edge.data.catalog import Catalog
from epm_edge.data.serialize import serialize_record


def match_table(rows: list[dict], a: Catalog, b: Catalog, limit: int = 30) -> Table:
    """The matched pairs, best first, with a short view of each record."""
    matched = sorted((r for r in rows if r["match"]), key=lambda r: -r["score"])
    table = Table(title=f"{len(matched)} matches" + (f" (top {limit} shown)" if len(matched) > limit else ""))
    table.add_column("score", justify="right")
    table.add_column(f"A: {a.path.name}", overflow="fold", ratio=1)
    table.add_column(f"B: {b.path.name}", overflow="fold", ratio=1)
    for r in matched[:limit]:
        table.add_row(f"{r['score']:.3f}",
                      f"[bold]{r['a_id']}[/] {serialize_record(a.records[r['a_id']], 24)}",
                      f"[bold]{r['b_id']}[/] {serialize_record(b.records[r['b_id']], 24)}")
    return table


def metrics_table(results: list[dict]) -> Table:
    """One row per evaluated set, and the mean F1 and AP (average precision) when there are several."""
    first = results[0]
    table = Table(title=f"{first['split']} split  ({first['backend']}: {first['model']})")
    for col in ("set", "pairs", "threshold", "precision", "recall", "F1", "AP", "accuracy", "LLM share", "pairs/s"):
        table.add_column(col, justify="right")
    for r in results:
        thr = f"{r['threshold']:.3f}"
        if r["threshold_tuned_on"]:
            thr += f" ({r['threshold_tuned_on']}, F1 {r['tuning_f1']:.3f})"
        table.add_row(Path(r["data"]).name, str(r["n_pairs"]), thr, f"{r['precision']:.3f}", f"{r['recall']:.3f}",
                      f"[bold]{r['f1']:.3f}[/]", _ap(r["average_precision"]), f"{r['accuracy']:.3f}",
                      f"{r['llm_share']:.0%}", f"{r['pairs_per_second']:.1f}")
    if len(results) > 1:
        aps = [r["average_precision"] for r in results]
        table.add_row("mean", "", "", "", "", f"[bold]{sum(r['f1'] for r in results) / len(results):.3f}[/]",
                      _ap(None if None in aps else sum(aps) / len(aps)), "", "", "")
    return table


def _ap(ap: float | None) -> str:
    return "-" if ap is None else f"{ap:.3f}"
