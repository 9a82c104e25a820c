"""Influence benchmark (issue 6): invaudit's time against the leave-one-out refits it replaces,
and the accuracy of its estimates against real refits.

1. Binary logistic regression, 100,000 training rows x 100 features: every training row ranked
   for each of 1,000 test rows (objective build included).
2. The digits multinomial sample model (LogisticRegression(max_iter=2000) on the raw pixels): every
   training row ranked for 1,000 test rows (the 450 test rows, repeated).
3. For both, the time of the leave-one-out refits the ranking replaces: a clone of the model
   refitted without one row, with the model's own settings, timed on a sample (with BLAS on its
   default threads and on one thread, the faster kept) and multiplied by the number of training
   rows. invaudit's time is wall-clock, best / median / range over repeated runs; turning the
   result into report records is timed separately.
4. Accuracy on the standardised wine data (multinomial, C=1): predicted against real
   leave-one-out changes for every training row and 10 test rows, first-order and
   leverage-corrected.

Run by hand from the repository root:  PYTHONPATH=. python benchmarks/influence.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sklearn.base import clone  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from threadpoolctl import threadpool_limits  # noqa: E402

from invaudit.influence import build_objective, influence, verify_loo  # noqa: E402
from invaudit.influence._parallel import n_workers  # noqa: E402
from invaudit.models.base import BlackBoxForm  # noqa: E402


def form_of(est, D):
    return BlackBoxForm(estimator=est, classes=est.classes_, n_features=D)


def time_influence(est, X, y, Xt, yt, repeats=1):
    """Wall-clock seconds of build_objective + influence (every training row ranked for every
    test row), each of ``repeats`` runs; and of turning the result into report records."""
    times, rec = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        obj = build_objective(form_of(est, X.shape[1]), X, y)
        res = influence(obj, Xt, yt, top=10)
        times.append(time.perf_counter() - t)
        t = time.perf_counter()
        res.records()
        rec.append(time.perf_counter() - t)
    return np.asarray(times), min(rec), obj, res


def time_refits(est, X, y, n_sample, seed=0):
    """Seconds per leave-one-out refit (a clone with the model's own settings), timed with
    BLAS on its default threads and on one thread; the faster is used, so the refits get
    their best case on a shared machine (multi-threaded BLAS can be many times slower on
    small problems when the cores are busy)."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(X.shape[0], size=n_sample, replace=False)
    keep = np.ones(X.shape[0], dtype=bool)

    def sample():
        t = time.perf_counter()
        for i in rows:
            keep[:] = True
            keep[i] = False
            clone(est).fit(X[keep], y[keep])
        return (time.perf_counter() - t) / n_sample

    per_refit = sample()
    with threadpool_limits(1):
        per_refit = min(per_refit, sample())
    return per_refit


def report(name, times, per_refit, n, target, records_s):
    total = per_refit * n
    best, med, worst = times.min(), np.median(times), times.max()
    print(f"{name}: invaudit best {best:.3f} s, median {med:.3f} s, range {best:.3f}-{worst:.3f} s "
          f"over {times.size} runs (target < {target:g} s: {'ok' if best < target else 'MISSED'}); "
          f"report records {records_s * 1e3:.0f} ms more; leave-one-out refits "
          f"{per_refit * 1e3:.0f} ms each x {n} rows = {total:,.0f} s (extrapolated); speed-up "
          f"{total / best:,.0f}x (median {total / med:,.0f}x)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer refits in the timing sample")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    n_sample = 2 if args.quick else 5

    # 1. binary, 100k x 100
    rng = np.random.default_rng(0)
    n, D = 100_000, 100
    w = rng.standard_normal(D) * 2.0 / np.sqrt(D)
    X = rng.standard_normal((n, D))
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-X @ w))).astype(int)
    Xt = rng.standard_normal((1000, D))
    yt = (rng.random(1000) < 1.0 / (1.0 + np.exp(-Xt @ w))).astype(int)
    est = LogisticRegression(max_iter=1000).fit(X, y)
    times, rec, obj, _ = time_influence(est, X, y, Xt, yt, repeats=3)
    report(f"binary logistic regression {n:,} x {D}, all rows ranked for 1,000 test rows "
           f"[{obj.method}, estimate {obj.default_estimate}]", times,
           time_refits(est, X, y, n_sample), n, 5.0, rec)

    # 2. digits multinomial sample model
    sys.path.insert(0, str(ROOT / "sample_models"))
    from build import split

    _, Xtr, Xte, ytr, yte = split("digits")
    est = LogisticRegression(max_iter=2000).fit(Xtr, ytr)
    Xt = np.vstack([Xte] * 3)[:1000]
    yt = np.concatenate([yte] * 3)[:1000]
    times, rec, obj, _ = time_influence(est, Xtr, ytr, Xt, yt, repeats=15)
    report(f"digits multinomial {Xtr.shape[0]} x {Xtr.shape[1]}, {len(est.classes_)} classes, "
           f"all rows ranked for 1,000 test rows [{n_workers()} worker(s)]", times,
           time_refits(est, Xtr, ytr, 2 * n_sample), Xtr.shape[0], 2.0, rec)

    # 4. accuracy: standardised wine, multinomial, C=1
    _, Xtr, Xte, ytr, yte = split("wine")
    est = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(C=1.0, max_iter=5000))])
    est.fit(Xtr, ytr)
    obj = build_objective(form_of(est, Xtr.shape[1]), Xtr, ytr)
    rows = np.arange(Xtr.shape[0])
    print(f"wine (standardised, multinomial, C=1): every one of {rows.size} training rows x "
          f"10 test rows against real leave-one-out refits")
    for estimate in ("first-order", "leverage-corrected"):
        v = verify_loo(obj, Xte[:10], yte[:10], rows, estimate=estimate)
        print(f"  {estimate:19s} pearson {v.pearson:.3f}  spearman {v.spearman:.3f}  "
              f"slope of real on predicted {v.slope:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
