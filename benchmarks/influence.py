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
5. The other families (issue 15; ``--families`` runs only this): trees (leaf refits: a single
   tree, forests, binary and 3-class boosting), KNN, GaussianNB, QDA (exact leave-one-out) and
   SVC (smoothed hinge), each on a small 3-class problem against real leave-one-out refits of
   the estimator (same parameters and ``random_state``) without each of a sample of training
   rows: Pearson / Spearman over all (test row, training row) pairs, the largest absolute error
   for the exact ones, the estimate's time and peak traced memory next to the refits' time. Then
   GaussianNB / QDA at scale: every training row's exact effect on 100 test rows, 20,000 rows.

Run by hand from the repository root:  PYTHONPATH=. python benchmarks/influence.py [--quick] [--families]
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
    ap.add_argument("--families", action="store_true", help="only section 5 (trees, KNN, NB, QDA, SVC)")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    n_sample = 2 if args.quick else 5
    if args.families:
        return families(quick=args.quick)

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
    families(quick=args.quick)
    return 0


# --- 5. the other families ---------------------------------------------------------------------

def _family_data(n, n_test, D, seed=0):
    """Three classes from a nonlinear score, 5% of the labels moved to another class."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n + n_test, D))
    s = X[:, 0] + 0.5 * X[:, 1] ** 2 - 0.4 * X[:, 2] + 0.3 * rng.normal(size=n + n_test)
    y = np.digitize(s, np.quantile(s, [0.33, 0.66]))
    flip = rng.choice(n, n // 20, replace=False)
    y[flip] = (y[flip] + 1) % 3
    return X[:n], y[:n], X[n:], y[n:]


def _family_models():
    from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis
    from sklearn.ensemble import (ExtraTreesClassifier, GradientBoostingClassifier,
                                  HistGradientBoostingClassifier, RandomForestClassifier)
    from sklearn.naive_bayes import GaussianNB
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC
    from sklearn.tree import DecisionTreeClassifier

    return [
        ("DecisionTree depth 4", lambda: DecisionTreeClassifier(max_depth=4, random_state=0), False),
        ("RandomForest 50x depth 4", lambda: RandomForestClassifier(n_estimators=50, max_depth=4, random_state=0), False),
        ("ExtraTrees 50x depth 4", lambda: ExtraTreesClassifier(n_estimators=50, max_depth=4, random_state=0), False),
        ("GradientBoosting 30x depth 2, binary", lambda: GradientBoostingClassifier(n_estimators=30, max_depth=2, random_state=0), True),
        ("GradientBoosting 30x depth 2, 3 classes", lambda: GradientBoostingClassifier(n_estimators=30, max_depth=2, random_state=0), False),
        ("HistGradientBoosting 30x depth 3, 3 classes", lambda: HistGradientBoostingClassifier(max_iter=30, max_depth=3, random_state=0), False),
        ("KNeighbors k=5", lambda: KNeighborsClassifier(n_neighbors=5), False),
        ("GaussianNB", lambda: GaussianNB(), False),
        ("QDA reg_param 0.1", lambda: QuadraticDiscriminantAnalysis(reg_param=0.1), False),
        ("SVC rbf (refits of its smoothed-hinge surrogate)", lambda: SVC(C=1.0), False),
    ] + _library_models()


def _library_models():
    """XGBoost / LightGBM when installed (the ``boost`` extra)."""
    out = []
    try:
        import xgboost

        out.append(("XGBoost 30x depth 2, 3 classes", lambda: xgboost.XGBClassifier(
            n_estimators=30, max_depth=2, learning_rate=0.3, n_jobs=1), False))
    except ImportError:
        print("  (xgboost not installed: skipped)")
    try:
        import lightgbm

        out.append(("LightGBM 30x depth 3, 3 classes", lambda: lightgbm.LGBMClassifier(
            n_estimators=30, max_depth=3, min_child_samples=5, verbose=-1, n_jobs=1), False))
    except ImportError:
        print("  (lightgbm not installed: skipped)")
    return out


def families(quick: bool = False) -> int:
    """Section 5 (module docstring)."""
    import tracemalloc

    from invaudit.influence import build_influence_objective, predicted_loss_changes
    from invaudit.influence._influence import _correlations
    from invaudit.models import adapt

    n, n_test, D = 200, 10, 5
    n_refit = 30 if quick else 60
    Xtr, ytr3, Xte, yte3 = _family_data(n, n_test, D)
    sample = np.random.default_rng(1).choice(n, n_refit, replace=False)
    print(f"5. families: {n} training rows x {D} features, 3 classes (5% labels moved), {n_test} test rows; real "
          f"leave-one-out refits without (a) each of {n_refit} random training rows and (b) each test row's top 3 "
          f"by |estimate|; correlations over all (test row, refitted row) pairs; 'same' = share of pairs where "
          f"the estimate equals the refit to 1e-9")
    with threadpool_limits(limits=1):
        for name, make, binary in _family_models():
            ytr, yte = (ytr3 == 2, yte3 == 2) if binary else (ytr3, yte3)
            ytr, yte = np.asarray(ytr, dtype=int), np.asarray(yte, dtype=int)
            est = make().fit(Xtr, ytr)
            form = adapt(est)
            tracemalloc.start()
            t = time.perf_counter()
            obj = build_influence_objective(form, Xtr, ytr)
            full = predicted_loss_changes(obj, Xte, yte)  # every training row, every test row
            est_s = time.perf_counter() - t
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            top = np.unique(np.argsort(-np.abs(full), axis=1, kind="stable")[:, :3])
            wanted = np.union1d(sample, top)
            t = time.perf_counter()
            base = obj.refit_losses(obj.refit_without(np.array([], dtype=np.intp)), Xte, yte)
            actual = {int(i): obj.refit_losses(obj.refit_without(np.array([i])), Xte, yte) - base for i in wanted}
            refit_s = (time.perf_counter() - t) / (wanted.size + 1)
            parts = []
            for label, rows in (("random", sample), ("top", top)):
                pred = full[:, rows]
                act = np.column_stack([actual[int(i)] for i in rows])
                pearson, spearman, _ = _correlations(pred, act)
                same = np.mean(np.abs(pred - act) <= 1e-9)
                err = f" max|err| {np.max(np.abs(pred - act)):.0e}" if obj.exact else ""
                parts.append(f"{label}: pearson {pearson:.2f} spearman {spearman:.2f} same {same:.0%}{err}")
            print(f"  {name} [{obj.method}]\n      {'; '.join(parts)}\n      estimate for all {n} rows "
                  f"{est_s * 1e3:.0f} ms, peak {peak / 2**20:.1f} MiB; one refit {refit_s * 1e3:.1f} ms "
                  f"(x {n} rows = {refit_s * n:.1f} s)")

    # GaussianNB / QDA at scale
    from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis
    from sklearn.naive_bayes import GaussianNB

    n, D = (5_000, 20) if quick else (20_000, 20)
    Xtr, ytr, Xte, yte = _family_data(n, 100, D, seed=2)
    for label, est in (("GaussianNB", GaussianNB()), ("QDA reg_param 0.1", QuadraticDiscriminantAnalysis(reg_param=0.1))):
        est.fit(Xtr, ytr)
        form = adapt(est)
        tracemalloc.start()
        t = time.perf_counter()
        obj = build_influence_objective(form, Xtr, ytr)
        res = influence(obj, Xte, yte, top=10)
        el = time.perf_counter() - t
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        with threadpool_limits(limits=1):  # small refits: one BLAS thread is their best case on a busy machine
            t = time.perf_counter()
            for i in range(3):
                obj.refit_without(np.array([i]))
            refit = (time.perf_counter() - t) / 3
        print(f"  {label} exact leave-one-out, {n:,} x {D}, 3 classes, every row ranked for 100 test rows: "
              f"{el:.2f} s, peak {peak / 2**20:.0f} MiB (exact={res.exact}); refits {refit * 1e3:.1f} ms each x {n:,} = "
              f"{refit * n:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
