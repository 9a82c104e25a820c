"""Many classes (issue 19): target "other" without solving every class, rows in chunks, and
exact score gaps only where rounding reaches them.

The reference for "other" is the behaviour it replaces, computed here independently of the
search: every other class solved explicitly (one call per class) and the closest verified
point kept, ties to the lower class. Without a box or a confidence the optimum is also the
closed form of the nearest halfspace (the margins argument), checked on its own."""

from __future__ import annotations

import tracemalloc
from fractions import Fraction

import numpy as np
import pytest

from cf_helpers import make_form
from invaudit.counterfactual import Constraints, counterfactuals
from invaudit.counterfactual import _common
from invaudit.counterfactual._common import score_differences


def _model(K, D, seed, link="softmax", spread=1.0):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(K, D)) * spread
    b = rng.normal(size=K)
    return make_form(W, b, link)


def _rows(form, n, seed, scales=None):
    rng = np.random.default_rng(seed + 1)
    X = rng.normal(size=(n, form.n_features))
    if scales is not None:
        X = X * scales
    return X


def _every_class(form, X, conf, norm, cons):
    """The replaced behaviour: each other class solved on its own, the closest verified kept."""
    n, K = X.shape[0], form.n_classes
    orig = form.predict_index(X)
    best = [None] * n
    for j in range(K):
        rows = np.flatnonzero(orig != j)
        if rows.size == 0:
            continue
        sub = None if cons is None else Constraints(lower=cons.lower[rows], upper=cons.upper[rows],
                                                     weights=cons.weights)
        r = counterfactuals(form, X[rows], target=np.full(rows.size, j), confidence=conf,
                            norm=norm, constraints=sub)
        for q, i in enumerate(rows):
            if r.status[q] == "found" and (best[i] is None or r.distance[q] < best[i][0]):
                best[i] = (r.distance[q], j, r.exact[q], r.x_cf[q])
    return best


def _box(X, seed, frozen=3):
    rng = np.random.default_rng(seed)
    lo = X - rng.uniform(0.05, 2.0, size=X.shape)
    hi = X + rng.uniform(0.05, 2.0, size=X.shape)
    lo[:, :frozen] = X[:, :frozen]
    hi[:, :frozen] = X[:, :frozen]
    lo[:, -2:] = -np.inf  # unbounded below on two features
    return Constraints(lower=lo, upper=hi, weights=np.ones(X.shape[1]))


@pytest.mark.parametrize("conf, norm, boxed", [
    (None, "l2", False), (0.8, "l2", False), (0.3, "l2", False),
    (None, "l2", True), (0.7, "l2", True), (None, "l1", False), (None, "linf", True),
])
def test_other_equals_solving_every_class(conf, norm, boxed):
    form = _model(K=7, D=9, seed=11)
    X = _rows(form, 40, 11)
    cons = _box(X, 5) if boxed else None
    r = counterfactuals(form, X, target="other", confidence=conf, norm=norm, constraints=cons)
    ref = _every_class(form, X, conf, norm, cons)
    for i in range(len(X)):
        if ref[i] is None:
            assert r.status[i] in ("infeasible", "failed") and r.target_index[i] == -1
            continue
        dist, j, exact, x = ref[i]
        assert r.status[i] == "found"
        assert r.target_index[i] == j, (i, r.target_index[i], j)
        np.testing.assert_allclose(r.distance[i], dist, rtol=1e-9)
        np.testing.assert_allclose(r.x_cf[i], x, rtol=1e-9, atol=1e-12)
        assert bool(r.exact[i]) == bool(exact)
        assert form.predict_index(r.x_cf[i:i + 1])[0] == j
    # the search solves a fraction of the K - 1 classes per row
    assert r.iterations.sum() > 0


