"""Multiple minimal sufficient explanations for one prediction (MultiReX).

Chockler, Kelly, Kroening et al., "Multiple different black box explanations for image
classifiers". For a row ``x``, a baseline ``b`` and the class it is explained for, a set ``E``
of features is a *sufficient explanation* when the mutant ``where(E, x, b)`` (keep ``E``, every
other feature at the baseline) still gets the class -- and, with ``confidence=P``, with
probability at least ``P``. It is *1-minimal* when no single feature can be dropped from it.

The search:

1. causal responsibility of every feature from random occlusions
   (:mod:`invaudit.explain._responsibility`);
2. one explanation per *spotlight* (the whole input; windows over the image grid, or random
   feature subsets for tabular data): features of the spotlight are added in order of
   responsibility until the mutant is sufficient, then removed while it stays sufficient
   until it is 1-minimal (:mod:`invaudit.explain._search`);
3. the overlap filter keeps explanations whose pairwise Dice coefficient is at most
   ``overlap``; then the search is repeated on the features outside every kept explanation,
   which yields further explanations disjoint from all of them, until ``max_explanations`` are
   found or none is left;
4. every reported explanation is checked at the end with the model's own ``predict`` (and
   ``predict_proba``), both for sufficiency and for 1-minimality.

None of this is an optimum: the result is ``exact = False``; what backs each explanation is the
verified ``sufficient`` / ``minimal`` flags.

Anytime, under a time limit (``time_limit`` seconds per row, ``run_time_limit`` / ``run_deadline``
for the whole run). Rows are searched in batches of up to 32, which share a clock (``time_limit``
times the batch's rows). The clock is looked at between the steps, never inside a model call;
when it has run out, the step stops and the rows it was working on go on with what they have:
a responsibility map from the partitions refined so far (coarser parts, still each part's
degree of responsibility), the whole input as the only spotlight, explanations that are
sufficient but not yet 1-minimised, no further disjoint explanations. Step 4 always runs: every
reported explanation is still checked with the model's own ``predict``, and the row's ``method``
names what the limit cut short (``time_limited``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from numbers import Real
from typing import Callable, Optional, Sequence

import numpy as np

from invaudit.errors import InputError
from invaudit.explain import _search
from invaudit.explain._oracle import SufficiencyOracle, verify
from invaudit.explain._responsibility import responsibility_maps

DEFAULT_ITERATIONS = 10
DEFAULT_MAX_EXPLANATIONS = 5
_N_TABULAR_SPOTS = 8
_ROW_CHUNK = 32


@dataclass(frozen=True)
class Explanation:
    """One sufficient explanation of one row.

    Attributes
    ----------
    features : ndarray of int
        Sorted indices of the features kept; every other feature is at the baseline.
    confidence : float or None
        ``predict_proba`` of the explained class on that mutant (None: the model has none).
    sufficient : bool
        Verified at the end with the model's own ``predict`` (and ``confidence >= P``).
    minimal : bool
        Verified at the end: removing any single feature breaks sufficiency (1-minimal).
    """

    features: np.ndarray
    confidence: Optional[float]
    sufficient: bool
    minimal: bool

    @property
    def size(self) -> int:
        return int(self.features.size)


@dataclass(frozen=True)
class RowExplanation:
    """Everything found for one row.

    Attributes
    ----------
    row : int
        The row's number in the user's data.
    label_index : int
        Index (into the model's classes) of the class explained.
    predicted_index : int
        Index of the class the model predicts for the unmodified row.
    explanations : tuple of Explanation
        Pairwise Dice overlap at most the requested ``overlap``; smallest first.
    responsibility : ndarray of shape (D,)
        Mean degree of causal responsibility of each feature, in [0, 1].
    baseline_gets_label : bool
        The all-baseline input is already sufficient: the empty set explains the row, and no
        explanation is searched for.
    input_sufficient : bool
        The unmodified row is sufficient (False e.g. when its probability is below
        ``confidence``); otherwise nothing can be explained.
    n_queries : int
        Mutants sent to the model for this row (search and verification).
    exact : bool
        Always False: the explanations are verified, not proven smallest.
    method : str
        ``"multirex"``; under a time limit that cut the row's search short, followed by what
        was cut (``"multirex; stopped by the time limit: ..."``).
    time_limited : bool
        A time limit cut this row's search short (its explanations are still verified).
    """

    row: int
    label_index: int
    predicted_index: int
    explanations: tuple
    responsibility: np.ndarray
    baseline_gets_label: bool
    input_sufficient: bool
    n_queries: int
    exact: bool = False
    method: str = "multirex"
    time_limited: bool = False


# --- time limits --------------------------------------------------------------------------------

#: What each step of the search gives up when the clock stops it (for ``method``).
_CUT = {
    "responsibility": "responsibility from coarser parts",
    "spotlights": "only the whole input searched (no spotlights)",
    "minimise": "1-minimisation cut short (each explanation's minimal flag is verified)",
    "extend": "no further disjoint explanations searched",
}


class _Clock:
    """The deadline of one batch of rows; the steps of the search ask it, between model calls,
    whether to stop, and it remembers which rows each stop cut short.

    ``stop_at`` is wall-clock time (``time.time()``, the same in every worker process of one
    machine); ``run`` says whether it is the run's deadline (else the rows' own limit)."""

    def __init__(self, n_rows: int, stop_at: Optional[float], run: bool = False):
        self.stop_at = stop_at
        self.run = run
        self.cut = {k: np.zeros(n_rows, dtype=bool) for k in _CUT}

    def stop(self, step: str, rows) -> bool:
        """True (and ``rows``, positions in the batch, marked as cut short by ``step``) when the
        time is up."""
        if self.stop_at is None or time.time() < self.stop_at:
            return False
        self.cut[step][np.asarray(rows, dtype=np.intp)] = True
        return True

    def method(self, i: int) -> str:
        cuts = [text for step, text in _CUT.items() if self.cut[step][i]]
        if not cuts:
            return "multirex"
        which = "the run's time limit" if self.run else "the time limit"
        return f"multirex; stopped by {which}: " + ", ".join(cuts)


# --- input handling ---------------------------------------------------------------------------

def resolve_baseline(spec, n_features: int, X_train=None) -> np.ndarray:
    """The ``(D,)`` baseline value(s) for a ``--baseline`` spec.

    Parameters
    ----------
    spec : {"zero", "mean"} or float or str of a float or array-like of shape (D,)
        ``"zero"``: all zeros; ``"mean"``: the column means of ``X_train``; a number: that value
        for every feature; an array: per-feature values.
    n_features : int
    X_train : ndarray of shape (n, D), optional
        Needed for ``"mean"``.
    """
    D = int(n_features)
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s == "zero":
            return np.zeros(D)
        if s == "mean":
            if X_train is None:
                raise InputError("--baseline mean needs training data (--train).")
            Xt = np.asarray(X_train, dtype=np.float64)
            if Xt.ndim != 2 or Xt.shape[1] != D or Xt.shape[0] == 0:
                raise InputError(
                    f"training data for --baseline mean must have {D} columns and at least one "
                    f"row, got shape {Xt.shape}.")
            if not np.all(np.isfinite(Xt)):
                raise InputError(
                    "training data for --baseline mean contains NaN or infinite values.")
            return Xt.mean(axis=0)
        try:
            value = float(s)
        except ValueError:
            raise InputError(
                f"--baseline must be 'zero', 'mean' or a number, got {spec!r}.") from None
        spec = value
    if isinstance(spec, Real):
        if not math.isfinite(float(spec)):
            raise InputError(f"--baseline must be a finite number, got {spec!r}.")
        return np.full(D, float(spec))
    b = np.asarray(spec, dtype=np.float64)
    if b.shape != (D,):
        raise InputError(f"a baseline array must have shape ({D},), got {b.shape}.")
    if not np.all(np.isfinite(b)):
        raise InputError("the baseline contains NaN or infinite values.")
    return b.copy()


def shape_hw(spec) -> tuple:
    """``"8x8"`` (``"8×8"``, ``[8, 8]``) -> ``(8, 8)``; otherwise a ValueError saying what is wrong
    (the one syntax of --shape and an audit check's ``shape:``)."""
    parts = list(spec) if isinstance(spec, (list, tuple)) else str(spec).lower().replace("×", "x").split("x")
    try:
        if len(parts) != 2 or any(isinstance(v, (bool, float)) for v in parts):
            raise ValueError
        h, w = int(parts[0]), int(parts[1])
    except (TypeError, ValueError):
        raise ValueError("expected HxW, two whole numbers like 8x8") from None
    if h < 1 or w < 1:
        raise ValueError("the height and width must be at least 1")
    return h, w


def baseline_syntax(value) -> None:
    """A ValueError saying what is wrong unless ``value`` is zero, mean, contrast or a finite
    number (the one syntax of --baseline and an audit check's ``baseline:``; which of them a model
    takes is decided once it is loaded)."""
    from invaudit.explain._typed import TYPED_BASELINES

    if isinstance(value, str) and value.strip().lower() in TYPED_BASELINES:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("expected zero, mean, contrast (typed rows) or a number")
    try:
        number = float(value)
    except ValueError:
        raise ValueError("expected zero, mean, contrast (typed rows) or a number") from None
    if not np.isfinite(number):
        raise ValueError("expected a finite number")


def parse_shape(spec, n_features: int) -> Optional[tuple]:
    """``"8x8"`` (or ``(8, 8)``) -> ``(8, 8)``, checked against the number of features."""
    if spec is None:
        return None
    try:
        H, W = shape_hw(spec)
    except ValueError as exc:
        raise InputError(f"--shape {spec!r}: {exc}.") from None
    if H * W != int(n_features):
        raise InputError(
            f"--shape {H}x{W} has {H * W} cells but the model takes {n_features} features.")
    return (H, W)


def _check_params(form, confidence, max_explanations, overlap, iterations, seed, max_refine):
    if confidence is not None:
        if not getattr(form, "has_proba", True):
            raise InputError(
                "--confidence needs predicted probabilities, and this model has no predict_proba.")
        if not (isinstance(confidence, Real) and 0.0 < float(confidence) <= 1.0):
            raise InputError(f"--confidence must be in (0, 1], got {confidence!r}.")
    if not (isinstance(max_explanations, (int, np.integer)) and max_explanations >= 1):
        raise InputError(
            f"--max-explanations must be a positive integer, got {max_explanations!r}.")
    if not (isinstance(overlap, Real) and 0.0 <= float(overlap) <= 1.0):
        raise InputError(f"--overlap must be in [0, 1], got {overlap!r}.")
    if not (isinstance(iterations, (int, np.integer)) and iterations >= 1):
        raise InputError(f"--iterations must be a positive integer, got {iterations!r}.")
    if not (isinstance(seed, (int, np.integer)) and seed >= 0):
        raise InputError(f"--seed must be a non-negative integer, got {seed!r}.")
    if not (isinstance(max_refine, (int, np.integer)) and 1 <= max_refine <= 4):
        raise InputError(f"max_refine must be an integer in 1..4, got {max_refine!r}.")


# --- the search, vectorised over a chunk of rows ------------------------------------------------

def _explain_chunk(form, X, baseline, labels, row_ids, *, shape, confidence, max_explanations,
                   overlap, iterations, seed, max_refine, clock=None):
    n, D = X.shape
    clock = _Clock(n, None) if clock is None else clock
    oracle = SufficiencyOracle(form, X, baseline, labels, confidence)
    allr = np.arange(n)
    input_ok = oracle(allr, np.ones((n, D), dtype=bool))
    base_ok = oracle(allr, np.zeros((n, D), dtype=bool))
    active = np.nonzero(input_ok & ~base_ok)[0]

    resp = np.zeros((n, D))
    coarse = np.zeros((n, D))
    r_act, c_act = responsibility_maps(oracle, active, D, iterations=iterations, seed=seed,
                                       row_ids=row_ids[active], shape=shape,
                                       max_refine=max_refine, clock=clock)
    resp[active], coarse[active] = r_act, c_act
    rank = _search.feature_ranks(resp, coarse, X, baseline)

    # spotlights: the whole input first, then windows (images) or random subsets (tabular)
    if shape is not None:
        win = _search.image_windows(shape)
        spots = np.broadcast_to(win[None], (active.size,) + win.shape)
    else:
        spots = _search.random_spotlights(seed, row_ids[active], D,
                                          max(_N_TABULAR_SPOTS, 2 * max_explanations))
    if active.size and clock.stop("spotlights", active):  # out of time: the whole input only
        spots = spots[:, :0]
    allowed = np.concatenate([np.ones((active.size, 1, D), dtype=bool), spots], axis=1)
    C = allowed.shape[1]
    rid = np.repeat(active, C)
    sets, found = _search.explain_candidates(oracle, rid, allowed.reshape(-1, D), rank, clock=clock)
    sets = sets.reshape(active.size, C, D)
    chosen = _search.select(sets, found.reshape(active.size, C), overlap, max_explanations)

    # kept explanations, packed per row: exp[i, :counts[i]]
    na = active.size
    exp = np.zeros((na, max_explanations, D), dtype=bool)
    counts = chosen.sum(axis=1)
    slot = np.cumsum(chosen, axis=1) - 1
    ci, cj = np.nonzero(chosen)
    exp[ci, slot[ci, cj]] = sets[ci, cj]
    # extend with explanations disjoint from everything kept so far: search the features outside
    # every kept explanation, whole, and where that fails through each spotlight (sufficiency is
    # not monotone: the whole remainder can fail where a part of it succeeds)
    going = (counts < max_explanations) & (counts > 0)
    union = exp.any(axis=1)
    while going.any():
        if clock.stop("extend", active[going]):
            break
        g = np.nonzero(going)[0]
        allow = ~union[g]
        has_room = allow.any(axis=1)
        going[g[~has_room]] = False
        g, allow = g[has_room], allow[has_room]
        if g.size == 0:
            break
        found_set, hit = _search.explain_candidates(oracle, active[g], allow, rank, clock=clock)
        miss = np.nonzero(~hit)[0]
        if miss.size and spots.shape[1]:  # the whole remainder failed: try it through each spotlight
            cand = allow[miss, None, :] & spots[g[miss]]
            Cc = cand.shape[1]
            new, ok = _search.explain_candidates(oracle, np.repeat(active[g[miss]], Cc),
                                                 cand.reshape(-1, D), rank, clock=clock)
            new, ok = new.reshape(miss.size, Cc, D), ok.reshape(miss.size, Cc)
            best = np.argmin(np.where(ok, new.sum(axis=2), D + 1), axis=1)
            found_set[miss] = new[np.arange(miss.size), best]
            hit[miss] = ok.any(axis=1)
        going[g[~hit]] = False
        g = g[hit]
        exp[g, counts[g]] = found_set[hit]
        union[g] |= exp[g, counts[g]]
        counts[g] += 1
        going &= counts < max_explanations

    # final check with the model's own predict / predict_proba
    has_proba = bool(getattr(form, "has_proba", True))
    vi, vj = np.nonzero(np.arange(max_explanations)[None, :] < counts[:, None])
    v_rid = active[vi]
    v_masks = exp[vi, vj]
    suff, proba = verify(form, X, baseline, labels, v_rid, v_masks, confidence)
    # 1-minimality: every single removal, one batch
    ei, fi = np.nonzero(v_masks)
    rm = v_masks[ei]
    rm[np.arange(ei.size), fi] = False
    rm_ok, _ = verify(form, X, baseline, labels, v_rid[ei], rm, confidence)
    minimal = np.ones(v_rid.size, dtype=bool)
    minimal[ei[rm_ok]] = False
    extra = np.bincount(v_rid, minlength=n) + np.bincount(v_rid[ei], minlength=n)
    # the unmodified rows and the baseline, checked the same way
    chk_ok, _ = verify(form, X, baseline, labels, np.concatenate([allr, allr]),
                       np.concatenate([np.ones((n, D), bool), np.zeros((n, D), bool)]), confidence)
    input_ok_v, base_ok_v = chk_ok[:n], chk_ok[n:]
    pred_idx = _predicted_index(form, X)

    out = []
    pos = np.full(n, -1)
    pos[active] = np.arange(na)
    first = np.concatenate([[0], np.cumsum(counts)])
    for i in range(n):  # building the result objects
        exps = []
        if pos[i] >= 0:
            for k in range(first[pos[i]], first[pos[i] + 1]):
                exps.append(Explanation(
                    features=np.nonzero(v_masks[k])[0].astype(np.int64),
                    confidence=float(proba[k]) if has_proba else None,
                    sufficient=bool(suff[k]),
                    minimal=bool(minimal[k])))
        exps.sort(key=lambda e: (e.size, -(e.confidence or 0.0), tuple(e.features)))
        out.append(RowExplanation(
            row=int(row_ids[i]), label_index=int(labels[i]), predicted_index=int(pred_idx[i]),
            explanations=tuple(exps), responsibility=resp[i].copy(),
            baseline_gets_label=bool(base_ok_v[i]), input_sufficient=bool(input_ok_v[i]),
            n_queries=int(oracle.queries[i] + extra[i] + 2), method=clock.method(i),
            time_limited=clock.method(i) != "multirex"))
    return out


def _predicted_index(form, X):
    from invaudit.models.base import class_indices
    return class_indices(form.classes, np.asarray(form.predict(X)))


# --- public entry points --------------------------------------------------------------------------

def explain_rows(form, X, *, rows: Optional[Sequence[int]] = None,
                 label_indices: Optional[Sequence[int]] = None, baseline, shape=None,
                 confidence: Optional[float] = None,
                 max_explanations: int = DEFAULT_MAX_EXPLANATIONS, overlap: float = 0.0,
                 iterations: int = DEFAULT_ITERATIONS, seed: int = 0, max_refine: int = 4,
                 progress: Optional[Callable[[int], None]] = None, time_limit: Optional[float] = None,
                 run_time_limit: Optional[float] = None, run_deadline: Optional[float] = None) -> list:
    """Responsibility maps and several minimal sufficient explanations for each row of ``X``.

    Parameters
    ----------
    form : ModelForm
        Any form; only ``predict``, ``predict_proba`` (when ``confidence`` is set), ``has_proba``
        and ``classes`` are used.
    X : ndarray of shape (n, D)
        The rows to explain. Finite, except for a form with ``allows_missing = True`` (coded typed
        rows, :class:`invaudit.models.tabular.CodedRows`), where NaN is a blank cell: a kept blank
        stays blank, a dropped one takes the (always finite) baseline.
    rows : sequence of int, optional
        The rows' numbers in the user's data (default ``0..n-1``); reported back, and with
        ``seed`` they fix each row's random partitions, so a row's answer does not depend on
        which other rows are explained with it.
    label_indices : sequence of int, optional
        Class index to explain for each row; default the model's prediction.
    baseline : ndarray of shape (D,) or (n, D)
        See :func:`resolve_baseline`; finite. A 2-D baseline gives every row its own (row ``i``'s
        mutants set the features they do not keep to ``baseline[i]``); each row's answer is then
        the one it gets alone with ``baseline[i]``.
    shape : (H, W) or "HxW", optional
        The features are an ``H x W`` image (row-major): rectangular partitions and windows.
    confidence : float in (0, 1], optional
        Sufficient also requires ``predict_proba`` of the class to be at least this.
    max_explanations : int
        At most this many explanations per row.
    overlap : float in [0, 1]
        Largest Dice coefficient allowed between two reported explanations (0: disjoint).
    iterations : int
        Random partitions averaged into the responsibility map.
    seed : int
    max_refine : int in 1..4
        Responsible parts refined per split (4: all, which makes the responsibility of a feature
        that never matters exactly zero; fewer is cheaper).
    progress : callable(int), optional
        Called with the number of rows finished after each chunk.
    time_limit : float, optional
        Seconds per row (default: no limit). Rows are searched in batches of up to 32 that share
        a clock of ``time_limit`` times their rows; a batch out of time stops the step it is in
        and finishes with what it has (see the module's notes). Every explanation is still
        verified; ``method`` and ``time_limited`` say which rows the limit cut short.
    run_time_limit : float, optional
        Seconds for this call: batches still to do then get the quick search only (one
        responsibility level, the whole input grown into one sufficient explanation).
    run_deadline : float, optional
        The same as an absolute wall-clock time (``time.time()``), for a run split over several
        calls or processes (the earlier of the two applies).

    Returns
    -------
    list of RowExplanation, in the order of ``X``.

    References
    ----------
    Chockler, Kelly, Kroening et al., "Multiple different black box explanations for image
    classifiers" (MultiReX): responsibility (Sec. 3), spotlight search and Dice filter (Sec. 4).
    Chockler & Halpern, "Responsibility and blame: a structural-model approach", JAIR 2004,
    Def. 3.1 (degree of responsibility ``1 / (k + 1)``).
    """
    X = np.asarray(X, dtype=np.float64)
    D = int(form.n_features)
    if X.ndim != 2 or X.shape[1] != D:
        raise InputError(f"the data must have {D} columns, got shape {X.shape}.")
    if getattr(form, "allows_missing", False):  # coded typed rows: NaN is a blank cell
        if np.any(np.isinf(X)):
            raise InputError("the rows to explain contain infinite values.")
    elif not np.all(np.isfinite(X)):
        raise InputError("the rows to explain contain NaN or infinite values.")
    baseline = np.asarray(baseline, dtype=np.float64)
    if baseline.shape not in ((D,), (X.shape[0], D)) or not np.all(np.isfinite(baseline)):
        raise InputError(f"the baseline must be {D} finite values, or {X.shape[0]} rows of them (one per "
                         f"row), got shape {baseline.shape}.")
    if shape is not None:
        shape = parse_shape(shape, D)
    _check_params(form, confidence, max_explanations, overlap, iterations, seed, max_refine)
    for name, v in (("time_limit", time_limit), ("run_time_limit", run_time_limit)):
        if v is not None and not (isinstance(v, Real) and float(v) >= 0.0):  # NaN fails, inf is no limit
            raise InputError(f"--{name.replace('_', '-')} must be a number of seconds >= 0, got {v!r}.")
    if run_time_limit is not None:
        end = time.time() + float(run_time_limit)
        run_deadline = end if run_deadline is None else min(float(run_deadline), end)
    n = X.shape[0]
    row_ids = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    if row_ids.shape != (n,) or (n and row_ids.min() < 0):
        raise InputError(f"rows must be {n} non-negative row numbers.")
    if label_indices is None:
        labels = _predicted_index(form, X) if n else np.zeros(0, dtype=np.intp)
    else:
        labels = np.asarray(label_indices, dtype=np.intp)
        K = len(form.classes)
        if labels.shape != (n,) or (n and (labels.min() < 0 or labels.max() >= K)):
            raise InputError(f"label indices must be {n} integers in 0..{K - 1}.")
    conf = None if confidence is None else float(confidence)
    out = []
    for start in range(0, n, _ROW_CHUNK):  # chunks bound memory; each chunk is fully batched
        sl = slice(start, start + _ROW_CHUNK)
        clock = _chunk_clock(min(_ROW_CHUNK, n - start), time_limit, run_deadline)
        out.extend(_explain_chunk(
            form, X[sl], baseline[sl] if baseline.ndim == 2 else baseline, labels[sl], row_ids[sl],
            shape=shape, confidence=conf,
            max_explanations=int(max_explanations), overlap=float(overlap),
            iterations=int(iterations), seed=int(seed), max_refine=int(max_refine), clock=clock))
        if progress is not None:
            progress(len(out))
    return out


def _chunk_clock(n_rows: int, time_limit, run_deadline) -> "_Clock":
    """The clock of a batch of ``n_rows`` rows starting now: ``time_limit`` seconds per row, or
    the run's deadline if that comes first."""
    own = None if time_limit is None else time.time() + float(time_limit) * n_rows
    if run_deadline is not None and (own is None or float(run_deadline) <= own):
        return _Clock(n_rows, float(run_deadline), run=True)
    return _Clock(n_rows, own)


def explain_row(form, x, *, label_index: Optional[int] = None, baseline, shape=None,
                confidence: Optional[float] = None,
                max_explanations: int = DEFAULT_MAX_EXPLANATIONS, overlap: float = 0.0,
                iterations: int = DEFAULT_ITERATIONS, seed: int = 0, row: int = 0,
                max_refine: int = 4) -> RowExplanation:
    """:func:`explain_rows` for one row ``x`` of shape ``(D,)`` (numbered ``row``)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise InputError(f"a single row must be 1-D, got shape {x.shape}.")
    return explain_rows(
        form, x[None, :], rows=[row], label_indices=None if label_index is None else [label_index],
        baseline=baseline, shape=shape, confidence=confidence, max_explanations=max_explanations,
        overlap=overlap, iterations=iterations, seed=seed, max_refine=max_refine)[0]


def records(results, classes, columns=None) -> list:
    """JSON-ready result entries (DESIGN.md, "explain"), one per row. With ``columns`` (the
    feature names, e.g. a typed-row model's input columns) every explanation also lists its
    features by name under ``"columns"``."""
    from invaudit.models.base import to_jsonable

    classes = np.asarray(classes)
    names = None if columns is None else [str(c) for c in columns]
    out = []
    for r in results:
        exps = []
        for e in r.explanations:
            rec = {"features": [int(f) for f in e.features], "size": e.size,
                   "confidence": e.confidence, "sufficient": e.sufficient, "minimal": e.minimal}
            if names is not None:
                rec["columns"] = [names[int(f)] for f in e.features]
            exps.append(rec)
        out.append({
            "row": r.row,
            "predicted_class": to_jsonable(classes[r.predicted_index]),
            "explained_class": to_jsonable(classes[r.label_index]),
            "explanations": exps,
            "responsibility": [float(v) for v in r.responsibility],
            "baseline_gets_label": r.baseline_gets_label,
            "input_sufficient": r.input_sufficient,
            "n_queries": r.n_queries,
            "exact": r.exact,
            "method": r.method,
        })
    return out


def summary(results) -> dict:
    """Counts for the report's ``summary``: rows, rows with >= 1 / >= 2 explanations, sizes."""
    n_exp = np.array([len(r.explanations) for r in results], dtype=np.int64)
    sizes = [e.size for r in results for e in r.explanations]
    return {
        "n_rows": len(results),
        "rows_with_explanation": int((n_exp >= 1).sum()),
        "rows_with_multiple": int((n_exp >= 2).sum()),
        "median_size": float(np.median(sizes)) if sizes else None,
        "all_sufficient": bool(all(e.sufficient for r in results for e in r.explanations)),
        "baseline_gets_label": int(sum(r.baseline_gets_label for r in results)),
        "time_limited": int(sum(r.time_limited for r in results)),
    }
