"""Linear margins against independent references (LP / SLSQP per class region, brute force)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from margin_helpers import Box, linear_form, region_distance, sklearn_linear_form, weighted

from invaudit.margins import margins
from invaudit.margins._common import dual_norm

NORMS = ["l2", "l1", "linf"]


def _problem(seed, K, D, n=3):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(K, D))
    b = rng.normal(size=K)
    X = rng.normal(size=(n, D))
    return W, b, X, rng


def _check_verified(form, X, batch):
    ok = np.isfinite(batch.margin)
    P = X[ok] + batch.perturbation[ok]
    pred = form.predict_index(X[ok])
    after = form.predict_index(P)
    assert np.all(after != pred)
    assert np.array_equal(after, batch.nearest_index[ok])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), K=st.integers(3, 5), D=st.integers(2, 5),
       norm=st.sampled_from(NORMS))
def test_multiclass_margin_is_the_nearest_class_region(seed, K, D, norm):
    W, b, X, _ = _problem(seed, K, D)
    form = linear_form(W, b)
    batch = margins(form, X, norm=norm)
    assert batch.exact.all()
    _check_verified(form, X, batch)
    w = np.ones(D)
    for i, x in enumerate(X):
        p = batch.predicted_index[i]
        refs = {j: region_distance(W, b, x, j, norm) for j in range(K) if j != p}
        exact = min(refs.values())
        assert batch.margin[i] == pytest.approx(exact, rel=1e-6, abs=1e-9)
        assert batch.lower_bound[i] == pytest.approx(batch.margin[i])
        # the pairwise hyperplane distance only bounds each class region from below
        for j, ref in refs.items():
            pair = (x @ (W[p] - W[j]) + b[p] - b[j]) / dual_norm(W[p] - W[j], w, norm)
            assert pair <= ref * (1 + 1e-7) + 1e-9
        assert batch.perturbation_norm[i] == pytest.approx(batch.margin[i], rel=1e-6, abs=1e-8)
        assert weighted(batch.perturbation[i], w, norm) == pytest.approx(batch.perturbation_norm[i], rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), K=st.integers(2, 4), D=st.integers(2, 5),
       norm=st.sampled_from(NORMS))
def test_boxes_and_weights_match_the_reference(seed, K, D, norm):
    W, b, X, rng = _problem(seed, K, D)
    if K == 2:  # also a binary (one-row) model
        W, b = W[:1], b[:1]
    lower = X - rng.uniform(0, 1.5, size=X.shape)
    upper = X + rng.uniform(0, 1.5, size=X.shape)
    frozen = rng.random(D) < 0.3
    lower[:, frozen] = X[:, frozen]
    upper[:, frozen] = X[:, frozen]
    w = rng.uniform(0.3, 3.0, size=D)
    form = linear_form(W, b)
    batch = margins(form, X, norm=norm, constraints=Box(lower, upper, w))
    assert batch.exact.all()
    Wf, bf = form.W_full, form.b_full
    for i, x in enumerate(X):
        p = batch.predicted_index[i]
        ref = min(region_distance(Wf, bf, x, j, norm, w, lower[i] - x, upper[i] - x)
                  for j in range(Wf.shape[0]) if j != p)
        if np.isinf(ref):
            assert np.isinf(batch.margin[i])
            assert batch.nearest_index[i] == -1
            continue
        assert batch.margin[i] == pytest.approx(ref, rel=1e-6, abs=1e-9)
        z = x + batch.perturbation[i]
        assert np.all(z >= lower[i]) and np.all(z <= upper[i])
        assert np.all(batch.perturbation[i][frozen] == 0.0)
    _check_verified(form, X, batch)


@pytest.mark.parametrize("norm", NORMS)
def test_binary_logistic_regression_is_the_dual_norm_formula(norm):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 6))
    y = (X @ rng.normal(size=6) + 0.3 * rng.normal(size=200) > 0).astype(int)
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression().fit(X, y)
    form = sklearn_linear_form(clf)
    batch = margins(form, X, norm=norm)
    q = {"l2": 2, "l1": np.inf, "linf": 1}[norm]
    expected = np.abs(clf.decision_function(X)) / np.linalg.norm(clf.coef_[0], q)
    np.testing.assert_allclose(batch.margin, expected, rtol=1e-10)
    assert batch.exact.all()
    _check_verified(form, X, batch)


def test_dense_grid_in_two_dimensions():
    """Brute force: no grid point nearer than the margin is predicted otherwise, and one within
    a grid cell of it is."""
    rng = np.random.default_rng(3)
    W, b = rng.normal(size=(4, 2)), rng.normal(size=4)
    form = linear_form(W, b)
    h = 0.008
    g = np.arange(-3, 3, h)
    G = np.stack(np.meshgrid(g, g), axis=-1).reshape(-1, 2)
    gp = form.predict_index(G)
    X = rng.uniform(-1.5, 1.5, size=(6, 2))
    for norm in NORMS:
        batch = margins(form, X, norm=norm)
        for i, x in enumerate(X):
            dist = {"l2": np.linalg.norm(G - x, axis=1), "l1": np.abs(G - x).sum(1),
                    "linf": np.abs(G - x).max(1)}[norm]
            other = gp != batch.predicted_index[i]
            nearest = dist[other].min()
            assert nearest >= batch.margin[i] - 1e-12
            assert nearest <= batch.margin[i] + 2 * h


def test_sklearn_models_and_pipelines():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    from invaudit.models.linear import from_estimator

    rng = np.random.default_rng(4)
    X = rng.normal(size=(150, 4)) * [1, 10, 0.1, 3] + [0, 5, 1, -2]
    y = rng.integers(0, 3, size=150)
    X[:, 0] += y
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = [LogisticRegression(max_iter=1000).fit(X, y),
                  LinearSVC().fit(X, y),
                  make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)]
    for est in models:
        form = from_estimator(est)
        batch = margins(form, X[:10], norm="l2")
        assert batch.exact.all()
        _check_verified(form, X[:10], batch)
        Wf, bf = form.W_full, form.b_full
        for i in range(3):
            p = batch.predicted_index[i]
            ref = min(region_distance(Wf, bf, X[i], j, "l2") for j in range(3) if j != p)
            assert batch.margin[i] == pytest.approx(ref, rel=1e-6)


def test_everything_frozen_is_unreachable():
    W, b, X, _ = _problem(5, 3, 3)
    form = linear_form(W, b)
    batch = margins(form, X, constraints=Box(X, X, np.ones(3)))
    assert np.all(np.isinf(batch.margin)) and batch.exact.all()
    recs = batch.records(form.classes)
    assert all(r["margin"] is None and r["perturbation"] is None and r["nearest_class"] is None for r in recs)


@pytest.mark.parametrize("norm", NORMS)
def test_agrees_with_the_counterfactual_solver(norm):
    """The counterfactual solver's target "other" is the same problem solved another way (dual
    QP / LP), with the real Constraints object."""
    cf = pytest.importorskip("invaudit.counterfactual")
    W, b, X, rng = _problem(6, 4, 5, n=8)
    form = linear_form(W, b)
    cons = cf.Constraints.build(X, immutable=np.array([1, 0, 0, 0, 0], bool),
                                increase_only=np.array([0, 1, 0, 0, 0], bool),
                                data_lower=X.min(0) - 0.5, data_upper=X.max(0) + 0.5,
                                scale=rng.uniform(0.5, 2, size=5))
    for c in (None, cons):
        batch = margins(form, X, norm=norm, constraints=c)
        res = cf.counterfactuals(form, X, target="other", norm=norm, constraints=c)
        found = res.status == "found"
        np.testing.assert_allclose(res.distance[found], batch.margin[found], rtol=1e-6, atol=1e-9)
        assert np.all(np.isinf(batch.margin[res.status == "infeasible"]))


def test_a_form_that_disagrees_with_its_estimator_is_caught():
    """The rows' classes come from the estimator's own predict, and nothing unverified is
    reported as exact (here the form's intercepts are deliberately off)."""
    W, b, X, _ = _problem(7, 3, 4, n=200)
    est = linear_form(W, b).estimator
    form = linear_form(W, b + np.array([0.4, 0.0, -0.3]), estimator=est)
    batch = margins(form, X)
    np.testing.assert_array_equal(batch.predicted_index, est.predict(X))
    ok = np.all(np.isfinite(batch.perturbation), axis=1)
    assert np.all(est.predict(X[ok] + batch.perturbation[ok]) != batch.predicted_index[ok])
    assert np.all(batch.exact == ok)
    assert not ok.all()  # some rows could not be verified and say so
    assert all("unverified" in m for m in batch.method[~ok])
    assert np.all(np.isnan(batch.margin[~ok])) and np.all(np.isnan(batch.lower_bound[~ok]))
