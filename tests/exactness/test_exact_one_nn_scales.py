"""Red team: exact 1-NN margins and counterfactuals at feature scales 1e-8..1e8.

The least-distance programme of a Voronoi cell went through NNLS in the caller's units; its
infeasibility test (a residual below 1e-14) fires for distances ~1e7, so every cell looked
empty: margins were reported ``exact`` and infinite ("unreachable"), counterfactuals
"infeasible". The reference is independent of the solver: in 2-D, the first point along each of
many rays that a brute-force nearest neighbour (numpy, differences taken directly) puts in
another class (bisection), refined around the best ray; it is an upper bound on the true margin
and meets it up to the angular resolution (second order). Every reported point is also checked
with the estimator's own ``predict``.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

from invaudit.counterfactual import counterfactuals
from invaudit.margins import margins
from invaudit.models import adapt


def _first_exit(predict, x0, own, dirs, tmax, n_scan=200, iters=60):
    ts = np.geomspace(tmax * 1e-9, tmax, n_scan)
    P = x0 + (ts[None, :, None] * dirs[:, None, :]).reshape(-1, x0.size)
    other = (predict(P) != own).reshape(len(dirs), n_scan)
    i = np.argmax(other, axis=1)
    a = np.where(i > 0, ts[np.maximum(i - 1, 0)], 0.0)
    b = ts[i]
    for _ in range(iters):
        m = 0.5 * (a + b)
        q = predict(x0 + m[:, None] * dirs) != own
        a, b = np.where(q, a, m), np.where(q, m, b)
    return np.where(other.any(axis=1), b, np.inf)


def ray_margin(predict, x0, own, tmax, n=180):
    th = np.linspace(0, 2 * np.pi, n, endpoint=False)
    t = _first_exit(predict, x0, own, np.c_[np.cos(th), np.sin(th)], tmax)
    k = int(np.argmin(t))
    best, half = t[k], 2 * np.pi / n
    c = th[k]
    for _ in range(4):  # zoom in around the best ray
        th2 = np.linspace(c - half, c + half, 41)
        t2 = _first_exit(predict, x0, own, np.c_[np.cos(th2), np.sin(th2)], tmax)
        k = int(np.argmin(t2))
        best, c, half = min(best, t2[k]), th2[k], half / 20
    return best


def brute_1nn(X, y):
    def predict(P):
        d = np.sum((P[:, None, :] - X[None, :, :]) ** 2, axis=2)
        return y[np.argmin(d, axis=1)]
    return predict


@pytest.mark.parametrize("scale", [1e-8, 1e4, 1e8])
def test_one_nn_margins_and_counterfactuals_are_exact_at_every_scale(scale):
    rng = np.random.default_rng(4)
    X0 = rng.normal(size=(40, 2))
    y = np.where(X0[:, 0] + X0[:, 1] > 0.2, "yes", "no")
    X = X0 * scale
    est = KNeighborsClassifier(1).fit(X, y)
    form = adapt(est)
    Xq = X[:3] + 0.05 * scale
    own = est.predict(Xq)
    assert np.array_equal(brute_1nn(X, y)(Xq), own)
    b = margins(form, Xq)
    assert b.exact.all()
    for i, x in enumerate(Xq):
        ref = ray_margin(brute_1nn(X, y), x, own[i], 20 * np.abs(X).max())
        assert np.isfinite(ref)
        assert b.margin[i] == pytest.approx(ref, rel=1e-6)  # the ray reference is 2nd-order accurate
        assert b.lower_bound[i] <= ref * (1 + 1e-9)
        assert est.predict((x + b.perturbation[i])[None])[0] != own[i]
    target = np.searchsorted(est.classes_, np.where(own == "yes", "no", "yes"))
    r = counterfactuals(form, Xq, target=target)
    assert list(r.status) == ["found"] * 3 and r.exact.all()
    np.testing.assert_allclose(r.distance, b.margin, rtol=1e-9)  # two classes: the same problem
    assert np.all(est.predict(r.x_cf) != own)


def test_a_cell_left_unsolved_keeps_the_lower_bound_a_lower_bound(monkeypatch):
    # when a candidate cell's programme fails (here: the first one each row tries, as a solver
    # breakdown would), the row is not exact and its lower bound must come from that cell's
    # bisector bound, not from the best cell that did solve (which used to be reported)
    from invaudit.margins._neighbors import CellSolver

    rng = np.random.default_rng(4)
    X = rng.normal(size=(40, 2)) * 1e3
    y = np.where(X[:, 0] + X[:, 1] > 200.0, "yes", "no")
    est = KNeighborsClassifier(1, weights="distance").fit(X, y)
    Xq = X[:4] + 50.0
    truth = margins(adapt(est), Xq)
    assert truth.exact.all()
    real = CellSolver.cell
    calls = {}

    def flaky(self, z0, d2, t, extra, vlo, vhi):
        key = z0.tobytes()
        calls[key] = calls.get(key, 0) + 1
        if calls[key] == 1:
            return None, np.nan, 0.0, False
        return real(self, z0, d2, t, extra, vlo, vhi)

    monkeypatch.setattr(CellSolver, "cell", flaky)
    b = margins(adapt(est), Xq)
    fin = np.isfinite(b.margin)
    assert np.all(b.lower_bound[fin] <= truth.margin[fin] * (1 + 1e-12))
    assert np.all(b.lower_bound[fin] <= b.margin[fin] * (1 + 1e-12))
    assert not b.exact.all()
