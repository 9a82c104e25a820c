"""What every command shares: its options, loading the model and data, emitting the report.

Commands stay thin: parse -> load (here) -> call one solver -> emit (here).
"""

from __future__ import annotations

import contextlib
import itertools
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
from invaudit.io import envelope, load_data, write_atomic
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
ReportSchema = Annotated[Optional[int], typer.Option("--schema", min=1, max=2, metavar="1|2", help="JSON report version: 1 (default: every vector as a full list) or 2 (compact: vectors sparse where shorter, nothing written that the data rows give back bit for bit; invaudit.io.report.expand_report rebuilds /1).")]
def _schema_one(ctx: typer.Context, value: Optional[int]) -> Optional[int]:
    if value is not None and value != 1:
        raise typer.BadParameter(f"{value}: '{ctx.info_name}' writes report schema 1 only (schema 2, the compact "
                                 "report, is for counterfactual and margin).")
    return value


#: ``--schema`` of the commands with one report version: pins it (a script can pass it to every command).
ReportSchemaOne = Annotated[Optional[int], typer.Option("--schema", metavar="1", callback=_schema_one, show_default=False, help="JSON report version; this command has one (1).")]


def rows_spec(value: Optional[str]) -> Optional[str]:
    """``--rows`` (and every other row-spec option): its syntax checked at parse time, before any
    work, a usage error (exit 2) naming the flag. An explicit empty selection (``""``, ``" "``,
    ``","``) is an error, not "every row" (leave the flag out, or say ``all``); a part that is not
    a row number or an ascending range ``7-9``, or a negative row, too. Rows past the end of the
    data are bad input (exit 3), found once the data is read. Ranges are not expanded here."""
    if value is None or value.strip().lower() == "all":
        return value
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts:
        raise typer.BadParameter(f"{value!r} selects no rows: give row numbers and ranges like 0,3,7-9, "
                                 "or leave the option out for every row.")
    for part in parts:
        try:
            ends = [int(v) for v in part.split("-", 1)] if "-" in part[1:] else [int(part)]
        except ValueError:
            raise typer.BadParameter(f"{value!r}: '{part}' is not a row number or a range like 7-9.") from None
        if min(ends) < 0:
            raise typer.BadParameter(f"{value!r}: '{part}': row numbers start at 0.")
        if ends[-1] < ends[0]:
            raise typer.BadParameter(f"{value!r}: the range '{part}' ends before it starts.")
    return value


Rows = Annotated[Optional[str], typer.Option("--rows", metavar="SPEC", callback=rows_spec, help="Rows to use, e.g. 0,3,7-9 (default: all).")]
LabelColumn = Annotated[Optional[str], typer.Option("--label-column", metavar="NAME", help="CSV column holding the labels.")]
Labels = Annotated[Optional[Path], typer.Option("--labels", metavar="FILE.npy", help="Labels for an NPY data file.")]
OutPoints = Annotated[Optional[Path], typer.Option("--out", metavar="PATH", help="Write the answers' rows to PATH (.csv in the input's own columns, or .npy), atomically.")]
IntegerCols = Annotated[Optional[str], typer.Option("--integer", metavar="COLS", help="Columns that must stay whole numbers (typed-row models).")]
CategoricalCost = Annotated[float, typer.Option("--categorical-cost", min=0.0, help="Cost of changing one categorical column, in units of the (scaled) numeric distance.")]
IdColumn = Annotated[Optional[str], typer.Option("--id-column", metavar="NAME", help="CSV column naming the rows (row_id in reports); not a feature.")]
Seed = Annotated[int, typer.Option("--seed", min=0, help="Random seed; results are deterministic for a fixed seed.")]
TimeLimit = Annotated[Optional[float], typer.Option("--time-limit", min=0.0, metavar="SECONDS", help="Seconds for each row (tree ensembles: the anytime search and the MILP together; default 0.6); a row still running then returns its best verified answer, not exact. Black boxes search their rows together, so the search stops after SECONDS (default: no limit). Typed rows: seconds per MILP and per row (default 10).")]
#: ``--quiet``: set by the option's callback on every run (each command has the option).
_QUIET = {"on": False}
#: The command running when no Click context says so (cli/_fast.py runs ``info`` without Typer).
RUNNING = {"command": None}


def _set_quiet(value: bool) -> bool:
    _QUIET["on"] = bool(value)
    return value


