"""Causal responsibility of input features from random occlusions (ReX / MultiReX).

Iterative random partition refinement (Chockler, Kelly, Kroening et al., "Multiple different
black box explanations for image classifiers", Sec. 3; Chockler, Kroening & Sun, "Explanations
for occluded images", ICCV 2021, Alg. 1):

1. A *node* is a region ``R`` of features and a context ``C`` (features kept outside ``R``),
   with ``C | R`` sufficient and ``C`` alone not. The root is (all features, nothing).
2. ``R`` is split at random into ``N = 4`` parts ``P_1..P_4`` (rectangles for images, random
   subsets for tabular data). The model is queried, in one batch for every node of a level, on
   the 14 mutants that keep ``C`` plus a proper non-empty subset of the parts
   (``f(S) = sufficient(C | union of P_i, i in S)``; ``f(all) = 1`` and ``f(none) = 0`` are known).
3. The degree of responsibility of part ``P_i`` (Chockler & Halpern 2004, Def. 3.1) is
   ``r_i = 1 / (1 + k)`` where ``k`` is the size of the smallest set ``W`` of other parts such
   that removing ``W`` keeps the label and removing ``W`` and ``P_i`` loses it
   (``f(all minus W) = 1`` and ``f(all minus W minus {i}) = 0``); ``r_i = 0`` if no such ``W``.
4. Every part with ``r_i > 0`` and more than one feature is refined: it becomes a node whose
   context is ``C`` plus the other parts of its witness ``all minus W``, so that the invariant of
   step 1 holds again. Refinement stops at single features.

A feature's responsibility in one iteration is that of the smallest part containing it that was
evaluated (zero as soon as a part containing it is not a cause); the map is the mean over
``iterations`` independent random partitions. A feature that never changes the prediction in any
context therefore gets exactly zero.
"""

from __future__ import annotations

import numpy as np

from invaudit.explain import _random

N_PARTS = 4
_FULL = (1 << N_PARTS) - 1
_MAX_DEPTH = 26  # node paths are base-5 integers in uint64

# SUBSETS[s, i]: is part i in subset s (bitmask s)?
SUBSETS = ((np.arange(1 << N_PARTS)[:, None] >> np.arange(N_PARTS)[None, :]) & 1).astype(bool)


def _lattice():
    """For each part i and each set W of other parts: kept = all - W, minus = kept - {i}, |W|."""
    n_w = 1 << (N_PARTS - 1)
    kept = np.zeros((N_PARTS, n_w), dtype=np.intp)
    minus = np.zeros_like(kept)
    pop = np.zeros((N_PARTS, n_w), dtype=np.float64)
    for i in range(N_PARTS):
        others = [j for j in range(N_PARTS) if j != i]
        for t in range(n_w):
            W = sum(1 << others[bit] for bit in range(N_PARTS - 1) if (t >> bit) & 1)
            kept[i, t] = _FULL & ~W
            minus[i, t] = kept[i, t] & ~(1 << i)
            pop[i, t] = bin(W).count("1")
    return kept, minus, pop


_KEPT, _MINUS, _POP = _lattice()


def part_responsibility(f: np.ndarray, tie: np.ndarray):
    """Degree of responsibility of each part from the truth table of one split.

    Parameters
    ----------
    f : ndarray of bool, shape (M, 16)
        ``f[m, s]``: is the mutant keeping the context and the parts in bitmask ``s`` sufficient.
    tie : ndarray of float in [0, 1), shape (M, 4, 8)
        Random tie-break between witnesses of the same size.

    Returns
    -------
    r : ndarray of shape (M, 4)
        ``1 / (1 + k)`` with ``k`` the smallest witness size, 0 where part i is no cause.
    kept : ndarray of int, shape (M, 4)
        Bitmask of the parts kept in the chosen witness (contains ``i`` when ``r > 0``).
    """
    cond = f[:, _KEPT] & ~f[:, _MINUS]  # (M, 4, 8)
    key = np.where(cond, _POP[None] + 0.5 * tie, np.inf)
    best = np.argmin(key, axis=2)  # (M, 4)
    any_cause = cond.any(axis=2)
    k = np.take_along_axis(np.broadcast_to(_POP, key.shape), best[..., None], axis=2)[..., 0]
    r = np.where(any_cause, 1.0 / (1.0 + k), 0.0)
    kept = _KEPT[np.arange(N_PARTS)[None, :], best]
    return r, kept


