"""Closest counterfactuals for linear models, exact where the mathematics allows.

The user-facing entry point is :func:`counterfactuals`; :func:`invert` is the same solver
started from reference points (model inversion).

Problem (per row ``x``, target class ``t``)::

    minimise  || w * (x_cf - x) ||_p
    subject to  lower <= x_cf <= upper,
                the estimator predicts t at x_cf (argmax of the scores),
                and, with a confidence P, p(t | x_cf) >= P.

With ``z = w * (x_cf - x)`` the scores are affine in ``z`` and the metric is ``||z||_p``: frozen
features are dropped, the box becomes ``lz <= z <= uz`` (containing 0), and

- binary models: one linear constraint; exact closed forms / monotone breakpoint searches in
  :mod:`._binary` (Carreira-Perpinan & Hada, "Inverse classification with logistic and softmax
  classifiers: efficient optimization", TMLR 2026, sec. 3);
- multiclass, L2: the (K-1)-dimensional dual of :mod:`._dual` (the same paper, sec. 4, for the
  softmax: the optimum moves x only within the span of the weight-row differences); confidence
  rows the dual leaves uncertified (features scaled very differently make its multipliers
  cancel) are solved again in the primal (:func:`._dual.primal_exp_l2`, with or without a box)
  and keep whichever answer carries the better certificate;
- multiclass, L1 / Linf: linear programs through HiGHS (:mod:`._lp`), with a certified
  cutting-plane method for the (convex, non-linear) softmax confidence constraint;
- one-vs-rest probabilities with a confidence: the constraint is not convex; a local SLSQP
  solution (:mod:`._local`), verified but never called exact.

Every returned point is checked with the estimator's own ``predict`` (and ``predict_proba`` when
a confidence is asked for); a point that does not verify is never reported as ``found``. The
solvers aim a hair inside the target region so that the estimator's own floating-point arithmetic
agrees with the exact optimum, which lies on the boundary: 1e-12 of the score gap being closed
(so the distance it costs is relative to the distance itself, at every scale of the features)
plus the worst-case rounding of the scores; rows the estimator does not confirm are solved
again aiming deeper (16x per attempt). The score gaps themselves are computed to half an ulp
where rounding would matter (:func:`._common.score_differences`).

``exact`` is a certificate, not a solver status: the distance of the point *as returned* (after
rounding to float64) lies within 1e-9 relative of a proven lower bound on the optimum of the
unshifted problem (no hair, the scores' rounding allowed for): weak duality for the L2 dual,
the LP dual for L1 / Linf, the monotone closed forms for binary models. A row on a tie (the
infimum 0 is not attained) or closer to the boundary than float64 can resolve is found and
verified, but not exact.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
import weakref

import numpy as np

from invaudit.errors import InputError, UnsupportedModelError
from invaudit.models.base import LinearForm

from . import _binary, _dual, _local, _lp
from ._common import _Sol, check_target, closest_other, score_differences, solve_in_chunks
from .constraints import Constraints
from .result import CounterfactualBatch

__all__ = ["counterfactuals", "invert"]


def _assume_finite():
    """scikit-learn's ``config_context(assume_finite=True)`` when scikit-learn is loaded, else
    nothing: a light-loaded linear model (invaudit.io._light) predicts without scikit-learn, and
    importing it only to skip its own finiteness re-check would cost ~3 s of start-up. Every row
    handed to an estimator here has been checked finite already, so the context changes speed
    only, never an answer."""
    sk = sys.modules.get("sklearn")
    return sk.config_context(assume_finite=True) if sk is not None else contextlib.nullcontext()

NORMS = ("l2", "l1", "linf")
_EXACT_TOL = 1e-9          # KKT residual / LP gap, and the distance against its lower bound
_HAIR_REL = 1e-12          # aim this far (relative to the score gap) inside the target region
_ROUND = np.finfo(np.float64).eps   # ... plus (D + 2) ulps of the scores' magnitude
_HAIR_GROWTH = 16.0        # retries aim deeper by this factor
_LEVELS = 8                # solve attempts per row before it is reported failed
_PUSHES = (1e-10, 1e-9)
EXACT_MEANS = ("distance within 1e-9 relative of a proven lower bound on the optimum (rounding "
               "of the scores included), point verified by the model's own predict")


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------

def _check_inputs(form, X, target, confidence, norm, constraints):
    if not isinstance(form, LinearForm):
        kind = getattr(form, "kind", type(form).__name__)
        raise UnsupportedModelError(f"counterfactuals for the {kind} form are not available yet")
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise InputError(f"the rows must form a 2-D array, got {X.ndim} dimension(s).")
    n, D = X.shape
    if D != form.n_features:
        raise InputError(f"the model expects {form.n_features} features, the data has {D}.")
    if not np.all(np.isfinite(X)):
        raise InputError("the rows contain NaN or infinite values.")
    if norm not in NORMS:
        raise InputError(f"unknown norm {norm!r}; use one of {', '.join(NORMS)}.")
    K = form.n_classes
    tgt = check_target(target, n, K)
    if confidence is not None:
        P = float(confidence)
        if not (0.0 < P < 1.0) or not np.isfinite(P):
            raise InputError(f"confidence must lie strictly between 0 and 1, got {confidence}.")
        if form.link == "none":
            raise InputError(
                "this model has no probability link, so a confidence cannot be asked for; "
                "drop --confidence to ask only for the predicted class."
            )
        if not form.has_proba:
            raise InputError("this model has no predict_proba, so a confidence cannot be verified.")
        confidence = P
    if constraints is not None:
        if not isinstance(constraints, Constraints):
            raise InputError("constraints must be an invaudit.counterfactual.Constraints.")
        constraints.validate(X)
    return X, tgt, confidence, constraints


# --------------------------------------------------------------------------------------------
# the solvers per model kind, in z coordinates
# --------------------------------------------------------------------------------------------

def _hair(gap, absS, level):
    """The margin a solution is aimed inside the target region by: relative to the score gap
    being closed (so the distance it costs is ~1e-12 of the distance itself, at every scale),
    plus the worst-case rounding of a score difference by the estimator (``2 (D + 2) u`` times
    the scores' magnitude, for any summation order: its ``predict`` agrees on any batch; the
    caller passes ``absS`` already multiplied by ``D + 2``),
    times ``16 ** level`` on retries. A row exactly on a tie with zero scores gets a tiny
    absolute margin instead (any positive one is the same distance to within rounding)."""
    tau = _HAIR_REL * np.maximum(gap, 0.0) + _ROUND * absS
    tau = np.where(tau > 0, tau, 1e-12)
    return tau * (_HAIR_GROWTH ** level)


def _znorm(z, norm):
    if norm == "l2":
        return np.sqrt(np.einsum("ij,ij->i", z, z))
    if norm == "l1":
        return np.abs(z).sum(axis=1)
    return np.abs(z).max(axis=1)


def _solve_binary(form, d, err, absS, t, conf, norm, a_kept, lz, uz, level):
    """``d`` (n,): the other class's score minus the target's (``-score`` for target 1,
    ``score`` for target 0), ``err`` its rounding bound."""
    n = len(t)
    sign = np.where(t == 1, 1.0, -1.0)
    need = 0.0 if conf is None else max(np.log(conf) - np.log1p(-conf), 0.0)
    gap = need + d                      # how far the signed score must still rise
    tau = _hair(gap, absS, level)
    delta = gap + tau
    delta_lo = np.maximum(gap - err, 0.0)   # the unshifted problem, rounding allowed for
    # rows with delta <= 0 are already beyond the required margin (z = 0 solves them)
    pos = delta > 0
    if lz is None:
        sol = _binary_closed_form(form, a_kept, sign, delta, pos, conf, norm)
        # without a box the optimal distance is linear in the required score change
        with np.errstate(invalid="ignore", divide="ignore"):
            sol.lb = np.where(pos, _znorm(np.nan_to_num(sol.z), norm) * (delta_lo / np.where(pos, delta, 1.0)),
                              0.0)
        return sol
    a = sign[:, None] * a_kept[None, :]
    sol = _Sol(n, a_kept.shape[0])
    sol.z[~pos] = 0.0
    sol.state[~pos] = "ok"
    sol.kkt[~pos] = 0.0
    sol.lb[~pos] = 0.0
    if np.any(pos):
        z, feas, kkt, box_rows = _binary.solve_binary(
            a[pos], delta[pos], None if lz is None else lz[pos], None if uz is None else uz[pos], norm)
        ip = np.flatnonzero(pos)
        sol.z[ip] = z
        sol.kkt[ip] = kkt
        sol.state[ip] = np.where(feas, "ok", "infeasible")
        sol.reason[ip[~feas]] = ("no point within the constraints reaches the target"
                                 + ("" if conf is None else f" at p >= {conf:g}")
                                 + " (the score cannot rise far enough inside the box)")
        sol.iters[ip] = np.where(box_rows, 1, 0)
        # the optimal distance is nondecreasing in the required change: solve at delta_lo
        lo_pos = delta_lo[pos] > 0
        lbv = np.zeros(len(ip))
        if np.any(lo_pos):
            zl, fl, _, _ = _binary.solve_binary(a[pos][lo_pos], delta_lo[pos][lo_pos],
                                               lz[pos][lo_pos], uz[pos][lo_pos], norm)
            lbv[lo_pos] = np.where(fl, _znorm(np.nan_to_num(zl), norm), np.nan)
        sol.lb[ip] = lbv
        if norm == "l2":
            name = np.where(box_rows, "box-multiplier-search",
                            "closed-form-sigmoid" if form.link == "sigmoid" else "closed-form-linear")
        elif norm == "l1":
            name = np.where(box_rows, "l1-greedy-box", "l1-closed-form")
        else:
            name = np.where(box_rows, "linf-breakpoint-search", "linf-closed-form")
        sol.method[ip] = name
    sol.method[~pos] = "closed-form"
    return sol


def _binary_closed_form(form, a, sign, delta, pos, conf, norm):
    """No bounds: the projection onto the half-space ``sign * (a . z) >= delta``, vectorised
    over rows as outer products (Carreira-Perpinan & Hada, sec. 3; l1: all the change on the
    largest |a_j|; linf: every feature by the same amount)."""
    n, p = len(sign), len(a)
    sol = _Sol.__new__(_Sol)
    dpos = np.where(pos, delta, 0.0)
    if norm == "l2":
        nrm = float(a @ a)
        coef = sign * dpos / nrm if nrm > 0 else np.zeros(n)
        z = coef[:, None] * a[None, :]
        reach = nrm * np.abs(coef)
    elif norm == "linf":
        n1 = float(np.abs(a).sum())
        coef = sign * dpos / n1 if n1 > 0 else np.zeros(n)
        z = coef[:, None] * np.sign(a)[None, :]
        reach = n1 * np.abs(coef)
    else:
        j = int(np.argmax(np.abs(a)))
        z = np.zeros((n, p))
        z[:, j] = sign * dpos / a[j] if a[j] != 0 else 0.0
        reach = np.abs(a[j] * z[:, j])
    feasible = np.any(a != 0) | ~pos
    sol.z = z
    if not np.any(a != 0):
        sol.z = np.where(pos[:, None], np.nan, np.zeros((n, p)))
    sol.state = np.where(feasible, "ok", "infeasible").astype(object)
    sol.reason = np.full(n, None, dtype=object)
    if not np.all(feasible):
        sol.reason[~feasible] = "the model's score does not depend on any feature that may move"
    # relative residual of the active constraint, from the scalar algebra of the projection
    with np.errstate(invalid="ignore", divide="ignore"):
        sol.kkt = np.where(pos, np.abs(reach - dpos) / np.maximum(dpos, 1e-300), 0.0)
    sol.iters = np.zeros(n, dtype=np.int64)
    name = {"l2": "closed-form-sigmoid" if form.link == "sigmoid" else "closed-form-linear",
            "l1": "l1-closed-form", "linf": "linf-closed-form"}[norm]
    sol.method = np.full(n, name, dtype=object)
    return sol


def _multiclass_modes(conf, K):
    if conf is None or conf <= 1.0 / K:
        return "caps"
    if conf > 0.5:
        return "exp"
    return "both"


def _solve_multiclass_l2(A, M, s0, t, conf, lz, uz, rank_full, err=None, absS=None, level=0):
    """L2, multiclass, softmax/argmax. ``s0``: scores (any per-row offset; only differences
    matter), ``err`` (n, K) their rounding bounds, ``absS`` (n,) their magnitude.
    Returns _Sol and the pieces the LP solver reuses."""
    n, K = s0.shape
    p = A.shape[1]
    sol = _Sol(n, p)
    mode = _multiclass_modes(conf, K)
    others = _dual.others_of(t, K)
    r = np.arange(n)
    d0 = np.take_along_axis(s0, others, axis=1) - s0[r, t][:, None]
    err_d = np.zeros_like(d0) if err is None else np.take_along_axis(err, others, axis=1)
    if absS is None:
        absS = np.abs(s0).max(axis=1)
    # the hair of margin scales with the gap still to close (invariant to adding one vector
    # to every class's weights, which changes nothing about the model)
    sd = 1.0 + np.abs(d0).max(axis=1)
    gap = np.maximum(d0.max(axis=1), 0.0)
    if mode != "caps":
        gap = np.maximum(gap, _lse0(d0) + np.log(conf))
    tau = _hair(gap, absS, level)
    if mode == "caps":
        E = None
        c_eff = None
    else:
        c_eff = -np.log(conf) - tau
        E = np.expm1(c_eff)
    dual_all = np.full(n, np.nan)
    has_box = np.zeros(n, dtype=bool) if lz is None else (
        np.any(np.isfinite(lz), axis=1) | np.any(np.isfinite(uz), axis=1))

    # ---- phase 1: certify (in)feasibility where it is not automatic -----------------------
    undecided = np.zeros(n, dtype=bool)
    need_lp = has_box | ~rank_full[t]
    if np.any(need_lp):
        il = np.flatnonzero(need_lp)
        Ad = A[others[il]] - A[t[il]][:, None, :]
        smax = _lp.max_margin(Ad, d0[il], None if lz is None else lz[il],
                              None if uz is None else uz[il], 10.0 * sd[il] + 50.0)
        need = np.zeros(len(il)) if mode == "exp" else tau[il].copy()
        if mode != "caps":
            need = np.maximum(need, -np.log(E[il]))
        # HiGHS works to ~1e-9 (tolerances, and it drops coefficients below 1e-9): only a
        # clear shortfall proves infeasibility; rows in the band (or where the LP failed) go on
        # to the dual solver, whose infeasibility certificate is weak duality
        infeas = smax < need - 1e-7 * sd[il]
        sol.state[il[infeas]] = "infeasible"
        msg = ("no point within the constraints makes the target the predicted class"
               if mode == "caps" else
               f"the target cannot reach p >= {conf:g} within the constraints")
        sol.reason[il[infeas]] = msg
        thin = infeas & (smax > 0)
        for i, sm in zip(il[thin], smax[thin]):
            sol.reason[i] = (f"inside the constraints the target can beat every other class by at most "
                             f"{sm:.3g} in score, within the rounding of the model's own scores")
        sol.method[il[infeas]] = "lp-phase1-highs"
        if mode != "caps":
            sure = smax >= np.maximum(tau[il], 0.0) + np.log(K - 1) - np.log(E[il])
            undecided[il[~infeas & ~sure]] = True
    # Without a box, the highest reachable confidence is computed directly (degenerate
    # geometry: fewer independent weight differences than classes).
    amb = np.flatnonzero(undecided & ~has_box)
    if len(amb):
        Gd = _dual.difference_gram(M, t[amb], others[amb])
        hmin, conv = _dual.min_lse_affine(Gd, d0[amb], c_eff[amb])
        cant = conv & (hmin >= c_eff[amb])
        rows_c = amb[cant]
        sol.state[rows_c] = "infeasible"
        sol.method[rows_c] = "max-confidence-newton"
        for i, hm in zip(rows_c, hmin[cant]):
            sol.reason[i] = (f"the target cannot reach p >= {conf:g} anywhere: the highest "
                             f"probability any point reaches is {np.exp(-hm):.6g}")

    todo = sol.state != "infeasible"
    nu_all = np.zeros((n, K - 1))
    if not np.any(todo):
        return sol, d0, tau, E, c_eff, mode, err_d
    idx = np.flatnonzero(todo)

    def certify():
        """Weak duality: the dual value at nu, less what loosening every class constraint by
        the hair and the scores' rounding can gain (``C'`` shifted by ``delta`` lies inside
        ``C``, so ``sigma_C' <= sigma_C + delta . nu``), bounds 1/2 ||z||^2 of the unshifted
        problem from below."""
        shift = np.broadcast_to(tau[:, None], d0.shape)
        if mode != "caps":
            with np.errstate(divide="ignore", invalid="ignore"):
                logr = np.log(((1.0 - conf) / conf) / E)
            shift = np.maximum(shift, logr[:, None])
        half = dual_all - np.einsum("ij,ij->i", np.maximum(nu_all, 0.0), shift + err_d)
        ok = sol.state == "ok"
        sol.lb[ok] = np.sqrt(np.maximum(half[ok], 0.0) * 2.0)

    def run(rows, md, box, nu0=None):
        return _dual.dual_l2(
            A, M, s0[rows], t[rows], mode=md, cap=tau[rows],
            E=None if E is None else E[rows],
            lz=lz[rows] if box else None, uz=uz[rows] if box else None,
            nu0=None if nu0 is None else nu0)

    def store(rows, out, method):
        z = out["z"]
        sol.z[rows] = z
        sol.kkt[rows] = out["kkt"]
        sol.iters[rows] += out["iterations"]
        st = out["state"]
        finite = np.all(np.isfinite(z), axis=1)
        sol.state[rows] = np.where(st == "ok", "ok", np.where(
            st == "infeasible", "infeasible", np.where(finite, "local", "failed")))
        sol.method[rows] = method
        nu_all[rows] = out["nu"]
        dual_all[rows] = out["dual"]
        bad = st == "infeasible"
        sol.reason[rows[bad]] = ("the dual is unbounded: no point within the constraints reaches "
                                 "the target" + ("" if conf is None else f" at p >= {conf:g}"))
        sol.reason[rows[st == "stalled"]] = (
            f"the solver stopped without a certificate (KKT residual "
            f"{float(np.nanmax(out['kkt'][st == 'stalled'])) if np.any(st == 'stalled') else 0:.1e})")

    nobox_name = {"caps": "qp-dual-active-set", "exp": "softmax-newton-subspace",
                  "both": "softmax-newton-subspace"}

    def rel_gap(z, dual):
        half = 0.5 * np.einsum("ij,ij->i", z, z)
        with np.errstate(invalid="ignore", divide="ignore"):
            g = (half - dual) / np.maximum(half, 1e-300)
        return np.where(np.isfinite(g), g, np.inf)

    def primal_exp(rows, out, box=False):
        """Rows the dual left uncertified (or with a duality gap above 1e-10) are solved again
        in the primal (:func:`._dual.primal_exp_l2`: badly scaled features make the dual's
        multipliers cancel); its answer replaces the dual's where its certificate is better."""
        z_d = np.nan_to_num(out["z"])
        gd = rel_gap(z_d, out["dual"])
        weak = (out["state"] != "ok") | (out["kkt"] > 1e-10) | (gd > 1e-10)
        weak &= out["state"] != "infeasible"
        if not np.any(weak) or p == 0:
            return
        rw = rows[weak]
        # with a box the optimum leaves the span of the weight differences: full coordinates
        V = np.eye(p) if box else _dual.difference_basis(A)
        if V.shape[1] == 0:
            return
        h0 = _lse0(d0[rw])
        rw = rw[h0 > c_eff[rw]]          # z = 0 qualifies: nothing for the primal to do
        if len(rw) == 0:
            return
        lam0 = out["nu"][np.searchsorted(rows, rw)].sum(axis=1)
        pr = _dual.primal_exp_l2(A, V, d0[rw], t[rw], others[rw], c_eff[rw], lam0=lam0,
                                 lz=lz[rw] if box else None, uz=uz[rw] if box else None)
        gp = rel_gap(pr["z"], pr["dual"])
        pos = np.searchsorted(rows, rw)
        better = (pr["state"] == "ok") & ((out["state"][pos] != "ok") | (gp < gd[pos]))
        if np.any(better):
            store(rw[better], {k: v[better] for k, v in pr.items()},
                  "box-primal-newton" if box else "softmax-primal-newton")

    def primal_caps(rows, out):
        """The argmax rows (no box) the active-set dual left uncertified or with a gap above
        1e-10: enumerate the active sets (:func:`._dual.primal_caps_l2`, up to 8 classes)."""
        gd = rel_gap(np.nan_to_num(out["z"]), out["dual"])
        weak = (out["state"] != "ok") | (out["kkt"] > 1e-10) | (gd > 1e-10)
        weak &= out["state"] != "infeasible"
        if not np.any(weak) or p == 0:
            return
        rw = rows[weak]
        rw = rw[(d0[rw] > -tau[rw][:, None]).any(axis=1)]   # z = 0 qualifies otherwise
        if len(rw) == 0:
            return
        pr = _dual.primal_caps_l2(A, _dual.difference_basis(A), d0[rw], tau[rw], t[rw], others[rw])
        if pr is None:
            return
        gp = rel_gap(np.nan_to_num(pr["z"]), pr["dual"])
        pos = np.searchsorted(rows, rw)
        better = (pr["state"] == "ok") & ((out["state"][pos] != "ok") | (gp < gd[pos]))
        if np.any(better):
            store(rw[better], {k: v[better] for k, v in pr.items()}, "qp-active-set-enumeration")

    def solve_mode(rows, md):
        """No-box dual first; rows whose box binds are re-solved with the box."""
        out = run(rows, md, False)
        store(rows, out, nobox_name[md])
        if md == "exp":
            primal_exp(rows, out)
        elif md == "caps":
            primal_caps(rows, out)
        if lz is None:
            return
        inside = np.all((sol.z[rows] >= lz[rows]) & (sol.z[rows] <= uz[rows]), axis=1)
        # an uncertified point without the box (e.g. the target reachable only far outside
        # it, or at infinity) says nothing about the problem with it: solve with the box too
        redo = rows[has_box[rows] & (~inside | (sol.state[rows] != "ok"))
                    & (sol.state[rows] != "infeasible")]
        if len(redo):
            nu0 = nu_all[redo] if md == "caps" else np.maximum(nu_all[redo], 1e-300)
            ok0 = np.all(np.isfinite(nu0), axis=1)
            out = run(redo, md, True, nu0=nu0 if np.all(ok0) else None)
            store(redo, out, "box-dual-newton")
            if md == "exp":
                primal_exp(redo, out, box=True)

    if mode != "both":
        solve_mode(idx, mode)
        certify()
        return sol, d0, tau, E, c_eff, mode, err_d

    # mode "both" (1/K < P <= 1/2): p_t >= P does not imply the argmax. Solve the two
    # relaxations; an optimum of one that satisfies the other constraint is optimal for both.
    solve_mode(idx, "exp")
    z_e, st_e, nu_e = sol.z[idx].copy(), sol.state[idx].copy(), nu_all[idx].copy()
    it_e = sol.iters[idx].copy()
    d_e = d0[idx] + _apply_Ad(A, t[idx], others[idx], np.nan_to_num(z_e))
    ok_e = (st_e == "ok") & np.all(d_e <= -tau[idx][:, None], axis=1)
    rest = idx[~ok_e & (st_e != "infeasible")]
    if len(rest) == 0:
        certify()
        return sol, d0, tau, E, c_eff, mode, err_d
    solve_mode(rest, "caps")
    z_c = sol.z[rest]
    d_c = d0[rest] + _apply_Ad(A, t[rest], others[rest], np.nan_to_num(z_c))
    h_c = _lse0(d_c)
    ok_c = (sol.state[rest] == "ok") & (h_c <= c_eff[rest])
    both_rows = rest[~ok_c & (sol.state[rest] != "infeasible")]
    if len(both_rows):
        pos = np.searchsorted(idx, both_rows)
        nu0 = np.maximum(nu_all[both_rows] + nu_e[pos], 0.0)
        nu0 = np.maximum(nu0, 1e-12 * np.maximum(nu0.max(axis=1, keepdims=True), 1e-300))
        box = lz is not None and np.any(has_box[both_rows])

        def run_both(sel, start):
            rr = both_rows[sel]
            return _dual.dual_l2(A, M, s0[rr], t[rr], mode="both", cap=tau[rr], E=E[rr],
                                 lz=lz[rr] if box else None, uz=uz[rr] if box else None,
                                 nu0=None if start is None else start[sel])

        # the default start first; rows it cannot certify retry from the two relaxations'
        # multipliers (the dual is concave, so any start is valid; some converge faster)
        allsel = np.ones(len(both_rows), dtype=bool)
        out = run_both(allsel, None)
        retry = out["state"] != "ok"
        if np.any(retry):
            o2 = run_both(retry, nu0)
            better = o2["kkt"] < out["kkt"][retry]
            ridx = np.flatnonzero(retry)[better]
            for key in ("z", "nu", "state", "kkt", "iterations", "dual"):
                out[key][ridx] = o2[key][better]
        store(both_rows, out, "softmax-newton-subspace" if not box else "box-dual-newton")
        sol.iters[both_rows] += it_e[pos]
    certify()
    return sol, d0, tau, E, c_eff, mode, err_d


