"""What the counterfactual solvers share: the target check, and the per-problem bundle the
linear solvers hand back to :mod:`.solve` (coordinates ``z``)."""

from __future__ import annotations

import numpy as np

from invaudit.errors import InputError

__all__ = ["_Sol", "check_target"]


def check_target(target, n: int, K: int):
    """``None`` for ``"other"``, else an ``(n,)`` array of class indices."""
    if isinstance(target, str):
        if target != "other":
            raise InputError(f"target must be class indices or 'other', got {target!r}.")
        return None
    tgt = np.asarray(target)
    if tgt.ndim == 0:
        tgt = np.full(n, tgt)
    if tgt.shape != (n,):
        raise InputError(f"target must have one class index per row ({n}), got shape {tgt.shape}.")
    if not np.issubdtype(tgt.dtype, np.integer):
        if np.issubdtype(tgt.dtype, np.floating) and np.all(tgt == np.round(tgt)):
            tgt = tgt.astype(np.int64)
        else:
            raise InputError("target must be integer class indices (positions in classes).")
    if np.any((tgt < 0) | (tgt >= K)):
        bad = int(tgt[(tgt < 0) | (tgt >= K)][0])
        raise InputError(f"target class index {bad} is out of range for a {K}-class model.")
    return tgt.astype(np.intp)


class _Sol:
    """Per-problem solver output (z in the kept coordinates)."""

    def __init__(self, n, p):
        self.z = np.full((n, p), np.nan)
        self.state = np.full(n, "failed", dtype=object)   # ok / infeasible / failed / local
        self.reason = np.full(n, None, dtype=object)
        self.kkt = np.full(n, np.nan)
        self.iters = np.zeros(n, dtype=np.int64)
        self.method = np.full(n, "", dtype=object)
        # a proven lower bound on the optimal distance of the *unshifted* problem (no hair of
        # margin, score rounding allowed for); NaN where the method has none
        self.lb = np.full(n, np.nan)


# --------------------------------------------------------------------------------------------
# score differences to near machine precision
# --------------------------------------------------------------------------------------------

_U = np.finfo(np.float64).eps / 2          # unit roundoff
_SPLIT = 134217729.0                       # 2**27 + 1 (Veltkamp)


def _two_prod(a, b):
    """``a * b == p + e`` exactly (Dekker's TwoProduct with Veltkamp's split)."""
    p = a * b
    ca = _SPLIT * a
    ah = ca - (ca - a)
    al = a - ah
    cb = _SPLIT * b
    bh = cb - (cb - b)
    bl = b - bh
    e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    return p, e


