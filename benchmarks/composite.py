"""Composite classifiers (issue 15): the composed forms against the black-box search invaudit used
for them before, on the same rows and metric.

Run by hand (not by pytest), from the repository root:

    python benchmarks/composite.py [--rows 10]

Breast cancer (30 features, scaled pipelines where the members need them), one row of output per
model and command: seconds per row (wall and CPU), peak Python memory (tracemalloc), the share of
answers the estimator confirms, the share claimed exact, the median distance, and the median
ratio black-box distance / composed distance on the rows both answered (> 1: the composed form
finds closer points). Counterfactuals: target "other", L2 in units of each feature's standard
deviation; margins: L2 in the same units.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from invaudit.counterfactual import Constraints  # noqa: E402
from invaudit.counterfactual.nonlinear import counterfactuals_nonlinear  # noqa: E402
from invaudit.margins import margins  # noqa: E402
from invaudit.models import adapt  # noqa: E402
from invaudit.models.base import BlackBoxForm  # noqa: E402

warnings.filterwarnings("ignore")


def _measured(fn):
    tracemalloc.start()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
    tracemalloc.stop()
    return wall, cpu, peak, out


def _models():
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import AdaBoostClassifier, BaggingClassifier, StackingClassifier, VotingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC
    from sklearn.tree import DecisionTreeClassifier

    def sc(m):
        return make_pipeline(StandardScaler(), m)

    mlp = MLPClassifier((16,), max_iter=500, random_state=0)
    return {
        "Calibrated(LinearSVC), one calibrator": CalibratedClassifierCV(sc(LinearSVC()), ensemble=False),
        "Calibrated(MLP), cv=3": CalibratedClassifierCV(sc(mlp), cv=3),
        "AdaBoost(30 stumps)": AdaBoostClassifier(n_estimators=30, random_state=0),
        "Bagging(10 trees depth 4)": BaggingClassifier(DecisionTreeClassifier(max_depth=4), n_estimators=10,
                                                       max_features=0.7, random_state=0),
        "Voting soft(LR, MLP)": VotingClassifier([("lr", sc(LogisticRegression())), ("mlp", sc(mlp))],
                                                 voting="soft"),
        "Stacking(LR, MLP)": StackingClassifier([("lr", sc(LogisticRegression())), ("mlp", sc(mlp))], cv=3),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10)
    args = ap.parse_args()
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    X, y = load_breast_cancer(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    Xq = Xte[: args.rows]
    cons = Constraints.build(Xq, scale=Xtr.std(axis=0))
    print(f"breast cancer, {args.rows} rows, 30 features (L2 in std units)\n")
    print(f"{'model':40s} {'cmd':5s} {'form':15s} {'s/row':>6s} {'cpu/row':>7s} {'MiB':>5s} {'valid':>6s} "
          f"{'exact':>6s} {'median':>8s} {'bb/ours':>8s}")
    for name, est in _models().items():
        est.fit(Xtr, ytr)
        form = adapt(est)
        bb = BlackBoxForm(estimator=est, classes=np.asarray(est.classes_), n_features=X.shape[1])
        pred = est.predict(Xq)
        for cmd in ("cf", "mrg"):
            res = {}
            for label, f in (("ours", form), ("bb", bb)):
                if cmd == "cf":
                    def run(f=f):
                        return counterfactuals_nonlinear(f, Xq, target="other", norm="l2", constraints=cons,
                                                         X_train=Xtr)
                else:
                    def run(f=f):
                        return margins(f, Xq, norm="l2", constraints=cons, X_train=Xtr)
                wall, cpu, peak, out = _measured(run)
                if cmd == "cf":
                    pts, dist, exact = out.x_cf, out.distance, out.exact
                else:
                    pts, dist, exact = Xq + np.nan_to_num(out.perturbation), out.margin, out.exact
                ok = np.all(np.isfinite(pts), axis=1) & np.isfinite(dist)
                valid = ok & (est.predict(np.where(ok[:, None], pts, Xq)) != pred)
                res[label] = (wall, cpu, peak, valid, dist, exact)
            wall, cpu, peak, valid, dist, exact = res["ours"]
            both = valid & res["bb"][3]
            ratio = np.median(res["bb"][4][both] / dist[both]) if both.any() else np.nan
            print(f"{name:40s} {cmd:5s} {form.kind:15s} {wall / len(Xq):6.2f} {cpu / len(Xq):7.2f} {peak:5.0f} "
                  f"{valid.mean():6.0%} {np.mean(exact):6.0%} {np.median(dist[valid]) if valid.any() else np.nan:8.3f} "
                  f"{ratio:8.2f}")
            bw, bc, bp, bv, bd, _ = res["bb"]
            print(f"{'  (black-box search, before)':40s} {cmd:5s} {'black-box':15s} {bw / len(Xq):6.2f} "
                  f"{bc / len(Xq):7.2f} {bp:5.0f} {bv.mean():6.0%} {0:6.0%} "
                  f"{np.median(bd[bv]) if bv.any() else np.nan:8.3f}")


if __name__ == "__main__":
    main()