def _apply_Ad(A, t, others, z):
    sz = z @ A.T
    return np.take_along_axis(sz, others, axis=1) - sz[np.arange(len(t)), t][:, None]


def _lse0(d):
    mx = np.maximum(d.max(axis=1), 0.0)
    return mx + np.log(np.exp(-mx) + np.exp(d - mx[:, None]).sum(axis=1))


def _solve_multiclass_lp(A, M, s0, t, conf, norm, lz, uz, rank_full, err=None, absS=None, level=0):
    """L1 / Linf for multiclass linear models: the L2 solver certifies feasibility and gives a
    feasible point; then an exact LP (argmax) or the certified cutting plane (confidence)."""
    sol, d0, tau, E, c_eff, mode, err_d = _solve_multiclass_l2(A, M, s0, t, conf, lz, uz, rank_full,
                                                               err, absS, level)
    sol.lb[:] = np.nan
    n, K = s0.shape
    rows = np.flatnonzero(sol.state == "ok")
    if len(rows) == 0:
        sol.method[sol.state != "infeasible"] = "lp-highs"
        return sol
    others = _dual.others_of(t[rows], K)
    Ad = A[others] - A[t[rows]][:, None, :]
    sd = 1.0 + np.abs(d0[rows]).max(axis=1)
    lzr = None if lz is None else lz[rows]
    uzr = None if uz is None else uz[rows]
    if mode == "caps":
        z, ok, kkt, lb = _lp.solve_lp(norm, Ad, d0[rows], tau[rows], lzr, uzr, sd=sd,
                                      relax=tau[rows][:, None] + err_d[rows])
        # where HiGHS does not solve (badly scaled rows: gains far below 1e-9 per unit), the
        # L2 optimum is still a feasible point: reported as found, verified, never exact
        sol.z[rows] = np.where(ok[:, None], z, sol.z[rows])
        sol.kkt[rows] = np.where(ok, kkt, np.nan)
        sol.lb[rows] = np.where(ok, lb, np.nan)
        sol.state[rows[~ok]] = "local"
        sol.method[rows] = "lp-highs"
        sol.method[rows[~ok]] = "l2-optimum (the linear program did not solve; not optimal in this norm)"
        sol.iters[rows] = 1
        return sol
    z_f = sol.z[rows]
    if mode == "exp":
        z, gap, rounds = _lp.cutting_plane(norm, Ad, d0[rows], c_eff[rows], None, lzr, uzr, z_f, sd)
        sol.z[rows] = z
        sol.kkt[rows] = gap
        sol.iters[rows] = rounds
        sol.method[rows] = "lp-highs-cutting-plane"
        sol.lb[rows] = _lp._norm(z, norm) * (1.0 - gap)
        return sol
    # mode "both": the relaxation without the argmax first, then the one without the
    # confidence; an optimum of one that satisfies the other constraint is optimal for both.
    z, gap, rounds = _lp.cutting_plane(norm, Ad, d0[rows], c_eff[rows], None, lzr, uzr, z_f, sd)
    d_e = d0[rows] + np.einsum("njp,np->nj", Ad, z)
    ok_e = np.all(d_e <= -0.5 * tau[rows][:, None], axis=1)
    sol.z[rows], sol.kkt[rows], sol.iters[rows] = z, gap, rounds
    sol.method[rows] = "lp-highs-cutting-plane"
    rest = ~ok_e
    if np.any(rest):
        ir = rows[rest]
        zc, okc, kc = _lp.solve_lp(norm, Ad[rest], d0[ir], tau[ir], None if lz is None else lz[ir],
                                   None if uz is None else uz[ir], sd=sd[rest])
        d_c = d0[ir] + np.einsum("njp,np->nj", Ad[rest], np.nan_to_num(zc))
        good = okc & (_lse0(d_c) <= c_eff[ir])
        sol.z[ir[good]], sol.kkt[ir[good]] = zc[good], kc[good]
        sol.method[ir[good]] = "lp-highs"
        hard = ~good
        if np.any(hard):
            ih = ir[hard]
            sub = np.flatnonzero(rest)[hard]
            zb, gb, rb = _lp.cutting_plane(norm, Ad[sub], d0[ih], c_eff[ih], tau[ih],
                                           None if lz is None else lz[ih],
                                           None if uz is None else uz[ih], z_f[sub], sd[sub])
            sol.z[ih], sol.kkt[ih], sol.iters[ih] = zb, gb, sol.iters[ih] + rb
    # the cutting plane's gap is against its own LP lower bound (the hair on the confidence is
    # 1e-12 of the gap being closed, far below the certificate's tolerance)
    sol.lb[rows] = _lp._norm(np.nan_to_num(sol.z[rows]), norm) * (1.0 - sol.kkt[rows])
    return sol


