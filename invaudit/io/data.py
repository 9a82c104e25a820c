"""Data files: CSV (header row), NPY (2-D features, labels from a second NPY), NPZ (``X``, ``y``).

One loader for every command. Everything that can be wrong with a data file becomes an
:class:`~invaudit.errors.InputError` whose message names the file, and where it applies the row
and column, in one sentence.

Typed rows. A model whose own preprocessing reads mixed-type rows (a ColumnTransformer with
encoders and imputers) is given a ``schema``: one ``(name, kind, categories)`` per input column.
Its CSV is then read with those types into a pandas DataFrame (``Dataset.frame``): numeric columns
as float64 with NaN for blank cells, categorical columns as the encoder's own values (strings, or
numbers where the encoder was fitted on numbers) with NaN for blank cells. pandas, because
scikit-learn pipelines that select columns by name only take a DataFrame.

Column order. Columns are matched by name whenever the model knows its feature names. A model
without names cannot check a header, so the columns are taken by position and ``column_match``
says ``"position"`` (the CLI says so on stderr and in the report).
"""

from __future__ import annotations

import csv
import mmap
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import InputError
from .model_file import file_sha256

DATA_SUFFIXES = (".csv", ".npy", ".npz")


@dataclass(frozen=True)
class Dataset:
    """Features (float64, ``(n, D)``, columns in the model's order) and optional labels.

    ``y`` holds the labels as the model names them (values of ``classes``) and ``y_index`` their
    positions in ``classes``; both are ``None`` when the file carries no labels.
    ``columns`` are the file's feature names in model order (``None`` for NPY/NPZ).
    """

    path: str
    sha256: str
    X: Optional[np.ndarray]
    y: Optional[np.ndarray]
    y_index: Optional[np.ndarray]
    columns: Optional[list]
    ids: Optional[np.ndarray] = None          # --id-column values (strings), one per row
    frame: Any = None                         # typed rows (pandas DataFrame) for a schema'd model
    column_match: Optional[str] = None        # "name" or "position" (CSV); "name" for an NPZ whose
    #                                           feature_names were matched; else None for NPY/NPZ
    file_columns: Optional[list] = None       # the CSV's feature columns in file order
    n_rows_in_file: Optional[int] = None      # a CSV read only up to the last --rows row: its row count

    @property
    def n_rows(self) -> int:
        return int(self.X.shape[0] if self.X is not None else len(self.frame))

    def take(self, rows) -> np.ndarray:
        """Rows of ``X`` as a float64 copy. A memory-mapped NPY gives its pages back afterwards,
        so reading a large file chunk by chunk keeps only one chunk in memory."""
        rows = np.asarray(rows, dtype=np.intp)
        X = self.X
        if rows.size and rows[-1] - rows[0] == rows.size - 1 and np.all(np.diff(rows) == 1):
            out = np.array(X[int(rows[0]):int(rows[-1]) + 1], dtype=np.float64)
        else:
            out = np.array(X[rows], dtype=np.float64)
        _release(X)
        return out

    def describe(self) -> dict:
        n = self.n_rows if self.n_rows_in_file is None else self.n_rows_in_file
        out = {"path": self.path, "sha256": self.sha256, "n_rows": n}
        if self.column_match is not None:
            out["column_match"] = self.column_match
        return out


