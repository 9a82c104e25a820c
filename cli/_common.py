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
JsonOut = Annotated[Optional[Path], typer.Option("--json", metavar="PATH", help="Also write the full JSON report to PATH (atomically).")]
Rows = Annotated[Optional[str], typer.Option("--rows", metavar="SPEC", help="Rows to use, e.g. 0,3,7-9 (default: all).")]
LabelColumn = Annotated[Optional[str], typer.Option("--label-column", metavar="NAME", help="CSV column holding the labels.")]
Labels = Annotated[Optional[Path], typer.Option("--labels", metavar="FILE.npy", help="Labels for an NPY data file.")]
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
        self.data_info: Optional[dict] = None

    @property
    def model_info(self) -> dict:
        info = {"path": str(self.model_path), "sha256": self.loaded.sha256}
        info.update(self.form.describe())
        return info

    def data(self, path, *, label_column=None, labels=None, require_labels=False, primary=True):
        """Load a data file checked against the model (names, feature count, classes)."""
        ds = load_data(
            path,
            n_features=self.form.n_features,
            feature_names=self.form.feature_names,
            classes=self.form.classes,
            label_column=label_column,
            labels_path=labels,
            require_labels=require_labels,
        )
        if primary:
            self.data_info = ds.describe()
        return ds

    def emit(self, *, params: dict, results: list, summary: dict, fmt: Format,
             json_path: Optional[Path], extra: Optional[dict] = None) -> dict:
        report = envelope(
            self.command, model=self.model_info, data=self.data_info, params=params,
            results=results, summary=summary, elapsed_s=time.perf_counter() - self.started,
            extra=extra,
        )
        emit_report(report, fmt, json_path)
        return report


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


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {message}", highlight=False, soft_wrap=True)


def note(message: str) -> None:
    err_console.print(message, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def progress(description: str, total: int):
    """A progress bar on stderr; yields ``update(done, total)``. Silent when stderr is not a TTY."""
    if not err_console.is_terminal or os.environ.get("INVAUDIT_NO_PROGRESS"):
        yield lambda done, total=total: None
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
