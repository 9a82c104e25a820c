"""Margins of composite classifiers (issue 15), against references independent of the solvers:

- one sigmoid calibrator over a linear model: the calibrated log-odds ``logit(predict_proba)``
  is affine, so the margin is ``|z(x)| / ||grad z||_dual`` with ``z`` and its gradient read from
  the estimator's own ``predict_proba`` (finite differences of an affine function);
- tree composites: brute force over the cells the member trees' split points cut (every cell is
  one prediction of the estimator);
- smooth composites in 2-D: a dense grid of points the estimator predicts; the solver's verified
  margin is never above the nearest grid point predicted otherwise (plus the grid spacing).
"""

from __future__ import annotations

import itertools
import warnings
from functools import lru_cache

import numpy as np
import pytest
from scipy.special import logit
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import AdaBoostClassifier, BaggingClassifier, StackingClassifier, VotingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier

from invaudit.margins import margins
from invaudit.models import adapt
from invaudit.models.trees import float32_split_point

ORD = {"l2": 2, "l1": 1, "linf": np.inf}
DUAL = {"l2": 2, "l1": np.inf, "linf": 1}


def _quiet_fit(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est.fit(X, y)


# --- exactly linear composites ------------------------------------------------------------------

def _affine_logodds(est, x, scales):
    """``z(x) = logit p1(x)`` and its gradient from the estimator alone (central differences of
    an affine function, steps of one unit of each feature's scale)."""
    def z(P):
        return logit(est.predict_proba(P)[:, 1])

    E = np.diag(scales)
    g = (z(x + E) - z(x - E)) / (2 * scales)
    return float(z(x[None])[0]), g


_SCALES = np.array([1e-5, 1.0, 1e4])


@lru_cache(maxsize=None)
def _calibrated_linear_models():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 3))
    y = (X @ [1.0, -0.6, 0.4] + 0.2 * rng.normal(size=150) > 0).astype(int)
    X = X * _SCALES
    return X, [_quiet_fit(est, X, y) for est in (
        CalibratedClassifierCV(make_pipeline(StandardScaler(), LinearSVC()), ensemble=False, cv=3),
        CalibratedClassifierCV(make_pipeline(StandardScaler(), LogisticRegression()), method="temperature",
                               ensemble=False, cv=3))]


@pytest.mark.parametrize("norm", ["l2", "l1", "linf"])
def test_calibrated_linear_margins_are_exact_and_equal_the_estimators_own_geometry(norm):
    X, models = _calibrated_linear_models()
    scales = _SCALES
    for est in models:
        form = adapt(est)
        assert form.kind == "linear"
        Xq = X[:12]
        batch = margins(form, Xq, norm=norm)
        assert batch.exact.all()
        for i, x in enumerate(Xq):
            z, g = _affine_logodds(est, x, scales)
            ref = abs(z) / np.linalg.norm(g, ord=DUAL[norm])
            assert batch.margin[i] == pytest.approx(ref, rel=1e-6)
            assert est.predict((x + batch.perturbation[i])[None])[0] != est.predict(x[None])[0]


# --- tree composites ----------------------------------------------------------------------------

def _cuts(est, d):
    cuts = [[] for _ in range(d)]
    feats = getattr(est, "estimators_features_", [None] * len(est.estimators_))
    for m, fs in zip(est.estimators_, feats):
        for t in getattr(m, "estimators_", [m]):
            tr = t.tree_
            inner = tr.children_left != -1
            for f, thr in zip(tr.feature[inner], float32_split_point(tr.threshold[inner])):
                cuts[int(fs[f]) if fs is not None else int(f)].append(float(thr))
    return [np.unique(c) for c in cuts]


def cell_reference(est, cuts, x, norm, pred=None, target=None):
    """Brute force over the products of cells: the closed distance from ``x`` to the nearest one
    the estimator predicts other than ``pred`` (or as ``target``)."""
    cells = []
    for c in cuts:
        a = np.concatenate([[-np.inf], c])
        b = np.concatenate([c, [np.inf]])
        mid = np.where(np.isfinite(a) & np.isfinite(b), (a + b) / 2, np.where(np.isfinite(b), b - 1.0, a + 1.0))
        mid[~np.isfinite(a) & ~np.isfinite(b)] = 0.0
        cells.append((a, b, mid))
    combos = np.array(list(itertools.product(*[range(len(a)) for a, _, _ in cells])))
    d = len(cuts)
    pts = np.column_stack([cells[f][2][combos[:, f]] for f in range(d)])
    lo = np.column_stack([cells[f][0][combos[:, f]] for f in range(d)])
    hi = np.column_stack([cells[f][1][combos[:, f]] for f in range(d)])
    cls = np.searchsorted(est.classes_, est.predict(pts))
    ok = cls != pred if target is None else cls == target
    closed = np.clip(x, lo[ok], hi[ok])
    dist = np.linalg.norm(closed - x, ord=ORD[norm], axis=1)
    return float(dist.min()) if dist.size else np.inf


