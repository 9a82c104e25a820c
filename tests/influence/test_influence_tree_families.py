"""Influence for the tree models beyond forests and binary boosting: a single decision tree (the
leaf refit is the exact leave-one-out while the refit keeps its splits) and multiclass gradient
boosting (the per-class trees' leaves refitted, softmax loss).

References: real refits of the estimator without each row (scikit-learn, same parameters and
``random_state``), and for boosting an independent recomputation of the changed leaves from
scikit-learn's own staged raw scores (``staged_decision_function``) and leaf assignments
(``apply``), not from invaudit's replay.

Correlation thresholds (this fixed seed, 150 rows, 3 classes, 8 labels moved, 4 test rows, the
union of each one's top 4 rows refitted): measured Pearson / Spearman 0.84 / 0.43
(GradientBoosting) and 0.77 / 0.37 (HistGradientBoosting); on unscaled copies of seeds 0-3 the
lowest Pearson were 0.62 and 0.44. The assertions sit below the fixed seed's figures with room
for version drift, well above an unrelated ranking (about 0).
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.ensemble import (GradientBoostingClassifier, HistGradientBoostingClassifier,
                              RandomForestClassifier)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from invaudit.errors import InputError, UnsupportedModelError
from invaudit.influence import (build_influence_objective, build_tree_objective, influence, influence_family,
                                predicted_loss_changes, verify_loo)
from invaudit.models import adapt


@pytest.fixture(scope="module", autouse=True)
def _one_openmp_thread():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        yield


SCALES = np.array([1e-5, 1.0, 1e3, 1e5])


def _data(n=150, seed=0, labels=("bad", "good", "ok")):
    """Three classes from a nonlinear score, 8 labels moved; features at scales 1e-5..1e5."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n + 20, 4))
    s = X[:, 0] + 0.5 * X[:, 1] ** 2 + 0.3 * rng.normal(size=n + 20)
    y = np.digitize(s, np.quantile(s, [0.33, 0.66]))
    flip = rng.choice(n, 8, replace=False)
    y[flip] = (y[flip] + 1) % 3
    X = X * SCALES
    names = np.asarray(labels)
    return X[:n], y[:n], X[n:], y[n:], names


def _loss(est, X, y_idx, classes):
    p = est.predict_proba(X)
    col = np.searchsorted(est.classes_, classes[y_idx])
    return -np.log(np.clip(p[np.arange(len(y_idx)), col], 1e-15, 1.0))


def test_single_tree_is_the_exact_leave_one_out_whenever_the_refit_keeps_its_splits():
    Xtr, ytr, Xte, yte, names = _data()
    est = DecisionTreeClassifier(max_depth=4, random_state=0).fit(Xtr, names[ytr])
    obj = build_tree_objective(adapt(est), Xtr, ytr)
    assert "single tree" in obj.method and not obj.exact
    rows = np.arange(60)
    pred = predicted_loss_changes(obj, Xte, yte, rows=rows)
    base = _loss(est, Xte, yte, names)
    same = 0
    for b, i in enumerate(rows):  # a real refit per removed row
        keep = np.arange(len(ytr)) != i
        refit = clone(est).fit(Xtr[keep], names[ytr[keep]])
        if np.array_equal(refit.tree_.feature, est.tree_.feature) and \
                np.array_equal(refit.tree_.threshold, est.tree_.threshold):
            same += 1
            np.testing.assert_allclose(pred[:, b], _loss(refit, Xte, yte, names) - base, rtol=1e-9, atol=1e-12)
    assert same >= 40, same  # most refits keep the splits (measured 50 of 60)


def test_single_tree_behind_a_scaler_and_its_verification():
    Xtr, ytr, Xte, yte, names = _data(seed=1)
    est = make_pipeline(StandardScaler(), DecisionTreeClassifier(max_depth=3, random_state=0)).fit(Xtr, names[ytr])
    form = adapt(est)
    assert influence_family(form) == "trees"
    obj = build_influence_objective(form, Xtr, ytr)
    res = influence(obj, Xte[:5], yte[:5], top=3)
    check = verify_loo(obj, Xte[:5], yte[:5], res.top_rows(3))
    # a depth-3 tree on 150 rows keeps its splits for most single-row refits: the estimate is the
    # refit there, so the rank agreement is high (measured Spearman 0.88, Pearson 0.90)
    assert check.spearman > 0.6, check.spearman