Quiet = Annotated[bool, typer.Option("--quiet", "-q", callback=_set_quiet, help="No progress and no notes on stderr (warnings and errors still show).")]
RunTimeLimit = Annotated[Optional[float], typer.Option("--run-time-limit", min=0.0, metavar="SECONDS", help="Seconds for the whole run; rows still to do then get the quick verified search only (tree ensembles, black boxes).")]


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

        from invaudit.models._light_linear import light_form

        # light: a linear model's, an MLP's or a tree's / forest's state read without importing
        # scikit-learn (issue 16); its estimator is unpickled only if something reads it. Such a
        # model (affine steps and a linear classifier or MLP, or scikit-learn trees alone) reads
        # no typed columns and has no categorical splits.
        with working("loading the model"):
            loaded = load_model(self.model_path, trust=self.trust, sha256=self.sha256, light=True)
        for w in loaded.warnings:
            warn(w)
        self.loaded = loaded
        light = light_form(loaded)
        if light is None and loaded.light is not None:  # an MLP, a tree or a forest (the same way)
            from invaudit.models._light_nonlinear import light_form as nonlinear_light_form

            light = nonlinear_light_form(loaded)
        self.form = light if light is not None else adapt(loaded.estimator)
        self.tabular = None if light is not None else _tabular(loaded.estimator)
        if self.tabular is None and light is None and self.command in NUMERIC_ANSWER_COMMANDS:
            from invaudit.models.tabular import has_categorical_splits

            if has_categorical_splits(loaded.estimator):
                from invaudit.errors import UnsupportedModelError

                raise UnsupportedModelError(
                    f"{self.model_path}: this {type(_final_step(loaded.estimator)).__name__} model splits on categories, behind preprocessing "
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

    def data(self, path, *, label_column=None, labels=None, require_labels=False, primary=True, id_column=None,
             rows: Optional[str] = None):
        """Load a data file checked against the model (names, feature count, classes). ``rows``
        (the ``--rows`` spec): a CSV is read only up to the last row it names."""
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
            rows=rows,
        )
        if ds.column_match == "position":
            self._check_positional(ds)
        elif ds.column_match == "name" and ds.file_columns:
            known = set(self.form.feature_names or []) | {c[0] for c in schema or []}
            ignored = [c for c in ds.file_columns if c not in known]
            if ignored:
                shown = ", ".join(ignored[:6]) + (", ..." if len(ignored) > 6 else "")
                flags = ([] if label_column is not None else ["--label-column if one holds the labels"]) \
                    + ([] if id_column is not None else ["--id-column if one names the rows"])
                hint = f" (pass {', '.join(flags)})" if flags else ""
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

    def emit(self, *, params: dict, results, summary: dict, fmt: Format,
             json_path: Optional[Path], extra: Optional[dict] = None, version: Optional[int] = None) -> dict:
        """Emit the whole report at once (``results``: a list of dicts or ``Columns``;
        ``version``: the report schema's, from ``--schema``)."""
        self._attach_ids(results)
        report = envelope(
            self.command, model=self.model_info, data=self.data_info, params=params,
            results=results, summary=summary, elapsed_s=time.perf_counter() - self.started,
            extra=extra, version=version or REPORT_VERSIONS.get(self.command, 1),
        )
        emit_report(report, fmt, json_path)
        return report

    def emit_stream(self, *, params: dict, chunks, summary, fmt: Format, json_path: Optional[Path],
                    version: Optional[int] = None, files: bool = False) -> None:
        """Emit a report whose results arrive in chunks (``Columns``), writing each as it comes.

        ``--format jsonl`` and ``--format json`` go to stdout as the chunks arrive, ``--json PATH``
        to a temporary renamed over PATH at the end (never half a file under PATH); a table or
        Markdown keeps only the rows it could show. ``summary`` is called after the last chunk.
        Memory: one chunk at a time, plus what the caller keeps for its summary. Should stdout's
        reader go away, the run still finishes ``--json`` (and, with ``files``, the files the
        chunks write, e.g. ``--out``) before the closed pipe ends it.
        """
        from invaudit.io.report import Columns, json_chunk, json_head, json_tail, jsonl_chunk, jsonl_head, jsonl_tail
        from invaudit.render.views import view_for

        report = envelope(self.command, model=self.model_info, data=self.data_info, params=params,
                          results=Columns(0), summary={}, elapsed_s=0.0,
                          version=version or REPORT_VERSIONS.get(self.command, 1))
        view = view_for(report) if fmt in (Format.table, Format.markdown) else None
        # the first chunk is solved before anything is written: bad input found there (a
        # constraint that needs --train, ...) fails the run with nothing on stdout
        chunks = iter(chunks)
        first = next(chunks, None)
        chunks = itertools.chain([] if first is None else [first], chunks)
        first = None  # the chain holds it until it is written, then lets it go
        kept: list = []
        total = 0
        out = _stdout_bytes() if fmt in (Format.json, Format.jsonl) else None
        if out is not None and (json_path is not None or files):  # a closed stdout costs no report file
            out = _DeferredPipe(out)
        with contextlib.ExitStack() as stack:
            jfile = stack.enter_context(_atomic_report(json_path)) if json_path is not None else None
            if jfile is not None:
                jfile.write(json_head(report))
            if out is not None:
                out(json_head(report) if fmt is Format.json else jsonl_head(report))
            any_row = False
            for cols in chunks:
                self._attach_ids(cols)
                total += len(cols)
                if view is not None:  # the rows a table could show so far (at most max_rows)
                    kept = view.shown({**report, "results": kept + view.shown({**report, "results": cols})[0]})[0]
                if jfile is None and out is None:
                    continue
                for enc in cols.chunks():  # each chunk joined in one call, no object per row
                    if not len(enc):
                        continue
                    if jfile is not None:
                        jfile.write(json_chunk(enc, first=not any_row))
                    if out is not None:
                        out(json_chunk(enc, first=not any_row) if fmt is Format.json else jsonl_chunk(enc))
                    any_row = True
            report["summary"] = jsonable_summary(summary())
            report["elapsed_s"] = round(time.perf_counter() - self.started, 6)
            if jfile is not None:
                jfile.write(json_tail(report, any_row=any_row))
            if out is not None:
                out(json_tail(report, any_row=any_row) if fmt is Format.json else jsonl_tail(report))
        if isinstance(out, _DeferredPipe) and out.closed:
            raise out.closed  # the --json report is whole; now the closed stdout ends the run (exit 141)
        if view is not None:
            report["results"] = _Shown(kept, total)
            render(report, fmt, out_console())

    def _attach_ids(self, results) -> None:
        """``row_id`` (and ``train_row_id``) next to every row number, from ``--id-column``."""
        data_ids, train_ids = self.ids.get("data"), self.ids.get("train")
        if data_ids is None and train_ids is None:
            return
        from invaudit.io.report import Columns

        if isinstance(results, Columns):
            if data_ids is not None and "row" in results and "row_id" not in results:
                rows = np.asarray(results.column("row"), dtype=np.intp)
                results.add("row_id", "obj", [str(v) for v in np.asarray(data_ids)[rows]])
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


