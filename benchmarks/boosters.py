"""Benchmark: LightGBM and XGBoost classifiers in the trees form (issue 15).

Run by hand (not by pytest; lightgbm and xgboost from the ``boost`` extra)::

    .venv/bin/python benchmarks/boosters.py [--rows 20] [--time-limit SECONDS]

Models, fitted on 1,500 rows of ``make_classification`` (30 features, 10 informative, binary):
an ``LGBMClassifier`` and an ``XGBClassifier`` of 50 rounds each (default depth / leaves), and
each after a StandardScaler in a Pipeline. For each it prints the time to read the model into
the trees form (``adapt``: the library's JSON dump to leaf boxes) with its number of boxes, and
for ``counterfactual`` (target: the other class) and ``margin`` through the library calls the CLI
makes (``invaudit.parallel``, serial) at the default time limit (or ``--time-limit``), with the
training rows: wall-clock and CPU seconds per row, the share of rows
the estimator's own ``predict`` confirms (validity), the share answered ``exact: true``, and the
peak resident memory of the process that ran it (a fresh forked process per measurement; every
library limited to one thread).

The machine these figures come from may be shared; CPU time next to wall time shows how much.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")


def _models(seed=0):
    import lightgbm as lgb
    import xgboost as xgb
    from sklearn.datasets import make_classification
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = make_classification(n_samples=2000, n_features=30, n_informative=10, random_state=seed)
    Xtr, ytr = X[:1500], y[:1500]
    models = {
        "LGBMClassifier(50 rounds)": lgb.LGBMClassifier(n_estimators=50, verbose=-1, n_jobs=1),
        "XGBClassifier(50 rounds)": xgb.XGBClassifier(n_estimators=50, n_jobs=1),
        "Pipeline(StandardScaler, LGBMClassifier(50))": make_pipeline(
            StandardScaler(), lgb.LGBMClassifier(n_estimators=50, verbose=-1, n_jobs=1)),
    }
    for est in models.values():
        est.fit(Xtr, ytr)
    return models, Xtr, ytr, X[1500:]


def _child(conn, job, est, Xq, Xtr, time_limit):
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)
    from invaudit import parallel
    from invaudit.models import adapt

    out = {}
    t = time.perf_counter()
    form = adapt(est)
    out["adapt"] = time.perf_counter() - t
    out["boxes"] = sum(len(tr.value) for tr in form.trees)
    out["trees"] = len(form.trees)
    kw = {} if time_limit is None else {"time_limit": time_limit}
    t, c = time.perf_counter(), time.process_time()
    if job == "counterfactual":  # the library call the CLI makes (serial)
        b, _ = parallel.counterfactuals_with_extras(form, Xq, target="other", X_train=Xtr, jobs=1, **kw)
        pts = np.where((b.status == "found")[:, None], b.x_cf, np.nan)
    else:
        b = parallel.margins(form, Xq, X_train=Xtr, jobs=1, **kw)
        pts = Xq + b.perturbation
    out["exact"] = np.asarray(b.exact, dtype=bool)
    out["wall"] = time.perf_counter() - t
    out["cpu"] = time.process_time() - c
    out["rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    have = np.all(np.isfinite(pts), axis=1)
    valid = np.zeros(len(Xq), dtype=bool)
    if have.any():
        valid[have] = est.predict(pts[have]) != est.predict(Xq[have])
    out["valid"] = valid
    conn.send(out)
    conn.close()


def _run(job, est, Xq, Xtr, time_limit):
    ctx = mp.get_context("fork")
    a, b = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(b, job, est, Xq, Xtr, time_limit))
    p.start()
    out = a.recv()
    p.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20)
    ap.add_argument("--time-limit", type=float, default=None, help="seconds per row (default: invaudit's)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    models, Xtr, ytr, Xte = _models()
    Xq = Xte[:args.rows]
    print(f"LightGBM / XGBoost in the trees form: {args.rows} rows, 30 features, time limit "
          f"{'default' if args.time_limit is None else f'{args.time_limit:g} s'}/row")
    for name, est in models.items():
        print(f"== {name}")
        for job in ("counterfactual", "margin"):
            r = _run(job, est, Xq, Xtr, args.time_limit)
            n = len(Xq)
            if job == "counterfactual":
                print(f"  read into the trees form: {r['adapt']:.2f} s ({r['trees']} trees, {r['boxes']} boxes)")
            print(f"  invaudit {job:14s} {r['wall'] / n:6.3f} s/row wall, {r['cpu'] / n:6.3f} s/row cpu, "
                  f"valid {r['valid'].mean():6.1%}, exact {r['exact'].mean():6.1%}, peak {r['rss']:.0f} MiB")
    print("load average (1, 5, 15 min):", " ".join(f"{v:.1f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