def _reference_boosting_changes(est, Xtr, ytr, Xte, yte, rows):
    """Leaf refits recomputed from scikit-learn's own staged raw scores (GradientBoosting, K > 2):
    for each stage s and class k, the leaf value without row i is (K-1)/K * sum(y_k - p_k) /
    sum(p_k (1 - p_k)) over the other rows in the leaf, p the softmax before stage s."""
    K, lr = len(est.classes_), est.learning_rate
    staged = list(est.staged_decision_function(Xtr))
    Y = np.eye(K)[ytr]
    final_te = est.decision_function(Xte)
    out = np.zeros((len(yte), len(rows)))
    shifts = np.zeros((len(rows), len(yte), K))
    for s in range(est.n_estimators_):
        contrib = np.column_stack([est.estimators_[s, k].predict(Xtr) for k in range(K)])
        before = staged[s] - lr * contrib
        P = np.exp(before - before.max(axis=1, keepdims=True))
        P /= P.sum(axis=1, keepdims=True)
        for k in range(K):
            tree = est.estimators_[s, k]
            leaf_tr = tree.apply(Xtr.astype(np.float32))
            leaf_te = tree.apply(Xte.astype(np.float32))
            for b, i in enumerate(rows):
                same = leaf_tr == leaf_tr[i]
                same[i] = False
                num = (Y[same, k] - P[same, k]).sum()
                den = (P[same, k] * (1 - P[same, k])).sum()
                new = (K - 1) / K * num / den if den > 0 else tree.tree_.value[leaf_tr[i], 0, 0]
                hit = leaf_te == leaf_tr[i]
                shifts[b, hit, k] += lr * (new - tree.tree_.value[leaf_tr[i], 0, 0])
    for b in range(len(rows)):
        new_raw = final_te + shifts[b]
        lse_new = np.log(np.exp(new_raw - new_raw.max(1, keepdims=True)).sum(1)) + new_raw.max(1)
        lse_old = np.log(np.exp(final_te - final_te.max(1, keepdims=True)).sum(1)) + final_te.max(1)
        idx = np.arange(len(yte))
        out[:, b] = (lse_new - new_raw[idx, yte]) - (lse_old - final_te[idx, yte])
    return out


def test_multiclass_gradient_boosting_matches_an_independent_leaf_refit():
    Xtr, ytr, Xte, yte, _ = _data(n=90, seed=2)
    est = GradientBoostingClassifier(n_estimators=8, max_depth=2, random_state=0).fit(Xtr, ytr)
    obj = build_tree_objective(adapt(est), Xtr, ytr)
    rows = np.arange(0, 90, 9)
    pred = predicted_loss_changes(obj, Xte[:6], yte[:6], rows=rows)
    ref = _reference_boosting_changes(est, Xtr, ytr, Xte[:6], yte[:6], rows)
    assert np.abs(ref).max() > 1e-3  # the reference moves
    np.testing.assert_allclose(pred, ref, rtol=1e-7, atol=1e-10)


MULTICLASS = {
    "gboost": (lambda: GradientBoostingClassifier(n_estimators=30, max_depth=2, random_state=0), 0.6, 0.25),
    "hist": (lambda: HistGradientBoostingClassifier(max_iter=30, max_depth=3, random_state=0), 0.55, 0.2),
}