def _final_step(estimator):
    while hasattr(estimator, "steps"):
        estimator = estimator.steps[-1][1]
    return estimator


def _tabular(estimator):
    """The typed-input view of a model whose preprocessing reads mixed-type rows, else None."""
    try:
        from invaudit.models.tabular import split_tabular
    except ImportError:
        return None
    return split_tabular(estimator)


#: Report schema versions that moved past 1 (invaudit/schemas/<command>.json).
REPORT_VERSIONS: dict = {}


class _Shown(list):
    """The rows a streamed table shows, and how many results there were in all."""

    def __init__(self, rows, total: int):
        super().__init__(rows)
        self.n_total = int(total)


def jsonable_summary(summary: dict) -> dict:
    from invaudit.io.report import jsonable

    return jsonable(summary)


def _stdout_bytes():
    """A function writing bytes to stdout (its binary buffer when there is one)."""
    sys.stdout.flush()
    buf = getattr(sys.stdout, "buffer", None)
    if buf is None:
        return lambda data: sys.stdout.write(data.decode("utf-8"))

    def write(data: bytes) -> None:
        try:
            buf.write(data)
            buf.flush()
        except BrokenPipeError:
            # `invaudit ... | head`: the reader is gone; point stdout at /dev/null so the flush at
            # exit does not fail again, and let the caller stop (exit 0)
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, buf.fileno())
            except (OSError, ValueError, AttributeError):
                pass
            raise
    return write


