"""What every command shares: its options, loading the model and data, emitting the report.

Commands stay thin: parse -> load (here) -> call one solver -> emit (here).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.console import Console

from invaudit.errors import InputError
from invaudit.io import dumps, envelope, load_data, write_atomic
from invaudit.render import Format, render

# stdout carries only the report; everything else goes to stderr.
err_console = Console(stderr=True)


def out_console() -> Console:
    return Console(file=sys.stdout, soft_wrap=False, width=None if sys.stdout.isatty() else 160)


# --- shared option types ------------------------------------------------------------------------

ModelArg = Annotated[Path, typer.Argument(metavar="MODEL", help="Model file (.joblib, .pkl, .pickle).", show_default=False)]
Trust = Annotated[bool, typer.Option("--trust", help="Load the model without the allowlist (a pickle can run code; only for files you vouch for).")]
Sha256 = Annotated[Optional[str], typer.Option("--sha256", metavar="HEX", help="Refuse the model file unless its SHA-256 is HEX.")]
FormatOpt = Annotated[Format, typer.Option("--format", help="What goes to stdout.", case_sensitive=False)]


def _writable_json(path: Optional[Path]) -> Optional[Path]:
    """--json: refuse an unwritable target at parse time, before any work starts."""
    if path is not None:
        from invaudit.io.report import check_writable

        check_writable(path, option="--json")
    return path


JsonOut = Annotated[Optional[Path], typer.Option("--json", metavar="PATH", callback=_writable_json, help="Also write the full JSON report to PATH (atomically).")]
Rows = Annotated[Optional[str], typer.Option("--rows", metavar="SPEC", help="Rows to use, e.g. 0,3,7-9 (default: all).")]
LabelColumn = Annotated[Optional[str], typer.Option("--label-column", metavar="NAME", help="CSV column holding the labels.")]
Labels = Annotated[Optional[Path], typer.Option("--labels", metavar="FILE.npy", help="Labels for an NPY data file.")]
OutPoints = Annotated[Optional[Path], typer.Option("--out", metavar="PATH", help="Write the answers' rows to PATH (.csv in the input's own columns, or .npy), atomically.")]
IntegerCols = Annotated[Optional[str], typer.Option("--integer", metavar="COLS", help="Columns that must stay whole numbers (typed-row models).")]
CategoricalCost = Annotated[float, typer.Option("--categorical-cost", min=0.0, help="Cost of changing one categorical column, in units of the (scaled) numeric distance.")]
IdColumn = Annotated[Optional[str], typer.Option("--id-column", metavar="NAME", help="CSV column naming the rows (row_id in reports); not a feature.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed; results are deterministic for a fixed seed.")]


class Norm(str, Enum):
    l2 = "l2"
    l1 = "l1"
    linf = "linf"


class Scale(str, Enum):
    none = "none"
    std = "std"
    mad = "mad"


class Bounds(str, Enum):
    none = "none"
    data = "data"


# Commands that answer in the user's own typed columns for a ColumnTransformer pipeline.
TYPED_ROW_COMMANDS = ("counterfactual", "margin", "influence", "explain", "mislabel")
# Commands whose answers are points or perturbations of the rows (meaningless on category codes).
NUMERIC_ANSWER_COMMANDS = ("counterfactual", "margin", "explain")


# --- a run: model, data, report -----------------------------------------------------------------

@dataclass
class Run:
    """One command invocation: loads the model once, collects what the report needs."""

    command: str
    model_path: Path
    trust: bool = False
    sha256: Optional[str] = None
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        from invaudit.io.model_file import load_model
        from invaudit.models import adapt

        loaded = load_model(self.model_path, trust=self.trust, sha256=self.sha256)
        for w in loaded.warnings:
            warn(w)
        self.loaded = loaded
        self.form = adapt(loaded.estimator)
        self.tabular = _tabular(loaded.estimator)
        if self.tabular is None and self.command in NUMERIC_ANSWER_COMMANDS:
            from invaudit.models.tabular import has_categorical_splits

            if has_categorical_splits(loaded.estimator):
                from invaudit.errors import UnsupportedModelError

                raise UnsupportedModelError(
                    f"{self.model_path}: this HistGradientBoosting model splits on categories, behind preprocessing "
                    f"invaudit cannot read as typed columns; {self.command} would move category codes as numbers, "
                    "so it is refused (fit the encoder in a ColumnTransformer, or the model on the raw columns).")
        self.data_info: Optional[dict] = None
        self.ids: dict = {}                 # "data" / "train" -> row ids (--id-column)
        self._header: Optional[tuple] = None  # (path, columns) of the first CSV, for models without names

    @property
    def model_info(self) -> dict:
        info = {"path": str(self.model_path), "sha256": self.loaded.sha256}
        info.update(self.form.describe())
        if self.tabular is not None:
            info.update(self.tabular.describe())
        return info

    @property
    def schema(self):
        """The model's typed input columns ``(name, kind, categories)``, or None for numeric models."""
        if self.tabular is None:
            return None
        return [(c.name, c.kind, c.categories) for c in self.tabular.columns]

    def data(self, path, *, label_column=None, labels=None, require_labels=False, primary=True, id_column=None):
        """Load a data file checked against the model (names, feature count, classes)."""
        schema = self.schema
        if schema is not None and self.command not in TYPED_ROW_COMMANDS:
            from invaudit.errors import UnsupportedModelError

            raise UnsupportedModelError(
                f"{self.command} does not read models whose input has typed columns (categories, blanks) yet; "
                f"{' and '.join(TYPED_ROW_COMMANDS)} do.")
        ds = load_data(
            path,
            n_features=None if schema is not None else self.form.n_features,
            feature_names=self.form.feature_names,
            classes=self.form.classes,
            label_column=label_column,
            labels_path=labels,
            require_labels=require_labels,
            id_column=id_column,
            schema=schema,
            id_column_optional=not primary,
        )
        if ds.column_match == "position":
            self._check_positional(ds)
        elif ds.column_match == "name" and ds.file_columns:
            known = set(self.form.feature_names or []) | {c[0] for c in schema or []}
            ignored = [c for c in ds.file_columns if c not in known]
            if ignored:
                shown = ", ".join(ignored[:6]) + (", ..." if len(ignored) > 6 else "")
                hint = (" (pass --label-column if one holds the labels, --id-column if one names the rows)"
                        if label_column is None or id_column is None else "")
                warn(f"{ds.path}: column(s) the model does not read are left out: {shown}{hint}.")
        if primary:
            self.data_info = ds.describe()
        if ds.ids is not None:
            self.ids["data" if primary else "train"] = ds.ids
        return ds

    def _check_positional(self, ds) -> None:
        """A model without feature names reads columns by position. Every CSV of one run must then
        list the same columns in the same order: a header that says otherwise is an error, never a
        silent reordering (nobody can tell which order the model was fitted with)."""
        cols = tuple(ds.file_columns)
        if self._header is None:
            self._header = (ds.path, cols)
            shown = ", ".join(cols[:8]) + (", ..." if len(cols) > 8 else "")
            warn(f"the model has no feature names, so the columns of {ds.path} are used by position "
                 f"({shown}); make sure this is the order the model was fitted with.")
            return
        first_path, first = self._header
        if cols == first:
            return
        if sorted(cols) == sorted(first):
            k = next(i for i, (a, b) in enumerate(zip(cols, first)) if a != b)
            raise InputError(f"data file {ds.path} lists its columns in another order than {first_path} "
                             f"(its column {k + 1} is '{cols[k]}' where {first_path} has '{first[k]}'); the model "
                             "has no feature names, so columns are read by position: put them in one order.")
        diff = [c for c in cols if c not in first][:3]
        raise InputError(f"data file {ds.path} has columns {first_path} does not ({', '.join(diff)}); the model "
                         "has no feature names, so invaudit cannot tell which columns it reads.")

    def emit(self, *, params: dict, results: list, summary: dict, fmt: Format,
             json_path: Optional[Path], extra: Optional[dict] = None) -> dict:
        self._attach_ids(results)
        report = envelope(
            self.command, model=self.model_info, data=self.data_info, params=params,
            results=results, summary=summary, elapsed_s=time.perf_counter() - self.started,
            extra=extra,
        )
        emit_report(report, fmt, json_path)
        return report

    def _attach_ids(self, results: list) -> None:
        """``row_id`` (and ``train_row_id``) next to every row number, from ``--id-column``."""
        data_ids, train_ids = self.ids.get("data"), self.ids.get("train")
        if data_ids is None and train_ids is None:
            return
        # mislabel's primary file is the training set: its rows are called train_row
        own = train_ids if self.command == "influence" else (data_ids if data_ids is not None else train_ids)
        for r in results:
            if not isinstance(r, dict):
                continue
            for key, ids in (("row", data_ids), ("test_row", data_ids), ("train_row", own)):
                if ids is not None and isinstance(r.get(key), (int, np.integer)):
                    r[key + "_id" if key != "row" else "row_id"] = str(ids[int(r[key])])
            for group in ("helpful", "harmful"):
                for e in r.get(group) or []:
                    if train_ids is not None and isinstance(e, dict) and isinstance(e.get("train_row"), (int, np.integer)):
                        e["train_row_id"] = str(train_ids[int(e["train_row"])])


