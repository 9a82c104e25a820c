"""Counterfactuals for kernel machines (SVC / NuSVC, the kernel form): a verified local answer.

The estimator predicts by one-vs-one votes of its pairwise machines ``d_p``
(:mod:`invaudit.models.kernel`), which is not a smooth function of the input. A smooth
*sufficient* condition for the target ``t`` is that ``t`` wins every one of its machines: then it
has ``K - 1`` votes, more than any other class, whatever the tie rule. As class scores for the
boundary search and SQP of :mod:`._nl_smooth` (one score model per target class)::

    s_t(x) = 0,   s_j(x) = -o_tj d_(t,j)(x)      (o_tj = +1 when d > 0 votes t, else -1)

so the solver's target constraints ``s_t - s_j >= tau`` are exactly "``t`` beats ``j``"; with two
classes the single score is scikit-learn's ``decision_function`` (positive: ``classes[1]``), which
is the exact condition. Exact input gradients come from the form (``pair_jacobian``).

Starts: the row itself, and the ``n_pull`` target points nearest to the row among the reference
rows (training data, else the batch) and, separately, among the model's own support vectors of
the target class (mapped back to input units; an RBF machine's small islands of a class sit
around them), each clipped into the row's box, confirmed by the estimator and pulled toward the
row by bisection. Every start is also a candidate, so the answer is never farther than the
nearest such verified point.

- Two classes: the boundary search and SQP (+ SLSQP) of :mod:`._nl_smooth` on the exact
  condition, from every start.
- More than two classes: the true target region also holds points where ``t`` wins on a tie or
  with fewer than ``K - 1`` votes, and the tangent QPs of the sufficient condition are often
  infeasible far from it. So: a targeted DeepFool step across the machines ``t`` still loses,
  then every verified point is moved along the estimator's *true* boundary
  (:func:`refine_boundary`: the machine that flips there, the row projected onto the tangent
  polyhedron of that point's vote pattern, bisected back on the estimator's predictions), and
  SLSQP on the sufficient condition polishes the best point (corners where machines meet).
- Both: points sampled inside each answer's distance that the estimator already puts in the
  target class reveal nearer pieces of the non-convex region (:func:`_ball_rounds`); they are
  refined and polished the same way. Deterministic for a fixed seed.

With a confidence (``p(t) >= P``; libsvm's Platt-scaled pairwise coupling, not a function of the
``d_p`` the SQP can use) the query-only search of :mod:`._nl_blackbox` runs instead. ``exact`` is
always False.
"""

from __future__ import annotations

import numpy as np

from invaudit.counterfactual._nl_common import (Answers, Problem, bisect_to_target, nearest_endpoints,
                                                qualifies)
from invaudit.counterfactual._nl_smooth import ScoreModel, solve_smooth

__all__ = ["KernelScoreModel", "solve_kernel", "kernel_starts"]

METHOD = "kernel-boundary-search+sqp"


class KernelScoreModel(ScoreModel):
    """Class scores for one target class ``t`` (module docstring), for :func:`solve_smooth`."""

    def __init__(self, form, target: int):  # noqa: D107 - ScoreModel's init needs another form
        self.form = form
        self.kind = "kernel"
        self.link = "none"
        self.K = int(form.n_classes)
        self.t = int(target)
        if self.K == 2:
            self.M = 1
            self._cols = None
        else:
            self.M = self.K
            # for every class j != t: the pair holding (t, j) and its orientation
            col = np.zeros(self.K, dtype=np.intp)
            sign = np.zeros(self.K)
            for p, (i, j) in enumerate(form.pairs):  # a loop over class pairs
                if i == self.t:
                    col[j], sign[j] = p, 1.0
                elif j == self.t:
                    col[i], sign[i] = p, -1.0
            self._cols, self._sign = col, sign

    def scores(self, X):
        V = self.form.pair_values(np.asarray(X, dtype=np.float64))
        if self.M == 1:
            return -V
        S = -self._sign[None, :] * V[:, self._cols]
        S[:, self.t] = 0.0
        return S

    def scores_jac(self, X):
        V, J = self.form.pair_jacobian(np.asarray(X, dtype=np.float64))
        if self.M == 1:
            return -V, -J
        S = -self._sign[None, :] * V[:, self._cols]
        G = -self._sign[None, :, None] * J[:, self._cols, :]
        S[:, self.t] = 0.0
        G[:, self.t, :] = 0.0
        return S, G

    def margin_grad(self, X, t, o):  # pragma: no cover - feature importance is not offered
        raise NotImplementedError


