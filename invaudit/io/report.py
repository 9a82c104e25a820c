"""Report files: the JSON envelope shared by every command, and atomic writes.

An interrupted run leaves the old file or none, never half a file: text goes to a temporary file
in the target's folder (``.NAME.PID.XXXX.tmp``), is flushed to disk, then renamed over the
target. SIGINT and SIGTERM during the write remove the temporary; a temporary that a killed
process left behind (SIGKILL, power loss) is swept by the next write to the same target. A
symbolic link is written through to its target, and an existing report keeps its mode.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import orjson

from .. import __version__
from ..errors import InputError

# A temporary of the same target older than this, or whose writer is gone, is swept.
STALE_SECONDS = 3600.0


#: Envelope keys that come before ``results`` (the first line of ``--format jsonl``).
HEAD_KEYS = ("schema", "invaudit_version", "command", "model", "data", "params")

_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def envelope(command: str, *, model: Optional[dict], data: Optional[dict], params: dict,
             results, summary: dict, elapsed_s: float, extra: Optional[dict] = None,
             version: int = 1) -> dict:
    """The report every command emits (DESIGN.md, "JSON report").

    ``results`` is a list of dicts or a :class:`Columns` (kept as columns: it is encoded in bulk
    by :func:`encode`, and only the rows a table shows ever become dicts). Everything but
    ``results`` is made plain Python (:func:`jsonable`); list results are made plain one level
    deep (:func:`_plain_record`), leaving numpy vectors inside them for the encoder.
    """
    report = {
        "schema": f"invaudit.{command}/{int(version)}",
        "invaudit_version": __version__,
        "command": command,
        "model": jsonable(model),
        "data": jsonable(data),
        "params": jsonable(params),
        "results": results if isinstance(results, Columns) else [_plain_record(r) for r in results],
        "summary": jsonable(summary),
        "elapsed_s": round(float(elapsed_s), 6),
    }
    if extra:
        report.update(jsonable(extra))
    return report


def jsonable(obj: Any) -> Any:
    """Numpy scalars and arrays to plain Python; NaN and infinities to ``None`` (JSON has none)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "biu" or (obj.dtype.kind == "f" and np.isfinite(obj).all()):
            return obj.tolist()  # plain already: one C-level conversion, no walk per value
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Columns):
        return [jsonable(r) for r in obj]
    return obj


def _plain_scalar(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Path):
        return str(v)
    return v


def _plain_record(r: Any) -> Any:
    """A result record with plain scalars (what tables print), walked through nested dicts and
    lists of dicts but never through long numeric vectors: those stay as they are (numpy arrays
    or lists) and the encoder writes them in bulk, NaN as null."""
    if isinstance(r, dict):
        return {str(k): _plain_record(v) for k, v in r.items()}
    if isinstance(r, (list, tuple)) and r and isinstance(r[0], dict):
        return [_plain_record(v) for v in r]
    if isinstance(r, (list, tuple, np.ndarray)):
        return r
    return _plain_scalar(r)


