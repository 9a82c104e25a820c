"""Many classes (issue 19): the cache-blocked Hessian and leverage kernels, the chunked
leave-one-out score shifts, first-order influence without the (rows x parameters) gradient
matrix, and the multi-threaded Cholesky, each against an independent reference written here
(einsum sums from the definitions, a per-row Newton step with its own pseudo-inverse, the
explicit-inverse path). Conjugate gradients (rewritten to allocate nothing
inside the loop) are checked against the factor by test_influence_many_classes.py."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import invaudit.influence._objective as objective_module
from influence_helpers import data, fit
from invaudit.influence import build_objective, influence
from invaudit.influence._influence import predicted_loss_changes


def _scaled_rows(n, d, seed):
    """Rows whose features span 1e-5..1e5 (each column its own scale)."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) * np.logspace(-5, 5, d)[rng.permutation(d)]


@pytest.mark.parametrize("n,D1,M", [(700, 13, 5), (1300, 37, 3), (257, 101, 4)])
def test_pair_kernels_equal_their_definitions(n, D1, M):
    rng = np.random.default_rng(n)
    Zt = _scaled_rows(n, D1, seed=D1)
    p = rng.dirichlet(np.ones(M), size=n)
    s = rng.uniform(0.2, 3.0, size=n)
    ku, lu = np.triu_indices(M)
    ia, ib = np.triu_indices(D1)
    # sum_i s_i A_i[k, l] zt_a zt_b with A_i = diag(p_i) - p_i p_i^T, straight from the definition
    A = np.einsum("ik,kl->ikl", p, np.eye(M)) - np.einsum("ik,il->ikl", p, p)
    full = np.einsum("i,ikl,ia,ib->klab", s, A, Zt, Zt)
    got = objective_module._class_feature_blocks(Zt, s, p, ku, lu, ia, ib)
    want = full[ku, lu][:, ia, ib].T
    scale = np.abs(want).max(axis=0, keepdims=True)
    np.testing.assert_allclose(got / scale, want / scale, rtol=0, atol=1e-12)
    # quadratic forms zt_i^T B[q] zt_i for non-symmetric B (only the symmetric part counts)
    B = rng.normal(size=(7, D1, D1)) / np.outer(np.abs(Zt).max(axis=0), np.abs(Zt).max(axis=0))
    q = objective_module._quadratic_forms(Zt, B)
    ref = np.einsum("ia,qab,ib->iq", Zt, B, Zt)
    np.testing.assert_allclose(q, ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max())


def _naive_hessian(obj):
    """The unaugmented Hessian summed one row at a time."""
    p = softmax(obj.Zt @ obj.Theta.T, axis=1)
    H = np.zeros((obj.n_params, obj.n_params))
    for i in range(obj.n_rows):
        A = np.diag(p[i]) - np.outer(p[i], p[i])
        H += obj.s[i] * np.kron(A, np.outer(obj.Zt[i], obj.Zt[i]))
    H[np.diag_indices_from(H)] += obj.lam * np.tile(obj.Rcol, obj.M)
    return H, p


