"""``invaudit counterfactual``: the smallest change to a row that gets the label you want.

Also model inversion: ``--from zeros|mean`` starts from a reference point instead of data rows and
gives the closest input the model puts in ``--target`` with confidence ``--confidence``.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from invaudit.errors import InputError
from invaudit.io import parse_rows
from invaudit.render import Format

from ._common import (Bounds, ConstraintOpts, FormatOpt, JsonOut, CategoricalCost, IdColumn, IntegerCols, LabelColumn, Labels, OutPoints, ModelArg, Norm,
                      ReportSchema, Rows, Run, Scale, Seed, Sha256, Trust, build_constraints, check_out_path, counterfactual_summary, note, progress,
                      resolve_labels, write_points, Quiet, RunTimeLimit, TimeLimit, check_id_column, check_label_column)
from ._parallel_opts import Jobs, Scheduler


class Start(str, Enum):
    zeros = "zeros"
    mean = "mean"


def _open_unit(value: Optional[float]) -> Optional[float]:
    """--confidence: a probability strictly between 0 and 1 (a usage error otherwise, exit 2)."""
    if value is not None and not 0.0 < value < 1.0:
        raise typer.BadParameter(f"{value:g}: expected a probability strictly between 0 and 1.")
    return value


def counterfactual(
    model: ModelArg,
    data: Annotated[Optional[Path], typer.Argument(metavar="DATA", help="Rows to explain (.csv, .npy, .npz); not needed with --from.", show_default=False)] = None,
    target: Annotated[str, typer.Option("--target", help="Class label to reach, or 'other' (the closest other class).")] = "other",
    confidence: Annotated[Optional[float], typer.Option("--confidence", metavar="P", callback=_open_unit, help="Require p(target | x) >= P, 0 < P < 1.")] = None,
    norm: Annotated[Norm, typer.Option("--norm", help="Distance norm.")] = Norm.l2,
    scale: ConstraintOpts.Scale = Scale.none,
    immutable: ConstraintOpts.Immutable = None,
    increase_only: ConstraintOpts.IncreaseOnly = None,
    decrease_only: ConstraintOpts.DecreaseOnly = None,
    bounds: ConstraintOpts.Bounds = Bounds.none,
    train: ConstraintOpts.Train = None,
    start: Annotated[Optional[Start], typer.Option("--from", help="Model inversion: start from zeros or the mean of --train instead of data rows.")] = None,
    manifold: Annotated[Optional[str], typer.Option("--manifold", metavar="pca|quantile|PATH", help="Search in the latent coordinates of a map fitted on --train (or a pickled transformer): farther, but nearer the data.")] = None,
    seed: Seed = 0,
    time_limit: TimeLimit = None,
    run_time_limit: RunTimeLimit = None,
    jobs: Jobs = None,
    scheduler: Scheduler = None,
    rows: Rows = None,
    label_column: LabelColumn = None,
    id_column: IdColumn = None,
    integer: IntegerCols = None,
    categorical_cost: CategoricalCost = 1.0,
    out: OutPoints = None,
    labels: Labels = None,
    trust: Trust = False,
    sha256: Sha256 = None,
    format: FormatOpt = Format.table,
    json: JsonOut = None,
    schema: ReportSchema = None,
    quiet: Quiet = False,
) -> None:
    """Find the closest point the model assigns to --target (exact for linear models)."""
    from invaudit.counterfactual import counterfactuals_with_extras

    from invaudit import parallel

    _check_start(data, start, train)
    check_out_path(out)
    check_label_column(label_column, data, train)
    check_id_column(id_column, data)
    if scheduler is None:
        parallel.prestart(jobs)  # an explicit --jobs N: workers start while the model and data load
    run = Run("counterfactual", model, trust=trust, sha256=sha256)
    form = run.form
    if run.tabular is not None:
        if run_time_limit is not None:
            raise InputError("--run-time-limit applies to tree ensembles and black boxes; this model reads typed "
                             "rows, whose search --time-limit bounds per row.")
        return _typed_rows(run, data, train, target=target, confidence=confidence, norm=norm, scale=scale,
                           immutable=immutable, increase_only=increase_only, decrease_only=decrease_only,
                           bounds=bounds, start=start, manifold=manifold, seed=seed, rows=rows,
                           label_column=label_column, id_column=id_column, integer=integer,
                           categorical_cost=categorical_cost, out=out, format=format, json=json,
                           jobs=jobs, scheduler=scheduler, schema=schema, time_limit=time_limit)
    if integer is not None:
        raise InputError("--integer applies to models that read typed rows (a ColumnTransformer pipeline).")
    train_ds = run.data(train, label_column=label_column, id_column=id_column, primary=False) if train is not None else None
    if start is not None:  # DATA and --train as --from needs them (_check_start)
        X = np.zeros((1, form.n_features)) if start is Start.zeros else train_ds.X.mean(axis=0, keepdims=True)
        row_ids = np.array([0])
    else:
        ds = run.data(data, label_column=label_column, id_column=id_column, labels=labels, rows=rows)
        row_ids = parse_rows(rows, ds.n_rows)
        X = np.asarray(ds.X[row_ids], dtype=np.float64)

    if target.strip().lower() == "other":
        tgt = "other"
    else:
        tgt = np.full(X.shape[0], resolve_labels(form, target, "--target"), dtype=np.intp)
    cons = build_constraints(form, X, train_ds, scale=scale, immutable=immutable, increase_only=increase_only,
                             decrease_only=decrease_only, bounds=bounds)
    latent = _manifold(manifold, trust)
    X_train = None if train_ds is None else np.asarray(train_ds.X, dtype=np.float64)
    y_train = None if train_ds is None else train_ds.y_index
    with progress("counterfactuals", X.shape[0]) as update:
        batch, extras = parallel.counterfactuals_with_extras(
            form, X, target=tgt, confidence=confidence, norm=norm.value, constraints=cons, X_train=X_train,
            y_train_index=y_train, manifold=latent, seed=seed, progress=update, jobs=jobs, scheduler=scheduler,
            time_limit=time_limit, run_time_limit=run_time_limit)
    results = batch.columns(form.classes, row_ids, feature_names=form.feature_names)  # kept as columns
    _add_extras(results, extras)
    if out is not None:
        cols = (ds.columns if start is None and ds.columns else None) or form.feature_names \
            or [f"x{j}" for j in range(form.n_features)]
        k = write_points(out, batch.x_cf, cols, np.asarray(batch.status) == "found",
                         None if start is not None else ds.ids, id_column, row_ids)
        note(f"wrote {k} counterfactual row(s) to {out}")
    summary = counterfactual_summary(results)
    params = {"target": target, "confidence": confidence, "norm": norm.value, "scale": scale.value,
              "immutable": immutable, "increase_only": increase_only, "decrease_only": decrease_only,
              "bounds": bounds.value, "train": None if train is None else str(train),
              "from": None if start is None else start.value, "rows": rows, "manifold": manifold, "seed": seed,
              "time_limit": time_limit, "run_time_limit": run_time_limit}
    if start is not None:
        run.data_info = None
    extra = None
    if schema == 2:  # compact: sparse vectors, nothing the data rows give back bit for bit
        extra = batch.compact(results, X if start is None else None, form=form)
    run.emit(params=params, results=results, summary=summary, fmt=format, json_path=json, extra=extra,
             version=schema)


def _typed_rows(run, data, train, *, target, confidence, norm, scale, immutable, increase_only, decrease_only,
                bounds, start, manifold, seed, rows, label_column, id_column, integer, categorical_cost, out,
                format, json, jobs=None, scheduler=None, schema=None, time_limit=None) -> None:
    """A model that reads typed rows (categories, blanks): answers in the input's own columns."""
    from ._tabular import run_counterfactual

    if start is not None or manifold is not None:
        raise InputError("--from and --manifold are not available for models that read typed rows yet.")
    if data is None:
        raise InputError("name a DATA file (a CSV with the model's columns).")
    train_ds = run.data(train, label_column=label_column, id_column=id_column, primary=False) \
        if train is not None else None
    ds = run.data(data, label_column=label_column, id_column=id_column, rows=rows)
    row_ids = parse_rows(rows, ds.n_rows)
    tm = run.tabular
    tgt = "other" if target.strip().lower() == "other" else \
        np.full(row_ids.size, resolve_labels(tm, target, "--target"), dtype=np.intp)
    with progress("counterfactuals", row_ids.size) as update:
        results, summary = run_counterfactual(
            run, ds, train_ds, rows=row_ids, target=tgt, confidence=confidence, norm=norm.value,
            scale=scale.value, bounds=bounds.value, immutable=immutable, increase_only=increase_only,
            decrease_only=decrease_only, integer=integer, categorical_cost=categorical_cost, seed=seed,
            out=out, id_column=id_column, update=update, jobs=jobs, scheduler=scheduler, time_limit=time_limit)
    params = {"target": target, "confidence": confidence, "norm": norm.value, "scale": scale.value,
              "immutable": immutable, "increase_only": increase_only, "decrease_only": decrease_only,
              "bounds": bounds.value, "train": None if train is None else str(train), "rows": rows,
              "seed": seed, "integer": integer, "categorical_cost": categorical_cost, "time_limit": time_limit,
              "distance": "numeric columns in the norm (scaled by --scale), plus categorical_cost for each "
                          "changed categorical column, combined in the same norm"}
    # --schema 2: typed rows keep their short per-column lists (the /2 schema allows them)
    run.emit(params=params, results=results, summary=summary, fmt=format, json_path=json, version=schema)


