"""Counterfactuals for quadratic forms (GaussianNB, QuadraticDiscriminantAnalysis).

For a target ``t`` (with a confidence ``P``: ``tau = log(P / (1 - P))``, else ``tau = 0``) every
point that qualifies satisfies ``s_t - s_k >= tau`` for each other class ``k`` (for two classes
this *is* the condition: the posterior's log-odds are the score gap). Each of those is one
quadratic constraint, whose nearest point :class:`invaudit.margins._quadratic.QuadraticSolver`
finds exactly through the one-dimensional dual (S-lemma, no duality gap). So

    lower bound = max_k dist(x0, {s_t - s_k >= tau}),

and when the optimum of the pair attaining it also qualifies (the estimator's own ``predict``
and ``predict_proba`` say so) it is the answer, ``exact: true`` (``l2`` metric, optimum inside
the box). Otherwise (more than two classes and another class wins there, a box that cuts the
optimum, ``l1`` / ``linf``) SLSQP on all constraints from the pair optima gives a verified point,
``exact: false``, with that lower bound (scaled by ``1 / sqrt(D)`` for ``linf``); rows SLSQP
cannot settle go to the black-box search.
"""

from __future__ import annotations

import numpy as np

from invaudit.counterfactual._nl_common import Answers, Problem, distance, qualifies

__all__ = ["solve_quadratic", "slsqp_points"]

_EXACT_RTOL = 1e-9
_NUDGE = 1e-13