TREE_COMPOSITES = {
    "adaboost-2": (lambda: AdaBoostClassifier(DecisionTreeClassifier(max_depth=2), n_estimators=5, random_state=0), 2),
    "adaboost-3": (lambda: AdaBoostClassifier(DecisionTreeClassifier(max_depth=2), n_estimators=4, random_state=0), 3),
    "bagging": (lambda: BaggingClassifier(DecisionTreeClassifier(max_depth=2), n_estimators=4, max_features=2,
                                          random_state=0), 3),
    "voting": (lambda: VotingClassifier([("a", DecisionTreeClassifier(max_depth=2, random_state=0)),
                                         ("b", DecisionTreeClassifier(max_depth=3, random_state=1))],
                                        voting="soft", weights=[2, 1]), 2),
}


def _tree_data(K, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(120, 3))
    y = (X[:, 0] + X[:, 1] ** 2 > 0.5).astype(int)
    if K == 3:
        y = y + (X[:, 2] > 0.6)
    return X * np.array([1e-4, 1.0, 1e3]), y


@pytest.mark.parametrize("name", sorted(TREE_COMPOSITES))
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_tree_composite_margins_match_a_brute_force_over_cells(name, norm):
    make, K = TREE_COMPOSITES[name]
    X, y = _tree_data(K)
    est = _quiet_fit(make(), X, y)
    form = adapt(est)
    assert form.kind == "trees"
    cuts = _cuts(est, 3)
    Xq = X[:6]
    batch = margins(form, Xq, norm=norm, time_limit=10)
    pred = form.predict_index(Xq)
    for i, x in enumerate(Xq):
        ref = cell_reference(est, cuts, x, norm, pred=pred[i])
        m = batch.margin[i]
        tol = 1e-9 * max(1.0, ref) + 1e-6 * np.abs(x).max() * 1e-6
        assert est.predict((x + batch.perturbation[i])[None])[0] != est.classes_[pred[i]]
        assert m >= ref - tol and batch.lower_bound[i] <= ref + tol
        if batch.exact[i]:
            assert m == pytest.approx(ref, rel=1e-6, abs=tol)
    assert batch.exact.mean() >= 0.5


# --- smooth composites: 2-D grid reference ---------------------------------------------------------

def _mlp():
    return MLPClassifier((8,), max_iter=300, random_state=0)


SMOOTH_2D = {
    "voting": lambda: VotingClassifier([("lr", LogisticRegression()), ("mlp", _mlp())], voting="soft",
                                       weights=[1, 2]),
    "stacking": lambda: StackingClassifier([("lr", LogisticRegression()), ("mlp", _mlp())], cv=2),
    "calibrated": lambda: CalibratedClassifierCV(_mlp(), cv=2),
}


def grid_reference(est, x, pred, R=2.5, n=161):
    """The nearest point of a ``n x n`` grid of half-width ``R`` around ``x`` that the estimator
    predicts other than ``pred`` (an upper bound on the margin), and the grid spacing."""
    t = np.linspace(-R, R, n)
    G = np.stack(np.meshgrid(t, t), axis=-1).reshape(-1, 2) + x
    other = est.predict(G) != pred
    dist = np.linalg.norm(G[other] - x, axis=1)
    return (float(dist.min()) if dist.size else np.inf), t[1] - t[0]


@lru_cache(maxsize=None)
def smooth_2d(name):
    """``(fitted model, X)``: a 3-class problem in 2-D (shared with the counterfactual tests)."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(120, 2))
    y = (X[:, 0] ** 2 + X[:, 1] > 0.4).astype(int) + (X[:, 0] > 1.0)
    return _quiet_fit(SMOOTH_2D[name](), X, y), X


@pytest.mark.parametrize("name", sorted(SMOOTH_2D))
def test_smooth_composite_margins_are_verified_and_never_above_a_grid(name):
    est, X = smooth_2d(name)
    form = adapt(est)
    assert form.kind == "differentiable"
    Xq = X[:4]
    batch = margins(form, Xq, norm="l2")
    assert not batch.exact.any()
    for i, x in enumerate(Xq):
        pred = est.predict(x[None])[0]
        ref, h = grid_reference(est, x, pred)
        m = batch.margin[i]
        assert np.isfinite(m)
        assert est.predict((x + batch.perturbation[i])[None])[0] != pred
        assert np.linalg.norm(batch.perturbation[i]) == pytest.approx(m, rel=1e-12)
        assert m <= ref + h, (i, m, ref)
        lb = batch.lower_bound[i]
        assert np.isnan(lb) or lb <= m
