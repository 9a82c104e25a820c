"""SVC / NuSVC (the kernel form): counterfactuals, margins and influence, measured.

Run by hand (not by pytest), from the repository root:

    python benchmarks/kernel.py [--quick]

Parts (each prints seconds per row, validity and peak Python memory, tracemalloc):

1. Counterfactuals on breast cancer (30 features, Pipeline(StandardScaler, SVC(probability=True)),
   target "other", L2 in units of each feature's standard deviation): the kernel form against
   the black-box search invaudit used for SVC before (same rows, same metric, distance ratio
   black-box / kernel), and the "never absurd" ratio (answer / nearest training row the model
   assigns another class; must be <= 1).
2. Against DiCE random and genetic (if dice-ml is installed): the same rows and target, L1 in
   MAD units with the training ranges (DiCE's own metric) for both tools.
3. Margins on the same model: seconds per row, validity, median margin and certified lower bound.
4. Influence (Koh & Liang smoothed hinge): Pearson / Spearman of predicted against real
   leave-one-out changes of the test loss, (a) refitting the surrogate (``verify_loo``) and
   (b) refitting scikit-learn's SVC itself (the test loss evaluated as the smoothed hinge of
   the refitted SVC's decision values), on a binary RBF SVC and a 3-class NuSVC (wine).
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from invaudit.counterfactual import Constraints, counterfactuals, spread  # noqa: E402
from invaudit.influence import build_objective, influence, verify_loo  # noqa: E402
from invaudit.influence._kernel import smooth_hinge  # noqa: E402
from invaudit.margins import margins  # noqa: E402
from invaudit.models import adapt  # noqa: E402
from invaudit.models.base import BlackBoxForm  # noqa: E402

warnings.filterwarnings("ignore")


def _measured(fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    el = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
    tracemalloc.stop()
    return el, peak, out


def _breast_cancer():
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    d = load_breast_cancer()
    Xtr, Xte, ytr, yte = train_test_split(d.data, d.target, test_size=0.3, random_state=0, stratify=d.target)
    est = make_pipeline(StandardScaler(), SVC(probability=True, random_state=0)).fit(Xtr, ytr)
    return est, list(d.feature_names), Xtr, ytr, Xte, yte


def part_counterfactuals(quick):
    print("== 1. counterfactuals, breast cancer, Pipeline(StandardScaler, SVC(probability=True)), "
          "L2 in std units ==")
    est, names, Xtr, ytr, Xte, yte = _breast_cancer()
    form = adapt(est)
    bb = BlackBoxForm(estimator=est, classes=form.classes, n_features=form.n_features)
    m = 15 if quick else 40
    Xq = Xte[:m]
    cons = Constraints.build(Xq, scale=spread(Xtr, "std"))
    counterfactuals(form, Xq[:2], target="other", X_train=Xtr, constraints=Constraints.build(
        Xq[:2], scale=spread(Xtr, "std")))  # warm-up (imports)
    el, peak, b = _measured(lambda: counterfactuals(form, Xq, target="other", X_train=Xtr, constraints=cons))
    el_bb, peak_bb, b_bb = _measured(lambda: counterfactuals(bb, Xq, target="other", X_train=Xtr,
                                                             constraints=cons))
    pred_tr = form.predict_index(Xtr)
    orig = form.predict_index(Xq)
    w = cons.weights
    nearest = np.array([np.linalg.norm((Xtr[pred_tr != o] - x) * w, axis=1).min() for x, o in zip(Xq, orig)])
    ok = b.status == "found"
    both = ok & (b_bb.status == "found")
    print(f"{'tool':24s} {'ms/row':>9s} {'peak MiB':>9s} {'valid':>7s} {'median dist':>12s}")
    print(f"{'invaudit kernel form':24s} {el / m * 1e3:9.1f} {peak:9.1f} {ok.mean():7.1%} "
          f"{np.median(b.distance[ok]):12.4f}")
    print(f"{'invaudit black box':24s} {el_bb / m * 1e3:9.1f} {peak_bb:9.1f} {(b_bb.status == 'found').mean():7.1%} "
          f"{np.median(b_bb.distance[b_bb.status == 'found']):12.4f}")
    ratio = b_bb.distance[both] / b.distance[both]
    print(f"distance ratio black box / kernel form: median {np.median(ratio):.2f}, min {ratio.min():.2f} "
          f"({both.sum()} rows)")
    na = b.distance[ok] / nearest[ok]
    print(f"never absurd: answer / nearest other-class training row: max {na.max():.3f}, median {np.median(na):.3f}")
    return est, names, Xtr, Xq, form


def part_dice(est, names, Xtr, Xq, form, quick):
    print("\n== 2. against DiCE (random, genetic): L1 in MAD units, training ranges ==")
    try:
        import dice_ml  # noqa: F401
        import pandas  # noqa: F401

        from counterfactual_nonlinear import _dice_run
    except ImportError:
        print("dice-ml (and pandas) are not installed here: part 2 skipped")
        return
    m = 5 if quick else 10
    Xd = Xq[:m]
    mad = spread(Xtr, "mad")
    cons = Constraints.build(Xd, data_lower=Xtr.min(0), data_upper=Xtr.max(0), scale=mad)
    el, peak, b = _measured(lambda: counterfactuals(form, Xd, target="other", norm="l1", constraints=cons,
                                                    X_train=Xtr))
    ours = b.distance
    print(f"{'tool':16s} {'s/row':>8s} {'peak MiB':>9s} {'valid':>7s} {'dist ratio (peer/ours)':>24s}")
    print(f"{'invaudit':16s} {el / m:8.3f} {peak:9.1f} {(b.status == 'found').mean():7.1%}")
    pred_tr = form.predict_index(Xtr)
    target = 1 - form.predict_index(Xd)
    for method in ("random", "genetic"):
        t0, peak0 = time.perf_counter(), None
        tracemalloc.start()
        per_row, pts = _dice_run(est, names, Xtr, pred_tr, Xd, target, method, True)
        peak0 = tracemalloc.get_traced_memory()[1] / 2 ** 20
        tracemalloc.stop()
        valid = np.array([p is not None and form.predict_index(p[None])[0] == t for p, t in zip(pts, target)])
        d = np.array([np.nan if p is None else float(np.sum(np.abs(p - x) / mad)) for p, x in zip(pts, Xd)])
        keep = valid & (b.status == "found")
        r = d[keep] / ours[keep]
        print(f"{'DiCE ' + method:16s} {per_row:8.3f} {peak0:9.1f} {valid.mean():7.1%} "
              f"{'median %.2f, min %.2f' % (np.median(r), r.min()) if keep.any() else '-':>24s}")
        del t0


def part_margins(form, Xtr, Xq):
    print("\n== 3. margins, same model and rows, L2 in input units ==")
    el, peak, mb = _measured(lambda: margins(form, Xq, X_train=Xtr))
    ok = np.isfinite(mb.margin)
    print(f"ms/row {el / len(Xq) * 1e3:.1f}, peak {peak:.1f} MiB, valid {ok.mean():.1%}, median margin "
          f"{np.median(mb.margin[ok]):.4g}, median certified lower bound {np.median(mb.lower_bound[ok]):.3g}")


def _svc_refit_check(est_factory, X, y, Xt, yt, obj, rows):
    """Predicted vs real changes of the test loss when scikit-learn's SVC is refitted without
    each row (the loss: the smoothed hinge of the refitted SVC's own decision values)."""
    form = obj.form

    def loss(est):
        e = est.steps[-1][1] if hasattr(est, "steps") else est
        old = e.decision_function_shape
        e.decision_function_shape = "ovo"
        d = est.decision_function(Xt)
        e.decision_function_shape = old
        V = -d[:, None] if d.ndim == 1 else d
        o = obj._side(yt)
        return np.sum(np.where(o != 0, smooth_hinge(o * V, obj.tau)[0], 0.0), axis=1)

    base = loss(est_factory().fit(X, form.classes[y]))
    actual = np.empty((len(Xt), len(rows)))
    for j, r in enumerate(rows):
        keep = np.ones(len(X), dtype=bool)
        keep[r] = False
        actual[:, j] = loss(est_factory().fit(X[keep], form.classes[y[keep]])) - base
    pred = obj.loss_changes(Xt, yt, obj.default_estimate, rows=rows)
    from scipy.stats import spearmanr

    return float(np.corrcoef(pred.ravel(), actual.ravel())[0, 1]), float(spearmanr(pred.ravel(), actual.ravel()).statistic)


def part_influence(quick):
    print("\n== 4. influence (smoothed hinge, temperature 0.1): predicted vs real leave-one-out ==")
    from sklearn.datasets import load_breast_cancer, load_wine
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC, NuSVC

    cases = []
    d = load_breast_cancer()
    cases.append(("breast cancer SVC rbf", lambda: make_pipeline(StandardScaler(), SVC(C=1.0)),
                  d.data[:200], d.target[:200], d.data[200:210], d.target[200:210]))
    w = load_wine()
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(w.target))
    cases.append(("wine NuSVC rbf (3 cls)", lambda: make_pipeline(StandardScaler(), NuSVC(nu=0.3)),
                  w.data[idx[:140]], w.target[idx[:140]], w.data[idx[140:150]], w.target[idx[140:150]]))
    print(f"{'case':24s} {'build s':>8s} {'rank s':>7s} {'pearson surrogate':>18s} {'spearman':>9s} "
          f"{'pearson SVC refit':>18s} {'spearman':>9s}")
    for name, factory, X, y, Xt, yt in cases:
        est = factory().fit(X, y)
        form = adapt(est)
        yi = form.predict_index(X) * 0 + np.searchsorted(form.classes, y)
        yti = np.searchsorted(form.classes, yt)
        el_b, _, obj = _measured(lambda: build_objective(form, X, yi))
        el_r, _, res = _measured(lambda: influence(obj, Xt, yti, top=10))
        rows = res.top_rows(10 if quick else 20)
        chk = verify_loo(obj, Xt, yti, rows)
        p_svc, s_svc = _svc_refit_check(factory, X, yi, Xt, yti, obj, rows)
        print(f"{name:24s} {el_b:8.2f} {el_r:7.2f} {chk.pearson:18.3f} {chk.spearman:9.3f} {p_svc:18.3f} {s_svc:9.3f}"
              f"   ({len(rows)} rows refitted x {len(Xt)} test rows)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    est, names, Xtr, Xq, form = part_counterfactuals(args.quick)
    part_dice(est, names, Xtr, Xq, form, args.quick)
    part_margins(form, Xtr, Xq)
    part_influence(args.quick)


if __name__ == "__main__":
    main()
