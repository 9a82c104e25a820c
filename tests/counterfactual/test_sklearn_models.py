"""Real scikit-learn models: binary and multinomial LogisticRegression, LinearSVC, and pipelines
with a StandardScaler folded into W, b. References: SLSQP / linprog on the folded weights, and
the estimators' own predictions at every returned point."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from cf_helpers import form_from_sklearn, ref_l2, ref_lp
from invaudit.counterfactual import Constraints, counterfactuals, spread


@pytest.fixture(scope="module")
def cancer():
    X, y = load_breast_cancer(return_X_y=True)
    clf = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=1000))]).fit(X, y)
    return X, clf


@pytest.fixture(scope="module")
def wine():
    X, y = load_wine(return_X_y=True)
    lr = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=1000))]).fit(X, y)
    svc = Pipeline([("scale", StandardScaler()), ("clf", LinearSVC())]).fit(X, y)
    return X, lr, svc


def _verify(clf, r, cons, conf):
    f = r.status == "found"
    assert f.any()
    pred = clf.predict(r.x_cf[f])
    assert np.array_equal(pred, clf.classes_[r.target_index[f]])
    if conf is not None:
        p = clf.predict_proba(r.x_cf[f])[np.arange(f.sum()), r.target_index[f]]
        assert np.all(p >= conf)
    if cons is not None:
        assert np.all(r.x_cf[f] >= cons.lower[f]) and np.all(r.x_cf[f] <= cons.upper[f])


@pytest.mark.parametrize("bounded", [False, True])
def test_breast_cancer_pipeline_l2(cancer, bounded):
    X, clf = cancer
    form = form_from_sklearn(clf, X)
    rows = X[:8]
    cons = None
    if bounded:
        cons = Constraints.build(rows, data_lower=X.min(0), data_upper=X.max(0), scale=spread(X, "mad"))
    r = counterfactuals(form, rows, target="other", confidence=0.9, constraints=cons)
    _verify(clf, r, cons, 0.9)
    assert np.all(r.exact)
    for i in range(3):
        ref = ref_l2(form.W, form.b, rows[i], r.target_index[i], 0.9,
                     None if cons is None else cons.lower[i], None if cons is None else cons.upper[i],
                     None if cons is None else cons.weights, starts=3, extra_start=r.x_cf[i])
        assert ref is not None and r.distance[i] <= ref * (1 + 1e-6)


def test_breast_cancer_linf_with_std_scale(cancer):
    X, clf = cancer
    form = form_from_sklearn(clf, X)
    rows = X[10:14]
    cons = Constraints.build(rows, data_lower=X.min(0), data_upper=X.max(0), scale=spread(X, "std"))
    r = counterfactuals(form, rows, target="other", norm="linf", constraints=cons)
    _verify(clf, r, cons, None)
    for i in range(len(rows)):
        ref = ref_lp(form.W, form.b, rows[i], r.target_index[i], "linf", cons.lower[i], cons.upper[i],
                     cons.weights)
        assert r.distance[i] == pytest.approx(ref, rel=1e-7)


@pytest.mark.parametrize("conf", [None, 0.4, 0.8])
def test_wine_multinomial(wine, conf):
    X, lr, _ = wine
    form = form_from_sklearn(lr, X)
    rows = X[::30]
    r = counterfactuals(form, rows, target="other", confidence=conf)
    _verify(lr, r, None, conf)
    assert np.all(r.exact)
    for i in range(3):
        ref = ref_l2(form.W, form.b, rows[i], r.target_index[i], conf, starts=3)
        assert r.distance[i] <= ref * (1 + 1e-6) + 1e-9


@pytest.mark.parametrize("norm", ["l2", "l1", "linf"])
def test_wine_linear_svc(wine, norm):
    X, _, svc = wine
    form = form_from_sklearn(svc, X)
    assert form.link == "none"
    rows = X[5::40]
    cons = Constraints.build(rows, data_lower=X.min(0), data_upper=X.max(0))
    r = counterfactuals(form, rows, target="other", norm=norm, constraints=cons)
    _verify(svc, r, cons, None)
    assert np.all(r.exact)
    for i in range(len(rows)):
        if norm == "l2":
            ref = ref_l2(form.W, form.b, rows[i], r.target_index[i], None, cons.lower[i], cons.upper[i],
                         starts=3)
            assert r.distance[i] <= ref * (1 + 1e-6) + 1e-9
        else:
            ref = ref_lp(form.W, form.b, rows[i], r.target_index[i], norm, cons.lower[i], cons.upper[i])
            assert r.distance[i] == pytest.approx(ref, rel=1e-7)


def test_adapted_form_gives_the_same_answers(wine):
    from invaudit.models import adapt

    X, lr, _ = wine
    rows = X[:6]
    r1 = counterfactuals(adapt(lr), rows, target="other", confidence=0.7)
    r2 = counterfactuals(form_from_sklearn(lr, X), rows, target="other", confidence=0.7)
    assert np.array_equal(r1.target_index, r2.target_index)
    assert np.allclose(r1.x_cf, r2.x_cf, rtol=1e-9, atol=1e-9)