class _DeferredPipe:
    """Writes to stdout until its reader goes away (``| head``), then nothing: the run goes on to
    finish a ``--json`` report, and raises the closed pipe (:attr:`closed`) after that."""

    def __init__(self, write):
        self._write = write
        self.closed: Optional[BrokenPipeError] = None

    def __call__(self, data: bytes) -> None:
        if self.closed is None:
            try:
                self._write(data)
            except BrokenPipeError as exc:
                self.closed = exc


@contextlib.contextmanager
def _atomic_report(path: Path, what: str = "the JSON report"):
    from invaudit.io.report import AtomicFile

    try:
        with AtomicFile(path) as fh:
            yield fh
    except OSError as exc:
        raise InputError(f"cannot write {what} to {path}: {exc.strerror or exc}.") from None


def emit_report(report: dict, fmt: Format, json_path: Optional[Path]) -> None:
    """Write ``--json`` first (atomically), then the chosen format to stdout. JSON is encoded in
    pieces (orjson, numpy arrays in bulk) and never built as one string."""
    from invaudit.io.report import encode, encode_jsonl

    if json_path is not None:
        with _atomic_report(json_path) as fh:
            for piece in encode(report):
                fh.write(piece)
    if fmt == Format.json or fmt == Format.jsonl:
        out = _stdout_bytes()
        for piece in (encode(report) if fmt == Format.json else encode_jsonl(report)):
            out(piece)
    else:
        render(report, fmt, out_console())


def csv_field(value) -> str:
    """One CSV field as the csv module writes it (RFC 4180): quoted, its quotes doubled, when it
    holds a comma, a quote or a line break (an ID like ``Smith, J`` would otherwise shift every
    value after it one column to the right)."""
    s = str(value)
    if "," in s or '"' in s or "\n" in s or "\r" in s:
        return '"' + s.replace('"', '""') + '"'
    return s


def index_column(id_name, columns) -> str:
    """The first column of an ``--out`` CSV: the ID column's name, else ``row``, with underscores
    in front while a feature has that name (a repeated header name reads back as the wrong
    column: pandas would take the row numbers for the feature)."""
    if id_name:
        return str(id_name)
    taken = {str(c) for c in columns}
    name = "row"
    while name in taken:
        name = "_" + name
    return name


class PointWriter:
    """``--out``: answers of a numeric model written as they come, atomically. ``.csv`` in the
    input's columns (first column the row's ID or number), ``.npy`` (the points alone; the
    header's row count is fixed at the end). Numbers are written with orjson's shortest
    round-trip repr."""

    _NPY_HEADER = 128  # bytes, magic included: room for any (rows, columns) shape

    def __init__(self, path: Path, columns, id_name):
        self.path = Path(path)
        self.suffix = self.path.suffix.lower()
        if self.suffix not in (".csv", ".npy"):
            raise InputError(f"--out {path}: the file must end in .csv or .npy.")
        self.columns = [str(c) for c in columns]
        self.id_name = id_name
        self.count = 0
        self._cm = None
        self._fh = None

    def __enter__(self) -> "PointWriter":
        self._cm = _atomic_report(self.path, what="the points")
        self._fh = self._cm.__enter__()
        if self.suffix == ".npy":
            self._fh.write(self._npy_header(0))
        else:
            head = [index_column(self.id_name, self.columns), *self.columns]
            self._fh.write((",".join(csv_field(c) for c in head) + "\n").encode("utf-8"))
        return self

    def _npy_header(self, rows: int) -> bytes:
        head = "{'descr': '<f8', 'fortran_order': False, 'shape': (%d, %d), }" % (rows, len(self.columns))
        pad = self._NPY_HEADER - 10 - len(head) - 1
        return b"\x93NUMPY\x01\x00" + (self._NPY_HEADER - 10).to_bytes(2, "little") + (head + " " * pad + "\n").encode("latin1")

    def write(self, points: np.ndarray, keys) -> None:
        """Rows of ``points`` (float64, ``(m, D)``) named by ``keys`` (IDs or row numbers)."""
        import orjson

        pts = np.ascontiguousarray(points, dtype=np.float64)
        if pts.shape[0] == 0:
            return
        if self.suffix == ".npy":
            self._fh.write(pts.astype("<f8", copy=False).tobytes())
        else:
            body = orjson.dumps(pts, option=orjson.OPT_SERIALIZE_NUMPY)[2:-2].split(b"],[") if pts.shape[1] \
                else [b""] * pts.shape[0]
            self._fh.write(b"".join(csv_field(k).encode("utf-8") + b"," + line + b"\n" for k, line in zip(keys, body)))
        self.count += pts.shape[0]

    def __exit__(self, exc_type, exc, tb):
        if exc is None and self.suffix == ".npy":
            end = self._fh.tell()
            self._fh.seek(0)
            self._fh.write(self._npy_header(self.count))
            self._fh.seek(end)
        return self._cm.__exit__(exc_type, exc, tb)