def load_data(
    path,
    *,
    n_features: Optional[int] = None,
    feature_names: Optional[Sequence[str]] = None,
    classes: Optional[np.ndarray] = None,
    label_column: Optional[str] = None,
    labels_path=None,
    require_labels: bool = False,
    id_column: Optional[str] = None,
    schema: Optional[Sequence] = None,
    id_column_optional: bool = False,
    rows: Optional[str] = None,
) -> Dataset:
    """Read a data file and check it against the model.

    Parameters
    ----------
    path : the CSV, NPY or NPZ file.
    n_features : the model's feature count; a different count is an error.
    feature_names : the model's ``feature_names_in_``; CSV columns are then matched by name.
    classes : the model's ``classes_``; labels are checked against them.
    label_column : CSV only: the column holding the labels.
    labels_path : NPY only: a 1-D array of labels.
    require_labels : raise if the file yields no labels.
    id_column : CSV only: a column naming the rows (not a feature).
    schema : the model's input columns as ``(name, kind, categories)`` with ``kind`` one of
        ``numeric``, ``integer``, ``categorical``: the CSV is read with these types into
        ``Dataset.frame`` (blank cells become NaN) and ``X`` is ``None``.
    rows : the ``--rows`` spec the caller will select. A CSV is then read only up to the last
        row it names (what comes after is not parsed or checked; ``Dataset.n_rows_in_file``
        counts its lines), and an NPY is checked for NaN only on those rows.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"data file {p} does not exist or is not a file.")
    suffix = p.suffix.lower()
    if suffix not in DATA_SUFFIXES:
        raise InputError(f"data file {p} must end in .csv, .npy or .npz, not '{p.suffix}'.")
    if label_column is not None and suffix != ".csv":
        raise InputError(f"--label-column applies to CSV files; {p} is {suffix[1:].upper()}.")
    if labels_path is not None and suffix != ".npy":
        raise InputError(f"--labels applies to NPY files; {p} is {suffix[1:].upper()}.")
    if label_column is not None and not require_labels and suffix == ".csv" \
            and label_column not in _csv_header(p) and _csv_header(p):
        label_column = None  # labels are optional here (rows to explain need none)
    if id_column is not None and id_column_optional and (suffix != ".csv" or id_column not in _csv_header(p)):
        id_column = None  # a second file (--train) without the ID column: its rows keep their numbers
    if id_column is not None and suffix != ".csv":
        raise InputError(f"--id-column applies to CSV files; {p} is {suffix[1:].upper()}.")
    if schema is not None and suffix != ".csv" and not _numeric_schema(schema):
        raise InputError(f"data file {p}: this model reads typed columns (categories, blanks) by name; "
                         "give it a CSV with a header.")
    if label_column is not None and id_column is not None and label_column == id_column:
        raise InputError(f"--id-column and --label-column both name '{id_column}'.")
    hashing = _Digest(p)  # the file's SHA-256, on another thread while the file is read and checked
    try:
        return _read_checked(p, suffix, hashing, n_features=n_features, feature_names=feature_names,
                             classes=classes, label_column=label_column, labels_path=labels_path,
                             require_labels=require_labels, id_column=id_column, schema=schema, rows=rows)
    finally:
        hashing.raise_failure()  # a file that cannot be hashed says so first, as before


def _read_checked(p: Path, suffix: str, hashing, *, n_features, feature_names, classes, label_column, labels_path,
                  require_labels, id_column, schema, rows) -> Dataset:
    """:func:`load_data` once its arguments are checked: read the file, check it against the model."""
    ids = frame = file_columns = column_match = in_file = None
    try:
        if suffix == ".csv":
            limit = _last_row(rows)
            X, y_raw, columns, ids, frame, file_columns, in_file = _read_csv(
                p, label_column, feature_names, id_column, schema, limit=None if limit is None else limit + 1)
            column_match = "name" if feature_names is not None else "position"
        elif suffix == ".npy":
            X, y_raw, columns = _read_npy(p, labels_path), None, None
            if labels_path is not None:
                y_raw = _read_labels_npy(Path(labels_path), X.shape[0])
        else:
            X, y_raw, npz_names = _read_npz(p)
            columns = None
            if npz_names is not None:
                X, column_match = _npz_by_name(X, npz_names, p, feature_names, schema)
    except OSError as exc:
        raise InputError(f"cannot read data file {p}: {exc.strerror or exc}.") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"data file {p} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                         f"{exc.start}); save it as UTF-8.") from None

    if schema is not None and frame is None:
        # NPY/NPZ for a model whose categories are numbers (e.g. HistGradientBoosting with
        # categorical_features): the same typed rows, with blanks as NaN
        X = np.asarray(X, dtype=np.float64)
        if X.shape[1] != len(schema):
            raise InputError(f"data file {p} has {X.shape[1]} feature columns but the model expects {len(schema)}.")
        frame = _frame_from_array(X, p, schema)
        X = None
    n_rows = X.shape[0] if X is not None else len(frame)
    if n_rows == 0:
        raise InputError(f"data file {p} has no rows.")
    if X is not None:
        if n_features is not None and X.shape[1] != n_features:
            raise InputError(
                f"data file {p} has {X.shape[1]} feature columns but the model expects {n_features}."
            )
        if isinstance(X, np.memmap):
            _check_finite_mapped(X, p, rows)
        else:
            _check_finite(X, p, columns)

    y = y_index = None
    if y_raw is not None:
        y, y_index = _match_labels(y_raw, classes, p)
    elif require_labels:
        how = {".csv": "pass --label-column NAME", ".npy": "pass --labels FILE.npy",
               ".npz": "store them as array 'y'"}[suffix]
        raise InputError(f"data file {p} has no labels; {how}.")
    return Dataset(path=str(p), sha256=hashing.value(), X=X, y=y, y_index=y_index, columns=columns, ids=ids,
                   frame=frame, column_match=column_match, file_columns=file_columns, n_rows_in_file=in_file)


class _Digest:
    """A file's SHA-256 computed on a thread (hashlib releases the GIL on large blocks), so hashing a
    large data file overlaps with reading it; :meth:`value` gives the digest or raises what
    :func:`file_sha256` raised."""

    def __init__(self, path: Path):
        self._digest = self._error = None
        self._thread = threading.Thread(target=self._run, args=(path,), name="invaudit-sha256", daemon=True)
        self._thread.start()

    def _run(self, path: Path) -> None:
        try:
            self._digest = file_sha256(path)
        except BaseException as exc:  # handed to the reading thread by value()
            self._error = exc

    def raise_failure(self) -> None:
        """Wait for the digest; raise what hashing raised, if anything."""
        self._thread.join()
        if self._error is not None:
            raise self._error

    def value(self) -> str:
        self.raise_failure()
        return self._digest


def _last_row(spec: Optional[str]) -> Optional[int]:
    """The largest row number a ``--rows`` spec names (None: all rows, or a spec parse_rows will
    refuse with its own message)."""
    if spec is None or spec.strip().lower() in ("", "all"):
        return None
    last = -1
    try:
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            last = max(last, int(part.split("-", 1)[1]) if "-" in part[1:] else int(part))
    except ValueError:
        return None
    return last if last >= 0 else None


# --- CSV ---------------------------------------------------------------------------------------

def _csv_header(p: Path) -> list:
    try:
        with open(p, newline="", encoding="utf-8-sig") as fh:
            return [h.strip() for h in next(csv.reader(fh), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []  # the full read reports what is wrong


def missing_column(column: str, paths) -> Optional[str]:
    """``None`` when a named column is in at least one of the CSV files ``paths`` (or none of
    them is a readable CSV with a header), else the sentence's tail saying which files lack it
    and the nearest names: ``"'{column}': {file} has no column of that name (did you mean ...?)"``.
    One wording for --label-column / --id-column and a suite's label_column / id_column."""
    headers = [(Path(q), _csv_header(Path(q))) for q in dict.fromkeys(paths)
               if q is not None and Path(q).suffix.lower() == ".csv" and Path(q).is_file()]
    headers = [(q, h) for q, h in headers if h]
    if not headers or any(column in h for _, h in headers):
        return None
    import difflib

    names = list(dict.fromkeys(c for _, h in headers for c in h))
    close = difflib.get_close_matches(column, names, n=3, cutoff=0.6)
    hint = (f"did you mean {' or '.join(repr(c) for c in close)}?" if close
            else "its columns: " + ", ".join(names[:8]) + (", ..." if len(names) > 8 else ""))
    where = (f"{headers[0][0]} has no" if len(headers) == 1
             else "neither " + " nor ".join(str(q) for q, _ in headers) + " has a")
    return f"'{column}': {where} column of that name ({hint})"


