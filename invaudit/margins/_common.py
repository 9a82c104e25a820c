"""What every margin solver shares: input checks, the metric, the exact box-constrained step
onto one halfspace, and verified boundary bisection.

Notation used across the package: a row ``x`` is predicted as class index ``p``; a perturbation
``delta`` moves it to ``x + delta``; the metric is ``||weights * delta||_norm`` and the
constraints are a per-row box ``lo <= delta <= hi`` (``lo <= 0 <= hi``: the row itself is always
admissible).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from invaudit.errors import InputError
from invaudit.models.base import as_rows

NORMS = ("l2", "l1", "linf")


# --- inputs --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    """Validated inputs shared by the solvers.

    ``lo`` / ``hi`` are bounds on the *perturbation* (``(n, D)``, ``None`` when there is no box at
    all); ``weights`` are the metric weights ``(D,)`` (all ones without constraints).
    """

    X: np.ndarray
    pred: np.ndarray
    norm: str
    weights: np.ndarray
    lo: np.ndarray | None
    hi: np.ndarray | None

    @property
    def n(self) -> int:
        return self.X.shape[0]

    @property
    def d(self) -> int:
        return self.X.shape[1]

    def box(self, rows=None) -> tuple[np.ndarray, np.ndarray]:
        """``(lo, hi)`` for ``rows`` (all rows when None), infinite when there is no box."""
        n = self.n if rows is None else np.arange(self.n)[rows].shape[0]
        if self.lo is None:
            return np.full((n, self.d), -np.inf), np.full((n, self.d), np.inf)
        if rows is None:
            return self.lo, self.hi
        return self.lo[rows], self.hi[rows]


def subproblem(prob: Problem, rows: np.ndarray) -> Problem:
    """The same problem restricted to ``rows``."""
    return Problem(X=prob.X[rows], pred=prob.pred[rows], norm=prob.norm, weights=prob.weights,
                   lo=None if prob.lo is None else prob.lo[rows],
                   hi=None if prob.hi is None else prob.hi[rows])


def check_rows(X, n_features: int) -> np.ndarray:
    X = as_rows(X, n_features)
    if not np.all(np.isfinite(X)):
        raise InputError("the data holds NaN or infinite values; margins need finite rows.")
    return X


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise InputError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}.")
    return norm


def perturbation_box(X: np.ndarray, constraints) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``(weights, lo, hi)`` from a constraints object with ``lower``/``upper`` ``(n, D)`` bounds on
    the point and ``weights`` ``(D,)`` (``invaudit.counterfactual.Constraints`` or anything shaped
    like it). Bounds on the point become bounds on the perturbation, widened so that ``0`` is
    always admissible (a row outside its own range may stay where it is)."""
    n, d = X.shape
    if constraints is None:
        return np.ones(d), None, None
    w = np.asarray(getattr(constraints, "weights", None) if getattr(constraints, "weights", None) is not None
                   else np.ones(d), dtype=np.float64)
    if w.shape != (d,):
        raise InputError(f"the metric weights must have one value per feature ({d}), got shape {w.shape}.")
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise InputError("the metric weights must be positive and finite (a zero spread needs a fallback).")
    lower = getattr(constraints, "lower", None)
    upper = getattr(constraints, "upper", None)
    if lower is None and upper is None:
        return w, None, None
    lower = np.broadcast_to(np.asarray(-np.inf if lower is None else lower, dtype=np.float64), (n, d))
    upper = np.broadcast_to(np.asarray(np.inf if upper is None else upper, dtype=np.float64), (n, d))
    if np.any(np.isnan(lower)) or np.any(np.isnan(upper)):
        raise InputError("the constraint bounds hold NaN values.")
    with np.errstate(invalid="ignore"):
        lo = np.minimum(lower - X, 0.0)
        hi = np.maximum(upper - X, 0.0)
    if np.all(np.isneginf(lo)) and np.all(np.isposinf(hi)):
        return w, None, None
    return w, lo, hi


# --- the metric ----------------------------------------------------------------------------------

def weighted_norm(delta: np.ndarray, weights: np.ndarray, norm: str) -> np.ndarray:
    """``||weights * delta||_norm`` over the last axis."""
    u = np.abs(delta * weights)
    if norm == "l2":
        return np.sqrt(np.sum(u * u, axis=-1))
    if norm == "l1":
        return np.sum(u, axis=-1)
    return np.max(u, axis=-1)


def dual_norm(a: np.ndarray, weights: np.ndarray, norm: str) -> np.ndarray:
    """``||a / weights||_q`` with ``q`` dual to ``norm``: ``sup {a.delta : ||weights*delta|| <= 1}``."""
    v = np.abs(a / weights)
    if norm == "l2":
        return np.sqrt(np.sum(v * v, axis=-1))
    if norm == "l1":
        return np.max(v, axis=-1)
    return np.sum(v, axis=-1)


# --- the exact step onto one halfspace inside a box ----------------------------------------------

