"""Minimal sufficient explanations: responsibility-ordered growth, 1-minimisation, spotlights,
and the overlap filter (MultiReX, Chockler, Kelly, Kroening et al., Sec. 4).

Every function here works on a batch of *candidates* -- a (row, allowed-set) pair each -- and
sends all mutants of one step to the oracle in a single call.
"""

from __future__ import annotations

import math

import numpy as np

from invaudit.explain import _random


def _group_arange(counts: np.ndarray) -> np.ndarray:
    """``[0..counts[0]-1, 0..counts[1]-1, ...]`` without a Python loop."""
    total = int(counts.sum())
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total) - starts


def feature_ranks(resp, coarse, X, baseline):
    """``rank[i, f]``: position of feature ``f`` in row ``i``'s responsibility order (0 = most).

    Ties in the leaf responsibility are broken by the responsibility summed over refinement
    levels, then by how far the feature is from the baseline, then by feature index.
    """
    n, D = resp.shape
    dist = np.abs(X - baseline)  # baseline (D,) or one per row (n, D)
    dist[np.isnan(dist)] = np.inf  # a blank (NaN) value is as far from the baseline as it gets
    idx = np.broadcast_to(np.arange(D), (n, D))
    # np.lexsort sorts by the last key first
    order = np.lexsort((idx, -dist, -coarse, -resp), axis=1)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(D), (n, D)), axis=1)
    return rank


