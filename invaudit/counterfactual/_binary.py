"""Exact counterfactuals for binary linear models: one linear constraint ``a . z >= delta``.

Coordinates: ``z = w * (x_cf - x)`` (metric weights ``w``), so the distance is ``||z||_p``; the
box ``lz <= z <= uz`` contains 0 (the row lies inside its own bounds) and ``a`` is the model's
weight vector divided by ``w``, signed towards the target class. ``delta > 0`` is how much the
(signed) score must still rise.

References
----------
M. A. Carreira-Perpinan and S. S. Hada, "Inverse classification with logistic and softmax
classifiers: efficient optimization", TMLR 2026 (arXiv:2309.08945), sec. 3: for logistic
regression the closest point with ``p(target|x) >= P`` is the projection onto the hyperplane
``w.x + b = logit(P)``, ``z = delta a / ||a||^2`` (their eq. for the logistic case).
With a box the KKT conditions give ``z(lam) = clip(lam a, lz, uz)`` and ``a . z(lam)`` is
monotone in ``lam``, so the multiplier is found exactly among the breakpoints.
"""

from __future__ import annotations

import numpy as np

__all__ = ["solve_binary"]


def _piecewise_root(alpha: np.ndarray, beta: np.ndarray, delta: np.ndarray):
    """Smallest ``lam >= 0`` with ``sum_j min(lam * alpha_j, beta_j) == delta`` for every row.

    ``alpha >= 0`` (finite), ``beta >= 0`` (``inf`` allowed), ``delta > 0``. The left side is
    continuous, piecewise linear and nondecreasing in ``lam`` with breakpoints ``beta / alpha``;
    sorting them gives the segment that holds the root, and the root in closed form.
    Returns ``(lam, feasible)``; where ``sum(beta) < delta`` no ``lam`` reaches ``delta`` and
    the row is infeasible (``lam`` is NaN there).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        bp = np.where(alpha > 0, beta / alpha, np.inf)
    order = np.argsort(bp, axis=1, kind="stable")
    bps = np.take_along_axis(bp, order, axis=1)
    als = np.take_along_axis(alpha, order, axis=1)
    bes = np.take_along_axis(np.where(alpha > 0, beta, 0.0), order, axis=1)
    n, p = alpha.shape
    suffix_alpha = np.cumsum(als[:, ::-1], axis=1)[:, ::-1]  # sum_{j >= k}
    prefix_beta = np.concatenate([np.zeros((n, 1)), np.cumsum(bes, axis=1)[:, :-1]], axis=1)
    with np.errstate(invalid="ignore", over="ignore"):
        g = np.where(np.isfinite(bps), bps * suffix_alpha, np.where(suffix_alpha > 0, np.inf, 0.0))
        g = g + prefix_beta
    reach = g >= delta[:, None]
    feasible = reach.any(axis=1)
    k = np.argmax(reach, axis=1)
    r = np.arange(n)
    sa = suffix_alpha[r, k]
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = (delta - prefix_beta[r, k]) / sa
    lam = np.where(feasible & (sa > 0), lam, np.where(feasible, bps[r, k], np.nan))
    return lam, feasible


def solve_binary(a: np.ndarray, delta: np.ndarray, lz: np.ndarray | None, uz: np.ndarray | None,
                 norm: str):
    """Minimise ``||z||_norm`` s.t. ``a_i . z >= delta_i`` and ``lz_i <= z <= uz_i``, per row.

    Parameters
    ----------
    a : (n, p) signed constraint normals (the model's weights in ``z`` units).
    delta : (n,) positive required score changes.
    lz, uz : (n, p) box with ``lz <= 0 <= uz`` or None (no box).
    norm : "l2", "l1" or "linf".

    Returns
    -------
    z : (n, p) (NaN rows where infeasible), feasible : (n,) bool, kkt : (n,), method : str,
    box_rows : (n,) bool (rows whose box could bind).

    Notes
    -----
    - l2: ``z = clip(lam a, lz, uz)`` (KKT of the projection onto a half-space intersected
      with a box); without a box ``lam = delta / ||a||^2``.
    - l1: the continuous knapsack: move features in decreasing ``|a_j|`` order to their bound
      until the score is reached (exact: the LP with one constraint is solved greedily).
    - linf: ``z_j = sign(a_j) min(t, cap_j)`` with ``sum_j |a_j| min(t, cap_j) = delta``.
    """
    n, p = a.shape
    absa = np.abs(a)
    sgn = np.sign(a)
    if lz is None:
        cap = np.full((n, p), np.inf)
    else:
        cap = np.where(a > 0, uz, np.where(a < 0, -lz, 0.0))
        cap = np.maximum(cap, 0.0)
    boxed = np.isfinite(cap) & (absa > 0)
    box_rows = boxed.any(axis=1)
    z = np.full((n, p), np.nan)
    feasible = np.zeros(n, dtype=bool)

    free = ~box_rows
    if np.any(free):
        af, df = a[free], delta[free]
        if norm == "l2":
            nn = np.einsum("ij,ij->i", af, af)
            ok = nn > 0
            with np.errstate(divide="ignore", invalid="ignore"):
                zf = af * (df / nn)[:, None]
        elif norm == "linf":
            n1 = np.abs(af).sum(axis=1)
            ok = n1 > 0
            with np.errstate(divide="ignore", invalid="ignore"):
                zf = np.sign(af) * (df / n1)[:, None]
        else:  # l1: all the change on the largest |a_j|
            j = np.argmax(np.abs(af), axis=1)
            r = np.arange(af.shape[0])
            big = af[r, j]
            ok = big != 0
            zf = np.zeros_like(af)
            with np.errstate(divide="ignore", invalid="ignore"):
                zf[r, j] = df / big
        zf[~ok] = np.nan
        z[free] = zf
        feasible[free] = ok

    if np.any(box_rows):
        absb, sb, cb, db = absa[box_rows], sgn[box_rows], cap[box_rows], delta[box_rows]
        if norm == "l2":
            lam, ok = _piecewise_root(absb * absb, absb * cb, db)
            zb = sb * np.minimum(lam[:, None] * absb, cb)
        elif norm == "linf":
            lam, ok = _piecewise_root(absb, absb * cb, db)
            zb = sb * np.minimum(lam[:, None], cb)
        else:
            order = np.argsort(-absb, axis=1, kind="stable")
            aso = np.take_along_axis(absb, order, axis=1)
            cso = np.take_along_axis(cb, order, axis=1)
            with np.errstate(invalid="ignore"):
                contrib = np.where(aso > 0, aso * cso, 0.0)
            cum = np.cumsum(contrib, axis=1)
            reach = cum >= db[:, None]
            ok = reach.any(axis=1)
            k = np.argmax(reach, axis=1)
            r = np.arange(len(db))
            before = np.where(k > 0, cum[r, np.maximum(k - 1, 0)], 0.0)
            col = np.arange(aso.shape[1])[None, :]
            moved = np.where(col < k[:, None], cso, 0.0)
            with np.errstate(divide="ignore", invalid="ignore"):
                moved[r, k] = (db - before) / aso[r, k]
            zso = np.zeros_like(moved)
            np.put_along_axis(zso, order, moved, axis=1)
            zb = sb * zso
        zb[~ok] = np.nan
        z[box_rows] = zb
        feasible[box_rows] = ok

    # Certificate: the constraint holds with equality at the optimum (relative residual);
    # the sign / bound structure is exact by construction.
    with np.errstate(invalid="ignore"):
        lhs = np.einsum("ij,ij->i", np.where(np.isfinite(z), a, 0.0), np.nan_to_num(z))
        kkt = np.abs(lhs - delta) / np.maximum(np.abs(delta), np.abs(a * np.nan_to_num(z)).sum(1))
    kkt[~feasible] = np.nan
    if lz is not None:
        inside = np.all((z >= lz) & (z <= uz), axis=1)
        feasible &= inside | ~feasible
    return z, feasible, kkt, box_rows