# --------------------------------------------------------------------------------------------
# the entry point
# --------------------------------------------------------------------------------------------

def counterfactuals(form, X, *, target, confidence=None, norm="l2", constraints=None,
                    ) -> CounterfactualBatch:
    """Closest counterfactual of every row for a linear model.

    Parameters
    ----------
    form : LinearForm
        The model (``invaudit.models.adapt(estimator)``); affine preprocessing is already
        folded into ``W, b``, so distances and bounds are in input units.
    X : array of shape (n, D)
        The rows (or, for model inversion, the reference points) to start from.
    target : int array of shape (n,) (or a scalar) or "other"
        Class *indices* (positions in ``form.classes``). ``"other"``: for each row the closest
        class other than the one the estimator predicts.
    confidence : float in (0, 1) or None
        Ask for ``p(target | x_cf) >= confidence`` in addition to the target being predicted.
        Needs a probability link (sigmoid, softmax or ovr).
    norm : {"l2", "l1", "linf"}
        The metric ``|| weights * (x_cf - x) ||``.
    constraints : Constraints or None
        Bounds and metric weights (:meth:`Constraints.build`). Each row must lie inside its own
        bounds.

    Returns
    -------
    CounterfactualBatch

    Raises
    ------
    UnsupportedModelError
        For forms other than the linear one.
    InputError
        For malformed rows, targets, confidence or constraints.

    Notes
    -----
    The target must win strictly: a point where it only ties with another class is not a
    counterfactual (the solvers aim 1e-12 of the score gap, plus the scores' rounding, inside
    every class constraint, and ``p >= confidence`` by the same hair). For
    ``1/K < confidence <= 1/2`` the target must be predicted *and* reach the confidence (the
    latter alone does not imply the former).

    Exact (``exact=True``: the solver's KKT residual or LP duality gap at most 1e-9, the
    returned distance within 1e-9 relative of a proven lower bound on the optimum, and the point
    verified by the estimator; :data:`EXACT_MEANS`) for sigmoid, softmax and score-argmax models
    with any of the three norms, with or without bounds, frozen features and weights, except on
    ties and within float64 resolution of a boundary (found and verified, not exact).
    One-vs-rest probabilities with a confidence give a verified local optimum (``exact=False``).
    A row is ``failed`` only with a ``reason``.

    References
    ----------
    M. A. Carreira-Perpinan and S. S. Hada, "Inverse classification with logistic and softmax
    classifiers: efficient optimization", TMLR 2026, arXiv:2309.08945.
    """
    X, tgt, conf, cons = _check_inputs(form, X, target, confidence, norm, constraints)
    n, D = X.shape
    K = form.n_classes
    with _assume_finite():   # X was checked finite above
        orig = form.predict_index(X) if n else np.zeros(0, dtype=np.intp)
    if tgt is None:
        if K == 2:
            return solve_in_chunks(_solve_rows, form, X, 1 - orig, orig, conf, norm, cons)
        # the closest verified point over every other class, solving the classes in order of
        # a lower bound and stopping once no class left can be closer (rows in chunks)
        return closest_other(_solve_rows, form, X, orig, conf, norm, cons)
    return solve_in_chunks(_solve_rows, form, X, tgt, orig, conf, norm, cons)