def _tabular(estimator):
    """The typed-input view of a model whose preprocessing reads mixed-type rows, else None."""
    try:
        from invaudit.models.tabular import split_tabular
    except ImportError:
        return None
    return split_tabular(estimator)


def emit_report(report: dict, fmt: Format, json_path: Optional[Path]) -> None:
    """Write ``--json`` first (atomically), then the chosen format to stdout."""
    text = dumps(report)
    if json_path is not None:
        try:
            write_atomic(json_path, text)
        except OSError as exc:
            raise InputError(f"cannot write the JSON report to {json_path}: {exc.strerror or exc}.") from None
    if fmt == Format.json:
        sys.stdout.write(text)
    else:
        render(report, fmt, out_console())


def write_points(path: Path, points: np.ndarray, columns, keep: np.ndarray, ids, id_name, rows) -> int:
    """Answers of a numeric model as a data file: ``.csv`` in the input's columns (first column the
    row's ID or number), or ``.npy`` (the points alone). Only rows with an answer are written."""
    from invaudit.io import write_atomic

    pts = np.asarray(points, dtype=np.float64)[keep]
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            import io as _io

            buf = _io.BytesIO()
            np.save(buf, pts)
            write_atomic(path, buf.getvalue())
        elif suffix == ".csv":
            key = (np.asarray(ids)[rows] if ids is not None else rows)[keep]
            lines = [",".join([id_name or "row", *[str(c) for c in columns]])]
            lines += [",".join([str(k), *[repr(float(v)) for v in p]]) for k, p in zip(key, pts)]
            write_atomic(path, "\n".join(lines) + "\n")
        else:
            raise InputError(f"--out {path}: the file must end in .csv or .npy.")
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}.") from None
    return int(keep.sum())