def kernel_starts(prob: Problem, k: int, *, steps: int = 25) -> np.ndarray:
    """``(n, 2k, D)`` verified target points near each row: the ``k`` nearest reference rows and
    the ``k`` nearest support vectors the estimator puts in the target class, clipped into the row's
    box, confirmed, and pulled toward the row by bisection. NaN where there are none."""
    form = prob.form
    n, D = prob.X.shape
    out = np.full((n, 2 * k, D), np.nan)
    if n == 0 or k == 0:
        return out
    sv = form.support_vectors_input()
    sv_pred = form.predict_index(sv) if sv is not None and len(sv) else None
    for cls in np.unique(prob.target):  # a loop over classes
        rows = np.flatnonzero(prob.target == cls)
        sub = prob.subset(rows)
        # the k nearest reference rows and, separately, the k nearest support vectors (an RBF
        # machine's small islands of a class sit around its support vectors)
        got = []
        for pool in ((prob.pool.for_class(int(cls), prob.P) if prob.pool is not None else None),
                     (sv[sv_pred == cls] if sv_pred is not None else None)):
            if pool is not None and len(pool):
                got.append(nearest_endpoints(sub, pool, k))
        if not got:
            continue
        pts = np.concatenate([g[0] for g in got], axis=1)[:, :k * 2]
        dd = np.concatenate([g[1] for g in got], axis=1)[:, :k * 2]
        kk = pts.shape[1]
        flat = pts.reshape(-1, D)
        ri = np.repeat(np.arange(len(rows)), kk)
        fin = np.isfinite(dd.ravel())
        ok = np.zeros(len(flat), dtype=bool)
        ok[fin] = qualifies(form, flat[fin], np.full(fin.sum(), cls, dtype=np.intp), prob.P)[0]
        if not np.any(ok):
            continue
        pulled, _ = bisect_to_target(form, sub.X[ri[ok]], flat[ok],
                                     np.full(ok.sum(), cls, dtype=np.intp), prob.P, steps=steps)
        res = np.full((len(flat), D), np.nan)
        res[ok] = pulled
        out[rows, :kk] = res.reshape(len(rows), kk, D)
    return out


# --- more than two classes: the true boundary, one machine at a time ------------------------------

def _lin_machine(form, X, t):
    """For points ``X`` and targets ``t``: the pair values ``V``, their Jacobian ``J`` and, per
    class ``j``, the column of machine ``(t, j)`` and its orientation (+1: ``d > 0`` votes t)."""
    V, J = form.pair_jacobian(X)
    K = form.n_classes
    col = np.zeros((K, K), dtype=np.intp)
    sign = np.zeros((K, K))
    for p, (i, j) in enumerate(form.pairs):  # a loop over class pairs
        col[i, j], sign[i, j] = p, 1.0
        col[j, i], sign[j, i] = p, -1.0
    return V, J, col[t], sign[t]


def _step_across(form, prob: Problem, t, *, iters: int = 20, overshoot: float = 0.02):
    """Targeted DeepFool on the machines ``(t, j)`` that ``t`` still loses: step onto the nearest
    linearised one (exact weighted half-space projection in the box) with a small overshoot,
    until the estimator predicts ``t``. ``(points, found)``; NaN rows where not found."""
    from invaudit.margins._common import halfspace_step

    X0 = prob.X
    n, D = X0.shape
    Z = X0.copy()
    found = np.zeros(n, dtype=bool)
    active = np.arange(n)
    for _ in range(iters):
        if active.size == 0:
            break
        Za, ta = Z[active], t[active]
        V, J, col, sign = _lin_machine(form, Za, ta)
        ra = np.arange(active.size)
        best_d = np.full(active.size, np.inf)
        best = np.zeros((active.size, D))
        lo = prob.lower[active] - Za
        hi = prob.upper[active] - Za
        for j in range(form.n_classes):  # a loop over classes
            use = ta != j
            if not use.any():
                continue
            c, sg = col[ra, j], sign[ra, j]
            m = sg * V[ra, c]                       # > 0: t beats j
            g = sg[:, None] * J[ra, c]
            need = -m
            r = need + overshoot * np.abs(need) + 1e-12 * (1.0 + np.abs(V).max(axis=1))
            step, dist, _ = halfspace_step(g, r, prob.weights, prob.norm, lo, hi)
            better = use & (m <= 0) & (dist < best_d)
            best_d = np.where(better, dist, best_d)
            best[better] = step[better]
        stuck = ~np.isfinite(best_d)
        Z[active] = np.clip(Za + best, prob.lower[active], prob.upper[active])
        ok = qualifies(form, Z[active], ta, None)[0]
        found[active[ok]] = True
        active = active[~ok & ~stuck]
    Z[~found] = np.nan
    return Z, found


