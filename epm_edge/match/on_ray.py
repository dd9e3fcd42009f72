"""`epm-edge match --ray`: the candidate pairs scored by a pool of Ray actors, on one host or many.

Blocking runs on the driver. The pairs still to score, in candidate order (grouped by A record, so
each actor keeps the llama.cpp scorer's reuse of a shared record A), become a Ray Data dataset;
`map_batches` with an actor pool scores it. Each actor loads the model once, with its own threads,
and scores through the same PairScoring (cascade included) as the single-process run. Rows stream
back to the driver, which writes them to the resumable result file, so Ctrl-C, a killed driver or a
lost actor costs at most the blocks in flight: a rerun scores only the pairs not in the file.

Every node must hold the same model at the same path: before any actor starts, the driver has each
node hash the model files and refuses to go on when one cannot read them or holds other bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from epm_edge.errors import EpmError, ModelError
from epm_edge.match.scoring import PairScoring
from epm_edge.model_store import sha256_file

COLUMNS = ("a_id", "b_id", "score", "match", "stage")


@dataclass
class RaySettings:
    address: str  # "local" (a new instance on this host), "auto" (the one this host joined) or HOST:PORT
    actors: int | None  # None: as many as the cluster's CPUs hold at `threads` each
    threads: int  # llama.cpp threads per actor, and the CPUs each actor reserves
    verbose: bool = False  # Ray's own logs and progress bars
    block_pairs: int = 256  # pairs per dataset block: what one actor call scores and streams back


def connect(settings: RaySettings) -> int:
    """Join (or start) the Ray instance; the number of actors to run."""
    try:
        import ray
    except ModuleNotFoundError:
        raise EpmError("--ray and --workers need Ray: pip install 'epm-edge[ray]'") from None

    if not ray.is_initialized():
        try:
            ray.init(address=settings.address, include_dashboard=False, log_to_driver=settings.verbose,
                     logging_level=logging.INFO if settings.verbose else logging.ERROR)
        except ConnectionError as e:
            raise EpmError(f"--ray {settings.address}: no Ray cluster there ({e}); start one with `ray start "
                           "--head` or pass --ray local") from None
    if not settings.verbose:  # Ray Data logs each dataset's start and end at INFO on its own logger
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = settings.verbose
    ctx.execution_options.preserve_order = False  # rows are keyed by pair; any order resumes the same
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if cpus < settings.threads:
        raise EpmError(f"the Ray cluster has {cpus} CPU(s): fewer than --threads-per-actor {settings.threads}")
    return settings.actors or max(1, cpus // settings.threads)


def content_digest(path: str | Path) -> str | None:
    """sha256 of a model file, or of a model dir's files (names and bytes); None if unreadable."""
    path = Path(path)
    try:
        if path.is_file():
            return sha256_file(path)
        files = sorted(p for p in path.rglob("*") if p.is_file())
        if not files:
            return None
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.relative_to(path)}\0{sha256_file(f)}\n".encode())
        return h.hexdigest()
    except OSError:
        return None


def _digests_here(paths: list[str]) -> tuple[str, dict[str, str | None]]:
    return socket.gethostname(), {p: content_digest(p) for p in paths}


