"""Non-linear counterfactuals: invaudit against DiCE on the bundled sample models.

Run by hand (not by pytest), from the repository root, in an environment that has DiCE next to
numpy, scipy and scikit-learn (``pip install dice-ml pandas``):

    python benchmarks/counterfactual_nonlinear.py [--quick] [--dice-rows N]

Part 1 (speed targets): seconds per row of invaudit on every test row, with the default metric
(L2 in input units), validity (the estimator's own prediction confirms the point) and how many
answers are exact. Targets: a single tree under 1 ms per row; the digits MLP under 50 ms per row
with 100% validity.

Part 2 (against DiCE, random and genetic): the same rows, the same target class
("opposite" for binary models, the next class for multiclass ones), ranges from the training
data, distance in DiCE's own metric (L1 in units of each feature's MAD) for both tools. Printed:
seconds per row, validity, and the median ratio DiCE distance / invaudit distance over rows where
both found a valid point (>= 1: invaudit's point is no farther).

Part 3 (the manifold trade, Dombrowski et al.): on the digits MLP, the closest counterfactual
against the PCA / quantile latent-path ones: median L2 distance, the fraction the target class's
LocalOutlierFactor calls inliers, and the median distance to the 5 nearest target-class rows.
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

import joblib  # noqa: E402

from invaudit.counterfactual import Constraints, spread  # noqa: E402
from invaudit.counterfactual.nonlinear import (  # noqa: E402
    counterfactuals_nonlinear,
    counterfactuals_nonlinear_with_extras,
)
from invaudit.models import adapt  # noqa: E402

warnings.filterwarnings("ignore")
SAMPLES = ROOT / "sample_models"
MODELS = [("breast_cancer_tree", "breast_cancer"), ("breast_cancer_power", "breast_cancer"),
          ("digits_mlp", "digits"), ("wine_forest", "wine")]


def _load(name, data):
    est = joblib.load(SAMPLES / f"{name}.joblib")
    tr = np.load(SAMPLES / f"{data}_train.npz")
    te = np.load(SAMPLES / f"{data}_test.npz")
    return est, adapt(est), tr["X"], tr["y"], te["X"]


def _targets(form, X):
    o = form.predict_index(X)
    return (o + 1) % form.n_classes


def _timed(fn, repeats=1):
    best, out = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def part_speed(quick):
    print("\n== 1. invaudit alone: every test row, L2 in input units, --train given ==")
    print(f"{'model':22s} {'form':18s} {'rows':>5s} {'ms/row':>9s} {'valid':>7s} {'exact':>7s}  method")
    for name, data in MODELS:
        est, form, Xtr, ytr, Xte = _load(name, data)
        X = Xte[:60] if quick and name == "digits_mlp" else Xte
        t = _targets(form, X)
        counterfactuals_nonlinear(form, X[:2], target=t[:2], X_train=Xtr)  # warm-up (imports)
        el, b = _timed(lambda: counterfactuals_nonlinear(form, X, target=t, X_train=Xtr),
                       repeats=3 if form.kind == "trees" else 1)
        valid = (b.status == "found").mean()
        print(f"{name:22s} {form.kind:18s} {len(X):5d} {el / len(X) * 1e3:9.3f} {valid:7.1%} "
              f"{b.exact.mean():7.1%}  {b.method[0]}")


def _dice_run(est, names, Xtr, ytr_pred, Xq, targets, method, binary):
    import dice_ml
    import pandas as pd

    df = pd.DataFrame(Xtr, columns=names)
    df["target"] = ytr_pred
    data = dice_ml.Data(dataframe=df, continuous_features=list(names), outcome_name="target")
    model = dice_ml.Model(model=est, backend="sklearn")
    exp = dice_ml.Dice(data, model, method=method)
    out = []
    t0 = time.perf_counter()
    devnull = open(os.devnull, "w")
    old = sys.stderr
    sys.stderr = devnull  # DiCE draws a progress bar
    try:
        for i in range(len(Xq)):  # DiCE takes one desired class per call
            q = pd.DataFrame(Xq[i:i + 1], columns=names)
            kw = {"random_seed": 0} if method == "random" else {}
            try:
                res = exp.generate_counterfactuals(
                    q, total_CFs=1, desired_class="opposite" if binary else int(targets[i]), **kw)
                cfs = res.cf_examples_list[0].final_cfs_df
                out.append(None if cfs is None or len(cfs) == 0
                           else cfs[list(names)].to_numpy(dtype=np.float64)[0])
            except Exception:  # noqa: BLE001 - DiCE gives up on some rows; that is a miss
                out.append(None)
    finally:
        sys.stderr = old
        devnull.close()
    return (time.perf_counter() - t0) / len(Xq), out


def part_dice(quick, dice_rows):
    print("\n== 2. against DiCE: L1 in MAD units, data ranges (DiCE's own metric) ==")
    try:
        import dice_ml  # noqa: F401
        import pandas  # noqa: F401
    except ImportError:
        print("dice-ml (and pandas) are not installed here: part 2 skipped")
        return
    print(f"{'model':22s} {'tool':16s} {'s/row':>9s} {'ratio':>8s} {'valid':>7s} {'dist ratio':>11s}  note")
    for name, data in MODELS:
        est, form, Xtr, ytr, Xte = _load(name, data)
        m = min(dice_rows, len(Xte))
        Xq = Xte[:m]
        t = _targets(form, Xq)
        mad = spread(Xtr, "mad")
        cons = Constraints.build(Xq, data_lower=Xtr.min(0), data_upper=Xtr.max(0), scale=mad)
        el, b = _timed(lambda: counterfactuals_nonlinear(form, Xq, target=t, norm="l1",
                                                         constraints=cons, X_train=Xtr))
        ours = el / m
        print(f"{name:22s} {'invaudit':16s} {ours:9.4f} {'':>8s} {(b.status == 'found').mean():7.1%} "
              f"{'':>11s}  exact {b.exact.mean():.0%}, {b.method[0]}")
        names = [str(c) for c in (form.feature_names or [f"f{i}" for i in range(Xtr.shape[1])])]
        for method in (("random",) if quick else ("random", "genetic")):
            per_row, cfs = _dice_run(est, names, Xtr, form.predict(Xtr), Xq, t, method,
                                     form.n_classes == 2)
            ratios, valid = [], 0
            for i, x in enumerate(cfs):
                if x is None or form.predict_index(x[None])[0] != t[i]:
                    continue
                valid += 1
                if b.status[i] == "found" and b.distance[i] > 0:
                    ratios.append(float(np.sum(np.abs(x - Xq[i]) / mad)) / b.distance[i])
            note = f"min dist ratio {min(ratios):.3f}" if ratios else ""
            print(f"{'':22s} {'DiCE ' + method:16s} {per_row:9.4f} {per_row / ours:8.1f} "
                  f"{valid / m:7.1%} {np.median(ratios) if ratios else float('nan'):11.3f}  {note}")


def part_manifold(quick):
    print("\n== 3. the manifold trade on the digits MLP (target: the next class) ==")
    est, form, Xtr, ytr, Xte = _load("digits_mlp", "digits")
    X = Xte[:60] if quick else Xte[:200]
    t = _targets(form, X)
    print(f"{'counterfactual':24s} {'ms/row':>8s} {'valid':>7s} {'median L2':>10s} {'inliers':>8s} {'median kNN':>11s}")
    for man in (None, "pca", "quantile"):
        el, (b, ex) = _timed(lambda: counterfactuals_nonlinear_with_extras(
            form, X, target=t, X_train=Xtr, y_train_index=ytr, manifold=man))
        p = ex["plausibility"]
        ok = b.status == "found"
        print(f"{'closest' if man is None else 'manifold ' + man:24s} {el / len(X) * 1e3:8.1f} "
              f"{ok.mean():7.1%} {np.median(b.distance[ok]):10.3f} {p['inlier'][ok].mean():8.1%} "
              f"{np.median(p['knn_distance'][ok]):11.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rows, DiCE random only")
    ap.add_argument("--dice-rows", type=int, default=20, help="rows per model sent to DiCE")
    ap.add_argument("--only", choices=["speed", "dice", "manifold"], default=None)
    args = ap.parse_args(argv)
    if args.only in (None, "speed"):
        part_speed(args.quick)
    if args.only in (None, "dice"):
        part_dice(args.quick, 5 if args.quick else args.dice_rows)
    if args.only in (None, "manifold"):
        part_manifold(args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
