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
  softmax: the optimum moves x only within the span of the weight-row differences);
- multiclass, L1 / Linf: linear programs through HiGHS (:mod:`._lp`), with a certified
  cutting-plane method for the (convex, non-linear) softmax confidence constraint;
- one-vs-rest probabilities with a confidence: the constraint is not convex; a local SLSQP
  solution (:mod:`._local`), verified but never called exact.

Every returned point is checked with the estimator's own ``predict`` (and ``predict_proba`` when
a confidence is asked for); a point that does not verify is never reported as ``found``. The
solvers aim a hair inside the target region (a relative margin of 1e-10 in the constraint) so
that the estimator's own floating-point arithmetic agrees with the exact optimum, which lies on
the boundary.
"""

from __future__ import annotations

import hashlib
import weakref

import numpy as np
import sklearn

from invaudit.errors import InputError, UnsupportedModelError
from invaudit.models.base import LinearForm

from . import _binary, _dual, _local, _lp
from ._common import _Sol, check_target
from .constraints import Constraints
from .result import CounterfactualBatch

__all__ = ["counterfactuals", "invert"]

NORMS = ("l2", "l1", "linf")
_EXACT_TOL = 1e-9
_HAIR = 1e-10
_PUSHES = (1e-9, 1e-7)


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

def _solve_binary(form, s0, t, conf, norm, a_kept, lz, uz):
    n = len(t)
    sign = np.where(t == 1, 1.0, -1.0)
    need = 0.0 if conf is None else max(np.log(conf) - np.log1p(-conf), 0.0)
    tau = _HAIR * (1.0 + np.abs(s0[:, 0]))
    delta = need + tau - sign * s0[:, 0]
    # rows with delta <= 0 are already beyond the required margin (z = 0 solves them)
    pos = delta > 0
    if lz is None:
        return _binary_closed_form(form, a_kept, sign, delta, pos, conf, norm)
    a = sign[:, None] * a_kept[None, :]
    sol = _Sol(n, a_kept.shape[0])
    sol.z[~pos] = 0.0
    sol.state[~pos] = "ok"
    sol.kkt[~pos] = 0.0
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


def _solve_multiclass_l2(A, M, s0, t, conf, lz, uz, rank_full):
    """L2, multiclass, softmax/argmax. Returns _Sol and the nu multipliers."""
    n, K = s0.shape
    p = A.shape[1]
    sol = _Sol(n, p)
    mode = _multiclass_modes(conf, K)
    others = _dual.others_of(t, K)
    r = np.arange(n)
    d0 = np.take_along_axis(s0, others, axis=1) - s0[r, t][:, None]
    # the hair of margin scales with the score differences (invariant to adding one vector
    # to every class's weights, which changes nothing about the model)
    sd = 1.0 + np.abs(d0).max(axis=1)
    tau = _HAIR * sd
    if mode == "caps":
        E = None
        c_eff = None
    else:
        c_eff = -np.log(conf) - tau
        E = np.expm1(c_eff)
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
        infeas = ~(smax > need)
        sol.state[il[infeas]] = "infeasible"
        msg = ("no point within the constraints makes the target the predicted class"
               if mode == "caps" else
               f"the target cannot reach p >= {conf:g} within the constraints")
        sol.reason[il[infeas]] = msg
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
        return sol, d0, tau, E, c_eff, mode
    idx = np.flatnonzero(todo)

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
        bad = st == "infeasible"
        sol.reason[rows[bad]] = ("the dual is unbounded: no point within the constraints reaches "
                                 "the target" + ("" if conf is None else f" at p >= {conf:g}"))
        sol.reason[rows[st == "stalled"]] = (
            f"the solver stopped without a certificate (KKT residual "
            f"{float(np.nanmax(out['kkt'][st == 'stalled'])) if np.any(st == 'stalled') else 0:.1e})")

    nobox_name = {"caps": "qp-dual-active-set", "exp": "softmax-newton-subspace",
                  "both": "softmax-newton-subspace"}

    def solve_mode(rows, md):
        """No-box dual first; rows whose box binds are re-solved with the box."""
        out = run(rows, md, False)
        store(rows, out, nobox_name[md])
        if lz is None:
            return
        inside = np.all((sol.z[rows] >= lz[rows]) & (sol.z[rows] <= uz[rows]), axis=1)
        redo = rows[has_box[rows] & ~inside & (sol.state[rows] != "infeasible")]
        if len(redo):
            nu0 = nu_all[redo] if md == "caps" else np.maximum(nu_all[redo], 1e-300)
            ok0 = np.all(np.isfinite(nu0), axis=1)
            out = run(redo, md, True, nu0=nu0 if np.all(ok0) else None)
            store(redo, out, "box-dual-newton")

    if mode != "both":
        solve_mode(idx, mode)
        return sol, d0, tau, E, c_eff, mode

    # mode "both" (1/K < P <= 1/2): p_t >= P does not imply the argmax. Solve the two
    # relaxations; an optimum of one that satisfies the other constraint is optimal for both.
    solve_mode(idx, "exp")
    z_e, st_e, nu_e = sol.z[idx].copy(), sol.state[idx].copy(), nu_all[idx].copy()
    it_e = sol.iters[idx].copy()
    d_e = d0[idx] + _apply_Ad(A, t[idx], others[idx], np.nan_to_num(z_e))
    ok_e = (st_e == "ok") & np.all(d_e <= -tau[idx][:, None], axis=1)
    rest = idx[~ok_e & (st_e != "infeasible")]
    if len(rest) == 0:
        return sol, d0, tau, E, c_eff, mode
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
            for key in ("z", "nu", "state", "kkt", "iterations"):
                out[key][ridx] = o2[key][better]
        store(both_rows, out, "softmax-newton-subspace" if not box else "box-dual-newton")
        sol.iters[both_rows] += it_e[pos]
    return sol, d0, tau, E, c_eff, mode


def _apply_Ad(A, t, others, z):
    sz = z @ A.T
    return np.take_along_axis(sz, others, axis=1) - sz[np.arange(len(t)), t][:, None]


def _lse0(d):
    mx = np.maximum(d.max(axis=1), 0.0)
    return mx + np.log(np.exp(-mx) + np.exp(d - mx[:, None]).sum(axis=1))


def _solve_multiclass_lp(A, M, s0, t, conf, norm, lz, uz, rank_full):
    """L1 / Linf for multiclass linear models: the L2 solver certifies feasibility and gives a
    feasible point; then an exact LP (argmax) or the certified cutting plane (confidence)."""
    sol, d0, tau, E, c_eff, mode = _solve_multiclass_l2(A, M, s0, t, conf, lz, uz, rank_full)
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
        z, ok, kkt = _lp.solve_lp(norm, Ad, d0[rows], tau[rows], lzr, uzr, sd=sd)
        sol.z[rows] = np.where(ok[:, None], z, np.nan)
        sol.kkt[rows] = kkt
        sol.state[rows[~ok]] = "failed"
        sol.reason[rows[~ok]] = "the linear program did not solve"
        sol.method[rows] = "lp-highs"
        sol.iters[rows] = 1
        return sol
    z_f = sol.z[rows]
    if mode == "exp":
        z, gap, rounds = _lp.cutting_plane(norm, Ad, d0[rows], c_eff[rows], None, lzr, uzr, z_f, sd)
        sol.z[rows] = z
        sol.kkt[rows] = gap
        sol.iters[rows] = rounds
        sol.method[rows] = "lp-highs-cutting-plane"
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
    counterfactual (the solvers keep a relative margin of 1e-10 in every class constraint, and
    ``p >= confidence`` by the same hair). For ``1/K < confidence <= 1/2`` the target must be
    predicted *and* reach the confidence (the latter alone does not imply the former).

    Exact (``exact=True``, optimal to near machine precision with a KKT residual or an LP
    duality gap at most 1e-9, and verified by the estimator) for sigmoid, softmax and
    score-argmax models with any of the three norms, with or without bounds, frozen features and
    weights. One-vs-rest probabilities with a confidence give a verified local optimum
    (``exact=False``).

    References
    ----------
    M. A. Carreira-Perpinan and S. S. Hada, "Inverse classification with logistic and softmax
    classifiers: efficient optimization", TMLR 2026, arXiv:2309.08945.
    """
    X, tgt, conf, cons = _check_inputs(form, X, target, confidence, norm, constraints)
    n, D = X.shape
    K = form.n_classes
    with sklearn.config_context(assume_finite=True):   # X was checked finite above
        orig = form.predict_index(X) if n else np.zeros(0, dtype=np.intp)
    if tgt is None:
        if K == 2:
            return _solve_rows(form, X, 1 - orig, orig, conf, norm, cons)
        # every class other than the predicted one, then the closest that verifies
        rep = np.repeat(np.arange(n), K - 1)
        cand = _dual.others_of(orig, K).ravel()
        sub = None if cons is None else Constraints(
            lower=cons.lower[rep], upper=cons.upper[rep], weights=cons.weights)
        res = _solve_rows(form, X[rep], cand, orig[rep], conf, norm, sub)
        return _pick_closest(res, n, K - 1, conf)
    return _solve_rows(form, X, tgt, orig, conf, norm, cons)


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


