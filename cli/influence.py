"""``invaudit influence``: which training rows are responsible for a prediction (Koh & Liang)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from invaudit.errors import InputError
from invaudit.io import parse_rows
from invaudit.render import Format

from ._common import FormatOpt, JsonOut, IdColumn, LabelColumn, Labels, ModelArg, Quiet, ReportSchemaOne, Run, Sha256, Trust, check_id_column, note, progress, rows_spec, working
from ._parallel_opts import Jobs, Scheduler


def parse_group(spec: str, ds, feature_names=None) -> np.ndarray:
    """``--group``: a row spec (``0-9,15``) or ``COLUMN=VALUE`` (rows whose feature equals VALUE)."""
    if "=" in spec:
        col, _, value = spec.partition("=")
        col = col.strip()
        names = ds.columns or (None if feature_names is None else [str(f) for f in feature_names])
        if names is not None and col in names:
            j = names.index(col)
        else:
            try:
                j = int(col)
            except ValueError:
                raise InputError(f"--group '{spec}': '{col}' is not a feature name or index.") from None
            if not 0 <= j < ds.X.shape[1]:
                raise InputError(f"--group '{spec}': feature index {j} is out of range.")
        try:
            v = float(value)
        except ValueError:
            raise InputError(f"--group '{spec}': '{value}' is not a number.") from None
        rows = np.flatnonzero(np.asarray(ds.X[:, j]) == v)
        if rows.size == 0:
            raise InputError(f"--group '{spec}': no training row has {col} = {value}.")
        return rows
    return parse_rows(spec, ds.n_rows, what="--group")


def _group_spec(value: Optional[str]) -> Optional[str]:
    """--group's syntax at parse time (a usage error, exit 2): a row spec, or COLUMN=VALUE with a
    number for VALUE. Whether COLUMN is a feature and any row matches is bad input (exit 3)."""
    if value is None:
        return None
    if "=" not in value:
        return rows_spec(value)
    col, _, number = value.partition("=")
    if not col.strip():
        raise typer.BadParameter(f"{value!r}: name the column before '=' (COLUMN=VALUE).")
    try:
        float(number)
    except ValueError:
        raise typer.BadParameter(f"{value!r}: '{number}' is not a number (COLUMN=VALUE).") from None
    return value


def influence(
    model: ModelArg,
    train: Annotated[Path, typer.Argument(metavar="TRAIN", help="The training data the model was fitted on (with labels).", show_default=False)],
    test: Annotated[Path, typer.Argument(metavar="TEST", help="The rows whose predictions to explain.", show_default=False)],
    test_rows: Annotated[Optional[str], typer.Option("--rows", metavar="SPEC", callback=rows_spec, help="Test rows to explain, e.g. 0-4 (default: all).")] = None,
    test_rows_alias: Annotated[Optional[str], typer.Option("--test-rows", metavar="SPEC", callback=rows_spec, help="The same as --rows.")] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Helpful and harmful training rows listed per test row.")] = 10,
    verify_loo: Annotated[int, typer.Option("--verify-loo", min=0, metavar="N", help="Refit without each of the top N rows and compare.")] = 0,
    features: Annotated[bool, typer.Option("--features", help="Also give each listed row's per-feature gradient (I_pert,loss).")] = False,
    group: Annotated[Optional[str], typer.Option("--group", metavar="SPEC", callback=_group_spec, help="Predict the effect of removing a set of training rows: a row spec or COLUMN=VALUE.")] = None,
    estimate: Annotated[str, typer.Option("--estimate", help="auto (the best this model has), first-order or leverage-corrected; k-nearest neighbours, GaussianNB / QDA and trees have one each (exact-loo, leaf-refit).")] = "auto",
    jobs: Jobs = None,
    scheduler: Scheduler = None,
    label_column: LabelColumn = None,
    id_column: IdColumn = None,
    labels: Labels = None,
    trust: Trust = False,
    sha256: Sha256 = None,
    format: FormatOpt = Format.table,
    json: JsonOut = None,
    schema: ReportSchemaOne = None,
    quiet: Quiet = False,
) -> None:
    """Rank training rows by how much each test row's loss would change without them."""
    from invaudit.influence import build_objective
    from invaudit.influence import influence as solve
    from invaudit.influence import group_influence
    from invaudit.influence import verify_loo as refit_check

    from invaudit import parallel

    if test_rows is not None and test_rows_alias is not None:
        from ._errors import click_exceptions

        raise click_exceptions.UsageError("give the test rows once: --rows and --test-rows are the same option.")
    rows_flag = "--test-rows" if test_rows_alias is not None else "--rows"
    test_rows = test_rows if test_rows_alias is None else test_rows_alias
    if scheduler is None:
        parallel.prestart(jobs, ("sklearn.base", "invaudit.models", "invaudit.influence"))
    check_id_column(id_column, test)  # TEST's rows are the ones named (TRAIN's keep their numbers without it)
    run = Run("influence", model, trust=trust, sha256=sha256)
    form = run.form
    tr = run.data(train, label_column=label_column, id_column=id_column, labels=labels, require_labels=True, primary=False)
    te = run.data(test, label_column=label_column, id_column=id_column)  # --labels belongs to an NPY TRAIN
    rows = parse_rows(test_rows, te.n_rows, what=rows_flag)  # errors name the flag the user typed
    yt = None if te.y_index is None else te.y_index[rows]
    if run.tabular is not None:
        # typed rows: the final estimator's parameters, on what the ColumnTransformer makes of the rows
        form, X_train, Xt = _encoded(run, tr, te, rows, features=features, group=group)
    else:
        X_train = np.asarray(tr.X, dtype=np.float64)
        Xt = np.asarray(te.X[rows], dtype=np.float64)
    if getattr(form, "kind", None) == "trees":  # leaf refits, never exact (influence/_trees.py)
        from invaudit.influence import build_tree_objective as build_objective
    if getattr(form, "kind", None) == "neighbors":  # exact leave-one-out (influence/_neighbors.py)
        from invaudit.influence import build_neighbors_objective as build_objective
    if getattr(form, "kind", None) == "quadratic":  # exact leave-one-out (influence/_quadratic.py)
        from invaudit.influence import build_quadratic_objective as build_objective
    with working("preparing the training objective"):
        obj = build_objective(form, X_train, tr.y_index)
    known = tuple(getattr(obj, "estimates", ()))
    if estimate != "auto" and known and estimate not in known:  # the solver's message names no flag
        raise InputError(f"--estimate '{estimate}': for this model choose {', '.join(known)} or auto.")
    for n in obj.notes:
        note(n)
    with progress("influence", len(rows)) as update:
        res = parallel.influence(obj, Xt, yt, top=max(top, verify_loo), estimate=estimate, features=features,
                                 test_row_ids=rows, progress=update, jobs=jobs, scheduler=scheduler)
    results = res.records()
    for r in results:  # --top N listed; more may have been computed for --verify-loo
        r["helpful"], r["harmful"] = r["helpful"][:top], r["harmful"][:top]
    summary = res.summary()
    # What "exact" promises here: the influence function itself (an exact Hessian solve), not
    # that a refit would change the loss by exactly this much; --verify-loo measures that.
    summary["exact_means"] = ("the influence function is computed with the exact Hessian of the model's own "
                              "objective" if summary.get("exact") else "the Hessian solve is approximate "
                              "(damped conjugate gradients)") + "; loss_change_if_removed estimates a refit (see estimate)"
    if getattr(obj, "kind", None) == "neighbors":
        summary["exact_means"] = ("loss_change_if_removed is the exact change of the test row's log loss after "
                                  "refitting without the row (its neighbours' votes re-counted)")
    if getattr(obj, "kind", None) == "quadratic":
        summary["exact_means"] = ("loss_change_if_removed is the exact change of the test row's log loss after "
                                  "refitting without the row (each class's Gaussian refitted in closed form)"
                                  + ("" if obj.exact else "; not exact here: TRAIN reproduces the model's statistics "
                                     "only to rounding (see the notes)"))
    if getattr(obj, "kind", None) == "kernel":
        summary["exact_means"] = ("never exact for SVMs: the exact Hessian of a smoothed-hinge surrogate of the "
                                  "machine (Koh & Liang sec. 4.1); --verify-loo N refits that surrogate")
    if getattr(obj, "kind", None) == "trees":
        summary["exact_means"] = (f"never exact for trees: {obj.method}, the leaf values a row took part in "
                                  "recomputed without it; --verify-loo N measures it against refits")
    summary["train"] = {"path": tr.path, "sha256": tr.sha256, "n_rows": tr.n_rows}
    if verify_loo:
        if yt is None:
            raise InputError(f"--verify-loo needs labels for the test rows ({te.path}).")
        chosen = res.top_rows(verify_loo)
        with progress("refitting", len(chosen)) as update:
            check = refit_check(obj, Xt, yt, chosen, estimate=estimate, test_row_ids=rows, progress=update)
        summary["verification"] = check.summary()
        if getattr(obj, "kind", None) == "quadratic":  # the estimator's own closed-form fit
            summary["verification"]["notes"] = [
                "the real changes are from scikit-learn refits of the estimator without each row (its own "
                "closed-form fit, on the rows as the fixed preprocessing makes them), relative to the model"]
        if getattr(obj, "kind", None) == "trees":  # refits from scratch, not warm-started
            summary["verification"]["notes"] = [
                "the real changes are from refits of the estimator (same parameters and random_state) "
                "without each row, relative to a refit on all rows; a forest's bootstrap draws change with "
                "the number of rows, so its real changes carry refit noise"]
    if group is not None:
        g_rows = parse_group(group, tr, form.feature_names)
        if yt is None:
            raise InputError(f"--group needs labels for the test rows ({te.path}).")
        g = group_influence(obj, Xt, yt, g_rows, test_row_ids=rows, refit=bool(verify_loo))
        summary["group"] = {"spec": group, **g.summary(), "per_test_row": g.records()}
    params = {"top": top, "verify_loo": verify_loo, "features": features, "group": group, "estimate": estimate,
              "test_rows": test_rows, "train": str(train), "preprocessing_fixed": bool(form.preprocessing)}
    run.emit(params=params, results=results, summary=summary, fmt=format, json_path=json)


def _encoded(run, tr, te, rows, *, features, group):
    """(final form, encoded train rows, encoded test rows) for a model that reads typed rows."""
    from invaudit.errors import UnsupportedModelError
    from invaudit.influence import influence_family

    tm = run.tabular

    final = tm.final_form
    if tm.preprocessor is None or final is None or influence_family(final) is None:
        raise UnsupportedModelError(
            "influence needs a ColumnTransformer in front of a LogisticRegression, MLPClassifier, SVC, tree model, "
            "k-nearest neighbours, GaussianNB or QDA; "
            f"{run.model_info['estimator']} has none it can read.")
    if features or group is not None:
        raise InputError("--features and --group are not available for models that read typed rows yet.")
    note("the ColumnTransformer stays fixed; influence is for the final estimator's parameters")
    return tm.final_form, tm.encoded(tr.frame), tm.encoded(te.frame.iloc[rows])


def register(app) -> None:
    app.command("influence")(influence)
