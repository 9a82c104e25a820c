"""Margins of black boxes: verified boundary points found by bisection on segments.

The segments run from the row to *endpoints* already predicted as another class: the nearest
training rows predicted otherwise (when ``X_train`` is given) and points found along random
directions by doubling the radius. Bisection (with the estimator's own ``predict``) finds a
boundary crossing on each; the nearest verified crossing is the margin's upper bound. Nothing
certifies a lower bound for a model known only through queries, so none is reported.

``refine`` (what ``margins`` asks for a black box): the nearest crossing is then improved by the
query-only local search of the counterfactual solver (:func:`invaudit.counterfactual._nl_blackbox.
local_search`, toward the class found there, every row drawing from its own generator), so
``margin`` and ``counterfactual --target other`` answer the same question equally well: segments
alone miss the axis-aligned crossings of tree members and the like (a hard vote's margin was 200x
its counterfactual distance).

Time limit: the rows of a call are searched together, so a limit stops the batch. The radial
search stops once every row has an endpoint, and bisection (in stages of
:data:`_STAGE` steps, at least one) stops at the first stage that starts after the limit: the
answer is still a verified point of another class, only farther from the crossing (within
``2**-steps`` of its segment); ``method`` says so. Without a limit the search is deterministic.

References
----------
Brendel, Rauber & Bethge (2018), "Decision-based adversarial attacks" (boundary search from an
adversarial starting point); Chen, Jordan & Wainwright (2020), "HopSkipJumpAttack", sec. 3
(binary search to the boundary along a segment).
"""

from __future__ import annotations

import time

import numpy as np

from invaudit.margins._common import Problem, bisect_segments, finalize, is_other, weighted_norm

_CHUNK = 4_000_000  # array elements per block of pairwise distances
_SEGMENTS = 8_000_000  # float64 values of endpoints (rows x candidates x features) per chunk
_RADII = 2.0 ** np.arange(-10, 21)  # radial search, in units of the data's spread
_STEPS = 40  # bisection steps on a segment
_STAGE = 8  # bisection steps between looks at the clock (under a time limit)
_ROUNDS = 25  # rounds of the local search (``refine``), as for counterfactuals


