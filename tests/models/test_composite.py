"""Composite classifiers (issue 15): each is read as the form its members compose to, and the
form reproduces the estimator.

References are the estimator itself: ``predict_proba`` (to 1e-9) on data rows, on rows moved
onto / beside every tree split, at feature scales 1e-5..1e5; input Jacobians against central
finite differences of ``predict_proba``; the exact linear forms against the calibrator's and the
linear model's own fitted numbers.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import (
    AdaBoostClassifier,
    BaggingClassifier,
    ExtraTreesClassifier,
    RandomForestClassifier,
    StackingClassifier,
    VotingClassifier,
)
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.tree import DecisionTreeClassifier, ExtraTreeClassifier

from invaudit.errors import UnsupportedModelError
from invaudit.models import adapt
from invaudit.models.blackbox import PREDICT_ONLY
from invaudit.models.capabilities import capabilities
from invaudit.models.composite import CompositeBlackBoxForm, CompositeForm, CompositeLinearForm, CompositeTreesForm
from invaudit.models.trees import float32_split_point

SCALES = np.array([1e-5, 1.0, 1e3, 1e5])


def _data(K, n=120, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = (X[:, 0] + 0.8 * X[:, 1] ** 2 - 0.4 * X[:, 2] > 0.3).astype(int)
    if K == 3:
        y = y + (X[:, 3] > 0.7)
    return X * SCALES, y


def _sc(est):
    return make_pipeline(StandardScaler(), est)


def _mlp():
    return MLPClassifier((6,), max_iter=150, random_state=0)


TREE_MAKERS = {
    "adaboost": lambda: AdaBoostClassifier(DecisionTreeClassifier(max_depth=2), n_estimators=8, random_state=0),
    "adaboost-stumps": lambda: AdaBoostClassifier(n_estimators=12, random_state=0),
    "bagging": lambda: BaggingClassifier(DecisionTreeClassifier(max_depth=3), n_estimators=5, max_features=3,
                                         bootstrap_features=True, random_state=0),
    "bagging-forests": lambda: BaggingClassifier(RandomForestClassifier(3, max_depth=3, random_state=0),
                                                 n_estimators=3, max_features=2, random_state=1),
    "soft-voting": lambda: VotingClassifier(
        [("t", DecisionTreeClassifier(max_depth=3, random_state=0)),
         ("f", RandomForestClassifier(4, max_depth=3, random_state=0)),
         ("e", ExtraTreesClassifier(3, max_depth=3, random_state=0))], voting="soft", weights=[1, 2, 0.5]),
    "hard-voting": lambda: VotingClassifier(
        [("a", DecisionTreeClassifier(max_depth=3, random_state=0)),
         ("b", ExtraTreeClassifier(max_depth=4, random_state=1)),
         ("c", DecisionTreeClassifier(max_depth=2, random_state=2))], weights=[1, 1, 1.5]),
}

SMOOTH_MAKERS = {
    "calibrated-cv": lambda: CalibratedClassifierCV(_sc(LogisticRegression()), cv=3),
    "calibrated-mlp": lambda: CalibratedClassifierCV(_sc(_mlp()), cv=2),
    "calibrated-temperature": lambda: CalibratedClassifierCV(_sc(LogisticRegression()), method="temperature", cv=2),
    "soft-voting": lambda: VotingClassifier([("lr", _sc(LogisticRegression())), ("mlp", _sc(_mlp()))],
                                            voting="soft", weights=[1, 3]),
    "bagging": lambda: BaggingClassifier(_sc(LogisticRegression()), n_estimators=4, max_features=3,
                                         bootstrap_features=True, random_state=0),
    "stacking": lambda: StackingClassifier([("lr", _sc(LogisticRegression())), ("mlp", _sc(_mlp()))],
                                           passthrough=True, cv=2),
    "stacking-mlp-final": lambda: StackingClassifier([("lr", _sc(LogisticRegression())), ("svc", _sc(LinearSVC()))],
                                                     final_estimator=MLPClassifier((4,), max_iter=150, random_state=0),
                                                     cv=2),
    "nested": lambda: VotingClassifier([("cal", CalibratedClassifierCV(_sc(LogisticRegression()), cv=2)),
                                        ("mlp", _sc(_mlp()))], voting="soft"),
    "pipeline-voting": lambda: make_pipeline(StandardScaler(), VotingClassifier(
        [("lr", LogisticRegression()), ("mlp", _mlp())], voting="soft")),
    "calibrated-svc": lambda: CalibratedClassifierCV(_sc(SVC()), cv=2),  # binary: the rbf decision value
}


@lru_cache(maxsize=None)
def _fit_named(table, name, K):
    X, y = _data(K)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (TREE_MAKERS if table == "trees" else SMOOTH_MAKERS)[name]().fit(X, y), X


def _split_rows(est, X, rng):
    """Data rows and rows moved onto, one ulp above and below split points of every member tree."""
    cuts = [[] for _ in range(X.shape[1])]
    members = getattr(est, "estimators_", [])
    feats = getattr(est, "estimators_features_", [None] * len(members))
    for m, fs in zip(members, feats):
        trees = getattr(m, "estimators_", [m])
        for t in trees:
            tr = t.tree_
            inner = tr.children_left != -1
            for f, thr in zip(tr.feature[inner], float32_split_point(tr.threshold[inner])):
                cuts[int(fs[f]) if fs is not None else int(f)].append(thr)
    rows = [X[i] for i in range(0, len(X), 8)]
    for _ in range(30):
        x = X[rng.integers(len(X))].copy()
        for f, c in enumerate(cuts):
            if c and rng.random() < 0.7:
                t = c[rng.integers(len(c))]
                x[f] = [t, np.nextafter(t, np.inf), np.nextafter(t, -np.inf)][rng.integers(3)]
        rows.append(x)
    return np.array(rows)


@pytest.mark.parametrize("K", [2, 3])
@pytest.mark.parametrize("name", sorted(TREE_MAKERS))
def test_tree_composites_are_trees_forms_with_the_estimators_probabilities(name, K):
    est, X = _fit_named("trees", name, K)
    form = adapt(est)
    assert isinstance(form, CompositeTreesForm) and form.kind == "trees"
    Xq = _split_rows(est, X, np.random.default_rng(K))
    P = form.proba_from_leaves(form.leaf_index(Xq))
    if name == "hard-voting":  # no predict_proba: the weighted vote shares decide the class
        assert not form.has_proba
        np.testing.assert_array_equal(form.classes[np.argmax(P, axis=1)], est.predict(Xq))
        return
    np.testing.assert_allclose(P, est.predict_proba(Xq), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(form.classes[np.argmax(P, axis=1)], est.predict(Xq))
    # every row lies in the box of the leaf it is routed to
    leaves = form.leaf_index(Xq)
    for t, tree in enumerate(form.trees):
        lo, hi = tree.lower[leaves[:, t]], tree.upper[leaves[:, t]]
        assert np.all((lo < Xq) & (Xq <= hi))


def test_a_scaled_pipeline_of_adaboost_is_read_as_trees():
    X, y = _data(2)
    est = make_pipeline(StandardScaler(), AdaBoostClassifier(n_estimators=6, random_state=0)).fit(X, y)
    form = adapt(est)
    assert form.kind == "trees" and form.preprocessing == ["StandardScaler"]
    np.testing.assert_allclose(form.proba_from_leaves(form.leaf_index(X)), est.predict_proba(X), atol=1e-9)


def _fd_jacobian(est, X, rel=1e-6):
    h = rel * np.maximum(np.abs(X), SCALES)
    J = np.empty((X.shape[0], len(est.classes_), X.shape[1]))
    for j in range(X.shape[1]):
        E = np.zeros_like(X)
        E[:, j] = h[:, j]
        J[:, :, j] = (est.predict_proba(X + E) - est.predict_proba(X - E)) / (2 * h[:, j])[:, None]
    return J


@pytest.mark.parametrize("name, K", [(name, 3) for name in sorted(SMOOTH_MAKERS) if name != "calibrated-svc"]
                         + [(name, 2) for name in ("calibrated-cv", "calibrated-temperature", "soft-voting", "bagging",
                                                   "stacking-mlp-final", "calibrated-svc")])
def test_smooth_composites_compose_probabilities_and_exact_gradients(name, K):
    est, X = _fit_named("smooth", name, K)
    form = adapt(est)
    assert isinstance(form, CompositeForm) and form.kind == "differentiable", form
    Xq = X[::4]
    P, J = form.proba_jac(Xq)
    np.testing.assert_allclose(P, est.predict_proba(Xq), rtol=0, atol=1e-9)
    np.testing.assert_allclose(form.proba_jac(Xq, False)[0], P, rtol=0, atol=0)
    Jfd = _fd_jacobian(est, Xq)
    scale = np.abs(Jfd).max(axis=(0, 1))  # per feature: features live at scales 1e-5..1e5
    assert np.all(np.abs(J - Jfd) <= 1e-5 * scale + 1e-9), np.abs(J - Jfd).max(axis=(0, 1)) / scale
    # the scores through the link give the same probabilities, and their gradients are theirs
    lp = form.log_proba(Xq)
    np.testing.assert_allclose(np.exp(lp), P, rtol=1e-9, atol=1e-12)
    S = form.logits(Xq)
    assert S.shape == (len(Xq), 1 if K == 2 else K)
    for k in range(K):
        g = form.log_proba_grad(Xq, k)
        np.testing.assert_allclose(g, J[:, k] / P[:, k, None], rtol=1e-7, atol=1e-12 * np.abs(g).max())
    np.testing.assert_array_equal(np.argmax(P, axis=1), form.predict_index(Xq))


def test_stacking_with_a_linear_final_model_uses_its_scores():
    est, X = _fit_named("smooth", "stacking", 3)  # shared with the parametrised test above
    form = adapt(est)
    Z = est.transform(X[:10])
    np.testing.assert_allclose(form.logits(X[:10]), est.final_estimator_.decision_function(Z), rtol=1e-12,
                               atol=1e-12)
    # gradient of one class score by finite differences
    x = X[3]
    g = form.logit_grad(x[None], 2)[0]
    h = 1e-6 * SCALES
    for j in range(4):
        e = np.zeros(4)
        e[j] = h[j]
        fd = (form.logits((x + e)[None])[0, 2] - form.logits((x - e)[None])[0, 2]) / (2 * h[j])
        assert abs(fd - g[j]) <= 1e-5 * (abs(g[j]) + 1e-12 / SCALES[j]) + 1e-4 * abs(fd)


def test_one_sigmoid_calibrator_over_a_linear_model_is_exactly_linear():
    X, y = _data(2)
    lr = _sc(LogisticRegression()).fit(X, y)
    for est in (CalibratedClassifierCV(FrozenEstimator(lr)).fit(X, y),
                CalibratedClassifierCV(_sc(LinearSVC()), ensemble=False).fit(X, y)):
        form = adapt(est)
        assert isinstance(form, CompositeLinearForm) and form.link == "sigmoid"
        cc = est.calibrated_classifiers_[0]
        a, b = cc.calibrators[0].a_, cc.calibrators[0].b_
        s = cc.estimator.decision_function(X)
        np.testing.assert_allclose(form.scores(X)[:, 0], -(a * s + b), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(form.proba(X), est.predict_proba(X), atol=1e-12)
        assert "exact" in form.describe()["composite"]
    # three classes: the normalised per-class sigmoids saturate (expit == 1.0 above ~36.7) and
    # predict then takes the first tied class, which no linear argmax reproduces: composed smooth
    # form, not exact (tests/exactness/test_exact_calibrated_saturation.py)
    X3, y3 = _data(3)
    est = CalibratedClassifierCV(_sc(LogisticRegression()), ensemble=False).fit(X3, y3)
    form = adapt(est)
    assert isinstance(form, CompositeForm) and form.kind == "differentiable"
    np.testing.assert_allclose(np.exp(form.log_proba(X3)), est.predict_proba(X3), atol=1e-12)
    # behind a scaler: the calibrated linear model in input units
    est = make_pipeline(StandardScaler(), CalibratedClassifierCV(LogisticRegression(), ensemble=False, cv=2)).fit(X, y)
    form = adapt(est)
    assert isinstance(form, CompositeLinearForm) and form.preprocessing == ["StandardScaler"]
    np.testing.assert_allclose(form.proba(X), est.predict_proba(X), atol=1e-12)
    # binary temperature scaling: p1 = expit(2 beta s)
    est = CalibratedClassifierCV(_sc(LogisticRegression()), method="temperature", ensemble=False).fit(X, y)
    form = adapt(est)
    assert isinstance(form, CompositeLinearForm)
    np.testing.assert_allclose(form.proba(X), est.predict_proba(X), atol=1e-12)


def test_stacking_of_linear_decision_functions_is_exactly_linear():
    for K in (2, 3):
        X, y = _data(K)
        est = StackingClassifier([("svc", _sc(LinearSVC())), ("lr", _sc(LogisticRegression()))],
                                 stack_method="decision_function", passthrough=True, cv=2).fit(X, y)
        form = adapt(est)
        assert isinstance(form, CompositeLinearForm)
        np.testing.assert_allclose(form.proba(X), est.predict_proba(X), atol=1e-12)
        np.testing.assert_allclose(form.decision_function(X), est.decision_function(X), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("make, why", [
    (lambda: CalibratedClassifierCV(_sc(LogisticRegression()), method="isotonic", cv=2), "isotonic"),
    (lambda: StackingClassifier([("t", DecisionTreeClassifier(max_depth=2)), ("lr", _sc(LogisticRegression()))],
                                cv=2), "DecisionTreeClassifier"),
    (lambda: StackingClassifier([("lr", _sc(LogisticRegression())), ("l2", _sc(LogisticRegression(C=0.1)))],
                                stack_method="predict", cv=2), "predict"),
    (lambda: BaggingClassifier(LinearSVC(), n_estimators=3, random_state=0), "vote"),
    (lambda: AdaBoostClassifier(LogisticRegression(max_iter=30), n_estimators=2), "not decision trees"),
    (lambda: VotingClassifier([("t", DecisionTreeClassifier()), ("s", SVC(probability=True))], voting="soft"),
     "SVC"),
])
def test_composites_that_compose_to_nothing_are_black_boxes_that_say_why(make, why):
    X, y = _data(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = make().fit(X, y)
    form = adapt(est)
    assert isinstance(form, CompositeBlackBoxForm)
    assert why in form.describe()["composite"]
    caps = {c.command: c for c in capabilities(form)}
    assert why in caps["margin"].method and caps["margin"].exact == "no"
    assert caps["influence"].available == "no"


def test_hard_voting_over_other_members_is_a_predict_only_black_box():
    X, y = _data(2)
    est = VotingClassifier([("t", DecisionTreeClassifier()), ("lr", LogisticRegression())]).fit(X, y)
    form = adapt(est)
    assert form.kind == "black-box" and PREDICT_ONLY in str(form.describe()["composite"])


def test_info_rows_are_truthful_for_composites():
    X, y = _data(2)
    lin = adapt(CalibratedClassifierCV(_sc(LogisticRegression()), ensemble=False, cv=2).fit(X, y))
    smooth = adapt(_fit_named("smooth", "soft-voting", 2)[0])
    trees = adapt(_fit_named("trees", "adaboost", 2)[0])
    caps = {f.kind: {c.command: c for c in capabilities(f)} for f in (lin, smooth, trees)}
    assert caps["linear"]["margin"].exact == "yes" and caps["linear"]["counterfactual"].exact == "yes"
    assert caps["differentiable"]["margin"].exact == "no"
    assert "no certified lower bound" in caps["differentiable"]["margin"].method
    assert caps["trees"]["margin"].exact == "partly" and "AdaBoost" in caps["trees"]["margin"].method
    for f in caps.values():
        assert f["influence"].available == "no"
        assert f["explain"].available == "yes" and f["mislabel"].available == "yes"
