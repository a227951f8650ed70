"""Worker tasks give the heap memory they freed back to the operating system (``parallel.freed_memory``)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from rfm_dask.parallel import freed_memory as fm
from rfm_dask.tree import tasks as tree_tasks


@pytest.fixture
def trims(monkeypatch):
    """Counts the calls of a stand-in ``malloc_trim``; the last-trim clock starts far in the past."""
    calls: list[int] = []
    monkeypatch.setattr(fm, "_malloc_trim", lambda: lambda pad: calls.append(pad) or 1)
    monkeypatch.setattr(fm, "_last", -float("inf"))
    return calls


def test_a_decorated_call_returns_its_result_and_trims_every_arena(trims):
    assert fm.releases_freed_memory(lambda a, b=1: a + b)(2, b=3) == 5
    assert trims == [0]  # pad 0: every free page of every arena


def test_a_raising_call_still_trims(trims):
    def fails():
        raise ValueError("bad block")

    with pytest.raises(ValueError, match="bad block"):
        fm.releases_freed_memory(fails)()
    assert trims == [0]


def test_trims_are_at_most_one_per_interval(trims, monkeypatch):
    """The clock is replaced in the module only: patching ``time.monotonic`` itself would hand the fake clock to
    every thread, and the session cluster's event loop, reading it, would die of its StopIteration."""
    clock = iter([100.0, 100.1, 100.49, 100.5, 101.2])
    monkeypatch.setattr(fm, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    ran = [fm.release_freed_memory(0.5) for _ in range(5)]
    assert ran == [True, False, False, True, True]
    assert len(trims) == 3


def test_without_malloc_trim_nothing_happens(monkeypatch):
    monkeypatch.setattr(fm, "_malloc_trim", lambda: None)
    monkeypatch.setattr(fm, "_last", -float("inf"))
    assert fm.release_freed_memory() is False
    assert fm.releases_freed_memory(lambda: "ok")() == "ok"


def test_the_c_library_trim_runs_where_there_is_one():
    """On glibc the real ``malloc_trim`` is found and called; elsewhere (macOS, musl) the lookup gives None."""
    fm._last = -float("inf")
    if fm._malloc_trim() is None:
        pytest.skip("this C library has no malloc_trim")
    blocks = [np.ones(20_000) for _ in range(200)]  # freed below glibc's mmap threshold: heap pages to give back
    del blocks
    assert fm.release_freed_memory() is True


@pytest.mark.parametrize("task", ["split_task", "project_task", "route_task", "leaf_task"])
def test_the_tree_tasks_release_freed_memory(task):
    """Each of the tree's worker tasks is the decorator's wrapper (one code object for all its wrappers) around the
    tree's function."""
    fn = getattr(tree_tasks, task)
    assert fn.__code__ is fm.releases_freed_memory(lambda: None).__code__
    assert fn.__wrapped__.__name__ == task


def test_a_tree_task_trims_when_it_returns(trims):
    X = np.arange(12, dtype=np.float32).reshape(4, 3)
    out = tree_tasks.project_task(X, np.zeros(4, dtype=np.int64), np.array([[1.0, 0.0, 0.0]]))
    np.testing.assert_array_equal(out, X[:, 0].astype(np.float64))
    assert trims == [0]


def test_the_leaf_stores_wait_trims_the_workers_while_dask_tasks_run(client, trims):
    """Dask's shuffle and store tasks trim nothing themselves: while a batch is written the workers are asked to
    trim every interval, and once more at the end; a task's own error is raised, not waited on forever."""
    import time

    from rfm_dask.tree import store

    store._wait_releasing_memory(client, client.submit(time.sleep, 0.35, pure=False), interval=0.1)
    assert len(trims) >= 2  # at least one while the 0.35 s task runs (0.1 s interval), one at the end

    def fails():
        raise TimeoutError("a task's own timeout")

    with pytest.raises(TimeoutError, match="own timeout"):
        store._wait_releasing_memory(client, client.submit(fails, pure=False), interval=0.1)