def _pick_closest(res: CounterfactualBatch, n: int, c: int, conf) -> CounterfactualBatch:
    found = (res.status == "found").reshape(n, c)
    dist = np.where(found, res.distance.reshape(n, c), np.inf)
    best = np.argmin(dist, axis=1)
    sel = np.arange(n) * c + best
    any_found = found.any(axis=1)
    all_infeasible = (res.status == "infeasible").reshape(n, c).all(axis=1)
    fields = {}
    for name in ("status", "reason", "x_cf", "delta", "distance", "original_index", "target_index",
                 "predicted_index", "target_probability", "exact", "method", "kkt_residual",
                 "iterations", "changed"):
        fields[name] = getattr(res, name)[sel].copy()
    none = ~any_found
    if np.any(none):
        fields["status"][none & all_infeasible] = "infeasible"
        fields["status"][none & ~all_infeasible] = "failed"
        fields["reason"][none & all_infeasible] = (
            "no other class can be reached within the constraints"
            + ("" if conf is None else f" at p >= {conf:g}"))
        fields["reason"][none & ~all_infeasible] = "no other class was reached with a verified point"
        fields["target_index"][none] = -1
    fields["iterations"] = res.iterations.reshape(n, c).sum(axis=1)
    return CounterfactualBatch(norm=res.norm, **fields)


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
    x_cf = np.empty((n, D))

    status[qualifies] = "already-target"
    x_cf[qualifies] = X[qualifies]
    kkt[qualifies] = 0.0
    method[qualifies] = "check"
    exact[qualifies] = True
    have[qualifies] = True

    rows = np.flatnonzero(~qualifies)
    if len(rows) and p == 0:
        status[rows] = "infeasible"
        reason[rows] = "every feature is frozen, so the prediction cannot change"
        method[rows] = "check"
    elif len(rows):
        mdl = _model(form, w, kept)
        all_rows = len(rows) == n
        Xr = X if all_rows else X[rows]
        lz = uz = None
        if cons is not None:
            lo = cons.lower if all_rows else cons.lower[rows]
            hi = cons.upper if all_rows else cons.upper[rows]
            if p < D:
                lo, hi = lo[:, kept], hi[:, kept]
            if np.any(np.isfinite(lo)) or np.any(np.isfinite(hi)):
                xk = Xr if p == D else Xr[:, kept]
                lz = np.minimum(w[kept] * (lo - xk), 0.0)
                uz = np.maximum(w[kept] * (hi - xk), 0.0)
        tr = t[rows]
        if form.is_binary:
            s0 = form.scores(Xr)
            sol = _solve_binary(form, s0, tr, conf, norm, mdl.a, lz, uz)
        else:
            A, M = mdl.A, mdl.M
            s0 = Xr @ form.W_full.T + form.b_full
            rank_full = mdl.rank_full(tr)
            if conf is not None and form.link == "ovr":
                sol = _local.solve_ovr(A, s0, tr, conf, norm, lz, uz)
            elif norm == "l2":
                sol = _solve_multiclass_l2(A, M, s0, tr, conf, lz, uz, rank_full)[0]
            else:
                sol = _solve_multiclass_lp(A, M, s0, tr, conf, norm, lz, uz, rank_full)
        ok = sol.state == "ok"
        got = ok | (sol.state == "local")
        zz = sol.z
        if lz is not None:
            zz = np.clip(zz, lz, uz)
        step = zz if unit else zz / w[kept]
        if p == D:
            xr = Xr + step
        else:
            xr = Xr.copy()
            xr[:, kept] += step
        if lz is not None:
            # x + (bound - x) can overshoot a bound by one ulp: the box is a hard guarantee
            xr = np.clip(xr, cons.lower if all_rows else cons.lower[rows],
                         cons.upper if all_rows else cons.upper[rows])
        x_cf[rows] = xr
        have[rows] = got
        status[rows] = np.where(got, "pending", np.where(sol.state == "infeasible", "infeasible", "failed"))
        reason[rows] = np.where(got, None, sol.reason)
        kkt[rows] = sol.kkt
        iters[rows] = sol.iters
        method[rows] = sol.method
        exact[rows] = ok & (sol.kkt <= _EXACT_TOL)
        nr = (status == "failed") & np.equal(reason, None)
        reason[nr] = "the solver did not converge"

    # ---- verification by the estimator itself, with a tiny push if the boundary bites ------
    pred = np.full(n, -1, dtype=np.intp)
    tprob = np.full(n, np.nan)
    hp = np.flatnonzero(have)
    if len(hp):
        pred[hp], tprob[hp] = _answers(form, x_cf[hp], t[hp])
    pend = np.flatnonzero(status == "pending")
    if len(pend):
        good = _qualifies(pred[pend], tprob[pend], t[pend], conf)
        for eps in _PUSHES:
            bad = pend[~good]
            if len(bad) == 0:
                break
            trial = X[bad] + (x_cf[bad] - X[bad]) * (1.0 + eps)
            if cons is not None:
                trial = np.clip(trial, cons.lower[bad], cons.upper[bad])
            pb, tb = _answers(form, trial, t[bad])
            gb = _qualifies(pb, tb, t[bad], conf)
            x_cf[bad[gb]] = trial[gb]
            pred[bad[gb]], tprob[bad[gb]] = pb[gb], tb[gb]
            if eps > _EXACT_TOL:
                exact[bad[gb]] = False
            good[~good] = gb
        status[pend[good]] = "found"
        bad = pend[~good]
        status[bad] = "failed"
        reason[bad] = "the estimator's own prediction does not confirm the solution at the returned point"
        exact[bad] = False
        have[bad] = False
        pred[bad] = -1
        tprob[bad] = np.nan

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
    exact &= have
    changed = delta != 0     # NaN rows compare unequal: mask them
    changed[~have] = False
    if not form.has_proba:
        tprob[:] = np.nan
    return CounterfactualBatch(
        status=status, reason=reason, x_cf=x_cf, delta=delta, distance=distance,
        original_index=np.asarray(orig, dtype=np.intp), target_index=np.asarray(t, dtype=np.intp),
        predicted_index=pred, target_probability=tprob, exact=exact, method=method,
        kkt_residual=kkt, iterations=iters, changed=changed, norm=norm)


def _answers(form, x, t):
    """The estimator's own predicted class index and p(target) (NaN without probabilities)."""
    # every point handed to the estimator has been checked finite: skip its own re-check
    with sklearn.config_context(assume_finite=True):
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


