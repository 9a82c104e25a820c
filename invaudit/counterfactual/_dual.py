"""Exact L2 counterfactuals for multiclass linear models, through a (K-1)-dimensional dual.

Coordinates: ``z = w * (x_cf - x)`` (so the distance is ``||z||_2``) over the features that are
free to move; ``A`` (K x p) holds the class score directions in these units (the model's ``W``
divided by ``w``), ``s0`` the scores at ``x``. For a target class ``t`` let
``d_j = s_j - s_t`` (j != t) be the score differences at the counterfactual,
``d = d0 + A_d z`` with ``A_d = A[others] - A[t]``. The target region is the convex,
downward-closed set ``C`` of difference vectors:

- argmax ("caps"):     ``d_j <= -tau`` for all j (t is predicted, with a hair of margin ``tau``);
- confidence ("exp"):  ``sum_j exp(d_j) <= E`` with ``E = (1 - P) / P``, i.e. ``p_t >= P``
  under the softmax (equivalently ``log p_t >= log P``, a convex constraint);
- both (for ``1/K < P <= 1/2``, where ``p_t >= P`` does not imply the argmax).

The primal is ``min 1/2 ||z||^2  s.t.  lz <= z <= uz,  d0 + A_d z in C``. Its Fenchel dual is a
concave problem in the K-1 multipliers ``nu >= 0``::

    D(nu) = Phi(A_d^T nu) + nu . d0 - sigma_C(nu),
    Phi(v) = min_{lz <= z <= uz} 1/2 ||z||^2 + v . z,  attained at z(nu) = clip(-A_d^T nu, lz, uz),

with ``sigma_C`` the support function of ``C`` (``-tau sum nu`` for the caps,
``sum_j nu_j log(nu_j E / S)`` for the softmax set, ``S = sum nu``; a water-filling of both for
the intersection). Without a box ``Phi(A_d^T nu) = -1/2 nu^T G_d nu`` with the Gram matrix
``G_d = A_d A_d^T`` built once per model from ``M = A A^T``: this is the paper's observation
that the optimum moves ``x`` only within the span of the weight-row differences, so all the
work happens in at most K-1 dimensions (Carreira-Perpinan & Hada, "Inverse classification with
logistic and softmax classifiers: efficient optimization", TMLR 2026, sec. 4). With a box,
``Phi`` is piecewise quadratic (the clip) and its generalised Hessian uses the Gram matrix of
the features strictly inside their bounds.

``D`` is maximised by a (semismooth) Newton method with an Armijo line search: projected onto
``nu >= 0`` for the caps (an active-set method on the nonnegative dual QP, exact once the active
set is identified), multiplicative (``nu <- nu exp(step / nu)``) where the softmax set keeps all
multipliers positive. Termination is by certificate: the relative KKT residual of the *primal*
point ``z(nu)`` (stationarity with multipliers recovered from ``z``, feasibility,
complementarity), not a fixed iteration count. Weak duality gives infeasibility certificates:
``D(nu)`` above the largest possible primal objective (``1/2 sum max(lz^2, uz^2)``) proves that no
point in the box reaches the target.

The multipliers are a poor coordinate system when features are scaled very differently: with
weights from 1e-2 to 1 they grow to ~1e5 and cancel to a move of ~1e3, so their rounding can
leave the Newton iteration stalled far from a certificate (seen: p(target) = 3e-44 at the last
iterate, the optimum at distance 1632). For the confidence constraint :func:`primal_exp_l2`
solves the same problem in the primal (one multiplier, Newton on ``log lam``, each Lagrangian
point a strongly convex Newton solve in ``z`` itself); its ``nu = lam * p_others`` feeds the
same weak-duality bound, so an answer from either route is certified the same way.
"""

from __future__ import annotations

import contextlib

import numpy as np

__all__ = ["dual_l2", "difference_gram", "others_of", "difference_basis", "primal_exp_l2",
           "primal_caps_l2"]

_TOL_STOP = 1e-14
_SD_CAP = 1e13
_MAX_ITER = 200
_HUGE = 1e30


def others_of(t: np.ndarray, K: int) -> np.ndarray:
    """``(n, K-1)`` indices of the classes other than ``t`` for each row, in increasing order."""
    j = np.arange(K - 1)[None, :]
    return j + (j >= t[:, None])


def difference_gram(M: np.ndarray, t: np.ndarray, others: np.ndarray) -> np.ndarray:
    """``G_d[i] = D_t M D_t^T`` for each row: entries ``M[j,k] - M[j,t] - M[t,k] + M[t,t]``.

    ``M`` is ``(K, K)`` (one Gram for all rows) or ``(n, K, K)``.
    """
    n = len(t)
    r = np.arange(n)
    if M.ndim == 2:
        Moo = M[others[:, :, None], others[:, None, :]]
        Mot = M[others, t[:, None]]
        Mto = M[t[:, None], others]
        Mtt = M[t, t]
    else:
        Moo = M[r[:, None, None], others[:, :, None], others[:, None, :]]
        Mot = M[r[:, None], others, t[:, None]]
        Mto = M[r[:, None], t[:, None], others]
        Mtt = M[r, t, t]
    return Moo - Mot[:, :, None] - Mto[:, None, :] + Mtt[:, None, None]