def _check_start(data: Optional[Path], start: Optional[Start], train: Optional[Path]) -> None:
    """DATA, --from and --train together, checked before the model is loaded (bad input, exit 3,
    as tests/cli/test_solver_commands.py pins)."""
    if start is not None and data is not None:
        raise InputError("give either DATA or --from, not both.")
    if start is Start.mean and train is None:
        raise InputError("--from mean needs --train TRAIN (the mean is taken over it).")
    if start is None and data is None:
        raise InputError("name a DATA file, or use --from zeros|mean for model inversion.")


def _manifold(spec: Optional[str], trust: bool):
    """``--manifold``: "pca", "quantile", or a pickled transformer loaded as safely as a model."""
    if spec is None or spec in ("pca", "quantile"):
        return spec
    from invaudit.io.model_file import load_model

    path = Path(spec)
    if not path.is_file():
        raise InputError(f"--manifold {spec}: expected pca, quantile or an existing transformer file.")
    return load_model(path, trust=trust, expect="transformer").estimator


def _add_extras(results, extras: dict) -> None:
    """Per-row extras of the solver as columns: feature importance, plausibility, what backs the
    answer, a lower bound (the last three only on the rows that have them)."""
    n = len(results)
    fi = extras.get("feature_importance")
    pl = extras.get("plausibility")
    backing = extras.get("backing")
    lower = extras.get("lower_bound")
    if fi is not None:
        results.add("feature_importance", "vec", np.asarray(fi, dtype=np.float64).reshape(n, -1))
    if pl is not None:
        results.add("plausibility", "obj", [
            {"knn_distance": float(pl["knn_distance"][i]), "inlier": bool(pl["inlier"][i]),
             "lof_score": float(pl["lof_score"][i]), "k": int(pl["k"])} if bool(pl["evaluated"][i]) else None
            for i in range(n)], optional=True)
    if backing is not None:
        results.add("backing", "obj", [None if b is None else str(b) for b in list(backing)[:n]]
                    + [None] * max(0, n - len(backing)), optional=True)
    if lower is not None:
        lb = np.full(n, np.nan)
        m = min(n, len(lower))
        lb[:m] = np.asarray(lower, dtype=np.float64)[:m]
        results.add("lower_bound", "num", lb, optional=True)


def register(app) -> None:
    app.command("counterfactual")(counterfactual)