@pytest.mark.parametrize("kwargs", [{}, {"fit_intercept": False}], ids=["intercept", "no intercept"])
def test_chunked_score_shifts_are_per_row_newton_steps(monkeypatch, kwargs):
    # approximate leave-one-out score shifts, computed in several chunks of rows side by side,
    # equal a Newton step on the objective without each row, with its own pseudo-inverse
    monkeypatch.setattr(objective_module, "_SHIFT_ROWS", 97)
    X, y = data(n=600, d=3, k=4, seed=3)
    X = X * np.array([1e-4, 1.0, 1e4])
    est = make_pipeline(StandardScaler(), LogisticRegression(tol=1e-12, max_iter=5000, **kwargs))
    _, form = fit(est, X, y)
    obj = build_objective(form, X, y)
    shifts = obj.score_shifts("leverage-corrected")
    H, p = _naive_hessian(obj)
    for i in [0, 1, 96, 97, 98, 300, 599]:
        A = np.diag(p[i]) - np.outer(p[i], p[i])
        Zi = np.kron(np.eye(obj.M), obj.Zt[i][:, None])  # (P, M)
        H_i = H - obj.s[i] * Zi @ A @ Zi.T
        r = p[i] - np.eye(obj.M)[y[i]]
        step = np.linalg.pinv(H_i, rcond=1e-12) @ (obj.s[i] * Zi @ r)
        want = Zi.T @ step
        # the softmax sees score differences only: the shifts are relative to the last class
        assert shifts[i, -1] == 0.0
        np.testing.assert_allclose(shifts[i], want - want[-1], rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("kwargs", [{}, {"class_weight": "balanced", "C": 0.5}], ids=["plain", "balanced"])
def test_first_order_influence_without_the_gradient_matrix(monkeypatch, kwargs):
    # the factorised path (many classes) forms no (rows x parameters) matrix: chunks of rows
    # against the solved test gradients; same loss changes and rankings as the explicit inverse
    X, y = data(n=400, d=5, k=6, seed=5)
    _, form = fit(LogisticRegression(tol=1e-12, max_iter=5000, **kwargs), X, y)
    Xt, yt = X[:9] * 1.1, y[:9]
    direct = build_objective(form, X, y)
    ref = predicted_loss_changes(direct, Xt, yt, estimate="first-order")
    monkeypatch.setattr(objective_module, "_FIRST_ORDER_DIRECT", 0)
    fac = build_objective(form, X, y, max_direct_params=5)
    assert fac.method == "cholesky" and fac.Hinv is None
    got = predicted_loss_changes(fac, Xt, yt, estimate="first-order")
    np.testing.assert_allclose(got, ref, rtol=1e-8, atol=1e-11 * np.abs(ref).max())
    a = influence(direct, Xt, yt, top=7, estimate="first-order")
    b = influence(fac, Xt, yt, top=7)
    np.testing.assert_array_equal(a.helpful_rows, b.helpful_rows)
    np.testing.assert_array_equal(a.harmful_rows, b.harmful_rows)
    # self-influence through the factor, in chunks of rows
    np.testing.assert_allclose(fac.self_influence(), direct.self_influence("first-order"),
                               rtol=1e-8, atol=1e-12)


def _scaled_objective(k, kwargs=None, zero_column=False, n=300):
    """An objective on rows at scales 1e-5..1e5 (a column that is zero in every row if asked)."""
    X, y = data(n=n, d=6, k=k, seed=k + 20)
    X = X * np.logspace(-5, 5, 6)
    if zero_column:
        X[:, 2] = 0.0
    est = LogisticRegression(tol=1e-12, max_iter=10000, **(kwargs or {}))
    _, form = fit(make_pipeline(StandardScaler(), est), X, y)  # a zero column stays zero
    return build_objective(form, X, y)


@pytest.mark.parametrize("k", [3, 5, 8])
def test_last_class_blocks_of_the_hessian_follow_from_the_others(k):
    # only the class pairs k <= l < M - 1 are summed over the rows; the last class's blocks
    # come from the zero row sums of A_i. Checked against the row-by-row definition, at the
    # fitted probabilities and at arbitrary ones (a refit's, or the kept rows' with weights)
    obj = _scaled_objective(k)
    H, _ = _naive_hessian(obj)
    got = obj._pair_hessian(obj.s, augment=False)
    scale = np.abs(H).max()
    np.testing.assert_allclose(got, H, rtol=0, atol=1e-12 * scale)
    assert np.array_equal(got, got.T)
    rng = np.random.default_rng(k)
    rows = rng.choice(obj.n_rows, 77, replace=False)
    p = rng.dirichlet(np.full(k, 0.3), size=rows.size)
    s = rng.uniform(0.1, 4.0, size=rows.size)
    Zt = obj.Zt[rows]
    A = np.einsum("ik,kl->ikl", p, np.eye(k)) - np.einsum("ik,il->ikl", p, p)
    want = np.einsum("i,ikl,ia,ib->kalb", s, A, Zt, Zt).reshape(obj.n_params, obj.n_params)
    got = obj._raw_pair_hessian(s, Zt, p)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())


@pytest.mark.parametrize("kwargs,zero", [({}, False), ({"class_weight": "balanced", "C": 0.3}, False),
                                         ({"fit_intercept": False}, True)],
                         ids=["plain", "balanced", "zero column, no intercept"])
def test_leverage_on_score_differences_is_the_full_leverage_projected(kwargs, zero):
    # Qu_i = U^T Q_i U with Q_i = Z_i^T H_hat^-1 Z_i formed here from the explicit inverse, and
    # the leverage-corrected removal terms equal the M x M Woodbury step written out in full
    obj = _scaled_objective(5, kwargs, zero_column=zero)
    assert obj._zero_columns.size == int(zero)
    M, D1 = obj.M, obj.D1
    H4 = obj.Hinv.reshape(M, D1, M, D1)
    Q = np.einsum("ia,kalb,ib->ikl", obj.Zt, H4, obj.Zt)
    U = np.vstack([np.eye(M - 1), -np.ones((1, M - 1))])
    want = U.T @ Q @ U
    got = obj.relative_leverage_blocks()
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())
    rows = np.array([0, 3, 10, 150, obj.n_rows - 1])
    np.testing.assert_array_equal(obj.relative_leverage_blocks(rows), got[rows])
    e, cls = obj.removal_terms("leverage-corrected", rows)
    s, r, p = obj.s[rows], obj.r[rows], obj.p[rows]
    alpha = s.copy()
    yv = np.zeros((rows.size, M))
    if obj.balanced:
        delta, _, Y = obj._balance_shift()
        alpha += delta[obj.y[rows], obj.y[rows]]
        yv = np.einsum("imd,id->im", Y[obj.y[rows]].reshape(-1, M, D1), obj.Zt[rows])
    for j, i in enumerate(rows):
        Mi = s[j] * (np.diag(p[j]) - np.outer(p[j], p[j]))
        x = np.linalg.solve(np.eye(M) - Mi @ Q[i], Mi @ (alpha[j] * Q[i] @ r[j] - yv[j]))
        np.testing.assert_allclose(e[j], alpha[j] * r[j] + x, rtol=1e-8,
                                   atol=1e-10 * np.abs(alpha[j] * r[j] + x).max())


