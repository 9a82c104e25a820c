"""Many classes (issue 19): above the explicit-inverse size the softmax Hessian is formed from
its class-pair x feature-pair blocks and Cholesky-factorised; conjugate gradients (larger
still) use ``A_i v = p_i * v - p_i (p_i . v)`` without the ``(n, M, M)`` blocks.

References built here, independently: the Hessian summed row by row from its definition
``sum_i s_i (diag(p_i) - p_i p_i^T) (x) zt_i zt_i^T + lam diag(R)`` and its pseudo-inverse, and
the explicit-inverse path on the same model."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.linear_model import LogisticRegression

from influence_helpers import data, fit
from invaudit.influence import build_objective, influence
from invaudit.influence._influence import predicted_loss_changes

CASES = [("plain", dict(), 5), ("no intercept", dict(fit_intercept=False), 4),
         ("balanced", dict(class_weight="balanced", C=0.5), 5), ("no penalty", dict(C=np.inf), 3)]


def _naive_hessian(obj):
    """The unaugmented Hessian, one row at a time (no shared code with the package)."""
    Zt = obj.Zt
    eta = Zt @ obj.Theta.T
    p = softmax(eta, axis=1)
    P = obj.n_params
    H = np.zeros((P, P))
    for i in range(Zt.shape[0]):
        A = np.diag(p[i]) - np.outer(p[i], p[i])
        H += obj.s[i] * np.kron(A, np.outer(Zt[i], Zt[i]))
    H[np.diag_indices_from(H)] += obj.lam * np.tile(obj.Rcol, obj.M)
    return H


def _model(kwargs, k, seed=0, n=120, d=4):
    X, y = data(n=n, d=d, k=k, seed=seed)
    est, form = fit(LogisticRegression(tol=1e-12, max_iter=10_000, **kwargs), X, y)
    return X, y, form


@pytest.mark.parametrize("name,kwargs,k", CASES, ids=[c[0] for c in CASES])
def test_factorised_solves_equal_the_pseudo_inverse_of_the_naive_hessian(name, kwargs, k):
    X, y, form = _model(kwargs, k)
    fac = build_objective(form, X, y, max_direct_params=5)  # above the explicit-inverse size
    assert fac.method == "cholesky" and fac.Hinv is None and fac.estimates == ("first-order",)
    assert fac.exact and any("Cholesky-factorised" in n for n in fac.notes)
    H = _naive_hessian(fac)
    G = fac.train_gradients[:9]
    # gradients are orthogonal to the softmax's null directions: H_hat^-1 g = H^+ g
    np.testing.assert_allclose(fac.solve(G), G @ np.linalg.pinv(H, rcond=1e-12), rtol=1e-7,
                               atol=1e-9 * np.abs(G @ np.linalg.pinv(H)).max())
    # the block formation is the augmented Hessian of the explicit path
    direct = build_objective(form, X, y)
    np.testing.assert_allclose(fac._factor_hessian(fac.s), direct.hessian(direct.s, direct.A, direct.Zt, p=direct.p),
                               rtol=1e-12, atol=1e-12 * np.abs(H).max())


@pytest.mark.parametrize("name,kwargs,k", CASES[:3], ids=[c[0] for c in CASES[:3]])
def test_influence_unchanged_across_solvers(name, kwargs, k):
    # the first-order loss changes of every (test, train) pair: explicit inverse, factor, CG
    X, y, form = _model(kwargs, k, seed=1)
    Xt, yt = X[:6] + 0.1, y[:6]
    objs = [build_objective(form, X, y),
            build_objective(form, X, y, max_direct_params=5),
            build_objective(form, X, y, max_direct_params=5, max_factor_params=5, cg_tol=1e-13)]
    assert [o.method for o in objs] == ["cholesky", "cholesky", "conjugate-gradient"]
    ref = predicted_loss_changes(objs[0], Xt, yt, estimate="first-order")
    for o in objs[1:]:
        got = predicted_loss_changes(o, Xt, yt, estimate="first-order")
        np.testing.assert_allclose(got, ref, rtol=1e-7, atol=1e-10 * np.abs(ref).max())
    a = influence(objs[0], Xt, yt, top=5, estimate="first-order")
    b = influence(objs[1], Xt, yt, top=5)
    np.testing.assert_array_equal(a.helpful_rows, b.helpful_rows)
    np.testing.assert_allclose(b.helpful_values, a.helpful_values, rtol=1e-8)
    # self-influence (mislabel) and group predictions through the factor
    np.testing.assert_allclose(objs[1].self_influence(), objs[0].self_influence("first-order"),
                               rtol=1e-8, atol=1e-12)
    f0, n0 = objs[0].group_prediction(np.arange(5), Xt, yt)
    f1, n1 = objs[1].group_prediction(np.arange(5), Xt, yt)
    np.testing.assert_allclose(f1, f0, rtol=1e-8)
    np.testing.assert_allclose(n1, n0, rtol=1e-8)


def test_matrix_free_products_need_no_per_row_blocks():
    X, y, form = _model({}, 6, seed=2)
    obj = build_objective(form, X, y, max_direct_params=5, max_factor_params=5)
    assert obj._A is None  # nothing formed the (n, M, M) blocks
    H = _naive_hessian(obj)
    v = np.random.default_rng(0).normal(size=obj.n_params)
    V = v.reshape(obj.M, obj.D1)
    Vc = V.copy()
    Vc[:, obj.null_cols] -= V[:, obj.null_cols].mean(axis=0)  # the Hessian's own part
    expect = H @ v + obj._null_scale * np.tile(np.isin(np.arange(obj.D1), obj.null_cols), obj.M) * \
        np.repeat(V.mean(axis=0, keepdims=True), obj.M, axis=0).ravel()
    np.testing.assert_allclose(obj._hvp(v), expect, rtol=1e-10, atol=1e-10 * np.abs(expect).max())
    # the blocks, when some path asks for them, are diag(p) - p p^T
    A = obj.A
    np.testing.assert_allclose(A[3], np.diag(obj.p[3]) - np.outer(obj.p[3], obj.p[3]), rtol=1e-14)


@pytest.mark.parametrize("name,kwargs,k", [("multinomial", dict(), 4), ("binary", dict(), 2),
                                           ("balanced", dict(class_weight="balanced"), 3),
                                           ("factorised", dict(), 5)])
def test_refit_by_newton_chord_matches_scikit_learn(name, kwargs, k):
    # mislabel's pruned refit: Newton-chord steps on the factorised Hessian reach the same
    # optimum as scikit-learn's own refit (tight tolerance), so the clean objective is the same
    X, y, form = _model(kwargs, k, seed=4, n=150)
    obj = build_objective(form, X, y, **({"max_direct_params": 5} if name == "factorised" else {}))
    rows = np.array([1, 7, 8, 30, 77, 101])
    keep = np.setdiff1d(np.arange(len(y)), rows)
    chord = obj._refit_by_chord(np.isin(np.arange(len(y)), keep))
    assert chord is not None
    ref = obj.refit_without(rows, tol=1e-12)
    ref_p = ref.predict_proba(obj.Z)
    np.testing.assert_allclose(chord.predict_proba(obj.Z), ref_p, rtol=1e-7, atol=1e-10)
    clean = obj.refitted(rows)
    np.testing.assert_allclose(clean.proba(X[keep]), ref_p[keep], rtol=1e-7, atol=1e-10)