_MISSING_NUMBER = frozenset({"", "na", "n/a", "nan", "null", "none"})


_CSV_CHUNK = 65536  # rows converted to numbers at a time (memory: one chunk of cells)


def _read_csv(p: Path, label_column, feature_names, id_column=None, schema=None, limit=None):
    """Read a CSV (``limit``: only its first ``limit`` rows; the rest is counted, not parsed).

    Returns ``X, y_raw, columns, ids, frame, file_columns, n_rows_in_file`` (the last None
    unless ``limit`` stopped the read early)."""
    # utf-8-sig: a byte-order mark is not part of the first column's name
    with open(p, newline="", encoding="utf-8-sig") as fh:
        consumed = [0]  # with a limit: bytes of the lines the reader has taken (to count the rest)
        reader = csv.reader(fh if limit is None else _measured_lines(fh, consumed))
        try:
            header = next(reader)
        except StopIteration:
            raise InputError(f"data file {p} is empty.") from None
        except csv.Error as exc:
            raise InputError(f"data file {p} is not valid CSV: {exc}.") from None
        header = [h.strip() for h in header]
        width = len(header)
        dup = sorted({h for h in header if header.count(h) > 1})
        if dup:
            raise InputError(f"data file {p} repeats the column name '{dup[0]}'.")
        if label_column is not None and label_column not in header:
            raise InputError(f"data file {p} has no column '{label_column}' (--label-column).")
        if id_column is not None and id_column not in header:
            raise InputError(f"data file {p} has no column '{id_column}' (--id-column).")
        feature_cols = [h for h in header if h not in (label_column, id_column)]
        file_columns = list(feature_cols)

        positional = schema is not None and feature_names is None
        if positional and len(feature_cols) != len(schema):
            raise InputError(f"data file {p} has {len(feature_cols)} feature columns but the model expects {len(schema)}.")
        if schema is not None and not positional:
            feature_names = [c[0] for c in schema]
        if feature_names is not None:
            names = [str(n) for n in feature_names]
            missing = [n for n in names if n not in feature_cols]
            if missing:
                raise InputError(
                    f"data file {p} lacks the model's feature column '{missing[0]}'"
                    + (f" (and {len(missing) - 1} more)." if len(missing) > 1 else ".")
                )
            # columns the model does not read (notes, a second ID) are left out by name
            feature_cols = names  # model order
        col_pos = {h: j for j, h in enumerate(header)}
        idx = [col_pos[h] for h in feature_cols]
        if schema is None and limit is None:
            fast = _read_numeric_fast(p, width, idx, col_pos.get(label_column), col_pos.get(id_column))
            if fast is not None:
                X, y_raw, ids = fast
                return X, y_raw, list(feature_cols), ids, None, file_columns, None

        X_parts, y_parts, id_parts, typed_cells = [], [], [], []
        buf: list = []
        done = 0  # rows converted so far

        def flush() -> None:
            nonlocal done
            if not buf:
                return
            cells = np.array(buf, dtype=object).reshape(len(buf), width)
            if label_column is not None:
                y_parts.append(cells[:, col_pos[label_column]])
            if id_column is not None:
                id_parts.append(np.array([str(v).strip() for v in cells[:, col_pos[id_column]]], dtype=object))
            if schema is not None:
                typed_cells.append(cells[:, idx])
            else:
                X_parts.append(_to_float(cells[:, idx], p, feature_cols, first=done))
            done += len(buf)
            buf.clear()

        try:
            for r in reader:
                if not r:
                    continue  # a blank line (e.g. trailing) is not a row
                if len(r) != width:
                    raise InputError(
                        f"data file {p}, line {reader.line_num}: {len(r)} cells where the header has {width}."
                    )
                buf.append(r)
                if limit is not None and done + len(buf) >= limit:
                    break
                if len(buf) >= _CSV_CHUNK:
                    flush()
        except csv.Error as exc:
            raise InputError(f"data file {p} is not valid CSV at line {reader.line_num}: {exc}.") from None
        flush()
        in_file = None
        if limit is not None and done >= limit:
            in_file = done + _count_lines(p, consumed[0] + _bom_length(p))

    y_raw = np.concatenate(y_parts) if y_parts else (np.empty(0, dtype=object) if label_column is not None else None)
    ids = np.concatenate(id_parts) if id_parts else (np.empty(0, dtype=object) if id_column is not None else None)
    if schema is not None:
        cells = np.concatenate(typed_cells) if typed_cells else np.empty((0, len(idx)), dtype=object)
        # a model without feature names gets the file's columns by position, under its own names
        frame = _typed_frame(cells, p, schema)
        return (None, y_raw, [c[0] for c in schema] if positional else list(feature_cols), ids, frame,
                file_columns, in_file)
    X = np.concatenate(X_parts) if X_parts else np.zeros((0, len(idx)), dtype=np.float64)
    return X, y_raw, list(feature_cols), ids, None, file_columns, in_file