def test_other_without_box_is_the_nearest_halfspace():
    # independent closed form: min_j (s_o - s_j) / ||W_o - W_j|| (every class predicted
    # otherwise lies in one of these halfspaces, and the nearest projection is predicted j)
    form = _model(K=12, D=20, seed=3)
    X = _rows(form, 60, 3, scales=np.logspace(-2, 2, 20))
    r = counterfactuals(form, X, target="other")
    S = X @ form.W_full.T + form.b_full
    o = np.argmax(S, axis=1)
    dW = form.W_full[None, :, :] - form.W_full[o][:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        d = (S[np.arange(len(X)), o][:, None] - S) / np.linalg.norm(dW, axis=2)
    d[np.arange(len(X)), o] = np.inf
    assert np.all(r.status == "found") and np.all(r.exact)
    np.testing.assert_allclose(r.distance, d.min(axis=1), rtol=1e-9)
    np.testing.assert_array_equal(r.target_index, np.argmin(d, axis=1))


def test_other_reports_failure_like_solving_every_class():
    # every feature that moves is boxed so tightly that no class can be reached
    form = _model(K=5, D=6, seed=8)
    X = _rows(form, 10, 8)
    cons = Constraints(lower=X - 1e-6, upper=X + 1e-6, weights=np.ones(6))
    r = counterfactuals(form, X, target="other", constraints=cons)
    assert np.all(r.status == "infeasible") and np.all(r.target_index == -1)
    assert all("no other class" in s for s in r.reason)


def test_chunks_give_the_answers_of_one_call(monkeypatch):
    form = _model(K=6, D=8, seed=21)
    X = _rows(form, 700, 21)
    t = (form.predict_index(X) + 1) % 6
    whole = counterfactuals(form, X, target=t, confidence=0.6)
    monkeypatch.setattr(_common, "_STATE_BUDGET", 1)  # 256-row chunks
    assert _common.chunk_rows(6, 8) == 256
    parts = counterfactuals(form, X, target=t, confidence=0.6)
    other = counterfactuals(form, X, target="other")
    monkeypatch.undo()
    np.testing.assert_array_equal(parts.status, whole.status)
    np.testing.assert_allclose(parts.distance, whole.distance, rtol=1e-12)
    np.testing.assert_array_equal(parts.exact, whole.exact)
    other_whole = counterfactuals(form, X, target="other")
    np.testing.assert_array_equal(other.target_index, other_whole.target_index)
    np.testing.assert_allclose(other.distance, other_whole.distance, rtol=1e-12)


def test_other_memory_does_not_grow_with_k_squared_per_row():
    # K = 40: the replaced code kept (K-1) problems of (K-1)^2 state per row (~0.5 MB a row)
    form = _model(K=40, D=50, seed=2, spread=0.3)
    X = _rows(form, 1500, 2)
    tracemalloc.start()
    r = counterfactuals(form, X, target="other")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.all(r.status == "found")
    assert peak < 120 * 2 ** 20, peak / 2 ** 20


def _exact_gap(x, W, b, k, t):
    s = lambda c: sum(Fraction(float(w)) * Fraction(float(v)) for w, v in zip(W[c], x)) + Fraction(float(b[c]))  # noqa: E731
    return s(k) - s(t)


def test_score_gaps_near_ties_are_exact_and_bounded():
    # rows placed on (near) ties between pairs of classes at scales 1e-5 .. 1e5: only those
    # pairs are recomputed; every gap is within its error bound of the exact rational value
    rng = np.random.default_rng(4)
    K, D = 9, 12
    W = rng.normal(size=(K, D)) * np.logspace(-5, 5, D)
    b = rng.normal(size=K)
    X = rng.normal(size=(30, D))
    for i in range(0, 30, 2):  # move row i onto the boundary between classes 1 and 2
        a = W[1] - W[2]
        X[i] -= ((X[i] @ a + b[1] - b[2]) / (a @ a)) * a
    ref = np.argmax(X @ W.T + b, axis=1)
    ref[::2] = 1  # gaps relative to class 1: the pair (1, 2) is within rounding of a tie
    Sd, err, _ = score_differences(X, W, b, ref)
    for i in range(30):
        for k in range(K):
            ex = _exact_gap(X[i], W, b, k, ref[i])
            assert abs(Fraction(float(Sd[i, k])) - ex) <= Fraction(float(err[i, k])) * (1 + 1e-12)
    # the boundary pairs were rounded once from the exact value
    for i in range(0, 30, 2):
        assert Sd[i, 2] == float(_exact_gap(X[i], W, b, 2, 1))
        assert err[i, 2] <= np.finfo(float).eps * abs(Sd[i, 2])


@pytest.mark.parametrize("L", [1, 2, 3, 7, 64, 1001])
def test_accurate_row_sums_are_within_their_bound_of_the_exact_sum(L):
    # heavy cancellation at mixed scales: the pairwise TwoSum tree's sum is within its bound of
    # the exact rational sum, and the bound is about an ulp of the sum (never the terms' size)
    from invaudit.counterfactual._common import _accurate_row_sums

    rng = np.random.default_rng(L)
    T = rng.normal(size=(40, L)) * 10.0 ** rng.integers(-5, 6, size=(40, L))
    T[::2, -1] = 0.0
    T[::2, -1] = -np.array([float(sum(Fraction(float(v)) for v in row)) for row in T[::2]])
    s, bound = _accurate_row_sums(T)
    for i in range(40):
        ex = sum(Fraction(float(v)) for v in T[i])
        assert abs(Fraction(float(s[i])) - ex) <= Fraction(float(bound[i]))
        assert bound[i] <= 2.5 * np.finfo(float).eps * abs(s[i]) + 1e-300 or s[i] == float(ex)


@pytest.mark.parametrize("D", [40, 700])
def test_split_score_gaps_are_within_their_bound_at_every_scale(D):
    # the error-free split (exact high part, bounded rest) on rows near ties and far from them,
    # features at scales 1e-5 .. 1e5, a zero row and a row of one huge feature: every gap is
    # within its bound of the exact rational value, and the bounds are about 2^-t tighter
    # than the plain product's worst case
    rng = np.random.default_rng(D)
    K = 5
    W = rng.normal(size=(K, D)) * np.logspace(-5, 5, D)[rng.permutation(D)]
    b = rng.normal(size=K) * 10.0
    X = rng.normal(size=(12, D)) * np.logspace(5, -5, D)
    for i in range(0, 8, 2):
        a = W[0] - W[3]
        X[i] -= ((X[i] @ a + b[0] - b[3]) / (a @ a)) * a
    X[9] = 0.0
    X[10] = 0.0
    X[10, 3] = 1e150
    ref = np.zeros(12, dtype=int)
    Sd, err, absS = score_differences(X, W, b, ref)
    for i in range(12):
        for k in range(K):
            ex = _exact_gap(X[i], W, b, k, 0)
            assert abs(Fraction(float(Sd[i, k])) - ex) <= Fraction(float(err[i, k]))
    # on features of one scale (what a scaler gives) the split leaves almost nothing to round
    X1, W1 = rng.normal(size=(20, D)), rng.normal(size=(K, D))
    r0 = ref[:1].repeat(20)
    Sd1 = X1 @ W1.T + b
    Sd1 = Sd1 - Sd1[:, :1]
    plain = (D + 2) * np.finfo(float).eps / 2 * (np.abs(X1) @ np.abs(W1).T + np.abs(b)).max(axis=1)
    err1 = np.full_like(Sd1, np.inf)
    err1[:, 0] = 0.0
    _common._split_gaps(X1, W1, b, r0, Sd1, err1, 0.0)   # the split alone, on every pair
    u = np.finfo(float).eps / 2
    # within a few ulps of each gap (the plain bound is ~D ulps of the largest score)
    assert np.all(err1[:, 1:] < 64 * u * np.abs(Sd1[:, 1:]))
    assert np.all(err1[:, 1:] < 0.1 * plain[:, None])
    for i in range(3):
        for k in range(K):
            ex = _exact_gap(X1[i], W1, b, k, 0)
            assert abs(Fraction(float(Sd1[i, k])) - ex) <= Fraction(float(err1[i, k]))
