"""Predicted removal effects against real leave-one-out refits (the independent reference)."""

from __future__ import annotations


import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import PowerTransformer, StandardScaler

from influence_helpers import data, fit
from invaudit.influence import (build_objective, group_influence, influence,
                                predicted_loss_changes, verify_loo)

LOO_CASES = [
    ("binary", 2, dict()),
    ("binary no intercept", 2, dict(fit_intercept=False)),
    ("binary balanced", 2, dict(class_weight="balanced")),
    ("binary dict weights", 2, dict(class_weight={0: 2.0, 1: 0.7})),
    ("multinomial", 3, dict()),
    ("multinomial no intercept", 3, dict(fit_intercept=False)),
    ("multinomial balanced", 3, dict(class_weight="balanced", C=0.5)),
]


@pytest.mark.parametrize("name,k,kwargs", LOO_CASES, ids=[c[0] for c in LOO_CASES])
def test_leverage_corrected_estimate_matches_real_refits(name, k, kwargs):
    X, y = data(n=110, d=4, k=k, seed=7)
    tr, te = np.arange(90), np.arange(90, 110)
    est, form = fit(LogisticRegression(max_iter=5000, **kwargs), X[tr], y[tr])
    obj = build_objective(form, X[tr], y[tr])
    rows = np.arange(0, 90, 3)
    v = verify_loo(obj, X[te][:6], y[te][:6], rows)
    assert v.estimate == "leverage-corrected" and v.n_retrained == rows.size
    assert v.pearson >= (0.99 if k == 2 else 0.98)
    assert 0.8 <= v.slope <= 1.25
    assert v.spearman >= 0.95


def test_leverage_correction_fixes_the_scale_of_the_first_order_estimate():
    X, y = data(n=100, d=6, k=3, seed=11)
    est, form = fit(Pipeline([("s", StandardScaler()), ("c", LogisticRegression(C=1.0))]), X[:80], y[:80])
    obj = build_objective(form, X[:80], y[:80])
    rows = np.arange(0, 80, 2)
    first = verify_loo(obj, X[80:86], y[80:86], rows, estimate="first-order")
    lev = verify_loo(obj, X[80:86], y[80:86], rows, estimate="leverage-corrected")
    np.testing.assert_allclose(first.actual, lev.actual)
    assert abs(lev.slope - 1) < abs(first.slope - 1)
    assert first.slope > 1.05  # first order underestimates the size of removals
    assert lev.pearson >= first.pearson


def test_refits_agree_with_a_plain_sklearn_refit():
    # verify_loo's refits (warm-started newton-cholesky on fixed features) against scikit-learn
    # refitting the whole model from scratch with its own solver
    X, y = data(n=70, d=3, k=3, seed=2)
    est, form = fit(LogisticRegression(tol=1e-12, max_iter=10_000), X[:60], y[:60])
    obj = build_objective(form, X[:60], y[:60])
    v = verify_loo(obj, X[60:], y[60:], [4, 17])
    for b, i in enumerate([4, 17]):
        keep = np.arange(60) != i
        ref = clone(est).fit(X[:60][keep], y[:60][keep])
        lp_ref = np.log(ref.predict_proba(X[60:]))[np.arange(10), y[60:]]
        lp_all = np.log(est.predict_proba(X[60:]))[np.arange(10), y[60:]]
        np.testing.assert_allclose(v.actual[:, b], -(lp_ref - lp_all), atol=1e-6)  # lbfgs precision