def grow(oracle, rid, allowed, rank):
    """Smallest sufficient prefix of each candidate's allowed features in responsibility order.

    Prefixes are tested in one batch (two batches when a candidate has more than 16 allowed
    features: every ``ceil(sqrt(n))``-th prefix first, then the prefixes just before the first
    sufficient one).

    Returns
    -------
    sets : ndarray of bool, shape (C, D)
    found : ndarray of bool, shape (C,)
        False where even keeping every allowed feature is not sufficient.
    """
    C, D = allowed.shape
    key = np.where(allowed, rank[rid], D + np.arange(D)[None, :])
    local = np.argsort(np.argsort(key, axis=1, kind="stable"), axis=1, kind="stable")
    n_allowed = allowed.sum(axis=1)
    step = np.where(n_allowed > 16, np.ceil(np.sqrt(n_allowed)).astype(np.int64), 1)
    step = np.maximum(step, 1)
    counts = np.where(n_allowed > 0, -(-n_allowed // step), 0)
    cidx = np.repeat(np.arange(C), counts)
    js = np.minimum((_group_arange(counts) + 1) * step[cidx], n_allowed[cidx])
    ok = oracle(rid[cidx], local[cidx] < js[:, None])
    first = np.full(C, np.iinfo(np.int64).max)
    np.minimum.at(first, cidx[ok], js[ok])
    found = first < np.iinfo(np.int64).max
    # second stage: the prefixes between the previous grid point and the first sufficient one
    fine = found & (step > 1)
    lo = np.where(fine, np.maximum(first - step + 1, 1), 0)
    counts2 = np.where(fine, first - lo, 0)
    if counts2.sum():
        c2 = np.repeat(np.arange(C), counts2)
        j2 = lo[c2] + _group_arange(counts2)
        ok2 = oracle(rid[c2], local[c2] < j2[:, None])
        np.minimum.at(first, c2[ok2], j2[ok2])
    sets = found[:, None] & (local < np.where(found, first, 0)[:, None])
    return sets, found


def minimise(oracle, rid, sets, rank, clock=None):
    """Shrink each sufficient set until removing any single feature breaks sufficiency.

    One pass tests every single removal of every unfinished candidate in one batch; where some
    removals keep sufficiency, the removable features are dropped cumulatively, least
    responsible first, as far as sufficiency holds (a second batch), and the pass repeats.
    A set is returned when a pass finds no removable feature: it is 1-minimal. Every set stays
    sufficient after each pass, so a ``clock`` (the search's time limit, asked before each
    pass) that stops the loop leaves sufficient sets that may not be 1-minimal yet.
    """
    sets = sets.copy()
    active = sets.any(axis=1)
    D = sets.shape[1]
    while active.any():
        if clock is not None and clock.stop("minimise", rid[active]):
            break
        a = np.nonzero(active)[0]
        ci, fi = np.nonzero(sets[a])
        masks = sets[a][ci]
        masks[np.arange(ci.size), fi] = False
        ok = oracle(rid[a][ci], masks)
        removable = np.zeros((a.size, D), dtype=bool)
        removable[ci[ok], fi[ok]] = True
        has = removable.any(axis=1)
        active[a[~has]] = False
        if not has.any():
            break
        a, removable = a[has], removable[has]
        # least responsible (largest rank) first
        key = np.where(removable, -rank[rid[a]], np.iinfo(np.int64).max)
        q = np.argsort(np.argsort(key, axis=1, kind="stable"), axis=1, kind="stable")
        n_rem = removable.sum(axis=1)
        best_t = np.ones(a.size, dtype=np.int64)  # removing the first one is known to work
        counts = np.maximum(n_rem - 1, 0)
        if counts.sum():
            c2 = np.repeat(np.arange(a.size), counts)
            t2 = _group_arange(counts) + 2
            m2 = sets[a[c2]] & ~(removable[c2] & (q[c2] < t2[:, None]))
            ok2 = oracle(rid[a[c2]], m2)
            np.maximum.at(best_t, c2[ok2], t2[ok2])
        sets[a] &= ~(removable & (q < best_t[:, None]))
    return sets


def explain_candidates(oracle, rid, allowed, rank, clock=None):
    """Grow then minimise: a 1-minimal sufficient set inside each allowed set, where one exists
    (sufficient but perhaps not 1-minimal when ``clock`` stops the minimisation)."""
    sets, found = grow(oracle, rid, allowed, rank)
    if found.any():
        f = np.nonzero(found)[0]
        sets[f] = minimise(oracle, rid[f], sets[f], rank, clock=clock)
    return sets, found


def image_windows(shape) -> np.ndarray:
    """Spotlight windows over an ``H x W`` grid: half- and three-quarter-size squares moved with
    a stride of half their size, and the four half-planes. ``(n_windows, H*W)`` bool."""
    H, W = shape
    specs = [
        (math.ceil(H / 2), math.ceil(W / 2)),
        (math.ceil(3 * H / 4), math.ceil(3 * W / 4)),
        (math.ceil(H / 2), W),
        (H, math.ceil(W / 2)),
    ]
    rows = np.repeat(np.arange(H), W)
    cols = np.tile(np.arange(W), H)
    out = []
    for h, w in specs:
        rpos = sorted(set(list(range(0, H - h + 1, max(1, h // 2))) + [H - h]))
        cpos = sorted(set(list(range(0, W - w + 1, max(1, w // 2))) + [W - w]))
        for r in rpos:
            for c in cpos:
                out.append((rows >= r) & (rows < r + h) & (cols >= c) & (cols < c + w))
    masks = np.unique(np.array(out, dtype=bool), axis=0)
    full = masks.all(axis=1)
    return masks[~full]


def random_spotlights(seed, row_ids, n_features, n_spots) -> np.ndarray:
    """``(n_rows, n_spots, D)`` random feature subsets of size ``ceil(D / 2)`` (tabular data)."""
    D = n_features
    keys = _random.uniform(seed, _random.STREAM_SPOTLIGHT,
                           np.asarray(row_ids, dtype=np.int64)[:, None, None],
                           np.arange(n_spots)[None, :, None], np.arange(D)[None, None, :])
    rank = np.argsort(np.argsort(keys, axis=2, kind="stable"), axis=2, kind="stable")
    return rank < math.ceil(D / 2)


def dice(sets: np.ndarray) -> np.ndarray:
    """Pairwise Dice coefficients ``2|A & B| / (|A| + |B|)`` of ``(..., C, D)`` boolean sets."""
    s = sets.astype(np.float64)
    inter = np.einsum("...cd,...ed->...ce", s, s)
    size = s.sum(axis=-1)
    tot = size[..., :, None] + size[..., None, :]
    return np.where(tot > 0, 2.0 * inter / np.where(tot > 0, tot, 1.0), 0.0)


def select(sets, valid, overlap, max_n):
    """Choose, per row, at most ``max_n`` candidates with pairwise Dice <= ``overlap``.

    A greedy maximum-independent-set heuristic on the conflict graph (an edge joins two
    candidates whose Dice coefficient exceeds ``overlap``): repeatedly take the candidate with
    the fewest conflicts among those still allowed (ties: the smaller set), then drop every
    candidate that conflicts with it. Exact duplicates count once.

    Parameters
    ----------
    sets : ndarray of bool, shape (n, C, D)
    valid : ndarray of bool, shape (n, C)

    Returns
    -------
    chosen : ndarray of bool, shape (n, C)
    """
    n, C, D = sets.shape
    dc = dice(sets)
    size = sets.sum(axis=2)
    same = dc >= 1.0 - 1e-12
    earlier = np.tril(np.ones((C, C), dtype=bool), k=-1)
    dup = (same & earlier[None]).any(axis=2)
    remaining = valid & ~dup & (size > 0)
    conflict = dc > overlap + 1e-12
    chosen = np.zeros((n, C), dtype=bool)
    rows = np.arange(n)
    for _ in range(int(max_n)):  # a loop over picks, vectorised over rows
        degree = (conflict & remaining[:, None, :]).sum(axis=2)
        key = np.where(remaining, degree * (D + 1) + size, np.iinfo(np.int64).max)
        c = np.argmin(key, axis=1)
        ok = remaining[rows, c]
        if not ok.any():
            break
        r, c = rows[ok], c[ok]
        chosen[r, c] = True
        remaining[r] &= ~conflict[r, c, :]
        remaining[r, c] = False
    return chosen
