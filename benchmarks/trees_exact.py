"""Benchmark: exact tree-ensemble margins and counterfactuals across feature scales (issue 12).

Run by hand (not by pytest)::

    .venv/bin/python benchmarks/trees_exact.py [--rows 200] [--time-limit 10]

For a RandomForest and a GradientBoosting model (binary, 4 features, small trees) fitted on the
same data rescaled by 1e-5, 1 and 1e5, it prints per solver (L2 margin, L2 counterfactual to the
next class): the share of rows answered ``exact: true``, milliseconds per row, and the peak
Python heap during the call (``tracemalloc``; the HiGHS solver's own C++ memory is not counted,
so the process's peak resident set size is printed once at the end).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier  # noqa: E402

from invaudit.counterfactual.nonlinear import counterfactuals_nonlinear  # noqa: E402
from invaudit.margins import margins  # noqa: E402
from invaudit.models import adapt  # noqa: E402


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = (X[:, 0] + 0.7 * X[:, 1] ** 2 - 0.4 * X[:, 2] * X[:, 3] > 0.3).astype(int)
    return X, y


def _measure(fn):
    tracemalloc.start()
    t = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - t
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, elapsed, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--time-limit", type=float, default=10.0)
    args = ap.parse_args()
    X0, y = _data(600)
    Xq0 = _data(args.rows, seed=1)[0]
    models = {
        "RandomForest(10 trees, depth 4)": lambda: RandomForestClassifier(
            n_estimators=10, max_depth=4, random_state=0),
        "GradientBoosting(20 trees, depth 3)": lambda: GradientBoostingClassifier(
            n_estimators=20, max_depth=3, random_state=0),
    }
    print(f"{'model':38s} {'scale':>6s} {'solver':15s} {'exact':>7s} {'ms/row':>8s} {'peak MiB':>9s}")
    for name, make in models.items():
        for scale in (1e-5, 1.0, 1e5):
            X, Xq = X0 * scale, Xq0 * scale
            est = make().fit(X, y)
            form = adapt(est)
            n = len(Xq)
            b, el, peak = _measure(lambda: margins(form, Xq, norm="l2", time_limit=args.time_limit))
            print(f"{name:38s} {scale:6.0e} {'margin L2':15s} {b.exact.mean():7.1%} "
                  f"{1e3 * el / n:8.1f} {peak / 2**20:9.1f}")
            t = (form.predict_index(Xq) + 1) % form.n_classes
            c, el, peak = _measure(lambda: counterfactuals_nonlinear(
                form, Xq, target=t, norm="l2", time_limit=args.time_limit))
            found = c.status == "found"
            print(f"{name:38s} {scale:6.0e} {'counterfact. L2':15s} {c.exact[found].mean():7.1%} "
                  f"{1e3 * el / n:8.1f} {peak / 2**20:9.1f}"
                  + ("" if found.all() else f"   ({int((~found).sum())} rows not found)"))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident set size of the process: {rss:.0f} MiB")


if __name__ == "__main__":
    main()