def invert(form, reference, *, target, confidence=None, norm="l2", constraints=None):
    """Model inversion: the point closest to ``reference`` that the model assigns to ``target``.

    The same solver as :func:`counterfactuals`, started from reference points (e.g. the
    training mean, or zeros) instead of data rows. ``reference`` is ``(D,)`` or ``(n, D)``.
    """
    ref = np.asarray(reference, dtype=np.float64)
    if ref.ndim == 1:
        ref = ref[None, :]
    tg = target
    if not isinstance(target, str):
        tg = np.asarray(target)
        if tg.ndim == 0:
            tg = np.full(ref.shape[0], tg)
        if ref.shape[0] == 1 and tg.shape[0] > 1:
            ref = np.repeat(ref, tg.shape[0], axis=0)
    return counterfactuals(form, ref, target=tg, confidence=confidence, norm=norm,
                           constraints=constraints)


class _Model:
    """Per model and metric precomputation: score directions in z units, their Gram matrix,
    and (lazily) which targets have K-1 independent weight differences. Cached per form."""

    def __init__(self, form, w, kept):
        self.kept = kept
        if form.is_binary:
            self.a = form.W[0, kept] / w[kept]
            self.A = self.M = None
        else:
            self.A = np.ascontiguousarray(form.W_full[:, kept] / w[kept])
            self.M = self.A @ self.A.T
        self._full = None

    def rank_full(self, targets):
        """Do the K-1 weight-row differences ``A_j - A_t`` span K-1 dimensions? This does
        not depend on ``t``: it holds iff ``[A, 1]`` has rank K (the rows are affinely
        independent), read off one eigen-decomposition of ``M + c 11^T``."""
        if self._full is None:
            K = self.M.shape[0]
            c = max(float(np.trace(self.M)) / K, 1e-300)
            ev = np.linalg.eigvalsh(self.M + c * np.ones((K, K)))
            self._full = bool(ev[0] > 1e-10 * max(ev[-1], 1e-300))
        return np.full(self.M.shape[0], self._full)