def halfspace_step(a: np.ndarray, r: np.ndarray, weights: np.ndarray, norm: str,
                   lo: np.ndarray | None = None, hi: np.ndarray | None = None):
    """Exact ``argmin ||weights * delta||_norm`` s.t. ``a . delta >= r`` and ``lo <= delta <= hi``,
    vectorised over rows.

    Parameters
    ----------
    a : (n, D) halfspace normals.
    r : (n,) right-hand sides (``r <= 0``: ``delta = 0``).
    weights : (D,) positive metric weights.
    norm : "l2", "l1" or "linf".
    lo, hi : (n, D) bounds with ``lo <= 0 <= hi``, or None for no box.

    Returns
    -------
    delta : (n, D), NaN rows where infeasible.
    distance : (n,), ``inf`` where infeasible.
    residual : (n,), ``|a.delta - r| / (|r| + |a|.|delta|)`` (the primal KKT residual; the
        stationarity and complementarity conditions hold by construction).

    Notes
    -----
    Moving coordinate ``i`` by ``m_i >= 0`` in the direction ``sign(a_i)`` gains ``|a_i| m_i``,
    up to a cap ``cap_i`` set by the box. For l2 the KKT conditions give ``m_i = min(lam |a_i| /
    w_i^2, cap_i)`` and for linf ``m_i = min(t / w_i, cap_i)`` (the level ``t`` is the distance);
    in both ``phi(lam) = sum_i |a_i| m_i(lam)`` is non-decreasing and piecewise linear, so sorting
    its breakpoints ``cap_i / c_i`` and locating ``phi = r`` solves the problem exactly in
    ``O(D log D)`` per row. For l1 the problem is a fractional knapsack: fill coordinates in
    decreasing order of ``|a_i| / w_i`` (Dantzig 1957). Without a box these are the closed forms
    ``delta = r a / w^2 / ||a/w||_2^2`` (l2), ``r sign(a) / w / ||a/w||_1`` (linf) and a single
    coordinate (l1); the distance is ``r / ||a / w||_q`` with ``q`` the dual norm (e.g.
    Boyd & Vandenberghe, *Convex Optimization*, 2004, sec. 8.1.1).
    """
    a = np.asarray(a, dtype=np.float64)
    n, d = a.shape
    r = np.asarray(r, dtype=np.float64)
    g = np.abs(a)
    s = np.sign(a)
    w = weights
    if lo is None:
        cap = np.full((n, d), np.inf)
    else:
        cap = np.where(a > 0, hi, np.where(a < 0, -lo, 0.0))
    cap = np.where(g > 0, cap, 0.0)
    active = r > 0
    delta = np.zeros((n, d))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if norm == "l1":
            m = _knapsack(g, w, cap, r)
        else:
            c = g / (w * w) if norm == "l2" else np.where(g > 0, 1.0 / w, 0.0)
            m = _breakpoints(g, c, cap, r, unboxed=lo is None)
        delta = np.where(active[:, None], s * m, 0.0) + 0.0  # + 0.0: no negative zeros
        feasible = np.all(np.isfinite(delta), axis=1) | ~active
    delta[~feasible] = np.nan
    dist = np.where(feasible, weighted_norm(np.where(feasible[:, None], delta, 0.0), w, norm), np.inf)
    with np.errstate(invalid="ignore"):
        ad = np.sum(a * np.where(feasible[:, None], delta, 0.0), axis=1)
        scale = np.abs(r) + np.sum(np.abs(a * np.where(feasible[:, None], delta, 0.0)), axis=1)
        resid = np.where(active & feasible, np.abs(ad - r) / np.where(scale > 0, scale, 1.0), 0.0)
    resid[~feasible] = np.nan
    return delta, dist, resid


def _breakpoints(g, c, cap, r, unboxed: bool) -> np.ndarray:
    """Magnitudes ``m_i = min(lam c_i, cap_i)`` with ``sum g_i m_i = r`` (NaN rows: infeasible)."""
    n, d = g.shape
    gc = g * c
    if unboxed:
        lam = r / np.sum(gc, axis=1)
        lam = np.where(np.isfinite(lam) & (lam >= 0), lam, np.nan)
        return lam[:, None] * c
    bp = np.where(c > 0, cap / np.where(c > 0, c, 1.0), np.inf)  # lam at which i saturates
    order = np.argsort(bp, axis=1, kind="stable")
    bp_s = np.take_along_axis(bp, order, axis=1)
    gc_s = np.take_along_axis(gc, order, axis=1)
    gcap = np.where(np.isfinite(cap), g * cap, 0.0)
    gcap_s = np.take_along_axis(gcap, order, axis=1)
    zeros = np.zeros((n, 1))
    S = np.concatenate([zeros, np.cumsum(gcap_s, axis=1)], axis=1)          # saturated gain, first m
    # rate of the still-unsaturated coordinates: suffix sums (exactly 0 once only idle ones remain)
    C = np.concatenate([np.cumsum(gc_s[:, ::-1], axis=1)[:, ::-1], zeros], axis=1)
    phi = S[:, :d] + np.where(C[:, :d] > 0, bp_s * C[:, :d], 0.0)           # phi at each breakpoint
    reach = phi >= r[:, None]
    found = reach.any(axis=1)
    m_idx = np.argmax(reach, axis=1)
    rows = np.arange(n)
    Sm, Cm = S[rows, m_idx], C[rows, m_idx]
    lam = np.where(found & (Cm > 0), (r - Sm) / np.where(Cm > 0, Cm, 1.0), np.nan)
    # lam lies between the (m-1)-th and m-th breakpoints; clip guards the last rounding
    lo_bp = np.where(m_idx > 0, bp_s[rows, np.maximum(m_idx - 1, 0)], 0.0)
    lam = np.clip(lam, lo_bp, bp_s[rows, m_idx])
    m = np.minimum(lam[:, None] * c, cap)
    return np.where(np.isfinite(lam)[:, None], m, np.nan)