def refine_boundary(form, prob: Problem, B: np.ndarray, *, rounds: int = 25, bisect: int = 30):
    """Move verified target points ``B`` closer to their rows along the estimator's true boundary.

    Each round: the machine that flips between ``B`` and a point a hair toward the row is the
    active piece of the boundary (it may be a tie between other classes' votes); the row is
    projected onto that machine's boundary linearised at ``B`` (exact weighted half-space
    projection in the box); the farthest of ``B + a (Y - B)``, ``a = 1, 1/2, 1/4, 1/8``, the
    estimator confirms (all no farther than ``B``, by convexity) is bisected back toward the
    row. Kept only when verified and closer. Returns ``(points, dist)``."""
    from invaudit.counterfactual._nl_common import distance
    from invaudit.counterfactual._nl_smooth import project_tangent

    X0, t, w, norm = prob.X, prob.target, prob.weights, prob.norm
    B = B.copy()
    dist = np.where(np.all(np.isfinite(B), axis=1), distance(np.nan_to_num(B) - X0, w, norm), np.inf)
    active = np.flatnonzero(np.isfinite(dist) & (dist > 0))
    alphas = np.array([1.0, 0.5, 0.25, 0.125])
    pushes = np.array([0.01, 0.1])
    D = X0.shape[1]
    for _ in range(rounds):
        if active.size == 0:
            break
        Ba, Xa = B[active], X0[active]
        inner = Ba - 1e-7 * (Ba - Xa)
        Vb, Jb = form.pair_jacobian(Ba)
        Vi = form.pair_values(inner)
        flip = (Vb > 0) != (Vi > 0)
        gn = np.linalg.norm(Jb, axis=2) + 1e-300
        # the flipping machine nearest to zero (else, the machine nearest to zero at all)
        key = np.where(flip, np.abs(Vb) / gn, np.inf)
        none = ~np.isfinite(key).any(axis=1)
        key[none] = (np.abs(Vb) / gn)[none]
        q = np.argmin(key, axis=1)
        ra = np.arange(active.size)
        # the tangent polyhedron of B's vote pattern: every machine that a move of the current
        # distance could flip keeps its side (the flipping one, at least, is binding)
        sgn = np.where(Vb > 0, 1.0, -1.0)
        hair = 1e-9 * (1.0 + np.abs(Vb).max(axis=1))
        reach = (np.abs(Vb) / gn <= 2.0 * dist[active][:, None]) | (np.arange(Vb.shape[1])[None, :] == q[:, None])
        C = np.where(reach, sgn * Vb - hair[:, None], 1.0)
        G = np.where(reach[:, :, None], sgn[:, :, None] * Jb, 0.0)
        Y, okp = project_tangent(Xa, Ba, C, G, prob.lower[active], prob.upper[active], w, norm)
        sd = np.where(okp, distance(Y - Xa, w, norm), np.inf)
        cand = np.isfinite(sd) & (sd < dist[active] * (1 - 1e-9))
        if not cand.any():
            break
        ci = np.flatnonzero(cand)
        Y = Y[ci]
        # candidates: toward Y from B (closer than B by convexity), and Y pushed radially away
        # from the row by a little (the boundary curves: the tangent point itself may fall just
        # outside); each confirmed one is bisected back toward the row, the closest kept
        P = np.concatenate([Ba[ci][:, None, :] + alphas[None, :, None] * (Y - Ba[ci])[:, None, :],
                            Xa[ci][:, None, :] + (1.0 + pushes)[None, :, None] * (Y - Xa[ci])[:, None, :]],
                           axis=1)
        P = np.clip(P, prob.lower[active[ci]][:, None, :], prob.upper[active[ci]][:, None, :])
        m = P.shape[1]
        ok = qualifies(form, P.reshape(-1, D), np.repeat(t[active[ci]], m), None)[0]
        improved = np.zeros(active.size, dtype=bool)
        if ok.any():
            ii, jj = np.divmod(np.flatnonzero(ok), m)
            nb, _ = bisect_to_target(form, Xa[ci[ii]], P[ii, jj], t[active[ci[ii]]], None, steps=bisect)
            nd = distance(nb - Xa[ci[ii]], w, norm)
            # the closest per row
            order = np.lexsort((nd, ii))
            first = order[np.r_[True, ii[order][1:] != ii[order][:-1]]]
            loc = ci[ii[first]]
            better = nd[first] < dist[active[loc]] * (1 - 1e-6)
            rows = active[loc[better]]
            B[rows] = nb[first][better]
            dist[rows] = nd[first][better]
            improved[loc[better]] = True
        active = active[improved]
    return B, dist


