"""Counterfactual solver benchmark: invaudit against cvxpy + Clarabel and DiCE.

Run by hand (not by pytest), from the repository root, in an environment that has the peers
(``pip install cvxpy clarabel dice-ml pandas`` next to numpy, scipy, scikit-learn):

    python benchmarks/counterfactual.py [--quick]

It prints one table with seconds per row for each tool, the ratio, and the distance ratio
(peer distance / invaudit distance under the same metric; >= 1 means invaudit's point is no
farther away). Cases:

1. softmax with a confidence, D=10,000 features, K=100 classes (a LogisticRegression with fixed
   random weights): invaudit's exact solver vs the same convex program in cvxpy solved by
   Clarabel (``||x' - x||^2`` s.t. ``logsumexp(Wx'+b) - (Wx'+b)_t <= -log P``);
2. the breast-cancer model (``sample_models/breast_cancer_logreg.joblib`` if present, else the
   same Pipeline(StandardScaler, LogisticRegression) fitted on the same split) vs DiCE random and
   genetic, target "opposite", ranges from the training data, distance in DiCE's own metric
   (L1 in units of each feature's MAD) for both tools;
3. binary logistic regression throughput: 100,000 rows x 100 features.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from invaudit.counterfactual import Constraints, counterfactuals, spread  # noqa: E402
from invaudit.models import adapt  # noqa: E402

warnings.filterwarnings("ignore")


def _median_time(fn, repeats):
    times = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def _row(table, case, ours, peer_name, peer, dist_ratio, note=""):
    ratio = peer / ours if ours > 0 and np.isfinite(peer) else float("nan")
    table.append((case, ours, peer_name, peer, ratio, dist_ratio, note))


# ------------------------------------------------------------------------------------------
# 1. softmax, D = 10,000, K = 100, confidence P
# ------------------------------------------------------------------------------------------

def bench_softmax(table, quick):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    K, D, P = 100, 10_000, 0.9
    clf = LogisticRegression()
    clf.coef_ = rng.normal(size=(K, D)) / np.sqrt(D)
    clf.intercept_ = rng.normal(size=K)
    clf.classes_ = np.arange(K)
    clf.n_features_in_ = D
    form = adapt(clf)
    n = 20 if quick else 100
    X = rng.normal(size=(n, D))
    t = (form.predict_index(X) + 1) % K

    t0 = time.perf_counter()
    counterfactuals(form, X[:1], target=t[:1], confidence=P)   # per-model precomputation
    precompute = time.perf_counter() - t0
    el, r = _median_time(lambda: counterfactuals(form, X, target=t, confidence=P), 3)
    ours = el / n
    print(f"[softmax] precompute+first row {precompute:.3f} s; {n} rows: {ours * 1e3:.2f} ms/row; "
          f"exact {r.exact.mean():.0%}; median iterations {np.median(r.iterations):.0f}", file=sys.stderr)

    try:
        import cvxpy as cp
    except ImportError:
        _row(table, "softmax P=0.9, D=10k, K=100", ours, "cvxpy+Clarabel", float("nan"), float("nan"),
             "cvxpy not installed")
        return
    W, b = clf.coef_, clf.intercept_
    m = 1 if quick else 3
    times, ratios = [], []
    for i in range(m):
        xv = cp.Variable(D)
        s = W @ xv + b
        prob = cp.Problem(cp.Minimize(cp.sum_squares(xv - X[i])),
                          [cp.log_sum_exp(s) - s[int(t[i])] <= -np.log(P)])
        t0 = time.perf_counter()
        prob.solve(solver=cp.CLARABEL)
        times.append(time.perf_counter() - t0)
        d_peer = float(np.linalg.norm(xv.value - X[i]))
        ratios.append(d_peer / r.distance[i])
        print(f"[softmax] cvxpy+Clarabel row {i}: {times[-1]:.2f} s, status {prob.status}, "
              f"distance {d_peer:.10g} vs invaudit {r.distance[i]:.10g}", file=sys.stderr)
    rel = max(abs(q - 1) for q in ratios)
    _row(table, "softmax P=0.9, D=10k, K=100", ours, "cvxpy+Clarabel", float(np.mean(times)),
         float(np.mean(ratios)), f"precompute {precompute:.2f} s; max |dist ratio-1| {rel:.1e}")


# ------------------------------------------------------------------------------------------
# 2. breast cancer vs DiCE
# ------------------------------------------------------------------------------------------

def _cancer_model():
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    ds = load_breast_cancer()
    X, y = ds.data.astype(np.float64), ds.target
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    path = ROOT / "sample_models" / "breast_cancer_logreg.joblib"
    if path.exists():
        import joblib

        clf = joblib.load(path)   # our own sample file
        src = str(path.relative_to(ROOT))
    else:
        clf = Pipeline([("scale", StandardScaler()),
                        ("clf", LogisticRegression(max_iter=1000))]).fit(Xtr, ytr)
        src = "fitted here (sample file absent)"
    return clf, Xtr, Xte, src


def bench_dice(table, quick):
    clf, Xtr, Xte, src = _cancer_model()
    form = adapt(clf)
    mad = spread(Xtr, "mad")
    # invaudit answers every row of the data set in one call (what the CLI does); its time per
    # row is that call's time divided by the number of rows
    rows = np.vstack([Xte, Xtr])
    cons = Constraints.build(rows, data_lower=Xtr.min(0), data_upper=Xtr.max(0), scale=mad)
    el, r = _median_time(lambda: counterfactuals(form, rows, target="other", norm="l1",
                                                 constraints=cons), 7)
    ours = el / len(rows)
    print(f"[dice] model: {src}; invaudit {ours * 1e6:.1f} us/row, exact {r.exact.mean():.0%}",
          file=sys.stderr)
    try:
        import dice_ml
        import pandas as pd
    except ImportError:
        _row(table, "breast cancer, L1/MAD", ours, "DiCE", float("nan"), float("nan"),
             "dice-ml not installed")
        return
    names = [str(c) for c in getattr(clf, "feature_names_in_", [f"f{i}" for i in range(Xtr.shape[1])])]
    df = pd.DataFrame(Xtr, columns=names)
    df["target"] = form.predict(Xtr)
    data = dice_ml.Data(dataframe=df, continuous_features=names, outcome_name="target")
    model = dice_ml.Model(model=clf, backend="sklearn")
    m = 5 if quick else 20
    q = pd.DataFrame(rows[:m], columns=names)
    for method in ("random", "genetic"):
        exp = dice_ml.Dice(data, model, method=method)
        kw = {"random_seed": 0} if method == "random" else {}
        devnull = open(os.devnull, "w")
        old = sys.stderr
        sys.stderr = devnull          # DiCE prints a progress bar
        try:
            t0 = time.perf_counter()
            res = exp.generate_counterfactuals(q, total_CFs=1, desired_class="opposite", **kw)
            el = time.perf_counter() - t0
        finally:
            sys.stderr = old
            devnull.close()
        ratios = []
        for i, cf in enumerate(res.cf_examples_list):
            cfs = cf.final_cfs_df
            if cfs is None or len(cfs) == 0:
                continue
            x_cf = cfs[names].to_numpy(dtype=np.float64)[0]
            if form.predict(x_cf[None])[0] == form.predict(rows[i:i + 1])[0]:
                continue   # not a counterfactual
            d_peer = float(np.sum(np.abs(x_cf - rows[i]) / mad))
            ratios.append(d_peer / r.distance[i])
        _row(table, "breast cancer, L1/MAD, data ranges", ours, f"DiCE {method}", el / m,
             float(np.median(ratios)) if ratios else float("nan"),
             f"{len(ratios)}/{m} valid; min dist ratio {min(ratios):.3f}" if ratios else "none valid")


# ------------------------------------------------------------------------------------------
# 3. binary throughput
# ------------------------------------------------------------------------------------------

def bench_binary(table, quick):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    D = 100
    clf = LogisticRegression()
    clf.coef_ = rng.normal(size=(1, D))
    clf.intercept_ = np.array([0.3])
    clf.classes_ = np.array([0, 1])
    clf.n_features_in_ = D
    form = adapt(clf)
    X = rng.normal(size=(100_000, D))
    counterfactuals(form, X[:1000], target="other", confidence=0.8)   # warm-up
    el, r = _median_time(lambda: counterfactuals(form, X, target="other", confidence=0.8), 3 if quick else 5)
    table.append(("binary LR, 100,000 x 100, P=0.8", el / len(X), "(total)", el, float("nan"),
                  float("nan"), f"{el:.3f} s in total; exact {r.exact.mean():.0%}"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rows and repeats")
    ap.add_argument("--only", choices=["softmax", "dice", "binary"], default=None)
    args = ap.parse_args(argv)
    table = []
    if args.only in (None, "binary"):
        bench_binary(table, args.quick)
    if args.only in (None, "softmax"):
        bench_softmax(table, args.quick)
    if args.only in (None, "dice"):
        bench_dice(table, args.quick)
    head = ("case", "invaudit s/row", "peer", "peer s/row", "speed-up", "dist ratio", "note")
    print(f"{head[0]:<38} {head[1]:>14} {head[2]:>16} {head[3]:>11} {head[4]:>10} {head[5]:>10}  {head[6]}")
    for case, ours, pn, peer, ratio, dr, note in table:
        print(f"{case:<38} {ours:>14.3e} {pn:>16} {peer:>11.3e} {ratio:>10.0f} {dr:>10.3f}  {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
