"""``invaudit explain``: which parts of an input alone are enough for the prediction (MultiReX)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from invaudit.errors import InputError
from invaudit.explain import DEFAULT_ITERATIONS, DEFAULT_MAX_EXPLANATIONS
from invaudit.io import parse_rows, write_atomic
from invaudit.render import Format

from ._common import FormatOpt, JsonOut, IdColumn, LabelColumn, Labels, ModelArg, Quiet, ReportSchemaOne, Rows, Run, Seed, Sha256, Trust, check_id_column, check_label_column, note, progress
from ._parallel_opts import Jobs, Scheduler

#: ``--time-limit`` / ``--run-time-limit`` as counterfactual and margin take them, in explain's terms.
ExplainTimeLimit = Annotated[Optional[float], typer.Option("--time-limit", min=0.0, metavar="SECONDS", help="Seconds for each row (default: no limit; rows are searched in batches of up to 32 that share SECONDS per row). A row out of time keeps what it has, every explanation still verified: a coarser responsibility map, fewer or not 1-minimal explanations; its method says so.")]
ExplainRunTimeLimit = Annotated[Optional[float], typer.Option("--run-time-limit", min=0.0, metavar="SECONDS", help="Seconds for the whole run; rows still to do then get the quick verified search only (the whole input grown into one sufficient explanation).")]


def _unit(value: Optional[float]) -> Optional[float]:
    """--confidence: a probability in (0, 1] (a usage error otherwise, exit 2)."""
    if value is not None and not 0.0 < value <= 1.0:
        raise typer.BadParameter(f"{value:g}: expected a probability above 0 and at most 1.")
    return value


def _shape_option(value: Optional[str]) -> Optional[str]:
    """--shape's syntax (two positive integers, ``HxW``): a usage error otherwise (exit 2). Whether
    H*W is the model's number of features is checked once the model is loaded (exit 3)."""
    if value is not None:
        from invaudit.explain._multirex import shape_hw

        try:
            shape_hw(value)
        except ValueError as exc:
            raise typer.BadParameter(f"{value!r}: {exc}.") from None
    return value


def _baseline_option(value: Optional[str]) -> Optional[str]:
    """--baseline: zero, mean, contrast or a finite number (a usage error otherwise, exit 2); which
    of them this model takes (contrast: typed rows only) is checked once it is loaded (exit 3)."""
    if value is not None:
        from invaudit.explain._multirex import baseline_syntax

        try:
            baseline_syntax(value)
        except ValueError as exc:
            raise typer.BadParameter(f"{value!r}: {exc}.") from None
    return value