def score_differences(X, W, b, ref, *, rel=1e-11):
    """Scores relative to a reference class, ``S[i, k] - S[i, ref[i]]``, and error bounds.

    The float64 matrix product loses up to ``~D u (|W| . |x| + |b|)`` to rounding, which is
    everything for a row within that distance of a decision boundary (a relative change of the
    score gap there is a relative change of the counterfactual distance). Gaps whose rounding
    bound exceeds ``rel`` times the gap are recomputed: every product ``W_kj x_j`` is split into
    two floats that sum to it exactly (TwoProduct), and the terms are added by a pairwise tree of
    error-free additions (:func:`_accurate_row_sums`), so the gap is correct to about half an
    ulp of itself, with a rigorous bound.

    Parameters
    ----------
    X : (n, D); W : (K, D); b : (K,); ref : (n,) class indices.

    Returns
    -------
    Sd : (n, K) ``S - S[:, ref]`` (zero in the ``ref`` column).
    err : (n, K) bounds on ``|Sd - exact|`` (zero in the ``ref`` column).
    absS : (n,) ``max_k |W_k| . |x| + |b_k|``: the magnitude the estimator's own rounding of
        the scores scales with.
    """
    X = np.asarray(X, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    n, D = X.shape
    r = np.arange(n)
    ref = np.asarray(ref, dtype=np.intp)
    W = np.asarray(W, dtype=np.float64)
    S = X @ W.T + b
    Sd = S - S[r, ref][:, None]
    aS = np.abs(X) @ np.abs(W).T + np.abs(b)
    gam = (D + 2) * _U / (1.0 - (D + 2) * _U)
    err = gam * (aS + aS[r, ref][:, None]) + _U * np.abs(Sd)
    err[r, ref] = 0.0
    _split_gaps(X, W, b, ref, Sd, err, rel)
    # Only the (row, class) pairs within rounding reach of a tie are recomputed (with many
    # classes nearly every row has one such pair, but only one or two of its K - 1 gaps): a
    # vectorised pass over those pairs, in blocks of about _TERM_BUDGET terms so that the
    # exact terms never take K x D memory per row.
    pi, pk = np.nonzero(err > rel * np.abs(Sd))
    block = max(16, _TERM_BUDGET // (4 * D + 2))
    for a in range(0, len(pi), block):
        qi, qk = pi[a:a + block], pk[a:a + block]
        qt = ref[qi]
        Xq = X[qi]
        Pk, Ek = _two_prod(Xq, W[qk])                                 # (m, D) each
        Pt, Et = _two_prod(Xq, W[qt])
        terms = np.concatenate([Pk, Ek, b[qk][:, None], -Pt, -Et, -b[qt][:, None]], axis=1)
        del Pk, Ek, Pt, Et
        if not np.all(np.isfinite(terms)):
            ok = np.all(np.isfinite(terms), axis=1)
            qi, qk, terms = qi[ok], qk[ok], terms[ok]
        s, bound = _accurate_row_sums(terms)
        Sd[qi, qk] = s
        err[qi, qk] = bound
    return Sd, err, aS.max(axis=1)


def _split_hi(A, t):
    """``A == hi + lo`` exactly, row by row: ``hi`` is ``A`` rounded to a multiple of the power
    of two ``q_i = 2^(e_i - t)`` (``|A_i| < 2^e_i``), so ``|hi / q_i|`` is an integer of at most
    ``2^t``. Returns ``(hi, lo, log2 q)``; rows that are not finite or whose ``q`` would be
    near underflow get ``hi = 0`` and ``log2 q = None`` there (``ok`` False)."""
    mu = np.max(np.abs(A), axis=1) if A.shape[1] else np.zeros(A.shape[0])
    ok = np.isfinite(mu)
    _, e = np.frexp(np.where(ok & (mu > 0), mu, 1.0))           # mu < 2^e
    lq = e.astype(np.int64) - t
    ok &= lq > -900
    q = np.ldexp(1.0, np.where(ok, lq, 0))[:, None]
    hi = np.where(ok[:, None], np.round(A / q) * q, 0.0)
    lo = np.where(ok[:, None], A - hi, A)
    return hi, lo, lq, ok


def _split_gaps(X, W, b, ref, Sd, err, rel):
    """Tighter gaps and bounds for the pairs the plain product cannot resolve (in place).

    An error-free split in the manner of Ozaki et al. (2012, "Error-free transformations of
    matrix multiplication by using fast routines of matrix multiplication and its
    applications"): ``X = Xh + Xl`` (per row) and ``W = Wh + Wl`` (one scale for all of ``W``)
    where the high parts are integers times powers of two with at most ``t`` bits, ``t`` chosen
    so that every partial sum of ``Xh @ Wh.T`` and the difference of two of them fit in 53 bits:
    that product and its gaps are exact in any summation order (BLAS, FMA). The rest,
    ``Xh @ Wl.T + Xl @ W.T``, is about ``2^-t`` of the scores and its rounding is bounded by
    ``gamma_D`` times its absolute product. So the bound shrinks by about ``2^t`` (a million for
    D = 2,000) and only gaps far closer to a tie than that are left to the exact sums.
    """
    n, D = X.shape
    if n == 0 or D == 0:
        return
    pairs = err > rel * np.abs(Sd)
    rows = np.flatnonzero(pairs.any(axis=1))
    if rows.size == 0:
        return
    t = (52 - int(np.ceil(np.log2(max(D, 2))))) // 2
    if t < 4:
        return
    Xs, rs = X[rows], ref[rows]
    Xh, Xl, lqx, okx = _split_hi(Xs, t)
    Wh, Wl, lqw, okw = _split_hi(W.reshape(1, -1), t)
    if not okw[0]:
        return
    Wh, Wl = Wh.reshape(W.shape), Wl.reshape(W.shape)
    okx &= (lqx + int(lqw[0])) > -900       # the exact products' grid stays normal
    if not okx.any():
        return
    rows, Xs, rs, Xh, Xl = rows[okx], Xs[okx], rs[okx], Xh[okx], Xl[okx]
    m = np.arange(rows.size)
    H = Xh @ Wh.T                                   # exact
    Hd = H - H[m, rs][:, None]                      # exact (fits in 53 bits)
    C = Xh @ Wl.T + Xl @ W.T
    aC = np.abs(Xh) @ np.abs(Wl).T + np.abs(Xl) @ np.abs(W).T
    gam = (D + 2) * _U / (1.0 - (D + 2) * _U)
    eC = gam * aC + _U * np.abs(C)                  # |C - exact rest|
    Cd = C - C[m, rs][:, None]
    bd = b[None, :] - b[rs][:, None]
    part = Cd + bd
    new = Hd + part
    # the bound's own float evaluation undercounts by at most a factor 1 - gam: inflate it
    bound = ((eC + eC[m, rs][:, None]) + _U * (np.abs(Cd) + np.abs(part) + np.abs(new))) * (1 + 4 * gam)
    bound[m, rs] = 0.0
    new[m, rs] = 0.0
    better = np.isfinite(new) & np.isfinite(bound) & (bound < err[rows])
    sub_S, sub_e = Sd[rows], err[rows]
    sub_S[better], sub_e[better] = new[better], bound[better]
    Sd[rows], err[rows] = sub_S, sub_e


#: Terms (floats) per block of recomputed score gaps: about 32 MB.
_TERM_BUDGET = 2 ** 22


def _accurate_row_sums(T):
    """Row sums of ``T`` (m, L) to about half an ulp, with a rigorous bound on the error.

    A pairwise tree of Knuth's TwoSum: at every level adjacent columns are added and the
    rounding error of each addition is kept exactly (``a + c == s + e``). The row sum is then
    ``s + E`` where ``E`` is the (float) sum of every error term. The float sum of the errors is
    off by at most ``gamma_{2L} sum |e|``, and ``sum |e| <= u log2(L) sum |T|``: about ``L log L
    u^2`` of the row's magnitude, far below an ulp of any gap that is not itself that small
    (rows where it is not are summed exactly by ``math.fsum`` and rounded once). The final
    rounding adds ``u |s + E|``. Overflow-free inputs are assumed (the caller drops
    rows with non-finite terms).

    Returns ``(sums, bounds)``, each ``(m,)``, with ``|sums - exact| <= bounds``.
    """
    T0 = T = np.asarray(T, dtype=np.float64)
    m, L = T.shape
    E = np.zeros(m)
    Eabs = np.zeros(m)
    while T.shape[1] > 1:
        odd = T[:, -1:] if T.shape[1] % 2 else None
        h = T.shape[1] // 2
        a, c = T[:, 0:2 * h:2], T[:, 1:2 * h:2]
        s = a + c
        z = s - a
        e = (a - (s - z)) + (c - z)
        E += e.sum(axis=1)
        Eabs += np.abs(e).sum(axis=1)
        T = s if odd is None else np.concatenate([s, odd], axis=1)
    g = 2 * L * _U / (1.0 - 2 * L * _U)
    out = T[:, 0] + E
    bound = _U * np.abs(out) / (1.0 - _U) + 2.0 * g * Eabs
    # a gap far below its terms (cancellation beyond ~1e-16 of them): round the exact sum once
    hard = np.flatnonzero(2.0 * g * Eabs > _U * np.abs(out))
    if hard.size:
        import math

        out[hard] = [math.fsum(row) for row in T0[hard].tolist()]
        bound[hard] = _U * np.abs(out[hard])
    return out, bound


# --------------------------------------------------------------------------------------------
# many rows, many classes: chunks, and target "other" without solving every class
# --------------------------------------------------------------------------------------------

#: Bytes of per-row solver state (K x K Gram and Newton blocks, K x D score terms) allowed at
#: once: rows are solved in chunks of at most this much state, so peak memory is bounded by
#: the chunk, not by n x K^2.
_STATE_BUDGET = 192 * 2 ** 20
#: A class is skipped for target "other" when its lower bound exceeds the best verified
#: distance by this factor (far above the rounding of either).
_PRUNE_REL = 1e-7

_FIELDS = ("status", "reason", "x_cf", "delta", "distance", "original_index", "target_index",
           "predicted_index", "target_probability", "exact", "method", "kkt_residual",
           "iterations", "changed")


def chunk_rows(K: int, D: int) -> int:
    """Rows per solver call: the multiclass dual keeps about a dozen ``(K-1) x (K-1)`` blocks
    per row, the box phase and the exact score gaps a few ``K x D`` ones."""
    per_row = 8 * (12 * max(K - 1, 1) ** 2 + 4 * K * D + 16 * D)
    return int(max(256, _STATE_BUDGET // per_row))


def _sub_constraints(cons, idx):
    if cons is None:
        return None
    from .constraints import Constraints

    return Constraints(lower=cons.lower[idx], upper=cons.upper[idx], weights=cons.weights)


def solve_in_chunks(solve_rows, form, X, t, orig, conf, norm, cons):
    """``solve_rows`` (the linear solver's per-row entry) over chunks of rows
    (:func:`chunk_rows`), the results concatenated: each row's problem is its own, so the
    answers are those of one call on all rows."""
    from .result import CounterfactualBatch

    n, D = X.shape
    c = chunk_rows(int(form.n_classes), D)
    if n <= c:
        return solve_rows(form, X, t, orig, conf, norm, cons)
    parts = [solve_rows(form, X[a:a + c], t[a:a + c], orig[a:a + c], conf, norm,
                        _sub_constraints(cons, slice(a, a + c))) for a in range(0, n, c)]
    fields = {f: np.concatenate([getattr(p, f) for p in parts]) for f in _FIELDS}
    return CounterfactualBatch(norm=parts[0].norm, **fields)


def other_lower_bounds(form, X, orig, others, conf, norm, cons):
    """``(n, K-1)`` lower bounds on the distance of any point the estimator assigns to each
    other class (``others``), from one halfspace each.

    A point predicted as ``j`` has ``s_j >= s_o`` (``o`` the row's class), and with a confidence
    ``P`` also ``s_j - s_o >= log(P / (1 - P))`` (``p_j >= P`` bounds every ratio
    ``p_o / p_j``). The closest point of that halfspace inside the row's box is the binary
    problem of :mod:`._binary` (closed form without a box). Every gap is lowered by far more
    than the scores' rounding, so the bound holds for the points as the estimator verifies
    them. ``inf`` where the halfspace cannot be reached inside the box.
    """
    from ._binary import solve_binary

    n, D = X.shape
    W = np.asarray(form.W_full, dtype=np.float64)
    b = np.asarray(form.b_full, dtype=np.float64)
    w = np.ones(D) if cons is None else np.asarray(cons.weights, dtype=np.float64)
    if cons is None:
        kept = np.arange(D)
    else:
        kept = np.flatnonzero(~np.all(cons.lower == cons.upper, axis=0))
    need = 0.0 if conf is None else max(np.log(conf) - np.log1p(-conf), 0.0)
    S = X @ W.T + b
    r = np.arange(n)
    so = S[r, orig]
    aS = (np.abs(X) @ np.abs(W).T + np.abs(b)).max(axis=1)
    slack = 8.0 * (D + 2) * np.finfo(np.float64).eps * aS       # >> the scores' rounding
    gap = so[:, None] - np.take_along_axis(S, others, axis=1) + need
    gap = gap - 1e-9 * np.abs(gap) - slack[:, None] - 1e-9 * need
    gap = np.maximum(gap, 0.0)
    Ak = W[:, kept] / w[kept]
    lb = np.zeros_like(gap)
    boxed = None
    if cons is not None:
        lo, hi = cons.lower[:, kept], cons.upper[:, kept]
        boxed = np.any(np.isfinite(lo) | np.isfinite(hi), axis=1)
    free = np.ones(n, dtype=bool) if boxed is None else ~boxed
    if np.any(free):
        # ||a||_q of every class difference (q the dual norm), one class at a time
        K = W.shape[0]
        Nq = np.empty((K, K))
        for k in range(K):
            dk = Ak - Ak[k]
            Nq[k] = (np.sqrt(np.einsum("ij,ij->i", dk, dk)) if norm == "l2" else
                     np.abs(dk).max(axis=1) if norm == "l1" else np.abs(dk).sum(axis=1))
        fr = np.flatnonzero(free)
        nq = Nq[orig[fr][:, None], others[fr]]
        with np.errstate(divide="ignore", invalid="ignore"):
            v = gap[fr] / nq
        lb[fr] = np.where(gap[fr] <= 0, 0.0, np.where(nq > 0, v, np.inf))
    if boxed is not None and np.any(boxed):
        br = np.flatnonzero(boxed)
        m = others.shape[1]
        step = max(1, chunk_rows(int(form.n_classes), D) * 4 // max(m, 1))
        for a0 in range(0, br.size, step):
            rows = br[a0:a0 + step]
            rep = np.repeat(rows, m)
            cls = others[rows].ravel()
            delta = gap[rows].ravel()
            out = np.zeros(rep.size)
            pos = delta > 0
            if np.any(pos):
                xk = X[rep[pos]][:, kept]
                lz = np.minimum(w[kept] * (lo[rep[pos]] - xk), 0.0)
                uz = np.maximum(w[kept] * (hi[rep[pos]] - xk), 0.0)
                a = Ak[cls[pos]] - Ak[orig[rep[pos]]]
                z, feas, _, _ = solve_binary(a, delta[pos], lz, uz, norm)
                zz = np.nan_to_num(z)
                d = (np.sqrt(np.einsum("ij,ij->i", zz, zz)) if norm == "l2" else
                     np.abs(zz).sum(axis=1) if norm == "l1" else np.abs(zz).max(axis=1))
                out[pos] = np.where(feas, d, np.inf)
            lb[rows] = out.reshape(rows.size, m)
    # the bound must not exceed what the solvers' rounded points can reach
    return lb * (1.0 - 1e-9)


def closest_other(solve_rows, form, X, orig, conf, norm, cons):
    """For each row the closest point the estimator assigns to any class other than ``orig``:
    the answer of solving every other class and keeping the closest verified point, without
    solving most of them.

    Each class ``j`` has a lower bound (:func:`other_lower_bounds`); classes are solved in
    increasing order of it, a row's first class alone, then the next 1, 2, 4, ... at a time,
    and a row stops once its best verified distance is below the bound of every class not yet
    solved (those could only be farther). Without a box and without a confidence the first
    class is the answer (the nearest halfspace's projection is predicted as that class; see
    :mod:`invaudit.margins._linear`). Ties between distances go to the lower class index, as
    when every class is solved. A row where no class verifies has had every class solved, and
    is reported as then: ``infeasible`` when every class was, else ``failed``.

    ``iterations`` counts the solver iterations of the classes actually solved.
    """
    from .result import CounterfactualBatch
    from ._dual import others_of

    n, D = X.shape
    K = int(form.n_classes)
    m = K - 1
    others = others_of(orig, K)
    lb = other_lower_bounds(form, X, orig, others, conf, norm, cons)
    order = np.argsort(lb, axis=1, kind="stable")           # ties: the lower class first
    lb_sorted = np.take_along_axis(lb, order, axis=1)

    best = {"status": np.full(n, "failed", dtype=object), "reason": np.full(n, None, dtype=object),
            "x_cf": np.full((n, D), np.nan), "delta": np.full((n, D), np.nan),
            "distance": np.full(n, np.inf), "original_index": np.asarray(orig, dtype=np.intp).copy(),
            "target_index": np.full(n, -1, dtype=np.intp),
            "predicted_index": np.full(n, -1, dtype=np.intp),
            "target_probability": np.full(n, np.nan), "exact": np.zeros(n, dtype=bool),
            "method": np.full(n, "", dtype=object), "kkt_residual": np.full(n, np.nan),
            "iterations": np.zeros(n, dtype=np.int64), "changed": np.zeros((n, D), dtype=bool)}
    found = np.zeros(n, dtype=bool)
    n_infeasible = np.zeros(n, dtype=np.int64)
    norm_name = None
    pos = np.zeros(n, dtype=np.int64)
    width = 1
    chunk = chunk_rows(K, D)
    while True:
        bound_next = np.where(pos < m, lb_sorted[np.arange(n), np.minimum(pos, m - 1)], np.inf)
        open_ = (pos < m) & ~(found & (bound_next > best["distance"] * (1.0 + _PRUNE_REL)))
        rows = np.flatnonzero(open_)
        if rows.size == 0:
            break
        # the next `width` classes of every open row, minus those already beaten
        take = np.minimum(width, m - pos[rows])
        rep = np.repeat(rows, take)
        off = np.arange(rep.size) - np.repeat(np.cumsum(take) - take, take)
        slot = pos[rep] + off
        keep = ~(found[rep] & (lb_sorted[rep, slot] > best["distance"][rep] * (1.0 + _PRUNE_REL)))
        rep, slot = rep[keep], slot[keep]
        pos[rows] += take
        width = min(2 * width, m)
        cls = others[rep, order[rep, slot]]
        for a in range(0, rep.size, chunk):
            ri, ci = rep[a:a + chunk], cls[a:a + chunk]
            res = solve_rows(form, X[ri], ci, orig[ri], conf, norm, _sub_constraints(cons, ri))
            norm_name = res.norm
            np.add.at(best["iterations"], ri, res.iterations)
            np.add.at(n_infeasible, ri, res.status == "infeasible")
            ok = res.status == "found"
            if not np.any(ok):
                continue
            # the best of this block per row: smallest distance, then lowest class
            q = np.flatnonzero(ok)
            srt = np.lexsort((ci[q], res.distance[q], ri[q]))
            q = q[srt]
            _, firstq = np.unique(ri[q], return_index=True)
            q = q[firstq]
            i = ri[q]
            better = (~found[i]) | (res.distance[q] < best["distance"][i]) | (
                (res.distance[q] == best["distance"][i]) & (ci[q] < best["target_index"][i]))
            q, i = q[better], i[better]
            for f in _FIELDS:
                if f != "iterations":
                    best[f][i] = getattr(res, f)[q]
            found[i] = True
    none = ~found
    if np.any(none):
        # every class of these rows was solved: report the lowest class's answer (as a
        # search over all classes does), solved again (deterministic; rare rows)
        i = np.flatnonzero(none)
        res = solve_in_chunks(solve_rows, form, X[i], others[i, 0], orig[i], conf, norm,
                              _sub_constraints(cons, i))
        for f in _FIELDS:
            if f != "iterations":
                best[f][i] = getattr(res, f)
        all_inf = none & (n_infeasible == m)
        best["status"][all_inf] = "infeasible"
        best["status"][none & ~all_inf] = "failed"
        best["reason"][all_inf] = ("no other class can be reached within the constraints"
                                   + ("" if conf is None else f" at p >= {conf:g}"))
        best["reason"][none & ~all_inf] = "no other class was reached with a verified point"
        best["target_index"][none] = -1
    return CounterfactualBatch(norm=norm_name or norm, **best)
