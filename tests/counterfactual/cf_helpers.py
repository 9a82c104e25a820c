"""Shared helpers: random linear models as real estimators, and independent reference solvers."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linprog, minimize
from scipy.special import expit, softmax
from threadpoolctl import ThreadpoolController

from invaudit.counterfactual import Constraints
from invaudit.models.base import LinearForm


class RandomLinear:
    """A tiny classifier with fixed weights whose predict / predict_proba implement the link
    (as scikit-learn does: binary decision > 0 means classes_[1]; argmax otherwise)."""

    def __init__(self, W, b, link, classes=None):
        self.coef_ = np.atleast_2d(np.asarray(W, dtype=float))
        self.intercept_ = np.atleast_1d(np.asarray(b, dtype=float))
        self.link = link
        k = 2 if self.coef_.shape[0] == 1 else self.coef_.shape[0]
        self.classes_ = np.arange(k) if classes is None else np.asarray(classes)

    def decision_function(self, X):
        s = np.asarray(X, float) @ self.coef_.T + self.intercept_
        return s[:, 0] if s.shape[1] == 1 else s

    def predict(self, X):
        s = self.decision_function(X)
        idx = (s > 0).astype(int) if s.ndim == 1 else np.argmax(s, axis=1)
        return self.classes_[idx]

    def predict_proba(self, X):
        s = self.decision_function(X)
        if s.ndim == 1:
            p1 = expit(s)
            return np.column_stack([1 - p1, p1])
        if self.link == "ovr":
            p = expit(s)
            return p / p.sum(axis=1, keepdims=True)
        return softmax(s, axis=1)


class RandomLinearScores(RandomLinear):
    """The same without probabilities (LinearSVC-like)."""

    predict_proba = property(lambda self: (_ for _ in ()).throw(AttributeError("predict_proba")))


def make_form(W, b, link, classes=None):
    est = (RandomLinearScores if link == "none" else RandomLinear)(W, b, link, classes)
    W = est.coef_
    return LinearForm(estimator=est, W=W.copy(), b=est.intercept_.copy(), link=link,
                      classes=est.classes_, n_features=W.shape[1])


def form_from_sklearn(clf, X):
    """A LinearForm built by hand from a fitted sklearn linear classifier (and Pipeline with a
    StandardScaler in front, folded with fold_affine)."""
    from invaudit.models.affine import fold_affine

    steps = getattr(clf, "steps", None)
    final = clf if steps is None else steps[-1][1]
    W = np.atleast_2d(final.coef_)
    b = np.atleast_1d(final.intercept_).astype(float)
    d = X.shape[1]
    if steps is not None:
        A, c = fold_affine([s for _, s in steps[:-1]], d)
        b = W @ c + b
        W = W @ A
    if hasattr(final, "predict_proba"):
        link = "sigmoid" if W.shape[0] == 1 else "softmax"
    else:
        link = "none"
    return LinearForm(estimator=clf, W=W.copy(), b=b.copy(), link=link, classes=clf.classes_,
                      n_features=d)


# ------------------------------------------------------------------------------------------
# references (independent of invaudit's solvers)
# ------------------------------------------------------------------------------------------

# SLSQP's dense steps on a few dozen variables gain nothing from BLAS threads, which add their
# wake-ups and, on a busy machine, their spinning (measured with 8 jobs on 2 cores: the 30-feature
# breast-cancer reference took 10.1 s of CPU on two threads, 0.5 s on one); references use one.
_THREADS = ThreadpoolController()


def _one_blas_thread():
    return _THREADS.limit(limits=1, user_api="blas")


def _constraints_for(W, b, x, t, conf, link):
    """Constraint functions on the counterfactual point x' (ineq: fun(x') >= 0)."""
    K = 2 if W.shape[0] == 1 else W.shape[0]
    Wf = np.vstack([np.zeros(W.shape[1]), W[0]]) if W.shape[0] == 1 else W
    bf = np.array([0.0, b[0]]) if W.shape[0] == 1 else b
    cons = []
    for j in range(K):
        if j == t:
            continue
        a = Wf[t] - Wf[j]
        c = bf[t] - bf[j]
        cons.append({"type": "ineq", "fun": lambda v, a=a, c=c: a @ v + c, "jac": lambda v, a=a: a})
    if conf is not None:
        def f(v):  # log p_t - log conf, p the softmax of the scores (numpy: called ~10^4 times)
            s = Wf @ v + bf
            m = s.max()
            return s[t] - m - np.log(np.exp(s - m).sum()) - np.log(conf)

        def jac(v):
            s = Wf @ v + bf
            p = np.exp(s - s.max())
            return Wf[t] - (p / p.sum()) @ Wf
        cons.append({"type": "ineq", "fun": f, "jac": jac})
    return cons


def ref_l2(W, b, x, t, conf=None, lower=None, upper=None, weights=None, starts=8, seed=0, extra_start=None):
    """min ||w (x' - x)||_2 by SLSQP from several starts; returns the best feasible distance.

    ``extra_start``: one more start (e.g. the answer under test). Where the problem is convex
    (a binary model: a half-space and a box), SLSQP from a feasible start converges to the global
    optimum, so a shorter point found from there refutes the answer; from random starts alone
    SLSQP sometimes ends infeasible on wide, badly scaled boxes."""
    rng = np.random.default_rng(seed)
    d = len(x)
    w = np.ones(d) if weights is None else weights
    cons = _constraints_for(W, b, x, t, conf, None)
    bounds = None
    if lower is not None:
        bounds = list(zip(lower, upper))
    best = None
    x0s = [x + rng.normal(size=d) * (3.0 / w) * (s > 0) for s in range(starts)]
    if extra_start is not None:
        x0s.append(np.asarray(extra_start, dtype=np.float64))
    for x0 in x0s:
        if bounds is not None:
            x0 = np.clip(x0, lower, upper)
        with _one_blas_thread():
            res = minimize(lambda v: 0.5 * np.sum((w * (v - x)) ** 2), x0,
                           jac=lambda v: w * w * (v - x), constraints=cons, bounds=bounds,
                           method="SLSQP", options={"ftol": 1e-15, "maxiter": 1000})
        # SLSQP stops up to ~1e-7 outside a curved (log-probability) constraint, and where the
        # constraint's gradient in the free coordinates is small (a frozen feature, a tiny weight)
        # that is far in distance (seen: 2e-4 short of the optimum at a distance of 1,000). So the
        # reference counts only points that satisfy every constraint and bound exactly.
        v = feasible_point(res.x, cons, lower, upper, w)
        if v is not None:
            dist = float(np.linalg.norm(w * (v - x)))
            best = dist if best is None else min(best, dist)
    return best


def feasible_point(v, cons, lower=None, upper=None, weights=None, rounds=60):
    """``v`` moved onto the feasible set when a solver left it slightly outside: repeated steps
    along the most violated constraint's gradient in the metric ``weights`` (coordinates at a
    bound the step would leave stay put), each step longer than the linearised one by 2^k, then
    clipped to the box. Returns a point where every ``fun >= 0`` and the bounds hold exactly (no
    tolerance), or None. A feasible point's distance bounds the optimum from above whatever
    route found it, so a reference built from these points can only refute a too-long answer."""
    d = len(v)
    w = np.ones(d) if weights is None else np.asarray(weights, dtype=np.float64)
    lo = np.full(d, -np.inf) if lower is None else np.asarray(lower, dtype=np.float64)
    hi = np.full(d, np.inf) if upper is None else np.asarray(upper, dtype=np.float64)
    v = np.clip(np.asarray(v, dtype=np.float64), lo, hi)
    for k in range(rounds):
        vals = np.array([c["fun"](v) for c in cons], dtype=np.float64)
        if not np.all(np.isfinite(vals)):
            return None
        j = int(np.argmin(vals)) if len(vals) else 0
        if not len(vals) or vals[j] >= 0:
            return v if np.all(v >= lo) and np.all(v <= hi) else None
        g = np.asarray(cons[j]["jac"](v), dtype=np.float64)
        u = g / (w * w)
        u[((v <= lo) & (u < 0)) | ((v >= hi) & (u > 0))] = 0.0
        gu = float(g @ u)
        if not gu > 0:
            return None
        v = np.clip(v + (-vals[j] / gu) * 2.0 ** k * u, lo, hi)
    return None


def ref_lp(W, b, x, t, norm, lower=None, upper=None, weights=None):
    """L1 / Linf distance to the argmax region of class t by linprog, written independently
    (variables: x', e >= |w (x' - x)|)."""
    d = len(x)
    w = np.ones(d) if weights is None else weights
    K = 2 if W.shape[0] == 1 else W.shape[0]
    Wf = np.vstack([np.zeros(d), W[0]]) if W.shape[0] == 1 else W
    bf = np.array([0.0, b[0]]) if W.shape[0] == 1 else b
    rows, rhs = [], []
    for j in range(K):
        if j != t:
            rows.append(np.concatenate([Wf[j] - Wf[t], np.zeros(d if norm == "l1" else 1)]))
            rhs.append(bf[t] - bf[j])
    ne = d if norm == "l1" else 1
    for i in range(d):
        e = np.zeros(ne)
        e[i if norm == "l1" else 0] = -1.0
        r1 = np.zeros(d)
        r1[i] = w[i]
        rows.append(np.concatenate([r1, e]))
        rhs.append(w[i] * x[i])
        rows.append(np.concatenate([-r1, e]))
        rhs.append(-w[i] * x[i])
    c = np.concatenate([np.zeros(d), np.ones(ne)])
    lo = [(None, None)] * d if lower is None else list(zip(lower, upper))
    res = linprog(c, A_ub=np.array(rows), b_ub=np.array(rhs), bounds=lo + [(0, None)] * ne,
                  method="highs")
    return None if res.status != 0 else float(res.fun)


def ref_nonsmooth_conf(W, b, x, t, conf, norm, lower=None, upper=None, weights=None, starts=6, seed=0):
    """L1 / Linf distance to {predicted t, p_t >= conf} by SLSQP on the smooth reformulation
    (l1: x' = x + (u - v) / w, u, v >= 0; linf: |w (x' - x)| <= s), several starts."""
    rng = np.random.default_rng(seed)
    d = len(x)
    w = np.ones(d) if weights is None else weights
    base = _constraints_for(W, b, x, t, conf, None)
    lo = np.full(d, -np.inf) if lower is None else lower
    hi = np.full(d, np.inf) if upper is None else upper
    best = None
    for s in range(starts):
        if norm == "l1":
            def point(v):
                return x + (v[:d] - v[d:]) / w
            J = np.hstack([np.diag(1 / w), -np.diag(1 / w)])
            cons = [{"type": "ineq", "fun": (lambda v, c=c: c["fun"](point(v))),
                     "jac": (lambda v, c=c: c["jac"](point(v)) @ J)} for c in base]
            keep = np.isfinite(np.concatenate([lo, hi]))

            def box(v, k=keep):
                return np.concatenate([point(v) - lo, hi - point(v)])[k]
            cons.append({"type": "ineq", "fun": box,
                         "jac": (lambda v, k=keep: np.vstack([J, -J])[k])})
            v0 = np.abs(rng.normal(size=2 * d)) * (s > 0)
            with _one_blas_thread():
                res = minimize(lambda v: v.sum(), v0, jac=lambda v: np.ones(2 * d), constraints=cons,
                               bounds=[(0, None)] * (2 * d), method="SLSQP",
                               options={"ftol": 1e-15, "maxiter": 2000})
            xp = point(res.x)
        else:
            def point(v):
                return v[:d]
            J = np.hstack([np.eye(d), np.zeros((d, 1))])
            cons = [{"type": "ineq", "fun": (lambda v, c=c: c["fun"](point(v))),
                     "jac": (lambda v, c=c: c["jac"](point(v)) @ J)} for c in base]
            cons.append({"type": "ineq",
                         "fun": lambda v: np.concatenate([v[d] - w * (v[:d] - x), v[d] + w * (v[:d] - x)]),
                         "jac": lambda v: np.vstack([np.hstack([-np.diag(w), np.ones((d, 1))]),
                                                     np.hstack([np.diag(w), np.ones((d, 1))])])})
            x0 = x + rng.normal(size=d) * (s > 0)
            v0 = np.concatenate([x0, [np.max(np.abs(w * (x0 - x))) + 1.0]])
            bnds = [(a if np.isfinite(a) else None, c if np.isfinite(c) else None)
                    for a, c in zip(lo, hi)] + [(0, None)]
            with _one_blas_thread():
                res = minimize(lambda v: v[d], v0, jac=lambda v: np.eye(d + 1)[d], constraints=cons,
                               bounds=bnds, method="SLSQP", options={"ftol": 1e-15, "maxiter": 2000})
            xp = point(res.x)
        ok = all(c["fun"](xp) >= -1e-9 for c in base)
        ok &= bool(np.all(xp >= lo - 1e-9) and np.all(xp <= hi + 1e-9))
        if ok:
            dist = float(np.linalg.norm(w * (xp - x), ord=1 if norm == "l1" else np.inf))
            best = dist if best is None else min(best, dist)
    return best


def random_problem(seed, K, d, *, box, frozen, scaled, link, n, pad):
    """A random linear form (``K`` weight rows; ``K == 1`` is binary), ``n`` rows, their
    constraints (a data box widened by up to ``pad``, one frozen feature, random metric scales)
    and random target classes."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(K, d))
    b = rng.normal(size=K)
    X = rng.normal(size=(n, d)) * 1.5
    kw = {}
    if box:
        kw = dict(data_lower=X.min(0) - rng.uniform(0, pad, d), data_upper=X.max(0) + rng.uniform(0, pad, d))
    imm = None
    if frozen:
        imm = np.zeros(d, dtype=bool)
        imm[rng.integers(d)] = True
    scale = rng.uniform(0.3, 3.0, d) if scaled else None
    cons = Constraints.build(X, immutable=imm, scale=scale, **kw)
    t = rng.integers(0, max(K, 2), size=n)
    return make_form(W, b, link), X, cons, t