def write_points(path: Path, points: np.ndarray, columns, keep: np.ndarray, ids, id_name, rows) -> int:
    """Answers of a numeric model as a data file: ``.csv`` in the input's columns (first column the
    row's ID or number), or ``.npy`` (the points alone). Only rows with an answer are written."""
    keep = np.asarray(keep, dtype=bool)
    key = (np.asarray(ids)[rows] if ids is not None else np.asarray(rows))[keep]
    with PointWriter(path, columns, id_name) as w:
        w.write(np.asarray(points, dtype=np.float64)[keep], key.tolist())
    return int(keep.sum())


def margin_chunk_rows(form, n: int) -> int:
    """Rows per chunk of a streamed margin run: about 2 million values of the (rows x features)
    matrix (16 MB) for the linear form, whose rows are solved independently and exactly; other
    forms run as one chunk (their searches draw random directions over the whole batch, and a
    chunked run must give the same answers as an unchunked one)."""
    if form.kind != "linear":
        return max(1, n)
    return max(1024, (1 << 21) // max(1, int(form.n_features)))


def stream_margins(run: "Run", ds, row_ids: np.ndarray, solve, *, eps, params: dict, fmt: Format,
                   json_path: Optional[Path], out: Optional[Path], id_column: Optional[str],
                   chunk_rows: Optional[int] = None, version: Optional[int] = None) -> None:
    """A numeric margin run, chunk by chunk: read the chunk's rows (``Dataset.take``: an NPY is
    memory-mapped and gives its pages back), ``solve(X, y_index) -> MarginBatch``, write the
    chunk's results (and ``--out`` points) and keep only the per-row numbers the summary needs.
    Peak memory is one chunk plus a few numbers per row, whatever the number of rows."""
    from invaudit.margins import MarginBatch, summarize

    form = run.form
    n = int(len(row_ids))
    size = margin_chunk_rows(form, n) if chunk_rows is None else max(1, int(chunk_rows))
    y_all = None if ds.y_index is None else np.asarray(ds.y_index)[row_ids]
    labels = None if ds.y is None else np.asarray(ds.y)
    keep: dict = {k: [] for k in ("margin", "lower_bound", "nearest_index", "perturbation_norm", "exact",
                                  "method", "predicted_index")}
    norm = {"value": params.get("norm", "l2")}
    written = {"count": 0}
    cols = ds.columns or form.feature_names or [f"x{j}" for j in range(form.n_features)]
    vectors = json_path is not None or fmt not in (Format.table, Format.markdown)

    def chunks():
        writer = PointWriter(out, cols, id_column) if out is not None else contextlib.nullcontext()
        with progress("margins", n) as update, writer as w:
            for lo in range(0, n, size):
                rows = row_ids[lo:lo + size]
                X = ds.take(rows)
                batch = solve(X, None if y_all is None else y_all[lo:lo + size],
                              lambda done, total=0, lo=lo: update(min(n, lo + done), n))
                norm["value"] = batch.norm
                for k in keep:  # copies: a view would keep the chunk's whole solver output alive
                    keep[k].append(np.array(getattr(batch, k), copy=True))
                if w is not None:
                    delta = np.asarray(batch.perturbation, dtype=np.float64)
                    has = np.all(np.isfinite(delta), axis=1)
                    key = (np.asarray(ds.ids)[rows] if ds.ids is not None else rows)[has]
                    w.write((X + delta)[has], key.tolist())
                part = batch.columns(form.classes, rows, labels=None if labels is None else labels[rows],
                                     perturbation=vectors)  # a table never shows the vectors
                if version == 2:  # the compact report: perturbations sparse where shorter
                    part.sparse("perturbation")
                yield part
                update(min(n, lo + size), n)
            written["count"] = 0 if w is None else w.count

    def summary() -> dict:
        arrays = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in keep.items()}
        whole = MarginBatch(perturbation=np.zeros((n, 0)), norm=norm["value"],
                            **{k: arrays[k] for k in keep})
        return summarize(whole, y_all, eps, classes=form.classes, row_ids=row_ids)

    run.emit_stream(params=params, chunks=chunks(), summary=summary, fmt=fmt, json_path=json_path, version=version,
                    files=out is not None)
    if out is not None:
        note(f"wrote {written['count']} adversarial row(s) to {out}")


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
    from invaudit.io.report import Columns

    if isinstance(results, Columns):  # from the columns, without a dict per row
        status = [str(s) for s in results.values("status")]
        d = np.asarray(results.column("distance"), dtype=np.float64)
        ok = np.asarray(status, dtype=object) == "found"
        exact = np.asarray(results.column("exact"), dtype=bool)
        dist = d[ok & np.isfinite(d)].tolist()
        return {
            "rows": len(results), "found": status.count("found"), "already_target": status.count("already-target"),
            "infeasible": status.count("infeasible"), "failed": status.count("failed"),
            "exact": int(np.sum(exact & ok)), "exact_means": EXACT_MEANS,
            "median_distance": float(np.median(dist)) if dist else None,
        }
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
    if _QUIET["on"]:
        return
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
        command = command or (f" {RUNNING['command']}" if RUNNING["command"] else "")
    except ImportError:  # pragma: no cover - depends on the installed Typer
        command = ""
    interval = _plain_progress_interval()
    started = time.monotonic()
    state = {"done": 0, "total": total}
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(interval):
            count = "" if state["total"] is None else f" {state['done']}/{state['total']}"
            line = f"invaudit{command}: {description}{count}, {time.monotonic() - started:.0f} s elapsed\n"
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
def working(description: str):
    """Progress for a step that has no count (loading a model, preparing a solver): a transient
    spinner on a terminal, a plain line at most every 10 s in a log, none for a quick step;
    nothing with ``--quiet`` or ``INVAUDIT_NO_PROGRESS``. Never inside :func:`progress`."""
    if os.environ.get("INVAUDIT_NO_PROGRESS") or _QUIET["on"]:
        yield
    elif not err_console.is_terminal:
        with _plain_progress(description, None):
            yield
    else:
        with err_console.status(description):
            yield