def _nearest_candidates(X, pred, cand, cand_pred, w, norm, m):
    """For each row, up to ``m`` rows of ``cand`` predicted otherwise, nearest first: ``(n, m)``
    indices into ``cand`` (-1 where fewer exist)."""
    n = X.shape[0]
    out = np.full((n, m), -1, dtype=np.intp)
    for k in np.unique(pred):  # a loop over classes
        rows = np.flatnonzero(pred == k)
        pool = np.flatnonzero(cand_pred != k)
        if pool.size == 0:
            continue
        C = cand[pool] * w
        mm = min(m, pool.size)
        step = max(1, _CHUNK // max(1, pool.size * (1 if norm == "l2" else X.shape[1])))
        c2 = np.einsum("ij,ij->i", C, C)
        for s in range(0, rows.size, step):
            r = rows[s:s + step]
            A = X[r] * w
            if norm == "l2":
                dist = np.einsum("ij,ij->i", A, A)[:, None] + c2[None, :] - 2.0 * A @ C.T
            else:
                diff = np.abs(A[:, None, :] - C[None, :, :])
                dist = diff.sum(axis=2) if norm == "l1" else diff.max(axis=2)
            part = np.argpartition(dist, mm - 1, axis=1)[:, :mm] if mm < pool.size else \
                np.broadcast_to(np.arange(pool.size), (r.size, pool.size))
            dsel = np.take_along_axis(dist, part, axis=1)
            order = np.argsort(dsel, axis=1, kind="stable")
            out[r, :mm] = pool[np.take_along_axis(part, order, axis=1)]
    return out


def _spread(prob: Problem, X_train) -> np.ndarray:
    ref = X_train if X_train is not None and X_train.shape[0] > 1 else prob.X
    s = ref.std(axis=0) if ref.shape[0] > 1 else np.abs(ref[0])
    return np.where(s > 0, s, 1.0)


def search(form, prob: Problem, rows: np.ndarray, *, X_train=None, seed: int = 0,
           n_candidates: int = 32, extra=None):
    """Verified boundary points for ``rows`` of ``prob``.

    ``extra``: optional ``(len(rows), e, D)`` further endpoints (NaN for none), e.g. points of
    other leaves of a tree ensemble. Returns ``(delta (r, D), dist (r,), nearest (r,))`` with NaN
    / inf / -1 where nothing was found. Works in chunks of rows (the segments of a chunk are
    bisected together).
    """
    return _search(form, prob, rows, X_train=X_train, seed=seed, n_candidates=n_candidates, extra=extra)[:3]


def _past(stop_at) -> bool:
    return stop_at is not None and time.perf_counter() >= stop_at


def _bisect(form, X, E, pred, stop_at):
    """:func:`bisect_segments` for :data:`_STEPS` steps, or, under a time limit, in stages of
    :data:`_STAGE` until the limit (at least one stage). Returns ``(points, steps run)``.

    A stage bisects the bracket the previous one left: its lower end ``X + (t - 2**-k)(E - X)``
    (``k`` steps halve the bracket exactly ``k`` times) and its verified upper end."""
    if stop_at is None:
        return bisect_segments(form, X, E, pred, steps=_STEPS)[0], _STEPS
    lo, hi = X, E
    done = 0
    while True:
        k = min(_STAGE, _STEPS - done)
        pts, t = bisect_segments(form, lo, hi, pred, steps=k)
        done += k
        if done >= _STEPS or _past(stop_at):
            return pts, done
        lo = lo + (t - 2.0 ** -k)[:, None] * (hi - lo)
        hi = pts


def _search(form, prob: Problem, rows: np.ndarray, *, X_train=None, seed: int = 0,
            n_candidates: int = 32, extra=None, stop_at=None):
    """:func:`search`, under an optional time limit (``stop_at``, a ``time.perf_counter()``
    value); also returns, per row, the bisection steps run (``_STEPS`` when the limit did not
    shorten the search, fewer, or -1 when it cut the radial search short)."""
    rows = np.asarray(rows)
    m = n_candidates + (0 if extra is None else extra.shape[1])
    step = max(1, _SEGMENTS // (m * prob.d))
    if rows.size > step:
        parts = [_search(form, prob, rows[s:s + step], X_train=X_train, seed=seed + s,
                         n_candidates=n_candidates, extra=None if extra is None else extra[s:s + step],
                         stop_at=stop_at)
                 for s in range(0, rows.size, step)]
        return tuple(np.concatenate(z) for z in zip(*parts))
    X = prob.X[rows]
    pred = prob.pred[rows]
    r_n, d = X.shape
    lo, hi = prob.box(rows)
    ends = []
    if X_train is not None and X_train.shape[0]:
        tpred = form.predict_index(X_train)
        idx = _nearest_candidates(X, pred, X_train, tpred, prob.weights, prob.norm, n_candidates)
        E = np.where((idx >= 0)[:, :, None], X_train[np.maximum(idx, 0)], np.nan)
        ends.append(E)
    n_dirs = n_candidates if not ends else max(4, n_candidates // 4)
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((r_n, n_dirs, d)) * (_spread(prob, X_train) / prob.weights)
    dirs /= np.maximum(weighted_norm(dirs, prob.weights, prob.norm)[:, :, None], 1e-300)
    # radial search: the first doubling radius at which the clipped point is predicted otherwise
    found = np.zeros((r_n, n_dirs), dtype=bool)
    R = np.full((r_n, n_dirs, d), np.nan)
    has_end = np.zeros(r_n, dtype=bool) if not ends else np.any(np.all(np.isfinite(ends[0]), axis=2), axis=1)
    radial_cut = np.zeros(r_n, dtype=bool)
    for radius in _RADII * np.mean(_spread(prob, X_train) * prob.weights):
        todo = ~found
        if not todo.any():
            break
        if _past(stop_at) and np.all(has_end | found.any(axis=1)):
            radial_cut = todo.any(axis=1)  # every row has an endpoint: the time limit stops the rest
            break
        ii, jj = np.nonzero(todo)
        P = X[ii] + np.clip(radius * dirs[ii, jj], lo[ii], hi[ii])
        other, _ = is_other(form, P, pred[ii])
        R[ii[other], jj[other]] = P[other]
        found[ii[other], jj[other]] = True
    ends.append(R)
    if extra is not None:
        ends.append(extra)
    E = np.concatenate(ends, axis=1)  # (r, m, D)
    m = E.shape[1]
    # endpoints must be admissible and predicted otherwise
    E = np.clip(E, (X + lo)[:, None, :], (X + hi)[:, None, :])
    ok = np.all(np.isfinite(E), axis=2)
    ii, jj = np.nonzero(ok)
    if ii.size:
        other, _ = is_other(form, E[ii, jj], pred[ii])
        ok[ii[~other], jj[~other]] = False
    ii, jj = np.nonzero(ok)
    delta = np.full((r_n, d), np.nan)
    dist = np.full(r_n, np.inf)
    nearest = np.full(r_n, -1, dtype=np.intp)
    steps_run = np.where(radial_cut, -1, _STEPS)
    if ii.size == 0:
        return delta, dist, nearest, steps_run
    pts, k = _bisect(form, X[ii], E[ii, jj], pred[ii], stop_at)
    if k < _STEPS:
        steps_run[:] = k
    dd = weighted_norm(pts - X[ii], prob.weights, prob.norm)
    D = np.full((r_n, m), np.inf)
    D[ii, jj] = dd
    best = np.argmin(D, axis=1)
    has = np.isfinite(D[np.arange(r_n), best])
    lookup = np.full((r_n, m), -1, dtype=np.intp)
    lookup[ii, jj] = np.arange(ii.size)
    sel = lookup[np.arange(r_n), best][has]
    dl, other, idx = finalize(form, X[has], pts[sel], pred[has])
    rows_has = np.flatnonzero(has)
    keep = rows_has[other]
    delta[keep] = dl[other]
    dist[keep] = weighted_norm(delta[keep], prob.weights, prob.norm)
    nearest[keep] = idx[other]
    return delta, dist, nearest, steps_run


def solve_blackbox(form, prob: Problem, *, X_train=None, seed: int = 0, n_candidates: int = 32,
                   progress=None, time_limit=None, run_time_limit=None, refine: bool = False) -> dict:
    """Upper bounds by verified boundary search (module docstring); ``lower_bound`` NaN.

    ``time_limit`` (seconds for these rows, searched together) and ``run_time_limit`` (seconds
    left of the run) stop the search early (module docstring); None for both: the full search.
    ``refine``: improve the crossings by the local search (module docstring)."""
    limits = [float(v) for v in (time_limit, run_time_limit) if v is not None]
    stop_at = time.perf_counter() + max(min(limits), 0.0) if limits else None
    n = prob.n
    rows = np.arange(n)
    delta, dist, nearest, steps_run = _search(form, prob, rows, X_train=X_train, seed=seed,
                                              n_candidates=n_candidates, stop_at=stop_at)
    refined = cut = np.zeros(n, dtype=bool)
    rounds_run = 0
    if refine and np.isfinite(dist).any() and not _past(stop_at):
        refined, cut, rounds_run = _refine(form, prob, delta, dist, nearest, seed=seed, stop_at=stop_at)
    if progress is not None:
        progress(n, n)
    found = np.isfinite(dist)
    source = " (training rows and random directions)" if X_train is not None else " (random directions)"
    if refined.any():
        source = source[:-1] + "; local search)"
    method = np.full(n, "boundary-search" + source, dtype=object)
    for k in np.unique(steps_run[found & (steps_run < _STEPS)]):  # rows the time limit stopped
        what = "before the radial search ended" if k < 0 else f"after {k} of {_STEPS} bisection steps"
        method[found & (steps_run == k)] = f"boundary-search{source[:-1]}; stopped by the time limit {what})"
    method[found & cut] = (f"boundary-search{source[:-1]}, stopped by the time limit after {rounds_run} of "
                           f"{_ROUNDS} rounds)")
    method[~found] = "boundary-search (no other class found)"
    method[~found & (steps_run < 0)] = "boundary-search (stopped by the time limit before another class was found)"
    return dict(margin=np.where(found, dist, np.nan), lower_bound=np.full(n, np.nan),
                nearest_index=nearest, perturbation=delta, perturbation_norm=np.where(found, dist, np.nan),
                exact=np.zeros(n, dtype=bool), method=method)


def _refine(form, prob: Problem, delta, dist, nearest, *, seed: int, stop_at) -> tuple:
    """Improve the found crossings in place by the counterfactual solver's local search toward the
    class found at each (module docstring); every improved ``delta`` is verified at ``x + delta``
    by :func:`finalize`. Returns ``(ran, cut, rounds run)``: the masks of the rows the search ran
    on and of those the time limit stopped while they still improved."""
    from invaudit.counterfactual._nl_blackbox import _local_search
    from invaudit.counterfactual._nl_common import Problem as PointProblem

    rows = np.flatnonzero(np.isfinite(dist) & (dist > 0))
    if rows.size == 0:
        return np.zeros(prob.n, dtype=bool), np.zeros(prob.n, dtype=bool), 0
    X = prob.X[rows]
    lo, hi = prob.box(rows)
    sub = PointProblem(form=form, X=X, target=np.asarray(nearest[rows], dtype=np.intp), P=None, norm=prob.norm,
                       lower=X + lo, upper=X + hi, weights=prob.weights, orig=prob.pred[rows], seed=int(seed))
    B, dB, rounds_run, stopped = _local_search(sub, X + delta[rows], dist[rows].copy(), rounds=_ROUNDS, n_proposals=12,
                                               steps=14, progress=None, offset=0, total=None, per_row_rng=True,
                                               stop_at=stop_at)
    better = np.flatnonzero(dB < dist[rows] * (1.0 - 1e-12))
    if better.size:
        dl, ok, idx = finalize(form, X[better], B[better], prob.pred[rows[better]])
        dd = weighted_norm(dl[ok], prob.weights, prob.norm)
        keep = dd < dist[rows[better][ok]]
        r = rows[better][ok][keep]
        delta[r] = dl[ok][keep]
        dist[r] = dd[keep]
        nearest[r] = idx[ok][keep]
    ran = np.zeros(prob.n, dtype=bool)
    ran[rows] = True
    cut = np.zeros(prob.n, dtype=bool)
    cut[rows] = stopped
    return ran, cut, rounds_run