def explain(
    model: ModelArg,
    data: Annotated[Path, typer.Argument(metavar="DATA", help="Rows to explain (.csv, .npy, .npz).", show_default=False)],
    rows: Rows = None,
    shape: Annotated[Optional[str], typer.Option("--shape", metavar="HxW", callback=_shape_option, help="Treat rows as HxW images (spatial windows, heat maps).")] = None,
    baseline: Annotated[Optional[str], typer.Option("--baseline", callback=_baseline_option, help="Value for features outside an explanation: zero (default), mean (of --train) or a number. Typed rows: contrast (default; per row, the typical --train row the model assigns another class), mean or zero.", show_default=False)] = None,
    train: Annotated[Optional[Path], typer.Option("--train", metavar="TRAIN", help="Training data (for --baseline mean; typed rows: needed for contrast and mean).")] = None,
    confidence: Annotated[Optional[float], typer.Option("--confidence", metavar="P", callback=_unit, help="Sufficient also needs p(label) >= P, 0 < P <= 1.")] = None,
    max_explanations: Annotated[int, typer.Option("--max-explanations", min=1, help="At most N explanations per row.")] = DEFAULT_MAX_EXPLANATIONS,
    overlap: Annotated[float, typer.Option("--overlap", min=0.0, max=1.0, help="Largest pairwise Dice overlap kept (0: disjoint).")] = 0.0,
    iterations: Annotated[int, typer.Option("--iterations", min=1, help="Random partitions for the responsibility map.")] = DEFAULT_ITERATIONS,
    seed: Seed = 0,
    time_limit: ExplainTimeLimit = None,
    run_time_limit: ExplainRunTimeLimit = None,
    jobs: Jobs = None,
    scheduler: Scheduler = None,
    png: Annotated[Optional[Path], typer.Option("--png", metavar="DIR", help="Write heat maps and explanations as PNG images (needs --shape).")] = None,
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
    """Find several minimal sufficient explanations per row and a causal responsibility map."""
    from invaudit.explain import explain_rows, parse_shape, records, resolve_baseline, summary

    from invaudit import parallel

    if png is not None and shape is None:  # before the model loads (bad input, exit 3, as before)
        raise InputError("--png draws images and needs --shape HxW.")
    check_label_column(label_column, data, train)
    check_id_column(id_column, data)
    if scheduler is None:
        parallel.prestart(jobs)  # an explicit --jobs N: workers start while the model and data load
    run = Run("explain", model, trust=trust, sha256=sha256)
    ds = run.data(data, label_column=label_column, id_column=id_column, labels=labels, rows=rows)
    row_ids = parse_rows(rows, ds.n_rows)
    columns = None
    if run.tabular is not None:
        # typed rows, coded as numbers: numeric columns as they are, a category as its index
        # (one feature per input column); every mutant is a valid row of the model's schema
        from invaudit.explain import typed_baseline
        from invaudit.models.base import class_indices
        from invaudit.models.tabular import CodedRows

        if shape is not None or png is not None:
            raise InputError("--shape and --png draw images; this model reads typed rows (named columns), "
                             "which are not pixels.")
        form = CodedRows(run.tabular)
        baseline = "contrast" if baseline is None else baseline
        X = form.encode(ds.frame.iloc[row_ids].reset_index(drop=True))
        hw = None
        X_train = pred_train = None
        if train is not None:
            tframe = run.data(train, label_column=label_column, id_column=id_column, primary=False).frame
            X_train = form.encode(tframe)
            if baseline.strip().lower() == "contrast":
                pred_train = run.tabular.predict_index(tframe)
        labels_idx = class_indices(form.classes, np.asarray(form.predict(X))) if len(row_ids) else np.zeros(0, np.intp)
        base = typed_baseline(baseline, form, labels_idx, X_train=X_train, train_pred=pred_train)
        columns = form.feature_names
    else:
        form = run.form
        baseline = "zero" if baseline is None else baseline
        if baseline.strip().lower() == "contrast":
            raise InputError("--baseline contrast is for models that read typed rows (a ColumnTransformer pipeline); "
                             "this model takes zero, mean or a number.")
        X = np.asarray(ds.X[row_ids], dtype=np.float64)
        hw = parse_shape(shape, form.n_features)
        X_train = run.data(train, label_column=label_column, id_column=id_column, primary=False).X if train is not None else None
        base = resolve_baseline(baseline, form.n_features, X_train=X_train)
    import time as _time

    # the run's clock starts with the search (as counterfactual's and margin's); wall-clock time,
    # the same in every worker process
    run_deadline = None if run_time_limit is None else _time.time() + run_time_limit
    with progress("explaining", len(row_ids)) as update:
        res = parallel.explain_rows(form, X, rows=row_ids, baseline=base, shape=hw, confidence=confidence,
                                    max_explanations=max_explanations, overlap=overlap, iterations=iterations,
                                    seed=seed, progress=lambda done: update(done), jobs=jobs, scheduler=scheduler,
                                    time_limit=time_limit, run_deadline=run_deadline)
    cut = [int(r.row) for r in res if r.time_limited]
    if cut:
        shown = ", ".join(map(str, cut[:10])) + (" ..." if len(cut) > 10 else "")
        note(f"the time limit cut the search short for {len(cut)} row(s) ({shown}): they have what was found by "
             "then, every explanation verified (method says what was cut)")
    same = [int(r.row) for r in res if r.baseline_gets_label]
    if same:
        shown = ", ".join(map(str, same[:10])) + (" ..." if len(same) > 10 else "")
        note(f"the baseline input alone already gets the label for row(s) {shown}: the empty set explains "
             "them, so they have no explanations; try another --baseline")
    if columns is not None:
        note(f"baseline: {baseline} (typed rows: features outside an explanation take the baseline row's values"
             + (", per row the typical --train row of the other classes)" if baseline.strip().lower() == "contrast"
                else ")"))
    if png is not None:
        _write_pngs(png, res, X, hw)
    if columns is not None:  # one baseline row per explained row, in the user's columns
        from invaudit.explain import baseline_rows

        base_param = baseline_rows(form, base)
    else:
        base_param = base.tolist()
    params = {"baseline": base_param,
              "baseline_spec": baseline, "shape": None if hw is None else list(hw), "confidence": confidence,
              "max_explanations": max_explanations, "overlap": overlap, "iterations": iterations, "seed": seed,
              "rows": rows, "time_limit": time_limit, "run_time_limit": run_time_limit}
    run.emit(params=params, results=records(res, form.classes, columns), summary=summary(res), fmt=format, json_path=json)


def _write_pngs(folder: Path, res, X, hw) -> None:
    from invaudit.explain.png import explanation_png, responsibility_png

    try:
        folder.mkdir(parents=True, exist_ok=True)
        for r, x in zip(res, X):
            write_atomic(folder / f"row{r.row}_responsibility.png", responsibility_png(r.responsibility, hw))
            for k, e in enumerate(r.explanations, 1):
                write_atomic(folder / f"row{r.row}_explanation{k}.png", explanation_png(x, e.features, hw))
    except OSError as exc:
        raise InputError(f"cannot write PNG images to {folder}: {exc.strerror or exc}.") from None


def register(app) -> None:
    app.command("explain")(explain)
