"""Benchmark: exact tree-ensemble margins and counterfactuals across feature scales (issue 12).

Run by hand (not by pytest)::

    .venv/bin/python benchmarks/trees_exact.py [--rows 40] [--time-limit 10] [--root PATH]

For a RandomForest (10 trees, depth 4) and a GradientBoosting model (20 trees, depth 3), binary,
4 features, fitted on the same data rescaled by 1e-5, 1 and 1e5, it prints for every solver
(margin and counterfactual to the next class) and norm (L2, L1): the share of rows answered
``exact: true`` (of the rows found, for counterfactuals), the time per row (wall clock and CPU
time of the process: on a shared machine the wall clock also counts other people's work), and
the peak resident set size of the process that ran it (each run is a fresh process forked from
this one, so its peak is its own, HiGHS's C++ memory included). The last lines summarise the
worst and mean time per row. ``--root`` runs another checkout of invaudit (a before/after).
Takes about a minute at the default 40 rows.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")

MODELS = ("RandomForest(10 trees, depth 4)", "GradientBoosting(20 trees, depth 3)")
SCALES = (1e-5, 1.0, 1e5)


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = (X[:, 0] + 0.7 * X[:, 1] ** 2 - 0.4 * X[:, 2] * X[:, 3] > 0.3).astype(int)
    return X, y


def _fit(name, X, y):
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier

    if name.startswith("RandomForest"):
        return RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0).fit(X, y)
    return GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=0).fit(X, y)


def _run(conn, est, Xq, solver, norm, time_limit):
    """One measurement, in a forked child: ``(exact rate, wall s, cpu s, peak RSS MiB, note)``."""
    from invaudit.counterfactual.nonlinear import counterfactuals_nonlinear
    from invaudit.margins import margins
    from invaudit.models import adapt

    form = adapt(est)
    t, c = time.perf_counter(), time.process_time()
    if solver == "margin":
        b = margins(form, Xq, norm=norm, time_limit=time_limit)
        rate, note = float(b.exact.mean()), ""
    else:
        tgt = (form.predict_index(Xq) + 1) % form.n_classes
        b = counterfactuals_nonlinear(form, Xq, target=tgt, norm=norm, time_limit=time_limit)
        found = b.status == "found"
        rate = float(b.exact[found].mean()) if found.any() else float("nan")
        note = "" if found.all() else f"({int((~found).sum())} rows not found)"
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    conn.send((rate, wall, cpu, rss, note))
    conn.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=40)
    ap.add_argument("--time-limit", type=float, default=10.0)
    ap.add_argument("--root", default=str(Path(__file__).resolve().parent.parent),
                    help="the invaudit checkout to measure")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(args.root).resolve()))
    import invaudit  # noqa: F401  (imported before forking: children share it)

    ctx = mp.get_context("fork")
    X0, y = _data(600)
    Xq0 = _data(args.rows, seed=1)[0]
    n = len(Xq0)
    print(f"invaudit from {Path(invaudit.__file__).resolve().parent.parent}, {n} rows per run")
    print(f"{'model':36s} {'scale':>6s} {'solver':15s} {'exact':>7s} {'ms/row':>8s} "
          f"{'cpu ms/row':>10s} {'peak RSS MiB':>12s}")
    times = {}
    start = time.perf_counter()
    for name in MODELS:
        for scale in SCALES:
            est = _fit(name, X0 * scale, y)
            Xq = Xq0 * scale
            for solver in ("margin", "counterfactual"):
                for norm in ("l2", "l1"):
                    a, b = ctx.Pipe(duplex=False)
                    p = ctx.Process(target=_run, args=(b, est, Xq, solver, norm, args.time_limit))
                    p.start()
                    b.close()
                    rate, wall, cpu, rss, note = a.recv()
                    p.join()
                    times.setdefault(solver, []).append((wall / n, cpu / n))
                    label = f"{'margin' if solver == 'margin' else 'counterfact.'} {norm.upper()}"
                    print(f"{name:36s} {scale:6.0e} {label:15s} {rate:7.1%} {1e3 * wall / n:8.1f} "
                          f"{1e3 * cpu / n:10.1f} {rss:12.0f}  {note}", flush=True)
    for solver, v in times.items():
        v = np.asarray(v)
        print(f"{solver:15s} ms/row: mean {1e3 * v[:, 0].mean():.1f} (cpu {1e3 * v[:, 1].mean():.1f}), "
              f"worst {1e3 * v[:, 0].max():.1f} (cpu {1e3 * v[:, 1].max():.1f})")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
