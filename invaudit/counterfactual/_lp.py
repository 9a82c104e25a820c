"""Linear programs for multiclass linear models (scipy's HiGHS), batched over rows.

All rows of a batch go into ONE block-diagonal LP (the rows do not interact, so its optimum is
the optimum of every row), which keeps the Python overhead independent of the number of rows.
Coordinates as in :mod:`._dual`: ``z = w * (x_cf - x)``, ``d = d0 + A_d z`` the score
differences to the target, ``lz <= z <= uz`` with ``lz <= 0 <= uz``.

- :func:`max_margin`: phase 1, ``max s  s.t.  d0 + A_d z <= -s``: the largest margin by which the
  target can beat every other class inside the box (certifies (in)feasibility).
- :func:`solve_lp`: ``min ||z||_1`` or ``||z||_inf`` subject to the argmax constraints
  ``d <= -tau`` and/or extra cuts ``C z <= e``; returns the optimum with its own duality
  certificate (primal and dual residuals and the duality gap, recomputed here from the
  multipliers HiGHS returns, not trusted).
- :func:`cutting_plane`: ``min ||z||_p`` subject to the softmax constraint
  ``sum_j exp(d_j) <= E`` (and the argmax caps): Kelley's outer approximation by tangent planes,
  plus supporting planes at boundary points, with a certified gap between the LP lower bound
  and the best feasible point found.
"""

from __future__ import annotations

import numpy as np

__all__ = ["max_margin", "solve_lp", "cutting_plane"]

_HIGHS = {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}
_NNZ_CHUNK = 2_000_000


def _block_diag(B: np.ndarray):
    """Block-diagonal sparse matrix from dense blocks ``B`` of shape (n, r, c)."""
    from scipy import sparse  # scipy's LP stack loads only for the L1/Linf paths (start-up)

    n, r, c = B.shape
    rows = (np.arange(n)[:, None, None] * r + np.arange(r)[None, :, None]).repeat(c, axis=2)
    cols = (np.arange(n)[:, None, None] * c + np.arange(c)[None, None, :]).repeat(r, axis=1)
    keep = B != 0
    return sparse.csr_matrix((B[keep], (rows[keep], cols[keep])), shape=(n * r, n * c))


