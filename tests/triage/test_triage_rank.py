"""Mislabel triage: scores against brute-force references and real leave-one-out refits."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from invaudit.errors import InputError, UnsupportedModelError
from invaudit.influence import build_objective
from invaudit.models import adapt
from invaudit.triage import (DEFAULT_METHOD, METHODS, confident_learning_score, found_curve,
                             out_of_fold_proba, rank_mislabels, recall_at, truth_mask)


def _data(n=120, d=4, k=3, seed=0, flip=0.1):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    centres = rng.standard_normal((k, d)) * 2.5
    X = centres[y] + rng.standard_normal((n, d))
    wrong = rng.random(n) < flip
    noisy = np.where(wrong, (y + rng.integers(1, k, n)) % k, y)
    return X, y, noisy, wrong


def _fit(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y)
    return est, adapt(est)


@pytest.mark.parametrize("k,cw", [(2, None), (3, None), (3, "balanced")])
def test_loo_losses_match_real_leave_one_out_refits(k, cw):
    X, y, noisy, wrong = _data(n=80, k=k, seed=3)
    est, form = _fit(LogisticRegression(class_weight=cw, max_iter=5000), X, noisy)
    obj = build_objective(form, X, noisy)
    approx = obj.loo_losses()
    rows = np.arange(0, 80, 2)
    real = np.empty(rows.size)
    for b, i in enumerate(rows):
        keep = np.arange(80) != i
        ref = clone(est).set_params(tol=1e-10).fit(X[keep], noisy[keep])
        real[b] = -np.log(ref.predict_proba(X[i:i + 1])[0, noisy[i]])
    assert np.corrcoef(approx[rows], real)[0, 1] > 0.99
    np.testing.assert_allclose(approx[rows], real, rtol=0.2, atol=0.02)  # one Newton step


def test_self_influence_is_the_weighted_quadratic_form():
    X, y, noisy, wrong = _data(n=60, k=3, seed=1)
    est, form = _fit(LogisticRegression(class_weight={0: 2.0, 1: 1.0, 2: 0.5}), X, noisy)
    obj = build_objective(form, X, noisy)
    G = obj.train_gradients
    H = obj.hessian(obj.s, obj.A, obj.Zt, augment=False)
    ref = obj.s * np.einsum("ip,pq,iq->i", G, np.linalg.pinv(H), G)
    np.testing.assert_allclose(obj.self_influence(), ref, rtol=1e-7)
    r = rank_mislabels(form, X, noisy, method="self-influence", objective=obj)
    np.testing.assert_allclose(r.score, ref, rtol=1e-7)


def test_confident_learning_score_against_a_loop():
    rng = np.random.default_rng(0)
    P = rng.dirichlet(np.ones(4), size=50)
    y = rng.integers(0, 4, 50)
    t = np.array([P[y == j, j].mean() for j in range(4)])
    expect = []
    for i in range(50):
        cands = [j for j in range(4) if P[i, j] >= t[j]]
        flagged = bool(cands) and max(cands, key=lambda j: P[i, j]) != y[i]
        expect.append(float(flagged) + 1 - P[i, y[i]])
    np.testing.assert_allclose(confident_learning_score(P, y), expect)


def test_out_of_fold_probabilities_are_sklearns():
    X, y, noisy, wrong = _data(n=90, k=3, seed=2)
    est, form = _fit(Pipeline([("s", StandardScaler()), ("c", LogisticRegression())]), X, noisy)
    calls = []
    P = out_of_fold_proba(form, X, noisy, n_folds=5, seed=4, progress=lambda d, t: calls.append((d, t)))
    ref = cross_val_predict(clone(est), X, noisy, method="predict_proba",
                            cv=StratifiedKFold(5, shuffle=True, random_state=4))
    np.testing.assert_allclose(P, ref, rtol=1e-9, atol=1e-12)
    assert calls[-1] == (5, 5)


def test_recall_and_curve_against_brute_force():
    rng = np.random.default_rng(5)
    truth = rng.random(97) < 0.2
    order = rng.permutation(97)
    curve = found_curve(order, truth)
    assert curve.shape == (98,) and curve[0] == 0 and curve[-1] == 1
    for k in (0, 1, 13, 50, 97):
        assert curve[k] == pytest.approx(truth[order[:k]].sum() / truth.sum())
    rec = recall_at(order, truth)
    for f, v in rec.items():
        k = int(np.ceil(f * 97))
        assert v == pytest.approx(truth[order[:k]].sum() / truth.sum())
    np.testing.assert_array_equal(truth_mask(np.array([0, 1, 2]), np.array([0, 2, 2])), [False, True, False])


@pytest.mark.parametrize("method", METHODS)
def test_every_method_ranks_every_row_once_and_finds_flipped_labels(method):
    X, y, noisy, wrong = _data(n=150, k=3, seed=6)
    est, form = _fit(LogisticRegression(), X, noisy)
    r = rank_mislabels(form, X, noisy, method=method)
    assert r.method == method
    np.testing.assert_array_equal(np.sort(r.order), np.arange(150))
    assert np.all(np.diff(r.score[r.order]) <= 0)
    recs = r.records()
    required = {"train_row", "score", "given_label", "suggested_label"}
    assert len(recs) == 150 and set(recs[0]) == required | ({"sources"} if method == "combined" else set())
    assert len(r.records(top=5)) == 5
    random_recall = 0.1
    assert recall_at(r.order, wrong, (0.1,))[0.1] > 3 * random_recall
    fixed = r.fixed_labels(10)
    assert np.sum(fixed != noisy) <= 10
    assert r.summary(wrong)["n_wrong"] == int(wrong.sum())


def test_default_method_and_refit_reuse():
    X, y, noisy, wrong = _data(n=150, k=3, seed=8)
    est, form = _fit(LogisticRegression(), X, noisy)
    assert DEFAULT_METHOD == "combined"
    assert rank_mislabels(form, X, noisy).method == "combined"
    r = rank_mislabels(form, X, noisy, method="pruned-loo-loss")
    assert r.method == "pruned-loo-loss" and not r.exact
    assert any("set aside" in n for n in r.notes)
    # the suspects (confident learning's count, highest leave-one-out loss first) are scored by
    # a model refitted without them
    obj = build_objective(form, X, noisy)
    n_suspects = int(np.sum(confident_learning_score(obj.loo_proba(), noisy) >= 1))
    assert 5 <= n_suspects <= 40
    top = np.argsort(-obj.loo_losses(), kind="stable")[:n_suspects]
    keep = np.setdiff1d(np.arange(150), top)
    ref = clone(est).set_params(tol=1e-10).fit(X[keep], noisy[keep])
    lp = -np.log(ref.predict_proba(X[top])[np.arange(top.size), noisy[top]])
    np.testing.assert_allclose(r.score[top], lp, rtol=1e-5)


def test_models_without_a_twice_differentiable_loss_get_loss_and_confidence():
    X, y, noisy, wrong = _data(n=90, k=3, seed=9)
    est, form = _fit(DecisionTreeClassifier(max_depth=3, random_state=0), X, noisy)
    r = rank_mislabels(form, X, noisy, method="confidence")
    assert r.method == "confidence"
    assert any("only loss, confidence" in n for n in r.notes)
    assert rank_mislabels(form, X, noisy).method == "combined"  # the default, every model
    r = rank_mislabels(form, X, noisy, method="combined",
                       reference=DecisionTreeClassifier(max_depth=3, random_state=0))
    assert r.method == "combined" and any("model source: out-of-fold" in n for n in r.notes) and r.exact
    assert rank_mislabels(form, X, noisy, method="loss").method == "loss"
    with pytest.raises(UnsupportedModelError, match="loss and confidence"):
        rank_mislabels(form, X, noisy, method="self-influence")
    with pytest.raises(InputError):
        rank_mislabels(form, X, noisy, method="nonsense")


def test_a_class_absent_from_the_training_labels_still_ranks():
    """A 3-class model audited on training rows of two of its classes (a filtered file): every
    model-based method runs, and the flipped rows still rank first."""
    from invaudit.models import adapt as _adapt
    from invaudit.triage import rank_mislabels as _rank

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    y = np.digitize(X[:, 0], [-0.5, 0.5])
    model = LogisticRegression().fit(X, y)
    keep = y != 2
    Xk, yk = X[keep], y[keep].copy()
    flip = rng.choice(len(yk), 8, replace=False)
    yk[flip] = 1 - yk[flip]
    for method in ("pruned-loo-loss", "loo-loss", "self-influence", "combined"):
        r = _rank(_adapt(model), Xk, yk, method=method, seed=0)
        assert sorted(r.order.tolist()) == list(range(len(yk))) and np.all(np.isfinite(r.score)), method
        top = set(r.order[:16].tolist())
        assert len(top & set(flip.tolist())) >= 6, (method, len(top & set(flip.tolist())))
