"""Blocking at scale: chunks of A sized from a memory budget, and the chunks as Ray tasks, give the
candidates of one in-process pass over the whole catalog."""

import subprocess
import sys
import tracemalloc
from dataclasses import replace
from itertools import islice

import numpy as np
import pytest

from epm_edge.data import read_catalog
from epm_edge.match.blocking import (BYTES_PER_CELL, MAX_CHUNK_ROWS, BlockingIndex, block, chunk_rows,
                                     record_text)


def head(catalog, n):
    return replace(catalog, records=dict(islice(catalog.records.items(), n)))


def assert_same_candidates(got, want):
    assert got.a_ids == want.a_ids
    assert got.b_ids == want.b_ids
    assert np.array_equal(got.scores, want.scores)


@pytest.fixture(scope="module")
def abt_buy(data_dir):
    return (head(read_catalog(data_dir / "abt_buy" / "tableA.csv"), 300),
            head(read_catalog(data_dir / "abt_buy" / "tableB.csv"), 400))


def test_chunk_rows_fit_the_budget_whatever_b():
    budget = 256 << 20
    for n_b in (1, 1000, 10 ** 5, 10 ** 6):
        rows = chunk_rows(n_b, budget)
        assert 1 <= rows <= MAX_CHUNK_ROWS
        assert rows * n_b * BYTES_PER_CELL <= budget
    assert chunk_rows(10 ** 5, budget) < chunk_rows(10 ** 4, budget)
    assert chunk_rows(10 ** 9, budget) == 1  # one row even where a single row is over the budget


def test_small_budget_chunks_give_the_default_candidates(abt_buy):
    a, b = abt_buy
    default = block(a, b, top_k=10)
    assert len(default) == 10 * len(a)
    seen = []
    # a budget of two rows' worth: 150 chunks instead of one
    tiny = block(a, b, top_k=10, memory_budget=2 * BYTES_PER_CELL * len(b), progress=seen.append)
    assert seen == [2] * (len(a) // 2)
    assert_same_candidates(tiny, default)


def test_a_chunk_stays_within_its_budget(data_dir):
    """Traced allocations of one chunk's ranking: the similarity part stays within the budget."""
    b = head(read_catalog(data_dir / "walmart_amazon" / "tableB.csv"), 5000)
    a_text = [record_text(r) for r in head(read_catalog(data_dir / "walmart_amazon" / "tableA.csv"), 1000)
              .records.values()]
    index = BlockingIndex(b, a_text + [record_text(r) for r in b.records.values()])
    budget = 16 << 20
    texts = a_text[:chunk_rows(len(b), budget)]
    transform = traced_peak(lambda: (index.word.transform(texts), index.char.transform(texts)))
    chunk = traced_peak(lambda: index.top(texts, 20))
    assert chunk > budget / 2  # the chunk fills most of its budget ...
    assert chunk <= budget + transform  # ... and, beside the texts' own TF-IDF, no more


def traced_peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_ray_path_imports_ray_only_when_run():
    code = "import sys, epm_edge.match.ray_blocking; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.fixture
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_tasks_give_the_in_process_candidates(abt_buy, ray_cluster):
    from epm_edge.match.ray_blocking import block_on_ray

    a, b = abt_buy
    budget = 16 * BYTES_PER_CELL * len(b)  # 19 chunks, more than the 3 in flight
    on_ray = block_on_ray(a, b, top_k=10, memory_budget=budget, in_flight=3)
    assert ray_cluster.is_initialized()  # the caller's instance is left running
    assert_same_candidates(on_ray, block(a, b, top_k=10, memory_budget=budget))
    # the same workers, another B: each worker must rank against the new index, not the one it kept
    other_b = head(b, 150)
    assert_same_candidates(block_on_ray(a, other_b, top_k=10), block(a, other_b, top_k=10))


def test_ray_blocking_starts_and_stops_its_own_instance(abt_buy):
    ray = pytest.importorskip("ray")
    from epm_edge.match.ray_blocking import block_on_ray

    a, b = abt_buy
    assert not ray.is_initialized()
    on_ray = block_on_ray(head(a, 40), b, top_k=5, num_cpus=2)
    assert not ray.is_initialized()
    assert_same_candidates(on_ray, block(head(a, 40), b, top_k=5))
