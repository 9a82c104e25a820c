"""The trees form: boxes against the estimator's own ``apply`` / ``decision_path`` /
``predict_proba``, on random inputs and on points placed exactly on split thresholds."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier, ExtraTreeClassifier

from invaudit.errors import InputError
from invaudit.models.base import TreesForm
from invaudit.models.trees import float32_split_point, from_estimator

D = 3
FAMILIES = {
    "tree": lambda: DecisionTreeClassifier(max_depth=5, random_state=0),
    "extra-tree": lambda: ExtraTreeClassifier(max_depth=5, random_state=0),
    "forest": lambda: RandomForestClassifier(n_estimators=4, max_depth=4, random_state=0),
    "extra-trees": lambda: ExtraTreesClassifier(n_estimators=4, max_depth=4, random_state=0),
    "gboost": lambda: GradientBoostingClassifier(n_estimators=4, max_depth=2, random_state=0),
    "hist-gboost": lambda: HistGradientBoostingClassifier(max_iter=4, max_leaf_nodes=8, random_state=0),
}
AGGREGATE = {"tree": "single", "extra-tree": "single", "forest": "mean-proba",
             "extra-trees": "mean-proba", "gboost": "boosting", "hist-gboost": "boosting"}
CASES = [(name, k) for name in FAMILIES for k in (2, 3)]
IDS = [f"{name}-{k}cls" for name, k in CASES]


def _data(n_classes: int):
    rng = np.random.default_rng(0)
    X = np.round(rng.normal(size=(160, D)), 1)  # one decimal: many ties in every feature
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    if n_classes == 3:
        y = y + (X[:, 2] > 0.4)
    flip = rng.random(len(y)) < 0.1
    y[flip] = rng.integers(0, n_classes, flip.sum())
    return X, y


@lru_cache(maxsize=None)
def fitted(name: str, n_classes: int):
    X, y = _data(n_classes)
    return FAMILIES[name]().fit(X, y)


def _raw_thresholds(est) -> np.ndarray:
    """Every split threshold the estimator stores, as it stores it."""
    if hasattr(est, "_predictors"):
        parts = [p.nodes["num_threshold"][~p.nodes["is_leaf"].astype(bool)]
                 for it in est._predictors for p in it]
    else:
        trees = [est] if hasattr(est, "tree_") else list(np.ravel(est.estimators_))
        parts = [t.tree_.threshold[t.tree_.children_left != -1] for t in trees]
    return np.unique(np.concatenate(parts))


def _queries(form, est, seed=0) -> np.ndarray:
    """Random rows, wide rows, and rows with one feature exactly on a split point: the stored
    threshold, its float32 rounding, the form's box bound, and the doubles next to it."""
    rng = np.random.default_rng(seed)
    wide = rng.uniform(-50, 50, size=(100, D))
    near = np.round(rng.normal(size=(200, D)), 2)
    bounds = np.unique(np.concatenate([b.upper[np.isfinite(b.upper)] for b in form.trees]))
    raw = _raw_thresholds(est)
    values = np.concatenate([
        raw, raw.astype(np.float32).astype(np.float64), bounds,
        np.nextafter(bounds, np.inf), np.nextafter(bounds, -np.inf),
    ])
    on = np.round(rng.normal(size=(len(values) * D, D)), 2)
    on[np.arange(len(on)), np.repeat(np.arange(D), len(values))] = np.tile(values, D)
    return np.vstack([wide, near, on])


def _membership(box, X) -> np.ndarray:
    """(n, L): row i lies in box l (lower < x <= upper in every feature)."""
    return np.all((box.lower[None] < X[:, None, :]) & (X[:, None, :] <= box.upper[None]), axis=2)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_point_is_in_exactly_the_box_leaf_index_names(case):
    est = fitted(*case)
    form = from_estimator(est)
    assert isinstance(form, TreesForm)
    assert form.aggregate == AGGREGATE[case[0]]
    X = _queries(form, est)
    leaves = form.leaf_index(X)
    assert leaves.shape == (len(X), len(form.trees))
    for t, box in enumerate(form.trees):  # a loop over trees, in the test only
        member = _membership(box, X)
        assert np.all(member.sum(axis=1) == 1), "boxes of one tree must cover and not overlap"
        np.testing.assert_array_equal(member.argmax(axis=1), leaves[:, t])


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_proba_from_leaves_reproduces_predict_proba(case):
    est = fitted(*case)
    form = from_estimator(est)
    X = _queries(form, est, seed=1)
    np.testing.assert_allclose(
        form.proba_from_leaves(form.leaf_index(X)), est.predict_proba(X), rtol=0, atol=1e-10
    )


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_boxes_of_one_tree_are_pairwise_disjoint(case):
    form = from_estimator(fitted(*case))
    for box in form.trees:
        lo = np.maximum(box.lower[:, None, :], box.lower[None, :, :])
        hi = np.minimum(box.upper[:, None, :], box.upper[None, :, :])
        overlap = np.all(lo < hi, axis=2)  # (L, L): the open-closed boxes intersect
        np.fill_diagonal(overlap, False)
        assert not overlap.any()
        assert np.all(box.lower < box.upper)


