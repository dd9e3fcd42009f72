"""Blocking with the chunks of A as Ray tasks (the `ray` extra).

The driver builds the `BlockingIndex` once and puts it in the object store once; each task ranks one
chunk of A texts against it. At most `in_flight` chunks are out at a time and results come back in
chunk order, so the driver holds a bounded number of chunks and the candidates equal `block`'s.
`ray` is imported only here, inside the functions: `import epm_edge.match` must not need it.
"""

from __future__ import annotations

from collections import deque
from functools import partial

from epm_edge.data.catalog import Catalog
from epm_edge.match.blocking import DEFAULT_MEMORY_BUDGET, BlockingIndex, Candidates, block

# The index is mostly Python dicts (the TF-IDF vocabularies), which Ray cannot share zero-copy: every
# task that took it as an argument would unpickle all of it. A worker keeps the last index it fetched
# (one copy a worker, until the next blocking sends another or the worker exits).
_worker_index: dict[str, BlockingIndex] = {}


def _top_of_chunk(index_ref: list, texts: list[str], top_k: int) -> list[list[tuple[str, float]]]:
    """One task: `index.top` of a chunk. The ref comes wrapped in a list so Ray passes it unresolved."""
    import ray

    key = index_ref[0].hex()
    if key not in _worker_index:
        _worker_index.clear()
        _worker_index[key] = ray.get(index_ref[0])
    return _worker_index[key].top(texts, top_k)


def map_on_ray(index: BlockingIndex, chunks, top_k: int, in_flight: int):
    """`index.top` of each chunk as a Ray task, yielded in chunk order, with at most `in_flight` out."""
    import ray

    task = ray.remote(num_cpus=1)(_top_of_chunk)
    index_ref = ray.put(index)
    pending = deque()
    for texts in chunks:
        if len(pending) == in_flight:
            yield ray.get(pending.popleft())
        pending.append(task.remote([index_ref], texts, top_k))
    while pending:
        yield ray.get(pending.popleft())


def cluster_map_chunks(in_flight: int | None = None):
    """`block`'s `map_chunks` for the Ray instance this process has joined: `in_flight` chunks out at once
    (default: two per CPU of the cluster, so a worker has its next chunk while the driver collects the last)."""
    import ray

    return partial(map_on_ray, in_flight=in_flight or 2 * max(1, int(ray.cluster_resources().get("CPU", 1))))


def block_on_ray(a: Catalog, b: Catalog, top_k: int = 20, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                 max_code_df: int = 20, progress=None, in_flight: int | None = None,
                 num_cpus: int | None = None) -> Candidates:
    """`block` with the chunks of A as Ray tasks; the same candidates in the same order.

    Uses the Ray instance already started in this process, else starts a local one with `num_cpus`
    (default: all cores) and shuts it down at the end. `in_flight`: chunks out at once (see
    `cluster_map_chunks`). `memory_budget` bounds each task's chunk as in `block`.
    """
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        return block(a, b, top_k, memory_budget, max_code_df, progress, map_chunks=cluster_map_chunks(in_flight))
    finally:
        if started:
            ray.shutdown()
