"""Counterfactuals for black boxes: queries only, so a verified upper bound and nothing more.

1. **Segments.** The reference rows (training data, else the batch) that the estimator puts in
   the target class (at ``p >= P``) are endpoints; the ``n_endpoints`` nearest to each row, in
   the metric and clipped into its box (and still confirmed there), are pulled toward the row by
   bisection on the segment (:func:`._nl_common.bisect_to_target`): each result is a verified
   target point near a boundary crossing. Without any endpoint, random points at doubling radii
   around the row (inside its box) are tried instead.
2. **Local search** from the closest verified point ``b``: proposals ``b + sigma u`` (``u`` a
   random direction, unit length in the metric) and ``b`` with a random subset of its changed
   features reset to the row (sparser moves, which matters for L1); each proposal the estimator
   confirms is pulled toward the row by bisection and kept if closer. ``sigma`` grows after a
   success and shrinks after a failure (a (1+1) evolution strategy with the one-fifth-rule
   spirit; Rechenberg 1973). Vectorised over rows: one ``predict`` call per step for all rows.

Every returned point is confirmed by the estimator's own ``predict`` (and ``predict_proba``);
``exact`` is always False and there is no lower bound.

**Time limit.** Rows are searched together (one ``predict`` per step for all of them), so a time
limit stops the batch: the segments of step 1 always run (they give the first verified answers),
then the local search stops at the first round that starts after the limit; a row still being
improved then keeps its best verified point, and its ``method`` and ``backing`` say that the limit
stopped it and after how many rounds. Without a limit the search is deterministic for a seed.
"""

from __future__ import annotations

import time

import numpy as np

from invaudit.counterfactual._nl_common import (
    Answers,
    Problem,
    bisect_to_target,
    distance,
    pulled_points,
    qualifies,
)

__all__ = ["solve_blackbox", "local_search"]


def _unit_directions(rng, shape, w, norm):
    """Random directions with unit length in the metric ``||w * u||_norm``."""
    g = rng.standard_normal(shape)
    return g / np.maximum(distance(g, 1.0, norm), 1e-300)[..., None] / w


def row_rng(seed: int, x: np.ndarray):
    """A random generator of the row's own: seeded by ``seed`` and the row's bytes, so that its
    draws do not depend on where (or with which other rows) the row is solved."""
    words = np.frombuffer(np.ascontiguousarray(x, dtype=np.float64).tobytes(), dtype=np.uint32)
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *words.tolist()]))


def local_search(prob: Problem, B: np.ndarray, dB: np.ndarray, *, rounds: int = 25,
                 n_proposals: int = 12, steps: int = 14, progress=None, offset: int = 0,
                 total=None, per_row_rng: bool = False, stop_at: float | None = None):
    """Improve verified target points ``B`` (``dB`` their distances; NaN / inf rows skipped) by the
    local search of the module docstring. Returns the improved ``(B, dB)``.

    ``per_row_rng``: every row draws from its own generator (:func:`row_rng`), so a row's answer
    does not depend on the batch; still one ``predict`` per round for all rows. ``stop_at``: a
    ``time.perf_counter()`` value after which no new round starts."""
    B, dB, _, _ = _local_search(prob, B, dB, rounds=rounds, n_proposals=n_proposals, steps=steps,
                                progress=progress, offset=offset, total=total, per_row_rng=per_row_rng,
                                stop_at=stop_at)
    return B, dB