@contextlib.contextmanager
def progress(description: str, total: int):
    """Progress on stderr; yields ``update(done, total)``. A bar on a terminal; otherwise a plain
    line at most every 10 s (``INVAUDIT_PROGRESS_INTERVAL``), none for quick runs.
    ``INVAUDIT_NO_PROGRESS`` and ``--quiet`` silence both."""
    if os.environ.get("INVAUDIT_NO_PROGRESS") or _QUIET["on"]:
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


def check_label_column(label_column: Optional[str], *paths) -> None:
    """A ``--label-column`` the user named must be a column of at least one of the run's CSV files
    (``paths``: DATA, --train; None skipped). Labels are optional in DATA, so a file without the
    column is read without labels; but a name that no file has is a typo, and reading on would
    drop the labels and feed the column to nobody: refused. Files that cannot be read, or are not
    CSV, are left to the loader to report."""
    _check_column("--label-column", label_column, paths)


def check_id_column(id_column: Optional[str], data) -> None:
    """An ``--id-column`` must be a column of the run's primary CSV file (DATA; influence's TEST),
    whose rows it names: refused before the model loads, with the nearest names (a --train file
    without it keeps its row numbers, so only DATA is asked)."""
    _check_column("--id-column", id_column, (data,))


def _check_column(flag: str, column: Optional[str], paths) -> None:
    if column is None:
        return
    from invaudit.io.data import missing_column

    why = missing_column(column, paths)
    if why is not None:
        raise InputError(f"{flag} {why}.")


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
    Train = Annotated[Optional[Path], typer.Option("--train", metavar="TRAIN", help="Training data (for --scale and --bounds; searches of non-linear models also start from its rows).")]


def build_constraints(form, X, train_ds, *, scale: Scale, immutable, increase_only, decrease_only, bounds: Bounds):
    """Per-row boxes on the answer and per-feature metric weights, from the shared flags."""
    from invaudit.counterfactual import Constraints

    return Constraints.from_options(
        X, feature_names=form.feature_names, X_train=None if train_ds is None else train_ds.X,
        immutable=immutable, increase_only=increase_only, decrease_only=decrease_only,
        bounds=bounds.value, scale=scale.value)