_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _model(form, w, kept) -> _Model:
    key = (hashlib.sha1(np.ascontiguousarray(w).tobytes() + kept.tobytes()).hexdigest(),
           form.W.tobytes().__hash__(), form.b.tobytes().__hash__())
    per = _CACHE.setdefault(form, {})
    m = per.get(key)
    if m is None:
        if len(per) > 8:
            per.clear()
        m = per[key] = _Model(form, w, kept)
    return m


def _solve_rows(form, X, t, orig, conf, norm, cons) -> CounterfactualBatch:
    n, D = X.shape
    w = np.ones(D) if cons is None else cons.weights
    unit = cons is None or bool(np.all(w == 1.0))
    if cons is None or n == 0:
        kept = np.arange(D)
    else:
        kept = np.flatnonzero(~np.all(cons.lower == cons.upper, axis=0))
    p = len(kept)

    # already qualifying rows (judged by the estimator itself)
    qualifies = orig == t
    if conf is not None and n and np.any(qualifies):
        pr0 = form.predict_proba(X[qualifies])
        qualifies[qualifies] = pr0[np.arange(pr0.shape[0]), t[qualifies]] >= conf

    status = np.full(n, "failed", dtype=object)
    reason = np.full(n, None, dtype=object)
    kkt = np.full(n, np.nan)
    iters = np.zeros(n, dtype=np.int64)
    method = np.full(n, "", dtype=object)
    exact = np.zeros(n, dtype=bool)
    have = np.zeros(n, dtype=bool)
    lb = np.full(n, np.nan)
    x_cf = np.full((n, D), np.nan)
    pred = np.full(n, -1, dtype=np.intp)
    tprob = np.full(n, np.nan)

    status[qualifies] = "already-target"
    x_cf[qualifies] = X[qualifies]
    kkt[qualifies] = 0.0
    lb[qualifies] = 0.0
    method[qualifies] = "check"
    exact[qualifies] = True
    have[qualifies] = True

    rows = np.flatnonzero(~qualifies)
    if len(rows) and p == 0:
        status[rows] = "infeasible"
        reason[rows] = "every feature is frozen, so the prediction cannot change"
        method[rows] = "check"
        rows = rows[:0]
    mdl = _model(form, w, kept) if len(rows) else None
    answered = np.zeros(n, dtype=bool)
    # Solve, verify with the estimator, and re-solve the rows it does not confirm aiming deeper
    # inside the target region (a row on a tie, or where a solver's tolerance left the point a
    # hair outside); each attempt is certified on its own, so a deeper aim costs exactness only
    # when it costs distance.
    for level in range(_LEVELS):
        if len(rows) == 0:
            break
        out = _attempt(form, X[rows], t[rows], conf, norm,
                       None if cons is None else (cons.lower[rows], cons.upper[rows]),
                       w, unit, kept, mdl, level)
        if level:
            # aimed deeper, a thin target region can look infeasible: it was reachable at a
            # shallower aim, so this is a failure to verify, not a proof of infeasibility
            deep = out["status"] == "infeasible"
            out["status"][deep] = "failed"
            out["reason"][deep] = ("the target region inside the constraints is too thin for the "
                                   "estimator's floating point to confirm a point in it")
        got = out["status"] != "failed"
        last = level == _LEVELS - 1
        # keep the first answer, replace it only by a certified one; a failure is kept only
        # when nothing else was ever found for the row
        sel = got & (~answered[rows] | out["exact"])
        if last:
            sel |= ~answered[rows]
        take = rows[sel]
        for name, arr in (("status", status), ("reason", reason), ("kkt", kkt), ("method", method),
                          ("exact", exact), ("have", have), ("lb", lb), ("x_cf", x_cf),
                          ("pred", pred), ("tprob", tprob)):
            arr[take] = out[name][sel]
        iters[rows] += out["iters"]
        answered[rows[got]] = True
        # rows a certifying solver left uncertified (it stalled) get two more tries: the
        # answer they have stands unless a certified one turns up
        again = got & out["stalled"] & ~out["exact"] & (level < 2)
        rows = rows[~got | again]

    x_cf[~have] = np.nan
    delta = x_cf - X
    distance = np.full(n, np.nan)
    if np.any(have):
        dd = delta if unit else delta * w
        if norm == "l2":
            distance = np.sqrt(np.einsum("ij,ij->i", dd, dd))
        elif norm == "l1":
            distance = np.abs(dd).sum(axis=1)
        else:
            distance = np.abs(dd).max(axis=1)
    # exact: certified by the solver AND the distance of the point as reported (after its
    # rounding to float64 and any push) within 1e-9 of a proven lower bound on the optimum
    with np.errstate(invalid="ignore"):
        exact &= have & (distance <= lb * (1.0 + _EXACT_TOL))
    changed = delta != 0     # NaN rows compare unequal: mask them
    changed[~have] = False
    if not form.has_proba:
        tprob[:] = np.nan
    return CounterfactualBatch(
        status=status, reason=reason, x_cf=x_cf, delta=delta, distance=distance,
        original_index=np.asarray(orig, dtype=np.intp), target_index=np.asarray(t, dtype=np.intp),
        predicted_index=pred, target_probability=tprob, exact=exact, method=method,
        kkt_residual=kkt, iterations=iters, changed=changed, norm=norm)