@pytest.mark.parametrize("k", [2, 3])
def test_influence_lists_are_the_extremes_of_the_full_matrix(k):
    X, y = data(n=120, d=4, k=k, seed=5)
    est, form = fit(LogisticRegression(), X[:100], y[:100])
    obj = build_objective(form, X[:100], y[:100])
    res = influence(obj, X[100:], y[100:], top=7, test_row_ids=np.arange(100, 120))
    full = predicted_loss_changes(obj, X[100:], y[100:])
    assert full.shape == (20, 100)
    for j, r in enumerate(res.rows):
        assert r.test_row == 100 + j and r.exact and r.estimate == "leverage-corrected"
        order = np.argsort(-full[j], kind="stable")
        pos = order[full[j][order] > 0][:7]
        neg = np.argsort(full[j], kind="stable")
        neg = neg[full[j][neg] < 0][:7]
        assert [e.train_row for e in r.helpful] == list(pos)
        assert [e.train_row for e in r.harmful] == list(neg)
        np.testing.assert_allclose([e.loss_change_if_removed for e in r.helpful], full[j, pos], rtol=1e-10)
        assert r.loss == pytest.approx(-np.log(est.predict_proba(X[100 + j:101 + j])[0, y[100 + j]]))
    recs = res.records()
    assert set(recs[0]) >= {"test_row", "helpful", "harmful", "exact", "estimate"}
    assert set(recs[0]["helpful"][0]) == {"train_row", "loss_change_if_removed"}
    assert res.top_rows(2).size <= 40


def test_without_test_labels_the_predicted_class_is_explained():
    X, y = data(n=60, d=3, k=2, seed=1)
    est, form = fit(LogisticRegression(), X[:50], y[:50])
    obj = build_objective(form, X[:50], y[:50])
    res = influence(obj, X[50:], None, top=3)
    assert [r.label for r in res.rows] == list(est.predict(X[50:]))
    assert all(r.label_source == "predicted" for r in res.rows)
    assert any("predicted class" in n for n in res.notes)


def _refit_loss(obj, X_train, X_test, y_test):
    fitted = obj.refit_without([], tol=1e-13, X_override=X_train)
    return obj.refit_losses(fitted, X_test, y_test)


@pytest.mark.parametrize("kind", ["plain", "scaled", "power"])
def test_feature_gradients_match_finite_differences_of_refits(kind):
    X, y = data(n=70, d=3, k=3 if kind == "scaled" else 2, seed=9)
    clf = LogisticRegression(C=0.7, class_weight="balanced" if kind == "plain" else None)
    est = {"plain": clf,
           "scaled": Pipeline([("s", StandardScaler()), ("c", clf)]),
           "power": Pipeline([("p", PowerTransformer()), ("c", clf)])}[kind]
    est, form = fit(est, X[:60], y[:60])
    obj = build_objective(form, X[:60], y[:60])
    res = influence(obj, X[60:62], y[60:62], top=2, features=True, estimate="first-order")
    r = res.rows[0]
    row = r.helpful[0].train_row
    g = np.asarray(r.helpful[0].feature_gradient)
    assert g.shape == (3,)
    base = _refit_loss(obj, obj.X, X[60:61], y[60:61])[0]
    fd = np.empty(3)
    for d in range(3):
        h = 1e-4 * (1 + abs(obj.X[row, d]))
        Xp, Xm = obj.X.copy(), obj.X.copy()
        Xp[row, d] += h
        Xm[row, d] -= h
        fd[d] = (_refit_loss(obj, Xp, X[60:61], y[60:61])[0]
                 - _refit_loss(obj, Xm, X[60:61], y[60:61])[0]) / (2 * h)
    assert np.isfinite(base)
    np.testing.assert_allclose(g, fd, rtol=2e-3, atol=1e-6 * max(1.0, np.abs(fd).max()))


def test_group_removal_newton_step_beats_the_first_order_sum():
    X, y = data(n=100, d=4, k=3, seed=12)
    est, form = fit(LogisticRegression(class_weight="balanced"), X[:85], y[:85])
    obj = build_objective(form, X[:85], y[:85])
    group = np.arange(0, 30, 3)
    g = group_influence(obj, X[85:], y[85:], group, refit=True)
    err_newton = np.abs(g.newton - g.actual)
    err_first = np.abs(g.first_order - g.actual)
    assert err_newton.mean() < err_first.mean()
    assert np.corrcoef(g.newton, g.actual)[0, 1] > 0.99
    s = g.summary()
    assert s["group_size"] == 10 and s["verification"]["n_retrained"] == 1
    assert len(g.records()) == 15