def check_out_path(path: Optional[Path], allowed=(".csv", ".npy")) -> None:
    """Refuse a bad --out before any work is done."""
    if path is None:
        return
    if path.suffix.lower() not in allowed:
        raise InputError(f"--out {path}: the file must end in {' or '.join(allowed)}.")
    parent = path.resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise InputError(f"--out {path}: the folder {parent} does not exist or is not writable.")


def counterfactual_summary(results: list) -> dict:
    """The counterfactual report's summary, from its records (numeric and typed rows alike)."""
    from invaudit.counterfactual.solve import EXACT_MEANS

    status = [r["status"] for r in results]
    found = [r for r in results if r["status"] == "found"]
    dist = [r["distance"] for r in found if r["distance"] is not None]
    return {
        "rows": len(results),
        "found": status.count("found"),
        "already_target": status.count("already-target"),
        "infeasible": status.count("infeasible"),
        "failed": status.count("failed"),
        "exact": sum(bool(r["exact"]) for r in found),
        "exact_means": EXACT_MEANS,
        "median_distance": float(np.median(dist)) if dist else None,
    }


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {message}", highlight=False, soft_wrap=True)


def note(message: str) -> None:
    err_console.print(message, highlight=False, soft_wrap=True)


#: Seconds between plain progress lines when stderr is not a terminal (a CI log).
PROGRESS_INTERVAL_S = 10.0


def _plain_progress_interval() -> float:
    """``INVAUDIT_PROGRESS_INTERVAL`` (seconds, for tests and impatient logs), else 10 s."""
    try:
        value = float(os.environ.get("INVAUDIT_PROGRESS_INTERVAL", PROGRESS_INTERVAL_S))
    except ValueError:
        return PROGRESS_INTERVAL_S
    return value if value > 0 else PROGRESS_INTERVAL_S


