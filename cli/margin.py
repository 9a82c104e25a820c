"""``invaudit margin``: how far each row is from being misclassified (adversarial margins)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from invaudit.errors import InputError
from invaudit.io import parse_rows
from invaudit.render import Format

from ._common import (Bounds, ConstraintOpts, FormatOpt, JsonOut, CategoricalCost, IdColumn, IntegerCols, LabelColumn, Labels, OutPoints, ModelArg, Norm, ReportSchema, Rows, Run,
                      Scale, Seed, Sha256, Trust, build_constraints, check_out_path, note, progress,
                      stream_margins, Quiet, RunTimeLimit, TimeLimit, check_id_column, check_label_column)
from ._parallel_opts import Jobs, Scheduler


def parse_eps(spec: Optional[str]) -> Optional[list]:
    """``"0.1,0.5,1"`` -> ``[0.1, 0.5, 1.0]``; a malformed list is a usage error naming --eps
    (exit 2), raised by the option's callback before any work is done."""
    if spec is None:
        return None
    try:
        eps = [float(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{spec!r}: expected numbers separated by commas, like 0.1,0.5,1.",
                                 param_hint="'--eps'") from None
    if not eps:
        raise typer.BadParameter(f"{spec!r} gives no radius: expected numbers separated by commas, like 0.1,0.5,1 "
                                 "(leave --eps out for radii spread over the margins).", param_hint="'--eps'")
    if any(not np.isfinite(e) or e < 0 for e in eps):
        raise typer.BadParameter(f"{spec!r}: every epsilon must be a finite number >= 0.", param_hint="'--eps'")
    return eps


def _eps_option(value: Optional[str]) -> Optional[str]:
    parse_eps(value)
    return value


def margin(
    model: ModelArg,
    data: Annotated[Path, typer.Argument(metavar="DATA", help="Rows to measure (.csv, .npy, .npz).", show_default=False)],
    norm: Annotated[Norm, typer.Option("--norm", help="Distance norm.")] = Norm.l2,
    eps: Annotated[Optional[str], typer.Option("--eps", metavar="LIST", callback=_eps_option, help="Radii for robust accuracy, e.g. 0.1,0.5,1 (default: spread over the margins).")] = None,
    scale: ConstraintOpts.Scale = Scale.none,
    immutable: ConstraintOpts.Immutable = None,
    increase_only: ConstraintOpts.IncreaseOnly = None,
    decrease_only: ConstraintOpts.DecreaseOnly = None,
    bounds: ConstraintOpts.Bounds = Bounds.none,
    train: ConstraintOpts.Train = None,
    rows: Rows = None,
    label_column: LabelColumn = None,
    id_column: IdColumn = None,
    integer: IntegerCols = None,
    categorical_cost: CategoricalCost = 1.0,
    out: OutPoints = None,
    labels: Labels = None,
    seed: Seed = 0,
    time_limit: TimeLimit = None,
    run_time_limit: RunTimeLimit = None,
    jobs: Jobs = None,
    scheduler: Scheduler = None,
    trust: Trust = False,
    sha256: Sha256 = None,
    format: FormatOpt = Format.table,
    json: JsonOut = None,
    schema: ReportSchema = None,
    quiet: Quiet = False,
) -> None:
    """Distance from each row to the nearest point the model puts in another class."""
    from invaudit.margins import margins, summarize

    eps_list = parse_eps(eps)
    check_out_path(out)
    check_label_column(label_column, data, train)
    check_id_column(id_column, data)
    if scheduler is None:
        from invaudit import parallel as _parallel

        _parallel.prestart(jobs)  # an explicit --jobs N: workers start while the model and data load
    run = Run("margin", model, trust=trust, sha256=sha256)
    form = run.form
    ds = run.data(data, label_column=label_column, id_column=id_column, labels=labels, rows=rows)
    train_ds = run.data(train, label_column=label_column, id_column=id_column, primary=False) if train is not None else None
    row_ids = parse_rows(rows, ds.n_rows)
    params = {"norm": norm.value, "scale": scale.value, "immutable": immutable,
              "increase_only": increase_only, "decrease_only": decrease_only, "bounds": bounds.value,
              "train": None if train is None else str(train), "rows": rows, "seed": seed,
              "time_limit": time_limit, "run_time_limit": run_time_limit}
    if run.tabular is not None:
        from ._tabular import run_margin

        if run_time_limit is not None:
            raise InputError("--run-time-limit applies to tree ensembles and black boxes; this model reads typed "
                             "rows, whose search --time-limit bounds per row.")
        with progress("margins", len(row_ids)) as update:
            batch, results = run_margin(
                run, ds, train_ds, rows=row_ids, norm=norm.value, scale=scale.value, bounds=bounds.value,
                immutable=immutable, increase_only=increase_only, decrease_only=decrease_only, integer=integer,
                categorical_cost=categorical_cost, seed=seed, out=out, id_column=id_column, update=update,
                jobs=jobs, scheduler=scheduler, time_limit=time_limit)
        y_index = None if ds.y_index is None else ds.y_index[row_ids]
        summary = summarize(batch, y_index, eps_list, classes=form.classes, row_ids=row_ids)
        params.update(eps=summary.get("eps"), integer=integer, categorical_cost=categorical_cost)
        run.emit(params=params, results=results, summary=summary, fmt=format, json_path=json, version=schema)
        return
    if integer is not None:
        raise InputError("--integer applies to models that read typed rows (a ColumnTransformer pipeline).")
    from invaudit import parallel

    X_train = None if train_ds is None else np.asarray(train_ds.X)

    import time as _time

    run_deadline = None if run_time_limit is None else _time.perf_counter() + run_time_limit

    # Without a box (no --immutable/--increase-only/--decrease-only/--bounds) the constraints are
    # the metric's weights alone: built and checked once, not as (rows x features) infinite
    # bounds per chunk (the solvers read an infinite box as no box: the same answers). Forms
    # whose solvers hand the constraints to a counterfactual search keep the per-row box.
    shared = None
    if (immutable is None and increase_only is None and decrease_only is None and bounds is Bounds.none
            and form.kind not in ("invertible-linear", "kernel")):
        weights = build_constraints(form, np.zeros((0, int(form.n_features))), train_ds, scale=scale,
                                    immutable=None, increase_only=None, decrease_only=None, bounds=bounds).weights
        shared = _Weights(weights) if scale is not Scale.none else _NO_BOX

    def solve(X, y_index, progress=None):  # one chunk of rows (see stream_margins)
        if shared is not None:
            cons = None if shared is _NO_BOX else shared
        else:
            cons = build_constraints(form, X, train_ds, scale=scale, immutable=immutable, increase_only=increase_only,
                                     decrease_only=decrease_only, bounds=bounds)
        left = None if run_deadline is None else max(0.0, run_deadline - _time.perf_counter())
        return parallel.margins(form, X, y_index=y_index, norm=norm.value, constraints=cons, X_train=X_train,
                                seed=seed, progress=progress, jobs=jobs, scheduler=scheduler,
                                time_limit=time_limit, run_time_limit=left)

    # params.eps: the radii given (None: chosen from the margins, summary.eps lists them)
    params["eps"] = eps_list
    stream_margins(run, ds, row_ids, solve, eps=eps_list, params=params, fmt=format, json_path=json, out=out,
                   id_column=id_column, version=schema)


class _Weights:
    """Constraints that are only the metric's per-feature weights (no box on the answer)."""

    lower = None
    upper = None

    def __init__(self, weights):
        self.weights = np.asarray(weights, dtype=np.float64)


_NO_BOX = _Weights(np.ones(0))  # no box and unit weights: the solvers get constraints=None


def register(app) -> None:
    app.command("margin")(margin)
