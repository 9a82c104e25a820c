"""The dispatcher: input checks, one batch class for every form (JSON-ready records), the
linear hand-off, empty and already-qualifying batches, and the bundled sample models."""

from __future__ import annotations

import json
import warnings

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import PowerTransformer
from sklearn.svm import SVC, LinearSVC
from sklearn.tree import DecisionTreeClassifier

from invaudit.counterfactual import Constraints, CounterfactualBatch, counterfactuals
from invaudit.counterfactual.nonlinear import (
    counterfactuals_nonlinear,
    counterfactuals_nonlinear_with_extras,
)
from invaudit.errors import InputError, UnsupportedModelError
from invaudit.models import adapt
from test_nl_refs import verified


def _data():
    rng = np.random.default_rng(9)
    X = rng.lognormal(size=(80, 3))
    y = (np.log(X[:, 0]) - np.log(X[:, 1]) > 0).astype(int)
    return X, y


def test_input_checks():
    X, y = _data()
    form = adapt(DecisionTreeClassifier(max_depth=3, random_state=0).fit(X, y))
    Xq = X[:2]
    bad = [
        dict(target=np.array([0, 5])),
        dict(target="others"),
        dict(target=np.array([0.5, 1.0])),
        dict(target=np.array([0, 1]), norm="l3"),
        dict(target=np.array([0, 1]), confidence=1.5),
        dict(target=np.array([0, 1]), constraints=object()),
        dict(target=np.array([0, 1]), constraints=Constraints.none(X[:3])),
        dict(target=np.array([0, 1]), X_train=X[:, :2]),
        dict(target=np.array([0, 1]), X_train=X, y_train_index=y[:5]),
        dict(target=np.array([0, 1]), manifold=object()),
    ]
    for kw in bad:
        with pytest.raises(InputError):
            counterfactuals_nonlinear(form, Xq, **kw)
    with pytest.raises(InputError):
        counterfactuals_nonlinear(form, Xq[:, :2], target=np.array([0, 1]))
    with pytest.raises(InputError):
        counterfactuals_nonlinear(form, np.array([[np.nan, 1.0, 1.0]]), target=np.array([0]))


def test_confidence_needs_probabilities():
    X, y = _data()
    svc = adapt(SVC(probability=False).fit(X, y))
    assert svc.kind == "kernel"
    with pytest.raises(InputError):
        counterfactuals_nonlinear(svc, X[:2], target=np.array([0, 1]), confidence=0.7)
    pipe = adapt(Pipeline([("p", PowerTransformer()), ("c", LinearSVC())]).fit(X, y))
    assert pipe.kind == "invertible-linear"
    with pytest.raises(InputError):
        counterfactuals_nonlinear(pipe, X[:2], target=np.array([0, 1]), confidence=0.7)
    # without a confidence both work, by the predicted class alone
    for form, est in ((svc, svc.estimator), (pipe, pipe.estimator)):
        t = 1 - form.predict_index(X[:3])
        b = counterfactuals_nonlinear(form, X[:3], target=t, X_train=X)
        for i in np.flatnonzero(b.status == "found"):
            assert verified(est, b.x_cf[i], int(t[i])) if hasattr(est, "predict_proba") else (
                form.predict_index(b.x_cf[i:i + 1])[0] == t[i])
        assert (b.status == "found").sum() >= 2


def test_unknown_form_is_refused():
    class Odd:
        kind = "quantum"
        n_features = 3
        n_classes = 2
    with pytest.raises(UnsupportedModelError):
        counterfactuals_nonlinear(Odd(), np.zeros((1, 3)), target=np.array([0]))


def test_linear_forms_are_handed_to_the_exact_solver():
    X, y = _data()
    form = adapt(LogisticRegression().fit(X, y))
    t = 1 - form.predict_index(X[:4])
    a = counterfactuals_nonlinear(form, X[:4], target=t)
    b = counterfactuals(form, X[:4], target=t)
    assert np.allclose(a.x_cf, b.x_cf) and a.exact.all()


def test_empty_and_already_target_batches():
    X, y = _data()
    form = adapt(DecisionTreeClassifier(max_depth=3, random_state=0).fit(X, y))
    b = counterfactuals_nonlinear(form, np.zeros((0, 3)), target=np.zeros(0, dtype=int))
    assert isinstance(b, CounterfactualBatch) and len(b) == 0
    o = form.predict_index(X[:3])
    b, ex = counterfactuals_nonlinear_with_extras(form, X[:3], target=o)
    assert list(b.status) == ["already-target"] * 3 and b.exact.all()
    assert ex["feature_importance"] is None
    assert list(ex["backing"]) == ["the row already qualifies"] * 3


@pytest.mark.parametrize("name,data", [("breast_cancer_tree", "breast_cancer"),
                                       ("breast_cancer_power", "breast_cancer"),
                                       ("digits_mlp", "digits"), ("wine_forest", "wine")])
def test_sample_models_records_are_json_ready(samples, name, data):
    est = joblib.load(samples / f"{name}.joblib")
    form = adapt(est)
    test = np.load(samples / f"{data}_test.npz")
    train = np.load(samples / f"{data}_train.npz")
    Xq = test["X"][:3]
    t = (form.predict_index(Xq) + 1) % form.n_classes
    b, ex = counterfactuals_nonlinear_with_extras(form, Xq, target=t, X_train=train["X"],
                                                  y_train_index=train["y"])
    assert (b.status == "found").all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(3):
            assert verified(est, b.x_cf[i], int(t[i]))
    recs = b.records(form.classes, [0, 1, 2], feature_names=form.feature_names)
    json.dumps(recs)
    assert {r["method"] for r in recs} and all(r["status"] == "found" for r in recs)
    assert ex["plausibility"]["evaluated"].all()


def test_all_frozen_rows_are_certified_unreachable_for_every_form():
    X, y = _data()
    for est in (SVC(probability=True, random_state=0), DecisionTreeClassifier(max_depth=3)):
        form = adapt(est.fit(X, y))
        Xq = X[:2]
        t = 1 - form.predict_index(Xq)
        cons = Constraints.build(Xq, immutable=np.ones(3, dtype=bool))
        b = counterfactuals_nonlinear(form, Xq, target=t, constraints=cons)
        assert list(b.status) == ["infeasible"] * 2
        assert np.all(np.isnan(b.x_cf)) and not b.exact.any()
