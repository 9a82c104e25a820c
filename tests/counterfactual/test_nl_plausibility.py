"""Plausibility figures against a direct computation: mean distance to the k nearest
target-class training rows (numpy), and the inlier call of a LocalOutlierFactor fitted here."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import LocalOutlierFactor

from invaudit.counterfactual.nonlinear import counterfactuals_nonlinear_with_extras, plausibility
from invaudit.errors import InputError
from invaudit.models import adapt


def _setup():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(90, 3))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    est = LogisticRegression().fit(X, y)
    return est, X, y


@pytest.mark.parametrize("norm", ["l2", "l1", "linf"])
def test_matches_a_direct_computation(norm):
    est, X, y = _setup()
    form = adapt(est)
    rng = np.random.default_rng(0)
    Q = rng.normal(size=(6, 3)) * 2
    Q[2] = np.nan
    t = np.array([0, 1, 1, 0, 1, 0])
    w = np.array([1.0, 2.0, 0.5])
    out = plausibility(form, Q, t, X, y, k=4, norm=norm, weights=w)
    ordn = {"l2": 2, "l1": 1, "linf": np.inf}[norm]
    metric = {"l2": "euclidean", "l1": "manhattan", "linf": "chebyshev"}[norm]
    assert not out["evaluated"][2] and np.isnan(out["knn_distance"][2]) and not out["inlier"][2]
    for i in [0, 1, 3, 4, 5]:
        ref = X[y == t[i]]
        d = np.sort(np.linalg.norm(w * (ref - Q[i]), ord=ordn, axis=1))[:4].mean()
        assert out["knn_distance"][i] == pytest.approx(d, rel=1e-12)
        lof = LocalOutlierFactor(n_neighbors=20, novelty=True, metric=metric).fit(ref * w)
        assert out["inlier"][i] == (lof.predict((Q[i] * w)[None])[0] == 1)
        assert out["lof_score"][i] == pytest.approx(lof.score_samples((Q[i] * w)[None])[0])


def test_labels_default_to_the_model_and_inputs_are_checked():
    est, X, y = _setup()
    form = adapt(est)
    Q = X[:3] + 0.1
    t = form.predict_index(Q)
    a = plausibility(form, Q, t, X, None, k=3)
    b = plausibility(form, Q, t, X, form.predict_index(X), k=3)
    assert np.allclose(a["knn_distance"], b["knn_distance"])
    with pytest.raises(InputError):
        plausibility(form, Q, t, X[:, :2], y)
    with pytest.raises(InputError):
        plausibility(form, Q, t, X, y, norm="l3")


def test_reported_for_linear_results_too():
    est, X, y = _setup()
    form = adapt(est)
    Xq = X[:5]
    b, ex = counterfactuals_nonlinear_with_extras(form, Xq, target="other", X_train=X,
                                                  y_train_index=y)
    assert b.exact.all()
    p = ex["plausibility"]
    assert p["evaluated"].all() and np.all(p["knn_distance"] > 0)
    assert ex["feature_importance"].shape == Xq.shape