#: Bytes of CSV text the numeric fast path parses at a time (memory: about 8x this, ~64 MB).
_FAST_BLOCK = 1 << 23
#: The csv module's default limit on one cell (csv.field_size_limit()); a longer cell is an error there.
_CSV_FIELD_LIMIT = 131072


def _read_numeric_fast(p: Path, width: int, idx: list, label_pos: Optional[int], id_pos: Optional[int]):
    """The rows of a plain numeric CSV without the csv module: ``(X, y_raw, ids)``, or None
    where this shortcut cannot promise what the csv reader gives, and :func:`_read_csv` reads
    the file itself (so every error message, and every value, is the reader's own).

    The csv module builds a list of Python strings per row and numpy an object array of them
    before converting; here each block of text is split at newlines and commas in two C calls
    and every feature column converted by ``float`` on its cells (the very function the object
    array's conversion calls, so the numbers are the same bits). It applies to text the csv
    reader splits the same way: no quote character and no NUL anywhere, line ends ``\\n`` or
    ``\\r\\n`` (no lone ``\\r``), every non-empty line with exactly the header's number of
    cells, no cell longer than the csv module's limit, valid UTF-8; blank lines are skipped as
    the reader skips them. A cell ``float`` does not take (a blank, ``NA``, a Unicode digit,
    which ``float`` takes from a str but not from bytes) hands the file back to the reader."""
    with open(p, "rb") as fh:
        first = fh.readline()  # the header, already read by the csv module: data start after it
        head = first[:-1].removesuffix(b"\r")
        if width < 1 or not first.endswith(b"\n") or not head or any(c in head for c in (b'"', b"\x00", b"\r")):
            return None
        X_parts, y_parts, id_parts = [], [], []
        carry = b""
        while True:
            block = fh.read(_FAST_BLOCK)
            data = carry + block
            if block:
                cut = data.rfind(b"\n") + 1
                data, carry = data[:cut], data[cut:]
                if not data:
                    continue
            parsed = _parse_numeric_block(data, width, idx, label_pos, id_pos)
            if parsed is None:
                return None
            X, y, ids = parsed
            X_parts.append(X)
            if y is not None:
                y_parts.append(y)
            if ids is not None:
                id_parts.append(ids)
            if not block:
                break
    X = np.concatenate(X_parts) if X_parts else np.zeros((0, len(idx)), dtype=np.float64)
    y_raw = None if label_pos is None else (np.concatenate(y_parts) if y_parts else np.empty(0, dtype=object))
    ids = None if id_pos is None else (np.concatenate(id_parts) if id_parts else np.empty(0, dtype=object))
    return X, y_raw, ids