def _chunks(n: int, per_row: int):
    size = max(1, _NNZ_CHUNK // max(per_row, 1))
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _run(c, A_ub, b_ub, lb, ub):
    from scipy.optimize import linprog

    res = linprog(c, A_ub=A_ub, b_ub=b_ub, bounds=np.column_stack([lb, ub]),
                  method="highs-ds", options=_HIGHS)
    return res


def _col_scale(Ad, lz, uz):
    """Per row and feature, the unit ``c`` the LP measures ``z_j = c_j y_j`` in: the reciprocal
    of the feature's largest coefficient, or the box's half-width where that is smaller.
    HiGHS drops matrix entries below 1e-9, so a feature whose score gain per unit is tiny but
    whose range is wide (mixed feature scales) would silently vanish from an unscaled LP."""
    big = np.abs(Ad).max(axis=1)                                    # (n, p)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(big > 0, 1.0 / big, 1.0)
        if lz is not None:
            half = np.maximum(np.abs(lz), np.abs(uz))
            c = np.where(np.isfinite(half) & (half > 0), np.minimum(half, c), c)
    return np.where(np.isfinite(c) & (c > 0), c, 1.0)


def max_margin(Ad: np.ndarray, d0: np.ndarray, lz, uz, s_max: np.ndarray) -> np.ndarray:
    """Per row ``max s`` s.t. ``d0 + Ad z + s <= 0``, ``lz <= z <= uz``, ``s <= s_max``.

    ``Ad``: (n, m, p); returns ``s*`` (n,). An unbounded box makes ``s_max`` binding when the
    target can win by any margin.
    """
    n, m, p = Ad.shape
    out = np.empty(n)
    cs = _col_scale(Ad, lz, uz)
    for sl in _chunks(n, m * (p + 1)):
        k = sl.stop - sl.start
        cc = cs[sl]
        B = np.concatenate([Ad[sl] * cc[:, None, :], np.ones((k, m, 1))], axis=2)
        A_ub = _block_diag(B)
        c = np.zeros(k * (p + 1))
        c[p::p + 1] = -1.0
        lo = np.column_stack([np.full((k, p), -np.inf) if lz is None else lz[sl] / cc,
                              np.full((k, 1), -np.inf)]).ravel()
        hi = np.column_stack([np.full((k, p), np.inf) if uz is None else uz[sl] / cc,
                              s_max[sl][:, None]]).ravel()
        res = _run(c, A_ub, -d0[sl].ravel(), lo, hi)
        if res.status != 0:
            # the phase-1 LP is always feasible and bounded; a failure is numerical
            out[sl] = np.nan
            continue
        out[sl] = res.x[p::p + 1]
    return out


def _certificate(res, c, A_ub, b_ub, lo, hi, k, nv, nc, scale):
    """Per-row relative KKT residual of an LP solution (block rows of ``nv`` variables and
    ``nc`` constraints each)."""
    x, y = res.x, res.ineqlin.marginals
    yl, yu = res.lower.marginals, res.upper.marginals
    red = c - A_ub.T @ y - yl - yu
    viol = np.maximum(A_ub @ x - b_ub, 0.0).reshape(k, nc).max(axis=1) if nc else np.zeros(k)
    bviol = np.maximum(np.maximum(lo - x, x - hi), 0.0).reshape(k, nv).max(axis=1)
    lfin = np.where(np.isfinite(lo), lo, 0.0)
    hfin = np.where(np.isfinite(hi), hi, 0.0)
    dual_bad = (np.abs(yl) * ~np.isfinite(lo) + np.abs(yu) * ~np.isfinite(hi)).reshape(k, nv).max(axis=1)
    primal = (c * x).reshape(k, nv).sum(axis=1)
    dual = (b_ub * y).reshape(k, nc).sum(axis=1) + (lfin * yl + hfin * yu).reshape(k, nv).sum(axis=1)
    gap = np.abs(primal - dual) / (1.0 + np.abs(primal))
    dres = np.abs(red).reshape(k, nv).max(axis=1) / (1.0 + np.abs(c).max())
    return np.maximum.reduce([gap, dres, dual_bad, viol / scale, bviol / scale])


def solve_lp(norm: str, Ad, d0, tau, lz, uz, cuts=None, sd=None, relax=None):
    """``min ||z||_norm`` (norm "l1" or "linf") s.t. ``d0 + Ad z <= -tau`` (if ``tau`` is not
    None), ``C z <= e`` for ``cuts = (C, e)`` with C (n, q, p), and ``lz <= z <= uz``.

    Returns ``z`` (n, p), ``ok`` (n,) bool, ``kkt`` (n,) relative KKT residual per row; with
    ``relax`` (n, m) (how far each argmax constraint may be loosened: the hair ``tau`` plus the
    rounding of ``d0``) also ``lb`` (n,): the LP dual value of the loosened problem at the
    multipliers HiGHS returns (less their reduced-cost residual times ``|z|``), a lower bound on
    the optimum of ``d0 + Ad z <= 0`` in exact arithmetic.
    """
    n, m, p = Ad.shape
    if sd is None:
        sd = np.ones(n)
    z = np.full((n, p), np.nan)
    ok = np.zeros(n, dtype=bool)
    kkt = np.full(n, np.nan)
    lbound = np.full(n, np.nan)
    q = 0 if cuts is None else cuts[0].shape[1]
    mm = (m if tau is not None else 0) + q
    cs = _col_scale(Ad, lz, uz)        # z = cs * y (see _col_scale)
    for sl in _chunks(n, (mm + 2) * 2 * p):
        k = sl.stop - sl.start
        cc = cs[sl]
        G_parts, h_parts = [], []
        if tau is not None:
            G_parts.append(Ad[sl])
            h_parts.append(-d0[sl] - tau[sl][:, None])
        if q:
            G_parts.append(cuts[0][sl])
            h_parts.append(cuts[1][sl])
        G = np.concatenate(G_parts, axis=1) * cc[:, None, :]   # (k, mm, p)
        h = np.concatenate(h_parts, axis=1)          # (k, mm)
        lzs = np.full((k, p), -np.inf) if lz is None else lz[sl] / cc
        uzs = np.full((k, p), np.inf) if uz is None else uz[sl] / cc
        if norm == "l1":
            # z = cs (u - v), u, v >= 0, min sum(cs (u + v))
            B = np.concatenate([G, -G], axis=2)
            nv = 2 * p
            c = np.concatenate([cc, cc], axis=1).ravel()
            lo = np.zeros(k * nv)
            hi = np.concatenate([np.maximum(uzs, 0.0), np.maximum(-lzs, 0.0)], axis=1).ravel()
            A_ub = _block_diag(B)
            b_ub = h.ravel()
            nc = mm
        else:
            # variables (z, t): min t, -t <= z_i <= t
            eye = np.eye(p)[None] * cc[:, None, :]
            top = np.concatenate([G, np.zeros((k, mm, 1))], axis=2)
            pos = np.concatenate([eye, -np.ones((k, p, 1))], axis=2)
            neg = np.concatenate([-eye, -np.ones((k, p, 1))], axis=2)
            B = np.concatenate([top, pos, neg], axis=1)
            nv = p + 1
            nc = mm + 2 * p
            c = np.zeros(k * nv)
            c[p::nv] = 1.0
            lo = np.concatenate([lzs, np.zeros((k, 1))], axis=1).ravel()
            hi = np.concatenate([uzs, np.full((k, 1), np.inf)], axis=1).ravel()
            A_ub = _block_diag(np.ascontiguousarray(B))
            b_ub = np.concatenate([h, np.zeros((k, 2 * p))], axis=1).ravel()
        res = _run(c, A_ub, b_ub, lo, hi)
        if res.status != 0:
            continue
        xs = res.x.reshape(k, nv)
        zz = cc * (xs[:, :p] - xs[:, p:] if norm == "l1" else xs[:, :p])
        z[sl] = zz
        ok[sl] = True
        kkt[sl] = _certificate(res, c, A_ub, b_ub, lo, hi, k, nv, nc, sd[sl])
        if relax is not None and tau is not None:
            y = np.minimum(res.ineqlin.marginals, 0.0).reshape(k, nc)
            yl, yu = res.lower.marginals, res.upper.marginals
            lfin = np.where(np.isfinite(lo), lo, 0.0)
            hfin = np.where(np.isfinite(hi), hi, 0.0)
            loose = b_ub.reshape(k, nc).copy()
            loose[:, :m] += relax[sl]
            red = c - A_ub.T @ res.ineqlin.marginals - yl - yu
            lbound[sl] = ((loose * y).sum(axis=1)
                          + (lfin * yl + hfin * yu).reshape(k, nv).sum(axis=1)
                          - (np.abs(red) * np.abs(res.x)).reshape(k, nv).sum(axis=1))
    if relax is not None:
        return z, ok, kkt, lbound
    return z, ok, kkt


def _lse0(d):
    mx = np.maximum(d.max(axis=1), 0.0)
    return mx + np.log(np.exp(-mx) + np.exp(d - mx[:, None]).sum(axis=1))


def _norm(z, norm):
    return np.abs(z).sum(axis=1) if norm == "l1" else np.abs(z).max(axis=1)


def _tangent(Ad, d0, c_eff, z):
    """The tangent half-space of ``h(d0 + Ad z) <= c_eff`` at ``z``: ``C z' <= e``."""
    d_hat = d0 + np.einsum("njp,np->nj", Ad, z)
    h = _lse0(d_hat)
    g = np.exp(d_hat - h[:, None])
    C = np.einsum("nj,njp->np", g, Ad)
    e = c_eff - h + np.einsum("nj,nj->n", g, d_hat) - np.einsum("nj,nj->n", g, d0)
    return C, e


def _h_grad(Ad, d0, z):
    d = d0 + np.einsum("njp,np->nj", Ad, z)
    h = _lse0(d)
    po = np.exp(d - h[:, None])
    return h, np.einsum("nj,njp->np", po, Ad), po


def _feasible(Ad, d0, c_eff, tau, z):
    d = d0 + np.einsum("njp,np->nj", Ad, z)
    # c_eff and tau already hold the hair of margin, so rounding-level slack is safe here
    ok = _lse0(d) <= c_eff + 1e-13 * np.maximum(1.0, np.abs(c_eff))
    if tau is not None:
        ok &= np.all(d <= -0.5 * tau[:, None], axis=1)
    return ok & np.all(np.isfinite(z), axis=1)


def _polish_linf(Ad, d0, c_eff, lz, uz, z0):
    """Linf optimum by an active set on its KKT conditions. Features are on top
    (``z_i = sigma_i t``, needing ``sigma_i g_i <= 0``), at a bound, or interior (needing
    ``g_i(z) = 0``, since the max-norm charges nothing below the top). For a pattern, Newton
    solves ``g_I(z) = 0, h(z) = c`` in the unknowns ``(z_I, t)``; violators change sets."""
    n, m, p = Ad.shape
    lo = np.full((n, p), -np.inf) if lz is None else lz
    hi = np.full((n, p), np.inf) if uz is None else uz
    z = z0.copy()
    t = np.abs(z).max(axis=1)
    _, g, _ = _h_grad(Ad, d0, z)
    with np.errstate(invalid="ignore"):
        at_b = ((np.isfinite(lo) & (np.abs(z - lo) <= 1e-9 * (1 + np.abs(lo))))
                | (np.isfinite(hi) & (np.abs(z - hi) <= 1e-9 * (1 + np.abs(hi)))))
    sig = np.where(z != 0, np.sign(z), -np.sign(g))
    T = (np.abs(z) >= t[:, None] * (1 - 1e-9)) & ~at_b & (sig != 0)
    B = at_b & ~T
    I = ~T & ~B
    r = np.arange(n)[:, None]
    for _outer in range(15):
        imax = int(I.sum(axis=1).max())
        order = np.argsort(~I, axis=1, kind="stable")[:, :imax]
        valid = np.take_along_axis(I, order, axis=1)
        AdI = Ad[r[:, :, None], np.arange(m)[None, :, None], order[:, None, :]] * valid[:, None, :]
        eye = np.eye(imax + 1)[None]
        inval = np.concatenate([~valid, np.zeros((n, 1), dtype=bool)], axis=1)

        def build(tt, zI):
            zz = np.where(T, sig * tt[:, None], z)
            cur = np.take_along_axis(zz, order, axis=1)
            np.put_along_axis(zz, order, np.where(valid, zI, cur), axis=1)
            return zz

        def resid(zz):
            h, gg, po = _h_grad(Ad, d0, zz)
            gI = np.take_along_axis(gg, order, axis=1) * valid
            return np.concatenate([gI, (h - c_eff)[:, None]], axis=1), gg, po

        zI = np.take_along_axis(z, order, axis=1)
        z = build(t, zI)
        R, g, po = resid(z)
        live = np.ones(n, dtype=bool)
        for _ in range(40):
            rn = np.abs(R).max(axis=1)
            live &= rn > 1e-15
            if not np.any(live):
                break
            H = po[:, :, None] * np.eye(m)[None] - po[:, :, None] * po[:, None, :]
            aT = np.einsum("njp,np->nj", Ad, np.where(T, sig, 0.0))
            HAI = np.einsum("njk,nkf->njf", H, AdI)
            J = np.zeros((n, imax + 1, imax + 1))
            J[:, :imax, :imax] = np.einsum("njf,njg->nfg", AdI, HAI)
            J[:, :imax, imax] = np.einsum("njf,nj->nf", HAI, aT)
            J[:, imax, :imax] = np.take_along_axis(g, order, axis=1) * valid
            J[:, imax, imax] = np.where(T, sig * g, 0.0).sum(axis=1)
            J = np.where(inval[:, :, None] | inval[:, None, :], 0.0, J) + eye * inval[:, :, None]
            try:
                step = np.linalg.solve(J + 1e-14 * eye, -R[:, :, None])[:, :, 0]
            except np.linalg.LinAlgError:
                break
            step = np.where(np.isfinite(step), step, 0.0)
            alpha = np.ones(n)
            acc = np.zeros(n, dtype=bool)
            zn, tn = z.copy(), t.copy()
            for _ls in range(25):
                tt = t + alpha * step[:, imax]
                zt = build(tt, zI + alpha[:, None] * step[:, :imax])
                Rt, _, _ = resid(zt)
                okr = live & ~acc & (np.abs(Rt).max(axis=1) < rn)
                zn[okr], tn[okr] = zt[okr], tt[okr]
                acc |= okr
                if np.all(acc | ~live):
                    break
                alpha = np.where(acc, alpha, alpha * 0.5)
            live &= acc
            if not np.any(acc):
                break
            z, t = zn, tn
            zI = np.take_along_axis(z, order, axis=1)
            R, g, po = resid(z)
        # pattern updates
        changed = np.zeros(n, dtype=bool)
        wrong = T & (sig * g > 0)                       # top feature pushing the wrong way
        out_top = I & (np.abs(z) > t[:, None])          # interior feature above the top
        over = (T | I) & ((z > hi) | (z < lo))          # beyond a bound
        rel_hi = B & (np.abs(z - hi) <= 1e-12 * (1 + np.abs(hi))) & (g > 0)
        rel_lo = B & (np.abs(z - lo) <= 1e-12 * (1 + np.abs(lo))) & (g < 0)
        z = np.clip(z, lo, hi)
        B = (B & ~rel_hi & ~rel_lo) | over
        T = (T & ~wrong & ~over) | (out_top & ~over)
        sig = np.where(out_top, np.sign(z), sig)
        I = ~T & ~B
        changed = (wrong | out_top | over | rel_hi | rel_lo).any(axis=1)
        if not np.any(changed):
            break
    return np.clip(np.where(T, sig * t[:, None], z), lo, hi)


def _newton_l1(Ad, d0, c_eff, z, F, sig, lam):
    """Newton on ``sig_i + lam g_i(z) = 0`` (i in F) and ``h(z) = c``; z outside F fixed."""
    n, m, p = Ad.shape
    fmax = int(F.sum(axis=1).max()) if n else 0
    if fmax == 0:
        return z, lam
    order = np.argsort(~F, axis=1, kind="stable")[:, :fmax]
    valid = np.take_along_axis(F, order, axis=1)
    sg = np.take_along_axis(sig, order, axis=1) * valid
    r = np.arange(n)[:, None]
    AdF = Ad[r[:, :, None], np.arange(m)[None, :, None], order[:, None, :]] * valid[:, None, :]
    eye = np.eye(fmax + 1)[None]
    inval = np.concatenate([~valid, np.zeros((n, 1), dtype=bool)], axis=1)

    def resid(zz, ll):
        h, g, po = _h_grad(Ad, d0, zz)
        gF = np.take_along_axis(g, order, axis=1) * valid
        R = np.concatenate([(sg + ll[:, None] * gF) * valid, (h - c_eff)[:, None]], axis=1)
        return R, gF, po

    R, gF, po = resid(z, lam)
    live = np.ones(n, dtype=bool)
    for _ in range(40):
        rn = np.abs(R).max(axis=1)
        live &= rn > 1e-14
        if not np.any(live):
            break
        H = po[:, :, None] * np.eye(m)[None] - po[:, :, None] * po[:, None, :]
        HF = np.einsum("njf,njk,nkg->nfg", AdF, H, AdF)
        J = np.zeros((n, fmax + 1, fmax + 1))
        J[:, :fmax, :fmax] = lam[:, None, None] * HF
        J[:, :fmax, fmax] = gF
        J[:, fmax, :fmax] = gF
        J = np.where(inval[:, :, None] | inval[:, None, :], 0.0, J) + eye * inval[:, :, None]
        try:
            step = np.linalg.solve(J + 1e-14 * eye, -R[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            break
        step = np.where(np.isfinite(step), step, 0.0)
        alpha = np.ones(n)
        acc = np.zeros(n, dtype=bool)
        znew, lnew = z.copy(), lam.copy()
        for _ in range(25):
            zF = np.take_along_axis(z, order, axis=1) + alpha[:, None] * step[:, :fmax]
            zt = z.copy()
            np.put_along_axis(zt, order, np.where(valid, zF, np.take_along_axis(z, order, axis=1)), axis=1)
            lt = lam + alpha * step[:, fmax]
            Rt, _, _ = resid(zt, lt)
            okr = live & ~acc & (np.abs(Rt).max(axis=1) < rn)
            znew[okr], lnew[okr] = zt[okr], lt[okr]
            acc |= okr
            if np.all(acc | ~live):
                break
            alpha = np.where(acc, alpha, alpha * 0.5)
        live &= acc
        if not np.any(acc):
            break
        z, lam = znew, lnew
        R, gF, po = resid(z, lam)
    return z, lam


def _l1_kkt(Ad, d0, c_eff, lo, hi, z, lam):
    """Per-row KKT violation of an L1 point with multiplier ``lam`` (see ``_polish_l1``) and,
    per feature, the signed violation used to grow / shrink the support."""
    h, g, _ = _h_grad(Ad, d0, z)
    lg = lam[:, None] * g
    tol = 1e-12 * (1.0 + np.abs(z))
    at_hi = np.abs(z - hi) <= tol
    at_lo = np.abs(z - lo) <= tol
    zero = np.abs(z) <= tol
    # allowed interval for lam * g_i
    lo_i = np.where(zero, -1.0, np.where(z > 0, -1.0, 1.0))
    hi_i = np.where(zero, 1.0, np.where(z > 0, -1.0, 1.0))
    lo_i = np.where(at_hi & ~at_lo, -np.inf, lo_i)
    hi_i = np.where(at_lo & ~at_hi, np.inf, hi_i)
    both = at_lo & at_hi
    lo_i = np.where(both, -np.inf, lo_i)
    hi_i = np.where(both, np.inf, hi_i)
    viol = np.maximum(lo_i - lg, 0.0) + np.maximum(lg - hi_i, 0.0)
    res = np.maximum(viol.max(axis=1), np.abs(h - c_eff) / np.maximum(1.0, np.abs(c_eff)))
    return res, lg, zero, at_lo | at_hi


def _linf_kkt(Ad, d0, c_eff, lo, hi, z):
    """Per-row KKT violation of a Linf point (multiplier chosen optimally; see module doc)."""
    h, g, _ = _h_grad(Ad, d0, z)
    t = np.abs(z).max(axis=1, keepdims=True)
    top = np.abs(z) >= t * (1 - 1e-12)
    tol = 1e-12 * (1.0 + np.abs(z))
    at_hi = np.isfinite(hi) & (np.abs(z - hi) <= tol)
    at_lo = np.isfinite(lo) & (np.abs(z - lo) <= tol)
    bnd = at_hi | at_lo
    sig = np.sign(z)
    # the weight -lam g_i must be 0 off the top, sign(z_i)-signed on it; a bound absorbs the
    # part of -lam g_i that pushes outwards
    s_min = np.where(top & ~bnd, np.abs(g), 0.0).sum(axis=1)
    flex = top & bnd & (-sig * g >= 0)
    s_max = s_min + np.where(flex, np.abs(g), 0.0).sum(axis=1)
    with np.errstate(divide="ignore"):
        lam = np.where(s_min > 0, 1.0 / s_min, np.where(s_max > 0, 1.0 / s_max, 0.0))
    lg = lam[:, None] * g
    v_top = np.where(top & ~bnd, np.maximum(sig * lg, 0.0), 0.0)
    v_free = np.where(~top & ~bnd, np.abs(lg), 0.0)
    v_hi = np.where(~top & at_hi & ~at_lo, np.maximum(lg, 0.0), 0.0)
    v_lo = np.where(~top & at_lo & ~at_hi, np.maximum(-lg, 0.0), 0.0)
    v_tb = np.where(top & bnd & ~flex & ~(at_hi & at_lo), np.abs(lg), 0.0)
    viol = np.maximum.reduce([v_top, v_free, v_hi, v_lo, v_tb]).max(axis=1)
    return np.maximum(viol, np.abs(h - c_eff) / np.maximum(1.0, np.abs(c_eff)))


def _l1_kkt_only(Ad, d0, c_eff, lo, hi, z):
    """L1 KKT violation with the multiplier fitted on the moving features."""
    _, g, _ = _h_grad(Ad, d0, z)
    tol = 1e-12 * (1.0 + np.abs(z))
    mov = (np.abs(z) > tol) & ~(np.isfinite(lo) & (np.abs(z - lo) <= tol)) & ~(
        np.isfinite(hi) & (np.abs(z - hi) <= tol))
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = -np.where(mov, np.sign(z) * g, 0.0).sum(1) / np.where(mov, g * g, 0.0).sum(1)
    if np.any(~np.isfinite(lam)):
        # nothing moves freely: every change sits at a bound; the smallest multiplier that
        # satisfies the bound conditions is the tightest check
        lam = np.where(np.isfinite(lam), lam, 1.0 / np.maximum(np.abs(g).max(axis=1), 1e-300))
    return _l1_kkt(Ad, d0, c_eff, lo, hi, z, np.maximum(lam, 0.0))[0]


def _polish_l1(Ad, d0, c_eff, lz, uz, z0, ub=None):
    """L1 optimum by an active-set method on its KKT conditions: for the moving features F,
    ``sign(z_i) + lam g_i(z) = 0`` with ``g = grad h``, and ``h(z) = c`` (Newton); a zero
    feature with ``|lam g_i| > 1`` joins F, a moving feature that reaches zero or a bound
    leaves it. When F cannot reach the constraint (Newton does not converge, or only beyond
    ``ub``, the best norm known), the feature with the steepest gradient joins F instead."""
    n, m, p = Ad.shape
    lo = np.full((n, p), -np.inf) if lz is None else lz
    hi = np.full((n, p), np.inf) if uz is None else uz
    ub = np.full(n, np.inf) if ub is None else ub
    scale = np.maximum(np.abs(z0).max(axis=1, keepdims=True), 1e-300)
    with np.errstate(invalid="ignore"):
        at_bound = ((np.isfinite(lo) & (np.abs(z0 - lo) <= 1e-9 * (1 + np.abs(lo))))
                    | (np.isfinite(hi) & (np.abs(z0 - hi) <= 1e-9 * (1 + np.abs(hi)))))
    z = np.where(np.abs(z0) > 1e-9 * scale, z0, 0.0)
    z = np.where(at_bound, z0, z)
    F = (z != 0) & ~at_bound
    sig = np.sign(z)
    _, g, _ = _h_grad(Ad, d0, z)
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = -np.where(F, sig * g, 0.0).sum(1) / np.where(F, g * g, 0.0).sum(1)
        lam = np.where(np.isfinite(lam) & (lam > 0), lam, 1.0 / np.abs(g).max(axis=1))
    live = np.ones(n, dtype=bool)
    for _ in range(2 * p + 4):
        z_prev, lam_prev = z.copy(), lam.copy()
        z, lam = _newton_l1(Ad, d0, c_eff, z, F & live[:, None], sig, lam)
        z = np.clip(z, lo, hi)
        h, g, _ = _h_grad(Ad, d0, z)
        eq = np.maximum(np.where(F, np.abs(sig + lam[:, None] * g), 0.0).max(axis=1),
                        np.abs(h - c_eff) / np.maximum(1.0, np.abs(c_eff)))
        stuck = live & ((eq > 1e-10) | (np.abs(z).sum(axis=1) > ub * (1 + 1e-9))
                        | ~np.all(np.isfinite(z), axis=1) | (lam <= 0))
        z[stuck], lam[stuck] = z_prev[stuck], lam_prev[stuck]
        res, lg, zero, bnd = _l1_kkt(Ad, d0, c_eff, lo, hi, z, lam)
        live &= ~((res <= 1e-12) & ~stuck)
        if not np.any(live):
            break
        # shrink: moving features that crossed zero or sit at a bound leave F
        crossed = live[:, None] & ~stuck[:, None] & F & (np.sign(z) != sig)
        z = np.where(crossed, 0.0, z)
        F = F & ~crossed & ~(bnd & live[:, None] & ~stuck[:, None])
        # grow: the most violated zero / bound feature joins F with the sign it wants; a stuck
        # row takes the steepest feature outside F
        _, g, _ = _h_grad(Ad, d0, z)
        cand = ~F & (zero | bnd)
        cand &= ~(bnd & ~zero & (np.sign(-g) == np.sign(z)))   # pushing further out of a bound
        viol = np.where(cand & (np.abs(lg) > 1.0 + 1e-12), np.abs(lg), 0.0)
        steep = np.where(cand, np.abs(g), 0.0)
        score = np.where(stuck[:, None], steep, viol) * live[:, None]
        j = np.argmax(score, axis=1)
        add = score[np.arange(n), j] > 0
        rr = np.flatnonzero(add)
        F[rr, j[add]] = True
        sig[rr, j[add]] = -np.sign(g[rr, j[add]])
        sig = np.where(F & (z != 0), np.sign(z), sig)
        live &= add | crossed.any(axis=1)
        if not np.any(live):
            break
    return np.clip(z, lo, hi)


def cutting_plane(norm, Ad, d0, c_eff, tau, lz, uz, z_feas, sd, *, max_rounds=12, gap_tol=1e-10):
    """``min ||z||_norm`` (l1 / linf) s.t. ``log(1 + sum_j exp(d_j)) <= c_eff`` (and
    ``d <= -tau`` if ``tau`` is not None) and the box; ``z_feas`` is a feasible point per row.

    Each round solves the LP with the tangent plane of the constraint at the best feasible point
    (a relaxation: its value is a lower bound), polishes the LP's pattern into a boundary point
    (Newton on the KKT equations of that pattern, or the 1-D sign-pattern search for Linf), and
    keeps the best feasible point. At the optimum the tangent LP has the same optimum (same KKT
    conditions), so the certificate is the gap between the best point's norm and the tangent
    LP's value at it.

    Returns ``z`` (best feasible point), ``gap`` (relative, the certificate), ``rounds``.
    """
    n, m, p = Ad.shape
    best = z_feas.copy()
    ub = _norm(best, norm)
    gap = np.full(n, np.inf)
    rounds = np.zeros(n, dtype=np.int64)
    active = np.ones(n, dtype=bool)
    extra = []
    for rnd in range(1, max_rounds + 1):
        idx = np.flatnonzero(active)
        if len(idx) == 0:
            break
        C, e = _tangent(Ad[idx], d0[idx], c_eff[idx], best[idx])
        cuts_C, cuts_e = [C], [e]
        for ck, ek in extra:   # every Kelley cut so far: the relaxation only tightens
            cuts_C.append(ck[idx])
            cuts_e.append(ek[idx])
        zl, ok, lpk = solve_lp(norm, Ad[idx], d0[idx], None if tau is None else tau[idx],
                               None if lz is None else lz[idx], None if uz is None else uz[idx],
                               cuts=(np.stack(cuts_C, 1), np.stack(cuts_e, 1)), sd=sd[idx])
        rounds[idx] = rnd
        # every cut is a tangent plane (an outer approximation), so the LP value is a lower
        # bound on the optimum and (ub - lb) / ub certifies the current best point
        lb = np.where(ok, _norm(np.nan_to_num(zl), norm), 0.0)
        g_now = np.maximum(np.maximum(ub[idx] - lb, 0.0) / np.maximum(ub[idx], 1e-300),
                           np.nan_to_num(lpk, nan=1.0))
        gap[idx] = np.where(ok, np.minimum(gap[idx], g_now), gap[idx])
        done = gap[idx] <= gap_tol
        active[idx[done | ~ok]] = False
        go = ok & ~done
        if not np.any(go):
            break
        gi = idx[go]
        zstart = zl[go]
        sub = (Ad[gi], d0[gi], c_eff[gi], None if lz is None else lz[gi], None if uz is None else uz[gi])
        zp = _polish_linf(*sub, zstart) if norm == "linf" else _polish_l1(*sub, zstart, ub[gi])
        feas = _feasible(Ad[gi], d0[gi], c_eff[gi], None if tau is None else tau[gi], zp)
        nz = _norm(zp, norm)
        better = feas & (nz < ub[gi])
        best[gi[better]] = zp[better]
        ub[gi[better]] = nz[better]
        if tau is None:
            # the KKT conditions of the polished point certify it directly (convex problem)
            lo_ = np.full((len(gi), p), -np.inf) if lz is None else lz[gi]
            hi_ = np.full((len(gi), p), np.inf) if uz is None else uz[gi]
            if norm == "linf":
                kk = _linf_kkt(Ad[gi], d0[gi], c_eff[gi], lo_, hi_, zp)
            else:
                kk = _l1_kkt_only(Ad[gi], d0[gi], c_eff[gi], lo_, hi_, zp)
            cert = feas & (kk <= gap_tol) & (nz <= ub[gi] * (1 + 1e-12))
            best[gi[cert]] = zp[cert]
            ub[gi[cert]] = nz[cert]
            gap[gi[cert]] = kk[cert]
            active[gi[cert]] = False
        # keep a Kelley cut at the LP point for the next round (sharpens the relaxation)
        Ck, ek = _tangent(Ad, d0, c_eff, best)
        Ck[gi], ek[gi] = _tangent(Ad[gi], d0[gi], c_eff[gi], zstart)
        extra.append((Ck, ek))
    return best, gap, rounds
