"""Shared pieces for the margin tests: tiny estimators and independent reference solvers."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linprog, minimize
from threadpoolctl import ThreadpoolController

from invaudit.models.base import LinearForm

_THREADS = ThreadpoolController()


class Box:
    """Shaped like ``invaudit.counterfactual.Constraints``: bounds on the point, metric weights."""

    def __init__(self, lower, upper, weights):
        self.lower = lower
        self.upper = upper
        self.weights = weights


class ArgmaxLinear:
    """A linear classifier with given ``W`` (K x D) and ``b``: predicts the argmax of the scores
    (binary, ``W`` of one row: ``classes_[1]`` when the score is positive), as scikit-learn does."""

    def __init__(self, W, b):
        self.W = np.asarray(W, dtype=np.float64)
        self.b = np.asarray(b, dtype=np.float64)
        K = 2 if self.W.shape[0] == 1 else self.W.shape[0]
        self.classes_ = np.arange(K)

    def decision_function(self, X):
        s = np.asarray(X, dtype=np.float64) @ self.W.T + self.b
        return s[:, 0] if self.W.shape[0] == 1 else s

    def predict(self, X):
        s = self.decision_function(X)
        if self.W.shape[0] == 1:
            return self.classes_[(s > 0).astype(int)]
        return self.classes_[np.argmax(s, axis=1)]


def linear_form(W, b, link="none", estimator=None):
    W = np.asarray(W, dtype=np.float64)
    est = ArgmaxLinear(W, b) if estimator is None else estimator
    return LinearForm(estimator=est, W=W, b=np.asarray(b, dtype=np.float64), link=link,
                      classes=np.asarray(est.classes_), n_features=W.shape[1])


def sklearn_linear_form(clf):
    W = clf.coef_.copy()
    link = "sigmoid" if W.shape[0] == 1 else "softmax"
    return LinearForm(estimator=clf, W=W, b=np.atleast_1d(clf.intercept_).astype(float).copy(), link=link,
                      classes=clf.classes_, n_features=W.shape[1])


def region_distance(Wf, bf, x, j, norm, w=None, lo=None, hi=None, starts=4, seed=0):
    """Independent reference: distance from ``x`` to the polyhedron where class ``j`` scores at
    least as high as every class (``Wf``, ``bf``: K-row scores), inside ``x + [lo, hi]``.

    l1 / linf: an exact LP (HiGHS, ``linprog``); l2: SLSQP from several starts. ``inf`` when
    infeasible."""
    K, D = Wf.shape
    w = np.ones(D) if w is None else w
    lo = np.full(D, -np.inf) if lo is None else lo
    hi = np.full(D, np.inf) if hi is None else hi
    others = [k for k in range(K) if k != j]
    A = np.array([Wf[k] - Wf[j] for k in others])          # A delta <= rhs
    rhs = np.array([(Wf[j] - Wf[k]) @ x + bf[j] - bf[k] for k in others])
    bounds_d = [(None if not np.isfinite(l) else l, None if not np.isfinite(h) else h) for l, h in zip(lo, hi)]
    if norm in ("l1", "linf"):
        if norm == "l1":  # variables delta (D), t (D): t >= |w delta|
            c = np.concatenate([np.zeros(D), np.ones(D)])
            Wd = np.diag(w)
            A_ub = np.block([[A, np.zeros((len(others), D))], [Wd, -np.eye(D)], [-Wd, -np.eye(D)]])
            b_ub = np.concatenate([rhs, np.zeros(2 * D)])
            bounds = bounds_d + [(0, None)] * D
        else:  # variables delta (D), t: t >= |w_i delta_i|
            c = np.concatenate([np.zeros(D), [1.0]])
            Wd = np.diag(w)
            A_ub = np.block([[A, np.zeros((len(others), 1))], [Wd, -np.ones((D, 1))], [-Wd, -np.ones((D, 1))]])
            b_ub = np.concatenate([rhs, np.zeros(2 * D)])
            bounds = bounds_d + [(0, None)]
        res = linprog(c, A_ub=A_ub, b_ub=b_ub, bounds=bounds, method="highs")
        if res.status == 2:
            return np.inf
        assert res.status == 0, res.message
        return float(res.fun)
    rng = np.random.default_rng(seed)
    best = np.inf
    cons = [{"type": "ineq", "fun": lambda d: rhs - A @ d, "jac": lambda d: -A}]
    lo_f = np.where(np.isfinite(lo), lo, -1e6)
    hi_f = np.where(np.isfinite(hi), hi, 1e6)
    # a feasible start, if any: the LP for linf gives one
    start_lp = linprog(np.zeros(D), A_ub=A, b_ub=rhs, bounds=bounds_d, method="highs")
    if start_lp.status == 2:
        return np.inf
    x0s = [start_lp.x] + [np.clip(rng.normal(size=D), lo_f, hi_f) for _ in range(starts - 1)]
    for x0 in x0s:
        with _THREADS.limit(limits=1, user_api="blas"):  # BLAS threads only slow SLSQP's small steps
            res = minimize(lambda d: np.sum((w * d) ** 2), x0, jac=lambda d: 2 * w * w * d, method="SLSQP",
                           constraints=cons, bounds=bounds_d, options={"ftol": 1e-14, "maxiter": 500})
        d = res.x
        if np.all(A @ d <= rhs + 1e-9) and np.all(d >= lo - 1e-9) and np.all(d <= hi + 1e-9):
            best = min(best, float(np.sqrt(np.sum((w * d) ** 2))))
    return best


def weighted(delta, w, norm):
    u = np.abs(np.asarray(delta) * w)
    return float(np.sqrt(np.sum(u * u)) if norm == "l2" else (u.sum() if norm == "l1" else u.max()))


def sphere_samples(rng, n, d, norm):
    """``n`` random directions of unit ``norm`` (and random radii in [0, 1] applied by callers)."""
    if norm == "l2":
        v = rng.standard_normal((n, d))
        return v / np.linalg.norm(v, axis=1, keepdims=True)
    if norm == "l1":
        v = rng.laplace(size=(n, d))
        return v / np.abs(v).sum(axis=1, keepdims=True)
    v = rng.uniform(-1, 1, size=(n, d))
    i = rng.integers(0, d, size=n)
    v[np.arange(n), i] = np.sign(v[np.arange(n), i]) + (v[np.arange(n), i] == 0)
    return v