def _grad_scores(form, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(scores (K,), gradients (K, D))`` of every class score at one input row."""
    A = form.input_map
    z = form.transform(x[None, :])[0]
    K = len(form.classes)
    s = np.empty(K)
    G = np.empty((K, x.shape[0]))
    for k, B in enumerate(form.factors):  # a loop over classes
        u = (z - form.means[k]) @ B
        s[k] = -0.5 * u @ u + form.consts[k]
        G[k] = -(A.T @ (B @ u))
    return s, G


def slsqp_points(form, X, starts, orig, target, *, tau, lower, upper, weights, norm,
                 pairwise=False, nudge=_NUDGE, confidence=None):
    """SLSQP from each of ``starts`` (``(n, s, D)`` deltas, NaN: none) for each row: the nearest
    point with ``s_t - s_k >= tau`` for every ``k != t`` (``pairwise``: only ``k = orig``), inside
    ``[lower, upper]``, in the metric; with ``confidence`` (more than two classes) the one
    constraint ``log p_t >= log confidence`` instead (the pairwise ones are only necessary). Returns ``(points (n, D), ok (n,))``: the closest point
    each row reached that the estimator confirms (``predict`` is ``t``; with ``pairwise``, not
    ``orig``)."""
    from scipy.optimize import minimize

    n, D = X.shape
    K = len(form.classes)
    w = np.asarray(weights, dtype=np.float64)
    out = np.full((n, D), np.nan)
    best = np.full(n, np.inf)
    for i in range(n):  # per-row local solves (the reference fallback, not a hot path)
        t = int(np.asarray(target)[i])
        if t < 0:
            continue
        c = int(orig[i])
        others = [c] if pairwise else [k for k in range(K) if k != t]
        x0 = X[i]
        lo_i = lower[i] - x0
        hi_i = upper[i] - x0
        bounds_d = [(None if not np.isfinite(a) else a, None if not np.isfinite(b) else b)
                    for a, b in zip(lo_i, hi_i)]

        def gaps(d):
            s, G = _grad_scores(form, x0 + d)
            if confidence is not None and not pairwise:
                m = s.max()
                e = np.exp(s - m)
                p = e / e.sum()
                pad = nudge * (1.0 + np.abs(s[t]))
                val = s[t] - m - np.log(e.sum()) - np.log(confidence) - pad
                return np.array([val]), (G[t] - p @ G)[None, :]
            pad = nudge * (1.0 + np.abs(s[t]) + np.abs(s[others]))
            return s[t] - s[others] - tau - pad, G[t][None, :] - G[others]

        n_con = 1 if (confidence is not None and not pairwise) else len(others)

        for st in starts[i]:
            if not np.all(np.isfinite(st)):
                continue
            if norm == "l2":
                fun = lambda d: (float(np.sum((w * d) ** 2)), 2.0 * w * w * d)  # noqa: E731
                cons = {"type": "ineq", "fun": lambda d: gaps(d)[0], "jac": lambda d: gaps(d)[1]}
                x_init, bnds = st, bounds_d
                unpack = lambda y: y  # noqa: E731
            elif norm == "l1":
                fun = lambda y: (float(np.sum(np.concatenate([w, w]) * y)), np.concatenate([w, w]))  # noqa: E731
                cons = {"type": "ineq", "fun": lambda y: gaps(y[:D] - y[D:])[0],
                        "jac": lambda y: np.hstack([gaps(y[:D] - y[D:])[1], -gaps(y[:D] - y[D:])[1]])}
                x_init = np.concatenate([np.maximum(st, 0), np.maximum(-st, 0)])
                bnds = [(0, None if not np.isfinite(b) else max(b, 0.0)) for b in hi_i] + \
                       [(0, None if not np.isfinite(a) else max(-a, 0.0)) for a in lo_i]
                unpack = lambda y: y[:D] - y[D:]  # noqa: E731
            else:
                fun = lambda y: (float(y[D]), np.eye(D + 1)[D])  # noqa: E731
                J = np.vstack([np.hstack([-np.diag(w), np.ones((D, 1))]), np.hstack([np.diag(w), np.ones((D, 1))])])
                cons = [{"type": "ineq", "fun": lambda y: gaps(y[:D])[0],
                         "jac": lambda y: np.hstack([gaps(y[:D])[1], np.zeros((n_con, 1))])},
                        {"type": "ineq", "fun": lambda y: J @ y, "jac": lambda y: J}]
                x_init = np.concatenate([st, [np.max(np.abs(w * st))]])
                bnds = bounds_d + [(0, None)]
                unpack = lambda y: y[:D]  # noqa: E731
            try:
                res = minimize(fun, x_init, jac=True, method="SLSQP", bounds=bnds, constraints=cons,
                               options={"maxiter": 200, "ftol": 1e-14})
            except (ValueError, np.linalg.LinAlgError):
                continue
            d = np.clip(unpack(res.x), lo_i, hi_i)
            if not np.all(np.isfinite(d)):
                continue
            dist = float(distance(d, w, norm))
            if dist < best[i]:
                pred = form.predict_index((x0 + d)[None, :])[0]
                if (pred != c) if pairwise else (pred == t):
                    best[i] = dist
                    out[i] = x0 + d
    return out, np.isfinite(best)


def solve_quadratic(prob: Problem, *, progress_offset: int = 0, progress_total=None) -> Answers:
    """Closest counterfactual of every row of ``prob`` (module docstring)."""
    from invaudit.margins._quadratic import QuadraticSolver

    form = prob.form
    n, D = prob.X.shape
    ans = Answers(n, D)
    if n == 0:
        return ans
    K = len(form.classes)
    X = prob.X
    w = prob.weights
    lo = prob.lower - X
    hi = prob.upper - X
    tau = 0.0 if prob.P is None else float(np.log(prob.P) - np.log1p(-prob.P))
    free_all = ~((lo == 0) & (hi == 0))
    scores = form.scores(X)
    solver = QuadraticSolver(form, w)
    low = np.zeros(n)                       # max over k of the pair bounds
    cand = np.full((n, K, D), np.nan)       # each pair's optimum (delta)
    cand_d = np.full((n, K), np.inf)
    cand_d0 = np.full((n, K), np.inf)      # the un-nudged optimum's distance (primal-dual gap)
    arg = np.full(n, -1, dtype=np.intp)
    masks, inv = np.unique(free_all, axis=0, return_inverse=True)
    inv = np.asarray(inv).ravel()
    for g, free in enumerate(masks):  # loops over frozen sets and class pairs
        rows_g = np.flatnonzero(inv == g)
        if not free.any():
            low[rows_g] = np.inf
            continue
        for t in np.unique(prob.target[rows_g]):
            rows = rows_g[prob.target[rows_g] == t]
            for k in range(K):
                if k == t:
                    continue
                delta, dist, d0, lk = solver.pair(X[rows], scores[rows], k, int(t), tau, free, nudge=_NUDGE)
                cand[rows, k] = delta
                cand_d[rows, k] = dist
                cand_d0[rows, k] = d0
                higher = lk > low[rows]
                low[rows] = np.maximum(low[rows], lk)
                arg[rows[higher]] = k
    unreachable = ~np.isfinite(low)
    has = (arg >= 0) & ~unreachable
    rows = np.flatnonzero(has)
    pick = cand[rows, arg[rows]]
    inside = np.all((pick >= lo[rows] - 1e-12 * np.abs(lo[rows])) & (pick <= hi[rows] + 1e-12 * np.abs(hi[rows])), axis=1)
    pts = np.clip(X[rows] + np.nan_to_num(pick), prob.lower[rows], prob.upper[rows])
    ok = qualifies(form, pts, prob.target[rows], prob.P)[0] & np.all(np.isfinite(pick), axis=1)
    dist = distance(pts - X[rows], w, prob.norm)
    lb_scale = np.ones(n)
    if prob.norm == "linf":
        lb_scale = 1.0 / np.sqrt(np.maximum(free_all.sum(axis=1), 1))
    lb = low * lb_scale
    d0 = cand_d0[rows, arg[rows]]
    exact_rows = ok & inside & (prob.norm == "l2") & (d0 - low[rows] <= _EXACT_RTOL * np.maximum(d0, 1e-300) + 1e-300) \
        & (dist - low[rows] <= _EXACT_RTOL * np.maximum(dist, 1e-300) + 1e-300)
    ans.offer(rows[exact_rows], pts[exact_rows], dist[exact_rows], prob.target[rows[exact_rows]],
              "quadratic dual (one-dimensional, exact)", exact=True, kkt=0.0,
              backing="exact: S-lemma dual bound within 1e-9 of the verified point",
              lower_bound=low[rows[exact_rows]])
    if np.any(ok & ~exact_rows):  # a verified point that is not certified optimal: keep it as a start
        r = rows[ok & ~exact_rows]
        ans.offer(r, pts[ok & ~exact_rows], dist[ok & ~exact_rows], prob.target[r], "quadratic dual + verification",
                  exact=False, backing="verified by the estimator; quadratic dual lower bound", lower_bound=lb[r])
    rest = np.flatnonzero(~ans.exact & ~unreachable)
    if rest.size:
        starts = np.concatenate([np.clip(np.nan_to_num(cand[rest], nan=0.0), lo[rest][:, None, :], hi[rest][:, None, :]),
                                 np.zeros((rest.size, 1, D))], axis=1)
        good = np.isfinite(cand_d[rest])
        starts[:, :K][~good] = np.nan
        P_pts, P_ok = slsqp_points(form, X[rest], starts, prob.orig[rest], prob.target[rest], tau=tau,
                                   lower=prob.lower[rest], upper=prob.upper[rest], weights=w, norm=prob.norm,
                                   confidence=prob.P if K > 2 else None)
        if np.any(P_ok):
            P_ok[P_ok] = qualifies(form, P_pts[P_ok], prob.target[rest][P_ok], prob.P)[0]
        r = rest[P_ok]
        ans.offer(r, P_pts[P_ok], distance(P_pts[P_ok] - X[r], w, prob.norm), prob.target[r],
                  "quadratic dual bound + SLSQP", exact=False,
                  backing="verified by the estimator; quadratic dual lower bound", lower_bound=lb[r])
        left = rest[ans.state[rest] != "found"]
        if left.size:
            from invaudit.counterfactual._nl_blackbox import solve_blackbox

            bb = solve_blackbox(prob.subset(left))
            okb = bb.state == "found"
            ans.offer(left[okb], bb.x_cf[okb], bb.dist[okb], bb.target[okb], bb.method[okb], exact=False,
                      backing="verified by the estimator; quadratic dual lower bound", lower_bound=lb[left[okb]])
    ans.fail(np.flatnonzero(unreachable), "the target class cannot reach the asked score anywhere within the "
             "constraints (quadratic dual unbounded)", infeasible=True, method="quadratic dual (exact)")
    ans.fail(np.flatnonzero(ans.state != "found"), "no verified point was found", method="quadratic dual + SLSQP")
    if prob.progress is not None:
        prob.progress(progress_offset + n, progress_total if progress_total is not None else n)
    return ans


def solve_quadratic_other(prob: Problem, *, progress_offset: int = 0, progress_total=None) -> Answers:
    """``target="other"`` without a confidence: the margin's argument (any class beating the
    prediction is "other", so the pairwise minimum is exact; :mod:`invaudit.margins._quadratic`).
    Rows it cannot certify (a box cutting the optimum, ``l1`` / ``linf``) get the per-class
    :func:`solve_quadratic` answers, closest verified one kept."""
    from invaudit.margins._common import Problem as MarginProblem
    from invaudit.margins._quadratic import solve_quadratic as margin_quadratic

    n, D = prob.X.shape
    ans = Answers(n, D)
    if n == 0:
        return ans
    mp = MarginProblem(X=prob.X, pred=prob.orig, norm=prob.norm, weights=prob.weights,
                       lo=prob.lower - prob.X, hi=prob.upper - prob.X)
    out = margin_quadratic(prob.form, mp)
    pts = prob.X + out["perturbation"]
    ok = np.all(np.isfinite(pts), axis=1) & (out["nearest_index"] >= 0)
    ex = ok & out["exact"]
    r = np.flatnonzero(ex)
    ans.offer(r, pts[ex], distance(pts[ex] - prob.X[ex], prob.weights, prob.norm), out["nearest_index"][ex],
              "quadratic dual (one-dimensional, exact)", exact=True, kkt=0.0,
              backing="exact: S-lemma dual bound within 1e-9 of the verified point (pairwise minimum)",
              lower_bound=out["lower_bound"][ex])
    unreachable = out["exact"] & ~np.isfinite(out["margin"])
    ans.fail(np.flatnonzero(unreachable), "no other class can be reached within the constraints",
             infeasible=True, method="quadratic dual (exact)")
    rest = np.flatnonzero(~ex & ~unreachable)
    if rest.size:
        from invaudit.counterfactual._nl_common import merge_other

        K = len(prob.form.classes)
        parts = []
        sub = prob.subset(rest)
        for k in range(K):  # a loop over classes
            rows = np.flatnonzero(sub.orig != k)
            if rows.size:
                parts.append((rows, solve_quadratic(sub.subset(rows, target=k))))
        merged = merge_other(parts, rest.size, D)
        okm = merged.state == "found"
        lb = np.maximum(np.nan_to_num(merged.lower_bound[okm]), np.nan_to_num(out["lower_bound"][rest][okm]))
        ans.offer(rest[okm], merged.x_cf[okm], merged.dist[okm], merged.target[okm], merged.method[okm],
                  exact=False, backing="verified by the estimator; quadratic dual lower bound", lower_bound=lb)
        ans.fail(rest[~okm], "no other class was reached with a verified point", method="quadratic dual + SLSQP")
    if prob.progress is not None:
        prob.progress(progress_offset + n, progress_total if progress_total is not None else n)
    return ans
