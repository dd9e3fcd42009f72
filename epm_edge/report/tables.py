"""Rich tables for the terminal."""

from __future__ import annotations

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


def metrics_table(result: dict) -> Table:
    table = Table(title=f"{result['data']} / {result['split']}  ({result['backend']}: {result['model']})")
    for col in ("pairs", "threshold", "precision", "recall", "F1", "accuracy", "pairs/s"):
        table.add_column(col, justify="right")
    table.add_row(str(result["n_pairs"]), f"{result['threshold']:.3f}", f"{result['precision']:.3f}",
                  f"{result['recall']:.3f}", f"[bold]{result['f1']:.3f}[/]", f"{result['accuracy']:.3f}",
                  f"{result['pairs_per_second']:.1f}")
    return table