def _ball_rounds(prob: Problem, best, bd, *, samples: int = 48, rounds: int = 4):
    """Random points strictly inside each row's current distance that the estimator already puts
    in the target class reveal nearer regions the boundary walks missed (the RBF machines' regions
    are not convex); each is bisected toward the row and refined. Deterministic in ``prob.seed``."""
    from invaudit.counterfactual._nl_common import distance

    rng = np.random.default_rng(prob.seed)
    n, D = prob.X.shape
    w = prob.weights
    for _ in range(rounds):
        rows = np.flatnonzero(np.isfinite(bd) & (bd > 0))
        if rows.size == 0:
            break
        dirs = rng.standard_normal((rows.size, samples, D)) / w
        if prob.norm == "l1":
            dirs = dirs * rng.exponential(size=dirs.shape) ** 2  # sparser directions
        dirs /= np.maximum(distance(dirs, w, prob.norm)[:, :, None], 1e-300)
        # half the radii anywhere inside, half in the outer shell, where a nearer piece of the
        # region most often is
        u = np.where(np.arange(samples)[None, :] % 2 == 0, rng.uniform(0.2, 0.97, size=(rows.size, samples)),
                     rng.uniform(0.9, 0.995, size=(rows.size, samples)))
        rad = bd[rows][:, None] * u
        P = np.clip(prob.X[rows][:, None, :] + dirs * rad[:, :, None], prob.lower[rows][:, None, :],
                    prob.upper[rows][:, None, :])
        ok = qualifies(prob.form, P.reshape(-1, D), np.repeat(prob.target[rows], samples), None)[0]
        ok = ok.reshape(rows.size, samples)
        hit = ok.any(axis=1)
        if not hit.any():
            break
        hr = rows[hit]
        # the hit nearest to its row, per row
        dh = np.where(ok[hit], rad[hit], np.inf)
        E = P[np.flatnonzero(hit), np.argmin(dh, axis=1)]
        sub = prob.subset(hr)
        E, _ = bisect_to_target(prob.form, sub.X, E, sub.target, None)
        E, de = refine_boundary(prob.form, sub, E)
        better = de < bd[hr]
        best[hr[better]] = E[better]
        bd[hr[better]] = de[better]
    return best, bd


def _polish(prob: Problem, best, bd, *, maxiter: int = 100):
    """SLSQP (:class:`._nl_smooth._RowProblem`) on "the target wins all its machines" from each
    row's best point, which handles the corners where several machines meet; kept when the
    estimator confirms it and it is closer."""
    from invaudit.counterfactual._nl_smooth import _pick_verified, _RowProblem, score_tau

    n, D = prob.X.shape
    rows = np.flatnonzero(np.isfinite(bd))
    if rows.size == 0:
        return best, bd
    out = np.full((rows.size, 1, D), np.nan)
    for cls in np.unique(prob.target[rows]):  # a loop over classes
        model = KernelScoreModel(prob.form, int(cls))
        rc = rows[prob.target[rows] == cls]
        tau = score_tau(model.scores(prob.X[rc]))
        for k, i in enumerate(rc):  # the documented per-row loop: SLSQP polish
            rp = _RowProblem(model, prob.X[i], prob.lower[i], prob.upper[i], prob.weights, prob.norm,
                             int(cls), None, float(tau[k]))
            out[np.searchsorted(rows, i), 0], _ = rp.solve(best[i], maxiter, scale=bd[i])
    sub = prob.subset(rows)
    x2, d2 = _pick_verified(sub, out, sub.lower, sub.upper)
    better = d2 < bd[rows]
    best[rows[better]] = x2[better]
    bd[rows[better]] = d2[better]
    return best, bd