def check_nodes(files: dict[str, str]) -> None:
    """Refuse to start unless every alive node with CPUs reads `files` ({path: digest}) with the same
    digests as the driver."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0)(_digests_here)
    nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
    found = ray.get([task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                     .remote(list(files)) for n in nodes])
    problems = []
    for node, (host, digests) in zip(nodes, found):
        where = f"node {host} ({node['NodeManagerAddress']})"
        for path, want in files.items():
            got = digests[path]
            if got is None:
                problems.append(f"{where} cannot read {path}")
            elif got != want:
                problems.append(f"{where} holds another {path} (sha256 {got[:12]}, the driver's {want[:12]})")
    if problems:
        raise ModelError("; ".join(problems) + ". Every host needs the same model at the same path: copy it "
                         "there or share one path (README, \"Many hosts\")")


@dataclass
class _Job:
    """What an actor needs to score as the driver would: the scoring without its scorer, and how to
    open the scorer there."""
    scoring: PairScoring  # scorer None
    model: str
    backend: str
    digests: dict[str, str]  # of the model and of its LoRA, if any, by path
    both_orders: bool
    threads: int
    lora: str | None = None  # a GGUF LoRA applied to the model as it loads
    lora_scale: float = 1.0


class _Actor:
    """One model per actor, loaded once; scores a dataset batch into result columns."""

    def __init__(self, job: list):
        import ray

        from epm_edge.runtime import load_scorer
        from epm_edge.runtime.orders import BothOrders

        job: _Job = ray.get(job[0])  # wrapped in a list so Ray hands over the reference, not a copy per arg
        for path, digest in job.digests.items():  # a node that joined after the driver's check
            if content_digest(path) != digest:
                raise ModelError(f"node {socket.gethostname()}: {path} is missing or differs from the driver's")
        scorer = load_scorer(job.model, backend=job.backend, threads=job.threads,
                             batch_size=job.scoring.batch_size, lora=job.lora, lora_scale=job.lora_scale)
        self.scoring = dataclasses.replace(job.scoring, scorer=BothOrders(scorer) if job.both_orders else scorer)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [r for part, _ in self.scoring.batches(batch["a_id"].tolist(), batch["b_id"].tolist()) for r in part]
        out = {k: np.array([r[k] for r in rows]) for k in COLUMNS}
        if self.scoring.explain:  # text, so the column has one type
            out["explanation"] = np.array([json.dumps(r["explanation"]) if "explanation" in r else "" for r in rows])
        return out


class RayScoring:
    """PairScoring's interface, run by a pool of Ray actors."""

    def __init__(self, scoring: PairScoring, settings: RaySettings):
        import ray

        self.settings = settings
        self.actors = connect(settings)
        inner = getattr(scoring.scorer, "inner", scoring.scorer)  # runtime.orders.BothOrders wraps it
        model = str(Path(inner.path).resolve())
        lora = str(inner.lora_path.resolve()) if getattr(inner, "lora_path", None) else None
        digests = {p: content_digest(p) for p in (model, lora) if p}
        check_nodes(digests)
        job = _Job(dataclasses.replace(scoring, scorer=None), model, inner.name, digests,
                   inner is not scoring.scorer, settings.threads, lora, getattr(inner, "lora_scale", 1.0))
        self.job = ray.put(job)
        self.explain = scoring.explain

    def batches(self, a_ids: Sequence[str], b_ids: Sequence[str]) -> Iterator[tuple[list[dict], int]]:
        if not len(a_ids):
            return
        import pyarrow as pa
        import ray

        table = pa.table({"a_id": list(a_ids), "b_id": list(b_ids)})
        # blocks of consecutive pairs (A's candidates together), at least four per actor so all get work
        n = max(1, min(self.settings.block_pairs, -(-len(table) // (4 * self.actors))))
        ds = ray.data.from_arrow([table.slice(lo, n) for lo in range(0, len(table), n)])
        ds = ds.map_batches(_Actor, fn_constructor_kwargs={"job": [self.job]}, batch_size=n, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=self.actors), num_cpus=self.settings.threads,
                            max_restarts=-1, max_task_retries=-1)
        seen: set[tuple[str, str]] = set()  # a block retried after its rows came back is not written twice
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            rows = []
            for i in range(len(batch["a_id"])):
                key = (str(batch["a_id"][i]), str(batch["b_id"][i]))
                if key in seen:
                    continue
                seen.add(key)
                row = {"a_id": key[0], "b_id": key[1], "score": float(batch["score"][i]),
                       "match": bool(batch["match"][i]), "stage": str(batch["stage"][i])}
                if self.explain and batch["explanation"][i]:
                    row["explanation"] = json.loads(batch["explanation"][i])
                rows.append(row)
            yield rows, sum(r["stage"] == "llm" for r in rows)
