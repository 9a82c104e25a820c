"""Influence of training rows for tree ensembles (leaf refits, never exact), checked against real
leave-one-out refits of the estimator.

Thresholds (measured on this fixed seed: 150 training rows, 8 labels flipped, 4 test rows, the
union of each one's top 4 rows refitted, 12-14 refits): the refits use the estimator's own
parameters and ``random_state``. For GradientBoosting and HistGradientBoosting a refit is
deterministic, and what the estimate leaves out is the change of the later trees' splits and
gradients: measured Pearson 0.74 / Spearman 0.52 (GradientBoosting), 0.60 / 0.53
(HistGradientBoosting). ExtraTrees keeps every row in every tree: 0.63 / 0.76. A RandomForest
refit on one row fewer draws entirely new bootstrap samples, so its real changes carry refit
noise of the same size as the effect: 0.39 / 0.27 with 50 trees. The assertions sit below those
figures with room for scikit-learn version drift, and well above what an unrelated ranking gives
(about 0).
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import (ExtraTreesClassifier, GradientBoostingClassifier,
                              HistGradientBoostingClassifier, RandomForestClassifier)

from invaudit.errors import InputError, UnsupportedModelError
from invaudit.influence import build_tree_objective, influence, predicted_loss_changes, verify_loo
from invaudit.models import adapt


@pytest.fixture(scope="module", autouse=True)
def _one_openmp_thread():
    """HistGradientBoosting fits and predicts with OpenMP; on a busy shared machine its spinning
    threads make small calls 10-20x slower (measured), so these tests use one thread."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        yield


def _data(n=150, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n + 20, 4))
    y = (X[:, 0] + 0.5 * X[:, 1] ** 2 + 0.3 * rng.normal(size=n + 20) > 0.4).astype(int)
    flip = rng.choice(n, 8, replace=False)
    y[flip] = 1 - y[flip]
    return X[:n], y[:n], X[n:], y[n:]


CASES = {
    "gboost": (lambda: GradientBoostingClassifier(n_estimators=30, max_depth=2, random_state=0), 0.5, 0.3),
    "hist": (lambda: HistGradientBoostingClassifier(max_iter=30, max_depth=3, random_state=0), 0.4, 0.3),
    "extra": (lambda: ExtraTreesClassifier(n_estimators=50, max_depth=4, random_state=0), 0.45, 0.5),
}


@pytest.mark.parametrize("name", list(CASES))
def test_correlates_with_real_leave_one_out_refits(name):
    make, min_pearson, min_spearman = CASES[name]
    Xtr, ytr, Xte, yte = _data()
    est = make().fit(Xtr, ytr)
    obj = build_tree_objective(adapt(est), Xtr, ytr)
    res = influence(obj, Xte[:4], yte[:4], top=4)
    assert not res.exact and "fixed tree structure" in res.method
    check = verify_loo(obj, Xte[:4], yte[:4], res.top_rows(4))
    assert check.n_retrained >= 10
    assert check.pearson > min_pearson and check.spearman > min_spearman, (check.pearson, check.spearman)


def test_random_forest_correlates_despite_bootstrap_noise():
    Xtr, ytr, Xte, yte = _data()
    est = RandomForestClassifier(n_estimators=50, max_depth=4, random_state=0).fit(Xtr, ytr)
    obj = build_tree_objective(adapt(est), Xtr, ytr)
    res = influence(obj, Xte[:4], yte[:4], top=4)
    check = verify_loo(obj, Xte[:4], yte[:4], res.top_rows(4))
    assert check.pearson > 0.25


def test_forest_leaf_refit_is_exact_for_the_fixed_structure():
    """Reference: rebuild every leaf value without the row by hand (bootstrap counts replayed)
    and average the trees; the loss change must match to rounding."""
    Xtr, ytr, Xte, yte = _data(n=80)
    est = RandomForestClassifier(n_estimators=7, max_depth=3, random_state=1).fit(Xtr, ytr)
    form = adapt(est)
    obj = build_tree_objective(form, Xtr, ytr)
    pred = predicted_loss_changes(obj, Xte[:3], yte[:3], rows=np.arange(10))
    for i in range(10):
        p_new = np.zeros(3)
        for t, tree in enumerate(est.estimators_):
            counts = np.bincount(est.estimators_samples_[t], minlength=80).astype(float)
            counts[i] = 0.0
            leaf_tr = tree.apply(Xtr.astype(np.float32))
            leaf_te = tree.apply(Xte[:3].astype(np.float32))
            for r in range(3):
                same = leaf_tr == leaf_te[r]
                tot = counts[same].sum()
                if tot == 0:  # emptied leaf: kept as it was
                    v = tree.tree_.value[leaf_te[r], 0, yte[r]]
                else:
                    v = counts[same & (ytr == yte[r])].sum() / tot
                p_new[r] += v / len(est.estimators_)
        p_old = est.predict_proba(Xte[:3])[np.arange(3), yte[:3]]
        np.testing.assert_allclose(pred[:, i], np.log(p_old) - np.log(p_new), rtol=1e-9, atol=1e-12)


def test_boosting_leaf_values_are_reproduced_and_wrong_data_is_refused():
    Xtr, ytr, _, _ = _data()
    est = GradientBoostingClassifier(n_estimators=10, max_depth=2, random_state=0).fit(Xtr, ytr)
    build_tree_objective(adapt(est), Xtr, ytr)  # the recomputed leaves match the model's
    with pytest.raises(InputError, match="fitted on"):
        build_tree_objective(adapt(est), Xtr[::-1].copy(), ytr)
    y3 = ytr % 2 + (Xtr[:, 0] > 1)
    est3 = GradientBoostingClassifier(n_estimators=3, max_depth=2, random_state=0).fit(Xtr, y3)
    build_tree_objective(adapt(est3), Xtr, y3)  # three classes: the softmax leaf values reproduced
    with pytest.raises(InputError, match="fitted on"):
        build_tree_objective(adapt(est3), Xtr, np.roll(y3, 1))
    sub = GradientBoostingClassifier(n_estimators=3, subsample=0.5, random_state=0).fit(Xtr, ytr)
    with pytest.raises(UnsupportedModelError, match="subsample"):
        build_tree_objective(adapt(sub), Xtr, ytr)