def _local_search(prob: Problem, B: np.ndarray, dB: np.ndarray, *, rounds: int, n_proposals: int,
                  steps: int, progress, offset: int, total, per_row_rng: bool, stop_at):
    """:func:`local_search`, also returning the rounds run and a mask of the rows the time limit
    stopped while they were still being improved: ``(B, dB, rounds_run, cut)``."""
    X0 = prob.X
    n, D = X0.shape
    w = prob.weights
    rng = np.random.default_rng(prob.seed)
    B = B.copy()
    dB = dB.copy()
    cut = np.zeros(n, dtype=bool)
    rows = np.flatnonzero(np.isfinite(dB) & (dB > 0))
    if len(rows) == 0:
        return B, dB, 0, cut
    rngs = {int(i): row_rng(prob.seed, X0[i]) for i in rows} if per_row_rng else None
    sigma = 0.3 * dB[rows]
    Q = n_proposals
    half = Q // 2
    run = 0
    for rd in range(rounds):
        if stop_at is not None and time.perf_counter() >= stop_at:
            cut[rows] = True  # still improving when the time ran out
            break
        run = rd + 1
        m = len(rows)
        x0 = X0[rows]
        b = B[rows]
        # proposals: a random step around b, and b with a random subset of changes undone
        if rngs is None:
            u = _unit_directions(rng, (m, half, D), w, prob.norm)
            P1 = b[:, None, :] + sigma[:, None, None] * u
            reset = rng.random((m, Q - half, D)) < rng.uniform(0.1, 0.6, size=(m, Q - half, 1))
            P2 = np.where(reset, x0[:, None, :], b[:, None, :])
            prop = np.concatenate([P1, P2], axis=1)
        else:
            prop = np.empty((m, Q, D))
            for a, i in enumerate(rows):  # a loop over rows for the draws only
                g = rngs[int(i)]
                u = _unit_directions(g, (half, D), w, prob.norm)
                prop[a, :half] = b[a] + sigma[a] * u
                reset = g.random((Q - half, D)) < g.uniform(0.1, 0.6, size=(Q - half, 1))
                prop[a, half:] = np.where(reset, x0[a], b[a])
        prop = np.clip(prop, prob.lower[rows][:, None, :], prob.upper[rows][:, None, :])
        flat = prop.reshape(m * Q, D)
        ri = np.repeat(rows, Q)
        ok = qualifies(prob.form, flat, prob.target[ri], prob.P)[0]
        improved = np.zeros(m, dtype=bool)
        if np.any(ok):
            pts, _ = bisect_to_target(prob.form, X0[ri[ok]], flat[ok], prob.target[ri[ok]],
                                      prob.P, steps=steps)
            d = distance(pts - X0[ri[ok]], w, prob.norm)
            cand_d = np.full(m * Q, np.inf)
            cand_d[np.flatnonzero(ok)] = d
            cand = np.full((m * Q, D), np.nan)
            cand[np.flatnonzero(ok)] = pts
            cand_d = cand_d.reshape(m, Q)
            k = np.argmin(cand_d, axis=1)
            best = cand_d[np.arange(m), k]
            improved = best < dB[rows] * (1.0 - 1e-12)
            B[rows[improved]] = cand.reshape(m, Q, D)[np.arange(m), k][improved]
            dB[rows[improved]] = best[improved]
        sigma = np.where(improved, sigma * 1.5, sigma * 0.6)
        sigma = np.minimum(sigma, dB[rows])
        keep = sigma > 1e-9 * np.maximum(dB[rows], 1e-300)
        rows, sigma = rows[keep], sigma[keep]
        if progress is not None:
            progress(offset + rd + 1, total)
        if len(rows) == 0:
            break
    return B, dB, run, cut


def _random_endpoints(prob: Problem, rows, rng, tries: int = 16, doublings: int = 12):
    """Verified target points for rows without reference endpoints: random points at doubling
    radii (in the metric) around the row, inside its box. ``(points, found)``."""
    X0 = prob.X[rows]
    m, D = X0.shape
    w = prob.weights
    out = np.full((m, D), np.nan)
    found = np.zeros(m, dtype=bool)
    scale = np.maximum(distance(X0 * w, 1.0, prob.norm), 1.0) * 0.01
    for _ in range(doublings):
        todo = np.flatnonzero(~found)
        if len(todo) == 0:
            break
        u = _unit_directions(rng, (len(todo), tries, D), w, prob.norm)
        P = X0[todo][:, None, :] + scale[todo][:, None, None] * u
        P = np.clip(P, prob.lower[rows[todo]][:, None, :], prob.upper[rows[todo]][:, None, :])
        ok = qualifies(prob.form, P.reshape(-1, D), np.repeat(prob.target[rows[todo]], tries),
                       prob.P)[0].reshape(len(todo), tries)
        hit = ok.any(axis=1)
        k = np.argmax(ok, axis=1)
        out[todo[hit]] = P[np.arange(len(todo)), k][hit]
        found[todo[hit]] = True
        scale[todo] *= 4.0
    return out, found