def _parse_numeric_block(data: bytes, width: int, idx: list, label_pos, id_pos):
    """One block of whole lines for :func:`_read_numeric_fast`: ``(X, y, ids)`` or None."""
    if b'"' in data or b"\x00" in data:
        return None
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
        if b"\r" in data:  # a lone carriage return ends a line for the csv reader
            return None
    body = data[:-1] if data.endswith(b"\n") else data
    if body.startswith(b"\n") or b"\n\n" in body:  # blank lines: not rows
        body = b"\n".join(line for line in body.split(b"\n") if line)
    if not body:
        return np.zeros((0, len(idx)), dtype=np.float64), np.empty(0, dtype=object), np.empty(0, dtype=object)
    text = np.frombuffer(body, dtype=np.uint8)
    if text.max() >= 0x80:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            return None
    # every line holds width - 1 commas exactly when every width-th separator is a newline
    seps = np.flatnonzero((text == 44) | (text == 10))
    n = (seps.size + 1) // width
    if seps.size != n * width - 1 or not np.all(text[seps[width - 1::width]] == 10):
        return None
    if np.diff(seps, prepend=-1, append=text.size).max() - 1 > _CSV_FIELD_LIMIT:
        return None
    cells = body.replace(b"\n", b",").split(b",")
    try:
        if idx == list(range(width)):
            X = np.fromiter(map(float, cells), dtype=np.float64, count=n * width).reshape(n, width)
        else:
            X = np.empty((n, len(idx)), dtype=np.float64)
            for k, j in enumerate(idx):
                X[:, k] = np.fromiter(map(float, cells[j::width]), dtype=np.float64, count=n)
        y = None if label_pos is None else _text_cells(cells[label_pos::width], strip=False)
        ids = None if id_pos is None else _text_cells(cells[id_pos::width], strip=True)
    except (ValueError, UnicodeDecodeError):
        return None
    return X, y, ids


#: The characters str.strip() removes from ASCII text.
_ASCII_SPACE = tuple(bytes([c]) for c in b" \t\x0b\x0c\x1c\x1d\x1e\x1f")


def _text_cells(cells: list, *, strip: bool) -> np.ndarray:
    """Cells (bytes, no newline in any) as an object array of str, as the csv reader gives them
    (``strip``: and then ``str.strip()``), decoded in one call."""
    joined = b"\n".join(cells)
    items = joined.decode("utf-8").split("\n")
    if strip and not (joined.isascii() and not any(c in joined for c in _ASCII_SPACE)):
        items = [v.strip() for v in items]
    return np.array(items, dtype=object)


def _measured_lines(fh, consumed: list):
    """The lines of a text file opened with ``newline=""`` (so each line is exactly its bytes,
    decoded), adding each one's length in UTF-8 bytes to ``consumed[0]``."""
    for line in fh:
        consumed[0] += len(line) if line.isascii() else len(line.encode("utf-8"))
        yield line


def _bom_length(p: Path) -> int:
    with open(p, "rb") as fh:
        return 3 if fh.read(3) == b"\xef\xbb\xbf" else 0


def _count_lines(p: Path, offset: int, block_size: int = 1 << 20) -> int:
    """Non-blank lines of a file from byte ``offset`` on, counted in large binary blocks without
    decoding or parsing them (a quoted cell spanning lines counts once per line). A line is blank
    when it holds nothing, or only the carriage return of a CRLF ending; a last line without its
    newline counts."""
    count, line_start, at, last = 0, offset, offset, -1  # last: the byte before the block
    with open(p, "rb") as fh:
        fh.seek(offset)
        while block := fh.read(block_size):
            arr = np.frombuffer(block, dtype=np.uint8)
            idx = np.flatnonzero(arr == 10)  # the newlines, in the block
            if idx.size:
                ends = idx + at
                starts = np.concatenate(([line_start], ends[:-1] + 1))
                length = ends - starts
                before = arr[np.maximum(idx - 1, 0)].astype(np.int16)  # the byte before each newline
                if idx[0] == 0:
                    before[0] = last
                blank = (length == 0) | ((length == 1) & (before == 13))
                count += int(idx.size - np.count_nonzero(blank))
                line_start = int(ends[-1]) + 1
            last = block[-1]
            at += len(block)
    tail = at - line_start
    if tail > 1 or (tail == 1 and last != 13):
        count += 1
    return count


