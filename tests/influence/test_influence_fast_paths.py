"""The fast paths (syrk Hessian, relative softmax shifts, dropped zero features, threshold
top-k, parallel blocks) against independent references written from scratch."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import log_softmax, logsumexp
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from influence_helpers import data, fit, objective_gradient
from invaudit.influence import build_objective, influence, predicted_loss_changes
from invaudit.influence._influence import _top_k
from invaudit.influence._objective import _SoftmaxShifts


def _scratch_hessian(theta, Z, y, s, lam, R, M, fit_intercept):
    """sum_i s_i kron(A_i, zt_i zt_i^T) + lam diag(R), one row at a time."""
    D1 = Z.shape[1] + int(fit_intercept)
    Zt = np.column_stack([Z, np.ones(len(Z))]) if fit_intercept else Z
    eta = Zt @ theta.reshape(M, D1).T
    H = np.diag(lam * np.tile(R, M))
    for i in range(len(y)):
        if M == 1:
            p = 1.0 / (1.0 + np.exp(-eta[i, 0]))
            A = np.array([[p * (1 - p)]])
        else:
            p = np.exp(log_softmax(eta[i]))
            A = np.diag(p) - np.outer(p, p)
        H += s[i] * np.kron(A, np.outer(Zt[i], Zt[i]))
    return H


def _balanced(y, K):
    counts = np.bincount(y, minlength=K)
    return (len(y) / (K * counts))[y]


def _newton_loss_changes(obj, X_test, y_test, balanced):
    """Reference: for each removed row, one Newton step on the objective without it from the
    fitted parameters (pseudo-inverse of its Hessian, class weights recomputed), the test log
    loss evaluated there exactly. The fit's own tiny gradient is taken out (the estimate
    assumes the fitted parameters are the optimum)."""
    theta = obj.Theta.ravel()
    M, fi, K = obj.M, obj.fit_intercept, obj.K
    g_fit = objective_gradient(theta, obj.Z, obj.y, obj.s, obj.lam, obj.Rcol, M, fi)
    Zte = obj._aug(obj.features(X_test))
    base = logsumexp(Zte @ obj.Theta.T, axis=1) - (Zte @ obj.Theta.T)[np.arange(len(y_test)), y_test]
    out = np.empty((len(y_test), obj.n_rows))
    for i in range(obj.n_rows):
        keep = np.arange(obj.n_rows) != i
        Z, y = obj.Z[keep], obj.y[keep]
        s = _balanced(y, K) if balanced else obj.s[keep]
        grad = objective_gradient(theta, Z, y, s, obj.lam, obj.Rcol, M, fi) - g_fit
        # the step's Hessian: the rows left with their fitted weights (a removal's effect on
        # the balanced weights enters through the gradient)
        H = _scratch_hessian(theta, Z, y, obj.s[keep], obj.lam, obj.Rcol, M, fi)
        step = -np.linalg.pinv(H, rcond=1e-12) @ grad
        eta = Zte @ (theta + step).reshape(M, -1).T
        out[:, i] = logsumexp(eta, axis=1) - eta[np.arange(len(y_test)), y_test] - base
    return out


CASES = [
    ("multinomial", dict()),
    ("multinomial balanced", dict(class_weight="balanced")),
    ("multinomial no intercept", dict(fit_intercept=False, C=2.0)),
    ("multinomial no penalty", dict(C=np.inf)),
]


@pytest.mark.parametrize("name,kwargs", CASES, ids=[c[0] for c in CASES])
def test_softmax_loss_changes_are_newton_steps_evaluated_exactly(name, kwargs):
    # two features are zero in every training row (one of them not in the test rows): with a
    # penalty their steps are exactly zero and left out of the products; without one the
    # Hessian is singular there and they stay in
    X, y = data(n=70, d=5, k=4, seed=3)
    X[:, 1] = 0.0
    X[:60, 3] = 0.0
    est, form = fit(LogisticRegression(tol=1e-12, max_iter=10_000, **kwargs), X[:60], y[:60])
    obj = build_objective(form, X[:60], y[:60])
    got = predicted_loss_changes(obj, X[60:], y[60:])
    ref = _newton_loss_changes(obj, X[60:], y[60:], balanced="class_weight" in kwargs)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-9 * np.abs(ref).max())
    op = obj._shift_operator("leverage-corrected")
    if np.isfinite(obj.lam) and obj.lam > 0:
        assert np.setdiff1d(np.arange(obj.D1), op.live).tolist() == [1, 3]
    # a subset of removed rows gives the same columns
    rows = np.array([5, 0, 41])
    np.testing.assert_allclose(predicted_loss_changes(obj, X[60:], y[60:], rows=rows), got[:, rows],
                               rtol=1e-12, atol=1e-15)


def test_hessian_from_probabilities_equals_the_pairwise_blocks():
    for k, kwargs in [(2, dict(class_weight="balanced")), (4, dict(class_weight="balanced")),
                      (3, dict(fit_intercept=False))]:
        X, y = data(n=300, d=6, k=k, seed=k)
        est, form = fit(LogisticRegression(tol=1e-12, max_iter=10_000, **kwargs), X, y)
        obj = build_objective(form, X, y)
        fast = obj.hessian(obj.s, obj.A, obj.Zt, p=obj.p, augment=False)
        generic = obj.hessian(obj.s, obj.A, obj.Zt, augment=False)
        scratch = _scratch_hessian(obj.Theta.ravel(), obj.Z, obj.y, obj.s, obj.lam, obj.Rcol, obj.M,
                                   obj.fit_intercept)
        np.testing.assert_allclose(fast, scratch, rtol=1e-11, atol=1e-12 * np.abs(scratch).max())
        np.testing.assert_allclose(generic, scratch, rtol=1e-11, atol=1e-12 * np.abs(scratch).max())


def test_extreme_score_shifts_fall_back_to_the_max_shifted_form():
    rng = np.random.default_rng(0)
    m, K, D1, T = 300, 4, 3, 6
    rel = rng.standard_normal((m, K - 1, D1))
    rel[::7] *= 400.0  # exp overflows for these removed rows
    Zt = np.column_stack([rng.standard_normal((T, D1 - 1)), np.ones(T)])
    eta = rng.standard_normal((T, K)) * 3
    y = rng.integers(0, K, T)
    got = _SoftmaxShifts(rel, slice(None)).loss_changes(Zt, eta, y)
    x = np.einsum("td,ikd->tki", Zt, rel)
    d = np.concatenate([x, np.zeros((T, 1, m))], axis=1)  # the last class's shift is 0
    new_loss = logsumexp(eta[:, :, None] + d, axis=1) - (eta[np.arange(T), y][:, None] + d[np.arange(T), y])
    ref = new_loss - (logsumexp(eta, axis=1) - eta[np.arange(T), y])[:, None]
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(T=st.integers(1, 6), n=st.integers(3, 400), k=st.integers(1, 12), levels=st.sampled_from([0, 3, 50]),
       seed=st.integers(0, 10_000))
def test_top_k_equals_a_stable_sort(T, n, k, levels, seed):
    k = min(k, n)
    rng = np.random.default_rng(seed)
    S = rng.standard_normal((T, n))
    if levels:  # many ties
        S = np.round(S * levels) / levels
    np.testing.assert_array_equal(_top_k(S, k, largest=True), np.argsort(-S, axis=1, kind="stable")[:, :k])
    np.testing.assert_array_equal(_top_k(S, k, largest=False), np.argsort(S, axis=1, kind="stable")[:, :k])


@pytest.mark.parametrize("k", [2, 3])
def test_one_worker_and_several_give_the_same_ranking(k):
    X, y = data(n=700, d=5, k=k, seed=8)
    est, form = fit(LogisticRegression(C=0.5), X[:600], y[:600])
    runs = []
    for limit in (1, None):
        with threadpool_limits(limit):
            obj = build_objective(form, X[:600], y[:600])
            runs.append((influence(obj, X[600:], y[600:], top=5), predicted_loss_changes(obj, X[600:], y[600:])))
    (one, full1), (many, full2) = runs
    np.testing.assert_allclose(full1, full2, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(one.helpful_rows, many.helpful_rows)
    np.testing.assert_array_equal(one.harmful_rows, many.harmful_rows)


def test_result_arrays_rows_records_and_top_rows_agree():
    X, y = data(n=130, d=4, k=3, seed=4)
    est, form = fit(LogisticRegression(), X[:110], y[:110])
    obj = build_objective(form, X[:110], y[:110])
    res = influence(obj, X[110:], y[110:], top=4, test_row_ids=np.arange(110, 130))
    full = predicted_loss_changes(obj, X[110:], y[110:])
    recs = res.records()
    for j, (r, rec) in enumerate(zip(res.rows, recs)):
        assert rec["test_row"] == r.test_row == 110 + j
        assert rec["label"] == est.classes_[r.label] and rec["loss"] == r.loss
        assert rec["helpful"] == [e.record() for e in r.helpful]
        assert rec["harmful"] == [e.record() for e in r.harmful]
    # top_rows: per test row the n largest |change| among the listed rows, by brute force
    listed = [[e.train_row for e in r.helpful + r.harmful] for r in res.rows]
    want = set()
    for j, rows in enumerate(listed):
        order = sorted(rows, key=lambda i: -abs(full[j, i]))
        want.update(order[:3])
    assert set(res.top_rows(3).tolist()) == want
    assert res.summary()["n_test"] == 20


def _child_ranking(conn, X, y):
    est, form = fit(LogisticRegression(), X[:600], y[:600])
    obj = build_objective(form, X[:600], y[:600])
    conn.send(influence(obj, X[600:], y[600:], top=3).helpful_rows)
    conn.close()


def test_a_forked_child_gets_its_own_worker_threads():
    import multiprocessing as mp

    X, y = data(n=650, d=4, k=3, seed=1)
    est, form = fit(LogisticRegression(), X[:600], y[:600])
    obj = build_objective(form, X[:600], y[:600])
    here = influence(obj, X[600:], y[600:], top=3).helpful_rows  # the pool exists now
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child_ranking, args=(child, X, y))
    proc.start()
    assert parent.poll(60), "the forked child hung"
    np.testing.assert_array_equal(parent.recv(), here)
    proc.join(10)