def _solve_multiclass(prob: Problem, starts: np.ndarray, *, method: str) -> Answers:
    """More than two classes: pulled starts and a targeted step across the machines, each
    refined along the true boundary (:func:`refine_boundary`); the closest verified point."""
    n, D = prob.n, prob.d
    ans = Answers(n, D)
    cross, found = _step_across(prob.form, prob, prob.target)
    if found.any():
        rows = np.flatnonzero(found)
        cross[rows], _ = bisect_to_target(prob.form, prob.X[rows], cross[rows], prob.target[rows], None)
    cands = np.concatenate([cross[:, None, :], starts], axis=1)     # (n, c, D)
    c = cands.shape[1]
    flat = cands.reshape(n * c, D)
    ri = np.repeat(np.arange(n), c)
    rep = prob.subset(ri)
    pts, dist = refine_boundary(prob.form, rep, flat)
    dist = dist.reshape(n, c)
    pick = np.argmin(dist, axis=1)
    r = np.arange(n)
    best = pts.reshape(n, c, D)[r, pick]
    bd = dist[r, pick]
    best, bd = _ball_rounds(prob, best, bd)
    best, bd = _polish(prob, best, bd)
    have = np.isfinite(bd)
    n_runs = np.all(np.isfinite(cands), axis=2).sum(axis=1)
    backing = np.array([f"verified by the estimator; best of {int(k)} starts (boundary search along the "
                        "one-vs-one machines)" for k in n_runs], dtype=object)
    ans.offer(np.flatnonzero(have), best[have], bd[have], prob.target[have], method, exact=False,
              backing=backing[have])
    ans.fail(np.flatnonzero(~have), "no start reached a point the estimator confirms as the target")
    return ans


def solve_kernel(prob: Problem, *, n_pull: int = 3, maxiter: int = 100, progress_offset: int = 0,
                 progress_total=None) -> Answers:
    """Closest verified counterfactual of every row for a KernelForm (module docstring)."""
    n, D = prob.n, prob.d
    if prob.P is not None:
        from invaudit.counterfactual._nl_blackbox import solve_blackbox

        return solve_blackbox(prob, progress_offset=progress_offset, progress_total=progress_total)
    ans = Answers(n, D)
    if n == 0:
        return ans
    # more starts than for a network: the pulled support vectors are cheap and the decision
    # function of an RBF machine has many small islands
    starts = kernel_starts(prob, max(n_pull, 5))
    if prob.form.n_classes > 2:
        ans = _solve_multiclass(prob, starts, method="kernel-boundary-search+refinement")
        if prob.progress is not None:
            prob.progress(progress_offset + n, progress_total if progress_total is not None else n)
        return ans
    total = progress_total if progress_total is not None else n
    done = 0
    for cls in np.unique(prob.target):  # a loop over classes: one score model per target
        rows = np.flatnonzero(prob.target == cls)
        sub = prob.subset(rows)
        a = solve_smooth(KernelScoreModel(prob.form, int(cls)), sub, starts=starts[rows],
                         method=METHOD, maxiter=maxiter, polish=1,
                         progress_offset=progress_offset + done, progress_total=total)
        done += len(rows)
        for name in ("x_cf", "dist", "state", "reason", "exact", "method", "kkt", "iters", "target",
                     "backing", "lower_bound"):
            getattr(ans, name)[rows] = getattr(a, name)
    # the SQP is local: random points inside each answer's distance that are already the target
    # reveal nearer pieces of the (non-convex) target region; polished again where they help
    have = np.flatnonzero(ans.state == "found")
    if have.size:
        sub = prob.subset(have)
        best, bd = _ball_rounds(sub, ans.x_cf[have].copy(), ans.dist[have].copy())
        moved = np.flatnonzero(bd < ans.dist[have] * (1 - 1e-9))
        if moved.size:
            sm = sub.subset(moved)
            b2, d2 = _polish(sm, best[moved], bd[moved])
            ans.offer(have[moved], b2, d2, sub.target[moved], METHOD + "+ball-search", exact=False,
                      backing=np.full(moved.size, "verified by the estimator; boundary search + SQP from "
                                      "several starts, then points sampled inside the answer's distance, "
                                      "refined and polished (SLSQP)", dtype=object))
    return ans
