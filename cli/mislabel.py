"""``invaudit mislabel``: which training labels are probably wrong, most suspect first."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from invaudit.errors import InputError
from invaudit.io import write_atomic
from invaudit.render import Format

from ._common import FormatOpt, JsonOut, IdColumn, LabelColumn, Labels, ModelArg, Quiet, ReportSchemaOne, Run, Seed, Sha256, Trust, check_id_column, check_label_column, note, progress, warn, working
from ._parallel_opts import Jobs, Scheduler


def read_truth(path: Path, n: int) -> np.ndarray:
    """``--truth``: the rows known to be wrong (NPY of row indices or a boolean mask, or a text file
    with one row index per line) -> boolean mask of length ``n``."""
    if not path.is_file():
        raise InputError(f"--truth file {path} does not exist.")
    try:
        if path.suffix.lower() == ".npy":
            arr = np.ravel(np.load(path, allow_pickle=False))
        else:
            text = path.read_text(encoding="utf-8")
            arr = np.array([int(t) for t in text.split() if t.strip()], dtype=np.int64)
    except (ValueError, OSError) as exc:
        raise InputError(f"--truth file {path} must hold row indices, one per line, or an NPY array ({exc}).") from None
    if arr.dtype == bool:
        if arr.size != n:
            raise InputError(f"--truth mask in {path} has {arr.size} entries for {n} training rows.")
        return arr
    if arr.dtype.kind not in "iu":
        raise InputError(f"--truth file {path} must hold integer row indices.")
    bad = arr[(arr < 0) | (arr >= n)]
    if bad.size:
        raise InputError(f"--truth file {path}: row {bad[0]} is out of range (0-{n - 1}).")
    mask = np.zeros(n, dtype=bool)
    mask[arr] = True
    return mask


def load_reference(path: Path, trust: bool):
    """``--reference``: a scikit-learn classifier, fitted or not (it is cloned and refitted on
    every fold), read as safely as the model (the allowlist unless ``--trust``)."""
    from invaudit.io import model_file as mf

    try:
        loaded = mf.load_model(path, trust=trust)
        for w in loaded.warnings:
            warn(w)
        return loaded.estimator
    except InputError as exc:
        if "not a fitted classifier" not in str(exc):
            raise
    # An unfitted estimator: the same read and the same unpickler, without the fitted check
    # (load_model has no mode for a classifier that is about to be refitted anyway).
    shown = str(path)
    limit = mf.max_model_bytes()
    data = mf._read_file(Path(path), shown, limit)
    est = mf._load_trusted(data, shown) if trust else mf._load_restricted(data, shown, limit)
    from sklearn.base import is_classifier

    if not (hasattr(est, "fit") and is_classifier(est) and hasattr(est, "predict_proba")):
        raise InputError(f"--reference {shown} holds {type(est).__name__}, not a scikit-learn "
                         "classifier with predict_proba.")
    return est


def write_fixed(src: Path, out: Path, label_column: Optional[str], labels_src: Optional[Path], new_labels) -> None:
    """A copy of the training data with relabelled rows, in the input's own format."""
    if out.resolve() in {src.resolve()} | ({labels_src.resolve()} if labels_src else set()):
        raise InputError(f"--out {out} would overwrite the input; choose another path.")
    suffix = src.suffix.lower()
    if suffix == ".csv":
        if out.suffix.lower() != ".csv":
            raise InputError("--out must be a .csv file for a CSV training file.")
        with open(src, newline="", encoding="utf-8") as fh:
            table = [r for r in csv.reader(fh) if r]
        j = table[0].index(label_column)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(table[0])
        for row, lab in zip(table[1:], new_labels):
            row = list(row)
            row[j] = str(lab)
            w.writerow(row)
        write_atomic(out, buf.getvalue())
    elif suffix == ".npz":
        if out.suffix.lower() != ".npz":
            raise InputError("--out must be a .npz file for an NPZ training file.")
        with np.load(src, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["y"] = np.asarray(new_labels).astype(arrays["y"].dtype, copy=False)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        write_atomic(out, buf.getvalue())
    else:  # NPY features: the labels live in their own file, so --out is the new labels file
        if out.suffix.lower() != ".npy":
            raise InputError("--out must be a .npy labels file for an NPY training file.")
        buf = io.BytesIO()
        np.save(buf, np.asarray(new_labels))
        write_atomic(out, buf.getvalue())


def curve_plot(curve: np.ndarray, width: int = 50, height: int = 10) -> str:
    """The found-vs-checked curve drawn with text: x = share of rows checked, y = share found."""
    n = curve.size - 1
    xs = np.linspace(0, 1, width)
    ys = curve[np.round(xs * n).astype(int)]
    grid = [[" "] * width for _ in range(height)]
    for c, y in enumerate(ys):
        r = height - 1 - min(height - 1, int(y * (height - 1) + 0.5))
        grid[r][c] = "•"
        diag = height - 1 - min(height - 1, int(xs[c] * (height - 1) + 0.5))
        if grid[diag][c] == " ":
            grid[diag][c] = "·"
    lines = [("100% │" if i == 0 else "  0% │" if i == height - 1 else "     │") + "".join(row)
             for i, row in enumerate(grid)]
    lines.append("     └" + "─" * width)
    lines.append("      0% checked" + " " * (width - 19) + "100%   (• invaudit, · random)")
    return "\n".join(lines)


def mislabel(
    model: ModelArg,
    train: Annotated[Path, typer.Argument(metavar="TRAIN", help="The training data with its (possibly wrong) labels.", show_default=False)],
    method: Annotated[str, typer.Option("--method", help="auto (= combined: the model + nearest neighbours + a reference forest + an RBF-kernel model + class-wise Gaussian mixtures, calibrated, mixed, and read through an estimated class-to-class noise model), combined, knn, reference, mixture (each class a mixture of Gaussians, leave-one-out), boosting (bounded HistGradientBoosting, out of fold), pruned-loo-loss, loo-loss (exact for KNN, GaussianNB and QDA), self-influence, loss, confidence.")] = "auto",
    reference: Annotated[Optional[Path], typer.Option("--reference", metavar="MODEL.joblib", help="The reference model of --method reference/combined (fitted or not; refitted out of fold; loaded like MODEL, --trust applies). Default: the out-of-bag probabilities of a 100-tree RandomForest (one fit).")] = None,
    neighbours: Annotated[int, typer.Option("--neighbours", min=1, help="Neighbours of --method knn/combined.")] = 15,
    top: Annotated[str, typer.Option("--top", metavar="N|all", help="How many suspects to list.")] = "20",
    truth: Annotated[Optional[Path], typer.Option("--truth", metavar="FILE", help="Rows known to be wrong (NPY, or one index per line): report how many the ranking finds.")] = None,
    fix: Annotated[Optional[int], typer.Option("--fix", min=0, metavar="N", help="Relabel the top N suspects to their suggested labels (needs --out).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", metavar="PATH", help="Where --fix writes the relabelled copy (never the input).")] = None,
    folds: Annotated[int, typer.Option("--folds", min=2, help="Folds for out-of-sample probabilities.")] = 5,
    seed: Seed = 0,
    label_column: LabelColumn = None,
    id_column: IdColumn = None,
    labels: Labels = None,
    jobs: Jobs = None,
    scheduler: Scheduler = None,
    trust: Trust = False,
    sha256: Sha256 = None,
    format: FormatOpt = Format.table,
    json: JsonOut = None,
    schema: ReportSchemaOne = None,
    quiet: Quiet = False,
) -> None:
    """Rank training rows by how likely their label is wrong."""
    from invaudit.triage import found_curve, rank_mislabels

    if (fix is None) != (out is None):  # a usage error (exit 2)
        raise typer.BadParameter("--fix N and --out PATH go together.",
                                 param_hint="'--fix'" if fix is not None else "'--out'")
    from invaudit.triage import METHODS

    if method != "auto" and method not in METHODS:  # bad input (exit 3), as influence --estimate
        raise InputError(f"--method '{method}': choose auto or one of {', '.join(METHODS)}.")
    if top.strip().lower() == "all":
        n_top = None
    else:
        try:  # a value out of range is a usage error (exit 2), as for every other option
            n_top = int(top)
        except ValueError:
            raise typer.BadParameter(f"{top}: expected a number or 'all'.", param_hint="'--top'") from None
        if n_top < 1:
            raise typer.BadParameter(f"{top}: expected at least 1 (or 'all').", param_hint="'--top'")
    if scheduler is None:
        from invaudit import parallel as _parallel

        _parallel.prestart(jobs, modules=("sklearn.base", "invaudit.models", "invaudit.triage"))
    check_label_column(label_column, train)
    check_id_column(id_column, train)
    run = Run("mislabel", model, trust=trust, sha256=sha256)
    ref_est = load_reference(reference, trust) if reference is not None else None
    ds = run.data(train, label_column=label_column, id_column=id_column, labels=labels, require_labels=True)
    mask = read_truth(truth, ds.n_rows) if truth is not None else None
    form, X = (_encoded_rows(run, ds) if run.tabular is not None
               else (run.form, np.asarray(ds.X, dtype=np.float64)))
    if ref_est is not None and run.tabular is not None and run.tabular.category_dtypes:
        from invaudit.triage._sources import frame_refit

        ref_est = frame_refit(run.tabular, ref_est, fitted=False)  # it reads the rows as the model does
    if getattr(form, "kind", None) == "neighbors" and method == "loo-loss":
        # a KNN's own out-of-sample vote for each row is an exact leave-one-out (influence/_neighbors.py)
        from invaudit.influence._neighbors import loo_mislabel_ranking

        with working("ranking (leave-one-out votes)"):
            ranking = loo_mislabel_ranking(form, X, ds.y_index)
    elif getattr(form, "kind", None) == "quadratic" and method == "loo-loss" and _closed_form_loo(form):
        # GaussianNB / QDA refitted without each row in closed form: the exact leave-one-out loss
        from invaudit.influence._quadratic import loo_mislabel_ranking

        with working("ranking (closed-form leave-one-out)"):
            ranking = loo_mislabel_ranking(form, X, ds.y_index)
    else:
        with progress("ranking", folds) as update:
            ranking = rank_mislabels(form, X, ds.y_index, method=method,
                                     n_folds=folds, seed=seed, reference=ref_est, k=neighbours, progress=update,
                                     jobs=jobs, scheduler=scheduler)
    for n in ranking.notes:
        note(n)
    results = ranking.records(top=n_top)
    for k, r in enumerate(results, 1):
        r["rank"] = k
    summary = ranking.summary(mask)
    if mask is not None:
        curve = found_curve(ranking.order, mask)
        note("found vs checked:\n" + curve_plot(curve))
    if fix:
        new = np.asarray(run.form.classes)[ranking.fixed_labels(fix)]
        write_fixed(Path(train), out, label_column, labels, new)
        summary["fixed"] = {"rows": int(fix), "out": str(out)}
        note(f"wrote {out} with the top {fix} labels replaced by their suggestions")
    params = {"method": ranking.method, "top": top, "truth": None if truth is None else str(truth),
              "fix": fix, "out": None if out is None else str(out), "folds": folds, "seed": seed,
              "reference": None if reference is None else str(reference), "neighbours": neighbours}
    run.emit(params=params, results=results, summary=summary, fmt=format, json_path=json)


def _encoded_rows(run, ds):
    """(final form, encoded rows) for a model that reads typed rows: the ranking is about the final
    estimator on what its ColumnTransformer makes of the rows (refits keep the transformer fixed)."""
    from invaudit.errors import UnsupportedModelError

    tm = run.tabular
    if tm.native_categorical and tm.array_input:
        # a HistGradientBoosting fitted on an array with native categorical columns: the rows as
        # that array (category values as the numbers it was fitted on) are what its refits take
        note("rows ranked by out-of-fold refits of the model on its own array input (categories as fitted)")
        return run.form, np.asarray(tm.model_input(ds.frame), dtype=np.float64)
    if tm.native_categorical and tm.category_dtypes:
        # fitted from pandas category dtypes: every refit gets a DataFrame with the same dtypes
        from invaudit.triage._sources import coded_rows, frame_form

        note("rows ranked by out-of-fold refits of the model on DataFrames with its own category dtypes")
        return frame_form(tm), coded_rows(tm, ds.frame)
    if tm.preprocessor is None or tm.final_form is None:
        raise UnsupportedModelError(
            f"mislabel needs a ColumnTransformer in front of the final estimator to rank typed rows; "
            f"{run.model_info['estimator']} has none it can read.")
    note("the ColumnTransformer stays fixed; rows are scored by the final estimator and its refits")
    return tm.final_form, tm.encoded(ds.frame)


def register(app) -> None:
    app.command("mislabel")(mislabel)


def _closed_form_loo(form) -> bool:
    from invaudit.influence._quadratic import quadratic_method

    return quadratic_method(form) is not None
