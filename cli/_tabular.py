"""``counterfactual`` and ``margin`` for models that read typed rows (a ColumnTransformer pipeline).

The rows stay in the user's own columns from the CSV to the report: constraint flags name those
columns, answers are given as changes to them (``employment: unemployed -> salaried``), and
``--out`` writes the changed rows in the same columns so the model reads them back.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import numpy as np

from invaudit.errors import InputError
from invaudit.models.tabular import column_list as _column_list
from invaudit.models.tabular import numeric_constraints as _numeric_constraints
from invaudit.models.tabular import whole_number_columns

from ._common import counterfactual_summary, index_column, note


def column_list(spec: Optional[str], tm, what: str) -> tuple:
    """``"age,income"`` -> ``("age", "income")``, every name a column of the model's input."""
    return _column_list(spec, tm, what)


def integer_columns(spec: Optional[str], tm, train_ds, ds=None) -> tuple:
    """``--integer`` columns, plus the numeric columns whose every value in ``--train`` is a whole
    number, or without ``--train`` in every row read from DATA (said on stderr, so a user who
    meant otherwise knows). Answers are rows of the input's schema: a column of whole numbers
    (an age, a count) gets whole numbers back, never 48.99999999979225."""
    declared = column_list(spec, tm, "--integer")
    src, where = (train_ds, "--train row") if train_ds is not None else (ds, "row of DATA")
    if src is None:
        return declared
    inferred = whole_number_columns(tm, src.frame, exclude=declared)
    if inferred:
        note(f"whole numbers in every {where}, so kept whole: {', '.join(inferred)} (--integer)")
    return declared + tuple(inferred)


def numeric_constraints(tm, train_ds, *, scale: str, bounds: str):
    """``(bounds, scale)`` dicts for the numeric columns, from ``--train``."""
    return _numeric_constraints(tm, None if train_ds is None else train_ds.frame, scale=scale, bounds=bounds)


def write_points(path: Path, points, ids, id_name: Optional[str], rows, keep, integer=()) -> int:
    """The answers as a CSV in the input's own columns (only rows with an answer); whole-number
    columns are written as whole numbers (``3``, not ``3.0``), blanks as empty cells."""
    from invaudit.io import write_atomic

    if path.suffix.lower() != ".csv":
        raise InputError(f"--out {path}: a model that reads typed rows writes its answers as .csv.")
    frame = points.iloc[np.flatnonzero(keep)].copy()
    for c in integer:
        v = np.asarray(frame[c], dtype=np.float64)
        if np.all(~np.isfinite(v) | (v == np.round(v))):
            frame[c] = frame[c].astype("Int64")
    label = index_column(id_name, frame.columns)
    key = ids[rows[keep]] if ids is not None else rows[keep]
    frame.insert(0, label, key)
    buf = io.StringIO()
    frame.to_csv(buf, index=False, na_rep="")
    try:
        write_atomic(path, buf.getvalue())
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}.") from None
    return int(keep.sum())


def _options(tm, train_ds, *, scale, bounds, immutable, increase_only, decrease_only, integer, categorical_cost,
             seed, ds=None) -> dict:
    """The constraint flags as the typed solvers' keyword arguments (one place for both commands)."""
    rng, spread = numeric_constraints(tm, train_ds, scale=scale, bounds=bounds)
    return dict(immutable=column_list(immutable, tm, "--immutable"),
                increase_only=column_list(increase_only, tm, "--increase-only"),
                decrease_only=column_list(decrease_only, tm, "--decrease-only"),
                integer=integer_columns(integer, tm, train_ds, ds), bounds=rng, scale=spread,
                categorical_cost=categorical_cost, seed=seed)


def run_counterfactual(run, ds, train_ds, *, rows, target, confidence, norm, scale, bounds, immutable,
                       increase_only, decrease_only, integer, categorical_cost, seed, out, id_column, update,
                       jobs=None, scheduler=None, time_limit=None):
    """Counterfactuals for a typed-row model; returns ``(results, summary)``; ``jobs`` and
    ``scheduler`` as ``--jobs`` / ``--scheduler`` (identical answers)."""
    from invaudit.counterfactual.tabular import tabular_counterfactuals

    tm = run.tabular
    opts = _options(tm, train_ds, scale=scale, bounds=bounds, immutable=immutable, increase_only=increase_only,
                    decrease_only=decrease_only, integer=integer, categorical_cost=categorical_cost, seed=seed,
                    ds=ds)
    frame = ds.frame.iloc[rows].reset_index(drop=True)
    if time_limit is not None:  # --time-limit (else the solver's own default)
        opts["time_limit"] = float(time_limit)
    res = tabular_counterfactuals(tm, frame, target=target, confidence=confidence, norm=norm, progress=update,
                                  jobs=jobs, scheduler=scheduler, **opts)
    results = res.records(tm.classes, rows)
    if out is not None:
        keep = np.asarray(res.status) == "found"
        k = write_points(out, res.points, ds.ids, id_column, rows, keep, opts["integer"])
        note(f"wrote {k} counterfactual row(s) to {out}")
    return results, counterfactual_summary(results)


def run_margin(run, ds, train_ds, *, rows, norm, scale, bounds, immutable, increase_only, decrease_only,
               integer, categorical_cost, seed, out, id_column, update, jobs=None, scheduler=None, time_limit=None):
    """Margins for a typed-row model; returns ``(bundle, records)``; the bundle has the columns
    :func:`invaudit.margins.summarize` reads, so both kinds of model share one summary."""
    from invaudit.margins._tabular import tabular_margins

    tm = run.tabular
    opts = _options(tm, train_ds, scale=scale, bounds=bounds, immutable=immutable, increase_only=increase_only,
                    decrease_only=decrease_only, integer=integer, categorical_cost=categorical_cost, seed=seed,
                    ds=ds)
    frame = ds.frame.iloc[rows].reset_index(drop=True)
    y_index = None if ds.y_index is None else ds.y_index[rows]
    if time_limit is not None:  # --time-limit (else the solver's own default)
        opts["time_limit"] = float(time_limit)
    res = tabular_margins(tm, frame, norm=norm, labels_index=y_index, progress=update, jobs=jobs,
                          scheduler=scheduler, **opts)
    results = res.records(tm.classes, rows)
    if out is not None:
        keep = np.isfinite(np.asarray(res.margin, dtype=np.float64))
        k = write_points(out, res.points, ds.ids, id_column, rows, keep, opts["integer"])
        note(f"wrote {k} adversarial row(s) to {out}")
    return res, results