def _typed_frame(cells: np.ndarray, p: Path, schema):
    """The cells as a DataFrame with the schema's types; blank cells become NaN."""
    import pandas as pd

    data = {}
    for j, (name, kind, categories) in enumerate(schema):
        col = np.array([str(v).strip() for v in cells[:, j]], dtype=object)
        if kind in ("numeric", "integer"):
            vals = np.full(col.shape[0], np.nan)
            for i, v in enumerate(col):
                if v.lower() in _MISSING_NUMBER:
                    continue
                try:
                    f = float(v)
                except ValueError:
                    raise InputError(_cell_message(p, i, name, v, "is not a number")) from None
                if not np.isfinite(f):
                    raise InputError(_cell_message(p, i, name, v, "is not finite"))
                vals[i] = f
            data[name] = vals
        else:
            cats = list(categories) if categories is not None else []
            numeric_cats = bool(cats) and all(isinstance(c, (int, float, np.integer, np.floating))
                                              and not isinstance(c, bool) for c in cats)
            out = np.empty(col.shape[0], dtype=object)
            known = {str(c) for c in cats}
            for i, v in enumerate(col):
                # a blank or a missing-value marker (NA, null, ...) as pandas reads them, unless the
                # model knows that very string as a category
                if v == "" or (v.lower() in _MISSING_NUMBER and v not in known):
                    out[i] = np.nan
                elif not numeric_cats and cells[i, j] in known:
                    out[i] = str(cells[i, j])  # the model's own category, spaces and all (" Male")
                elif numeric_cats:
                    try:
                        f = float(v)
                    except ValueError:
                        raise InputError(_cell_message(p, i, name, v, "is not one of the model's categories "
                                                       f"({_show(np.asarray(cats, dtype=object))})")) from None
                    match = [c for c in cats if float(c) == f]
                    out[i] = match[0] if match else f
                else:
                    out[i] = v
            data[name] = out
    return pd.DataFrame(data, columns=[c[0] for c in schema])


def _numeric_schema(schema) -> bool:
    """Every categorical column's categories are numbers (so an array can hold the rows)."""
    return all(kind != "categorical" or (cats is not None and all(
        isinstance(c, (int, float, np.integer, np.floating)) and not isinstance(c, bool) for c in cats))
        for _, kind, cats in schema)


def _frame_from_array(X: np.ndarray, p: Path, schema):
    import pandas as pd

    data = {}
    for j, (name, kind, cats) in enumerate(schema):
        col = X[:, j]
        if np.any(np.isinf(col)):
            i = int(np.flatnonzero(np.isinf(col))[0])
            raise InputError(f"data file {p}, row {i}, column {j}: {col[i]} (infinity is not allowed).")
        if kind == "categorical":
            vals = np.empty(col.shape[0], dtype=object)
            known = {float(c): c for c in cats}
            for i, v in enumerate(col):
                vals[i] = np.nan if np.isnan(v) else known.get(float(v), float(v))
            data[name] = vals
        else:
            data[name] = col.copy()
    return pd.DataFrame(data, columns=[c[0] for c in schema])


def _cell_message(p: Path, i: int, column: str, v: str, what: str) -> str:
    if "\x00" in v:
        return f"data file {p}, line {i + 2}, column '{column}': the cell holds a NUL byte."
    shown = v if len(v) <= 30 else v[:27] + "..."
    return f"data file {p}, line {i + 2}, column '{column}': '{shown}' {what}."


def _to_float(cells: np.ndarray, p: Path, columns, first: int = 0) -> np.ndarray:
    if cells.size == 0:
        return np.zeros(cells.shape, dtype=np.float64)
    try:
        return cells.astype(np.float64)
    except ValueError:
        pass
    # Find the first offending cell for the message (only on the error path).
    flat = cells.ravel()
    for k, v in enumerate(flat):
        try:
            float(v)
        except ValueError:
            i, j = divmod(k, cells.shape[1])
            i += first
            v = str(v)
            if not v.strip():
                raise InputError(f"data file {p}, line {i + 2}, column '{columns[j]}' is blank; this model "
                                 "takes numbers only (impute the blanks, or audit a pipeline whose own "
                                 "imputer fills them).") from None
            raise InputError(_cell_message(p, i, columns[j], v, "is not a number")) from None
    raise InputError(f"data file {p} holds cells that are not numbers.")


# --- NPY / NPZ ----------------------------------------------------------------------------------

def _numeric_2d(arr, p: Path, what: str) -> np.ndarray:
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{what} in {p} has dtype {arr.dtype}; invaudit needs numbers.")
    if arr.ndim != 2:
        raise InputError(f"{what} in {p} is {arr.ndim}-D; invaudit needs a 2-D array (rows x features).")
    return arr


def _read_npy(p: Path, labels_path) -> np.ndarray:
    try:
        # Memory-mapped: a large file is not copied into memory up front.
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise InputError(f"data file {p} is not a plain numeric NPY array ({exc}).") from None
    arr = _numeric_2d(arr, p, "the array")
    if arr.dtype != np.float64:
        arr = np.asarray(arr, dtype=np.float64)
    return arr