def _attempt(form, Xr, tr, conf, norm, box, w, unit, kept, mdl, level):
    """One solve of the rows ``Xr`` (none of which qualifies yet) aimed ``level`` steps deep,
    mapped back to points and verified by the estimator."""
    n, D = Xr.shape
    p = len(kept)
    lz = uz = None
    lo = hi = None
    if box is not None:
        lo, hi = box
        lo_k, hi_k = (lo, hi) if p == D else (lo[:, kept], hi[:, kept])
        if np.any(np.isfinite(lo_k)) or np.any(np.isfinite(hi_k)):
            xk = Xr if p == D else Xr[:, kept]
            lz = np.minimum(w[kept] * (lo_k - xk), 0.0)
            uz = np.maximum(w[kept] * (hi_k - xk), 0.0)
    # score differences to the target, exact to an ulp where rounding would matter
    Sd, err, absS = score_differences(Xr, form.W_full, form.b_full, tr)
    absS = absS * (D + 2)      # the estimator's worst-case rounding scale (see _hair)
    if form.is_binary:
        r = np.arange(n)
        sol = _solve_binary(form, Sd[r, 1 - tr], err[r, 1 - tr], absS, tr, conf, norm, mdl.a,
                            lz, uz, level)
    else:
        A, M = mdl.A, mdl.M
        rank_full = mdl.rank_full(tr)
        if conf is not None and form.link == "ovr":
            s0 = Xr @ form.W_full.T + form.b_full
            sol = _local.solve_ovr(A, s0, tr, conf, norm, lz, uz)
        elif norm == "l2":
            sol = _solve_multiclass_l2(A, M, Sd, tr, conf, lz, uz, rank_full, err, absS, level)[0]
        else:
            sol = _solve_multiclass_lp(A, M, Sd, tr, conf, norm, lz, uz, rank_full, err, absS, level)
    ok = sol.state == "ok"
    got = ok | (sol.state == "local")
    zz = sol.z
    if lz is not None:
        zz = np.clip(zz, lz, uz)
    step = zz if unit else zz / w[kept]
    if p == D:
        x_cf = Xr + step
    else:
        x_cf = Xr.copy()
        x_cf[:, kept] += step
    if lz is not None:
        # x + (bound - x) can overshoot a bound by one ulp: the box is a hard guarantee
        x_cf = np.clip(x_cf, lo, hi)
    have = got.copy()
    status = np.where(got, "pending", np.where(sol.state == "infeasible", "infeasible", "failed")).astype(object)
    reason = np.where(got, None, sol.reason).astype(object)
    nr = (status == "failed") & np.equal(reason, None)
    reason[nr] = "the solver did not converge"
    exact = ok & (sol.kkt <= _EXACT_TOL)

    # ---- verification by the estimator itself, with a tiny push if the boundary bites ------
    pred = np.full(n, -1, dtype=np.intp)
    tprob = np.full(n, np.nan)
    hp = np.flatnonzero(have)
    if len(hp):
        pred[hp], tprob[hp] = _answers(form, x_cf[hp], tr[hp])
    pend = np.flatnonzero(status == "pending")
    if len(pend):
        good = _qualifies(pred[pend], tprob[pend], tr[pend], conf)
        for eps in _PUSHES:
            bad = pend[~good]
            if len(bad) == 0:
                break
            trial = Xr[bad] + (x_cf[bad] - Xr[bad]) * (1.0 + eps)
            if box is not None:
                trial = np.clip(trial, lo[bad], hi[bad])
            pb, tb = _answers(form, trial, tr[bad])
            gb = _qualifies(pb, tb, tr[bad], conf)
            x_cf[bad[gb]] = trial[gb]
            pred[bad[gb]], tprob[bad[gb]] = pb[gb], tb[gb]
            good[~good] = gb
        status[pend[good]] = "found"
        bad = pend[~good]
        status[bad] = "failed"
        reason[bad] = ("the estimator's own prediction does not confirm the solution at the "
                       "returned point, even aimed deeper inside the target region")
        exact[bad] = False
        have[bad] = False
        pred[bad] = -1
        tprob[bad] = np.nan
    ovr_local = (not form.is_binary) and conf is not None and form.link == "ovr"
    return {"status": status, "reason": reason, "kkt": sol.kkt, "method": sol.method,
            "exact": exact, "have": have, "lb": sol.lb, "x_cf": x_cf, "pred": pred,
            "tprob": tprob, "iters": sol.iters,
            "stalled": (sol.state == "local") & (not ovr_local)}


def _answers(form, x, t):
    """The estimator's own predicted class index and p(target) (NaN without probabilities)."""
    # every point handed to the estimator has been checked finite: skip its own re-check
    with _assume_finite():
        if form.has_proba:
            pr = form.predict_proba(x)
            tp = pr[np.arange(len(t)), t]
            # predict() is the authority for the label; it agrees with argmax proba for every
            # linear link, but is asked directly so that a disagreement cannot slip through
            return form.predict_index(x), tp
        return form.predict_index(x), np.full(len(t), np.nan)


def _qualifies(pred, tprob, t, conf):
    ok = pred == t
    if conf is not None:
        ok &= tprob >= conf
    return ok