def _split_tabular(region, rid, it, path, seed):
    """Random partition of each node's region into min(4, |R|) parts of near-equal size."""
    M, D = region.shape
    keys = _random.uniform(seed, _random.STREAM_PARTITION, rid[:, None], it[:, None],
                           path[:, None], np.arange(D)[None, :])
    keys = np.where(region, keys, 2.0)
    rank = np.argsort(np.argsort(keys, axis=1, kind="stable"), axis=1, kind="stable")
    n_r = region.sum(axis=1)
    n_p = np.minimum(N_PARTS, n_r)
    label = rank * n_p[:, None] // np.maximum(n_r, 1)[:, None]
    parts = region[:, None, :] & (label[:, None, :] == np.arange(N_PARTS)[None, :, None])
    return parts, None


def _random_cuts(length, n_cuts, keys):
    """``(M, 3)`` sorted cuts in ``1..length-1``: ``n_cuts`` real ones, the rest ``= length``."""
    pos = np.arange(1, keys.shape[1] + 1)[None, :]
    keys = np.where(pos < length[:, None], keys, np.inf)
    chosen = np.argsort(keys, axis=1, kind="stable")[:, : N_PARTS - 1] + 1
    cuts = np.where(np.arange(N_PARTS - 1)[None, :] < n_cuts[:, None], chosen, length[:, None])
    return np.sort(cuts, axis=1)