def _read_labels_npy(p: Path, n: int) -> np.ndarray:
    if not p.is_file():
        raise InputError(f"labels file {p} does not exist.")
    if p.suffix.lower() != ".npy":
        raise InputError(f"labels file {p} must be an .npy file.")
    try:
        y = np.load(p, allow_pickle=False)
    except ValueError as exc:
        raise InputError(f"labels file {p} is not a plain NPY array ({exc}).") from None
    y = np.ravel(y)
    if y.shape[0] != n:
        raise InputError(f"labels file {p} has {y.shape[0]} labels for {n} rows.")
    return y


def _read_npz(p: Path):
    import zipfile

    try:
        _check_npz_sizes(p)
        with np.load(p, allow_pickle=False) as z:
            if "X" not in z.files:
                raise InputError(f"data file {p} has no array 'X' (it has: {', '.join(z.files) or 'none'}).")
            X = _numeric_2d(z["X"], p, "array 'X'").astype(np.float64, copy=False)
            y = np.ravel(z["y"]) if "y" in z.files else None
            names = [str(n) for n in np.ravel(z["feature_names"])] if "feature_names" in z.files else None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"data file {p} is not a readable NPZ archive ({exc}).") from None
    if y is not None and y.shape[0] != X.shape[0]:
        raise InputError(f"data file {p} has {y.shape[0]} labels in 'y' for {X.shape[0]} rows in 'X'.")
    if names is not None and len(names) != X.shape[1]:
        raise InputError(f"data file {p} has {len(names)} names in 'feature_names' for {X.shape[1]} columns in 'X'.")
    return X, y, names


def _npz_by_name(X: np.ndarray, names: list, p: Path, feature_names, schema):
    """An NPZ's ``feature_names`` member names the columns of ``X``: matched to the model's names
    (reordered into the model's order) when it has them; a name it lacks is an error, never a
    silent positional read. ``(X, column_match)``."""
    if feature_names is None:  # a model without names reads columns by position
        return X, None
    model = [str(n) for n in feature_names] if schema is None else [str(c[0]) for c in schema]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"data file {p} repeats the name '{dup[0]}' in 'feature_names'.")
    missing = [n for n in model if n not in names]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(f"data file {p} lacks the model's feature column '{missing[0]}'{more} in 'feature_names'.")
    extra = [n for n in names if n not in model]
    if extra:
        raise InputError(f"data file {p} has a column '{extra[0]}' in 'feature_names' that the model does not read.")
    order = [names.index(n) for n in model]
    return (X if order == list(range(len(order))) else X[:, order]), "name"


def _check_npz_sizes(p: Path) -> None:
    """Refuse, from the headers alone, a member that declares more data than it holds: an array
    header can declare any shape, and loading would allocate it before finding out."""
    import zipfile

    with zipfile.ZipFile(p) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with zf.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if declared > info.file_size:
                raise InputError(f"data file {p}: array '{info.filename[:-4]}' declares shape {tuple(shape)} "
                                 f"({declared:,} bytes) but the archive holds {info.file_size:,} bytes for it.")


# --- checks ------------------------------------------------------------------------------------

def _release(X) -> None:
    """Give a memory-mapped array's pages back to the page cache (they count as the process's
    memory while mapped); the next read maps them in again."""
    mm = getattr(X, "_mmap", None)
    if mm is None:
        base = getattr(X, "base", None)
        mm = base if isinstance(base, mmap.mmap) else None
    if mm is not None and hasattr(mm, "madvise"):
        try:
            mm.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError, AttributeError):
            pass