def solve_blackbox(prob: Problem, *, n_endpoints: int = 8, rounds: int = 25,
                   progress_offset: int = 0, progress_total=None, time_limit: float | None = None,
                   deadline: float | None = None) -> Answers:
    """Closest verified counterfactual found by queries (module docstring).

    ``time_limit``: seconds for the search of these rows (together); ``deadline``: a
    ``time.perf_counter()`` value for the whole run. Either stops the local search (module
    docstring, "Time limit"); None for both: the full search."""
    started = time.perf_counter()
    stop_at = None if time_limit is None else started + max(float(time_limit), 0.0)
    if deadline is not None:
        stop_at = float(deadline) if stop_at is None else min(stop_at, float(deadline))
    n, D = prob.X.shape
    ans = Answers(n, D)
    if n == 0:
        return ans
    rng = np.random.default_rng(prob.seed)
    pts = pulled_points(prob, n_endpoints)  # (n, k, D), verified
    fin = np.all(np.isfinite(pts), axis=2)
    d = np.where(fin, distance(np.nan_to_num(pts) - prob.X[:, None, :], prob.weights, prob.norm),
                 np.inf)
    k = np.argmin(d, axis=1) if d.shape[1] else np.zeros(n, dtype=np.intp)
    B = np.full((n, D), np.nan)
    dB = np.full(n, np.inf)
    if d.shape[1]:
        B = pts[np.arange(n), k]
        dB = d[np.arange(n), k]
    none = np.flatnonzero(~np.isfinite(dB))
    if len(none):
        E, found = _random_endpoints(prob, none, rng)
        if np.any(found):
            r = none[found]
            pulled, _ = bisect_to_target(prob.form, prob.X[r], E[found], prob.target[r], prob.P)
            B[r] = pulled
            dB[r] = distance(pulled - prob.X[r], prob.weights, prob.norm)
    total = progress_total if progress_total is not None else n
    def report(done, _total):  # rounds -> rows, for a progress bar over rows
        prob.progress(progress_offset + (n * done) // rounds, total)

    B, dB, run, cut = _local_search(prob, B, dB, rounds=rounds, n_proposals=12, steps=14,
                                    progress=report if prob.progress is not None else None, offset=0,
                                    total=rounds, per_row_rng=False, stop_at=stop_at)
    if prob.progress is not None:
        prob.progress(progress_offset + n, total)
    have = np.isfinite(dB)
    ok = np.zeros(n, dtype=bool)
    if np.any(have):
        ok[have] = qualifies(prob.form, B[have], prob.target[have], prob.P)[0]
    method = np.full(n, "segment-bisection+local-search", dtype=object)
    backing = np.full(n, "verified by the estimator; an upper bound from queries (no lower bound)", dtype=object)
    stopped = f"the time limit stopped the search after {run} of {rounds} rounds"
    method[cut] = f"segment-bisection+local-search ({stopped})"
    backing[cut] = backing[cut] + "; " + stopped
    ans.offer(np.flatnonzero(ok), B[ok], dB[ok], prob.target[ok], method[ok],
              exact=False, iters=run if cut.any() else rounds, backing=backing[ok])
    ans.fail(np.flatnonzero(~ok), "no point of the target class was found by queries "
             "(pass --train so that reference rows of that class can be searched toward)",
             method="segment-bisection+local-search")
    return ans
