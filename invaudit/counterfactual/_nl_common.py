"""What the non-linear counterfactual solvers share: the validated problem, the metric, the
target test by the estimator itself, per-row answers, verified segment bisection, and the
assembly of a :class:`~invaudit.counterfactual.result.CounterfactualBatch`.

Notation: a row ``x`` (``X[i]``) is predicted as class index ``o``; the target is ``t``; the
counterfactual ``x_cf`` must satisfy ``lower <= x_cf <= upper`` and the estimator must predict
``t`` at it (with ``p(t | x_cf) >= P`` when a confidence ``P`` is asked for). The distance is
``|| weights * (x_cf - x) ||_norm``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

import numpy as np

from invaudit.counterfactual.constraints import Constraints
from invaudit.counterfactual.result import CounterfactualBatch
from invaudit.errors import InputError

NORMS = ("l2", "l1", "linf")
_ORD = {"l2": 2, "l1": 1, "linf": np.inf}


# --- the problem -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    """Validated inputs for one batch of rows, each with one target class index.

    ``target`` holds class indices; the dispatcher turns ``target="other"`` into one problem per
    candidate class. ``lower`` / ``upper`` are the per-row boxes on the counterfactual point
    (they contain ``X``); ``weights`` the metric weights. ``orig`` is the estimator's own
    prediction at ``X``.
    """

    form: Any
    X: np.ndarray
    target: np.ndarray
    P: Optional[float]
    norm: str
    lower: np.ndarray
    upper: np.ndarray
    weights: np.ndarray
    orig: np.ndarray
    pool: Optional["Pool"] = None
    seed: int = 0
    progress: Optional[Callable[[int, int], None]] = None
    options: Any = None

    @property
    def n(self) -> int:
        return self.X.shape[0]

    @property
    def d(self) -> int:
        return self.X.shape[1]

    def subset(self, rows, target=None) -> "Problem":
        rows = np.asarray(rows)
        t = self.target[rows] if target is None else np.broadcast_to(
            np.asarray(target, dtype=np.intp), (len(np.arange(self.n)[rows]),)).copy()
        return replace(self, X=self.X[rows], target=t, lower=self.lower[rows],
                       upper=self.upper[rows], orig=self.orig[rows])


def check_rows(X, n_features: int) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[None, :]
    if X.ndim != 2:
        raise InputError(f"the rows must form a 2-D array, got {X.ndim} dimension(s).")
    if X.shape[1] != n_features:
        raise InputError(f"the model expects {n_features} features, the data has {X.shape[1]}.")
    if not np.all(np.isfinite(X)):
        raise InputError("the rows contain NaN or infinite values.")
    return X


def check_confidence(confidence, form):
    if confidence is None:
        return None
    P = float(confidence)
    if not np.isfinite(P) or not (0.0 < P < 1.0):
        raise InputError(f"confidence must lie strictly between 0 and 1, got {confidence}.")
    link = None  # only linear parts can lack a probability link; other forms have proba or not
    if form.kind == "linear":
        link = form.link
    elif form.kind == "invertible-linear":
        link = form.linear.link
    if link == "none" or not form.has_proba:
        raise InputError(
            "this model has no predict_proba, so a confidence cannot be asked for; "
            "drop --confidence to ask only for the predicted class."
        )
    return P


def check_constraints(constraints, X) -> Constraints:
    if constraints is None:
        constraints = Constraints.none(X)
    elif not isinstance(constraints, Constraints):
        raise InputError("constraints must be an invaudit.counterfactual.Constraints.")
    constraints.validate(X)
    return constraints


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise InputError(f"unknown norm {norm!r}; use one of {', '.join(NORMS)}.")
    return norm


# --- the metric --------------------------------------------------------------------------------

def distance(delta: np.ndarray, weights: np.ndarray, norm: str) -> np.ndarray:
    """``|| weights * delta ||_norm`` over the last axis (NaN stays NaN)."""
    return np.linalg.norm(delta * weights, ord=_ORD[norm], axis=-1)


def dual_norm(a: np.ndarray, weights: np.ndarray, norm: str) -> np.ndarray:
    """``sup { a . delta : ||weights * delta||_norm <= 1 } = ||a / weights||_q``."""
    q = {"l2": 2, "l1": np.inf, "linf": 1}[norm]
    return np.linalg.norm(a / weights, ord=q, axis=-1)


# --- the target test, by the estimator itself ---------------------------------------------------

def qualifies(form, X: np.ndarray, t: np.ndarray, P: Optional[float], chunk: int = 100_000):
    """``(ok, predicted index, p(t))`` by the estimator's own ``predict`` / ``predict_proba``.

    ``ok``: predicted as ``t`` and, with a confidence, ``p(t | x) >= P``. ``p(t)`` is NaN when the
    estimator has no ``predict_proba``.
    """
    n = X.shape[0]
    ok = np.zeros(n, dtype=bool)
    pred = np.full(n, -1, dtype=np.intp)
    pt = np.full(n, np.nan)
    if n == 0:
        return ok, pred, pt
    t = np.broadcast_to(np.asarray(t, dtype=np.intp), (n,))
    for s in range(0, n, chunk):
        sl = slice(s, s + chunk)
        Xs = X[sl]
        pred[sl] = form.predict_index(Xs)
        if form.has_proba:
            pr = form.predict_proba(Xs)
            pt[sl] = pr[np.arange(Xs.shape[0]), t[sl]]
    ok = pred == t
    if P is not None:
        ok &= pt >= P
    return ok, pred, pt


def bisect_to_target(form, X0: np.ndarray, E: np.ndarray, t: np.ndarray, P, *, steps: int = 30,
                     lo_alpha=None):
    """Pull verified target points ``E`` toward ``X0`` along the segments ``X0 -> E``.

    Each segment ``X0[i] + a (E[i] - X0[i])`` has the target at ``a = 1`` (verified by the caller)
    and not at ``a = 0``. Bisection keeps the upper end verified, so the returned points are
    target points of the estimator, within ``2**-steps`` (in ``a``) of *a* boundary crossing.
    Vectorised over segments: one ``predict`` call per step.

    Returns ``(points, alpha)``.
    """
    n = X0.shape[0]
    a_lo = np.zeros(n) if lo_alpha is None else np.asarray(lo_alpha, dtype=np.float64).copy()
    a_hi = np.ones(n)
    D = E - X0
    for _ in range(steps):
        mid = 0.5 * (a_lo + a_hi)
        ok, _, _ = qualifies(form, X0 + mid[:, None] * D, t, P)
        a_hi = np.where(ok, mid, a_hi)
        a_lo = np.where(ok, a_lo, mid)
    return X0 + a_hi[:, None] * D, a_hi


def push_until_verified(form, X0, Xc, t, P, lower, upper, pushes=(1e-9, 1e-7, 1e-5, 1e-3)):
    """Verify ``Xc``; rows that fail are moved a hair farther along ``Xc - X0`` (clipped to the
    box) until the estimator agrees. Returns ``(points, ok)`` (points unchanged where not ok)."""
    Xc = np.array(Xc, dtype=np.float64)
    ok, _, _ = qualifies(form, Xc, t, P)
    for eps in pushes:
        bad = np.flatnonzero(~ok & np.all(np.isfinite(Xc), axis=1))
        if len(bad) == 0:
            break
        trial = np.clip(X0[bad] + (Xc[bad] - X0[bad]) * (1.0 + eps), lower[bad], upper[bad])
        g, _, _ = qualifies(form, trial, t[bad], P)
        Xc[bad[g]] = trial[g]
        ok[bad[g]] = True
    return Xc, ok


class Pool:
    """Reference rows (the training data, else the batch itself) with the estimator's own
    predictions, computed once: the verified target-class endpoints of segment searches."""

    def __init__(self, form, X_pool):
        X_pool = np.zeros((0, form.n_features)) if X_pool is None else np.asarray(X_pool, dtype=np.float64)
        self.X = X_pool
        n = len(X_pool)
        self.pred = form.predict_index(X_pool) if n else np.zeros(0, dtype=np.intp)
        self.proba = form.predict_proba(X_pool) if (n and form.has_proba) else None

    def for_class(self, k: int, P) -> np.ndarray:
        """Rows the estimator puts in class ``k`` (at ``p >= P``)."""
        ok = self.pred == k
        if P is not None and self.proba is not None:
            ok &= self.proba[:, k] >= P
        return self.X[ok]


def nearest_endpoints(prob: Problem, pool: np.ndarray, k: int, chunk_elems: int = 4_000_000):
    """For each row, the ``k`` pool points nearest in the metric after clipping them into the
    row's box: ``(points (n, k', D), dist (n, k'))`` with ``k' = min(k, len(pool))``."""
    n, D = prob.X.shape
    m = len(pool)
    kk = min(k, m)
    pts = np.full((n, kk, D), np.nan)
    dist = np.full((n, kk), np.inf)
    if kk == 0 or n == 0:
        return pts, dist
    step = max(1, chunk_elems // max(1, m * D))
    for s in range(0, n, step):
        sl = slice(s, s + step)
        C = np.clip(pool[None, :, :], prob.lower[sl, None, :], prob.upper[sl, None, :])
        dd = distance(C - prob.X[sl, None, :], prob.weights, prob.norm)
        idx = np.argsort(dd, axis=1, kind="stable")[:, :kk]
        pts[sl] = np.take_along_axis(C, idx[:, :, None], axis=1)
        dist[sl] = np.take_along_axis(dd, idx, axis=1)
    return pts, dist


# --- per-row answers -----------------------------------------------------------------------------

class Answers:
    """The best answer found so far for each row (merged over classes and methods).

    ``state``: ``"found"`` (a verified point), ``"infeasible"`` (certified: no point reaches the
    target), ``"failed"`` (no verified point, no certificate). ``backing`` says in words what
    stands behind each answer; ``lower_bound`` is a certified lower bound on the optimal distance
    where a method gives one (NaN otherwise).
    """

    def __init__(self, n: int, d: int):
        self.x_cf = np.full((n, d), np.nan)
        self.dist = np.full(n, np.inf)
        self.state = np.full(n, "failed", dtype=object)
        self.reason = np.full(n, None, dtype=object)
        self.exact = np.zeros(n, dtype=bool)
        self.method = np.full(n, "", dtype=object)
        self.kkt = np.full(n, np.nan)
        self.iters = np.zeros(n, dtype=np.int64)
        self.target = np.full(n, -1, dtype=np.intp)
        self.backing = np.full(n, None, dtype=object)
        self.lower_bound = np.full(n, np.nan)

    def offer(self, rows, x, dist, target, method, *, exact=False, kkt=np.nan, iters=0,
              backing=None, lower_bound=np.nan):
        """Keep ``x`` for each of ``rows`` where it is closer than the current answer (``x`` must
        already be verified)."""
        rows = np.asarray(rows, dtype=np.intp)
        m = len(rows)
        if m == 0:
            return
        bc = lambda v, dt=None: np.broadcast_to(np.asarray(v, dtype=dt), (m,))  # noqa: E731
        dist = bc(dist, np.float64)
        better = np.isfinite(dist) & (dist < self.dist[rows])
        r = rows[better]
        self.x_cf[r] = np.asarray(x)[better]
        self.dist[r] = dist[better]
        self.state[r] = "found"
        self.reason[r] = None
        self.exact[r] = bc(exact, bool)[better]
        self.method[r] = bc(method, object)[better]
        self.kkt[r] = bc(kkt, np.float64)[better]
        self.iters[rows] += bc(iters, np.int64)
        self.target[r] = bc(target, np.intp)[better]
        self.backing[r] = bc(backing, object)[better]
        self.lower_bound[r] = bc(lower_bound, np.float64)[better]

    def fail(self, rows, reason: str, *, infeasible=False, method=None):
        """Record why rows without an answer have none (``infeasible`` only with a certificate)."""
        rows = np.asarray(rows, dtype=np.intp)
        none = rows[self.state[rows] != "found"]
        if infeasible:
            self.state[none] = "infeasible"
        self.reason[none] = reason
        if method is not None:
            self.method[none] = method


def merge_other(parts: list, n: int, d: int) -> Answers:
    """Combine per-class answers for ``target="other"``: the closest verified point wins; a row is
    exact only if every class was solved exactly or certified unreachable; infeasible only if
    every class was certified unreachable.

    ``parts``: list of ``(rows, Answers)`` (the Answers indexed like ``rows``).
    """
    out = Answers(n, d)
    all_exact = np.ones(n, dtype=bool)
    all_infeasible = np.ones(n, dtype=bool)
    tried = np.zeros(n, dtype=bool)
    for rows, a in parts:
        rows = np.asarray(rows, dtype=np.intp)
        if len(rows) == 0:
            continue
        tried[rows] = True
        ok = a.state == "found"
        out.offer(rows[ok], a.x_cf[ok], a.dist[ok], a.target[ok], a.method[ok], exact=a.exact[ok],
                  kkt=a.kkt[ok], iters=a.iters[ok], backing=a.backing[ok],
                  lower_bound=a.lower_bound[ok])
        out.iters[rows[~ok]] += a.iters[~ok]
        certified = (ok & a.exact) | (a.state == "infeasible")
        all_exact[rows] &= certified
        all_infeasible[rows] &= a.state == "infeasible"
        nf = rows[~ok]
        out.reason[nf] = np.where(out.reason[nf] == None, a.reason[~ok], out.reason[nf])  # noqa: E711
        out.method[nf] = np.where(out.method[nf] == "", a.method[~ok], out.method[nf])
    out.exact &= all_exact
    none = (out.state != "found") & tried
    out.state[none & all_infeasible] = "infeasible"
    out.reason[none & all_infeasible] = "no other class can be reached within the constraints"
    out.reason[none & ~all_infeasible] = np.where(
        out.reason[none & ~all_infeasible] == None,  # noqa: E711
        "no other class was reached with a verified point", out.reason[none & ~all_infeasible])
    return out


# --- the batch ----------------------------------------------------------------------------------

def assemble(form, X, orig, target, P, norm, cons: Constraints, ans: Answers,
             already: np.ndarray) -> CounterfactualBatch:
    """Turn answers into a :class:`CounterfactualBatch`, re-verifying every point in one call.

    ``already``: rows that qualify as they are (``already-target``: the row itself, distance 0).
    A point the estimator does not confirm is never ``found`` (its row becomes ``failed``).
    """
    n, D = X.shape
    status = ans.state.copy()
    reason = ans.reason.copy()
    x_cf = ans.x_cf.copy()
    exact = ans.exact.copy()
    method = ans.method.copy()
    kkt = ans.kkt.copy()
    if target is None:  # "other": the class each answer reached (-1 without one)
        tgt = np.where(ans.target >= 0, ans.target, -1).astype(np.intp)
    else:
        tgt = np.asarray(target, dtype=np.intp).copy()

    status[already] = "already-target"
    reason[already] = None
    x_cf[already] = X[already]
    exact[already] = True
    method[already] = "check"
    kkt[already] = 0.0

    found = np.flatnonzero(status == "found")
    if len(found):
        pts = np.clip(x_cf[found], cons.lower[found], cons.upper[found])
        pts, ok = push_until_verified(form, X[found], pts, tgt[found], P, cons.lower[found],
                                      cons.upper[found])
        x_cf[found] = pts
        bad = found[~ok]
        status[bad] = "failed"
        reason[bad] = "the estimator's own prediction does not confirm the solution at the returned point"
        exact[bad] = False
    nopt = (status != "found") & (status != "already-target")
    x_cf[nopt] = np.nan
    exact[nopt] = False
    have = np.all(np.isfinite(x_cf), axis=1)
    delta = np.where(have[:, None], x_cf - X, np.nan)
    dist = np.full(n, np.nan)
    dist[have] = distance(delta[have], cons.weights, norm)
    pred = np.full(n, -1, dtype=np.intp)
    tprob = np.full(n, np.nan)
    if np.any(have):
        tt = np.where(tgt[have] >= 0, tgt[have], 0)
        _, pred[have], pt = qualifies(form, x_cf[have], tt, None)
        tprob[have] = np.where(tgt[have] >= 0, pt, np.nan)
    changed = np.where(have[:, None], delta != 0, False)
    reason = np.where(status == "found", None, reason)
    reason = np.where((status == "failed") & (reason == None), "no verified point was found", reason)  # noqa: E711
    return CounterfactualBatch(
        status=status.astype(object), reason=reason.astype(object), x_cf=x_cf, delta=delta,
        distance=dist, original_index=np.asarray(orig, dtype=np.intp), target_index=tgt,
        predicted_index=pred, target_probability=tprob, exact=exact, method=method.astype(object),
        kkt_residual=kkt, iterations=ans.iters.copy(), changed=changed, norm=norm)


def pulled_points(prob: Problem, k: int, *, steps: int = 25) -> np.ndarray:
    """``(n, k, D)`` verified target points near each row: the ``k`` nearest pool rows of the
    target class (clipped into the row's box, kept if the estimator still confirms them), pulled
    toward the row by bisection (:func:`bisect_to_target`). NaN where there are none."""
    n, D = prob.X.shape
    out = np.full((n, k, D), np.nan)
    if prob.pool is None or n == 0 or k == 0:
        return out
    for cls in np.unique(prob.target):  # a loop over classes
        rows = np.flatnonzero(prob.target == cls)
        pool = prob.pool.for_class(int(cls), prob.P)
        if len(pool) == 0:
            continue
        sub = prob.subset(rows)
        pts, dd = nearest_endpoints(sub, pool, k)
        kk = pts.shape[1]
        flat = pts.reshape(-1, D)
        ri = np.repeat(np.arange(len(rows)), kk)
        fin = np.isfinite(dd.ravel())
        ok = np.zeros(len(flat), dtype=bool)
        ok[fin] = qualifies(prob.form, flat[fin], np.full(fin.sum(), cls, dtype=np.intp), prob.P)[0]
        if not np.any(ok):
            continue
        pulled, _ = bisect_to_target(prob.form, sub.X[ri[ok]], flat[ok],
                                     np.full(ok.sum(), cls, dtype=np.intp), prob.P, steps=steps)
        res = np.full((len(flat), D), np.nan)
        res[ok] = pulled
        out[rows, :kk] = res.reshape(len(rows), kk, D)
    return out
