"""Rows in parallel: processes on one machine (``--jobs N``) or a Dask cluster (``--scheduler``).

The rows of a run are cut into contiguous chunks by :func:`plan`, which looks at the number of
rows only, never at the number of workers or where they run. Each chunk is solved by the same
solver call on its own rows, and the chunks' results are put back together in row order. So a
run gives the same answer, bit for bit, serially, with ``--jobs 8`` or on a cluster: only
*who* solves a chunk changes, never *what* a chunk is.

Seeds follow the solvers' own conventions, which tie them to row numbers, not to chunks:
margins seed the block of rows that starts at row ``s`` with ``seed + s`` (so chunk ``[a, b)``
gets ``seed + a``), explanations draw counter-based numbers keyed by the row's number,
counterfactual searches seed a generator from the row's values.

Backends
--------
- serial: the chunks one after the other in this process (``jobs=1``, and any run whose
  work is too small to pay for starting workers, see :data:`AUTO_PARALLEL_S`, or whose rows cost
  less to solve than their results cost to send back, see :data:`SHIP_RATIO`);
- processes (``jobs=N``), Linux: this process and ``N - 1`` forked workers, which inherit the
  model, the rows and every imported module (nothing is pickled on the way in; they start in
  milliseconds). Every process takes the next chunk from one shared counter as soon as it is
  free and sends its results back on a queue, so a worker never waits for this process between
  two chunks and this process runs no thread beside its own chunks (:func:`_run_forked`);
- processes elsewhere (or ``_USE_FORK = False``): this process and ``N - 1`` workers of
  joblib's loky process pool take chunks from one queue; the model (and anything else shared)
  is written once to a private temporary file that every worker reads once, each task carries
  only its chunk's rows. This process works while the workers start; if it runs out of chunks
  before any worker delivered one, it solves theirs too (so a small run never waits for a
  cold worker);
- dask: ``dask.distributed.Client(address)``; the shared objects are scattered to every
  worker once (``broadcast=True``), the chunks submitted as tasks, gathered in order. While a
  chunk runs, the worker's heap keeps freed memory for reuse (:func:`_heap_kept`: Dask's own
  ``MALLOC_TRIM_THRESHOLD_`` otherwise costs numeric chunks half again their CPU).

Chunk sizes are set per solver (``_margin_rows``, ``_counterfactual_rows``,
:data:`EXPLAIN_ROWS`) so that a chunk's fixed cost stays small beside its rows' cost: a chunk
must be long enough to pay for itself, and the chunks are the same serially, so a serial run
gains from the larger ones too. Where that cost is high (a network's margins), the plan is
guided: the largest chunks first, the small ones last, so that the processes also finish
close together (:func:`plan` with ``max_rows``).

Every chunk runs with BLAS on one thread, in a worker (``threadpoolctl`` and the usual
environment variables) and in this process alike: processes times BLAS threads never exceed
the cores, and the answers do not move with the thread count (BLAS splits some products
differently over its threads, which changes the last bits, and iterative searches can turn
those into another answer). Influence, which runs single-threaded BLAS on threads of its own,
is left alone in this process.

What is not reproducible anywhere: a solver with a time limit (tree-ensemble MILPs) returns the
best answer found when a row's time runs out, which depends on the machine's load, serially as
in parallel; such rows say ``(time limit)`` in their method.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Optional

import numpy as np

from invaudit.errors import InputError

__all__ = ["plan", "cores", "resolve_jobs", "prestart", "map_chunks", "map_items", "concat_rows", "margins",
           "counterfactuals_with_extras", "explain_rows", "influence", "imap_chunks", "AUTO_PARALLEL_S", "AUTO_PARALLEL_SPAWN_S",
           "CONNECT_TIMEOUT_S", "SCHEDULER_ENV"]

#: With the default ``--jobs`` (all cores), workers start only when the first chunk, solved
#: here, shows that the rest of the run would take longer than this many seconds serially
#: (forked workers, Linux: they start in milliseconds) ...
AUTO_PARALLEL_S = 0.5
#: ... or this many where workers are spawned (joblib's loky: a cold worker spends 0.5-1 s or
#: more importing), so that smaller runs stay serial and no slower.
AUTO_PARALLEL_SPAWN_S = 2.0
#: With the default ``--jobs``, workers start only when solving a chunk costs (CPU) more than this
#: many times sending its result back to this process (:func:`_ship_seconds`). Measured on 10-class
#: linear margins of 1,000,000 x 50 rows: ~4 us of solving per row against ~0.6 us to pickle and
#: read back its 0.45 KB (a ratio of ~7); with the pipe and the pages a forked worker makes this
#: process copy, the default ``--jobs`` cost 1.6-3.4 s more CPU than ``--jobs 1`` there and was
#: slower. Networks, trees and explanations spend hundreds of times more per row than their
#: results take to send (an MLP's margins: ~2,000 times).
SHIP_RATIO = 20.0
#: Seconds to wait for a Dask scheduler before giving up with exit code 3.
CONNECT_TIMEOUT_S = 5.0
#: Environment variable naming the Dask scheduler when ``--scheduler`` is not given.
SCHEDULER_ENV = "INVAUDIT_SCHEDULER"
#: Idle seconds after which the process pool's workers exit.
POOL_IDLE_S = 30
# When this process runs out of chunks before any worker delivered one, it solves the workers'
# chunks too (tests turn this off to make sure the workers' answers are the ones compared).
_STEAL_FROM_COLD_WORKERS = True
#: Who solved the chunks of the last run in this process: ``{"here": k, "pool": k, "cluster": k}``,
#: and ``"cpu"``: ``{process id: CPU seconds spent solving chunks there}`` (each chunk timed by the
#: thread that solved it, where it ran: what benchmarks/parallel.py compares, free of the idle
#: CPU of a Dask worker's event loop and of everything else a process does).
last_run: dict = {"here": 0, "pool": 0, "cluster": 0, "cpu": {}}

#: BLAS threads while a chunk is solved, wherever it runs (see the module docstring).
_CHUNK_BLAS_THREADS = 1
_BLAS_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


# --- the chunk plan -------------------------------------------------------------------------------

def plan(n: int, *, min_rows: int = 64, max_chunks: int = 64, max_rows: Optional[int] = None) -> list:
    """``[(a, b), ...]``: contiguous chunks covering ``range(n)``, at most ``max_chunks`` of at
    least ``min_rows`` rows (one chunk when ``n < 2 * min_rows``). Depends on ``n`` and the
    sizes only, never on the workers, so the chunks (and hence the answers) are the same
    whoever solves them.

    Without ``max_rows`` (or ``max_rows <= min_rows``) the chunks are of equal size. With it, the
    largest come first: each chunk takes a :data:`GUIDE`-th of the rows still left, between
    ``min_rows`` and ``max_rows`` rows (guided self-scheduling, Polychronopoulos & Kuck 1987):
    few large chunks where a chunk has a high fixed cost, and small ones at the end, so that the
    processes finish close together (the last chunk one process is still on when the others
    run out is the run's idle time)."""
    n = int(n)
    if n <= 0:
        return []
    if max_rows is None or int(max_rows) <= int(min_rows):
        k = max(1, min(int(max_chunks), n // max(int(min_rows), 1)))
        edges = np.linspace(0, n, k + 1).round().astype(np.int64)
        return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]
    lo = max(1, int(min_rows), -(-n // max(1, int(max_chunks))))  # every chunk >= n / max_chunks rows
    hi = max(lo, int(max_rows))
    out, a = [], 0
    while a < n:
        left = n - a
        size = left if left < 2 * lo else min(hi, max(lo, -(-left // GUIDE)))
        if left - size < lo:  # no sliver at the end: the rest joins this chunk
            size = left
        out.append((a, a + size))
        a += size
    return out


#: Guided chunk plans (:func:`plan` with ``max_rows``): each chunk takes this fraction of the rows
#: left. Large enough that the last chunks are small beside a process's share of the run on up to
#: ~8 processes, small enough that few chunks pay a solver's fixed cost.
GUIDE = 8


def cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def resolve_jobs(jobs: Optional[int]) -> Optional[int]:
    """``None`` (auto: all cores once the work is big enough), or the number of processes:
    ``-1`` is all cores. Anything else below 1 is refused."""
    if jobs is None:
        return None
    jobs = int(jobs)
    if jobs == -1:
        return cores()
    if jobs < 1:
        raise InputError(f"--jobs {jobs}: expected a number of processes >= 1, or -1 for all cores.")
    return jobs


def scheduler_address(scheduler: Optional[str]) -> Optional[str]:
    """``--scheduler``, else ``$INVAUDIT_SCHEDULER``, else None (an empty value is None)."""
    value = scheduler if scheduler is not None else os.environ.get(SCHEDULER_ENV)
    value = None if value is None else str(value).strip()
    return value or None


# --- running chunks -------------------------------------------------------------------------------

def _slice(parts: dict, a: int, b: int) -> dict:
    """The chunk's rows of every per-row array, as fresh contiguous copies: every backend hands
    the solver the same kind of array (a worker gets a copy anyway), so nothing about memory
    layout differs between a serial and a parallel run."""
    return {k: (None if v is None else np.array(v[a:b], copy=True)) for k, v in parts.items()}


_CONTROLLER: list = [None, -1]


def _blas_limit(threads: int):
    """A context capping BLAS/OpenMP pools at ``threads``. The controller (a scan of every loaded
    library, ~5 ms) is built once per process and again only after new modules were imported
    (which may have loaded another BLAS): a run of a hundred chunks paid 0.5-1 s for the scans."""
    import sys

    if _CONTROLLER[0] is None or _CONTROLLER[1] != len(sys.modules):
        from threadpoolctl import ThreadpoolController

        _CONTROLLER[0], _CONTROLLER[1] = ThreadpoolController(), len(sys.modules)
    return _CONTROLLER[0].limit(limits=max(1, int(threads)))


def _call(fn, shared, part, a, b, blas, progress=None):
    """One chunk, with BLAS capped to ``blas`` threads (None: left as it is)."""
    if blas is None:
        return fn(shared, part, a, b, progress)
    with _blas_limit(blas):
        return fn(shared, part, a, b, progress)


def _timed_call(*args):
    """``(result, (process id, CPU seconds of this thread))`` of :func:`_call`: how a worker
    reports what a chunk cost where it ran."""
    c0 = time.thread_time()
    out = _call(*args)
    return out, (os.getpid(), time.thread_time() - c0)


def _count_cpu(cost) -> None:
    pid, seconds = cost
    cpu = last_run.setdefault("cpu", {})
    cpu[pid] = cpu.get(pid, 0.0) + float(seconds)


# shared objects in a pool worker: read once from the file the parent wrote
_WORKER_CACHE: dict = {}
# Modules the solvers import lazily, imported by a worker before its first chunk: a time-
# limited solver (tree-ensemble MILPs) must not spend a row's budget on a cold import.
_TREE_MODULES = ("invaudit.margins._trees", "invaudit.counterfactual._nl_trees", "scipy.optimize._highspy._core")


def _import(modules) -> None:
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:  # pragma: no cover - a module moved: it is imported when needed
            pass


def _warm_modules(form) -> tuple:
    return _TREE_MODULES if getattr(form, "kind", None) == "trees" else ()


def _executor(workers: int):
    from joblib.externals.loky import get_reusable_executor

    env = {name: str(_CHUNK_BLAS_THREADS) for name in _BLAS_ENV}
    return get_reusable_executor(max_workers=workers, env=env, timeout=POOL_IDLE_S)


def prestart(jobs: Optional[int], modules=("sklearn.base", "invaudit.models", "invaudit.margins",
                                           "invaudit.counterfactual", "invaudit.explain")) -> None:
    """Start the workers of an explicit ``--jobs N`` (N > 1) now, importing ``modules``, so that
    they are ready when the rows are (a cold worker spends a second or more importing; this
    overlaps it with reading the model and the data). Nothing for ``jobs`` None or 1."""
    try:
        jobs = resolve_jobs(jobs)
    except InputError:
        return
    if jobs is None or jobs <= 1 or _fork_now():  # forked workers start in milliseconds
        return
    ex = _executor(jobs - 1)
    for _ in range(jobs - 1):
        ex.submit(_import, tuple(modules))


def _loky_task(path: str, fn, part, a, b, blas, warm=()):
    shared = _WORKER_CACHE.get(path)
    if shared is None:
        import pickle

        with open(path, "rb") as fh:
            shared = pickle.load(fh)  # written by this run's parent process (cloudpickle), never user data
        _WORKER_CACHE.clear()
        _WORKER_CACHE[path] = shared
    _import(warm)
    return _timed_call(fn, shared, part, a, b, blas)


def _dask_task(fn, shared, part, a, b, blas, warm=()):
    _import(warm)
    with _heap_kept():
        return _timed_call(fn, shared, part, a, b, blas)


# glibc's malloc options (mallopt): a fixed trim threshold switches off the dynamic mmap threshold
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_heap_lock = threading.Lock()
_heap_users = [0]


@contextmanager
def _heap_kept():
    """While a chunk runs, let glibc keep freed memory for reuse, where the process was told to
    give it back at once. Dask starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which
    also fixes the mmap threshold at 128 KiB: every freed array above that goes back to the
    system and the next one is faulted in again, page by page (measured on explain chunks: 8x
    the page faults and +50% CPU, all of it system time). The process's own settings come back
    when its last chunk ends, with a ``malloc_trim``, so the worker still returns its memory.
    Nothing happens elsewhere (no such variable, not glibc)."""
    trim = os.environ.get("MALLOC_TRIM_THRESHOLD_")
    libc = _libc() if trim is not None else None
    if libc is None:
        yield
        return
    with _heap_lock:
        _heap_users[0] += 1
        if _heap_users[0] == 1:
            libc.mallopt(_M_TRIM_THRESHOLD, 1 << 28)
            libc.mallopt(_M_MMAP_THRESHOLD, 1 << 25)
    try:
        yield
    finally:
        with _heap_lock:
            _heap_users[0] -= 1
            if _heap_users[0] == 0:
                try:
                    libc.mallopt(_M_TRIM_THRESHOLD, int(trim))
                except ValueError:  # pragma: no cover - not a number: glibc ignored it too
                    libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)
                libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
                libc.malloc_trim(0)


def _libc():
    """glibc through ctypes, or None."""
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - glibc has both (musl does not)
        return libc
    except (OSError, AttributeError):
        return None


@contextmanager
def _shared_file(shared):
    import cloudpickle

    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    folder = tempfile.mkdtemp(prefix="invaudit-", dir=base)  # mode 0700: this user only
    try:
        path = os.path.join(folder, "shared.pkl")
        with open(path, "wb") as fh:
            cloudpickle.dump(shared, fh, protocol=5)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _progress_mapper(progress, n, base, rows):
    """A solver's own progress ``(done, total)`` inside a chunk of ``rows`` rows as rows of the
    run: ``base()`` rows are done elsewhere."""
    if progress is None:
        return None

    def update(done, total=None):
        frac = 1.0 if not total else min(1.0, max(0.0, float(done) / float(total)))
        progress(min(n, base() + int(frac * rows)), n)

    return update


def _first_done(pending):
    from concurrent.futures import FIRST_COMPLETED, wait

    done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
    return next(iter(done))


# what forked workers inherit: set in the parent right before it forks, so neither the model nor
# the rows are pickled on the way in (the children share the parent's pages copy-on-write)
_FORK_STATE: dict = {}
# a forked worker's message that it failed: ``(_FAILED, exception)``
_FAILED = -1
# seconds between checks that the forked workers are still alive while this process waits
_WAIT_S = 0.5
# a forked worker's inherited sys.stdout and sys.stderr, kept alive and untouched
_INHERITED_STREAMS: list = []


def _take(counter, n: int):
    """The next position in the run's queue of chunks, or None when none is left (``counter`` a
    shared ``multiprocessing.Value``: every process of the run takes from it)."""
    with counter.get_lock():
        k = counter.value
        if k >= n:
            return None
        counter.value = k + 1
        return k


def _picklable_error(exc: BaseException) -> BaseException:
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any failure to pickle: send its text instead
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _fork_worker(counter, results, first: int, parent: int) -> None:
    """A forked worker: solve the chunk at position ``first`` of the queue, then take positions
    from ``counter`` until none is left, putting ``(chunk index, result, cost)`` on ``results``
    (a ``multiprocessing.Queue``: its own thread sends, so the next chunk starts at once).
    Nobody hands it work chunk by chunk, so it never waits between chunks."""
    import signal
    import sys

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C stops
    # Fresh standard streams: another thread of the parent (a progress display) may have held
    # the inherited ones' locks at the fork, and a worker flushes its streams when it exits;
    # stdout (the report) is not the worker's to write. The inherited objects are kept alive
    # (never flushed, never closed).
    _INHERITED_STREAMS[:] = [sys.stdout, sys.stderr]
    sys.stdout = open(os.devnull, "w")
    try:
        sys.stderr = open(2, "w", closefd=False, buffering=1)
    except OSError:  # pragma: no cover - no stderr at all
        sys.stderr = open(os.devnull, "w")
    st = _FORK_STATE
    todo, chunks = st["todo"], st["chunks"]
    k = first
    try:
        while k is not None:
            if os.getppid() != parent:  # the parent is gone: nobody reads the results
                return
            i = todo[k]
            a, b = chunks[i]
            result, cost = _timed_call(st["fn"], st["shared"], _slice(st["parts"], a, b), a, b, _CHUNK_BLAS_THREADS)
            results.put((i, result, cost))
            k = _take(counter, len(todo))
    except BaseException as exc:  # noqa: BLE001 - raised again in the parent, as itself
        with counter.get_lock():
            counter.value = len(todo)  # nobody starts another chunk
        results.put((_FAILED, _picklable_error(exc), None))


def _run_forked(fn, shared, parts, chunks, todo, jobs, inline_one, warm=()):
    """``(i, result)`` in completion order from this process and ``jobs - 1`` forked workers
    (Linux). Every process takes the next chunk from one shared counter as soon as it is free
    (dynamic self-scheduling: no round trip through this process between two chunks of a
    worker, no thread here competing with the chunks this process solves); worker ``k`` starts
    with chunk ``k + 1`` of the queue and this process with the first, so every worker solves
    at least one chunk. The workers inherit the model, the rows and every imported module; the
    garbage collector's objects are frozen while they run, so a collection in one process does
    not copy the pages the processes share."""
    import gc
    import multiprocessing as mp
    import queue

    workers = jobs - 1
    ctx = mp.get_context("fork")
    n = len(todo)
    counter = ctx.Value("q", workers + 1)
    results = ctx.Queue()
    _import(warm)  # lazily imported solver modules: in the parent, so that every child has them
    _FORK_STATE.update(fn=fn, shared=shared, parts=parts, chunks=chunks, todo=todo)
    gc.freeze()
    procs = []
    got = 0       # chunks delivered by the workers
    here = 0      # chunks solved in this process
    done = False
    try:
        for w in range(workers):
            p = ctx.Process(target=_fork_worker, args=(counter, results, w + 1, os.getpid()), daemon=True,
                            name=f"invaudit-worker-{w + 1}")
            p.start()
            procs.append(p)

        def receive(block: bool):
            nonlocal got
            while True:
                try:
                    i, result, cost = results.get(block=block, timeout=_WAIT_S if block else None)
                except queue.Empty:
                    if not block:
                        return
                    dead = [p for p in procs if p.exitcode not in (None, 0)]
                    if dead:
                        raise RuntimeError(f"a worker process stopped (exit code {dead[0].exitcode}) before "
                                           f"it delivered its rows; try --jobs 1.")
                    continue
                if i == _FAILED:
                    raise result
                _count_cpu(cost)
                last_run["pool"] += 1
                got += 1
                yield i, result
                if block:
                    return

        k = 0
        while k is not None:
            yield todo[k], inline_one(todo[k])
            here += 1
            yield from receive(block=False)
            k = _take(counter, n)
        while here + got < n:
            yield from receive(block=True)
        done = True
    finally:
        if not done:
            with counter.get_lock():
                counter.value = n
            for p in procs:
                p.terminate()
        for p in procs:
            p.join(timeout=None if done else 10)
        results.close()
        gc.unfreeze()
        _FORK_STATE.clear()


def _can_fork() -> bool:
    """Fork is used on Linux only (elsewhere it is unsafe or missing): forked workers start in
    milliseconds with every module and the model already loaded, where a spawned worker spends
    seconds importing."""
    import multiprocessing as mp
    import sys

    return sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods() and _USE_FORK


def _fork_now() -> bool:
    """:func:`_can_fork`, and nothing loaded that makes a fork unsafe right now: LightGBM and
    XGBoost set their own OpenMP thread counts (past threadpoolctl's cap), so a team of OpenMP
    threads may be alive in this process; GNU libgomp is not fork-safe and a forked child that
    enters OpenMP waits for it forever (mislabel on a LightGBM model hung at its second fold).
    Then the workers are spawned (joblib's loky), as on other systems."""
    import sys

    return _can_fork() and not any(m in sys.modules for m in _OWN_OPENMP_THREADS)


#: Modules whose native code runs OpenMP teams of its own size (see :func:`_can_fork`).
_OWN_OPENMP_THREADS = ("lightgbm", "xgboost")


#: Linux: fork the workers (False: always joblib's loky, as on other systems).
_USE_FORK = True


@contextmanager
def _pool(fn, shared, parts, workers, warm):
    """``(submit(a, b) -> future, kill())`` on ``workers`` of joblib's loky processes, which read
    the shared objects once from a private temporary file (where fork is not used)."""
    with _shared_file(shared) as path:
        ex = _executor(workers)
        blas = _CHUNK_BLAS_THREADS
        yield (lambda a, b: ex.submit(_loky_task, path, fn, _slice(parts, a, b), a, b, blas, warm)), \
            (lambda: ex.shutdown(wait=False, kill_workers=True))


def _run_processes(fn, shared, parts, chunks, todo, jobs, inline_one, warm=()):
    """``(i, result)`` in completion order from ``jobs - 1`` workers and this process, all
    taking the next chunk from one queue: forked workers on Linux (:func:`_run_forked`), else
    joblib's loky pool. With loky, this process solves chunks while the workers start (a cold
    worker spends a second or more importing), and a worker slowed down by other programs
    simply takes fewer chunks. When this process runs out of chunks while no worker has
    delivered anything yet (they are still starting), it solves their chunks as well and stops
    them: a small run never waits for a worker's start-up. Chunks are deterministic, so
    whichever copy of a chunk finishes first is the answer."""
    if _fork_now():
        yield from _run_forked(fn, shared, parts, chunks, todo, jobs, inline_one, warm)
        return
    import queue
    import threading

    workers = jobs - 1
    lock = threading.Lock()
    order = iter(todo)
    stop = threading.Event()
    done_q: queue.SimpleQueue = queue.SimpleQueue()
    inflight: dict = {}          # chunk index -> future, chunks a worker holds
    delivered: set = set()
    pool_done = [0]
    _END = object()

    def take():
        with lock:
            return None if stop.is_set() else next(order, None)

    with _pool(fn, shared, parts, workers, warm) as (submit, kill):

        def feeder():
            # one chunk in flight per worker: rows are copied only for those, and the last
            # chunks are not stuck in a busy worker's queue while another is idle
            pending: dict = {}
            try:
                while not stop.is_set():
                    while len(pending) < workers:
                        i = take()
                        if i is None:
                            break
                        a, b = chunks[i]
                        fut = submit(a, b)
                        pending[fut] = i
                        with lock:
                            inflight[i] = fut
                    if not pending:
                        return
                    fut = _first_done(pending)
                    i = pending.pop(fut)
                    with lock:
                        inflight.pop(i, None)
                    done_q.put((i, fut))
            except BaseException as exc:  # pragma: no cover - the pool itself broke
                done_q.put((None, exc))
            finally:
                done_q.put((_END, None))

        thread = threading.Thread(target=feeder, name="invaudit-chunks", daemon=True)
        thread.start()

        def deliver(i):
            """Whether chunk ``i`` is new (a chunk solved here and by a worker counts once)."""
            if i in delivered:
                return False
            delivered.add(i)
            return True

        feeder_done = False

        def from_pool(block):
            """Finished pool chunks not delivered yet: ``(i, result)``; marks the feeder done
            when it has put its last chunk."""
            nonlocal feeder_done
            while not feeder_done:
                try:
                    i, fut = done_q.get(block=block, timeout=None if block else 0)
                except queue.Empty:
                    return
                if i is _END:
                    feeder_done = True
                    return
                if i is None:
                    raise fut
                if i in delivered:
                    continue  # solved here already
                result, cost = fut.result()
                _count_cpu(cost)
                pool_done[0] += 1
                last_run["pool"] += 1
                deliver(i)
                yield i, result

        try:
            while True:
                i = take()
                if i is None:
                    break
                result = inline_one(i)
                if deliver(i):
                    yield i, result
                yield from from_pool(block=False)
            while len(delivered) < len(todo):
                yield from from_pool(block=False)
                with lock:
                    held = sorted(k for k in inflight if k not in delivered)
                if held and pool_done[0] == 0 and _STEAL_FROM_COLD_WORKERS:
                    # the workers have not delivered anything yet: solve their chunks here
                    k = held[0]
                    result = inline_one(k)
                    if deliver(k):
                        yield k, result
                    continue
                if feeder_done:
                    break
                for item in from_pool(block=True):  # wait for one chunk, then look again
                    yield item
                    break
        finally:
            stop.set()
            with lock:
                busy = any(not f.done() for f in inflight.values())
            if busy:  # workers still on chunks nobody needs (or the run failed): stop them
                kill()
            thread.join(timeout=10)


def _client(scheduler):
    """A ``dask.distributed.Client`` for an address (or the Client given), and whether we own it."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise InputError("--scheduler needs Dask, which is not installed (pip install 'invaudit[dask]').") from None
    if isinstance(scheduler, Client):
        return scheduler, False
    try:
        client = Client(str(scheduler), timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        kind = "no answer" if isinstance(exc, (OSError, TimeoutError)) else "not a scheduler address"
        raise InputError(f"cannot reach the Dask scheduler at {scheduler} ({kind} within "
                         f"{CONNECT_TIMEOUT_S:g} s).") from None
    return client, True


def _run_dask(fn, shared, parts, chunks, todo, scheduler, warm=()):
    client, own = _client(scheduler)
    try:
        from dask.distributed import as_completed

        token = uuid.uuid4().hex[:12]
        # the model (and whatever else is shared) goes to every worker once (scatter a
        # one-item list: a dict would be scattered value by value, under its own keys)
        sh = client.scatter([shared], broadcast=True, hash=False)[0]
        blas = _CHUNK_BLAS_THREADS
        threads = max(1, sum(client.nthreads().values()))

        def submit(i):
            a, b = chunks[i]
            part = client.scatter([_slice(parts, a, b)], hash=False)[0]
            return client.submit(_dask_task, fn, sh, part, a, b, blas, warm, pure=False,
                                 key=f"invaudit-{token}-{i}")

        order = iter(todo)
        pending = {}
        try:
            for i in order:
                pending[submit(i)] = i
                if len(pending) >= 2 * threads:  # a window: only these chunks' rows are sent
                    break
            ac = as_completed(list(pending), loop=client.loop)
            for fut in ac:
                i = pending.pop(fut)
                result, cost = fut.result()
                _count_cpu(cost)
                last_run["cluster"] += 1
                nxt = next(order, None)
                if nxt is not None:
                    new = submit(nxt)
                    pending[new] = nxt
                    ac.add(new)
                yield i, result
        finally:
            for fut in pending:
                fut.cancel()
    finally:
        if own:
            client.close()


def imap_chunks(fn: Callable, n: int, *, shared: Any = None, parts: Optional[dict] = None,
                jobs: Optional[int] = None, scheduler=None, progress: Optional[Callable] = None,
                min_rows: int = 64, max_chunks: int = 64, inline_blas: Optional[int] = _CHUNK_BLAS_THREADS,
                warm=(), max_rows: Optional[int] = None):
    """Like :func:`map_chunks`, but yields ``((a, b), result)`` chunk by chunk in row order as
    soon as each is ready (for writers that stream)."""
    parts = dict(parts or {})
    for k, v in parts.items():
        if v is not None and np.shape(v)[0] != n:
            raise ValueError(f"per-row array {k!r} has {np.shape(v)[0]} rows, expected {n}")
    chunks = plan(n, min_rows=min_rows, max_chunks=max_chunks, max_rows=max_rows)
    if not chunks:
        return
    done_rows = [0]

    def tick(i):
        a, b = chunks[i]
        done_rows[0] += b - a
        if progress is not None:
            progress(done_rows[0], n)

    def inline_one(i):
        a, b = chunks[i]
        last_run["here"] += 1
        out, cost = _timed_call(fn, shared, _slice(parts, a, b), a, b, inline_blas,
                                _progress_mapper(progress, n, lambda: done_rows[0], b - a))
        _count_cpu(cost)
        return out

    def inline(todo):
        for i in todo:
            yield i, inline_one(i)

    todo = list(range(len(chunks)))
    ready: dict = {}  # chunk index -> result, until the chunks before it are given out
    last_run.update(here=0, pool=0, cluster=0, cpu={})
    if scheduler is not None:
        source = _run_dask(fn, shared, parts, chunks, todo, scheduler, warm)
    else:
        jobs = resolve_jobs(jobs)
        if jobs is None:  # auto: time the smallest chunk here (the first of a plan of equal chunks), then decide
            import sys

            size = [b - a for a, b in chunks]
            given = 0  # chunks before this one were given out
            while True:
                probe = min(todo, key=lambda i: (size[i], i))  # what runs alone before any worker: as short as can be
                modules = len(sys.modules)
                started, cpu0 = time.perf_counter(), time.thread_time()
                (_, first), = inline([probe])
                took, cpu = time.perf_counter() - started, time.thread_time() - cpu0
                tick(probe)
                todo = [i for i in todo if i != probe]
                ready[probe] = first  # given out in row order (a guided plan's smallest chunk comes late)
                while given in ready:
                    yield chunks[given], ready.pop(given)
                    given += 1
                # a chunk that imported the solver's modules timed the imports too: time the next
                if len(sys.modules) == modules or not todo:
                    break
            left = sum(size[i] for i in todo)
            remaining = took * left / max(size[probe], 1)
            jobs = cores() if remaining > (AUTO_PARALLEL_S if _fork_now() else AUTO_PARALLEL_SPAWN_S) else 1
            if jobs > 1 and cpu < SHIP_RATIO * _ship_seconds(first):  # cheaper to solve than to send back
                jobs = 1
        workers = min(jobs, len(todo))
        source = inline(todo) if workers <= 1 else _run_processes(fn, shared, parts, chunks, todo, workers,
                                                                  inline_one, warm)
    nxt = min(todo + list(ready)) if (todo or ready) else len(chunks)
    for i, result in source:
        tick(i)
        ready[i] = result
        while nxt in ready:
            yield chunks[nxt], ready.pop(nxt)
            nxt += 1
    while nxt in ready:
        yield chunks[nxt], ready.pop(nxt)
        nxt += 1


_SHIP_RATE: list = []  # seconds per byte to pickle and read back a result, measured once per process


def _result_bytes(obj, depth: int = 0) -> int:
    """The bytes of the numpy arrays a chunk's result holds (a dataclass, a dict, a list, ...)."""
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if depth > 2:
        return 0
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(_result_bytes(getattr(obj, f.name), depth + 1) for f in dataclasses.fields(obj))
    if isinstance(obj, dict):
        return sum(_result_bytes(v, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_result_bytes(v, depth + 1) for v in obj[:64]) * max(1, len(obj)) // max(1, min(len(obj), 64))
    return 0


def _ship_seconds(result) -> float:
    """CPU seconds to send a chunk's ``result`` from a worker: pickle it and read it back, timed
    once per process on the first result of at least 1 MB, then scaled by size."""
    import pickle

    size = _result_bytes(result)
    if not _SHIP_RATE:
        if size < (1 << 20):
            return 0.0  # small results: too cheap to send to stop anything
        c0 = time.thread_time()
        try:
            pickle.loads(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
        except Exception:  # a result a worker could not send either: the workers say so themselves
            return 0.0
        _SHIP_RATE.append((time.thread_time() - c0) / size)
    return _SHIP_RATE[0] * size


def map_chunks(fn: Callable, n: int, *, shared: Any = None, parts: Optional[dict] = None,
               jobs: Optional[int] = None, scheduler=None, progress: Optional[Callable] = None,
               min_rows: int = 64, max_chunks: int = 64, inline_blas: Optional[int] = _CHUNK_BLAS_THREADS,
               warm=(), max_rows: Optional[int] = None) -> list:
    """Solve the rows ``0..n-1`` chunk by chunk; the chunks' results in row order.

    Parameters
    ----------
    fn : callable ``fn(shared, part, a, b, progress) -> result``
        A module-level function (workers import it by name). ``part`` holds the chunk's rows
        ``[a, b)`` of every array in ``parts``; ``progress`` is the solver's own
        ``progress(done, total)`` for a chunk solved in this process, else None.
    n : number of rows.
    shared : anything the chunks share (the model form, training rows, options); sent to each
        worker once.
    parts : dict of per-row arrays (first axis ``n``) or None values.
    jobs : None, or the processes to use (:func:`resolve_jobs`). None: the smallest chunk (the
        first of equal ones, one of the last of a guided plan) is solved here and timed; the
        pool (all cores) starts only when the rest would take longer than
        :data:`AUTO_PARALLEL_S` serially (:data:`AUTO_PARALLEL_SPAWN_S` without fork) and a chunk
        costs more than :data:`SHIP_RATIO` times sending its result back (a chunk that imported
        modules is not a measure: the next one is timed too).
        1: serial. N > 1: a pool of N (at most one per chunk).
    scheduler : a Dask scheduler address (or a ``dask.distributed.Client``): every chunk runs on
        the cluster. Takes precedence over ``jobs``.
    progress : ``progress(done_rows, n)``, called as chunks finish.
    min_rows, max_chunks, max_rows : the chunk plan (:func:`plan`; ``max_rows``: largest chunks first).
    inline_blas : BLAS threads for a chunk solved in this process (workers always get one);
        None leaves BLAS alone, for a solver that runs single-threaded BLAS on threads of its
        own and whose answers do not depend on how many (influence).
    warm : modules a worker imports before it solves a chunk (time-limited solvers).

    Returns
    -------
    list of the chunks' results, in row order (empty for ``n == 0``).
    """
    return [r for _, r in imap_chunks(fn, n, shared=shared, parts=parts, jobs=jobs, scheduler=scheduler,
                                      progress=progress, min_rows=min_rows, max_chunks=max_chunks,
                                      inline_blas=inline_blas, warm=warm, max_rows=max_rows)]


# --- putting results back together ----------------------------------------------------------------

def _concat_value(values: list, sizes: list):
    """Per-row values of the chunks joined along rows: arrays with one entry per row are
    concatenated, dicts joined key by key, anything else (a norm, a name, a count) is the
    first chunk's."""
    first = values[0]
    if all(v is None for v in values):
        return None
    if isinstance(first, np.ndarray) and all(isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == s
                                             for v, s in zip(values, sizes)):
        return np.concatenate(values, axis=0)
    if isinstance(first, dict) and all(isinstance(v, dict) for v in values):
        return {k: _concat_value([v.get(k) for v in values], sizes) for k in first}
    return first


def concat_rows(parts: list, sizes: list, *, keep: tuple = ()):
    """Join chunk results of one dataclass type (``MarginBatch``, ``CounterfactualBatch``,
    ``InfluenceResult``) along rows: every array field with one entry per row is
    concatenated; fields named in ``keep`` (per-run arrays such as ``classes``) and scalars are
    taken from the first chunk."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    fields = {}
    for f in dataclasses.fields(first):
        if not f.init:
            continue
        vals = [getattr(p, f.name) for p in parts]
        fields[f.name] = vals[0] if f.name in keep else _concat_value(vals, sizes)
    return type(first)(**fields)


class _Box:
    """The per-row slice of a constraints object (``lower``/``upper`` rows, shared ``weights``);
    what the solvers read of ``invaudit.counterfactual.Constraints``."""

    def __init__(self, lower, upper, weights):
        self.lower, self.upper, self.weights = lower, upper, weights


def _constraint_parts(constraints, n, d):
    if constraints is None:
        return None, None, None
    lower = getattr(constraints, "lower", None)
    upper = getattr(constraints, "upper", None)
    lower = None if lower is None else np.broadcast_to(np.asarray(lower, dtype=np.float64), (n, d))
    upper = None if upper is None else np.broadcast_to(np.asarray(upper, dtype=np.float64), (n, d))
    return lower, upper, getattr(constraints, "weights", None)


def _chunk_constraints(shared, part):
    if not shared.get("has_constraints"):
        return None
    from invaudit.counterfactual import Constraints

    lo, hi, w = part.get("lower"), part.get("upper"), shared.get("weights")
    if lo is not None and hi is not None and w is not None:
        return Constraints(lower=lo, upper=hi, weights=np.asarray(w, dtype=np.float64))
    return _Box(lo, hi, w)


def _deadline(options: dict) -> dict:
    """``run_time_limit`` (seconds for the whole run) as an absolute deadline shared by all
    chunks (wall-clock time, the same for every process on one machine)."""
    options = dict(options)
    limit = options.pop("run_time_limit", None)
    if limit is not None:
        options["_deadline"] = time.time() + float(limit)
    return options


def _chunk_options(shared) -> dict:
    """The solver's options for a chunk starting now: what is left of the run's time limit."""
    options = dict(shared["options"])
    deadline = options.pop("_deadline", None)
    if deadline is not None:
        options["run_time_limit"] = max(0.0, deadline - time.time())
    return options


def _rows(X, form) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != int(form.n_features):
        raise InputError(f"the data must have {form.n_features} columns, got shape {X.shape}.")
    return X


# --- chunk sizes per solver -----------------------------------------------------------------------
# Part of the plan, so they may depend on the model and the options, never on the workers. Fast
# vectorised solvers get big chunks (a chunk costs a call's fixed overhead); slow per-row
# searches small ones (balance). A counterfactual search that takes its reference points from
# the batch itself (no training rows) keeps the batch whole up to 2,048 rows.

def _margin_rows(form) -> int:
    kind = getattr(form, "kind", None)
    if kind == "linear":
        return 8192
    if kind == "trees":
        return 1024 if getattr(form, "aggregate", None) == "single" else 16
    if kind == "differentiable":
        # a network's attack costs ~300 model calls per chunk whatever its size (bisection steps
        # over the whole batch): measured on the digits MLP, 10 ms/row CPU in chunks of 16 rows,
        # 3.2 in chunks of 128, 1.5 in one of 512 (~0.85 ms/row plus ~0.33 s per chunk); the
        # plan starts with chunks of up to _margin_max_rows and ends with these
        return 128
    return 16


def _margin_max_rows(form) -> Optional[int]:
    """The largest chunks of a margin run's guided plan (:func:`plan`), or None for chunks of
    one size: a network's fixed cost per chunk (see :func:`_margin_rows`) is paid 22 times
    instead of 48 on 6,144 rows (~25% less CPU on the digits MLP)."""
    return 512 if getattr(form, "kind", None) == "differentiable" else None


def _counterfactual_rows(form, X_train, manifold) -> int:
    kind = getattr(form, "kind", None)
    if kind == "linear" and manifold is None:
        return 4096
    if kind == "trees":
        return 4
    return 32 if X_train is not None else 1024


# --- margins --------------------------------------------------------------------------------------

def _margin_chunk(shared, part, a, b, progress):
    from invaudit.margins import margins as solve

    # the margin solvers seed the block of rows starting at row s with seed + s
    return solve(shared["form"], part["X"], y_index=part.get("y_index"), norm=shared["norm"],
                 constraints=_chunk_constraints(shared, part), X_train=shared["X_train"],
                 seed=shared["seed"] + a, progress=progress, **_chunk_options(shared))


def margins(form, X, *, y_index=None, norm: str = "l2", constraints=None, X_train=None, seed: int = 0,
            progress=None, jobs: Optional[int] = None, scheduler=None, min_rows: Optional[int] = None,
            **options):
    """:func:`invaudit.margins.margins` over chunks of rows (:func:`map_chunks`); the same
    keyword options, plus ``jobs`` and ``scheduler``. Returns one ``MarginBatch``."""
    X = _rows(X, form)
    max_rows = _margin_max_rows(form) if min_rows is None else None
    min_rows = _margin_rows(form) if min_rows is None else int(min_rows)
    n, d = X.shape
    lo, hi, w = _constraint_parts(constraints, n, d)
    shared = {"form": form, "norm": norm, "X_train": X_train, "seed": int(seed), "options": _deadline(options),
              "weights": w, "has_constraints": constraints is not None}
    parts = {"X": X, "y_index": None if y_index is None else np.asarray(y_index), "lower": lo, "upper": hi}
    chunks = map_chunks(_margin_chunk, n, shared=shared, parts=parts, jobs=jobs, scheduler=scheduler,
                        progress=progress, min_rows=min_rows, warm=_warm_modules(form), max_rows=max_rows)
    if not chunks:
        return _margin_chunk(shared, parts, 0, 0, None)
    sizes = [b - a for a, b in plan(n, min_rows=min_rows, max_rows=max_rows)]
    return concat_rows(chunks, sizes)


# --- counterfactuals ------------------------------------------------------------------------------

def _counterfactual_chunk(shared, part, a, b, progress):
    from invaudit.counterfactual import counterfactuals_with_extras as solve

    target = part["target"] if part.get("target") is not None else shared["target"]
    # the seed stays the run's: the searches seed a generator from each row's own values
    return solve(shared["form"], part["X"], target=target, confidence=shared["confidence"], norm=shared["norm"],
                 constraints=_chunk_constraints(shared, part), X_train=shared["X_train"],
                 y_train_index=shared["y_train_index"], manifold=shared["manifold"], seed=shared["seed"],
                 progress=progress, **_chunk_options(shared))


def counterfactuals_with_extras(form, X, *, target, confidence=None, norm: str = "l2", constraints=None,
                                X_train=None, y_train_index=None, manifold=None, seed: int = 0, progress=None,
                                jobs: Optional[int] = None, scheduler=None, min_rows: Optional[int] = None,
                                **options):
    """:func:`invaudit.counterfactual.counterfactuals_with_extras` over chunks of rows; returns
    ``(CounterfactualBatch, extras)`` joined along rows."""
    X = _rows(X, form)
    min_rows = _counterfactual_rows(form, X_train, manifold) if min_rows is None else int(min_rows)
    n, d = X.shape
    lo, hi, w = _constraint_parts(constraints, n, d)
    per_row_target = not isinstance(target, str) and np.ndim(target) == 1
    shared = {"form": form, "norm": norm, "confidence": confidence, "X_train": X_train,
              "y_train_index": y_train_index, "manifold": manifold, "seed": int(seed), "options": _deadline(options),
              "target": None if per_row_target else target, "weights": w,
              "has_constraints": constraints is not None}
    parts = {"X": X, "target": np.asarray(target) if per_row_target else None, "lower": lo, "upper": hi}
    chunks = map_chunks(_counterfactual_chunk, n, shared=shared, parts=parts, jobs=jobs, scheduler=scheduler,
                        progress=progress, min_rows=min_rows, warm=_warm_modules(form))
    if not chunks:
        return _counterfactual_chunk(shared, parts, 0, 0, None)
    sizes = [b - a for a, b in plan(n, min_rows=min_rows)]
    batch = concat_rows([c[0] for c in chunks], sizes)
    extras = _concat_value([c[1] for c in chunks], sizes)
    return batch, extras


# --- explanations ---------------------------------------------------------------------------------

def _explain_chunk(shared, part, a, b, progress):
    from invaudit.explain import explain_rows as solve

    baseline = part["baseline"] if part.get("baseline") is not None else shared["baseline"]
    done = None if progress is None else (lambda k: progress(k, b - a))
    return solve(shared["form"], part["X"], rows=part["rows"], label_indices=part.get("label_indices"),
                 baseline=baseline, progress=done, **shared["options"])


#: Rows per chunk of an explanation run: ~30 ms of fixed cost per chunk against ~4 ms per row (digits
#: MLP, 8x8), so 64 rows keep the fixed part near a tenth.
EXPLAIN_ROWS = 64


def explain_rows(form, X, *, rows=None, label_indices=None, baseline, progress=None,
                 jobs: Optional[int] = None, scheduler=None, min_rows: int = EXPLAIN_ROWS, **options) -> list:
    """:func:`invaudit.explain.explain_rows` over chunks of rows; ``progress(done_rows)`` as in
    the solver. Each row keeps its own number (``rows``), which fixes its random partitions."""
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0] if X.ndim == 2 else 0
    row_ids = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    base = np.asarray(baseline, dtype=np.float64)
    per_row_base = base.ndim == 2 and base.shape[0] == n and n > 0
    shared = {"form": form, "baseline": None if per_row_base else base, "options": options}
    parts = {"X": X, "rows": row_ids, "baseline": base if per_row_base else None,
             "label_indices": None if label_indices is None else np.asarray(label_indices)}
    if X.ndim != 2 or row_ids.shape != (n,):  # the solver says what is wrong
        return _explain_chunk(shared, parts, 0, n, None)
    chunks = map_chunks(_explain_chunk, n, shared=shared, parts=parts, jobs=jobs, scheduler=scheduler,
                        progress=None if progress is None else (lambda done, total: progress(done)),
                        min_rows=min_rows)
    if not chunks:
        return _explain_chunk(shared, parts, 0, 0, None)
    return [r for c in chunks for r in c]


# --- influence ------------------------------------------------------------------------------------

def _influence_chunk(shared, part, a, b, progress):
    from invaudit.influence import influence as solve

    return solve(shared["objective"], part["X"], part.get("y"), test_row_ids=part["ids"], **shared["options"])


def influence(objective, X_test, y_test=None, *, test_row_ids=None, estimate: str = "auto",
              jobs: Optional[int] = None, scheduler=None, progress=None, min_rows: int = 64, **options):
    """:func:`invaudit.influence.influence` over chunks of test rows; one ``InfluenceResult``.
    The objective's per-training-row terms are prepared once, here, before it is shipped."""
    X_test = np.asarray(X_test, dtype=np.float64)
    T = X_test.shape[0] if X_test.ndim == 2 else 0
    ids = np.arange(T) if test_row_ids is None else np.asarray(test_row_ids, dtype=np.int64)
    shared = {"objective": objective, "options": dict(options, estimate=estimate)}
    parts = {"X": X_test, "y": None if y_test is None else np.asarray(y_test), "ids": ids}
    if X_test.ndim != 2 or ids.shape != (T,) or T == 0:
        return _influence_chunk(shared, parts, 0, T, None)
    chunks_plan = plan(T, min_rows=min_rows)
    if len(chunks_plan) > 1:
        objective.prepare(objective.resolve_estimate(estimate))
    # influence runs BLAS single-threaded on worker threads of its own (influence._parallel),
    # with answers that do not depend on their number: left alone in this process
    chunks = map_chunks(_influence_chunk, T, shared=shared, parts=parts, jobs=jobs, scheduler=scheduler,
                        progress=progress, min_rows=min_rows, inline_blas=None)
    return concat_rows(chunks, [b - a for a, b in chunks_plan], keep=("classes",))


# --- independent items (folds, refits) ------------------------------------------------------------

def _item_chunk(shared, part, a, b, progress):
    fn, items, common = shared
    return [fn(common, items[int(k)]) for k in part["idx"]]


def map_items(fn: Callable, items, *, shared: Any = None, jobs: Optional[int] = None, scheduler=None,
              progress: Optional[Callable] = None) -> list:
    """``[fn(shared, item) for item in items]``, one item per chunk, on the same backends as
    :func:`map_chunks` (for a few expensive, independent pieces of work such as the folds of
    an out-of-fold refit). ``fn`` must be a module-level function."""
    items = list(items)
    out = map_chunks(_item_chunk, len(items), shared=(fn, items, shared),
                     parts={"idx": np.arange(len(items))}, jobs=jobs, scheduler=scheduler,
                     progress=progress, min_rows=1, max_chunks=max(1, len(items)))
    return [r for chunk in out for r in chunk]
