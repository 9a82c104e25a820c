"""Margins of black boxes: verified boundary points found by bisection on segments.

The segments run from the row to *endpoints* already predicted as another class: the nearest
training rows predicted otherwise (when ``X_train`` is given) and points found along random
directions by doubling the radius. Bisection (with the estimator's own ``predict``) finds a
boundary crossing on each; the nearest verified crossing is the margin's upper bound. Nothing
certifies a lower bound for a model known only through queries, so none is reported.

References
----------
Brendel, Rauber & Bethge (2018), "Decision-based adversarial attacks" (boundary search from an
adversarial starting point); Chen, Jordan & Wainwright (2020), "HopSkipJumpAttack", sec. 3
(binary search to the boundary along a segment).
"""

from __future__ import annotations

import numpy as np

from invaudit.margins._common import Problem, bisect_segments, finalize, is_other, weighted_norm

_CHUNK = 4_000_000  # array elements per block of pairwise distances
_SEGMENTS = 8_000_000  # float64 values of endpoints (rows x candidates x features) per chunk
_RADII = 2.0 ** np.arange(-10, 21)  # radial search, in units of the data's spread


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
    rows = np.asarray(rows)
    m = n_candidates + (0 if extra is None else extra.shape[1])
    step = max(1, _SEGMENTS // (m * prob.d))
    if rows.size > step:
        parts = [search(form, prob, rows[s:s + step], X_train=X_train, seed=seed + s,
                        n_candidates=n_candidates, extra=None if extra is None else extra[s:s + step])
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
    for radius in _RADII * np.mean(_spread(prob, X_train) * prob.weights):
        todo = ~found
        if not todo.any():
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
    if ii.size == 0:
        return delta, dist, nearest
    pts, _ = bisect_segments(form, X[ii], E[ii, jj], pred[ii], steps=40)
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
    return delta, dist, nearest


def solve_blackbox(form, prob: Problem, *, X_train=None, seed: int = 0, n_candidates: int = 32,
                   progress=None) -> dict:
    """Upper bounds by verified boundary search (module docstring); ``lower_bound`` NaN."""
    n = prob.n
    rows = np.arange(n)
    delta, dist, nearest = search(form, prob, rows, X_train=X_train, seed=seed, n_candidates=n_candidates)
    if progress is not None:
        progress(n, n)
    found = np.isfinite(dist)
    source = " (training rows and random directions)" if X_train is not None else " (random directions)"
    method = np.full(n, "boundary-search" + source, dtype=object)
    method[~found] = "boundary-search (no other class found)"
    return dict(margin=np.where(found, dist, np.nan), lower_bound=np.full(n, np.nan),
                nearest_index=nearest, perturbation=delta, perturbation_norm=np.where(found, dist, np.nan),
                exact=np.zeros(n, dtype=bool), method=method)