def _knapsack(g, w, cap, r) -> np.ndarray:
    """l1: fill coordinates by decreasing ``g_i / w_i`` until ``sum g_i m_i = r``."""
    n, d = g.shape
    ratio = g / w
    order = np.argsort(-ratio, axis=1, kind="stable")
    g_s = np.take_along_axis(g, order, axis=1)
    cap_s = np.take_along_axis(cap, order, axis=1)
    G = np.where(g_s > 0, g_s * cap_s, 0.0)  # gain available from each coordinate (inf: no cap)
    cum = np.cumsum(G, axis=1)
    before = np.concatenate([np.zeros((n, 1)), cum[:, :-1]], axis=1)  # exclusive (inf-safe)
    reach = cum >= r[:, None]
    found = reach.any(axis=1)
    k = np.argmax(reach, axis=1)
    rows = np.arange(n)
    need = r - before[rows, k]
    m_s = np.where(np.arange(d)[None, :] < k[:, None], cap_s, 0.0)
    gk = g_s[rows, k]
    m_s[rows, k] = np.where(gk > 0, need / np.where(gk > 0, gk, 1.0), np.nan)
    m_s[~found] = np.nan
    m = np.empty_like(m_s)
    np.put_along_axis(m, order, m_s, axis=1)
    return m


# --- verified boundary bisection -----------------------------------------------------------------

def is_other(form, points: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(other, idx)``: the estimator's own predicted class indices at ``points`` and whether
    each differs from ``pred``."""
    idx = form.predict_index(points)
    return idx != pred, idx


def bisect_segments(form, X: np.ndarray, Y: np.ndarray, pred: np.ndarray, *, steps: int = 40,
                    chunk: int = 200_000):
    """Bisection on the segments ``X[i] -> Y[i]`` where ``Y[i]`` is predicted other than
    ``pred[i]`` and ``X[i]`` as ``pred[i]``.

    Returns ``(points, t)``: ``points = X + t (Y - X)`` is predicted other than ``pred`` by the
    estimator's own ``predict`` (it is the upper end of the final bracket), with the boundary
    crossing inside ``[t - 2**-steps, t]``. The crossing found is *a* crossing, not necessarily
    the first one on the segment.
    """
    n = X.shape[0]
    t_lo = np.zeros(n)
    t_hi = np.ones(n)
    D = Y - X
    for _ in range(steps):
        t_mid = 0.5 * (t_lo + t_hi)
        P = X + t_mid[:, None] * D
        other = np.empty(n, dtype=bool)
        for s in range(0, n, chunk):
            other[s:s + chunk] = is_other(form, P[s:s + chunk], pred[s:s + chunk])[0]
        t_hi = np.where(other, t_mid, t_hi)
        t_lo = np.where(other, t_lo, t_mid)
    return X + t_hi[:, None] * D, t_hi


def finalize(form, X: np.ndarray, P: np.ndarray, pred: np.ndarray, tries: int = 6):
    """The perturbations to report for points ``P`` predicted otherwise than ``pred``.

    What is reported is ``delta``, and what a user checks is ``x + delta`` *as computed in
    float64*, which need not be ``P`` bit for bit (``(P - x) + x`` can round back across a
    boundary that ``P`` sits one ulp beyond). So ``delta = P - X`` is verified at ``X + delta``
    with the estimator's own ``predict``; a row that fails is pushed outward along ``delta`` by
    a few ulps (doubling, ``tries`` times).

    Returns ``(delta, ok, idx)``: NaN rows where verification failed, the mask, and the class
    index predicted at ``X + delta`` (-1 where it failed).
    """
    delta = P - X
    n = X.shape[0]
    ok = np.zeros(n, dtype=bool)
    idx = np.full(n, -1, dtype=np.intp)
    todo = np.flatnonzero(np.all(np.isfinite(delta), axis=1))
    ulp = np.spacing(np.abs(X) + np.abs(delta))
    for k in range(tries + 1):
        if todo.size == 0:
            break
        if k:
            delta[todo] += np.sign(delta[todo]) * ulp[todo] * 2.0 ** (k - 1)
        other, ix = is_other(form, X[todo] + delta[todo], pred[todo])
        ok[todo[other]] = True
        idx[todo[other]] = ix[other]
        todo = todo[~other]
    delta[~ok] = np.nan
    return delta, ok, idx