def _default(obj: Any) -> Any:
    """What orjson does not write natively."""
    if isinstance(obj, np.ndarray):  # object dtype or not C-contiguous
        if obj.dtype.kind in "fiub":
            return np.ascontiguousarray(obj)
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, Columns):
        return list(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def to_json(value: Any, *, indent: bool = False) -> bytes:
    """One value as JSON bytes (orjson: numpy arrays in bulk, NaN and infinities as null)."""
    return orjson.dumps(value, default=_default, option=_OPTS | (orjson.OPT_INDENT_2 if indent else 0))


# --- results held as columns ---------------------------------------------------------------------

class Columns:
    """The results of a row command held as columns, one entry per row.

    Encoded in bulk (:meth:`lines`): numbers, booleans and whole vector columns go through
    orjson's numpy path in one call per chunk, repeated values (class labels, methods) are
    encoded once. Rows become Python dicts only when asked (:meth:`row`, :meth:`rows`), which is
    what a table does for the rows it shows. Field kinds:

    - ``num``: float array, non-finite values written as null;
    - ``int`` / ``bool``: integer or boolean array;
    - ``const``: one value for every row;
    - ``cat``: integer codes into a list of values (code -1: null);
    - ``vec``: an ``(n, D)`` float matrix, one JSON list per row, null where ``present`` is False;
    - ``obj``: a list of arbitrary JSON-ready values.

    A compact report (schema /2) changes how some fields are written, never their values as rows:
    :meth:`sparse` (a vector as ``{"index", "value"}`` where shorter), :meth:`leave_out` (a field
    recomputable from others), :meth:`encode_with` (any other encoding).
    """

    def __init__(self, n: int):
        self.n = int(n)
        self._fields: dict = {}
        self._optional: set = set()
        # name -> fn(lo, hi) -> list of encoded values (None: the field is left out of that row);
        # how a compact report (schema /2) writes a field, rows as dicts are not affected
        self._encoders: dict = {}

    def __len__(self) -> int:
        return self.n

    @property
    def names(self) -> list:
        return list(self._fields)

    def add(self, name: str, kind: str, data: Any, *, values=None, present=None,
            optional: bool = False) -> "Columns":
        """Add a field (see the class docstring for ``kind``). ``optional``: a row whose value
        would be null leaves the field out instead (the first field is never optional)."""
        if kind not in ("num", "int", "bool", "const", "cat", "vec", "obj", "raw"):
            raise ValueError(f"unknown column kind {kind!r}")
        if optional and not self._fields:
            raise ValueError("the first field cannot be optional")
        if kind in ("num", "int", "bool", "cat"):
            data = np.asarray(data)
            if data.shape != (self.n,):
                raise ValueError(f"column {name!r} has shape {data.shape} for {self.n} rows")
        elif kind == "vec":
            data = np.asarray(data, dtype=np.float64)
            if data.ndim != 2 or data.shape[0] != self.n:
                raise ValueError(f"vector column {name!r} has shape {data.shape} for {self.n} rows")
            present = np.ones(self.n, dtype=bool) if present is None else np.asarray(present, dtype=bool)
        elif kind in ("obj", "raw") and len(data) != self.n:
            raise ValueError(f"column {name!r} has {len(data)} entries for {self.n} rows")
        self._fields[name] = (kind, data, values, present)
        if optional:
            self._optional.add(name)
        else:
            self._optional.discard(name)
        return self

    def column(self, name: str) -> np.ndarray:
        """A numeric column as an array (for sorting and summaries)."""
        kind, data, _, _ = self._fields[name]
        if kind == "const":
            return np.full(self.n, data, dtype=object)
        return np.asarray(data)

    def values(self, name: str) -> list:
        """A field's values for every row, as the report writes them (decoded categories)."""
        return [self._value(name, i) for i in range(self.n)]

    def __contains__(self, name: str) -> bool:
        return name in self._fields

    # -- rows as dicts (tables) --------------------------------------------------------------------
    def _value(self, name: str, i: int) -> Any:
        kind, data, values, present = self._fields[name]
        if kind == "const":
            return data
        if kind == "num":
            return _plain_scalar(float(data[i]))
        if kind == "int":
            return int(data[i])
        if kind == "bool":
            return bool(data[i])
        if kind == "cat":
            k = int(data[i])
            return None if k < 0 else values[k]
        if kind == "vec":
            if not present[i]:
                return None
            row = data[i]
            if np.isfinite(row).all():  # one C-level conversion (a table asks for 200 x D values)
                return row.tolist()
            return [_plain_scalar(v) for v in row.tolist()]
        if kind == "raw":
            return orjson.loads(data[i])
        return data[i]

    def row(self, i: int, fields=None) -> dict:
        """Row ``i`` as a dict; ``fields``: only these (what a table reads: a row's long vectors
        are then never turned into Python lists)."""
        out = {}
        names = self._fields if fields is None else [k for k in self._fields if k in fields]
        for name in names:
            v = self._value(name, int(i))
            if v is None and name in self._optional:
                continue
            out[name] = v
        return out

    def rows(self, index, fields=None) -> list:
        return [self.row(i, fields) for i in index]

    def __iter__(self):
        for i in range(self.n):
            yield self.row(i)

    def __getitem__(self, i: int) -> dict:
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return self.row(i % self.n if self.n else i)

    # -- bulk encoding -----------------------------------------------------------------------------
    def _encoded(self, name: str, lo: int, hi: int) -> list:
        kind, data, values, present = self._fields[name]
        m = hi - lo
        if kind == "const":
            return [to_json(data)] * m
        if kind == "obj":
            part = data[lo:hi]
            # row IDs and other plain strings: one call for the chunk (split at commas, so only
            # when no string holds one: an encoded string then holds none either)
            if len(part) and all(type(v) is str for v in part) and "," not in "".join(part):
                return orjson.dumps(list(part))[1:-1].split(b",")
            return [to_json(v) for v in part]
        if kind == "raw":
            return list(data[lo:hi])
        if kind == "cat":
            lookup = np.array([to_json(v) for v in values] + [b"null"], dtype=object)
            codes = np.asarray(data[lo:hi], dtype=np.intp)
            return lookup[np.where(codes < 0, len(values), codes)].tolist()
        if kind == "vec":
            parts = _vector_rows(data[lo:hi])
            mask = present[lo:hi]
            if not mask.all():
                parts = [p if ok else b"null" for p, ok in zip(parts, mask.tolist())]
            return parts
        dtype = {"num": np.float64, "int": np.int64, "bool": np.bool_}[kind]
        return orjson.dumps(np.ascontiguousarray(data[lo:hi], dtype=dtype), option=_OPTS)[1:-1].split(b",")

    def encode_with(self, name: str, fn) -> "Columns":
        """Write field ``name`` with ``fn(lo, hi)`` -> one encoded JSON value (bytes) per row, or
        None where the row leaves the field out. Only the report's encoding changes: rows as
        dicts (tables) keep the field's own values. A field that is not in the columns yet is
        added as a report-only field (``None`` for rows as dicts)."""
        if name not in self._fields:
            if not self._fields:
                raise ValueError("the first field cannot be report-only")
            self._fields[name] = ("const", None, None, None)
            self._optional.add(name)
        elif self.names[0] == name:
            raise ValueError("the first field is always written as it is")
        self._encoders[name] = fn
        return self

    def encoder(self, name: str):
        """How field ``name`` is written now: ``fn(lo, hi)`` -> encoded values (None: left out),
        to build another encoding on top of it."""
        if name in self._encoders:
            return self._encoders[name]
        optional = name in self._optional
        return lambda lo, hi: [None if optional and v == b"null" else v for v in self._encoded(name, lo, hi)]

    def leave_out(self, name: str, rows=None) -> "Columns":
        """Leave field ``name`` out of the report on ``rows`` (a boolean mask; default all rows)
        and write it as before on the others."""
        if rows is None:
            return self.encode_with(name, lambda lo, hi: [None] * (hi - lo))
        mask = np.asarray(rows, dtype=bool)
        if mask.shape != (self.n,):
            raise ValueError(f"leave_out({name!r}) got a mask of shape {mask.shape} for {self.n} rows")
        before = self.encoder(name)

        def fn(lo, hi):
            left = mask[lo:hi]
            if left.all():  # nothing of this field is written here: not even encoded
                return [None] * (hi - lo)
            return [None if m else v for v, m in zip(before(lo, hi), left.tolist())]
        return self.encode_with(name, fn)

    def sparse(self, name: str, base=None) -> "Columns":
        """Write the vector field ``name`` as ``{"index": [...], "value": [...]}`` on rows where
        that is shorter than the plain list: the entries whose bits differ from ``base``'s row
        (an ``(n, D)`` array; default ``+0.0`` everywhere), so that the row is rebuilt bit for
        bit by writing ``value`` at ``index`` into the base row (:func:`sparse_decode`)."""
        kind, data, _, present = self._fields[name]
        if kind != "vec":
            raise ValueError(f"only a vector field can be sparse ({name!r} is {kind})")
        if base is not None:
            base = np.asarray(base, dtype=np.float64)
            if base.shape != data.shape:
                raise ValueError(f"base of {name!r} has shape {base.shape}, the field {data.shape}")

        def fn(lo, hi, name=name):
            dense = self._encoded(name, lo, hi)
            block = np.ascontiguousarray(data[lo:hi])
            ref = None if base is None else np.ascontiguousarray(base[lo:hi])
            return _sparse_rows(block, ref, present[lo:hi], dense)
        return self.encode_with(name, fn)

    def lines(self, chunk: int = 8192):
        """Yield lists of encoded rows (compact JSON objects, bytes), ``chunk`` rows at a time."""
        for enc in self.chunks(chunk):
            yield enc.lines()

    def chunks(self, chunk: Optional[int] = None):
        """Yield the rows encoded ``chunk`` rows at a time (default: about a million values per
        chunk) as :class:`EncodedRows`, which joins them into one text without a Python object
        per row."""
        names = list(self._fields)
        consts = []
        for j, k in enumerate(names):
            # an optional (or re-encoded) field carries its own comma and key (or nothing)
            own = k in self._optional or k in self._encoders
            consts.append(b"" if own else (b"" if j == 0 else b",") + orjson.dumps(k) + b":")
        if chunk is None:
            width = sum(int(d.shape[1]) for kind, d, _, _ in self._fields.values() if kind == "vec")
            chunk = max(1, min(8192, (1 << 20) // max(1, width)))
        chunk = max(1, int(chunk))
        for lo in range(0, self.n, chunk):
            hi = min(self.n, lo + chunk)
            values = []
            for k in names:
                prefix = b"," + orjson.dumps(k) + b":"
                if k in self._encoders:
                    enc = [b"" if v is None else prefix + v for v in self._encoders[k](lo, hi)]
                else:
                    enc = self._encoded(k, lo, hi)
                    if k in self._optional:
                        enc = [b"" if v == b"null" else prefix + v for v in enc]
                values.append(enc)
            yield EncodedRows(hi - lo, consts, values)


class EncodedRows:
    """Encoded rows of one chunk: per field a constant (its comma and key, or nothing for a field
    that writes its own) and the encoded values, one per row. :meth:`join` writes the rows as
    one text in a single ``bytes.join`` over the pieces, interleaved by slice assignment: the
    chunk's text is built once, not once as a bytes object per row and again joined (half the
    memory for a chunk of long rows, about the same time)."""

    __slots__ = ("n", "consts", "values")

    def __init__(self, n: int, consts: list, values: list):
        self.n, self.consts, self.values = int(n), consts, values

    def __len__(self) -> int:
        return self.n

    def join(self, lead: bytes, sep: bytes, end: bytes = b"") -> bytes:
        """``lead`` + the rows separated by ``sep`` + ``end``."""
        m, F = self.n, len(self.values)
        if m == 0:
            return lead + end
        if F == 0:
            return lead + sep.join([b"{}"] * m) + end
        S = 2 * F
        last = S * m
        flat = [b""] * (last + 1)
        head = b"{" + self.consts[0]
        flat[0:last:S] = [lead + head] + [b"}" + sep + head] * (m - 1)
        for f in range(F):
            flat[2 * f + 1:last:S] = self.values[f]
            if f + 1 < F and self.consts[f + 1]:
                flat[2 * f + 2:last:S] = [self.consts[f + 1]] * m
        flat[last] = b"}" + end
        return b"".join(flat)

    def lines(self) -> list:
        """The rows as a list of bytes, one compact JSON object each."""
        if not self.values:
            return [b"{}"] * self.n
        template = b"{" + b"".join(c.replace(b"%", b"%%") + b"%b" for c in self.consts) + b"}"
        return [template % t for t in zip(*self.values)]


#: From this many entries per row on, a matrix is encoded row by row: one orjson call per row
#: costs a few microseconds, the whole-matrix call then a replace and a split over all of its
#: text; measured (2 cores, loaded): row by row 1.4-2x faster from 50 entries on (2,000: 1.9x),
#: slower below ~32.
_ROWWISE_FROM = 48


def _vector_rows(block) -> list:
    """Each row of a float matrix as a JSON list (bytes), NaN and infinities as null."""
    block = np.ascontiguousarray(block, dtype=np.float64)
    m, D = block.shape
    if D == 0:
        return [b"[]"] * m
    if D >= _ROWWISE_FROM:
        dumps = orjson.dumps
        return [dumps(row, option=_OPTS) for row in block]
    # one C-level call, replace and split: each row keeps its own brackets (numbers never hold a
    # newline)
    return orjson.dumps(block, option=_OPTS)[1:-1].replace(b"],[", b"]\n[").split(b"\n")


def _bits(a: np.ndarray) -> np.ndarray:
    """The float64 bit patterns of ``a`` (so that -0.0 and +0.0, or two NaNs, are told apart)."""
    return np.ascontiguousarray(a, dtype=np.float64).view(np.uint64)


def _sparse_rows(block: np.ndarray, base, present: np.ndarray, dense: list) -> list:
    """Per row: ``dense[i]`` or ``{"index": [...], "value": [...]}`` of the entries whose bits
    differ from ``base`` (``+0.0`` when None), whichever is shorter. Indices and values of all
    rows are encoded by two orjson calls, then cut per row."""
    m, D = block.shape
    if m == 0 or D == 0:
        return list(dense)
    diff = _bits(block) != (np.uint64(0) if base is None else _bits(base))
    nnz = diff.sum(axis=1)
    # only a row that leaves some entry out can come out shorter
    try_rows = present & (nnz < D)
    if not try_rows.any():
        return list(dense)
    sub = diff & try_rows[:, None]
    ri, ci = np.nonzero(sub)
    counts = np.bincount(ri, minlength=m)
    ends = np.cumsum(counts)
    idx_tok = orjson.dumps(ci.astype(np.int64), option=_OPTS)[1:-1].split(b",") if ci.size else []
    val_tok = orjson.dumps(np.ascontiguousarray(block[ri, ci]), option=_OPTS)[1:-1].split(b",") if ci.size else []
    out = list(dense)
    for i in np.flatnonzero(try_rows).tolist():
        a, b = int(ends[i] - counts[i]), int(ends[i])
        enc = b'{"index":[' + b",".join(idx_tok[a:b]) + b'],"value":[' + b",".join(val_tok[a:b]) + b"]}"
        if len(enc) < len(out[i]):
            out[i] = enc
    return out


def sparse_decode(value, n_features: int, base=None):
    """A vector as a compact report (schema /2) writes it, as a float64 array of length
    ``n_features``: a list (``null`` entries: NaN), or ``{"index": [...], "value": [...]}``
    written into ``base`` (a copy; default zeros). ``None`` stays None."""
    if value is None:
        return None
    if isinstance(value, dict):
        out = np.zeros(n_features) if base is None else np.array(base, dtype=np.float64, copy=True)
        idx = np.asarray(value["index"], dtype=np.intp)
        vals = np.array([np.nan if v is None else v for v in value["value"]], dtype=np.float64)
        out[idx] = vals
        return out
    return np.array([np.nan if v is None else v for v in value], dtype=np.float64)


class _ListRows:
    """Rows already encoded one by one (results held as a list of dicts), joined like
    :class:`EncodedRows`."""

    __slots__ = ("rows",)

    def __init__(self, rows: list):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def join(self, lead: bytes, sep: bytes, end: bytes = b"") -> bytes:
        return lead + sep.join(self.rows) + end

    def lines(self) -> list:
        return list(self.rows)


def smallest_first(key: np.ndarray, k: Optional[int] = None) -> np.ndarray:
    """Indices of the ``k`` smallest entries of ``key`` (all when None), smallest first and equal
    keys in index order: ``np.argsort(key, kind="stable")[:k]``, without sorting every row when
    ``k`` is small (a table's rows, a summary's most fragile of a million). ``key`` has no NaN."""
    key = np.asarray(key)
    n = key.shape[0]
    k = n if k is None else max(0, min(int(k), n))
    if k == n:
        return np.argsort(key, kind="stable")
    if k == 0:
        return np.zeros(0, dtype=np.intp)
    cut = np.partition(key, k - 1)[k - 1]  # the k-th smallest value
    below = np.flatnonzero(key < cut)
    ties = np.flatnonzero(key == cut)[: k - below.size]  # at the cut: the first rows, as a stable sort
    pick = np.concatenate([below, ties])
    return pick[np.lexsort((pick, key[pick]))]


def result_chunks(results) -> Iterator:
    """The results encoded in chunks (:class:`EncodedRows` or alike: ``len``, ``join``,
    ``lines``)."""
    if isinstance(results, Columns):
        yield from results.chunks()
    else:
        for lo in range(0, len(results), 4096):
            yield _ListRows([to_json(r) for r in results[lo:lo + 4096]])


def _member(key: str, value: Any) -> bytes:
    """``  "key": value`` at the envelope's indentation (nested lines two spaces deeper)."""
    return b"  " + orjson.dumps(key) + b": " + to_json(value, indent=True).replace(b"\n", b"\n  ")


def encode(report: dict) -> Iterator[bytes]:
    """The report as JSON, in pieces: the envelope indented, one compact line per result (a
    vector stays on its row's line), so a million rows are written without ever holding the
    whole text."""
    if "results" not in report:  # not an envelope: one indented value
        yield to_json(report, indent=True) + b"\n"
        return
    yield json_head(report)
    any_row = False
    for enc in result_chunks(report["results"]):
        if len(enc):
            yield json_chunk(enc, first=not any_row)
            any_row = True
    yield json_tail(report, any_row=any_row)


def json_head(report: dict) -> bytes:
    """``{`` and every envelope member before ``results``, then ``"results": [``."""
    members = [_member(k, report[k]) for k in HEAD_KEYS if k in report]
    return b"{\n" + b",\n".join(members + [b'  "results": [']) 


def json_rows(lines: list, *, first: bool) -> bytes:
    """Encoded result rows inside ``results`` (``first``: no comma before them)."""
    return (b"\n    " if first else b",\n    ") + b",\n    ".join(lines)


def json_chunk(enc, *, first: bool) -> bytes:
    """A chunk of encoded rows (:meth:`Columns.chunks`) inside ``results``, as :func:`json_rows`."""
    return enc.join(b"\n    " if first else b",\n    ", b",\n    ")


def jsonl_chunk(enc) -> bytes:
    """A chunk of encoded rows as ``--format jsonl`` lines."""
    return enc.join(b"", b"\n", b"\n")


def json_tail(report: dict, *, any_row: bool) -> bytes:
    """``]`` and the members after ``results`` (summary, elapsed_s, extras), then ``}``."""
    rest = [_member(k, v) for k, v in report.items() if k not in HEAD_KEYS and k != "results"]
    return (b"\n  ]" if any_row else b"]") + b"".join(b",\n" + m for m in rest) + b"\n}\n"


def encode_jsonl(report: dict) -> Iterator[bytes]:
    """``--format jsonl``: the envelope (without results and summary) on the first line, one
    result per line, then ``{"summary": ..., "elapsed_s": ...}`` (and any extra top-level
    fields) on the last line."""
    yield jsonl_head(report)
    for enc in result_chunks(report["results"]):
        if len(enc):
            yield jsonl_chunk(enc)
    yield jsonl_tail(report)


def jsonl_head(report: dict) -> bytes:
    return to_json({k: report[k] for k in HEAD_KEYS if k in report}) + b"\n"


def jsonl_tail(report: dict) -> bytes:
    return to_json({k: v for k, v in report.items() if k not in HEAD_KEYS and k != "results"}) + b"\n"


def dumps(report: dict) -> str:
    """The whole report as JSON text (see :func:`encode`)."""
    return b"".join(encode(report)).decode("utf-8")


def check_writable(path, *, option: str = "--json") -> Path:
    """Refuse (InputError) a report path that :func:`write_atomic` could not write.

    Called before any work starts, so an unwritable target costs nothing: the path must not be a
    folder, and its folder (after following a symbolic link) must exist, or be creatable inside
    the nearest existing folder, and accept a new file (probed by creating and removing one,
    which also holds for root and for read-only mounts).
    """
    target = _resolved(Path(path))
    if target.is_dir():
        raise InputError(f"{option} {path}: this is a folder; give a file path.")
    folder = target.parent
    probe_in = folder
    while not probe_in.exists():
        if probe_in.parent == probe_in:
            break
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise InputError(f"{option} {path}: {probe_in} is not a folder, so the report cannot be "
                         "written there.")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.probe.", suffix=".tmp", dir=probe_in)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"{option} {path}: the folder {probe_in} is not writable "
                         f"({exc.strerror or exc}).") from None
    return target


def _resolved(target: Path) -> Path:
    # a symbolic link is written through: the link stays, its target gets the new text
    if target.is_symlink():
        return Path(os.path.realpath(target))
    return target


def _umask() -> int:
    try:  # Linux: read it without changing it
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_UMASK_LOCK = threading.Lock()


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def sweep_stale_temporaries(target, *, max_age: float = STALE_SECONDS) -> list:
    """Remove ``.NAME.*.tmp`` files next to ``target`` whose writer died or that are stale.

    A name carrying a pid (``.NAME.PID.XXXX.tmp``, what :func:`write_atomic` writes) is removed
    when that process is gone; any matching temporary older than ``max_age`` seconds is removed.
    Returns the paths removed.
    """
    target = Path(target)
    folder = target.parent if str(target.parent) else Path(".")
    pattern = re.compile(r"^\." + re.escape(target.name) + r"\.(?:(\d+)\.)?[^/]*\.tmp$")
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if not m or ".probe." in entry.name:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                continue
            pid = int(m.group(1)) if m.group(1) else None
            dead = pid is not None and pid != os.getpid() and not _pid_alive(pid)
            if dead or now - st.st_mtime > max_age:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except (OSError, ValueError):
            continue
    return removed


class _Interrupted(BaseException):
    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _signals_raise():
    """While writing: SIGTERM (and SIGINT) raise, so the temporary is removed on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum, frame):
        raise _Interrupted(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):
            pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def write_atomic(path, text) -> None:
    """Write ``text`` (str, bytes, or an iterable of bytes pieces) to ``path`` so that readers see
    the old file or the whole new one.

    The temporary is removed if the write fails or SIGINT/SIGTERM arrives (the signal is then
    delivered as it would have been); stale temporaries of the same target are swept first. A
    symbolic link is written through to its target; an existing file keeps its mode, a new one
    gets the umask's default (not the 0600 of a temporary file).
    """
    with AtomicFile(path) as fh:
        if isinstance(text, str):
            fh.write(text.encode("utf-8"))
        elif isinstance(text, (bytes, bytearray, memoryview)):
            fh.write(text)
        else:
            for piece in text:
                fh.write(piece)


class AtomicFile:
    """A file written piece by piece that appears at ``path`` only when complete.

    ``with AtomicFile(path) as fh: fh.write(b"...")``: the pieces go to a temporary next to the
    target (``.NAME.PID.XXXX.tmp``); leaving the block normally flushes it to disk and renames it
    over the target; an exception (or SIGINT/SIGTERM, which raise while the block runs) removes
    it, and the signal is then delivered as it would have been. A streamed report thus never
    exists half-written under its own name.
    """

    def __init__(self, path):
        self.target = _resolved(Path(path))
        self._fh = None
        self._tmp = None
        self._signals = None

    def __enter__(self) -> "AtomicFile":
        target = self.target
        folder = target.parent if str(target.parent) else Path(".")
        folder.mkdir(parents=True, exist_ok=True)
        sweep_stale_temporaries(target)
        try:
            mode = stat.S_IMODE(os.stat(target).st_mode)
        except OSError:
            mode = 0o666 & ~_umask()
        self._signals = _signals_raise()
        self._signals.__enter__()
        try:
            fd, self._tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=folder)
            self._fh = os.fdopen(fd, "wb")
            os.fchmod(self._fh.fileno(), mode)
        except BaseException as exc:
            self._cleanup()
            self._exit_signals(exc)
            raise
        return self

    def write(self, data) -> None:
        self._fh.write(data)

    def seek(self, offset: int) -> None:
        self._fh.flush()
        self._fh.seek(offset)

    def tell(self) -> int:
        return self._fh.tell()

    def _cleanup(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None
        if self._tmp is not None:
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass
            self._tmp = None

    def _exit_signals(self, exc) -> None:
        sig, self._signals = self._signals, None
        if sig is not None:
            sig.__exit__(None, None, None)
        if isinstance(exc, _Interrupted):
            # deliver the signal as if nothing had caught it (default: terminate; SIGINT raises
            # KeyboardInterrupt through Python's own handler)
            if exc.signum == signal.SIGINT:
                raise KeyboardInterrupt from None
            os.kill(os.getpid(), exc.signum)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            try:
                self._fh.flush()
                os.fsync(self._fh.fileno())
                self._fh.close()
                self._fh = None
                os.replace(self._tmp, self.target)
                self._tmp = None
            except BaseException as err:
                self._cleanup()
                self._exit_signals(err)
                raise
            self._exit_signals(None)
            return False
        self._cleanup()
        self._exit_signals(exc)
        return False


# --- reading a compact report (schema /2) back --------------------------------------------------

def _listed(a) -> list:
    """A float vector as /1 writes it: floats, NaN as None."""
    return [None if v != v else v for v in np.asarray(a, dtype=np.float64).tolist()]


def expand_report(report: dict, X=None) -> dict:
    """A compact report (``invaudit.counterfactual/2`` or ``invaudit.margin/2``) as the /1
    report of the same run: every vector a plain list, bit for bit the floats /1 writes.

    ``X``: the data rows the run read, ``(n_rows, D)`` in the model's column order (row ``r`` of
    a result is ``X[r]``); needed for a counterfactual report of data rows (its sparse
    ``counterfactual`` entries are changes to the row, and ``delta`` is ``counterfactual - x``).
    A /1 report is returned as it is.
    """
    schema = str(report.get("schema", ""))
    command, _, version = schema.rpartition("/")
    if version == "1":
        return report
    if version != "2" or command not in ("invaudit.counterfactual", "invaudit.margin"):
        raise ValueError(f"cannot expand a report of schema {schema!r}")
    out = {k: v for k, v in report.items() if k != "gradients"}
    out["schema"] = command + "/1"
    D = int((report.get("model") or {}).get("n_features") or 0)
    if command == "invaudit.margin":
        out["results"] = [dict(r, perturbation=_expanded_vec(r.get("perturbation"), D)) for r in report["results"]]
        return out
    names = (report.get("model") or {}).get("feature_names")
    gradients = [np.asarray(g, dtype=np.float64) for g in report.get("gradients") or []]
    X = None if X is None else np.asarray(X, dtype=np.float64)
    results = []
    for r in report["results"]:
        r = dict(r)
        cf = r.get("counterfactual")
        needs_x = isinstance(cf, dict) or ("delta" not in r and cf is not None) or "changed_features" not in r
        if needs_x and X is None and cf is not None:
            raise ValueError("this compact report lists changes to the data rows: pass the rows it read (X)")
        x = X[int(r["row"])] if (needs_x and cf is not None) else None
        if isinstance(cf, dict):
            cf_vec = sparse_decode(cf, D, base=x)
        elif cf is None or not all(isinstance(v, (float, int)) or v is None for v in cf):
            cf_vec = None  # no point, or a typed row's values (kept as they are)
        else:
            cf_vec = sparse_decode(cf, D)
        if cf_vec is not None:
            r["counterfactual"] = _listed(cf_vec)
        if "delta" in r:
            d = r["delta"]
            d_vec = sparse_decode(d, D) if isinstance(d, dict) else (None if d is None else np.asarray(
                [np.nan if v is None else v for v in d], dtype=np.float64))
            if isinstance(d, dict):
                r["delta"] = _listed(d_vec)
        else:
            d_vec = None if cf_vec is None else cf_vec - x
            r["delta"] = None if d_vec is None else _listed(d_vec)
        fi = r.get("feature_importance", ...)
        if fi is not ...:
            if isinstance(fi, dict) and "gradient" in fi:
                r["feature_importance"] = _listed(gradients[int(fi["gradient"])] * d_vec)
            elif fi is None:
                r["feature_importance"] = [None] * D
            elif isinstance(fi, dict):
                r["feature_importance"] = _listed(sparse_decode(fi, D))
        if "changed_features" not in r:
            idx = [] if cf_vec is None else np.flatnonzero(cf_vec != x).tolist()
            r["changed_features"] = idx if names is None else [str(names[j]) for j in idx]
        r.pop("n_changed", None)
        results.append(r)
    out["results"] = results
    return out


def _expanded_vec(value, D: int):
    if isinstance(value, dict):
        return _listed(sparse_decode(value, D))
    return value