@pytest.mark.parametrize("name", list(MULTICLASS))
def test_multiclass_boosting_correlates_with_real_refits(name):
    make, min_pearson, min_spearman = MULTICLASS[name]
    Xtr, ytr, Xte, yte, _ = _data()
    est = make().fit(Xtr, ytr)
    obj = build_tree_objective(adapt(est), Xtr, ytr)
    assert "3 classes" in obj.method
    res = influence(obj, Xte[:4], yte[:4], top=4)
    check = verify_loo(obj, Xte[:4], yte[:4], res.top_rows(4))
    assert check.n_retrained >= 10
    assert check.pearson > min_pearson and check.spearman > min_spearman, (check.pearson, check.spearman)


def test_what_is_not_covered_is_refused_with_its_reason():
    Xtr, ytr, _, _, _ = _data(n=80)
    rf = RandomForestClassifier(n_estimators=3, class_weight="balanced", random_state=0).fit(Xtr, ytr)
    assert influence_family(adapt(rf)) is None
    with pytest.raises(UnsupportedModelError, match="class_weight"):
        build_influence_objective(adapt(rf), Xtr, ytr)
    gb = GradientBoostingClassifier(n_estimators=3, n_iter_no_change=2, random_state=0).fit(Xtr, ytr)
    with pytest.raises(UnsupportedModelError, match="early stopping"):
        build_influence_objective(adapt(gb), Xtr, ytr)


# --- LightGBM and XGBoost boosters (their trees read from their own dumps) -----------------------
#
# Measured on _data() (seed 0, 3 classes), the top 4 rows of 4 test rows refitted: Pearson 0.74 for
# both (asserted > 0.5). Over seeds 0-2, 3 classes / binary (class 2 against the rest): XGBoost
# 0.53..0.74 / 0.33..0.46; LightGBM 0.02..0.74 / -0.38..0.33: LightGBM rebuilds its histogram bins
# from the rows at every fit (min_data_in_bin = 3), so a refit without one row moves thresholds, a
# refit noise of the size of the effect (as a forest's bootstrap draws).

LIBRARY = {
    "xgboost": (lambda: __import__("xgboost").XGBClassifier(n_estimators=30, max_depth=2, learning_rate=0.3,
                                                            n_jobs=1), 0.5),
    "lightgbm": (lambda: __import__("lightgbm").LGBMClassifier(n_estimators=30, max_depth=3, learning_rate=0.1,
                                                               min_child_samples=5, verbose=-1, n_jobs=1), 0.5),
}


@pytest.mark.parametrize("name", list(LIBRARY))
def test_library_boosters_reproduce_their_leaves_and_correlate_with_refits(name):
    pytest.importorskip(name)
    make, min_pearson = LIBRARY[name]
    Xtr, ytr, Xte, yte, _ = _data()
    est = make().fit(Xtr, ytr)
    form = adapt(est)
    assert influence_family(form) == "trees"
    obj = build_influence_objective(form, Xtr, ytr)  # the recomputed Newton leaves match the dump's
    assert "3 classes" in obj.method
    with pytest.raises(InputError, match="fitted on"):
        build_influence_objective(form, Xtr, np.roll(ytr, 3))
    res = influence(obj, Xte[:4], yte[:4], top=4)
    check = verify_loo(obj, Xte[:4], yte[:4], res.top_rows(4))
    assert check.n_retrained >= 10 and check.pearson > min_pearson, check.pearson
    binary = make().fit(Xtr, (ytr == 2).astype(int))  # two classes: a sigmoid, the same leaves
    build_influence_objective(adapt(binary), Xtr, (ytr == 2).astype(int))


def test_library_settings_that_change_the_leaves_are_refused():
    lgb = pytest.importorskip("lightgbm")
    xgb = pytest.importorskip("xgboost")
    Xtr, ytr, _, _, _ = _data(n=80)
    for est, why in ((lgb.LGBMClassifier(n_estimators=3, reg_alpha=0.1, verbose=-1), "lambda_l1"),
                     (xgb.XGBClassifier(n_estimators=3, subsample=0.5), "subsample")):
        form = adapt(est.fit(Xtr, ytr))
        assert influence_family(form) is None
        with pytest.raises(UnsupportedModelError, match=why):
            build_influence_objective(form, Xtr, ytr)
