"""The audit checks on a model that reads typed rows (a ColumnTransformer pipeline, a
HistGradientBoosting with native categorical features): the same library calls the commands
make (``counterfactual``, ``margin``, ``influence``, ``explain`` on typed rows), so a check's
value is what the command reports for the same rows and options.

Data comes from :meth:`invaudit.audit.runner.Context.data`, which reads such a model's CSV files
with its input schema (``ds.frame``, NaN for blanks; ``ds.X`` is None).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError, UnsupportedModelError

TRAIN_HINT = "a train file (train: in the suite)"


def rows_frame(ds, n):
    """The first ``n`` rows of a typed data set (all when ``n`` is None), renumbered from 0."""
    k = ds.n_rows if n is None else min(int(n), ds.n_rows)
    return ds.frame.iloc[:k].reset_index(drop=True)


def train_frame(ctx, spec):
    """The suite's training rows as a typed frame, or None when the suite names no train file."""
    return ctx.data(spec.source, "train").frame if spec.source.train is not None else None


def solver_options(tm, ctx, spec, p) -> dict:
    """The suite's constraint keys as keyword arguments of the typed-row solvers, worked out as the
    commands do: bounds and scale measured on the train file, and the numeric columns with whole
    numbers in every training row kept whole (``integer:`` adds columns)."""
    from ..models.tabular import column_list, numeric_constraints, whole_number_columns

    train = train_frame(ctx, spec)
    rng, spread = numeric_constraints(tm, train, scale=p.get("scale", "none"), bounds=p.get("bounds", "none"),
                                      option_name=lambda key: f"{spec.where}.{key}", train_hint=TRAIN_HINT)
    declared = column_list(p.get("integer"), tm, f"{spec.where}.integer")
    return {
        "immutable": column_list(p.get("immutable"), tm, f"{spec.where}.immutable"),
        "increase_only": column_list(p.get("increase_only"), tm, f"{spec.where}.increase_only"),
        "decrease_only": column_list(p.get("decrease_only"), tm, f"{spec.where}.decrease_only"),
        "integer": declared + whole_number_columns(tm, train, exclude=declared),
        "bounds": rng, "scale": spread, "categorical_cost": float(p.get("categorical_cost", 1.0)),
    }


def margins(tm, ctx, spec, p):
    """``(batch, y_index)``: the typed rows' margins (``invaudit margin`` on typed rows) and their
    labels as class indices (None without labels)."""
    from ..margins._tabular import tabular_margins

    ds = ctx.data(spec.source, "test", require_labels="min_robust_accuracy" in p)
    frame = rows_frame(ds, p.get("rows"))
    y = None if ds.y_index is None else ds.y_index[: len(frame)]
    batch = tabular_margins(tm, frame, norm=p.get("norm", "l2"), labels_index=y, seed=int(p.get("seed", 0)),
                            time_limit=ctx.solver_time_limit(10.0), **solver_options(tm, ctx, spec, p))
    return batch, y


def counterfactuals(tm, ctx, spec, p, target):
    """The typed rows' counterfactuals (``invaudit counterfactual`` on typed rows); ``target`` is
    "other" or a class index."""
    from ..counterfactual.tabular import tabular_counterfactuals

    ds = ctx.data(spec.source, "test")
    frame = rows_frame(ds, p.get("rows"))
    if target != "other":
        target = np.full(len(frame), int(target), dtype=np.intp)
    return tabular_counterfactuals(tm, frame, target=target, confidence=p.get("confidence"), norm=p.get("norm", "l2"),
                                   seed=int(p.get("seed", 0)), time_limit=ctx.solver_time_limit(10.0),
                                   **solver_options(tm, ctx, spec, p))


def influence_inputs(tm, ctx, spec, n):
    """``(form, X_train, y_train, X_test, y_test)`` for influence on a typed-row model: the final
    estimator's parameters on what the (fixed) ColumnTransformer makes of the rows, as
    ``invaudit influence`` does."""
    from ..influence import supports

    if tm.preprocessor is None or tm.final_form is None or supports(tm.final_form) is None:
        raise UnsupportedModelError(
            f"influence needs a ColumnTransformer in front of a LogisticRegression or MLPClassifier; "
            f"{tm.describe()['estimator']} has none it can read.")
    tr = ctx.data(spec.source, "train", require_labels=True)
    te = ctx.data(spec.source, "test")
    frame = rows_frame(te, n)
    y = None if te.y_index is None else te.y_index[: len(frame)]
    return tm.final_form, tm.encoded(tr.frame), tr.y_index, tm.encoded(frame), y


def explain_inputs(tm, ctx, spec, p):
    """``(coded form, X, baseline)`` for explain on typed rows (``invaudit explain`` on typed rows):
    one feature per input column, a category as its code; the baseline is ``contrast`` unless the
    check says ``mean`` or ``zero``."""
    from ..explain import typed_baseline
    from ..explain._typed import TYPED_BASELINES
    from ..models.base import class_indices
    from ..models.tabular import CodedRows

    if p.get("shape") is not None:
        raise InputError(f"{spec.where}.shape: this model reads typed rows (named columns), which are not pixels.")
    baseline = str(p.get("baseline", "contrast")).strip().lower()
    if baseline not in TYPED_BASELINES:
        raise InputError(f"{spec.where}.baseline: a model that reads typed rows takes one of "
                         f"{', '.join(TYPED_BASELINES)} (a number means nothing for a categorical column), "
                         f"got {p.get('baseline')!r}.")
    if baseline != "zero" and spec.source.train is None:
        raise InputError(f"{spec.where}.baseline: {baseline} is the typical training row"
                         + (" of the other classes" if baseline == "contrast" else "")
                         + f", so it needs {TRAIN_HINT}; or use baseline: zero.")
    coded = CodedRows(tm)
    ds = ctx.data(spec.source, "test")
    X = coded.encode(rows_frame(ds, p.get("rows", 20)))
    X_train = pred_train = None
    tframe = train_frame(ctx, spec)
    if tframe is not None and baseline != "zero":
        X_train = coded.encode(tframe)
        if baseline == "contrast":
            pred_train = tm.predict_index(tframe)
    labels = class_indices(coded.classes, np.asarray(coded.predict(X))) if len(X) else np.zeros(0, np.intp)
    return coded, X, typed_baseline(baseline, coded, labels, X_train=X_train, train_pred=pred_train)
