"""Margins for mixed-type rows (a ColumnTransformer pipeline), in the user's own columns.

The margin of a row is the distance to the nearest valid row of the input schema that the
pipeline assigns to any class other than the row's own prediction, in the mixed distance of
:mod:`invaudit.counterfactual.tabular` (numeric columns in the chosen norm and scale, each changed
categorical column at ``categorical_cost``). It is that module's counterfactual with the target
"any other class", so it is exact exactly where that is: linear final estimators (enumeration of
the category choices, each solved exactly); other final forms give a verified upper bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from invaudit.counterfactual.tabular import TabularCounterfactuals, _json, _num, delta_vector, tabular_counterfactuals
from invaudit.models.base import to_jsonable

__all__ = ["tabular_margins", "TabularMargins"]


@dataclass(frozen=True)
class TabularMargins:
    """One margin per row: ``margin`` (NaN where no other class was reached), ``nearest_index``
    (-1 then), the perturbed rows ``points`` in the input's columns, ``changes`` per row as
    ``(column, old, new)``, ``exact``, ``lower_bound`` (NaN where none), ``method``."""

    margin: np.ndarray
    predicted_index: np.ndarray
    nearest_index: np.ndarray
    points: object
    exact: np.ndarray
    lower_bound: np.ndarray
    method: np.ndarray
    changes: list
    norm: str
    labels_index: object = None
    status: object = None
    counterfactuals: TabularCounterfactuals = None

    def __len__(self) -> int:
        return len(self.margin)

    @property
    def label_index(self):
        """The given labels as class indices (the name :func:`invaudit.margins.summarize` reads)."""
        return self.labels_index

    def records(self, classes, row_ids) -> list[dict]:
        """DESIGN.md margin fields per row; ``perturbation`` is the numeric change per input column
        (None for categorical columns, whose changes are listed in ``changes``)."""
        classes = np.asarray(classes)
        row_ids = list(row_ids)
        numeric = set(self.counterfactuals.numeric_columns) if self.counterfactuals else set()

        def label(i):
            i = int(i)
            return None if i < 0 else to_jsonable(classes[i])

        out = []
        for i in range(len(self)):
            pert = delta_vector(list(self.points.columns), numeric, self.changes[i])
            rec = {
                "row": to_jsonable(row_ids[i]),
                "predicted_class": label(self.predicted_index[i]),
                "margin": _num(self.margin[i]),
                "norm": self.norm,
                "nearest_class": label(self.nearest_index[i]),
                "perturbation": pert if np.isfinite(self.margin[i]) else None,
                "exact": bool(self.exact[i]),
                "lower_bound": _num(self.lower_bound[i]),
                "method": str(self.method[i]),
                "changes": [f"{c}: {_fmt(o)} -> {_fmt(n)}" for c, o, n in self.changes[i]],
            }
            if self.labels_index is not None:
                rec = {"row": rec["row"], "label": label(self.labels_index[i]), **{k: v for k, v in rec.items()
                                                                                   if k != "row"}}
            out.append(rec)
        return out


def _fmt(v):
    from invaudit.counterfactual.tabular import _show

    return _show(v)


def tabular_margins(tm, frame, *, norm="l2", labels_index=None, immutable=(), increase_only=(),
                    decrease_only=(), integer=(), bounds=None, scale=None, categorical_cost=1.0,
                    allow_missing_change=False, time_limit=10.0, seed=0,
                    max_combinations=20000, progress=None, chunk_rows=None, jobs=1,
                    scheduler=None) -> TabularMargins:
    """Distance of each row to the nearest valid row the pipeline assigns to another class.

    Parameters are those of :func:`invaudit.counterfactual.tabular.tabular_counterfactuals`
    (without ``target`` and ``confidence``); ``labels_index`` (n,) are the given labels as class
    indices, kept for the report (margins are measured from the *predicted* class). ``jobs`` and
    ``scheduler`` solve its chunks of ``chunk_rows`` rows in parallel, with identical answers.

    What is exact
    -------------
    Linear final estimators: exact (every category choice solved exactly; L2 with movable
    integer columns is not, and carries the continuous relaxation as ``lower_bound``). Other
    final forms: a verified upper bound, ``exact: False``.
    """
    cf = tabular_counterfactuals(
        tm, frame, target="other", norm=norm, immutable=immutable, increase_only=increase_only,
        decrease_only=decrease_only, integer=integer, bounds=bounds, scale=scale,
        categorical_cost=categorical_cost, allow_missing_change=allow_missing_change,
        time_limit=time_limit, seed=seed, max_combinations=max_combinations, progress=progress,
        chunk_rows=chunk_rows, jobs=jobs, scheduler=scheduler)
    ok = cf.status == "found"
    return TabularMargins(
        margin=np.where(ok, cf.distance, np.nan), predicted_index=cf.original_index,
        nearest_index=np.where(ok, cf.target_index, -1), points=cf.points, exact=cf.exact & ok,
        lower_bound=cf.lower_bound, method=cf.method, changes=cf.changes, norm=norm,
        labels_index=None if labels_index is None else np.asarray(labels_index),
        status=cf.status, counterfactuals=cf)
