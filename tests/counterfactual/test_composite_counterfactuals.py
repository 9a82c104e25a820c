"""Counterfactuals for composite classifiers (issue 15): every answer is confirmed by the
estimator's own ``predict`` (and ``predict_proba`` with a confidence); exact answers equal an
independent reference (the calibrated log-odds read from ``predict_proba``; a brute force over
the member trees' cells); smooth composites are never farther than a dense 2-D grid.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy.special import logit
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import AdaBoostClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier

from invaudit.counterfactual.nonlinear import counterfactuals_nonlinear
from invaudit.models import adapt

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "margins"))
from test_composite_margins import _cuts, _tree_data, cell_reference, smooth_2d  # noqa: E402


def _fit(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est.fit(X, y)


def test_calibrated_linear_counterfactuals_with_a_confidence_are_exact():
    rng = np.random.default_rng(3)
    scales = np.array([1e-5, 1.0, 1e5])
    X = rng.normal(size=(150, 3))
    y = (X @ [1.0, -0.6, 0.4] + 0.3 * rng.normal(size=150) > 0).astype(int)
    X = X * scales
    est = _fit(CalibratedClassifierCV(make_pipeline(StandardScaler(), LinearSVC()), ensemble=False, cv=3), X, y)
    form = adapt(est)
    assert form.kind == "linear"
    Xq = X[:10]
    target = 1 - est.predict(Xq)
    P = 0.8
    batch = counterfactuals_nonlinear(form, Xq, target=target, confidence=P, norm="l2")
    assert (batch.status == "found").all() and batch.exact.all()
    E = np.diag(scales)
    for i, x in enumerate(Xq):
        def z(Z):
            return logit(est.predict_proba(Z)[:, 1])
        g = (z(x + E) - z(x - E)) / (2 * scales)  # the calibrated log-odds is affine in x
        zt = logit(P) if target[i] == 1 else -logit(P)
        ref = abs(zt - z(x[None])[0]) / np.linalg.norm(g)
        assert batch.distance[i] == pytest.approx(ref, rel=1e-6)
        xc = batch.x_cf[i][None]
        assert est.predict(xc)[0] == target[i] and est.predict_proba(xc)[0, target[i]] >= P


@pytest.mark.parametrize("K", [2, 3])
def test_adaboost_counterfactuals_equal_a_brute_force_where_exact(K):
    X, y = _tree_data(K, seed=2)
    est = _fit(AdaBoostClassifier(DecisionTreeClassifier(max_depth=2), n_estimators=4, random_state=0), X, y)
    form = adapt(est)
    cuts = _cuts(est, 3)
    Xq = X[:5]
    pred = form.predict_index(Xq)
    target = (pred + 1) % K
    batch = counterfactuals_nonlinear(form, Xq, target=target, norm="l1", time_limit=10)
    assert batch.exact.mean() >= 0.5
    for i, x in enumerate(Xq):
        ref = cell_reference(est, cuts, x, "l1", target=target[i])
        if not np.isfinite(ref):
            assert batch.status[i] != "found"
            continue
        assert batch.status[i] == "found"
        assert est.predict(batch.x_cf[i][None])[0] == est.classes_[target[i]]
        assert batch.distance[i] >= ref * (1 - 1e-9) - 1e-12
        if batch.exact[i]:
            assert batch.distance[i] == pytest.approx(ref, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("name", ["voting", "stacking", "calibrated"])
def test_smooth_composite_counterfactuals_are_valid_and_never_farther_than_a_grid(name):
    est, X = smooth_2d(name)
    form = adapt(est)
    assert form.kind == "differentiable"
    Xq = X[:4]
    P = 0.6
    t = np.linspace(-3.0, 3.0, 161)
    G = np.stack(np.meshgrid(t, t), axis=-1).reshape(-1, 2)
    pred = np.searchsorted(est.classes_, est.predict(Xq))
    grids = [est.predict_proba(G + x) >= P for x in Xq]
    # per row, the other class the grid reaches most often at this confidence
    target = np.array([np.argmax(np.where(np.arange(3) == p, -1, g.sum(axis=0))) for p, g in zip(pred, grids)])
    batch = counterfactuals_nonlinear(form, Xq, target=target, confidence=P, norm="l2", X_train=X)
    for i, x in enumerate(Xq):
        ok = grids[i][:, target[i]]
        assert ok.any()
        assert batch.status[i] == "found" and not batch.exact[i]
        xc = batch.x_cf[i][None]
        assert est.predict(xc)[0] == est.classes_[target[i]]
        assert est.predict_proba(xc)[0, target[i]] >= P
        ref = np.linalg.norm(G[ok], axis=1).min()
        assert batch.distance[i] <= ref + (t[1] - t[0]), (i, batch.distance[i], ref)