def ref_l2_convex(W, b, x, t, conf=None, lower=None, upper=None):
    """The L2 counterfactual as a convex program solved by cvxpy (Clarabel), if installed: the
    softmax confidence ``p_t >= conf`` is ``logsumexp_j(s_j - s_t) <= log(1 / conf)``, convex in
    the point. ``W`` (K, d) full score rows, unit metric. Returns the solver's point moved onto the
    feasible set exactly (:func:`feasible_point`), or None (no cvxpy, solver failure, or no
    feasible point): its distance bounds the optimum from above."""
    try:
        import cvxpy as cp
    except ImportError:
        return None
    K, d = W.shape
    lo = np.full(d, -np.inf) if lower is None else np.asarray(lower, dtype=np.float64)
    hi = np.full(d, np.inf) if upper is None else np.asarray(upper, dtype=np.float64)
    u = cp.Variable(d)
    s = W @ x + b + W @ u
    oth = [j for j in range(K) if j != t]
    cons = [s[j] <= s[t] for j in oth]
    if conf is not None:
        cons.append(cp.log_sum_exp(cp.hstack([s[j] - s[t] for j in oth] + [np.zeros(1)]))
                    <= np.log(1.0 / conf))
    fl, fh = np.isfinite(lo), np.isfinite(hi)
    if fl.any():
        cons.append(u[fl] >= (lo - x)[fl])
    if fh.any():
        cons.append(u[fh] <= (hi - x)[fh])
    prob = cp.Problem(cp.Minimize(cp.sum_squares(u)), cons)
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prob.solve(solver="CLARABEL", tol_gap_abs=1e-14, tol_gap_rel=1e-14, tol_feas=1e-13)
    except Exception:  # solver error on a degenerate problem: no reference point
        return None
    if u.value is None or not np.all(np.isfinite(u.value)):
        return None
    return feasible_point(x + u.value, _constraints_for(W, b, x, t, conf, None), lo, hi)
