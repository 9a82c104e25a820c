"""Independent blocks of dense work spread over the machine's cores.

The influence solvers cut their heavy products into blocks of rows that do not depend on each
other (chunks of removed training rows, slices of the rows behind a Gram matrix). Each block
is a mid-sized BLAS call plus a few elementwise passes, so running the blocks side by side on
worker threads, with BLAS itself single-threaded meanwhile, uses every core without BLAS's own
per-call thread barriers, which stall whenever one of its threads is descheduled on a shared
machine. numpy and BLAS release the GIL for all of this work.

The number of workers is the number of cores this process may run on, capped by the thread
count BLAS is set to (``OPENBLAS_NUM_THREADS=1`` or ``threadpoolctl`` limits in the caller
therefore give one worker, run inline).
"""

from __future__ import annotations

import functools
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import nullcontext
from typing import Callable, Optional

import numpy as np

__all__ = ["dense", "n_workers", "planned_workers", "row_ranges", "run_blocks",
           "single_threaded_blas"]

_MAX_WORKERS = 8
_lock = threading.Lock()
_state: dict = {}
_local = threading.local()


def _after_fork_in_child():
    global _lock
    _lock = threading.Lock()  # a lock held by a parent's thread at the fork stays held
    _state.pop("executor", None)  # the child has none of the parent's threads


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _controller(refresh: bool = False):
    """A cached threadpoolctl controller (scikit-learn depends on threadpoolctl), or None;
    ``refresh``: made again (it knows only the thread pools loaded when it was made: SciPy's
    OpenBLAS arrives with SciPy)."""
    with _lock:
        if refresh or "controller" not in _state:
            try:
                from threadpoolctl import ThreadpoolController

                _state["controller"] = ThreadpoolController()
            except Exception:  # pragma: no cover - threadpoolctl missing or broken
                _state["controller"] = None
        return _state["controller"]


def n_workers() -> int:
    """Worker threads for :func:`run_blocks`: usable cores, capped by BLAS's thread count."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 1
    ctl = _controller()
    if ctl is not None:
        blas = [lib.num_threads for lib in ctl.lib_controllers if lib.user_api == "blas"]
        if blas:
            cores = min(cores, max(blas))
    return max(1, min(cores, _MAX_WORKERS))


def single_threaded_blas(refresh: bool = False):
    """A context in which BLAS runs on one thread (a no-op without threadpoolctl); ``refresh``:
    every BLAS loaded by now, not only those loaded when the first such context was made."""
    ctl = _controller(refresh)
    if ctl is None:  # pragma: no cover
        return nullcontext()
    return ctl.limit(limits=1, user_api="blas")


def _executor(workers: int) -> ThreadPoolExecutor:
    """The shared pool, with at least ``workers`` threads (made again after a fork: the
    child does not inherit the parent's threads)."""
    with _lock:
        ex = _state.get("executor")
        if ex is None or _state.get("pid") != os.getpid() or _state.get("workers", 0) < workers:
            if ex is not None and _state.get("pid") == os.getpid():
                ex.shutdown(wait=False)
            ex = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="invaudit")
            _state.update(executor=ex, workers=workers, pid=os.getpid())
        return ex


def dense(fn: Callable) -> Callable:
    """Decorator for the solvers' entry points: inside, BLAS runs on one thread and
    :func:`run_blocks` spreads blocks over the workers BLAS would have had. Mixing
    multi-threaded BLAS calls (numpy's and scipy's BLAS are separate libraries, each with
    spinning threads) with the parallel blocks oversubscribes the cores."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if getattr(_local, "workers", None) is not None or getattr(_local, "inside", False):
            return fn(*args, **kwargs)  # nested entry point
        _local.workers = n_workers()
        try:
            with single_threaded_blas():
                return fn(*args, **kwargs)
        finally:
            _local.workers = None

    return wrapper


def planned_workers() -> int:
    """The workers :func:`run_blocks` will use here (inside :func:`dense`: those planned on
    entry; inside a worker: one)."""
    if getattr(_local, "inside", False):
        return 1
    planned = getattr(_local, "workers", None)
    return n_workers() if planned is None else planned


def row_ranges(n: int, min_rows: int = 64, max_blocks: int = 4) -> list:
    """``[(a, b), ...]`` covering ``range(n)`` in at most ``max_blocks`` blocks of at least
    ``min_rows`` rows. The split depends on ``n`` only, never on the number of workers, so
    sums over blocks come out the same whatever the number of workers."""
    k = max(1, min(max_blocks, n // max(min_rows, 1)))
    edges = np.linspace(0, n, k + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def run_blocks(fn: Callable, n_blocks: int, scratch: Optional[Callable[[], object]] = None) -> None:
    """Call ``fn(i)`` (or ``fn(i, work)``) for ``i`` in ``range(n_blocks)``. Blocks must be
    independent: each writes its own part of the output. ``scratch()`` makes one work object
    (say, a buffer) per worker. The calling thread and ``workers - 1`` pool threads each take
    the next block until none is left, so a worker slowed down by other processes simply
    takes fewer. Runs inline, in order, with one worker, one block, or when already inside a
    worker."""
    workers = min(planned_workers(), n_blocks)
    if workers <= 1:
        work = None if scratch is None else scratch()
        for i in range(n_blocks):
            fn(i) if scratch is None else fn(i, work)
        return
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for i in range(n_blocks):
        todo.put(i)

    def runner():
        _local.inside = True
        try:
            work = None if scratch is None else scratch()
            while True:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                fn(i) if scratch is None else fn(i, work)
        finally:
            _local.inside = False

    with single_threaded_blas():
        futures = [_executor(workers - 1).submit(runner) for _ in range(workers - 1)]
        try:
            runner()
        finally:
            wait(futures)  # every runner stops before an error is raised
    for f in futures:
        f.result()