@contextlib.contextmanager
def _plain_progress(description: str, total: int):
    """For a log, not a terminal: one line ``invaudit <command>: <description> done/total, N s
    elapsed`` at most every interval, from a timer thread (a single long step still shows the
    run is alive), and nothing at all for a run shorter than one interval."""
    import threading

    try:
        from typer.main import get_current_context  # Typer's Click: which subcommand is running

        ctx = get_current_context(silent=True)
        command = f" {ctx.info_name}" if ctx is not None and ctx.info_name else ""
    except ImportError:  # pragma: no cover - depends on the installed Typer
        command = ""
    interval = _plain_progress_interval()
    started = time.monotonic()
    state = {"done": 0, "total": total}
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(interval):
            line = (f"invaudit{command}: {description} {state['done']}/{state['total']}, "
                    f"{time.monotonic() - started:.0f} s elapsed\n")
            try:
                sys.stderr.write(line)
                sys.stderr.flush()
            except (OSError, ValueError):  # stderr closed: nothing to tell
                return

    thread = threading.Thread(target=report, name="invaudit-progress", daemon=True)
    thread.start()

    def update(done: int, total: int = total) -> None:
        state["done"], state["total"] = done, total

    try:
        yield update
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def progress(description: str, total: int):
    """Progress on stderr; yields ``update(done, total)``. A bar on a terminal; otherwise a plain
    line at most every 10 s (``INVAUDIT_PROGRESS_INTERVAL``), none for quick runs.
    ``INVAUDIT_NO_PROGRESS`` silences both."""
    if os.environ.get("INVAUDIT_NO_PROGRESS"):
        yield lambda done, total=total: None
        return
    if not err_console.is_terminal:
        with _plain_progress(description, total) as update:
            yield update
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task(description, total=total)

        def update(done: int, total: int = total) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def quiet_sklearn_warnings() -> None:
    """invaudit matches columns by name itself and feeds arrays: scikit-learn's warning that the
    array has no feature names is noise here."""
    warnings.filterwarnings("ignore", message="X does not have valid feature names")
    warnings.filterwarnings("ignore", message="X has feature names")


def resolve_labels(form, spec: str, what: str) -> int:
    """A class label as the user typed it -> its index in ``form.classes``."""
    classes = np.asarray(form.classes)
    for i, c in enumerate(classes):
        if str(c) == spec:
            return i
    try:
        v = float(spec)
        for i, c in enumerate(classes):
            if isinstance(c, (int, float, np.integer, np.floating)) and float(c) == v:
                return i
    except ValueError:
        pass
    shown = ", ".join(str(c) for c in classes[:12])
    raise InputError(f"{what} '{spec}' is not a class of the model (classes: {shown}).")


class ConstraintOpts:
    """The constraint flags counterfactual and margin share (DESIGN.md, "Constraints users ask for")."""

    Scale = Annotated[Scale, typer.Option("--scale", help="Distance in units of each feature's spread in --train (std or MAD).")]
    Immutable = Annotated[Optional[str], typer.Option("--immutable", metavar="COLS", help="Features that must not change (names or indices).")]
    IncreaseOnly = Annotated[Optional[str], typer.Option("--increase-only", metavar="COLS", help="Features that may only increase.")]
    DecreaseOnly = Annotated[Optional[str], typer.Option("--decrease-only", metavar="COLS", help="Features that may only decrease.")]
    Bounds = Annotated[Bounds, typer.Option("--bounds", help="'data': stay inside the ranges seen in --train.")]
    Train = Annotated[Optional[Path], typer.Option("--train", metavar="TRAIN", help="Training data (for --scale, --bounds, --from mean).")]


def build_constraints(form, X, train_ds, *, scale: Scale, immutable, increase_only, decrease_only, bounds: Bounds):
    """Per-row boxes on the answer and per-feature metric weights, from the shared flags."""
    from invaudit.counterfactual import Constraints

    return Constraints.from_options(
        X, feature_names=form.feature_names, X_train=None if train_ds is None else train_ds.X,
        immutable=immutable, increase_only=increase_only, decrease_only=decrease_only,
        bounds=bounds.value, scale=scale.value)