def test_grouped_hessian_kernel_equals_the_pair_product_kernel():
    # the grouped kernel (rows' class-pair weights times a group of features, one product per
    # group) against the pair-product kernel it replaces for few class pairs: rows not a
    # multiple of the chunk, features not a multiple of the group, weights of either sign
    rng = np.random.default_rng(5)
    n, D1, M = 1100, 29, 6
    Zt = _scaled_rows(n, D1, seed=4)
    p = rng.dirichlet(np.ones(M), size=n)
    s = rng.uniform(0.0, 2.0, size=n)
    ku, lu = np.triu_indices(M - 1)
    ia, ib = np.triu_indices(D1)
    assert ku.size * D1 <= 1.25 * ia.size  # the grouped kernel's case
    got = objective_module._class_feature_blocks(Zt, s, p, ku, lu, ia, ib)
    want = objective_module._class_feature_blocks_pairs(Zt, s, p, ku, lu, ia, ib)
    scale = np.abs(want).max(axis=0, keepdims=True)
    np.testing.assert_allclose(got / scale, want / scale, rtol=0, atol=1e-13)


def test_numpy_replacements_give_scipys_bits():
    # the LogisticRegression paths import no scipy (issue 19): logsumexp, log_softmax and expit
    # are numpy code that must give scipy's numbers bit for bit, tiny losses included
    from scipy.special import expit, log_softmax, logsumexp

    rng = np.random.default_rng(2)
    a = rng.normal(size=(3000, 7)) * 30
    a[0, :3] = a[0].max() + 1.0  # a tied maximum
    a[1] = [40.0, 0, 0, 0, 0, 0, 0]  # a row whose loss at its max is ~1e-17
    for got, want in [(objective_module._logsumexp(a, axis=1), logsumexp(a, axis=1)),
                      (objective_module._log_softmax(a, axis=1), log_softmax(a, axis=1)),
                      (objective_module._sigmoid(a[:, 0]), expit(a[:, 0]))]:
        assert np.array_equal(got, want)
    loss = objective_module._logsumexp(a[1:2], axis=1)[0] - 40.0
    assert loss == pytest.approx(6 * np.exp(-40.0), rel=1e-12)  # not rounded to zero


@pytest.mark.parametrize("P,direct", [(40, True), (40, False)], ids=["numpy", "lapack"])
def test_spd_solver_and_inverse_against_numpy(monkeypatch, P, direct):
    # the chord matrix's solver and the explicit inverse: numpy up to _NUMPY_INVERSE_MAX
    # parameters, scipy's Cholesky factor (and potri) above; no solver where the matrix is not
    # (well-conditioned) positive definite
    if not direct:
        monkeypatch.setattr(objective_module, "_NUMPY_INVERSE_MAX", P - 1)
    rng = np.random.default_rng(P)
    A = rng.normal(size=(P, P)) * np.logspace(-1, 1, P)
    H = A @ A.T + 1e-2 * np.eye(P)  # condition number ~1e5
    G = rng.normal(size=(3, P))
    solve = objective_module._spd_solver(H.copy())
    want = np.linalg.solve(H, G.T).T
    np.testing.assert_allclose(solve(G), want, rtol=1e-8, atol=1e-10 * np.abs(want).max())
    bad = H.copy()
    bad[0, 0] = -1.0
    assert objective_module._spd_solver(bad) is None
    # the explicit inverse: symmetric, H^-1 to rounding; a singular H gets the pseudo-inverse
    inv, singular = objective_module._inverse(H)
    assert not singular and np.array_equal(inv, inv.T)
    np.testing.assert_allclose(inv @ H, np.eye(P), atol=1e-8)
    S = A[:, :5] @ A[:, :5].T
    pinv, singular = objective_module._inverse(S)
    assert singular
    np.testing.assert_allclose(pinv, np.linalg.pinv(S, rcond=1e-10, hermitian=True),
                               atol=1e-9 * np.abs(pinv).max())
