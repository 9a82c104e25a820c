"""project_to_boxes and the exact halfspace step against brute force and scipy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from margin_helpers import sphere_samples, weighted
from scipy.optimize import linprog, minimize

from invaudit.errors import InputError
from invaudit.margins import project_to_boxes
from invaudit.margins._common import halfspace_step

NORMS = ["l2", "l1", "linf"]


def _boxes(rng, L, D):
    a = rng.normal(size=(L, D))
    b = a + rng.uniform(0.05, 2, size=(L, D))
    lower, upper = a.copy(), b.copy()
    lower[rng.random((L, D)) < 0.2] = -np.inf
    upper[rng.random((L, D)) < 0.2] = np.inf
    return lower, upper


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), norm=st.sampled_from(NORMS))
def test_projection_is_inside_and_nearest(seed, norm):
    rng = np.random.default_rng(seed)
    L, D = 5, 3
    lower, upper = _boxes(rng, L, D)
    x = rng.normal(size=D) * 2
    w = rng.uniform(0.5, 2, size=D)
    pts, dist = project_to_boxes(x, lower, upper, w, norm)
    assert pts.shape == (L, D) and dist.shape == (L,)
    assert np.all(pts > lower) and np.all(pts <= upper)  # strictly inside the open side
    for l in range(L):
        assert dist[l] == pytest.approx(weighted(pts[l] - x, w, norm), rel=1e-12)
        # brute force: random points of the box are never nearer
        lo = np.where(np.isfinite(lower[l]), lower[l], x - 10)
        hi = np.where(np.isfinite(upper[l]), upper[l], x + 10)
        S = rng.uniform(lo, hi, size=(2000, D))
        ds = {"l2": np.linalg.norm((S - x) * w, axis=1), "l1": np.abs((S - x) * w).sum(1),
              "linf": np.abs((S - x) * w).max(1)}[norm]
        assert ds.min() >= dist[l] - 1e-9


def test_open_lower_side_and_empty_boxes_and_batches():
    lower = np.array([[0.0, -np.inf], [1.0, 0.0], [2.0, 0.0]])
    upper = np.array([[1.0, np.inf], [1.0, 1.0], [3.0, 5.0]])  # box 1 is empty (1 < z <= 1)
    x = np.array([-1.0, 0.0])
    pts, dist = project_to_boxes(x, lower, upper)
    assert pts[0, 0] == np.nextafter(0.0, 1.0) and pts[0, 1] == 0.0
    assert np.isinf(dist[1]) and np.all(np.isnan(pts[1]))
    assert pts[2, 0] == 2.0 + np.spacing(2.0) and pts[2, 1] == np.nextafter(0.0, 1.0)
    X = np.array([[-1.0, 0.0], [0.5, 0.5]])
    P2, D2 = project_to_boxes(X, lower, upper, norm="linf")
    assert P2.shape == (2, 3, 2) and D2.shape == (2, 3)
    assert D2[1, 0] == 0.0
    with pytest.raises(InputError):
        project_to_boxes(x, lower[:, :1], upper)


def _reference_step(a, r, w, lo, hi, norm):
    D = a.size
    bounds = list(zip(lo, hi))
    if norm == "l2":
        far = np.where(a > 0, hi, lo)  # the box point maximising a . delta
        if a @ far < r:
            return np.inf
        best = np.inf
        for x0 in (far, np.clip(a * r / (a @ a), lo, hi), np.zeros(D)):
            res = minimize(lambda d: np.sum((w * d) ** 2), x0, jac=lambda d: 2 * w * w * d,
                           method="SLSQP", bounds=bounds,
                           constraints=[{"type": "ineq", "fun": lambda d: a @ d - r, "jac": lambda d: a}],
                           options={"ftol": 1e-15, "maxiter": 1000})
            d = np.clip(res.x, lo, hi)
            if a @ d >= r - 1e-9:
                best = min(best, np.sqrt(np.sum((w * d) ** 2)))
        return best
    # l1: delta = dp - dm; linf: epigraph
    if norm == "l1":
        c = np.concatenate([w, w])
        A_ub = np.concatenate([-a, a])[None, :]
        bnds = [(0, h) for h in hi] + [(0, -l) for l in lo]
        res = linprog(c, A_ub=A_ub, b_ub=[-r], bounds=bnds, method="highs")
    else:
        c = np.concatenate([np.zeros(D), [1.0]])
        A_ub = np.vstack([np.concatenate([-a, [0.0]]), np.hstack([np.diag(w), -np.ones((D, 1))]),
                          np.hstack([-np.diag(w), -np.ones((D, 1))])])
        b_ub = np.concatenate([[-r], np.zeros(2 * D)])
        res = linprog(c, A_ub=A_ub, b_ub=b_ub, bounds=bounds + [(0, None)], method="highs")
    return np.inf if res.status == 2 else res.fun


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), norm=st.sampled_from(NORMS))
def test_halfspace_step_matches_scipy(seed, norm):
    rng = np.random.default_rng(seed)
    n, D = 4, 5
    a = rng.normal(size=(n, D))
    a[rng.random((n, D)) < 0.15] = 0.0
    r = rng.uniform(0.1, 3, size=n)
    lo = -rng.uniform(0, 1.5, size=(n, D))
    hi = rng.uniform(0, 1.5, size=(n, D))
    lo[rng.random((n, D)) < 0.2] = 0.0
    w = rng.uniform(0.3, 3, size=D)
    delta, dist, resid = halfspace_step(a, r, w, norm, lo, hi)
    for i in range(n):
        ref = _reference_step(a[i], r[i], w, lo[i], hi[i], norm)
        if np.isinf(ref):
            assert np.isinf(dist[i])
            continue
        assert dist[i] == pytest.approx(ref, rel=1e-6, abs=1e-9)
        assert a[i] @ delta[i] >= r[i] * (1 - 1e-12)
        assert np.all(delta[i] >= lo[i]) and np.all(delta[i] <= hi[i])
        assert resid[i] < 1e-12
    # without a box: the closed form r / ||a / w||_q
    delta, dist, _ = halfspace_step(a, r, w, norm)
    q = {"l2": 2, "l1": np.inf, "linf": 1}[norm]
    np.testing.assert_allclose(dist, r / np.linalg.norm(a / w, q, axis=1), rtol=1e-12)


@pytest.mark.parametrize("norm", NORMS)
def test_sphere_samples_have_unit_norm(norm):
    v = sphere_samples(np.random.default_rng(0), 50, 4, norm)
    np.testing.assert_allclose([weighted(x, np.ones(4), norm) for x in v], 1.0)
