"""Black boxes: every answer is confirmed by the estimator, honours the constraints, is no
farther than the nearest target-class reference row it could have walked to, and the search is
deterministic for a fixed seed."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier
from sklearn.svm import SVC

from invaudit.counterfactual import Constraints
from invaudit.counterfactual.nonlinear import (
    counterfactuals_nonlinear,
    counterfactuals_nonlinear_with_extras,
)
from invaudit.models import BlackBoxForm, adapt
from test_nl_refs import target_rows, verified


def _black_box(est, X):
    """Queried as a black box (SVC and KNN have forms of their own; these test the generic search)."""
    return BlackBoxForm(estimator=est, classes=est.classes_, n_features=X.shape[1])


@lru_cache(maxsize=None)
def _model(kind):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(120, 4))
    y = np.digitize(X[:, 0] + X[:, 1] ** 2 - X[:, 2], [-0.5, 1.0])
    est = KNeighborsClassifier(7) if kind == "knn" else SVC(probability=True, random_state=0)
    return est.fit(X, y), X


@pytest.mark.parametrize("kind", ["knn", "svc"])
@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_verified_and_no_farther_than_the_nearest_reference_row(kind, norm):
    est, X = _model(kind)
    form = _black_box(est, X)
    Xq = X[:5] + 0.01
    t = (form.predict_index(Xq) + 1) % 3
    b, ex = counterfactuals_nonlinear_with_extras(form, Xq, target=t, norm=norm, X_train=X)
    ordn = {"l2": 2, "l1": 1}[norm]
    for i in range(5):
        assert b.status[i] == "found"
        assert verified(est, b.x_cf[i], int(t[i]))
        assert not b.exact[i] and b.method[i] == "segment-bisection+local-search"
        nearest = target_rows(est, X, int(t[i]), 1, Xq[i])[0]
        assert b.distance[i] <= np.linalg.norm(nearest - Xq[i], ord=ordn) + 1e-12
        assert "upper bound" in ex["backing"][i]
    assert np.all(np.isnan(ex["lower_bound"]))


def test_constraints_confidence_and_determinism():
    est, X = _model("svc")
    form = _black_box(est, X)
    Xq = X[10:14]
    t = (form.predict_index(Xq) + 2) % 3
    cons = Constraints.build(Xq, immutable=np.array([False, False, True, False]),
                             data_lower=X.min(0), data_upper=X.max(0))
    b1 = counterfactuals_nonlinear(form, Xq, target=t, confidence=0.5, constraints=cons,
                                   X_train=X, seed=3)
    b2 = counterfactuals_nonlinear(form, Xq, target=t, confidence=0.5, constraints=cons,
                                   X_train=X, seed=3)
    assert np.array_equal(b1.x_cf, b2.x_cf, equal_nan=True)
    for i in np.flatnonzero(b1.status == "found"):
        assert b1.x_cf[i, 2] == Xq[i, 2]
        assert np.all(b1.x_cf[i] >= cons.lower[i]) and np.all(b1.x_cf[i] <= cons.upper[i])
        assert verified(est, b1.x_cf[i], int(t[i]), 0.5)
    assert np.sum(b1.status == "found") >= 2


def test_without_training_rows_the_batch_and_random_search_are_used():
    est, X = _model("knn")
    form = _black_box(est, X)
    Xq = X[:8]
    t = (form.predict_index(Xq) + 1) % 3
    b = counterfactuals_nonlinear(form, Xq, target=t)
    found = b.status == "found"
    assert found.sum() >= 6
    for i in np.flatnonzero(found):
        assert verified(est, b.x_cf[i], int(t[i]))
