"""Evidence sources of mislabel triage (issue 18) against independent references."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.optimize import minimize
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.tree import DecisionTreeClassifier

from invaudit.models import adapt
from invaudit.triage import (fold_splits, knn_proba, mixture_weights, model_space, rank_mislabels,
                             recall_at)


def _fit(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y)
    return est, adapt(est)


def _blobs(n=90, d=3, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    X = rng.standard_normal((k, d))[y] * 2 + rng.standard_normal((n, d))
    noisy = np.where(rng.random(n) < 0.15, (y + 1) % k, y)
    return X, noisy


def _clustered(seed=0):
    """Classes that are unions of clusters: a linear model is wrong about this data."""
    X, y = make_classification(n_samples=500, n_features=10, n_informative=6, n_redundant=2, n_classes=3,
                               n_clusters_per_class=3, class_sep=1.5, random_state=seed)
    rng = np.random.default_rng(seed)
    rows = rng.choice(y.size, 50, replace=False)
    noisy = y.copy()
    noisy[rows] = (y[rows] + rng.integers(1, 3, rows.size)) % 3
    return X, noisy, np.isin(np.arange(y.size), rows)


def test_knn_agreement_is_brute_force_out_of_fold_vote():
    X, y = _blobs(n=60, k=3, seed=1)
    splits = fold_splits(y, 3, 4, seed=2)
    k = 7
    P = knn_proba(X, y, 3, splits, k=k, prior=1.0)
    expect = np.empty_like(P)
    for tr, te in splits:
        for i in te:  # brute force, one row at a time
            d = np.linalg.norm(X[tr] - X[i], axis=1)
            nb = tr[np.argsort(d, kind="stable")[:k]]
            counts = np.bincount(y[nb], minlength=3)
            expect[i] = (counts + 1 / 3) / (k + 1)
            # the row itself and the rows of its fold never vote
            assert i not in nb and not np.isin(nb, te).any()
    np.testing.assert_allclose(P, expect)
    np.testing.assert_allclose(P.sum(axis=1), 1.0)
    # and sklearn's own neighbour search agrees on the first fold
    tr, te = splits[0]
    idx = NearestNeighbors(n_neighbors=k).fit(X[tr]).kneighbors(X[te], return_distance=False)
    np.testing.assert_allclose(P[te], (np.stack([np.bincount(y[tr][r], minlength=3) for r in idx]) + 1 / 3) / (k + 1))


def test_knn_space_is_the_models_own_scaling_else_standardised():
    X, y = _blobs(n=60, seed=3)
    X = X * np.array([1.0, 100.0, 0.01]) + 5
    est, form = _fit(Pipeline([("s", MinMaxScaler()), ("c", LogisticRegression())]), X, y)
    Z, what = model_space(form, X)
    np.testing.assert_allclose(Z, est[:-1].transform(X), atol=1e-12)
    assert "own scaling" in what
    tree, tform = _fit(DecisionTreeClassifier(max_depth=2, random_state=0), X, y)
    Z, what = model_space(tform, X)
    np.testing.assert_allclose(Z, StandardScaler().fit_transform(X), atol=1e-12)
    assert what == "standardised features"
    r = rank_mislabels(form, X, y, method="knn", k=5, seed=1)
    np.testing.assert_allclose(r.score, -np.log(knn_proba(est[:-1].transform(X), y, 3, fold_splits(y, 3, 5, 1), k=5)[np.arange(60), y]))


@pytest.mark.parametrize("fitted", [True, False])
def test_reference_probabilities_are_cross_val_predict(fitted):
    X, y = _blobs(n=90, seed=4)
    est, form = _fit(LogisticRegression(), X, y)
    ref = Pipeline([("s", StandardScaler()), ("c", LogisticRegression(C=0.3))])
    if fitted:  # a fitted reference is cloned and refitted out of fold, never used as it is
        ref.fit(X[:10], y[:10])
    r = rank_mislabels(form, X, y, method="reference", reference=ref, n_folds=5, seed=7)
    P = cross_val_predict(clone(ref), X, y, method="predict_proba",
                          cv=StratifiedKFold(5, shuffle=True, random_state=7))
    np.testing.assert_allclose(r.score, -np.log(P[np.arange(90), y]), rtol=1e-8)
    np.testing.assert_array_equal(r.suggested, P.argmax(axis=1))
    np.testing.assert_allclose(r.source_proba["reference"], P, rtol=1e-8, atol=1e-12)


def test_mixture_weights_maximise_the_likelihood_of_the_given_labels():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    Ps = [rng.dirichlet(np.ones(3) * a, size=200) for a in (0.5, 1.0, 3.0)]
    Ps[0][np.arange(200), y] += 1.0  # the first source predicts the labels best
    Ps = [P / P.sum(axis=1, keepdims=True) for P in Ps]
    w = mixture_weights(Ps, y, iters=5000, tol=0)
    L = np.stack([P[np.arange(200), y] for P in Ps], axis=1)

    def nll(v):
        v = np.exp(v) / np.exp(v).sum()
        return -np.log(L @ v).sum()

    ref = minimize(nll, np.zeros(3), method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000})
    v = np.exp(ref.x) / np.exp(ref.x).sum()
    assert nll(np.log(np.maximum(w, 1e-300))) <= ref.fun + 1e-6
    np.testing.assert_allclose(w, v, atol=2e-3)
    assert w[0] == w.max() and np.isclose(w.sum(), 1.0)


def test_combined_beats_loss_ranking_on_clustered_classes():
    found = {"combined": [], "loss": []}
    for seed in (0, 1):
        X, noisy, wrong = _clustered(seed)
        est, form = _fit(Pipeline([("s", StandardScaler()), ("c", LogisticRegression(max_iter=2000))]), X, noisy)
        ref = DecisionTreeClassifier(min_samples_leaf=5, random_state=0)
        for m in found:
            r = rank_mislabels(form, X, noisy, method=m, seed=seed, reference=ref)
            found[m].append(recall_at(r.order, wrong, (0.1,))[0.1])
    comb, loss = np.mean(found["combined"]), np.mean(found["loss"])
    assert comb >= loss + 0.1, found


def test_combined_reports_each_source_and_is_deterministic():
    X, noisy, wrong = _clustered(3)
    est, form = _fit(LogisticRegression(max_iter=2000), X, noisy)
    ref = DecisionTreeClassifier(min_samples_leaf=5, random_state=0)
    a = rank_mislabels(form, X, noisy, method="combined", seed=5, reference=ref)
    b = rank_mislabels(form, X, noisy, method="combined", seed=5, reference=ref)
    assert a.method == "combined" and not a.exact  # its model source is approximate leave-one-out
    np.testing.assert_array_equal(a.order, b.order)
    np.testing.assert_array_equal(a.score, b.score)
    assert a.weights == b.weights and set(a.weights) == {"model", "knn", "reference"}
    assert np.isclose(sum(a.weights.values()), 1.0)
    rec = a.records(top=3)
    assert set(rec[0]["sources"]) == {"model", "knn", "reference"}
    i = rec[0]["train_row"]
    for s, v in rec[0]["sources"].items():
        assert v == pytest.approx(a.sources[s][i])
    assert a.summary()["source_weights"] == a.weights
    # the suggestion is the combined evidence's most probable class, so fixing helps
    fixed = a.fixed_labels(40)
    assert np.sum(fixed != noisy) <= 40
    c = rank_mislabels(form, X, noisy, method="combined", seed=6, reference=ref)
    assert not np.array_equal(a.score, c.score)  # the seed drives the folds
