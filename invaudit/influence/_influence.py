"""Influence of training rows on test predictions, their verification by refits, and groups.

Koh & Liang (2017), "Understanding black-box predictions via influence functions", ICML:
removing training row ``i`` changes the test loss by approximately

    loss_change_if_removed(t, i) = s_i * grad l(z_t)^T H^-1 grad l(z_i)          (eq. 2, 3)

(``s_i`` the row's weight in the objective, ``H`` the Hessian of the estimator's own training
objective). One solve per test row (``u_t = H^-1 g_t``), then one matrix product against every
training row's gradient. The leverage-corrected estimate replaces ``H`` by the Hessian without
row ``i`` (Sherman–Morrison–Woodbury, see :meth:`LogisticObjective.removal_terms`) — a Newton
step on the leave-one-out objective — and evaluates the test loss exactly at the parameters it
reaches; this fixes the first-order estimate's scale where the parameter count is not small
next to the number of rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Optional, Sequence

import numpy as np

from invaudit.errors import InputError
from invaudit.models.base import to_jsonable

from ._objective import Objective
from ._parallel import dense, planned_workers, run_blocks

__all__ = ["influence", "InfluenceResult", "RowInfluence", "TrainRowEffect", "verify_loo",
           "LOOVerification", "group_influence", "GroupInfluence"]

#: Entries of the (test rows x training rows) block ranked at once.
_BLOCK = 2_000_000


@dataclass(frozen=True)
class TrainRowEffect:
    """One training row's predicted effect on one test row's loss.

    ``loss_change_if_removed``: predicted change of the test row's log loss if this row were
    removed and the model refitted (positive: the row helped). ``feature_gradient``: with
    ``features=True``, the derivative of the test loss w.r.t. this row's features in input units
    (Koh & Liang's ``I_pert,loss``): moving the row along it raises the test loss."""

    train_row: int
    loss_change_if_removed: float
    feature_gradient: Optional[tuple] = None

    def record(self) -> dict:
        d = {"train_row": int(self.train_row),
             "loss_change_if_removed": float(self.loss_change_if_removed)}
        if self.feature_gradient is not None:
            d["feature_gradient"] = [float(v) for v in self.feature_gradient]
        return d


@dataclass(frozen=True)
class RowInfluence:
    """The most helpful and most harmful training rows for one test row."""

    test_row: int
    label: int            # class index whose log loss is explained
    label_source: str     # "given" or "predicted"
    loss: float
    helpful: tuple        # TrainRowEffect, largest positive change first
    harmful: tuple        # TrainRowEffect, most negative change first
    exact: bool
    estimate: str


@dataclass(frozen=True, eq=False)
class InfluenceResult:
    """Influence for a set of test rows (see :func:`influence`).

    The lists are arrays with one row per test row: ``helpful_rows[t, :n_helpful[t]]`` are
    the training rows whose removal would raise test row ``t``'s loss the most (largest
    first) and ``helpful_values`` those changes; ``harmful_*`` likewise for the most negative
    changes. Entries past the counts are ``-1`` / NaN. ``*_gradients`` (``(T, top, D)``) are
    the feature gradients with ``features=True``. :attr:`rows` gives the same lists as
    :class:`RowInfluence` objects."""

    test_rows: np.ndarray
    labels: np.ndarray
    label_source: str
    losses: np.ndarray
    helpful_rows: np.ndarray
    helpful_values: np.ndarray
    n_helpful: np.ndarray
    harmful_rows: np.ndarray
    harmful_values: np.ndarray
    n_harmful: np.ndarray
    classes: np.ndarray = field(repr=False)
    estimate: str
    exact: bool
    method: str
    n_train: int
    n_params: int
    stationarity: float
    notes: tuple
    helpful_gradients: Optional[np.ndarray] = field(default=None, repr=False)
    harmful_gradients: Optional[np.ndarray] = field(default=None, repr=False)

    def _listed(self, kind: str) -> list:
        """Per test row, the ``(train_row, change, feature_gradient or None)`` of the
        ``kind`` (``helpful`` / ``harmful``) list, as Python numbers."""
        cnt = getattr(self, f"n_{kind}").tolist()
        rows = getattr(self, f"{kind}_rows").tolist()
        vals = getattr(self, f"{kind}_values").tolist()
        grads = getattr(self, f"{kind}_gradients")
        grads = [[None] * len(r) for r in rows] if grads is None else grads.tolist()
        return [list(zip(rows[t][:c], vals[t][:c], grads[t][:c])) for t, c in enumerate(cnt)]

    @cached_property
    def rows(self) -> tuple:
        """One :class:`RowInfluence` per test row (built on first use)."""
        lists = [[tuple(TrainRowEffect(i, v, None if g is None else tuple(g)) for i, v, g in row)
                  for row in self._listed(kind)] for kind in ("helpful", "harmful")]
        return tuple(
            RowInfluence(test_row=t, label=lab, label_source=self.label_source, loss=loss,
                         helpful=h, harmful=m, exact=bool(self.exact), estimate=self.estimate)
            for t, lab, loss, h, m in zip(self.test_rows.tolist(), self.labels.tolist(),
                                          self.losses.tolist(), *lists))

    def records(self) -> list[dict]:
        """DESIGN.md's influence results: one dict per test row."""
        names = [to_jsonable(c) for c in self.classes]
        if self.helpful_gradients is None:
            lists = [[[{"train_row": i, "loss_change_if_removed": v} for i, v, _ in row]
                      for row in self._listed(kind)] for kind in ("helpful", "harmful")]
        else:
            lists = [[[{"train_row": i, "loss_change_if_removed": v, "feature_gradient": g}
                       for i, v, g in row] for row in self._listed(kind)]
                     for kind in ("helpful", "harmful")]
        exact = bool(self.exact)
        return [{"test_row": t, "label": names[lab], "label_source": self.label_source,
                 "loss": loss, "helpful": h, "harmful": m, "exact": exact,
                 "estimate": self.estimate}
                for t, lab, loss, h, m in zip(self.test_rows.tolist(), self.labels.tolist(),
                                              self.losses.tolist(), *lists)]

    def summary(self) -> dict:
        return {"estimate": self.estimate, "exact": bool(self.exact), "method": self.method,
                "n_train": int(self.n_train), "n_params": int(self.n_params),
                "n_test": int(self.test_rows.size), "stationarity": float(self.stationarity),
                "notes": list(self.notes)}

    def top_rows(self, n: int) -> np.ndarray:
        """The union over test rows of the ``n`` training rows with the largest
        ``|loss_change_if_removed|`` (what ``--verify-loo N`` refits without); exact when
        ``n <= top`` of the :func:`influence` call."""
        if n <= 0 or self.test_rows.size == 0:
            return np.array([], dtype=np.intp)
        rows = np.concatenate([self.helpful_rows, self.harmful_rows], axis=1)
        vals = np.concatenate([self.helpful_values, self.harmful_values], axis=1)
        key = np.where(rows < 0, np.inf, -np.abs(vals))  # helpful before harmful on ties
        order = np.argsort(key, axis=1, kind="stable")[:, :n]
        picked = np.take_along_axis(rows, order, axis=1)
        return np.unique(picked[picked >= 0]).astype(np.intp)


def _test_blocks(T: int, n: int, parallel: bool) -> list:
    """Blocks of test rows: at most ``_BLOCK`` (test x training) entries each, and, when the
    blocks may run side by side, about two per worker (of at least 32 rows)."""
    size = max(1, _BLOCK // max(n, 1))
    if parallel and planned_workers() > 1:
        size = min(size, max(32, -(-T // (2 * planned_workers()))))
    return [(a, min(T, a + size)) for a in range(0, T, size)]


def _top_k(S: np.ndarray, k: int, largest: bool) -> np.ndarray:
    """``(T, k)``: the columns of the ``k`` largest (or smallest) entries of each row of ``S``
    (``k <= n``), ties to the lower column, as a stable sort would give.

    A threshold first: the rows' columns are split into ``G >= k`` interleaved groups, and the
    ``k``-th largest group maximum ``tau`` has at least ``k`` entries at or above it, so every
    one of the ``k`` largest is ``>= tau``. One elementwise reduction, one comparison and a
    sort of the few entries above ``tau`` (about ``k`` per row) replace a selection over the
    whole row."""
    T, n = S.shape
    G = max(k, int(np.sqrt(n * k)))
    g = n // G
    red = np.maximum if largest else np.minimum
    heads = red.reduce(S[:, :G * g].reshape(T, g, G), axis=1)  # group j: columns j, j+G, ...
    tail = n - G * g
    if tail:
        red(heads[:, :tail], S[:, G * g:], out=heads[:, :tail])
    if largest:
        tau = np.partition(heads, G - k, axis=1)[:, G - k]
        flat = np.flatnonzero(S >= tau[:, None])
    else:
        tau = np.partition(heads, k - 1, axis=1)[:, k - 1]
        flat = np.flatnonzero(S <= tau[:, None])
    r, c = np.divmod(flat, n)  # row-major: columns ascending within a row
    v = S.ravel()[flat]
    counts = np.bincount(r, minlength=T)
    starts = np.cumsum(counts) - counts
    pos = np.arange(flat.size) - starts[r]
    key = np.full((T, int(counts.max())), np.inf)
    key[r, pos] = -v if largest else v
    col = np.zeros(key.shape, dtype=np.intp)
    col[r, pos] = c
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(col, order, axis=1)


def _ordered(idx: np.ndarray, values, k: int, positive: bool):
    """Candidates ``idx`` (``(Tb, c)`` training rows per test row, ``c >= k``) ordered by their loss
    change, largest first (``positive``) or most negative first, ties to the lower row;
    only changes of that sign are kept, at most ``k``. Returns ``(rows, vals, counts)`` padded
    with ``-1`` / NaN."""
    idx = np.sort(idx, axis=1)
    v = values(idx)
    order = np.argsort(-v if positive else v, axis=1, kind="stable")[:, :k]
    idx = np.take_along_axis(idx, order, axis=1)
    v = np.take_along_axis(v, order, axis=1)
    keep = v > 0 if positive else v < 0  # a prefix of each row
    return np.where(keep, idx, -1), np.where(keep, v, np.nan), keep.sum(axis=1)


def _labels(objective: Objective, X, y):
    if y is None:
        return objective.predicted_index(X), "predicted"
    return np.asarray(y, dtype=np.intp), "given"


@dense
def influence(objective: Objective, X_test, y_test=None, *, top: int = 10,
              estimate: str = "auto", features: bool = False,
              test_row_ids: Optional[Sequence[int]] = None) -> InfluenceResult:
    """Rank every training row by its effect on each test row's log loss.

    Parameters
    ----------
    objective : Objective
        From :func:`~invaudit.influence.build_objective` (built once per run).
    X_test : (T, D) test rows in input units.
    y_test : (T,) class indices, optional. Without labels the loss at the model's predicted
        class is explained (``label_source = "predicted"``).
    top : int
        How many helpful and how many harmful rows to keep per test row (``>= 1``).
    estimate : ``"auto"``, ``"first-order"`` or ``"leverage-corrected"``.
        ``auto`` picks the leverage-corrected estimate where the Hessian is factorised
        (logistic regression), the first-order one otherwise.
    features : bool
        Also give, for each listed training row, the gradient of the test loss w.r.t. that
        row's features (Koh & Liang eq. 4, ``I_pert,loss``; always first order).
    test_row_ids : row numbers to report (default ``0..T-1``).

    Returns
    -------
    InfluenceResult

    Notes
    -----
    First order: one ``H^-1`` solve per test row, then ``(T x P) @ (P x n)`` against all
    training gradients. Leverage-corrected (logistic regression): every training row's Newton
    step ``delta_theta_i`` is formed once (``(n x P) @ H^-1`` after the Woodbury correction), the
    test rows' scores move by ``(T x (D + 1)) @ ((D + 1) x n M)`` (softmax: relative to one
    class, ``M - 1`` of them), and the test loss is evaluated exactly at the moved scores (for
    a binary model the loss change is monotone in the score shift, so only the rows kept are
    evaluated). Test rows are processed in blocks, side by side for logistic regression
    (:mod:`~invaudit.influence._parallel`), keeping each row's ``top`` extremes
    (:func:`_top_k`); no Python loop over training rows. The result holds the lists as
    arrays; :attr:`InfluenceResult.rows` builds objects from them on first use.
    """
    X_test, y_test = objective.check_test(X_test, y_test)
    if top < 1:
        raise InputError("--top must be at least 1.")
    est = objective.resolve_estimate(estimate)
    T = X_test.shape[0]
    ids = np.arange(T) if test_row_ids is None else np.asarray(test_row_ids, dtype=np.int64)
    if ids.shape != (T,):
        raise InputError("test_row_ids must give one id per test row.")
    y_idx, source = _labels(objective, X_test, y_test)
    losses = objective.losses(X_test, y_idx)
    n = objective.n_rows
    k = min(top, n)
    hi_rows, hi_vals, n_hi = np.full((T, k), -1, np.intp), np.full((T, k), np.nan), np.zeros(T, np.intp)
    lo_rows, lo_vals, n_lo = np.full((T, k), -1, np.intp), np.full((T, k), np.nan), np.zeros(T, np.intp)
    D = objective.X.shape[1]
    hi_grads = np.full((T, k, D), np.nan) if features else None
    lo_grads = np.full((T, k, D), np.nan) if features else None
    objective.prepare(est)  # shared per-training-row terms, before blocks run side by side
    ranges = _test_blocks(T, n, parallel=objective.thread_safe)

    def block(j):
        a, b = ranges[j]
        Xb, yb = X_test[a:b], y_idx[a:b]
        U = None
        if features or est == "first-order":
            U = objective.solve(objective.test_gradients(Xb, yb))
        S, values = objective.ranking_scores(Xb, yb, est, U=U)
        if 2 * k < n:
            hi, lo = _top_k(S, k, largest=True), _top_k(S, k, largest=False)
        else:
            hi = lo = np.broadcast_to(np.arange(n), S.shape)
        hi_rows[a:b], hi_vals[a:b], n_hi[a:b] = _ordered(hi, values, k, positive=True)
        lo_rows[a:b], lo_vals[a:b], n_lo[a:b] = _ordered(lo, values, k, positive=False)
        if features:
            for t in range(a, b):  # loop over test rows only
                h, m = hi_rows[t, :n_hi[t]], lo_rows[t, :n_lo[t]]
                if h.size + m.size:
                    fg = objective.feature_gradients(U[t - a], np.concatenate([h, m]))
                    hi_grads[t, :h.size], lo_grads[t, :m.size] = fg[:h.size], fg[h.size:]

    if objective.thread_safe:
        run_blocks(block, len(ranges))
    else:
        for j in range(len(ranges)):
            block(j)
    notes = list(objective.notes)
    if source == "predicted":
        notes.append("no test labels: the loss explained is at each row's predicted class")
    if features:
        notes.append("feature_gradient is the first-order derivative (I_pert,loss) in input units")
    return InfluenceResult(test_rows=ids, labels=np.asarray(y_idx, dtype=np.intp),
                           label_source=source, losses=np.asarray(losses, dtype=np.float64),
                           helpful_rows=hi_rows, helpful_values=hi_vals, n_helpful=n_hi,
                           harmful_rows=lo_rows, harmful_values=lo_vals, n_harmful=n_lo,
                           classes=np.asarray(objective.classes), estimate=est,
                           exact=bool(objective.exact), method=objective.method, n_train=n,
                           n_params=objective.n_params, stationarity=objective.stationarity,
                           notes=tuple(notes), helpful_gradients=hi_grads,
                           harmful_gradients=lo_grads)


@dense
def predicted_loss_changes(objective: Objective, X_test, y_test=None, *, estimate: str = "auto",
                           rows=None) -> np.ndarray:
    """The full ``(T, m)`` matrix of predicted loss changes (for tests and small problems)."""
    X_test, y_test = objective.check_test(X_test, y_test)
    y_idx, _ = _labels(objective, X_test, y_test)
    return objective.loss_changes(X_test, y_idx, objective.resolve_estimate(estimate), rows)


# --- verification by refits --------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class LOOVerification:
    """Predicted against real leave-one-out changes of the test losses.

    ``predicted`` and ``actual`` are ``(T, R)``: test rows by refitted training rows. ``actual``
    is ``loss(refit without i) - loss(refit on all rows)``, both refits warm-started from the
    fitted parameters with the same tight tolerance (so the model's own optimisation error
    cancels). ``pearson``/``spearman``/``slope`` (of actual on predicted) are over all pairs."""

    test_rows: np.ndarray
    train_rows: np.ndarray
    predicted: np.ndarray
    actual: np.ndarray
    pearson: float
    spearman: float
    slope: float
    n_retrained: int
    estimate: str
    notes: tuple

    def summary(self) -> dict:
        """``summary.verification`` of the influence report."""
        return {"pearson": _f(self.pearson), "spearman": _f(self.spearman), "slope": _f(self.slope),
                "n_retrained": int(self.n_retrained), "n_pairs": int(self.predicted.size),
                "estimate": self.estimate, "notes": list(self.notes)}

    def records(self) -> list[dict]:
        out = []
        for a, t in enumerate(self.test_rows):
            for b, i in enumerate(self.train_rows):
                out.append({"test_row": int(t), "train_row": int(i),
                            "predicted": float(self.predicted[a, b]),
                            "actual": float(self.actual[a, b])})
        return out


def _f(v):
    return None if v is None or not np.isfinite(v) else float(v)


def _correlations(pred, act):
    from scipy.stats import spearmanr

    p, a = np.ravel(pred), np.ravel(act)
    if p.size < 2 or np.std(p) == 0 or np.std(a) == 0:
        return float("nan"), float("nan"), float("nan")
    pearson = float(np.corrcoef(p, a)[0, 1])
    spearman = float(spearmanr(p, a).statistic)
    slope = float(np.dot(p - p.mean(), a - a.mean()) / np.dot(p - p.mean(), p - p.mean()))
    return pearson, spearman, slope


def verify_loo(objective: Objective, X_test, y_test, train_rows, *, estimate: str = "auto",
               test_row_ids: Optional[Sequence[int]] = None, tol: float = 1e-10,
               max_iter: Optional[int] = None,
               progress: Optional[Callable[[int, int], None]] = None) -> LOOVerification:
    """Refit without each of ``train_rows`` and compare the real change of every test row's
    loss with the prediction.

    Parameters
    ----------
    objective : Objective
    X_test, y_test : the test rows (``y_test`` None: the predicted classes, as in
        :func:`influence`).
    train_rows : training rows to leave out, one refit each (e.g. ``result.top_rows(N)``).
    estimate : the estimate to check (``auto`` as in :func:`influence`).
    tol, max_iter : the refits' tolerance and iteration cap.
    progress : optional ``progress(done, total)`` called after each refit.
    """
    X_test, y_test = objective.check_test(X_test, y_test)
    y_idx, _ = _labels(objective, X_test, y_test)
    rows = np.asarray(train_rows, dtype=np.intp).ravel()
    if rows.size and (rows.min() < 0 or rows.max() >= objective.n_rows):
        raise InputError(f"training rows to verify must lie in 0..{objective.n_rows - 1}.")
    est = objective.resolve_estimate(estimate)
    predicted = predicted_loss_changes(objective, X_test, y_idx, estimate=est, rows=rows)
    total = rows.size + 1
    base = objective.refit_without(np.array([], dtype=np.intp), tol=tol, max_iter=max_iter)
    base_loss = objective.refit_losses(base, X_test, y_idx)
    if progress is not None:
        progress(1, total)
    actual = np.empty((X_test.shape[0], rows.size))
    for b, i in enumerate(rows):  # one refit per verified row: the reference, not a hot path
        fitted = objective.refit_without(np.array([i]), tol=tol, max_iter=max_iter)
        actual[:, b] = objective.refit_losses(fitted, X_test, y_idx) - base_loss
        if progress is not None:
            progress(b + 2, total)
    pearson, spearman, slope = _correlations(predicted, actual)
    ids = np.arange(X_test.shape[0]) if test_row_ids is None else np.asarray(test_row_ids)
    notes = ("the real changes are from refits warm-started at the fitted parameters, relative "
             "to a refit on all rows with the same tolerance",)
    return LOOVerification(test_rows=ids, train_rows=rows, predicted=predicted, actual=actual,
                           pearson=pearson, spearman=spearman, slope=slope,
                           n_retrained=int(rows.size), estimate=est, notes=notes)


# --- groups --------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class GroupInfluence:
    """The effect on each test row's loss of removing a whole set of training rows.

    ``first_order``: the sum of the rows' first-order effects. ``newton``: one Newton step on
    the objective without the group, the test loss evaluated exactly at the new parameters
    (None for networks). ``actual``: the real change from a refit (with ``refit=True``)."""

    group_rows: np.ndarray
    test_rows: np.ndarray
    first_order: np.ndarray
    newton: Optional[np.ndarray]
    actual: Optional[np.ndarray]
    exact: bool
    notes: tuple

    @property
    def predicted(self) -> np.ndarray:
        return self.first_order if self.newton is None else self.newton

    def records(self) -> list[dict]:
        out = []
        for j, t in enumerate(self.test_rows):
            d = {"test_row": int(t), "loss_change_if_removed": float(self.predicted[j]),
                 "first_order": float(self.first_order[j])}
            if self.newton is not None:
                d["newton_step"] = float(self.newton[j])
            if self.actual is not None:
                d["actual"] = float(self.actual[j])
            out.append(d)
        return out

    def summary(self) -> dict:
        d = {"group_size": int(self.group_rows.size),
             "estimate": "first-order" if self.newton is None else "newton-step",
             "mean_loss_change_if_removed": float(np.mean(self.predicted)),
             "exact": bool(self.exact), "notes": list(self.notes)}
        if self.actual is not None:
            pearson, spearman, slope = _correlations(self.predicted, self.actual)
            d["verification"] = {"pearson": _f(pearson), "spearman": _f(spearman),
                                 "slope": _f(slope), "n_retrained": 1,
                                 "max_abs_error": float(np.max(np.abs(self.predicted - self.actual)))}
        return d


@dense
def group_influence(objective: Objective, X_test, y_test, group_rows, *,
                    test_row_ids: Optional[Sequence[int]] = None, refit: bool = False,
                    tol: float = 1e-10, max_iter: Optional[int] = None) -> GroupInfluence:
    """Predicted (and with ``refit=True`` real) change of each test row's loss if all
    ``group_rows`` were removed together.

    For logistic regression the prediction is one Newton step from the fitted parameters on
    the objective without the group (class weights recomputed if balanced) — the group version
    of the leverage correction — next to the first-order sum of Koh & Liang's individual
    influences, which ignores interactions inside the group.
    """
    X_test, y_test = objective.check_test(X_test, y_test)
    y_idx, source = _labels(objective, X_test, y_test)
    rows = np.unique(np.asarray(group_rows, dtype=np.intp).ravel())
    if rows.size == 0:
        raise InputError("the group of training rows is empty.")
    if rows.min() < 0 or rows.max() >= objective.n_rows:
        raise InputError(f"group rows must lie in 0..{objective.n_rows - 1}.")
    first, newton = objective.group_prediction(rows, X_test, y_idx)
    actual = None
    if refit:
        base = objective.refit_without(np.array([], dtype=np.intp), tol=tol, max_iter=max_iter)
        fitted = objective.refit_without(rows, tol=tol, max_iter=max_iter)
        actual = objective.refit_losses(fitted, X_test, y_idx) - objective.refit_losses(base, X_test, y_idx)
    ids = np.arange(X_test.shape[0]) if test_row_ids is None else np.asarray(test_row_ids)
    notes = list(objective.notes)
    if source == "predicted":
        notes.append("no test labels: the loss explained is at each row's predicted class")
    return GroupInfluence(group_rows=rows, test_rows=ids, first_order=np.asarray(first),
                          newton=None if newton is None else np.asarray(newton), actual=actual,
                          exact=bool(objective.exact), notes=tuple(notes))
