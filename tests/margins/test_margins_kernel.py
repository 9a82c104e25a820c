"""Margins of SVC / NuSVC: verified upper bounds close to a dense grid of the estimator's own
predictions, certified Lipschitz lower bounds below it, never farther than the nearest training
row of another class."""

import warnings

import numpy as np
import pytest
from sklearn.datasets import make_blobs, make_moons
from sklearn.svm import SVC, NuSVC

from invaudit.counterfactual import Constraints
from invaudit.margins import margins
from invaudit.models import adapt


def _fit(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est.fit(X, y)


def _grid(est, X, pad, n=400):
    lo, hi = X.min(axis=0) - pad, X.max(axis=0) + pad
    g = np.stack(np.meshgrid(np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n)), -1).reshape(-1, 2)
    return g, est.predict(g), np.linalg.norm((hi - lo) / (n - 1))


@pytest.mark.parametrize("kernel", ["rbf", "sigmoid"])
def test_binary_margins_against_a_grid(kernel):
    X, y = make_moons(150, noise=0.25, random_state=2)
    est = _fit(SVC(C=3.0, gamma=2.0) if kernel == "rbf" else SVC(kernel="sigmoid", gamma=0.5, coef0=-0.5), X, y)
    form = adapt(est)
    rows = np.arange(0, 150, 19)
    mb = margins(form, X[rows], X_train=X)
    G, gp, step = _grid(est, X, 1.0)
    pred = est.predict(X)
    for k, i in enumerate(rows):
        d_grid = np.linalg.norm(G[gp != pred[i]] - X[i], axis=1).min()
        nearest = np.linalg.norm(X[pred != pred[i]] - X[i], axis=1).min()
        assert mb.margin[k] <= d_grid * 1.01 and mb.margin[k] >= d_grid - step
        assert mb.margin[k] <= nearest * (1 + 1e-9)
        assert 0 < mb.lower_bound[k] <= d_grid  # certified: below the true margin
    # every perturbation is verified by the estimator's own predict
    assert np.all(est.predict(X[rows] + mb.perturbation) != pred[rows])
    assert not mb.exact.any()


def test_multiclass_margins_and_a_frozen_feature():
    X, y = make_blobs(200, centers=3, cluster_std=1.8, random_state=4)
    est = _fit(NuSVC(nu=0.3, gamma=0.4), X, y)
    form = adapt(est)
    rows = np.arange(0, 200, 67)
    mb = margins(form, X[rows], X_train=X)
    G, gp, step = _grid(est, X, 2.0)
    pred = est.predict(X)
    for k, i in enumerate(rows):
        d_grid = np.linalg.norm(G[gp != pred[i]] - X[i], axis=1).min()
        assert mb.margin[k] <= 1.06 * d_grid + step
        assert mb.lower_bound[k] <= d_grid
    assert np.all(est.predict(X[rows] + mb.perturbation) != pred[rows])
    cons = Constraints.build(X[rows], immutable=np.array([True, False]))
    mf = margins(form, X[rows], constraints=cons, X_train=X)
    ok = np.isfinite(mf.margin)
    assert ok.any()
    assert np.all(mf.perturbation[ok, 0] == 0.0)
    assert np.all(est.predict(X[rows][ok] + mf.perturbation[ok]) != pred[rows][ok])
    assert np.all(mf.margin[ok] >= mb.margin[ok] * (1 - 1e-6) - 1e-9)  # a box only adds distance
