"""The matching job: candidates -> P(match) in batches -> streamed results -> optional assignment."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from epm_edge.data.catalog import Catalog
from epm_edge.data.serialize import serialize_record
from epm_edge.errors import InputError
from epm_edge.match.assign import one_to_one
from epm_edge.match.blocking import Candidates
from epm_edge.match.output import ResultWriter, read_results, rewrite_results


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
              on_start=None, on_batch=None) -> MatchSummary:
    """Score candidates into `out`, resuming if `out` holds an earlier run with the same settings.

    With a `cascade` (features/cascade.py) each chunk of candidates gets pair features first; the
    pairs the feature matcher is sure of are written at once (stage `features`), the rest are
    scored by the LLM and fused (stage `llm`). `on_start(n_already_done)` is called once,
    `on_batch(n_pairs, n_sent_to_llm)` after each batch written.
    """
    writer = ResultWriter(out, settings, explain=explain, force=force, stage=True)
    todo = [i for i in range(len(cands)) if (cands.a_ids[i], cands.b_ids[i]) not in writer.done]
    resumed = len(cands) - len(todo)
    if on_start:
        on_start(resumed)
    sa, sb = serialized(a, record_tokens), serialized(b, record_tokens)
    explain_cut = threshold if explain_above is None else explain_above
    featurizer = None
    if cascade is not None:
        from epm_edge.features.pairs import PairFeaturizer

        featurizer = PairFeaturizer(a.records, b.records)
    start, to_llm = time.perf_counter(), 0

    def write(idx: list[int], scores, stage: str | None) -> None:
        rows = [{"a_id": cands.a_ids[i], "b_id": cands.b_ids[i], "score": float(s),
                 "match": bool(s >= threshold), "stage": stage} for i, s in zip(idx, scores)]
        if explain:
            want = [n for n, r in enumerate(rows) if r["score"] >= explain_cut]
            pairs = [(sa[cands.a_ids[idx[n]]], sb[cands.b_ids[idx[n]]]) for n in want]
            for n, answer in zip(want, scorer.explain(pairs, [rows[n]["match"] for n in want])):
                rows[n]["explanation"] = answer.to_json()
        writer.write(rows)

    with _interrupt_between_batches() as interrupted:
        try:
            # with a cascade, features go a chunk at a time and only the unsure pairs fill LLM batches
            chunk = batch_size * 32 if featurizer else batch_size
            for lo in range(0, len(todo), chunk):
                idx = todo[lo:lo + chunk]
                llm_idx = idx
                if featurizer:
                    p_feat = cascade.matcher.predict(featurizer.features([cands.a_ids[i] for i in idx],
                                                                         [cands.b_ids[i] for i in idx]))
                    unsure = cascade.to_llm(p_feat)
                    settled = [i for i, u in zip(idx, unsure) if not u]
                    write(settled, p_feat[~unsure], "features")
                    if on_batch:
                        on_batch(len(settled), 0)
                    llm_idx, p_feat = [i for i, u in zip(idx, unsure) if u], p_feat[unsure]
                for blo in range(0, len(llm_idx), batch_size):
                    part = llm_idx[blo:blo + batch_size]
                    scores = scorer.score([(sa[cands.a_ids[i]], sb[cands.b_ids[i]]) for i in part])
                    if featurizer:
                        scores = cascade.fuse(p_feat[blo:blo + len(part)], scores)
                    write(part, scores, "llm")
                    to_llm += len(part)
                    if on_batch:
                        on_batch(len(part), len(part))
                    if interrupted:
                        raise KeyboardInterrupt
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
