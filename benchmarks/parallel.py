"""Benchmark: rows in parallel (issue 16, parts 3 and 4).

Run by hand from the repository root:

    PYTHONPATH=. python benchmarks/parallel.py [--margin-rows N] [--cf-rows N] [--explain-rows N]

For three row-parallel commands -- margins of an MLP (digits), counterfactuals of a random
forest (wine), explanations of an MLP (digits, 8x8) -- it times, in one run:

- the plain solver call on all rows (the in-process reference),
- ``invaudit.parallel`` serially (``--jobs 1``: the same chunks, one after the other),
- ``--jobs 2`` (this process and one worker; on Linux the worker is forked when the rows are
  ready, elsewhere a loky worker started cold, as a command-line run would),
- a Dask ``LocalCluster`` with 2 worker processes (started beforehand, not timed; its first
  run includes the workers' imports, so a second run is timed too),

and prints the wall times, the ratios (targets: serial / jobs 2 >= 1.7 on 2 cores; cluster
within 1.3x of jobs 2), the CPU seconds of this process and of the worker, peak memory (this
process and the largest worker), the load average, and checks that every parallel answer equals
the serial one bit for bit.

On a machine shared with other jobs the wall ratios say little: Linux's autogroup scheduling
shares the CPU between sessions, not processes, so a second process of the same command gets no
more CPU while other sessions keep the cores busy. The CPU ratio (serial CPU over the busier
process's CPU) is what the wall ratio is on idle cores, start-up and imbalance included.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SM = ROOT / "sample_models"


def _same(a, b) -> bool:
    if dataclasses.is_dataclass(a):
        return all(_same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, np.ndarray):
        return a.shape == b.shape and (np.array_equal(a, b, equal_nan=True) if a.dtype.kind == "f"
                                       else np.array_equal(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and a != a:
        return isinstance(b, float) and b != b
    return a == b


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed(fn):
    c0 = time.process_time()
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def _stop_pool():
    """Stop the process pool so that the next ``--jobs 2`` run starts cold, as a CLI run does
    (and its workers' peak memory is counted in RUSAGE_CHILDREN)."""
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True, kill_workers=False)


def cases(args):
    import joblib

    from invaudit.counterfactual import counterfactuals_with_extras
    from invaudit.explain import explain_rows
    from invaudit.margins import margins
    from invaudit.models import adapt
    from invaudit import parallel

    digits = np.load(SM / "digits_test.npz")["X"].astype(np.float64)
    wine = np.load(SM / "wine_test.npz")["X"].astype(np.float64)
    wine_train = np.load(SM / "wine_train.npz")["X"].astype(np.float64)
    mlp = adapt(joblib.load(SM / "digits_mlp.joblib"))
    forest = adapt(joblib.load(SM / "wine_forest.joblib"))
    Xm = digits[:args.margin_rows]
    Xc = np.concatenate([wine, wine_train])[:args.cf_rows]
    Xe = digits[:args.explain_rows]
    ids = np.arange(Xe.shape[0])
    kw_e = dict(rows=ids, baseline=np.zeros(64), shape=(8, 8), confidence=0.5)
    kw_c = dict(target="other", time_limit=600.0)  # no row stops at a time limit: answers comparable
    return [
        (f"margin, MLP (digits), {len(Xm)} rows",
         lambda: margins(mlp, Xm),
         lambda **p: parallel.margins(mlp, Xm, **p)),
        (f"counterfactual, random forest (wine), {len(Xc)} rows",
         lambda: counterfactuals_with_extras(forest, Xc, **kw_c),
         lambda **p: parallel.counterfactuals_with_extras(forest, Xc, **kw_c, **p)),
        (f"explain, MLP (digits 8x8), {len(Xe)} rows",
         lambda: explain_rows(mlp, Xe, **kw_e),
         lambda **p: parallel.explain_rows(mlp, Xe, **kw_e, **p)),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--margin-rows", type=int, default=320)
    ap.add_argument("--cf-rows", type=int, default=96)
    ap.add_argument("--explain-rows", type=int, default=128)
    ap.add_argument("--no-dask", action="store_true")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from invaudit import parallel

    print(f"cores: {parallel.cores()}, load average at start: {os.getloadavg()[0]:.1f}")
    cluster = None
    if not args.no_dask:
        try:
            from dask.distributed import LocalCluster

            cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                   silence_logs=50)
        except ImportError:
            print("dask is not installed: no cluster figures (pip install '.[dask]')")
    try:
        for name, whole, par in cases(args):
            print(f"\n{name}")
            _, t_whole, c_whole = _timed(whole)
            print(f"  plain solver call       {t_whole:7.2f} s wall  {c_whole:6.2f} s CPU")
            ref, t1, c1 = _timed(lambda: par(jobs=1))
            print(f"  --jobs 1 (chunked)      {t1:7.2f} s wall  {c1:6.2f} s CPU")
            _stop_pool()
            k0 = _children_cpu()
            out2, t2, c2 = _timed(lambda: par(jobs=2))
            cw = _children_cpu() - k0  # the forked worker, reaped when the pool shut down
            who = dict(parallel.last_run)
            print(f"  --jobs 2                {t2:7.2f} s wall  {c2:6.2f} s CPU here, {cw:.2f} s CPU in the worker; "
                  f"chunks here/pool {who['here']}/{who['pool']}; same answers: {_same(ref, out2)}")
            print(f"  speed-up jobs 1 / jobs 2: {t1 / t2:.2f}x wall (target >= 1.7); "
                  f"{c1 / max(c2, cw, 1e-9):.2f}x by CPU (serial CPU / the busier process's CPU: the wall "
                  "speed-up on 2 idle cores)")
            _stop_pool()
            if cluster is not None:
                out3, t3, _ = _timed(lambda: par(scheduler=cluster.scheduler_address))
                out4, t4, _ = _timed(lambda: par(scheduler=cluster.scheduler_address))
                print(f"  LocalCluster, 2 workers {t3:7.2f} s wall (first), {t4:.2f} s (second); "
                      f"same answers: {_same(ref, out3) and _same(ref, out4)}")
                print(f"  cluster / jobs 2: {t3 / t2:.2f}x first, {t4 / t2:.2f}x second (target <= 1.3)")
            print(f"  peak memory: this process {_peak_mb():.0f} MB, largest pool worker "
                  f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MB")
    finally:
        if cluster is not None:
            cluster.close()
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (on {parallel.cores()} cores)")


if __name__ == "__main__":
    main()