@pytest.mark.parametrize("name", ["tree", "extra-tree", "forest", "gboost"])
def test_sklearn_trees_split_exactly_where_the_estimator_does(name):
    """At the root split, float64 rows at the box bound go left and the next double goes right,
    per the estimator's own decision_path (it compares float32(x) <= threshold)."""
    est = fitted(name, 3)
    tree_est = est if hasattr(est, "tree_") else np.ravel(est.estimators_)[0]
    tree = tree_est.tree_
    f, thr = tree.feature[0], tree.threshold[0]
    t64 = float32_split_point(np.array([thr]))[0]
    X = np.zeros((4, D))
    X[:, f] = [t64, np.nextafter(t64, np.inf), thr, np.float32(thr)]
    went_left = tree_est.decision_path(X).toarray()[:, tree.children_left[0]] == 1
    assert went_left[0] and not went_left[1]
    form = from_estimator(est)  # its tree 0 is estimators_[0] (stage 0, output 0 for boosting)
    leaf_upper = form.trees[0].upper[form.leaf_index(X)[:, 0], f]
    np.testing.assert_array_equal(leaf_upper <= t64, went_left)


def test_hist_gradient_boosting_ties_go_left():
    est = fitted("hist-gboost", 2)
    nodes = est._predictors[0][0].nodes
    f, thr = int(nodes["feature_idx"][0]), nodes["num_threshold"][0]
    X = np.zeros((2, D))
    X[:, f] = [thr, np.nextafter(thr, np.inf)]
    form = from_estimator(est)
    leaf = form.leaf_index(X)[:, 0]
    assert form.trees[0].upper[leaf[0], f] <= thr  # a tie lands in the left subtree
    assert form.trees[0].lower[leaf[1], f] >= thr
    # and the estimator agrees: one-tree raw prediction from sklearn's predictor
    raw = est._predictors[0][0].predict(X, *est._bin_mapper.make_known_categories_bitsets(), 1)
    np.testing.assert_array_equal(raw, form.trees[0].value[leaf, 0])


def test_boosting_init_and_scale():
    est = fitted("gboost", 3)
    form = from_estimator(est)
    np.testing.assert_allclose(form.init, est._raw_predict_init(np.zeros((1, D)))[0])
    assert form.scale == est.learning_rate and form.link == "softmax"
    hgb = from_estimator(fitted("hist-gboost", 2))
    assert hgb.scale == 1.0 and hgb.link == "sigmoid" and hgb.init.shape == (1,)
    X, y = _data(2)
    zero = GradientBoostingClassifier(n_estimators=3, init="zero", random_state=0).fit(X, y)
    form = from_estimator(zero)
    np.testing.assert_array_equal(form.init, [0.0])
    np.testing.assert_allclose(form.proba_from_leaves(form.leaf_index(X)), zero.predict_proba(X), atol=1e-10)


def test_not_this_form():
    X, y = _data(2)
    assert from_estimator(LogisticRegression().fit(X, y)) is None
    assert from_estimator(DecisionTreeClassifier()) is None  # not fitted
    Y = np.column_stack([y, X[:, 2] > 0])
    assert from_estimator(DecisionTreeClassifier(max_depth=2).fit(X, Y)) is None
    gb = GradientBoostingClassifier(n_estimators=2, init=LogisticRegression()).fit(X, y)
    assert from_estimator(gb) is None
    gb = GradientBoostingClassifier(n_estimators=2, init=DummyClassifier(strategy="prior")).fit(X, y)
    assert from_estimator(gb) is not None
    Xc = X.copy()
    Xc[:, 2] = np.abs(np.round(Xc[:, 2] * 2))
    hgb = HistGradientBoostingClassifier(max_iter=2, categorical_features=[2]).fit(Xc, y)
    assert from_estimator(hgb) is None


def test_bad_inputs_raise_input_error():
    form = from_estimator(fitted("forest", 2))
    with pytest.raises(InputError):
        form.leaf_index(np.zeros((2, D + 1)))
    with pytest.raises(InputError):
        form.proba_from_leaves(np.zeros((2, 1), dtype=int))
    with pytest.raises(InputError):
        form.proba_from_leaves(np.full((2, len(form.trees)), 10_000))


@settings(max_examples=60, deadline=None)
@given(st.floats(min_value=-1e30, max_value=1e30, allow_nan=False))
def test_float32_split_point_is_the_exact_boundary(t):
    t64 = float32_split_point(np.array([t]))[0]
    assert np.float64(np.float32(t64)) <= t
    assert np.float64(np.float32(np.nextafter(t64, np.inf))) > t


@pytest.mark.parametrize("k", [2, 3])
def test_hist_gradient_boosting_native_routing_equals_the_numpy_walk(k):
    from invaudit.models.trees import _hgb_native_walker, _hgb_walker

    est = fitted("hist-gboost", k)
    predictors = [p for it in est._predictors for p in it]
    numpy_walk = _hgb_walker(predictors)
    native = _hgb_native_walker(est, predictors, numpy_walk)
    assert native is not None  # this scikit-learn's private API is the one we expect
    X = _queries(from_estimator(est), est, seed=2)
    X[::7, 1] = np.nan
    np.testing.assert_array_equal(native(X), numpy_walk(X))


@pytest.mark.parametrize("case", [c for c in CASES if c[0] != "gboost"], ids=[
    i for c, i in zip(CASES, IDS) if c[0] != "gboost"])
def test_rows_with_nan_are_routed_as_the_estimator_routes_them(case):
    est = fitted(*case)
    form = from_estimator(est)
    X = _queries(form, est, seed=3)[:200]
    X[::5, 0] = np.nan
    np.testing.assert_allclose(
        form.proba_from_leaves(form.leaf_index(X)), est.predict_proba(X), rtol=0, atol=1e-10
    )