def _split_image(box, rid, it, path, seed, shape):
    """Split each node's box into 4 rectangles by random cuts (2 x 2, or 1 x 4 / 4 x 1 strips)."""
    H, W = shape
    rows = np.repeat(np.arange(H), W)
    cols = np.tile(np.arange(W), H)
    r0, r1, c0, c1 = box.T
    h, w = r1 - r0, c1 - c0
    both = (h >= 2) & (w >= 2)
    a = np.where(both, 2, np.where(h == 1, 1, np.minimum(N_PARTS, h)))
    b = np.where(both, 2, np.where(h == 1, np.minimum(N_PARTS, w), 1))
    width = max(H, W, N_PARTS)
    keys = _random.uniform(seed, _random.STREAM_PARTITION, rid[:, None], it[:, None],
                           path[:, None], np.arange(2 * width)[None, :])
    rcuts = _random_cuts(h, a - 1, keys[:, :width])
    ccuts = _random_cuts(w, b - 1, keys[:, width:])
    pr = rows[None, :] - r0[:, None]
    pc = cols[None, :] - c0[:, None]
    inbox = (pr >= 0) & (pr < h[:, None]) & (pc >= 0) & (pc < w[:, None])
    rp = (rcuts[:, :, None] <= pr[:, None, :]).sum(axis=1)
    cp = (ccuts[:, :, None] <= pc[:, None, :]).sum(axis=1)
    pidx = rp * b[:, None] + cp
    parts = inbox[:, None, :] & (pidx[:, None, :] == np.arange(N_PARTS)[None, :, None])
    # child boxes
    zeros = np.zeros((box.shape[0], 1), dtype=rcuts.dtype)
    redges = np.concatenate([zeros, rcuts, h[:, None]], axis=1)
    cedges = np.concatenate([zeros, ccuts, w[:, None]], axis=1)
    j = np.arange(N_PARTS)[None, :]
    jr = np.minimum(j // b[:, None], N_PARTS - 1)
    jc = np.minimum(j % b[:, None], N_PARTS - 1)
    child = np.stack([
        r0[:, None] + np.take_along_axis(redges, jr, axis=1),
        r0[:, None] + np.take_along_axis(redges, jr + 1, axis=1),
        c0[:, None] + np.take_along_axis(cedges, jc, axis=1),
        c0[:, None] + np.take_along_axis(cedges, jc + 1, axis=1),
    ], axis=2)  # (M, 4, 4)
    return parts, child


def responsibility_maps(oracle, rows, n_features, *, iterations, seed, row_ids, shape=None,
                        max_refine=N_PARTS, clock=None):
    """Responsibility maps for the rows ``rows`` (positions in the oracle's ``X``).

    Parameters
    ----------
    oracle : SufficiencyOracle
    rows : ndarray of int, shape (n,)
        Oracle row positions whose full input is sufficient and whose baseline is not.
    n_features : int
    iterations : int
        Independent random partitions per row (all refined together, one model call per level).
    seed : int
    row_ids : ndarray of int, shape (n,)
        The rows' numbers in the user's data: the random partitions are a function of
        ``(seed, row_id)`` only.
    shape : (H, W) or None
        Image grid: rectangles instead of random subsets.
    max_refine : int
        At most this many responsible parts of each node are refined (the most responsible).
    clock : optional
        The search's time limit, asked after each level (``clock.stop("responsibility", rows)``
        True: stop refining). The first level is always evaluated; a stopped map gives each
        feature the responsibility of the smallest part containing it evaluated so far.

    Returns
    -------
    resp : ndarray of shape (n, D)
        Mean leaf responsibility over iterations, in [0, 1].
    coarse : ndarray of shape (n, D)
        Mean over iterations of the responsibility summed over all levels (a tie-break for
        ranking features whose leaf responsibility is equal).
    """
    n, D = len(rows), n_features
    I = int(iterations)
    V = np.zeros((n * I, D))
    S = np.zeros((n * I, D))
    if n == 0:
        return V.reshape(n, D), S.reshape(n, D)
    # node state; `node` indexes 0..n-1 (position in `rows`), `it` the iteration
    node = np.repeat(np.arange(n), I)
    it = np.tile(np.arange(I), n)
    path = np.zeros(n * I, dtype=np.uint64)
    context = np.zeros((n * I, D), dtype=bool)
    region = np.ones((n * I, D), dtype=bool)
    box = None
    if shape is not None:
        box = np.tile(np.array([0, shape[0], 0, shape[1]]), (n * I, 1))
    row_ids = np.asarray(row_ids, dtype=np.int64)
    depth = 0
    while node.size and depth < _MAX_DEPTH:
        rid_user = row_ids[node]
        if shape is None:
            parts, child_box = _split_tabular(region, rid_user, it, path, seed)
        else:
            parts, child_box = _split_image(box, rid_user, it, path, seed, shape)
        M = node.size
        keep = np.matmul(SUBSETS[1:_FULL].astype(np.uint8)[None], parts.astype(np.uint8)) > 0
        keep |= context[:, None, :]  # (M, 14, D)
        res = oracle(np.repeat(rows[node], _FULL - 1), keep.reshape(-1, D))
        f = np.zeros((M, _FULL + 1), dtype=bool)
        f[:, _FULL] = True
        f[:, 1:_FULL] = res.reshape(M, _FULL - 1)
        tie = _random.uniform(seed, _random.STREAM_WITNESS, rid_user[:, None, None],
                              it[:, None, None], path[:, None, None],
                              np.arange(N_PARTS * 8).reshape(1, N_PARTS, 8))
        r, kept = part_responsibility(f, tie)
        # leaf values: the deepest evaluated part overwrites its ancestors' value
        val = np.einsum("mi,mid->md", r, parts.astype(np.float64))
        mi, fi = np.nonzero(region)
        flat = node[mi] * I + it[mi]
        V[flat, fi] = val[mi, fi]
        S[flat, fi] += val[mi, fi]
        # which parts to refine
        size = parts.sum(axis=2)
        cand = (r > 0) & (size > 1)
        if max_refine < N_PARTS:
            order_key = np.where(cand, -r - 1e-3 * tie[:, :, 0], np.inf)
            rank = np.argsort(np.argsort(order_key, axis=1, kind="stable"), axis=1)
            cand &= rank < max_refine
        pm, pi = np.nonzero(cand)
        if pm.size == 0:
            break
        others = kept[pm, pi] & ~(1 << pi)
        sel = SUBSETS[others]  # (C, 4)
        ctx = context[pm] | (sel[:, :, None] & parts[pm]).any(axis=1)
        region = parts[pm, pi]
        context = ctx
        node, it = node[pm], it[pm]
        path = path[pm] * np.uint64(N_PARTS + 1) + (pi + 1).astype(np.uint64)
        if box is not None:
            box = child_box[pm, pi]
        depth += 1
        if clock is not None and depth < _MAX_DEPTH and clock.stop("responsibility", np.unique(rows[node])):
            break
    return V.reshape(n, I, D).mean(axis=1), S.reshape(n, I, D).mean(axis=1)