def _support(nu, cap, E, mode):
    """Support function of the target set at ``nu``: value, maximiser ``y`` and Hessian parts.

    Returns ``sigma (n,)``, ``y (n,m)``, ``hdiag (n,m)`` (diagonal of the Hessian on the
    uncapped coordinates), ``unc (n,m)`` bool, ``S_unc (n,)``; the Hessian of sigma is
    ``diag(hdiag) - unc unc^T / S_unc``.
    """
    n, m = nu.shape
    S = nu.sum(axis=1)
    if mode == "caps":
        y = np.broadcast_to(-cap[:, None], (n, m))
        return -cap * S, y, np.zeros((n, m)), np.zeros((n, m), dtype=bool), np.zeros(n)
    if mode == "exp":
        with np.errstate(divide="ignore"):
            y = np.log(nu) - np.log(S)[:, None] + np.log(E)[:, None]
        sigma = np.einsum("ij,ij->i", nu, y)
        return sigma, y, 1.0 / nu, np.ones((n, m), dtype=bool), S
    # both: water-filling. Capped coordinates sit at -cap; the others at log(nu_j / kappa)
    # with kappa chosen so that the exponential budget E is used up exactly.
    c0 = np.exp(-cap)
    order = np.argsort(-nu, axis=1, kind="stable")
    nus = np.take_along_axis(nu, order, axis=1)
    cums = np.cumsum(nus, axis=1)
    total = cums[:, -1]
    k = np.arange(m)[None, :]
    S_unc_k = total[:, None] - np.concatenate([np.zeros((n, 1)), cums[:, :-1]], axis=1)
    Erem = E[:, None] - k * c0[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = S_unc_k / Erem
        cond = (Erem > 0) & (nus <= c0[:, None] * kappa)
    kstar = np.where(cond.any(axis=1), np.argmax(cond, axis=1), 0)
    r = np.arange(n)
    kap = kappa[r, kstar]
    unc_sorted = k >= kstar[:, None]
    unc = np.empty_like(unc_sorted)
    np.put_along_axis(unc, order, unc_sorted, axis=1)
    with np.errstate(divide="ignore"):
        ylog = np.log(nu) - np.log(kap)[:, None]
    y = np.where(unc, ylog, -cap[:, None])
    sigma = np.einsum("ij,ij->i", np.where(unc, nu, 0.0), np.where(unc, ylog, 0.0)) - cap * np.where(
        unc, 0.0, nu).sum(axis=1)
    hdiag = np.where(unc, 1.0 / nu, 0.0)
    return sigma, y, hdiag, unc, S_unc_k[r, kstar]


def _lse0(d):
    """``log(1 + sum_j exp(d_j))`` per row, stably."""
    mx = np.maximum(d.max(axis=1), 0.0)
    return mx + np.log(np.exp(-mx) + np.exp(d - mx[:, None]).sum(axis=1))


class _Problem:
    """One homogeneous batch of rows (same mode), with or without a box."""

    def __init__(self, A, Gd, d0, t, others, cap, E, mode, lz, uz, sd):
        self.A, self.Gd, self.d0, self.t, self.others = A, Gd, d0, t, others
        self.cap, self.E, self.mode, self.lz, self.uz, self.sd = cap, E, mode, lz, uz, sd
        self.box = lz is not None
        n, m = d0.shape
        self.n, self.m = n, m
        if self.box:
            with np.errstate(invalid="ignore"):
                ub = 0.5 * np.maximum(lz * lz, uz * uz).sum(axis=1)
            self.ub = np.where(np.isfinite(ub), ub, _HUGE)
        else:
            self.ub = np.full(n, _HUGE)

    def subset(self, idx):
        sl = (lambda a: None if a is None else a[idx])
        p = _Problem(self.A, self.Gd[idx], self.d0[idx], self.t[idx], self.others[idx],
                     sl(self.cap), sl(self.E), self.mode, sl(self.lz), sl(self.uz), self.sd[idx])
        return p

    def full_nu(self, nu):
        n = nu.shape[0]
        nf = np.zeros((n, self.A.shape[0]))
        np.put_along_axis(nf, self.others, nu, axis=1)
        nf[np.arange(n), self.t] = -nu.sum(axis=1)
        return nf

    def primal(self, nu):
        """``z(nu)`` (None without a box), score differences ``d`` and ``Phi``."""
        if not self.box:
            q = np.einsum("nij,nj->ni", self.Gd, nu)
            return None, self.d0 - q, -0.5 * np.einsum("ni,ni->n", nu, q)
        v = self.full_nu(nu) @ self.A
        z = np.clip(-v, self.lz, self.uz)
        phi = np.einsum("ni,ni->n", z, 0.5 * z + v)
        sz = z @ self.A.T
        r = np.arange(len(nu))
        d = self.d0 + np.take_along_axis(sz, self.others, axis=1) - sz[r, self.t][:, None]
        return z, d, phi

    def evaluate(self, nu):
        z, d, phi = self.primal(nu)
        sigma, y, hdiag, unc, S_unc = _support(nu, self.cap, self.E, self.mode)
        D = phi + np.einsum("ni,ni->n", nu, self.d0) - sigma
        return {"nu": nu, "z": z, "d": d, "D": D, "g": d - y, "hdiag": hdiag, "unc": unc,
                "S_unc": S_unc}

    def gram_free(self, nu):
        if not self.box:
            return self.Gd
        v = self.full_nu(nu) @ self.A
        free = ((-v > self.lz) & (-v < self.uz)).astype(np.float64)
        Gf = np.einsum("kp,np,lp->nkl", self.A, free, self.A, optimize=True)
        return difference_gram(Gf, self.t, self.others)

    def kkt(self, st):
        """Relative KKT residual of the primal point z(nu) (see module docstring)."""
        nu, d = st["nu"], st["d"]
        S = nu.sum(axis=1)
        Ssafe = np.where(S > 0, S, 1.0)
        res = np.zeros(len(nu))
        if self.mode in ("caps", "both"):
            slack = d + self.cap[:, None]
            res = np.maximum(res, np.maximum(slack, 0.0).max(axis=1) / self.sd)
        if self.mode == "caps":
            comp = (nu / Ssafe[:, None]) * np.abs(slack) / self.sd[:, None]
            return np.maximum(res, comp.max(axis=1))
        h = _lse0(d)
        c = np.log1p(self.E)
        cs = np.maximum(1.0, np.abs(c))
        po = np.exp(d - h[:, None])
        if self.mode == "exp":
            lam = S / np.maximum(po.sum(axis=1), 1e-300)
            nuhat = lam[:, None] * po
            res = np.maximum(res, np.abs(h - c) / cs)
        else:
            unc = st["unc"]
            pu = np.where(unc, po, 0.0).sum(axis=1)
            lam = np.where(pu > 0, st["S_unc"] / np.maximum(pu, 1e-300), 0.0)
            nuhat = np.where(unc, lam[:, None] * po, nu)
            mu = nu - lam[:, None] * po
            res = np.maximum(res, np.where(unc, 0.0, np.maximum(-mu, 0.0)).max(axis=1) / Ssafe)
            res = np.maximum(res, np.maximum(h - c, 0.0) / cs)
            res = np.maximum(res, (st["S_unc"] / Ssafe) * np.abs(h - c) / cs)
            comp = np.where(unc, 0.0, nu / Ssafe[:, None] * np.abs(slack) / self.sd[:, None])
            res = np.maximum(res, comp.max(axis=1))
        dn = nu - nuhat
        # ||clip(-A_d^T nu) - clip(-A_d^T nuhat)|| <= ||A_d^T (nu - nuhat)|| (clip is 1-Lipschitz)
        num = np.sqrt(np.maximum(np.einsum("ni,nij,nj->n", dn, self.Gd, dn), 0.0))
        if st["z"] is None:
            zn = np.sqrt(np.maximum(np.einsum("ni,nij,nj->n", nu, self.Gd, nu), 0.0))
        else:
            zn = np.linalg.norm(st["z"], axis=1)
        return np.maximum(res, num / np.maximum(zn, 1e-300))


def _newton_direction(prob, st, nu):
    Hn = prob.gram_free(nu).copy()
    n, m = nu.shape
    if prob.mode != "caps":
        u = st["unc"].astype(np.float64)
        Su = np.where(st["S_unc"] > 0, st["S_unc"], 1.0)
        Hn += st["hdiag"][:, :, None] * np.eye(m)[None] - (u[:, :, None] * u[:, None, :]) / Su[:, None, None]
    g = st["g"].copy()
    fixed = np.zeros((n, m), dtype=bool)
    if prob.mode == "caps":
        # Bertsekas' projected Newton: an epsilon-active set of multipliers that sit (nearly)
        # at zero and want to decrease; they take a diagonally scaled gradient step.
        w = np.linalg.norm(nu - np.maximum(nu + g, 0.0), axis=1)
        eps = np.minimum(1e-3 * (1.0 + nu.max(axis=1)), w)
        fixed = (nu <= eps[:, None]) & (g < 0)
        keep = ~fixed
        diag_full = np.einsum("nii->ni", Hn).copy()
        Hn = Hn * (keep[:, :, None] & keep[:, None, :])
        Hn[fixed[:, :, None] & np.eye(m, dtype=bool)[None]] = 1.0
    g_red = np.where(fixed, 0.0, g)
    dg = np.einsum("nii->ni", Hn).copy()
    dmax = np.maximum(dg.max(axis=1, keepdims=True), 1e-300)
    dg = np.maximum(dg, 1e-14 * dmax)
    s = 1.0 / np.sqrt(dg)
    Hs = Hn * s[:, :, None] * s[:, None, :]
    Hs += 1e-12 * np.eye(m)[None]
    try:
        u = np.linalg.solve(Hs, (s * g_red)[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:
        u = np.stack([np.linalg.lstsq(Hs[i], s[i] * g_red[i], rcond=None)[0] for i in range(n)])
    step = s * u
    if np.any(fixed):
        dfix = np.maximum(diag_full, 1e-14 * np.maximum(diag_full.max(axis=1, keepdims=True), 1e-300))
        step = np.where(fixed, g / dfix, step)
    bad = ~np.all(np.isfinite(step), axis=1)
    if np.any(bad):  # fall back to a scaled gradient step
        step[bad] = (s * s * g)[bad]
    return step


def _trial(prob, nu, step, alpha):
    if prob.mode == "caps":
        return np.maximum(nu + alpha[:, None] * step, 0.0)
    # Increases are additive (as Newton asks); decreases are multiplicative, which follows the
    # Newton step to first order but never reaches zero (the softmax set keeps nu > 0).
    a = alpha[:, None] * step
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        shrink = nu * np.exp(np.maximum(a / nu, -700.0))
    return np.where(a >= 0, nu + a, np.maximum(shrink, 1e-300))


def dual_l2(A, M, s0, t, *, mode, cap=None, E=None, lz=None, uz=None, nu0=None,
            max_iter=_MAX_ITER):
    """Solve the L2 counterfactual problem for a batch of rows sharing one mode.

    Parameters
    ----------
    A : (K, p) class score directions in ``z`` units; M : (K, K) ``A A^T`` (precomputed).
    s0 : (n, K) scores at the rows; t : (n,) target indices.
    mode : "caps", "exp" or "both".
    cap : (n,) the argmax margin ``tau`` (modes caps/both); E : (n,) the budget (exp/both).
    lz, uz : (n, p) box in ``z`` units containing 0, or None.
    nu0 : (n, K-1) warm start or None.

    Returns
    -------
    dict with ``z`` (n, p), ``nu``, ``state`` ("ok" / "infeasible" / "stalled"), ``kkt``,
    ``iterations``.
    """
    n, K = s0.shape
    m = K - 1
    t = np.asarray(t, dtype=np.intp)
    others = others_of(t, K)
    r = np.arange(n)
    d0 = np.take_along_axis(s0, others, axis=1) - s0[r, t][:, None]
    Gd = difference_gram(M, t, others)
    sd = 1.0 + np.abs(d0).max(axis=1)
    if cap is not None:
        # the residual of a class constraint is measured against sd: keep sd small enough that
        # a certified point violates its cap by at most a fraction of the cap itself (a row
        # near a boundary aims only a hair inside it, and that hair must survive)
        sd = np.minimum(sd, np.maximum(_SD_CAP * cap, 1e-300))
    prob = _Problem(A, Gd, d0, t, others, cap, E, mode, lz, uz, sd)

    if nu0 is not None:
        nu = np.array(nu0, dtype=np.float64)
        if mode != "caps":
            nu = np.maximum(nu, 1e-30 * np.maximum(nu.max(axis=1, keepdims=True), 1e-300))
    elif mode == "caps":
        nu = np.zeros((n, m))
    else:
        h0 = _lse0(d0)
        po = np.exp(d0 - h0[:, None])
        c = np.log1p(E)
        curv = np.einsum("ni,nij,nj->n", po, Gd, po)
        with np.errstate(divide="ignore", invalid="ignore"):
            lam0 = np.maximum(h0 - c, 0.0) / curv
        lam0 = np.where(np.isfinite(lam0) & (lam0 > 0), lam0, 1e-8)
        nu = lam0[:, None] * po
        nu = np.maximum(nu, 1e-30 * np.maximum(nu.max(axis=1, keepdims=True), 1e-300))

    st = prob.evaluate(nu)
    kkt = prob.kkt(st)
    state = np.full(n, "stalled", dtype=object)
    iters = np.zeros(n, dtype=np.int64)
    nu_out = nu.copy()
    z_out = None if st["z"] is None else st["z"].copy()
    kkt_out = kkt.copy()
    active = np.ones(n, dtype=bool)
    done_ok = kkt <= _TOL_STOP
    state[done_ok] = "ok"
    active &= ~done_ok

    best_kkt = kkt.copy()
    flat = np.zeros(n, dtype=np.int64)
    cur = {k: v for k, v in st.items()}
    sub = prob
    idx = np.arange(n)
    for it in range(1, max_iter + 1):
        if not np.any(active):
            break
        if not np.all(active[idx]):
            keep = active[idx]
            idx = idx[keep]
            sub = sub.subset(keep)
            cur = {k: (None if v is None else v[keep]) for k, v in cur.items()}
        nu = cur["nu"]
        step = _newton_direction(sub, cur, nu)
        alpha = np.ones(len(idx))
        accepted = np.zeros(len(idx), dtype=bool)
        new = None
        pending = np.ones(len(idx), dtype=bool)
        Dold = cur["D"]
        first_ratio = np.zeros(len(idx))
        for attempt in range(60):
            trial = _trial(sub, nu, step, alpha)
            st_t = sub.subset(pending).evaluate(trial[pending])
            gain = st_t["D"] - Dold[pending]
            pred = np.einsum("ni,ni->n", cur["g"][pending], trial[pending] - nu[pending])
            ok = np.isfinite(st_t["D"]) & (gain >= 1e-4 * pred - 1e-15 * (1.0 + np.abs(Dold[pending])))
            if attempt == 0 and not np.all(ok):
                # near the optimum the gain is lost in the rounding of D itself: a full Newton
                # step whose certificate improves clearly (and that loses nothing beyond
                # rounding) is accepted on the certificate's word
                sub_p = sub.subset(pending)
                flat_gain = gain >= -1e-13 * (1.0 + np.abs(Dold[pending]))
                cand = ~ok & np.isfinite(st_t["D"]) & flat_gain
                if np.any(cand):
                    kk_t = sub_p.kkt(st_t)
                    ok |= cand & (kk_t < 0.5 * kkt_out[idx][pending])
            pidx = np.flatnonzero(pending)
            if new is None:
                new = {k: (None if v is None else v.copy()) for k, v in cur.items()}
            acc = pidx[ok]
            if attempt == 0:
                with np.errstate(divide="ignore", invalid="ignore"):
                    first_ratio[pidx] = np.where(pred > 0, gain / pred, 0.0)
            for k, v in st_t.items():
                if v is not None:
                    new[k][acc] = v[ok]
            accepted[acc] = True
            pending[acc] = False
            alpha[pending] *= 0.5
            if not np.any(pending):
                break
        # A full step whose gain matches its linear prediction means the dual has no curvature
        # along it (a ray of an unbounded dual, i.e. an infeasible primal, or a long flat
        # stretch): extrapolate by doubling while the gain keeps up.
        expand = accepted & (alpha == 1.0) & (first_ratio >= 0.9)
        grow = 2.0
        while np.any(expand) and grow < 1e30:
            eidx = np.flatnonzero(expand)
            trial = _trial(sub.subset(expand), nu[eidx], step[eidx], np.full(len(eidx), grow))
            st_t = sub.subset(expand).evaluate(trial)
            pred = np.einsum("ni,ni->n", cur["g"][eidx], trial - nu[eidx])
            gain = st_t["D"] - new["D"][eidx]
            ok = np.isfinite(st_t["D"]) & (gain > 0) & (st_t["D"] - Dold[eidx] >= 0.5 * pred)
            acc = eidx[ok]
            for k, v in st_t.items():
                if v is not None:
                    new[k][acc] = v[ok]
            expand[eidx[~ok]] = False
            grow *= 2.0
        iters[idx] = it
        cur = new
        kk = sub.kkt(cur)
        gidx = idx
        # no progress (the multipliers do not move, or the certificate has not improved for
        # a while): at the limit of floating point for this row, e.g. nearly parallel class
        # constraints whose huge multipliers cancel; stop instead of idling to max_iter
        moved = np.any(cur["nu"] != nu, axis=1)
        better = kk < 0.5 * best_kkt[gidx]
        best_kkt[gidx] = np.minimum(best_kkt[gidx], kk)
        flat[gidx] = np.where(better, 0, flat[gidx] + 1)
        nu_out[gidx] = cur["nu"]
        if z_out is not None:
            z_out[gidx] = cur["z"]
        kkt_out[gidx] = kk
        conv = kk <= _TOL_STOP
        infeas = cur["D"] > sub.ub
        stalled = ~accepted | ~moved | (flat[gidx] >= 25)
        state[gidx[conv]] = "ok"
        state[gidx[infeas & ~conv]] = "infeasible"
        stop = conv | infeas | stalled
        active[gidx[stop]] = False

    # Caps without a box, not certified (dependent active constraints make the dual QP
    # singular): solve the active set's equations by least squares (the minimum-norm
    # multipliers) and keep the result when its certificate is better. Rare: a row loop.
    if mode == "caps" and z_out is None:
        for i in np.flatnonzero((state != "ok") & (state != "infeasible")):
            sub1 = prob.subset(np.array([i]))
            nu_i = nu_out[i].copy()
            for _ in range(3):
                d_i = d0[i] - Gd[i] @ nu_i
                J = (nu_i > 1e-12 * max(nu_i.max(), 1e-300)) | (d_i + cap[i] > 0)
                if not np.any(J):
                    break
                sol = np.linalg.lstsq(Gd[i][np.ix_(J, J)], (d0[i] + cap[i])[J], rcond=1e-13)[0]
                cand = np.zeros_like(nu_i)
                cand[J] = np.maximum(sol, 0.0)
                k_new = sub1.kkt(sub1.evaluate(cand[None]))[0]
                if k_new < kkt_out[i]:
                    nu_out[i], kkt_out[i], nu_i = cand, k_new, cand
                if k_new <= 1e-9:
                    break

    # Rows still active hit the iteration cap: they keep their last (certified or not) point.
    if z_out is None:
        z_out = -(prob.full_nu(nu_out) @ A)
    ok_like = (state != "infeasible") & (kkt_out <= 1e-9)
    state[ok_like] = "ok"
    # the dual value at the returned multipliers: any nu >= 0 gives a lower bound on
    # 1/2 ||z||^2 (weak duality), which the caller turns into an exactness certificate
    dual = prob.evaluate(nu_out)["D"]
    return {"z": z_out, "nu": nu_out, "state": state, "kkt": kkt_out, "iterations": iters,
            "dual": dual}


def min_lse_affine(Gd, d0, c_stop, max_iter=300):
    """``inf log(1 + sum_j exp(d_j))`` over the reachable differences ``d0 + range(G_d)``.

    The smallest ``-log p_target`` any point can reach when nothing bounds the features (for
    degenerate geometry, e.g. fewer features than classes, a class may never become likely).
    Damped Newton in an orthonormal basis of the range; the infimum need not be attained (some
    classes may be pushed to probability 0), but the value converges because those terms decay
    exponentially. Stops early once a row is below ``c_stop`` (feasible).

    Returns ``(h_min, converged)``.
    """
    n, m = d0.shape
    ev, U = np.linalg.eigh(Gd)
    keep = ev > 1e-10 * np.maximum(ev[:, -1:], 1e-300)
    V = U * keep[:, None, :]
    c = np.zeros((n, m))
    done = np.zeros(n, dtype=bool)
    conv = np.zeros(n, dtype=bool)

    def f_grad(cc):
        d = d0 + np.einsum("nij,nj->ni", V, cc)
        h = _lse0(d)
        po = np.exp(d - h[:, None])
        return h, po, np.einsum("nij,ni->nj", V, po)

    h, po, g = f_grad(c)
    for _ in range(max_iter):
        act = ~done
        if not np.any(act):
            break
        Hs = po[:, :, None] * np.eye(m)[None] - po[:, :, None] * po[:, None, :]
        H = np.einsum("nij,nik,nkl->njl", V, Hs, V)
        H += (1e-12 * np.maximum(np.einsum("nii->n", H), 1e-300))[:, None, None] * np.eye(m)[None]
        H += (~keep)[:, :, None] * np.eye(m)[None]
        step = -np.linalg.solve(H, g[:, :, None])[:, :, 0]
        step = np.where(keep, step, 0.0)
        alpha = np.ones(n)
        acc = np.zeros(n, dtype=bool)
        slope = np.einsum("ni,ni->n", g, step)
        for _ls in range(40):
            hn, pn, gn = f_grad(c + alpha[:, None] * step)
            ok = act & ~acc & (hn <= h + 1e-4 * alpha * slope)
            c[ok] += alpha[ok, None] * step[ok]
            h[ok], po[ok], g[ok] = hn[ok], pn[ok], gn[ok]
            acc |= ok
            if np.all(acc | ~act):
                break
            alpha = np.where(acc, alpha, 0.5 * alpha)
        small = np.abs(slope) <= 1e-30 + 1e-15 * np.abs(h)
        conv |= act & (small | ~acc)
        done |= conv | (h < c_stop)
    return h, conv | (h < c_stop)


# --------------------------------------------------------------------------------------------
# the confidence constraint solved in the primal (badly scaled rows the dual cannot certify)
# --------------------------------------------------------------------------------------------

def difference_basis(A: np.ndarray) -> np.ndarray:
    """An orthonormal basis ``(p, r)`` of the span of the weight-row differences ``A_j - A_k``
    (the same span whichever class is the target); directions whose singular value is below
    1e-13 of the largest are rounding noise and are left out."""
    Dm = A[1:] - A[0]
    if Dm.size == 0:
        return np.zeros((A.shape[1], 0))
    _, s, Vt = np.linalg.svd(Dm, full_matrices=False)
    if s.size == 0 or not s[0] > 0:
        return np.zeros((A.shape[1], 0))
    return np.ascontiguousarray(Vt[s > 1e-13 * s[0]].T)


def _solve_batch(H, g):
    """``H^{-1} g`` per row; rows whose matrix is singular in floating point (or not finite)
    get NaN, which the callers treat as a failed step."""
    try:
        return np.linalg.solve(H, g[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:
        out = np.full(g.shape, np.nan)
        for i in range(len(g)):
            with contextlib.suppress(np.linalg.LinAlgError):
                out[i] = np.linalg.solve(H[i], g[i])
        return out


def _lagrangian_point(B, d0, lam, y, lo=None, hi=None, max_iter=60):
    """``argmin_y 1/2 ||y||^2 + lam h(d0 + B y)`` per row (``h`` = :func:`_lse0`), over the box
    ``lo <= y <= hi`` when given, by (projected) Newton's method with a backtracking line search
    from ``y``: strongly convex (Hessian >= I), so the iteration converges from any start; it
    stops when a step no longer shortens, i.e. at the rounding of the gradient. Coordinates at a
    bound whose gradient pushes outward are held (Bertsekas' projected Newton). Returns ``y``,
    its score differences, ``h``, the softmax weights ``po`` of the other classes, and the
    gradient ``g = B^T po`` and Newton matrix on the free coordinates (held ones zeroed / unit),
    for the caller's derivative ``dy/dlam = -H^{-1} g``."""
    n, m, r = B.shape
    eye = np.eye(r)[None]
    box = lo is not None
    if box:
        y = np.clip(y, lo, hi)
    active = np.ones(n, dtype=bool)
    last = np.full(n, np.inf)
    for _ in range(max_iter):
        d = d0 + np.einsum("nmr,nr->nm", B, y)
        h = _lse0(d)
        po = np.exp(d - h[:, None])
        g = np.einsum("nmr,nm->nr", B, po)
        grad = y + lam[:, None] * g
        Bp = B * po[:, :, None]
        H = eye + lam[:, None, None] * (np.einsum("nmr,nms->nrs", Bp, B)
                                        - g[:, :, None] * g[:, None, :])
        if box:
            # Bertsekas' epsilon-active set: coordinates within the projected gradient's length
            # of a bound that the gradient pushes against are held and take a scaled gradient
            # step (clipped to the bound); the others a Newton step
            wlen = np.linalg.norm(y - np.clip(y - grad, lo, hi), axis=1)[:, None]
            eps = np.minimum(wlen, 1e-3 * np.where(np.isfinite(lo) & np.isfinite(hi), hi - lo, np.inf))
            held = ((y <= lo + eps) & (grad > 0)) | ((y >= hi - eps) & (grad < 0))
            hdiag = np.einsum("nii->ni", H).copy()
            H = np.where(held[:, :, None] | held[:, None, :], 0.0, H) + held[:, :, None] * eye
            g = np.where(held, 0.0, g)
            grad_free = np.where(held, 0.0, grad)
        if not np.any(active):
            break
        ia = np.flatnonzero(active)
        if box:
            step = -_solve_batch(H[ia], grad_free[ia])
            step = np.where(held[ia], -grad[ia] / hdiag[ia], step)
        else:
            step = -_solve_batch(H[ia], grad[ia])
        if box:
            sn = np.linalg.norm(np.clip(y[ia] + step, lo[ia], hi[ia]) - y[ia], axis=1)
        else:
            sn = np.linalg.norm(step, axis=1)
        yn = np.linalg.norm(y[ia], axis=1)
        # converged: the step is at the rounding of y, or stopped shrinking (rounding floor)
        done = (sn <= 4e-16 * yn) | (sn >= 0.5 * last[ia]) & (sn <= 1e-12 * np.maximum(yn, 1e-300))
        last[ia] = sn
        f0 = 0.5 * np.einsum("nr,nr->n", y[ia], y[ia]) + lam[ia] * h[ia]
        # the rounding of f: of 1/2 ||y||^2, and of h (its inputs d) times lam
        f_err = 16.0 * np.finfo(np.float64).eps * (np.abs(f0) + lam[ia] * np.abs(d[ia]).max(axis=1))
        alpha = np.ones(len(ia))
        acc = done.copy()
        for _ls in range(40):
            pend = ~acc & (alpha * sn > 1e-17 * yn)
            if not np.any(pend):
                break
            yt = y[ia[pend]] + alpha[pend, None] * step[pend]
            if box:   # along the projection arc
                yt = np.clip(yt, lo[ia[pend]], hi[ia[pend]])
            ft = 0.5 * np.einsum("nr,nr->n", yt, yt) + lam[ia[pend]] * _lse0(
                d0[ia[pend]] + np.einsum("nmr,nr->nm", B[ia[pend]], yt))
            pred = np.einsum("nr,nr->n", grad[ia[pend]], yt - y[ia[pend]])
            # Armijo, or (a full step within the rounding of f) accepted on the step's word
            ok = (ft <= f0[pend] + 1e-4 * np.minimum(pred, 0.0)) & (pred < 0) | (
                (alpha[pend] == 1.0) & (ft <= f0[pend] + f_err[pend]))
            sel = np.flatnonzero(pend)[ok]
            y[ia[sel]] = yt[ok]
            acc[sel] = True
            alpha[~acc] *= 0.5
        done |= ~acc   # no step decreases f: at the rounding floor
        active[ia[done]] = False
    return y, d, h, po, g, H


def primal_exp_l2(A, V, d0, t, others, c, lam0=None, lz=None, uz=None, max_outer=100):
    """``min 1/2 ||z||^2  s.t.  log(1 + sum_j exp(d0_j + (A_d z)_j)) <= c`` without a box, in
    the primal: ``z = V y`` in the span of the weight differences (``V`` from
    :func:`difference_basis`), and the multiplier ``lam`` of the single constraint found by a
    safeguarded Newton iteration on ``log lam`` (``h(y(lam))`` decreases in ``lam``; its
    derivative is ``-g^T H^{-1} g`` by implicit differentiation), each ``y(lam)`` the minimiser
    of the strongly convex Lagrangian (:func:`_lagrangian_point`).

    The dual solver's variables are the K-1 multipliers, from which ``z = -A_d^T nu`` is
    recovered; where features are scaled very differently (weights from 1e-2 to 1, say) the
    multipliers grow to ~1e5 and cancel to a z of ~1e2, so their rounding leaves the dual
    stalled far from a certificate. The primal iterate carries ``z`` itself to the rounding of
    its own size. Rows must not qualify at ``z = 0`` (``h(d0) > c``).

    Returns a dict like :func:`dual_l2`'s: ``z`` (n, p), ``nu = lam * po`` (the multipliers the
    stationarity condition names, for the weak-duality bound), ``state`` ("ok"/"stalled"),
    ``kkt`` (relative stationarity and constraint residuals), ``iterations``, ``dual`` (the
    Fenchel dual value at ``nu``, a lower bound on ``1/2 ||z*||^2`` whatever ``nu >= 0`` is).

    With a box ``lz <= z <= uz`` (``V`` the identity: the optimum leaves the span) each
    Lagrangian point is a projected Newton solve, and the dual's ``Phi`` is evaluated at the
    clipped minimiser ``clip(-A_d^T nu, lz, uz)`` (module docstring).
    """
    n, m = d0.shape
    r = V.shape[1]
    p = A.shape[1]
    AV = A @ V
    B = AV[others] - AV[t][:, None, :]          # (n, m, r)
    cs = np.maximum(1.0, np.abs(c))
    y = np.zeros((n, r))
    h0 = _lse0(d0)
    if lam0 is None or not np.all(np.isfinite(lam0) & (lam0 > 0)):
        po0 = np.exp(d0 - h0[:, None])
        q = np.einsum("nmr,nm->nr", B, po0)
        curv = np.einsum("nr,nr->n", q, q)
        with np.errstate(divide="ignore", invalid="ignore"):
            est = np.maximum(h0 - c, 0.0) / curv
        lam0 = np.where(np.isfinite(est) & (est > 0), est, 1.0)
    s = np.log(np.asarray(lam0, dtype=np.float64))
    s_lo = np.full(n, -np.inf)
    s_hi = np.full(n, np.inf)
    f_lo = np.zeros(n)
    f_hi = np.zeros(n)
    y_hi = np.full((n, r), np.nan)
    iters = np.zeros(n, dtype=np.int64)
    active = np.ones(n, dtype=bool)
    ulp = 4.0 * np.finfo(np.float64).eps
    for _ in range(max_outer):
        ia = np.flatnonzero(active)
        if len(ia) == 0:
            break
        lam = np.exp(s[ia])
        with np.errstate(over="ignore", invalid="ignore"):
            ya, d, h, po, g, H = _lagrangian_point(B[ia], d0[ia], lam, y[ia].copy(),
                                                   None if lz is None else lz[ia],
                                                   None if uz is None else uz[ia])
        y[ia] = ya
        iters[ia] += 1
        phi = h - c[ia]
        feas = phi <= 0
        lo_upd = ~feas & (s[ia] >= s_lo[ia])
        s_lo[ia[lo_upd]] = s[ia[lo_upd]]
        f_lo[ia[lo_upd]] = phi[lo_upd]
        upd = feas & (s[ia] <= s_hi[ia])
        s_hi[ia[upd]] = s[ia[upd]]
        f_hi[ia[upd]] = phi[upd]
        y_hi[ia[upd]] = ya[upd]
        # dphi/ds = lam * dh/dlam = -lam g^T H^{-1} g
        Hg = _solve_batch(H, g)
        slope = -lam * np.einsum("nr,nr->n", g, Hg)
        # aim a few ulps inside (h is only known to its rounding): the Newton iteration from
        # the infeasible side is monotone (h(y(e^s)) is convex in s in practice) and lands there
        floor = ulp * (1.0 + np.abs(c[ia]) + np.abs(d).max(axis=1))
        aim = -floor
        conv = feas & (phi >= -4.0 * floor)
        lo_a, hi_a = s_lo[ia], s_hi[ia]
        narrow = np.isfinite(lo_a) & np.isfinite(hi_a) & (hi_a - lo_a <= 1e-15 * np.maximum(1.0, np.abs(s[ia])))
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            s_new = s[ia] - (phi - aim) / slope
        bad = ~np.isfinite(s_new) | (s_new <= lo_a) | (s_new >= hi_a)
        # outside the bracket: the secant through its ends, kept off them by 5% of its width
        w = hi_a - lo_a
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            sec = lo_a + w * (f_lo[ia] - aim) / (f_lo[ia] - f_hi[ia][:])
            sec = np.clip(sec, lo_a + 0.05 * w, hi_a - 0.05 * w)
        out_lo = ~np.isfinite(lo_a)
        out_hi = ~np.isfinite(hi_a)
        repl = np.where(out_hi, s[ia] + 2.5, np.where(out_lo, s[ia] - 2.5, sec))
        s_new = np.where(bad, repl, s_new)
        s_new = np.clip(s_new, s[ia] - 8.0, s[ia] + 8.0)
        # lam beyond 1e100: the constraint is met only far outside any sensible range (or at
        # infinity); give up on the row rather than overflow
        stop = conv | narrow | (s_new > 230.0)
        active[ia[stop]] = False
        go = ~stop
        # warm start of the next Lagrangian point: the first-order predictor dy/ds = -lam H^-1 g
        y[ia[go]] = ya[go] - (lam[go] * (s_new[go] - s[ia[go]]))[:, None] * Hg[go]
        if lz is not None:
            y[ia[go]] = np.clip(y[ia[go]], lz[ia[go]], uz[ia[go]])
        s[ia[go]] = s_new[go]
    # the returned point: the last feasible iterate (its lam), else the last one
    have = np.all(np.isfinite(y_hi), axis=1)
    y = np.where(have[:, None], y_hi, y)
    s = np.where(have, s_hi, s)
    lam = np.exp(s)
    d = d0 + np.einsum("nmr,nr->nm", B, y)
    h = _lse0(d)
    po = np.exp(d - h[:, None])
    nu = lam[:, None] * po
    v = np.einsum("nmr,nm->nr", B, nu)
    yn = np.linalg.norm(y, axis=1)
    zc = -v if lz is None else np.clip(-v, lz, uz)
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = np.linalg.norm(y - zc, axis=1) / np.maximum(yn, 1e-300)
    # lam > 0: the constraint is active (complementarity), so |h - c| is the residual
    kkt = np.maximum(stat, np.abs(h - c) / cs)
    kkt = np.where(np.isfinite(kkt), kkt, np.inf)
    # the Fenchel dual at nu (module docstring): Phi = -1/2 ||A_d^T nu||^2, sigma_C for the
    # softmax set with E = expm1(c)
    E = np.expm1(c)
    S = nu.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        lg = np.where(nu > 0, np.log(nu) - np.log(S)[:, None] + np.log(E)[:, None], 0.0)
    sigma = np.einsum("nm,nm->n", nu, lg)
    dual = (np.einsum("nr,nr->n", zc, 0.5 * zc + v) + np.einsum("nm,nm->n", nu, d0) - sigma)
    state = np.where(kkt <= 1e-9, "ok", "stalled").astype(object)
    z = y @ V.T if r else np.zeros((n, p))
    return {"z": z, "nu": nu, "state": state, "kkt": kkt, "iterations": iters, "dual": dual}


def primal_caps_l2(A, V, d0, cap, t, others, max_classes=8):
    """``min 1/2 ||z||^2  s.t.  d0 + A_d z <= -cap`` (argmax, no box) by enumerating the active
    sets: the optimum is the projection of 0 onto the affine set of its active constraints, i.e.
    the shortest candidate ``y_J = pinv(B_J) rhs_J`` (``z = V y``) that satisfies every
    constraint. With ``K - 1 <= 7`` other classes that is at most 127 small least-squares
    solves per row, vectorised over rows; the multipliers ``nu_J = -pinv(B_J^T) y_J`` (clipped
    at 0) give the weak-duality bound. For rows the active-set dual leaves uncertified (nearly
    parallel class constraints on badly scaled features). Returns a dict like
    :func:`dual_l2`'s, or None for too many classes."""
    n, m = d0.shape
    if m > max_classes - 1 or V.shape[1] == 0:
        return None
    AV = A @ V
    B = AV[others] - AV[t][:, None, :]
    rhs = -cap[:, None] - d0
    best = np.full(n, np.inf)
    y_best = np.full((n, V.shape[1]), np.nan)
    nu_best = np.zeros((n, m))
    scale = np.abs(d0).max(axis=1) + cap
    for mask in range(1, 2 ** m):
        J = np.array([(mask >> j) & 1 for j in range(m)], dtype=bool)
        BJ = B[:, J, :]
        with np.errstate(all="ignore"):
            P = np.linalg.pinv(BJ, rcond=1e-13)                 # (n, r, |J|)
            y = np.einsum("nrj,nj->nr", P, rhs[:, J])
            viol = np.einsum("nmr,nr->nm", B, y) - rhs
            ok = np.all(viol <= 1e-13 * (scale[:, None] + np.abs(np.einsum("nmr,nr->nm", B, y))),
                        axis=1)
            ok &= np.all(np.isfinite(y), axis=1)
            # consistent: the active constraints hold with equality (not a least-squares miss)
            ok &= np.all(np.abs(viol[:, J]) <= 1e-9 * (scale[:, None] + 1.0), axis=1)
            nrm = np.einsum("nr,nr->n", y, y)
        take = ok & (nrm < best)
        if np.any(take):
            best[take] = nrm[take]
            y_best[take] = y[take]
            with np.errstate(all="ignore"):
                PT = np.linalg.pinv(np.transpose(BJ[take], (0, 2, 1)), rcond=1e-13)
                nuJ = -np.einsum("njr,nr->nj", PT, y[take])
            nb = np.zeros((int(take.sum()), m))
            nb[:, J] = np.maximum(nuJ, 0.0)
            nu_best[take] = nb
    found = np.isfinite(best)
    y = np.where(found[:, None], y_best, 0.0)
    v = np.einsum("nmr,nm->nr", B, nu_best)
    dual = -0.5 * np.einsum("nr,nr->n", v, v) + np.einsum("nm,nm->n", nu_best, d0) + cap * nu_best.sum(axis=1)
    yn = np.sqrt(np.einsum("nr,nr->n", y, y))
    with np.errstate(divide="ignore", invalid="ignore"):
        kkt = np.linalg.norm(y + v, axis=1) / np.maximum(yn, 1e-300)
    kkt = np.where(found & np.isfinite(kkt), kkt, np.inf)
    state = np.where(kkt <= 1e-9, "ok", "stalled").astype(object)
    z = np.where(found[:, None], y_best, np.nan) @ V.T
    return {"z": z, "nu": nu_best, "state": state, "kkt": kkt,
            "iterations": np.full(n, 2 ** m - 1, dtype=np.int64), "dual": dual}