def _check_finite_mapped(X: np.ndarray, p: Path, rows: Optional[str]) -> None:
    """NaN check of a memory-mapped NPY a block at a time (pages released behind it), on the rows
    ``--rows`` names when it is given."""
    n = X.shape[0]
    step = max(1, (1 << 22) // max(1, X.shape[1]))
    selected = None
    if _last_row(rows) is not None:
        selected = parse_rows(rows, n)
    if selected is not None:
        chunks = (np.sort(selected)[lo:lo + step] for lo in range(0, selected.size, step))
    else:
        chunks = (np.arange(lo, min(n, lo + step)) for lo in range(0, n, step))
    for idx in chunks:
        block = X[idx[0]:idx[-1] + 1] if idx[-1] - idx[0] == idx.size - 1 else X[idx]
        finite = np.isfinite(block)
        if not finite.all():
            i, j = np.argwhere(~finite)[0]
            _release(X)
            raise InputError(f"data file {p}, row {int(idx[i])}, column {j}: {block[i, j]} "
                             "(NaN or infinity is not allowed).")
        _release(X)


def _check_finite(X: np.ndarray, p: Path, columns) -> None:
    finite = np.isfinite(X)
    if finite.all():
        return
    i, j = np.argwhere(~finite)[0]
    where = f"column '{columns[j]}'" if columns else f"column {j}"
    line = f", line {i + 2}" if columns else ""
    raise InputError(f"data file {p}, row {i}{line}, {where}: {X[i, j]} (NaN or infinity is not allowed).")


def _match_labels(y_raw, classes, p: Path):
    """Labels as the model's own class values, and their indices in ``classes``."""
    y_raw = np.asarray(y_raw)
    if classes is None:
        return y_raw, None
    classes = np.asarray(classes)
    y = y_raw
    if classes.dtype.kind in "biuf":
        if y_raw.dtype.kind in "OUS":
            try:
                yf = np.array([float(str(v).strip()) for v in y_raw], dtype=np.float64)
            except ValueError:
                bad = next(v for v in y_raw if not _is_number(v))
                raise InputError(f"data file {p}: label '{bad}' is not a class of the model "
                                 f"(classes: {_show(classes)}).") from None
        else:
            yf = y_raw.astype(np.float64)
        if classes.dtype.kind in "biu":
            if not np.all(np.isfinite(yf)) or np.any(yf != np.round(yf)):
                bad = yf[~np.isfinite(yf) | (yf != np.round(yf))][0]
                raise InputError(f"data file {p}: label {bad} is not a class of the model (classes: {_show(classes)}).")
            y = yf.astype(classes.dtype)
        else:
            y = yf
    else:
        classes = np.array([str(c) for c in classes], dtype=object)
        names = set(classes.tolist())  # a class the model names with spaces (" >50K") is kept as it is
        y = np.array([v.decode() if isinstance(v, (bytes, np.bytes_)) else
                      (str(v) if str(v) in names else str(v).strip()) for v in y_raw], dtype=object)
    known = np.isin(y, classes)
    if not known.all():
        i = int(np.argmax(~known))
        bad = y[i].item() if isinstance(y[i], np.generic) else y[i]
        raise InputError(f"data file {p}, row {i}: label {bad!r} is not a class of the model "
                         f"(classes: {_show(classes)}).")
    order = np.argsort(classes, kind="stable")
    idx = order[np.searchsorted(classes[order], y)]
    # Report labels in the model's own dtype.
    return np.asarray(classes)[idx] if classes.dtype.kind == "O" else y, idx.astype(np.intp)


def _is_number(v) -> bool:
    try:
        float(str(v))
        return True
    except ValueError:
        return False


def _show(classes) -> str:
    vals = [str(c) for c in classes[:10]]
    return ", ".join(vals) + (", ..." if len(classes) > 10 else "")


# --- row and column selections ------------------------------------------------------------------

def parse_rows(spec: Optional[str], n: int, *, what: str = "--rows") -> np.ndarray:
    """``"0,3,7-9"`` -> ``array([0, 3, 7, 8, 9])``; ``None``/``"all"`` -> every row. A row past
    the end is refused before any range is expanded (``0-999999999`` on 100 rows would otherwise
    list a billion numbers to say so); the row named is the first one out of range, in order."""
    if spec is None or spec.strip().lower() in ("", "all"):
        return np.arange(n)
    parts: list[tuple[int, int]] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise InputError(f"{what} '{part}': the range ends before it starts.")
                parts.append((lo, hi))
            else:
                parts.append((int(part), int(part)))
        except ValueError:
            raise InputError(f"{what} '{spec}': '{part}' is not a row number or range like 7-9.") from None
    if not parts:
        raise InputError(f"{what} '{spec}' selects no rows.")
    for lo, hi in parts:
        if lo < 0 or hi >= n:
            raise InputError(f"{what}: row {lo if lo < 0 or lo >= n else n} is out of range "
                             f"(the data has {n} rows, 0-{n - 1}).")
    arr = np.concatenate([np.arange(lo, hi + 1, dtype=np.intp) for lo, hi in parts])
    _, first = np.unique(arr, return_index=True)
    return arr[np.sort(first)]


def parse_columns(spec: Optional[str], feature_names: Optional[Sequence[str]], n_features: int,
                  *, what: str) -> np.ndarray:
    """Feature names or indices (``"age,3,income"``) -> boolean mask ``(D,)``."""
    mask = np.zeros(n_features, dtype=bool)
    if spec is None or not spec.strip():
        return mask
    names = [str(n) for n in feature_names] if feature_names is not None else None
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if names is not None and part in names:
            mask[names.index(part)] = True
            continue
        try:
            j = int(part)
        except ValueError:
            known = f" (features: {', '.join(names[:6])}{', ...' if len(names) > 6 else ''})" if names else ""
            raise InputError(f"{what}: '{part}' is not a feature name or index{known}.") from None
        if not 0 <= j < n_features:
            raise InputError(f"{what}: feature index {j} is out of range (0-{n_features - 1}).")
        mask[j] = True
    return mask
