"""The result of a margin run and its summary (DESIGN.md, "JSON report", margin)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from invaudit.errors import InputError
from invaudit.models.base import to_jsonable

__all__ = ["MarginBatch", "summarize", "default_eps", "EXACT_MEANS"]

EXACT_MEANS = ("margin within 1e-9 relative of the proven infimum distance (the scores' rounding "
               "included), perturbation verified by the model's own predict")


def _num(v) -> Optional[float]:
    """A finite float, or None (NaN: unknown; inf: unreachable; JSON has neither)."""
    v = float(v)
    return v if math.isfinite(v) else None


@dataclass(frozen=True, eq=False)
class MarginBatch:
    """Adversarial margins of ``n`` rows (arrays of length ``n``).

    Attributes
    ----------
    margin : (n,) float
        Exact rows: the distance from the row to the nearest point (in the box, in the metric)
        predicted as any class other than ``predicted_index`` (an infimum; the boundary itself
        may belong to the row's class). Other rows: the norm of the verified ``perturbation``,
        an upper bound. ``inf``: no admissible point is predicted otherwise (exact);
        ``NaN``: no verified perturbation was found.
    lower_bound : (n,) float
        A certified lower bound on the margin (equal to ``margin`` for exact rows); ``NaN``
        when the form allows none (black boxes).
    nearest_index : (n,) int
        Class index the estimator predicts at ``x + perturbation`` (-1 when there is none).
    perturbation : (n, D) float
        Verified: ``x + perturbation`` is predicted as ``nearest_index`` by the estimator's own
        ``predict``. NaN rows when there is none.
    perturbation_norm : (n,) float
        The norm of ``perturbation``; for exact rows it exceeds ``margin`` only by the nudge
        that puts the point strictly across the boundary (1e-12 of the score gap plus the
        scores' rounding; on a tie, where the margin is 0, that nudge is all there is).
    exact : (n,) bool
    method : (n,) str
    predicted_index : (n,) int
        The row's own class (estimator's ``predict``).
    label_index : (n,) int or None
        The given labels as class indices, when the caller passed them.
    norm : str
    """

    margin: np.ndarray
    lower_bound: np.ndarray
    nearest_index: np.ndarray
    perturbation: np.ndarray
    perturbation_norm: np.ndarray
    exact: np.ndarray
    method: np.ndarray
    predicted_index: np.ndarray
    norm: str
    label_index: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return self.margin.shape[0]

    def records(self, classes, row_ids=None, labels=None) -> list[dict]:
        """One JSON-ready dict per row with the DESIGN.md fields: ``row``, ``label`` (only when
        ``labels`` is given: the user's label values, one per row), ``predicted_class``,
        ``margin``, ``norm``, ``nearest_class``, ``perturbation`` (list), ``exact``,
        ``lower_bound``, ``method``, plus ``perturbation_norm``. Non-finite numbers become
        None (an unreachable row has ``margin`` None and method ending in "unreachable")."""
        classes = np.asarray(classes)
        n = len(self)
        row_ids = np.arange(n) if row_ids is None else np.asarray(row_ids)
        if row_ids.shape != (n,):
            raise InputError(f"row ids must have one entry per row ({n}), got shape {row_ids.shape}.")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (n,):
                raise InputError(f"labels must have one entry per row ({n}), got shape {labels.shape}.")
        pert = self.perturbation
        has_pert = np.all(np.isfinite(pert), axis=1) if pert.size else np.zeros(n, dtype=bool)
        pert_lists = pert.tolist()
        out = []
        for i in range(n):
            rec = {"row": int(row_ids[i])}
            if labels is not None:
                rec["label"] = to_jsonable(labels[i])
            k = int(self.nearest_index[i])
            rec.update(
                predicted_class=to_jsonable(classes[int(self.predicted_index[i])]),
                margin=_num(self.margin[i]),
                norm=self.norm,
                nearest_class=to_jsonable(classes[k]) if k >= 0 else None,
                perturbation=pert_lists[i] if has_pert[i] else None,
                perturbation_norm=_num(self.perturbation_norm[i]),
                exact=bool(self.exact[i]),
                lower_bound=_num(self.lower_bound[i]),
                method=str(self.method[i]),
            )
            out.append(rec)
        return out


    def columns(self, classes, row_ids=None, labels=None, *, perturbation: bool = True):
        """The same fields as :meth:`records`, held as columns (``invaudit.io.report.Columns``):
        the report encodes them in bulk and a table turns only the rows it shows into dicts.
        ``perturbation=False`` leaves the vectors out (a batch whose matrix was not kept)."""
        from invaudit.io.report import Columns

        classes = [to_jsonable(c) for c in np.asarray(classes)]
        n = len(self)
        row_ids = np.arange(n) if row_ids is None else np.asarray(row_ids)
        if row_ids.shape != (n,):
            raise InputError(f"row ids must have one entry per row ({n}), got shape {row_ids.shape}.")
        cols = Columns(n).add("row", "int", row_ids.astype(np.int64))
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (n,):
                raise InputError(f"labels must have one entry per row ({n}), got shape {labels.shape}.")
            uniq, codes = np.unique(labels, return_inverse=True)
            cols.add("label", "cat", codes.reshape(-1), values=[to_jsonable(v) for v in uniq])
        cols.add("predicted_class", "cat", np.asarray(self.predicted_index, dtype=np.intp), values=classes)
        cols.add("margin", "num", np.asarray(self.margin, dtype=np.float64))
        cols.add("norm", "const", self.norm)
        cols.add("nearest_class", "cat", np.asarray(self.nearest_index, dtype=np.intp), values=classes)
        if perturbation:
            pert = np.asarray(self.perturbation, dtype=np.float64)
            has = np.all(np.isfinite(pert), axis=1) if pert.size else np.zeros(n, dtype=bool)
            cols.add("perturbation", "vec", pert, present=has)
        cols.add("perturbation_norm", "num", np.asarray(self.perturbation_norm, dtype=np.float64))
        cols.add("exact", "bool", np.asarray(self.exact, dtype=bool))
        cols.add("lower_bound", "num", np.asarray(self.lower_bound, dtype=np.float64))
        methods, codes = _categories(self.method)
        cols.add("method", "cat", codes, values=methods)
        return cols


def _categories(values) -> tuple:
    """``(sorted distinct values as str, codes)`` of a per-row string array, as ``np.unique(
    a.astype(str), return_inverse=True)`` gives them, in one comparison pass per distinct value: a
    batch holds a few methods over many rows (the linear solver fills one object per row with the
    same string), and sorting a million strings per chunk cost more than the solver's own
    bookkeeping."""
    a = np.asarray(values).reshape(-1)
    if a.dtype != object:
        a = a.astype(str)
    n = a.shape[0]
    codes = np.full(n, -1, dtype=np.intp)
    found: list = []
    left = np.arange(n)
    while left.size and len(found) <= 64:
        first = a[left[0]]
        same = np.asarray((a if left.size == n else a[left]) == first, dtype=bool)
        same[0] = True  # progress even for a value unequal to itself
        codes[left[same]] = len(found)
        found.append(str(first))
        left = left[~same]
    if left.size or len(set(found)) != len(found):  # many values, or values equal only as strings
        uniq, inv = np.unique(a.astype(str), return_inverse=True)
        return [str(m) for m in uniq], inv.reshape(-1)
    order = sorted(range(len(found)), key=lambda k: found[k])
    remap = np.empty(len(found), dtype=np.intp)
    remap[order] = np.arange(len(found))
    return [found[k] for k in order], remap[codes]


def default_eps(margins: np.ndarray, count: int = 5) -> list[float]:
    """A handful of epsilons spread over the observed margins: the 10/25/50/75/90 % quantiles of
    the finite positive margins, rounded to two significant digits, without duplicates."""
    m = np.asarray(margins, dtype=np.float64)
    m = m[np.isfinite(m) & (m > 0)]
    if m.size == 0:
        return []
    qs = np.quantile(m, np.linspace(0.1, 0.9, count) if count != 5 else [0.1, 0.25, 0.5, 0.75, 0.9])
    out = sorted({float(f"{q:.2g}") for q in qs if q > 0})
    return out


def _eps_key(e: float) -> str:
    return f"{e:g}"


def summarize(batch: MarginBatch, y_index=None, eps=None, *, classes=None, row_ids=None,
              top: int = 10) -> dict:
    """The margin report's summary.

    Parameters
    ----------
    batch : MarginBatch
    y_index : (n,) int, optional
        Labels as class indices; defaults to ``batch.label_index``. Without labels a row counts
        as "correct" when it is predicted as its own prediction, so ``robust_accuracy`` is the
        *robust fraction* (the summary says so in ``robust_accuracy_basis``).
    eps : list of float, optional
        Radii; default :func:`default_eps` of the margins.
    classes, row_ids : optional
        Used to label the ``most_fragile`` table (class values and row ids).
    top : int
        Rows in ``most_fragile``.

    Returns
    -------
    dict with ``robust_accuracy`` (keyed by ``f"{eps:g}"``: the fraction of rows correctly
    classified whose margin exceeds eps; a number when every margin is exact, else
    ``{"lower": .., "upper": ..}``: lower counts rows whose certified lower bound exceeds eps,
    upper excludes only rows with a verified perturbation of norm <= eps), ``eps``,
    ``robust_accuracy_basis``, ``median_margin``, ``min_margin`` (over rows with a margin;
    None when none or infinite), ``n_rows``, ``n_exact``, ``exact_means`` (what ``exact``
    promises), ``norm`` and ``most_fragile``
    (the ``top`` rows with the smallest margins).
    """
    n = len(batch)
    y = batch.label_index if y_index is None else np.asarray(y_index)
    if y is not None and np.asarray(y).shape != (n,):
        raise InputError(f"labels must have one entry per row ({n}), got shape {np.asarray(y).shape}.")
    correct = np.ones(n, dtype=bool) if y is None else (np.asarray(y) == batch.predicted_index)
    margin = batch.margin
    eps = default_eps(margin) if eps is None else [float(e) for e in eps]
    if any(not math.isfinite(e) or e < 0 for e in eps):
        raise InputError("every epsilon must be a finite number >= 0.")
    all_exact = bool(np.all(batch.exact))
    lower = np.where(batch.exact, margin, np.nan_to_num(batch.lower_bound, nan=0.0))
    upper = np.where(np.isnan(margin), np.inf, margin)  # no perturbation found: may be robust
    robust = {}
    for e in eps:
        if all_exact:
            robust[_eps_key(e)] = float(np.mean(correct & (margin > e))) if n else None
        else:
            robust[_eps_key(e)] = {
                "lower": float(np.mean(correct & (lower > e))) if n else None,
                "upper": float(np.mean(correct & (upper > e))) if n else None,
            }
    known = margin[~np.isnan(margin)]
    median = _num(np.median(known)) if known.size else None
    minimum = _num(np.min(known)) if known.size else None
    from invaudit.io.report import smallest_first

    order = smallest_first(np.where(np.isnan(margin), np.inf, margin), top)
    ids = np.arange(n) if row_ids is None else np.asarray(row_ids)

    def cls(k):
        k = int(k)
        if k < 0:
            return None
        return to_jsonable(np.asarray(classes)[k]) if classes is not None else k

    fragile = [
        {"row": int(ids[i]), "margin": _num(margin[i]), "lower_bound": _num(batch.lower_bound[i]),
         "exact": bool(batch.exact[i]), "predicted_class": cls(batch.predicted_index[i]),
         "nearest_class": cls(batch.nearest_index[i])}
        for i in order if not np.isnan(margin[i])
    ]
    return {
        "norm": batch.norm,
        "eps": eps,
        "robust_accuracy": robust,
        "robust_accuracy_basis": "labels" if y is not None
        else "predictions (no labels given: the fraction of rows whose margin exceeds eps)",
        "median_margin": median,
        "min_margin": minimum,
        "n_rows": int(n),
        "n_exact": int(np.sum(batch.exact)),
        "exact_means": EXACT_MEANS,
        "most_fragile": fragile,
    }
