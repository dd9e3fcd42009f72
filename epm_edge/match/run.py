"""The matching job: candidates -> P(match) in batches -> streamed results -> optional assignment."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from epm_edge.data.catalog import Catalog
from epm_edge.data.serialize import serialize_record
from epm_edge.errors import InputError
from epm_edge.match.assign import one_to_one
from epm_edge.match.blocking import Candidates
from epm_edge.match.output import ResultWriter, read_results, rewrite_results
from epm_edge.match.scoring import PairScoring

if TYPE_CHECKING:
    from epm_edge.match.on_ray import RaySettings


@dataclass
class MatchSummary:
    candidates: int
    scored: int  # scored in this run (the rest were already in the output file)
    resumed: int
    to_llm: int  # of the pairs scored in this run, those the LLM scored (all of them without a cascade)
    matches: int
    seconds: float
    rows: list[dict]  # all result rows, for display


def serialized(catalog: Catalog, max_tokens: int) -> dict[str, str]:
    return {rid: serialize_record(rec, max_tokens) for rid, rec in catalog.records.items()}


def drop_empty_records(catalog: Catalog, max_tokens: int) -> tuple[Catalog, list[str]]:
    """The catalog without records that serialize to no text (a model would see only the template and
    score them like anything else), and the ids dropped."""
    empty = [rid for rid, text in serialized(catalog, max_tokens).items() if not text]
    if len(empty) == len(catalog):
        raise InputError(catalog.path, f"no record has text in the columns {', '.join(catalog.columns)}")
    gone = set(empty)
    kept = {rid: rec for rid, rec in catalog.records.items() if rid not in gone}
    return dataclasses.replace(catalog, records=kept), empty


@contextlib.contextmanager
def _interrupt_between_batches():
    """Ctrl-C ends the run after the batch being scored is written (a second one at once).

    A plain KeyboardInterrupt is raised wherever the main thread is; inside llama.cpp's ctypes log
    callback it is printed and dropped, and the run would go on. A flag checked between batches
    cannot be lost.
    """
    hits: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield hits
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        hits.append(signum)
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, handler)
    try:
        yield hits
    finally:
        signal.signal(signal.SIGINT, previous)


def run_match(a: Catalog, b: Catalog, cands: Candidates, scorer, out: Path, settings: dict,
              threshold: float, batch_size: int = 64, record_tokens: int = 64,
              explain: bool = False, explain_above: float | None = None,
              assignment: str | None = None, force: bool = False, cascade=None,
              on_start=None, on_batch=None, ray: "RaySettings | None" = None) -> MatchSummary:
    """Score candidates into `out`, resuming if `out` holds an earlier run with the same settings.

    Pairs are scored as match/scoring.py says, in this process or, with `ray`, by a pool of Ray
    actors whose rows stream back into the same file. `on_start(n_already_done)` is called once,
    `on_batch(n_pairs, n_sent_to_llm)` after each batch written.
    """
    writer = ResultWriter(out, settings, explain=explain, force=force, stage=True)
    todo = [i for i in range(len(cands)) if (cands.a_ids[i], cands.b_ids[i]) not in writer.done]
    resumed = len(cands) - len(todo)
    if on_start:
        on_start(resumed)
    featurizer = None
    if cascade is not None:
        from epm_edge.features.pairs import PairFeaturizer

        featurizer = PairFeaturizer(a.records, b.records)
    scoring = PairScoring(scorer, serialized(a, record_tokens), serialized(b, record_tokens), threshold,
                          batch_size, cascade, featurizer, explain, explain_above)
    if ray is not None:
        from epm_edge.match.on_ray import RayScoring

        scoring = RayScoring(scoring, ray)
    start, to_llm = time.perf_counter(), 0
    with _interrupt_between_batches() as interrupted:
        try:
            for rows, n_llm in scoring.batches([cands.a_ids[i] for i in todo], [cands.b_ids[i] for i in todo]):
                writer.write(rows)
                to_llm += n_llm
                if on_batch:
                    on_batch(len(rows), n_llm)
                if interrupted:
                    raise KeyboardInterrupt
        finally:
            writer.close()
    seconds = time.perf_counter() - start
    rows = read_results(out)
    if assignment:
        keep = one_to_one([r["a_id"] for r in rows], [r["b_id"] for r in rows],
                          np.array([r["score"] for r in rows]), threshold, method=assignment)
        for r, k in zip(rows, keep):
            r["match"] = bool(k)
        rewrite_results(out, rows, writer.fields)
    return MatchSummary(len(cands), len(todo), resumed, to_llm, sum(r["match"] for r in rows), seconds, rows)
