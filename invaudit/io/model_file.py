"""Model files: load a pickled scikit-learn classifier without letting the file run code.

DESIGN.md, "Model loading is safe by default". A pickle is a program: every global it names is
imported and may be called. So before anything is unpickled, the whole stream is *read* (never
executed) with :func:`pickletools.genops`, and every (module, name) it would ask for is compared
with an exact allowlist (:mod:`invaudit.io._allowlist`). A file naming anything else is refused
with :class:`~invaudit.errors.RefusedModelError`, listing every such name. The stream is then
loaded by an unpickler whose ``find_class`` enforces the same list again (defence in depth: if the
scan and the load ever disagree about the stream, the load still cannot reach a global outside
the list).

Two file layouts are read, compressed or not (zlib, gzip, bz2, lzma, xz; detected by magic
bytes, as joblib does):

- a plain pickle (``pickle.dump``), loaded by a restricted :class:`pickle.Unpickler`;
- a ``joblib.dump`` file: a pickle stream in which each numpy array is a
  ``joblib.numpy_pickle.NumpyArrayWrapper`` followed by the array's raw bytes (or, for an
  object-dtype array, by a nested pickle stream). joblib's own reader is not used for the bytes:
  a restricted subclass of :class:`joblib.numpy_pickle.NumpyUnpickler` reads them itself, and a
  nested object-dtype stream goes through the same restricted ``find_class``, so its elements
  are checked like everything else.

``trust=True`` skips all of this (``joblib.load``) for a file the user vouches for.
"""

from __future__ import annotations

import collections
import copyreg
import functools
import hashlib
import inspect
import io
import json
import lzma
import math
import os
import pickle
import pickletools
import re
import stat
import sys
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, RefusedModelError
from ._allowlist import ALLOWED, BOUND_METHODS, MODULE_ALIASES, NEVER_CALLED, STATE_ONLY

MODEL_SUFFIXES = (".joblib", ".pkl", ".pickle")

_WRAPPER = ("joblib.numpy_pickle", "NumpyArrayWrapper")
_GETATTR = ("builtins", "getattr")
_DTYPE = ("numpy", "dtype")
_CHUNK = 1 << 20

# What a model file may materialise (issue 14): a compressed stream may expand to at most
# _RATIO times the file's size (but always to _FLOOR), and no file, compressed or not, to more than
# the absolute cap, which INVAUDIT_MAX_MODEL_BYTES (or ``load_model(max_bytes=...)``) raises for a
# real giant model.
MAX_MODEL_BYTES_ENV = "INVAUDIT_MAX_MODEL_BYTES"
DEFAULT_MAX_MODEL_BYTES = 4 << 30
_RATIO = 200
_FLOOR = 128 << 20
# Shared structure (memo references) may not expand beyond these many nodes where something
# would walk it in full: a hashed key or set member, a dtype description, the whole object.
_MAX_KEY_NODES = 10_000
_MAX_GRAPH_NODES = 20_000_000


_UNSET = object()


class LoadedModel:
    """A fitted classifier read from a model file.

    Attributes
    ----------
    estimator : object
        The unpickled scikit-learn classifier (or Pipeline ending in one). After a light load
        (``load_model(light=True)``) it is unpickled, with every check of the full load, the
        first time it is read.
    path : str
        The file, as the user named it.
    sha256 : str
        Hex digest of the file's bytes (the bytes that were loaded).
    trusted : bool
        True when loaded with ``trust=True`` (no allowlist).
    warnings : tuple of str
        One-line warnings for the user: ``--trust`` was used, the scikit-learn version differs.
    light : invaudit.io._light.LightObject or None
        The fitted state read without scikit-learn (light load), else None.
    """

    __slots__ = ("_estimator", "_load", "path", "sha256", "trusted", "warnings", "light")

    def __init__(self, estimator=_UNSET, path: str = "", sha256: str = "", trusted: bool = False,
                 warnings: tuple = (), *, light=None, load=None):
        if estimator is _UNSET and load is None:
            raise TypeError("LoadedModel needs an estimator or a way to load it")
        fields = dict(_estimator=estimator, _load=load, path=path, sha256=sha256, trusted=trusted,
                      warnings=tuple(warnings), light=light)
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):  # frozen, as it always was
        raise AttributeError(f"LoadedModel is read-only (cannot set {name})")

    def __reduce__(self):
        # to a worker process (Dask, loky): the loaded estimator itself (the lazy loader is a
        # closure and the slots are read-only, so the default protocol cannot rebuild it)
        return (_rebuilt_loaded_model,
                (self.estimator, self.path, self.sha256, self.trusted, self.warnings, self.light))

    @property
    def estimator(self):
        if self._estimator is _UNSET:
            object.__setattr__(self, "_estimator", self._load())
            object.__setattr__(self, "_load", None)
        return self._estimator

    @property
    def is_loaded(self) -> bool:
        """Whether the real estimator has been unpickled (always, unless light)."""
        return self._estimator is not _UNSET


def _rebuilt_loaded_model(estimator, path, sha256, trusted, warnings, light):
    return LoadedModel(estimator, path, sha256, trusted, warnings, light=light)


def file_sha256(path) -> str:
    """Hex SHA-256 digest of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                h.update(chunk)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    return h.hexdigest()


def load_model(path, *, trust: bool = False, sha256: str | None = None,
               expect: str = "classifier", max_bytes: int | None = None,
               light: bool = False) -> LoadedModel:
    """Load a pickled fitted classifier, refusing any file that names a global off the allowlist.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.joblib``, ``.pkl`` or ``.pickle`` file: a plain pickle or a ``joblib.dump`` file,
        compressed or not.
    trust : bool, default False
        Load with ``joblib.load`` and no restriction. A pickle can run arbitrary code; only for
        files the user vouches for. Adds a warning line.
    sha256 : str, optional
        Expected hex digest of the file; a different digest is refused before anything is read
        as a pickle.
    expect : "classifier" or "transformer"
        What the file must hold: a fitted classifier (the default), or a fitted transformer with
        ``transform`` and ``inverse_transform`` (``--manifold PATH``).
    max_bytes : int, optional
        The most bytes the file may hold or expand to once decompressed; default: the
        ``INVAUDIT_MAX_MODEL_BYTES`` environment variable (e.g. ``8G``), else 4 GiB. A compressed
        file may also expand to at most 200 times its own size (at least 128 MiB).
    light : bool, default False
        Try the light load first (:mod:`invaudit.io._light`: the fitted state of a linear model
        or affine pipeline, read without importing scikit-learn). When it applies,
        ``LoadedModel.light`` holds that state and ``LoadedModel.estimator`` is unpickled (full
        restricted load and checks) only when first read; otherwise the full load, unchanged.

    Returns
    -------
    LoadedModel

    Raises
    ------
    RefusedModelError
        The file names globals outside the allowlist (all that could be found are listed);
        nothing in it was run.
    InputError
        Wrong suffix, missing or unreadable file, digest mismatch, truncated or corrupt stream,
        or the object is not a fitted classifier.
    """
    shown = str(path)
    p = Path(path)
    if p.suffix.lower() not in MODEL_SUFFIXES:
        raise InputError(f"{shown} is not a model file: expected a .joblib, .pkl or .pickle file")
    expected = _expected_digest(sha256)
    limit = max_model_bytes(max_bytes)
    data = _read_file(p, shown, limit)
    digest = hashlib.sha256(data).hexdigest()
    if expected is not None and digest != expected:
        raise InputError(f"{shown} has sha256 {digest}, expected {expected}")

    if light and not trust and expect == "classifier":
        root, raw = _try_light(data, shown, limit)
        if root is not None:
            def full_load():
                return _full_load(raw, shown, limit, trust=False, expect=expect)[0]

            return LoadedModel(path=shown, sha256=digest, trusted=False, warnings=(), light=root,
                               load=full_load)
    estimator, notes = _full_load(data, shown, limit, trust=trust, expect=expect)
    return LoadedModel(estimator=estimator, path=shown, sha256=digest, trusted=bool(trust),
                       warnings=tuple(notes))


def _try_light(data: bytes, shown: str, limit: int):
    """``(root LightObject, the file's bytes)`` when the light load applies, else ``(None, None)``.

    Anything unexpected (compression, a refused or corrupt stream, a class it does not model)
    returns ``(None, None)``: the full load then reads the file and says what it always says.
    """
    from ._light import light_eligible, light_load

    if _detect_compressor(data) == "lz4":
        return None, None
    try:
        stream = _decompress(data, shown, limit)
        scan = _scan(stream)
    except (InputError, _Corrupt):
        return None, None
    if scan.pseudo or not light_eligible(scan.requested) \
            or any(pair not in ALLOWED for pair in scan.requested):
        return None, None
    root = light_load(stream, shown, len(stream))
    return (root, data) if root is not None else (None, None)


def _full_load(data: bytes, shown: str, limit: int, *, trust: bool, expect: str):
    """The real estimator and the user's warning lines: the restricted (or trusted) load and every
    check after it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimator = (_load_trusted(data, shown) if trust
                     else _load_restricted(data, shown, limit))
    notes = []
    if trust:
        notes.append(f"loaded {shown} without restriction (--trust): a pickle can run code")
    lines, versions = _summarise_warnings(caught, shown)
    notes.extend(lines)
    if expect == "transformer":
        if not (hasattr(estimator, "transform") and hasattr(estimator, "inverse_transform")):
            raise InputError(f"{shown} holds a {type(estimator).__name__}, not a fitted transformer "
                             "with transform and inverse_transform")
    else:
        _check_fitted_classifier(estimator, shown, versions)
    _check_fitted_state(estimator, shown)
    return estimator, notes


# --------------------------------------------------------------------------------------------
# reading bytes


def _expected_digest(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    text = str(sha256).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise InputError(f"--sha256 must be 64 hexadecimal digits, got {sha256!r}")
    return text


def max_model_bytes(override: int | None = None) -> int:
    """The absolute cap on what a model file may hold or expand to (bytes)."""
    if override is not None:
        return int(override)
    raw = os.environ.get(MAX_MODEL_BYTES_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_MODEL_BYTES
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]i?b?)?", raw.lower())
    if not m:
        raise InputError(f"{MAX_MODEL_BYTES_ENV} must be a number of bytes such as 8G, got {raw!r}")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[(m.group(2) or "")[:1]]
    return int(float(m.group(1)) * scale)


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.3g} {unit}"
    return f"{n} bytes"


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))


def open_regular_file(path, *, what: str = "file", shown: str | None = None):
    """Open ``path`` for binary reading; refuse (InputError) anything but a regular file.

    A FIFO, socket or device would block or never end: it is opened without blocking and refused
    by what ``fstat`` says about the opened descriptor (no race between a check and the open).
    Data files can use the same function.
    """
    shown = str(path) if shown is None else shown
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise InputError(f"{what} {shown} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{what} {shown} is a directory, not a file") from None
    except OSError as exc:
        raise InputError(f"cannot read {what} {shown}: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((label for test, label in _KINDS if test(mode)), "not a regular file")
            raise InputError(f"{what} {shown} is {kind}, not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_file(p: Path, shown: str, limit: int = DEFAULT_MAX_MODEL_BYTES) -> bytes:
    # Read once: the digest, the scan and the load all see the same bytes.
    with open_regular_file(p, what="model file", shown=shown) as fh:
        try:
            size = os.fstat(fh.fileno()).st_size
            if size > limit:
                raise InputError(_too_big(shown, f"holds {_size(size)}", limit))
            chunks, total = [], 0
            while total <= limit:  # in chunks: read(limit) would reserve the whole limit
                chunk = fh.read(min(max(size - total, 0) + 1, _CHUNK * 16))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
            data = b"".join(chunks)
        except OSError as exc:
            raise InputError(f"cannot read model file {shown}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise InputError(_too_big(shown, f"holds more than {_size(limit)}", limit))
    return data


def _too_big(shown: str, what: str, limit: int) -> str:
    return (f"{shown} {what}, over the {_size(limit)} limit on model files; it was refused "
            f"(set {MAX_MODEL_BYTES_ENV}, e.g. to 16G, for a model you know is that large)")


# joblib's compressors by magic prefix, in joblib's order of detection (``'compat'``, then
# joblib.compressor._COMPRESSORS): joblib's own table is not imported (0.3 s of start-up);
# tests/io/test_light_load.py checks that this one agrees with it.
_COMPAT_PREFIX = b"ZF"
_COMPRESSOR_PREFIXES = (("zlib", b"x"), ("gzip", b"\x1f\x8b"), ("bz2", b"BZ"), ("lzma", b"]\x00"),
                        ("xz", b"\xfd7zXZ"), ("lz4", b'\x04"M\x18'))


def _detect_compressor(data: bytes) -> str:
    """joblib's ``_detect_compressor`` on the file's first bytes: a compressor's name,
    ``'compat'`` (joblib < 0.10) or ``'not-compressed'``."""
    if data.startswith(_COMPAT_PREFIX):
        return "compat"
    for name, prefix in _COMPRESSOR_PREFIXES:
        if data.startswith(prefix):
            return name
    return "not-compressed"


def _decompress(data: bytes, shown: str, limit: int = DEFAULT_MAX_MODEL_BYTES) -> bytes:
    """The pickle stream inside ``data``: joblib's compressors are detected by magic bytes.

    Decompressed as a stream, stopping at a ceiling: ``_RATIO`` times the file's size (at least
    ``_FLOOR``) and never more than ``limit``, so a decompression bomb is refused after reading
    at most the ceiling.
    """
    kind = _detect_compressor(data)
    if kind == "not-compressed":
        return data
    if kind == "compat":
        raise InputError(f"{shown} was written by joblib older than 0.10, a format invaudit "
                         "does not read; save the model again with a current joblib")
    if kind == "lz4":
        import importlib.util

        if importlib.util.find_spec("lz4") is None:
            raise InputError(f"{shown} is lz4-compressed, and reading it needs the lz4 package, "
                             "which is not installed (pip install lz4)")
    by_ratio = max(_FLOOR, _RATIO * len(data))
    ceiling = min(limit, by_ratio)
    chunks, total = [], 0  # a list, not a growing bytearray: no reallocation doubles the peak
    try:
        for chunk in _decompressed_chunks(kind, data):
            chunks.append(chunk)
            total += len(chunk)
            if total > ceiling:
                chunks.clear()
                why = (f"the {_size(limit)} limit on model files" if ceiling < by_ratio
                       else f"{_RATIO} times its {_size(len(data))}, at least {_size(_FLOOR)}")
                raise InputError(
                    f"{shown} is {kind}-compressed and expands to more than {_size(ceiling)} "
                    f"({why}); it was refused as a possible decompression bomb (set "
                    f"{MAX_MODEL_BYTES_ENV} to a larger size for a model you know is that large)")
    except InputError:
        raise
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError, MemoryError) as exc:
        raise InputError(f"{shown} is {kind}-compressed but cannot be decompressed "
                         f"({_one_line(exc) or type(exc).__name__})") from None
    return b"".join(chunks)


def _decompressed_chunks(kind: str, data: bytes):
    """Yield the decompressed stream in pieces of at most 4 MiB, whatever the ratio.

    The standard library's readers bound each step's output (joblib's own reader does not: a
    multi-member gzip file made it allocate tens of GB before returning its first read).
    """
    step = _CHUNK * 4
    if kind == "zlib":  # joblib.dump(compress="zlib"): one zlib stream
        d = zlib.decompressobj()
        pending = data
        while True:
            out = d.decompress(pending, step)
            pending = d.unconsumed_tail
            if out:
                yield out
            elif d.eof or not pending:
                break
        if not d.eof:
            raise EOFError("the compressed stream ends early")
        return
    import bz2
    import gzip

    if kind == "gzip":
        reader = gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb")
    elif kind == "bz2":
        reader = bz2.BZ2File(io.BytesIO(data))
    elif kind in ("xz", "lzma"):
        reader = lzma.LZMAFile(io.BytesIO(data))
    elif kind == "lz4":
        import lz4.frame

        reader = lz4.frame.LZ4FrameFile(io.BytesIO(data), mode="rb")
    else:
        raise ValueError(f"unknown compression {kind}")
    with reader:
        while True:
            out = reader.read(step)
            if not out:
                break
            yield out


# --------------------------------------------------------------------------------------------
# the scan: list every global the stream asks for, executing nothing


class _Corrupt(Exception):
    """The stream is not a well-formed pickle (reason in args[0])."""


class _Refused(_Corrupt):
    """The stream is well formed but asks for something hostile (reason in args[0])."""


class _Global:
    __slots__ = ("pair",)

    def __init__(self, pair):
        self.pair = pair


class _Call:
    """A symbolic object: ``func(*args)``, later given ``state`` by BUILD."""

    __slots__ = ("func", "args", "state")

    def __init__(self, func, args):
        self.func, self.args, self.state = func, args, None

    def pair(self):
        if not isinstance(self.func, _Global):
            return None
        # protocols 0-1 build plain objects as copy_reg._reconstructor(cls, object, None)
        if self.func.pair in _COPYREG and isinstance(self.args, tuple) and self.args \
                and isinstance(self.args[0], _Global):
            return self.args[0].pair
        return self.func.pair


class _Opaque:
    """A value the scan does not model (a buffer, an unhashable key, ...)."""


_MARK = object()

_CONSTANTS = frozenset({
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "STRING", "BINSTRING",
    "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8", "UNICODE",
    "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "FLOAT", "BINFLOAT",
})
_LITERALS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_IGNORED = frozenset({"PROTO", "FRAME", "STOP"})


@dataclass
class _ScanResult:
    requested: list  # (module, name) pairs in stream order
    pseudo: list  # refusals that are not plain globals (getattr(...), persistent ids)
    has_wrapper: bool


def _scan(stream: bytes) -> _ScanResult:
    """Walk the opcodes of ``stream`` symbolically and collect the globals it requests.

    Nothing is imported or called, with one exception: a joblib array's ``numpy.dtype`` is built
    from its constant arguments, to know how many raw bytes follow the wrapper and skip them.

    Raises ``_Corrupt`` (carrying what was found so far) when the stream is malformed.
    """
    result = _ScanResult(requested=[], pseudo=[], has_wrapper=False)
    fh = io.BytesIO(stream)
    try:
        _scan_stream(fh, len(stream), result, wrappers=True)
    except _Corrupt as exc:
        exc.result = result
        raise
    except (ValueError, IndexError, KeyError, TypeError, EOFError, MemoryError,
            RecursionError, OverflowError) as exc:
        err = _Corrupt(_one_line(exc) or type(exc).__name__)
        err.result = result
        raise err from None
    return result


def _scan_stream(fh, size: int, result: _ScanResult, *, wrappers: bool) -> None:
    stack: list = []
    memo: dict = {}
    sizes: dict = {}  # id(tuple) -> (tuple, its size expanded through shared references)

    def tuple_of(items):
        # A tuple is hashed (as a key or set member) by walking it in full, shared references
        # included: 30 levels of (t, t) take forever. Sizes are memoised, so this is linear.
        value = tuple(items)
        total = 1
        for item in value:
            known = sizes.get(id(item)) if isinstance(item, tuple) else None
            total += known[1] if known is not None and known[0] is item else 1
        sizes[id(value)] = (value, total)
        return value

    def hashed(k):
        if isinstance(k, tuple):
            known = sizes.get(id(k))
            if known is not None and known[0] is k and known[1] > _MAX_KEY_NODES:
                raise _Refused(f"a dictionary key or set member expands to more than "
                               f"{_MAX_KEY_NODES:,} values through shared references "
                               "(a \"billion laughs\" structure)")
        return _key(k)

    def pop():
        if not stack:
            raise _Corrupt("stack underflow")
        return stack.pop()

    def pop_mark():
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is _MARK:
                items = stack[i + 1:]
                del stack[i:]
                return items
        raise _Corrupt("missing MARK")

    def request(pair):
        result.requested.append(pair)
        return _Global(pair)

    for op, arg, _pos in pickletools.genops(fh):
        name = op.name
        if name in _CONSTANTS:
            stack.append(arg)
        elif name in _LITERALS:
            stack.append(_LITERALS[name])
        elif name == "STOP":
            if stack:
                _check_expansion(stack[-1])
        elif name in _IGNORED:
            pass
        elif name == "MARK":
            stack.append(_MARK)
        elif name in ("EMPTY_LIST", "EMPTY_SET"):
            stack.append([])
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name == "LIST":
            stack.append(pop_mark())
        elif name == "FROZENSET":
            stack.append([hashed(v) for v in pop_mark()])
        elif name == "TUPLE":
            stack.append(tuple_of(pop_mark()))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = [pop() for _ in range(n)][::-1]
            stack.append(tuple_of(items))
        elif name == "DICT":
            items = pop_mark()
            stack.append({hashed(k): v for k, v in zip(items[::2], items[1::2])})
        elif name == "APPEND":
            value = pop()
            if stack and isinstance(stack[-1], list):
                stack[-1].append(value)
        elif name in ("APPENDS", "ADDITEMS"):
            items = pop_mark()
            if name == "ADDITEMS":
                items = [hashed(v) for v in items]
            if stack and isinstance(stack[-1], list):
                stack[-1].extend(items)
        elif name == "SETITEM":
            value, key = pop(), pop()
            if stack and isinstance(stack[-1], dict):
                stack[-1][hashed(key)] = value
        elif name == "SETITEMS":
            items = pop_mark()
            if stack and isinstance(stack[-1], dict):
                stack[-1].update({hashed(k): v for k, v in zip(items[::2], items[1::2])})
        elif name == "POP":
            pop()
        elif name == "POP_MARK":
            pop_mark()
        elif name == "DUP":
            stack.append(stack[-1])
        elif name in _PUTS:
            memo[arg] = stack[-1]
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in _GETS:
            if arg not in memo:
                raise _Corrupt(f"memo key {arg} missing")
            stack.append(memo[arg])
        elif name == "GLOBAL":
            module, _, attr = arg.partition(" ")
            stack.append(request((module, attr)))
        elif name == "STACK_GLOBAL":
            attr, module = pop(), pop()
            if isinstance(module, str) and isinstance(attr, str):
                stack.append(request((module, attr)))
            else:  # a global whose name is computed at load time: never legitimate here
                stack.append(request(("<computed>", "<computed>")))
        elif name == "INST":
            module, _, attr = arg.partition(" ")
            stack.append(_Call(request((module, attr)), tuple(pop_mark())))
        elif name in ("EXT1", "EXT2", "EXT4"):
            key = copyreg._inverted_registry.get(arg)
            stack.append(request(tuple(key) if key else ("<extension>", str(arg))))
        elif name == "REDUCE":
            args, func = pop(), pop()
            if isinstance(func, _Global) and func.pair == _GETATTR:
                _check_getattr(args, result)
            stack.append(_Call(func, args))
        elif name == "NEWOBJ":
            args, cls = pop(), pop()
            stack.append(_Call(cls, args))
        elif name == "NEWOBJ_EX":
            pop()  # keyword arguments: not needed to name the class
            args, cls = pop(), pop()
            stack.append(_Call(cls, args))
        elif name == "OBJ":
            items = pop_mark()
            if not items:
                raise _Corrupt("OBJ without a class")
            stack.append(_Call(items[0], tuple(items[1:])))
        elif name == "BUILD":
            state = pop()
            if not stack:
                raise _Corrupt("stack underflow")
            target = stack[-1]
            if isinstance(target, _Call):
                target.state = state
                if wrappers and target.pair() == _WRAPPER:
                    result.has_wrapper = True
                    _skip_wrapped_array(fh, size, state, result)
        elif name in ("PERSID", "BINPERSID"):
            if name == "BINPERSID":
                pop()
            result.pseudo.append(("pickle", "persistent_load"))
            stack.append(_Opaque())
        elif name in ("NEXT_BUFFER", "READONLY_BUFFER"):
            if name == "NEXT_BUFFER":
                stack.append(_Opaque())
        else:  # pragma: no cover - every opcode of protocols 0-5 is handled above
            raise _Corrupt(f"unknown opcode {name}")


def _check_expansion(root) -> None:
    """Refuse an object whose shared references expand to more than ``_MAX_GRAPH_NODES`` values.

    Anything that later walks the loaded object without memoising (``repr``, equality, a
    parameter check) would take as long as the expansion: 40 levels of ``[x, x]`` are 2**40
    values in a few hundred bytes. Sizes are memoised per object, so this walk is linear.
    """
    sizes: dict = {}
    todo = [(root, False)]
    while todo:
        obj, done = todo.pop()
        key = id(obj)
        if key in sizes and not done:
            continue
        if isinstance(obj, (list, tuple)):
            children = obj
        elif isinstance(obj, dict):
            children = list(obj.values())
        elif isinstance(obj, _Call):
            children = (obj.args, obj.state)
        else:
            continue
        if not done:
            sizes[key] = (obj, 1)  # in progress: a cycle counts once
            todo.append((obj, True))
            todo.extend((c, False) for c in children
                        if isinstance(c, (list, tuple, dict, _Call)) and id(c) not in sizes)
            continue
        total = 1
        for c in children:
            known = sizes.get(id(c))
            total += known[1] if known is not None and known[0] is c else 1
        if total > _MAX_GRAPH_NODES:
            raise _Refused(f"its objects expand to more than {_MAX_GRAPH_NODES:,} values through "
                           "shared references (a \"billion laughs\" structure)")
        sizes[key] = (obj, total)


def _key(k):
    # the scan only ever looks values up by string keys: anything else stands for itself
    return k if isinstance(k, (str, int, float, bytes, bool, type(None))) else _Opaque()


def _check_getattr(args, result: _ScanResult) -> None:
    """``getattr(obj, name)`` is allowed only for the bound methods in ``BOUND_METHODS``."""
    if isinstance(args, tuple) and len(args) == 2 and isinstance(args[1], str):
        obj, attr = args
        owner = obj.pair() if isinstance(obj, _Call) else None
        if owner is not None and (owner[0], owner[1], attr) in BOUND_METHODS:
            return
        shown_owner = owner[1] if owner is not None else "?"
        result.pseudo.append(("builtins", f"getattr({shown_owner}, {attr!r})"))
    else:
        result.pseudo.append(("builtins", "getattr(?)"))


def _skip_wrapped_array(fh, size: int, state, result: _ScanResult) -> None:
    """Step over the bytes joblib wrote after a NumpyArrayWrapper (scan only)."""
    if not isinstance(state, dict):
        raise _Corrupt("a joblib array wrapper has no description")
    dtype = _concrete_dtype(state.get("dtype"))
    shape = _checked_shape(state.get("shape"))
    if dtype.hasobject:
        # the elements follow as a nested pickle stream: scan it like the outer one
        _scan_stream(fh, size, result, wrappers=False)
        return
    if state.get("numpy_array_alignment_bytes") is not None:
        pad = fh.read(1)
        if len(pad) != 1 or len(fh.read(pad[0])) != pad[0]:
            raise _Corrupt("array data is truncated")
    nbytes = math.prod(shape) * dtype.itemsize
    start = fh.tell()
    if start + nbytes > size:
        raise _Corrupt("array data is truncated")
    fh.seek(start + nbytes)


def _concrete_dtype(value) -> np.dtype:
    return _concrete(value, [0], dtype_only=True)


def _concrete(value, budget, dtype_only=False):
    """Turn a symbolic value made of constants and dtypes back into Python objects.

    ``budget[0]`` counts the values made, so that shared references cannot expand forever. A
    dtype is always a new object (never numpy's shared float64) and its state is checked before
    it is set, as in the load.
    """
    budget[0] += 1
    if budget[0] > _MAX_KEY_NODES:
        raise _Refused("a joblib array's dtype expands to too many values")
    if isinstance(value, _Call) and value.pair() == _DTYPE:
        args = _concrete(value.args, budget)
        if not (isinstance(args, tuple) and args and isinstance(args[0], (str, np.dtype))):
            raise _Corrupt("a joblib array wrapper has an unreadable dtype")
        dtype = np.dtype(args[0], bool(args[1]) if len(args) > 1 else False, True)
        if value.state is not None:
            state = _concrete(value.state, budget)
            _check_dtype_state(dtype, state)
            dtype.__setstate__(state)
        return dtype
    if dtype_only:
        raise _Corrupt("a joblib array wrapper has no dtype")
    if value is None or isinstance(value, (bool, int, float, str, bytes, bytearray)):
        return value
    if isinstance(value, tuple):
        return tuple(_concrete(v, budget) for v in value)
    if isinstance(value, list):
        return [_concrete(v, budget) for v in value]
    if isinstance(value, dict):
        return {_concrete(k, budget): _concrete(v, budget) for k, v in value.items()}
    raise _Corrupt("a joblib array wrapper has an unreadable dtype")


def _checked_shape(shape) -> tuple:
    if not (isinstance(shape, tuple)
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise _Corrupt("a joblib array wrapper has an invalid shape")
    return shape


# --------------------------------------------------------------------------------------------
# the load: unpicklers whose find_class enforces the allowlist, and whose calls and BUILDs that
# numpy or compiled scikit-learn code would trust are checked first


_RECONSTRUCT = {("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct")}
_FROMBUFFER = {("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer")}
_SCALAR = {("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar")}
_COPYREG = {("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor")}
_CODECS = ("_codecs", "encode")
_BYTES = {("__builtin__", "bytes"), ("builtins", "bytes")}
_NEWOBJ = {("sklearn.neighbors._kd_tree", "newObj"), ("sklearn.neighbors._ball_tree", "newObj"),
           ("sklearn.metrics._dist_metrics", "newObj")}
_MAX_DIMS = 64


def _dtype_has_object(dtype: np.dtype) -> bool:
    """Whether an object field hides anywhere inside ``dtype`` (by structure, not by its flags)."""
    todo, seen = [dtype], 0
    while todo:
        d = todo.pop()
        seen += 1
        if seen > _MAX_KEY_NODES:
            return True
        if d.kind == "O" or d.char == "O":
            return True
        if d.subdtype is not None:
            todo.append(d.subdtype[0])
        if d.fields:
            todo.extend(f[0] for f in d.fields.values())
    return False


def _shape_of(shape, what: str) -> tuple:
    if not (isinstance(shape, tuple) and len(shape) <= _MAX_DIMS
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise _Corrupt(f"{what} has an invalid shape")
    return shape


def _check_dtype_state(dtype: np.dtype, state) -> None:
    """Refuse a dtype state (``dtype.__setstate__``) that numpy would trust into a crash.

    No object field anywhere inside a record or subarray (numpy would read raw bytes as
    pointers), every field inside the item size, and flags exactly those numpy computes itself
    for the same layout (a flag can claim "holds no references" for a record that does).
    """
    bad = _Refused
    if not (isinstance(state, tuple) and len(state) in (8, 9)):
        raise bad("a numpy dtype has a malformed state")
    version, order, sub, names, fields, elsize, align, flags = state[:8]
    if len(state) == 9 and state[8] is not None:
        raise bad("a numpy dtype carries metadata")
    if version not in (3, 4) or order not in ("<", ">", "|", "=") or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in (elsize, align, flags)):
        raise bad("a numpy dtype has a malformed state")
    if dtype.kind != "V":
        if sub is not None or names is not None or fields is not None or flags != dtype.flags \
                or elsize not in (-1, dtype.itemsize) or align not in (-1, dtype.alignment):
            raise bad(f"a numpy {dtype.kind}-kind dtype has a state that does not match it")
        return
    if not 0 <= elsize <= 1 << 30 or align not in (-1, 1, 2, 4, 8, 16):
        raise bad("a numpy record dtype has an invalid item size")
    if sub is not None:
        if names is not None or fields is not None or not (isinstance(sub, tuple) and len(sub) == 2):
            raise bad("a numpy subarray dtype has a malformed state")
        base, shape = sub
        shape = _shape_of(shape if isinstance(shape, tuple) else (shape,), "a numpy subarray dtype")
        if not isinstance(base, np.dtype) or _dtype_has_object(base) \
                or base.itemsize * math.prod(shape) != elsize:
            raise bad("a numpy subarray dtype holds objects or does not fit its item size")
        reference = np.dtype((base, shape))
    elif fields is not None:
        if not (isinstance(names, tuple) and isinstance(fields, dict) and len(names) == len(fields)
                and set(names) == set(fields) and all(isinstance(n, str) for n in names)):
            raise bad("a numpy record dtype has malformed fields")
        formats, offsets = [], []
        for n in names:
            entry = fields[n]
            if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], np.dtype)
                    and isinstance(entry[1], int) and not isinstance(entry[1], bool)):
                raise bad(f"a numpy record dtype has a malformed field {n!r}")
            sub_dtype, offset = entry
            if _dtype_has_object(sub_dtype):
                raise bad(f"a numpy record dtype hides an object field {n!r}")
            if offset < 0 or offset + sub_dtype.itemsize > elsize:
                raise bad(f"a numpy record dtype has a field {n!r} outside its item size")
            formats.append(sub_dtype)
            offsets.append(offset)
        try:
            reference = np.dtype({"names": list(names), "formats": formats, "offsets": offsets,
                                  "itemsize": elsize})
        except (TypeError, ValueError) as exc:
            raise bad(f"a numpy record dtype is invalid ({_one_line(exc)})") from None
    elif names is not None:
        raise bad("a numpy record dtype has names but no fields")
    else:
        reference = np.dtype((np.void, elsize)) if elsize else np.dtype("V")
    if flags & ~0x80 != reference.flags & ~0x80 or reference.hasobject:
        raise bad("a numpy dtype's flags do not match its layout")


class _RestrictedMixin:
    """``find_class`` that only returns allowlisted globals, and checked calls and BUILDs.

    Only usable with the pure-Python :class:`pickle._Unpickler` (its dispatch table is copied
    and four entries replaced by :func:`_install_checks`).
    """

    _shown = ""
    _size = 0

    def _init_checks(self, shown: str, size: int) -> None:
        self._shown = shown
        self._size = size
        self._fresh: dict[int, np.dtype] = {}  # dtypes built here whose state is not set yet

    def find_class(self, module, name):
        pair = (module, name)
        if pair not in ALLOWED:
            raise RefusedModelError(self._shown, [pair])
        if pair == _GETATTR:
            return self._bound_method
        if pair in _RECONSTRUCT:
            return self._reconstruct
        if pair in _FROMBUFFER:
            return self._frombuffer
        if pair in _SCALAR:
            return self._scalar
        if pair in _COPYREG:
            return self._copyreg_reconstructor
        if pair == _CODECS:
            return _latin1_encode
        if pair in _BYTES:
            return _empty_bytes
        real_module = MODULE_ALIASES.get(module, module)
        try:
            found = pickle._Unpickler.find_class(self, real_module, name)
        except (ImportError, AttributeError):
            _missing_optional(self._shown, [module])
            raise InputError(
                f"{self._shown} needs {module}.{name}, which this installation does not provide "
                "(was it pickled with another scikit-learn or numpy version?)"
            ) from None
        if pair in _NEWOBJ:
            return functools.partial(self._new_object, found)
        return found

    # -- numpy: every dtype is checked before an array can use it ---------------------------

    def _usable_dtype(self, dtype, what: str) -> np.dtype:
        if isinstance(dtype, (bytes, str)) and len(dtype) <= 8:
            dtype = np.dtype(dtype)
        if not isinstance(dtype, np.dtype):
            raise _Corrupt(f"{what} has no dtype")
        if id(dtype) in self._fresh:
            raise _Refused(f"{what} uses a dtype before its layout is set")
        if dtype.kind == "V" and _dtype_has_object(dtype):
            raise _Refused(f"{what} has a record dtype that hides an object field")
        return dtype

    def _declared(self, shape, dtype: np.dtype, what: str) -> int:
        nbytes = math.prod(shape) * max(dtype.itemsize, 1)
        if nbytes > self._size:
            raise _Refused(f"{what} declares {_size(nbytes)} of data ({shape} x "
                           f"{dtype.itemsize} bytes) that the {_size(self._size)} file cannot back")
        return nbytes

    def _make_dtype(self, spec, align=False, copy=False):
        # always a new dtype: __setstate__ on numpy's shared float64 would change it everywhere
        if not isinstance(spec, (str, np.dtype)):
            raise _Refused("a numpy dtype is built from something other than a type code")
        dtype = np.dtype(spec, bool(align), True)
        self._fresh[id(dtype)] = dtype
        return dtype

    def _reconstruct(self, subtype, shape, typecode):
        if subtype is not np.ndarray:
            raise _Refused("a numpy array is reconstructed as something other than an ndarray")
        shape = _shape_of(shape if isinstance(shape, tuple) else (shape,), "a numpy array")
        dtype = self._usable_dtype(typecode, "a numpy array")
        self._declared(shape, dtype, "a numpy array")
        return _numpy_core("multiarray", "_reconstruct")(np.ndarray, shape, dtype)

    def _frombuffer(self, buf, dtype, shape, order):
        dtype = self._usable_dtype(dtype, "a numpy array")
        shape = _shape_of(shape, "a numpy array")
        if dtype.hasobject:
            raise _Refused("a numpy object array is read from raw bytes")
        view = memoryview(buf)
        if view.nbytes != math.prod(shape) * dtype.itemsize or order not in ("C", "F", "A", "K"):
            raise _Corrupt("a numpy array's buffer does not match its shape")
        return _numpy_core("numeric", "_frombuffer")(buf, dtype, shape, order)

    def _scalar(self, dtype, obj=None):
        dtype = self._usable_dtype(dtype, "a numpy scalar")
        if not dtype.hasobject and not (isinstance(obj, (bytes, bytearray))
                                        and len(obj) == dtype.itemsize):
            raise _Corrupt("a numpy scalar's bytes do not match its dtype")
        if dtype.hasobject and dtype.kind != "O":
            raise _Refused("a numpy scalar has a record dtype that holds objects")
        scalar = _numpy_core("multiarray", "scalar")
        return scalar(dtype, obj) if obj is not None else scalar(dtype)

    def _check_array_state(self, array: np.ndarray, state) -> None:
        if not (isinstance(state, tuple) and len(state) in (4, 5)):
            raise _Corrupt("a numpy array has a malformed state")
        shape, dtype, _fortran, raw = state[-4:]
        shape = _shape_of(shape, "a numpy array")
        dtype = self._usable_dtype(dtype, "a numpy array")
        count = math.prod(shape)
        if dtype.hasobject:
            if dtype.kind != "O" or not isinstance(raw, list) or len(raw) != count:
                raise _Refused("a numpy object array does not match its description")
        else:
            try:
                nbytes = memoryview(raw).nbytes if not isinstance(raw, str) else len(raw)
            except TypeError:
                raise _Corrupt("a numpy array has no data") from None
            if nbytes != count * dtype.itemsize:
                raise _Corrupt("a numpy array's data does not match its shape")

    # -- protocols 0-2 ---------------------------------------------------------------------

    def _copyreg_reconstructor(self, cls, base, state):
        # copyreg._reconstructor(cls, object, None) is object.__new__(cls); dict subclasses
        # (scikit-learn's Bunch) pass dict and their items.
        if not isinstance(cls, type) or issubclass(cls, (np.ndarray, np.generic, np.dtype)):
            raise _Refused("copy_reg._reconstructor is asked for something other than a class")
        if base is object and state is None:
            return object.__new__(cls)
        if base is dict and issubclass(cls, dict) and isinstance(state, dict):
            obj = dict.__new__(cls)
            dict.update(obj, state)
            return obj
        raise _Refused("copy_reg._reconstructor is asked for a base other than object")

    def _new_object(self, new_obj, cls):
        # scikit-learn's Cython ``newObj(cls)`` is cls.__new__(cls): only for its own classes
        if not (isinstance(cls, type) and (cls.__module__, cls.__name__) in ALLOWED
                and cls.__module__.startswith(("sklearn.neighbors.", "sklearn.metrics."))):
            raise _Refused("a scikit-learn newObj call names an unexpected class")
        return new_obj(cls)

    def _bound_method(self, obj, name, *default):
        # stands in for builtins.getattr: only the bound methods listed in BOUND_METHODS
        owner = type(obj)
        refusal = RefusedModelError(self._shown, [("builtins", f"getattr({owner.__qualname__}, "
                                                               f"{name!r})")])
        if default or not isinstance(name, str) \
                or (owner.__module__, owner.__qualname__, name) not in BOUND_METHODS:
            raise refusal
        value = getattr(obj, name)
        if not (inspect.ismethod(value) and value.__self__ is obj):
            raise refusal
        return value

    # -- calls -----------------------------------------------------------------------------

    def _call(self, func, args, kwargs=None, *, new=False):
        if not isinstance(args, tuple) or (kwargs is not None and not isinstance(kwargs, dict)):
            raise _Corrupt("a call's arguments are not a tuple")
        if func is np.dtype:
            if kwargs:
                raise _Refused("a numpy dtype is built with keyword arguments")
            return self._make_dtype(*args)
        if isinstance(func, type) and issubclass(func, np.ndarray):
            # numpy never pickles ndarray(shape): it would allocate what the file never holds
            shape = args[0] if args else ()
            try:
                shape = tuple(int(n) for n in (shape if isinstance(shape, (tuple, list))
                                               else (shape,)))
            except (TypeError, ValueError, OverflowError):
                shape = ()
            dtype = args[1] if len(args) > 1 and isinstance(args[1], np.dtype) else np.dtype(float)
            if shape and all(n >= 0 for n in shape):
                self._declared(shape, dtype, "a numpy.ndarray call")
            raise _Refused("it calls numpy.ndarray directly, which numpy never pickles")
        if _is_tree_class(func):
            _check_tree_args(args)
        if (getattr(func, "__module__", None), getattr(func, "__qualname__", None)) in NEVER_CALLED:
            raise _Refused(f"it calls {func.__module__}.{func.__qualname__}, which a model only holds")
        if isinstance(func, type) and (func.__module__, func.__qualname__) in STATE_ONLY:
            if not new or args or kwargs:
                raise _Refused(f"it calls {func.__module__}.{func.__qualname__} with arguments; "
                               "only its saved state may be loaded")
        elif func is bytearray:
            _check_bytearray_args(args, kwargs)
        elif func is collections.defaultdict:
            if kwargs or len(args) > 1 or (args and args[0] not in
                                           (None, collections.OrderedDict, dict, list)):
                raise _Refused("a defaultdict is made with a factory other than a dict or list")
        if new:
            return func.__new__(func, *args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))

    def _checked_build(self, default_build) -> None:
        stack = self.stack
        if len(stack) < 2:
            raise _Corrupt("stack underflow")
        state, inst = stack[-1], stack[-2]
        if isinstance(inst, np.dtype):
            if self._fresh.pop(id(inst), None) is not inst:
                raise _Refused("a numpy dtype's layout is set twice or after it was used")
            _check_dtype_state(inst, state)
        elif isinstance(inst, np.ndarray):
            self._check_array_state(inst, state)
        else:
            owner = (type(inst).__module__, type(inst).__qualname__)
            if owner == _LGBM_BOOSTER:
                _check_lightgbm_state(state)
            elif owner == _XGB_BOOSTER:
                _check_xgboost_state(state)
        default_build(self)


def _numpy_core(module: str, name: str):
    # numpy 2 spells it numpy._core, numpy 1 numpy.core
    import importlib

    try:
        found = importlib.import_module(f"numpy._core.{module}")
    except ImportError:  # pragma: no cover - numpy 1
        found = importlib.import_module(f"numpy.core.{module}")
    return getattr(found, name)


def _latin1_encode(obj, encoding="utf-8", errors="strict"):
    # protocols 0-2 spell bytes as _codecs.encode(str, 'latin1'): nothing else
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise _Refused("_codecs.encode is used for something other than bytes")
    return obj.encode("latin1")


def _check_bytearray_args(args, kwargs) -> None:
    # bytearray(bytes) (protocols 3-4) or bytearray(str, "latin-1") (0-2); bytearray(n) would
    # allocate n bytes
    ok = not kwargs and (args == () or (len(args) == 1 and isinstance(args[0], (bytes, bytearray)))
                         or (len(args) == 2 and isinstance(args[0], str)
                             and args[1] in ("latin-1", "latin1")))
    if not ok:
        raise _Refused("bytearray() is called with something other than bytes")


def _empty_bytes(*args):
    # protocols 0-2 spell b"" as bytes(); bytes(n) would allocate n bytes
    if args:
        raise _Refused("bytes() is called with arguments")
    return b""


def _is_tree_class(func) -> bool:
    return isinstance(func, type) and func.__name__ == "Tree" \
        and func.__module__ == "sklearn.tree._tree"


def _check_tree_args(args) -> None:
    # Tree(n_features, n_classes, n_outputs): compiled code sizes buffers from these
    ok = len(args) == 3
    if ok:
        n_features, n_classes, n_outputs = args
        ok = (isinstance(n_features, (int, np.integer)) and isinstance(n_outputs, (int, np.integer))
              and isinstance(n_classes, np.ndarray) and n_classes.ndim == 1
              and 1 <= int(n_outputs) <= 1 << 16 and n_classes.shape[0] == int(n_outputs)
              and 0 <= int(n_features) < 1 << 31
              and n_classes.dtype.kind in "iu" and bool(np.all(n_classes >= 1))
              and bool(np.all(n_classes < 1 << 24)))
    if not ok:
        raise _Refused("a decision tree is built with impossible sizes")


def _install_checks(cls) -> None:
    """Route REDUCE, NEWOBJ, NEWOBJ_EX and BUILD of ``cls`` through the mixin's checks."""
    base_build = cls.dispatch[pickle.BUILD[0]]
    dispatch = dict(cls.dispatch)

    def load_reduce(self):
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)

    def load_newobj(self):
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args, new=True)

    def load_newobj_ex(self):
        kwargs, args = self.stack.pop(), self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args, kwargs, new=True)

    def load_build(self):
        self._checked_build(base_build)

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BUILD[0]] = load_build
    cls.dispatch = dispatch

    def _instantiate(self, klass, args):  # INST and OBJ
        self.append(self._call(klass, tuple(args)))

    cls._instantiate = _instantiate


class _RestrictedPyUnpickler(_RestrictedMixin, pickle._Unpickler):
    """Plain pickles, and a joblib object-dtype array's nested stream (reads no further than STOP)."""

    def __init__(self, file, shown: str, size: int | None = None):
        super().__init__(file)
        self._init_checks(shown, size if size is not None else 1 << 62)


_install_checks(_RestrictedPyUnpickler)
# the name the tests and older callers know
_RestrictedUnpickler = _RestrictedPyUnpickler


@functools.cache
def _make_numpy_unpickler():
    # Deferred so that importing invaudit does not import joblib's persistence machinery.
    from joblib.numpy_pickle import NumpyArrayWrapper, NumpyUnpickler

    class _RestrictedNumpyUnpickler(_RestrictedMixin, NumpyUnpickler):
        """joblib files: arrays are read here, never by ``NumpyArrayWrapper.read``."""

        dispatch = NumpyUnpickler.dispatch.copy()

        def __init__(self, file, shown: str, size: int):
            NumpyUnpickler.__init__(self, shown, file, ensure_native_byte_order=True)
            self._init_checks(shown, size)

        def load_build(self):
            pickle._Unpickler.load_build(self)
            if type(self.stack[-1]) is NumpyArrayWrapper:
                self.stack[-1] = self._read_array(self.stack[-1])

        dispatch[pickle.BUILD[0]] = load_build

        def _read_array(self, wrapper) -> np.ndarray:
            return _read_wrapped_array(
                self, self.file_handle, dtype=getattr(wrapper, "dtype", None), shape=getattr(wrapper, "shape", None),
                order=getattr(wrapper, "order", None), subclass=getattr(wrapper, "subclass", None),
                aligned=getattr(wrapper, "numpy_array_alignment_bytes", None) is not None,
                nested=lambda fh: _RestrictedPyUnpickler(fh, self._shown, self._size).load())

    _install_checks(_RestrictedNumpyUnpickler)
    return _RestrictedNumpyUnpickler


def _read_wrapped_array(unpickler, fh, *, dtype, shape, order, subclass, aligned, nested) -> np.ndarray:
    """The array joblib wrote after a NumpyArrayWrapper, read and checked (full and light loads).

    ``unpickler`` is a restricted pure-Python unpickler positioned just after the wrapper's BUILD,
    reading ``fh``;
    ``nested(fh)`` unpickles an object-dtype array's nested stream with the same restrictions.
    """
    if not isinstance(dtype, np.dtype) or order not in ("C", "F") or subclass is not np.ndarray:
        raise _Corrupt("a joblib array wrapper is malformed")
    dtype = unpickler._usable_dtype(dtype, "a joblib array")
    shape = _checked_shape(shape)
    frame = unpickler._unframer.current_frame
    if frame is not None and frame.read(1):
        raise _Corrupt("array data starts inside a pickle frame")
    size = unpickler._size
    if dtype.hasobject:
        if dtype.kind != "O":
            raise _Refused("a joblib array has a record dtype that holds objects")
        unpickler._declared(shape, np.dtype("u1"), "a joblib object array")
        array = nested(fh)
        if not (isinstance(array, np.ndarray) and array.dtype.hasobject and array.shape == shape):
            raise _Corrupt("a joblib object array does not match its description")
        return array
    if aligned:
        pad = fh.read(1)
        if len(pad) != 1 or len(fh.read(pad[0])) != pad[0]:
            raise _Corrupt("array data is truncated")
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if nbytes > size - fh.tell():
        raise _Corrupt("array data is truncated")
    if nbytes == 0:
        flat = np.empty(count if count <= size else 0, dtype=dtype)
        if count > size:
            raise _Refused("a joblib array declares more elements than the file holds")
    else:
        buf = bytearray(nbytes)
        if fh.readinto(buf) != nbytes:
            raise _Corrupt("array data is truncated")
        flat = np.frombuffer(buf, dtype=dtype, count=count)
    array = flat.reshape(shape[::-1]).T if order == "F" else flat.reshape(shape)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array


# --------------------------------------------------------------------------------------------
# LightGBM and XGBoost: a booster's saved model is data that their compiled parsers and
# predictors trust (node, leaf and feature indices, byte counts). It is read here first, by a
# parser that executes nothing, and refused unless it is a well-formed forest; only then does
# the booster's own ``__setstate__`` see it. (_allowlist.STATE_ONLY: these classes are only ever
# created empty and given their state by BUILD.)

_LGBM_BOOSTER = ("lightgbm.basic", "Booster")
_XGB_BOOSTER = ("xgboost.core", "Booster")
_MAX_TREES = 1_000_000
_MAX_LEAVES = 1 << 24
# Booster attributes a LightGBM model pickles besides the model text (lightgbm 4.x): plain data.
_LGBM_STATE_KEYS = frozenset({
    "_handle", "handle", "_network", "_train_data_name", "best_iteration", "best_score",
    "name_valid_sets", "pandas_categorical", "train_set_version", "params",
    "_Booster__need_reload_eval_info", "_Booster__set_objective_to_none",
    "_Booster__num_dataset", "_Booster__init_predictor", "_Booster__num_class",
    "_Booster__inner_predict_buffer", "_Booster__is_predicted_cur_iter",
    "_Booster__num_inner_eval", "_Booster__name_inner_eval", "_Booster__higher_better_inner_eval",
    "_Booster__attr",
})
_XGB_OBJECTIVES = frozenset({
    "binary:logistic", "binary:logitraw", "binary:hinge", "multi:softprob", "multi:softmax",
})


def _plain_data(value, depth: int = 0) -> bool:
    """Only str, numbers, bools, None, bytes and (nested) lists, tuples and dicts of them."""
    if depth > 32:
        return False
    if value is None or isinstance(value, (str, bytes, bool, int, float, np.number, np.bool_)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain_data(v, depth + 1) for v in value)
    if isinstance(value, dict):  # OrderedDict / defaultdict(OrderedDict) included
        return all(_plain_data(k, depth + 1) and _plain_data(v, depth + 1)
                   for k, v in value.items())
    return False


def _check_lightgbm_state(state) -> None:
    """A LightGBM ``Booster.__setstate__`` state: plain attributes and a well-formed model text."""
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise _Refused("a LightGBM booster's state is not a dictionary of attributes")
    unknown = sorted(set(state) - _LGBM_STATE_KEYS)
    if unknown:
        raise _Refused(f"a LightGBM booster's state has attributes LightGBM never saves "
                       f"({', '.join(map(repr, unknown[:5]))})")
    if state.get("_network", False) is not False:
        raise _Refused("a LightGBM booster's state claims a network connection")
    model = state.get("_handle", state.get("handle"))
    if "_handle" in state and "handle" in state and state["handle"] is not None:
        raise _Refused("a LightGBM booster's state holds two models")
    if not isinstance(model, str):
        raise _Refused("a LightGBM booster's state holds no model text")
    for key, value in state.items():
        if key not in ("_handle", "handle") and not _plain_data(value):
            raise _Refused(f"a LightGBM booster's attribute {key!r} is not plain data")
    problem = lightgbm_model_problem(model)
    if problem:
        raise _Refused(f"its LightGBM model text is malformed: {problem}")


def _ints(text: str, n: int, what: str) -> list:
    parts = text.split()
    if len(parts) != n:
        raise ValueError(f"{what} has {len(parts)} values where {n} are expected")
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"{what} holds something other than integers") from None


def _floats(text: str, n: int, what: str) -> list:
    parts = text.split()
    if len(parts) != n:
        raise ValueError(f"{what} has {len(parts)} values where {n} are expected")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"{what} holds something other than numbers") from None
    if any(v != v for v in values):
        raise ValueError(f"{what} holds NaN")
    return values


def lightgbm_model_problem(text: str) -> str | None:
    """Why a LightGBM model text (``Booster.model_to_string``) is unsafe to parse, or None.

    Checked: the header's sizes; ``tree_sizes`` (LightGBM cuts the text into trees by these byte
    counts) equal to the real size of each ``Tree=`` block; in every tree, every array of the
    length ``num_leaves`` implies, children that form one tree over ``num_leaves - 1`` internal
    nodes and ``num_leaves`` leaves (each reached once, from the root), split features at most
    ``max_feature_idx``, categorical splits pointing inside ``cat_boundaries`` and those inside
    ``cat_threshold``, and linear leaves naming features in range.
    """
    try:
        return _lightgbm_text_problem(text)
    except ValueError as exc:
        return str(exc)


def _key_values(lines, what: str) -> dict:
    out = {}
    for line in lines:
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            if line == "tree" or line == "end of trees":
                continue
            raise ValueError(f"{what} has a line that is not key=value")
        if key in out:
            raise ValueError(f"{what} sets {key} twice")
        out[key] = value
    return out


def _lightgbm_text_problem(text: str) -> str | None:
    end = text.find("\nend of trees")
    if not text.startswith("tree\n") or end < 0:
        return "it does not start with 'tree' and end its trees with 'end of trees'"
    body = text[:end + 1]
    starts = [m.start() for m in re.finditer(r"^Tree=", body, re.M)]
    header_end = starts[0] if starts else len(body)
    header = _key_values(body[:header_end].split("\n"), "the header")
    for key in ("max_feature_idx", "num_class", "num_tree_per_iteration"):
        if key not in header:
            return f"the header has no {key}"
    n_features = int(header["max_feature_idx"]) + 1
    n_class = int(header["num_class"])
    per_iter = int(header["num_tree_per_iteration"])
    if not (1 <= n_features <= 1 << 24 and 1 <= n_class <= 1 << 16 and 1 <= per_iter <= 1 << 16):
        return "the header's sizes are out of range"
    if len(header.get("feature_names", "").split()) != n_features:
        return "the header's feature_names disagree with max_feature_idx"
    if len(starts) > _MAX_TREES or len(starts) % per_iter:
        return "the number of trees is not a whole number of iterations"
    blocks = [(a, b) for a, b in zip(starts, starts[1:] + [end + 1])]
    if "tree_sizes" in header:
        sizes = _ints(header["tree_sizes"], len(blocks), "tree_sizes")
        if any(s != b - a for s, (a, b) in zip(sizes, blocks)):
            return "tree_sizes disagree with the trees' real sizes"
    for i, (a, b) in enumerate(blocks):
        lines = text[a:b].split("\n")
        if lines[0] != f"Tree={i}":
            return f"tree {i} is labelled {lines[0][:30]!r}"
        problem = _lightgbm_tree_problem(_key_values(lines[1:], f"tree {i}"), n_features)
        if problem:
            return f"tree {i}: {problem}"
    return None


def _lightgbm_tree_problem(kv: dict, n_features: int) -> str | None:
    n_leaves = int(kv.get("num_leaves", "0"))
    n_cat = int(kv.get("num_cat", "0"))
    if not (1 <= n_leaves <= _MAX_LEAVES) or not (0 <= n_cat < n_leaves):
        return "num_leaves or num_cat is out of range"
    if "leaf_value" not in kv or "shrinkage" not in kv:
        return "it has no leaf_value or shrinkage"
    _floats(kv["leaf_value"], n_leaves, "leaf_value")
    _floats(kv["shrinkage"], 1, "shrinkage")
    n_inner = n_leaves - 1
    if n_inner:
        for key in ("split_feature", "threshold", "decision_type", "left_child", "right_child"):
            if key not in kv:
                return f"it has no {key}"
        feature = _ints(kv["split_feature"], n_inner, "split_feature")
        kinds = _ints(kv["decision_type"], n_inner, "decision_type")
        threshold = _floats(kv["threshold"], n_inner, "threshold")
        left = _ints(kv["left_child"], n_inner, "left_child")
        right = _ints(kv["right_child"], n_inner, "right_child")
        if any(not 0 <= f < n_features for f in feature):
            return "a split names a feature past max_feature_idx"
        if any(not 0 <= k < 16 for k in kinds):
            return "a decision_type is out of range"
        # children: >= 0 an internal node, < 0 the leaf ~child; each reached exactly once
        seen_inner, seen_leaf = [False] * n_inner, [False] * n_leaves
        seen_inner[0] = True
        todo = [0]
        while todo:
            node = todo.pop()
            for child in (left[node], right[node]):
                if child >= 0:
                    if child >= n_inner or seen_inner[child]:
                        return "its children do not form a tree"
                    seen_inner[child] = True
                    todo.append(child)
                else:
                    leaf = ~child
                    if leaf >= n_leaves or seen_leaf[leaf]:
                        return "its children do not form a tree"
                    seen_leaf[leaf] = True
        if not (all(seen_inner) and all(seen_leaf)):
            return "some of its nodes are unreachable"
        categorical = [i for i, k in enumerate(kinds) if k & 1]
        if categorical or n_cat:
            if "cat_boundaries" not in kv or "cat_threshold" not in kv:
                return "it has categorical splits but no category sets"
            bounds = _ints(kv["cat_boundaries"], n_cat + 1, "cat_boundaries")
            words = kv["cat_threshold"].split()
            if bounds[0] != 0 or bounds[-1] != len(words) or any(
                    b < a for a, b in zip(bounds, bounds[1:])):
                return "cat_boundaries disagree with cat_threshold"
            if any(not 0 <= int(w) < 1 << 32 for w in words):
                return "cat_threshold holds values that are not 32-bit sets"
            for i in categorical:
                t = threshold[i]
                if t != int(t) or not 0 <= t < n_cat:
                    return "a categorical split points outside cat_boundaries"
    if kv.get("is_linear", "0") not in ("0", "1"):
        return "is_linear is neither 0 nor 1"
    if kv.get("is_linear", "0") == "1":
        counts = _ints(kv.get("num_features", ""), n_leaves, "num_features")
        if any(c < 0 for c in counts):
            return "num_features is negative"
        total = sum(counts)
        used = _ints(kv.get("leaf_features", ""), total, "leaf_features") if total else []
        if any(not 0 <= f < n_features for f in used):
            return "a linear leaf names a feature past max_feature_idx"
        if total:
            _floats(kv.get("leaf_coeff", ""), total, "leaf_coeff")
        _floats(kv.get("leaf_const", ""), n_leaves, "leaf_const")
    return None


# -- XGBoost: a small UBJSON reader (XGBoost's own binary JSON), executing nothing ----------------

_UBJ_NUMBERS = {b"i": ">i1", b"U": ">u1", b"I": ">i2", b"l": ">i4", b"L": ">i8",
                b"d": ">f4", b"D": ">f8"}
_MAX_UBJ_DEPTH = 64


class _UBJ:
    """Decode UBJSON (https://ubjson.org, draft 12, as XGBoost writes it). Typed numeric arrays
    become numpy arrays (read in one piece); every count is checked against the bytes left."""

    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.at = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.at + n > len(self.data):
            raise ValueError("it ends early")
        out = self.data[self.at:self.at + n]
        self.at += n
        return out

    def marker(self) -> bytes:
        m = bytes(self.take(1))
        while m == b"N":
            m = bytes(self.take(1))
        return m

    def number(self, m: bytes):
        code = _UBJ_NUMBERS.get(m)
        if code is None:
            raise ValueError(f"it has an unknown number type {m!r}")
        dtype = np.dtype(code)
        return np.frombuffer(self.take(dtype.itemsize), dtype=dtype)[0].item()

    def count(self) -> int:
        n = self.number(self.marker())
        if not isinstance(n, int) or n < 0 or n > len(self.data) - self.at:
            raise ValueError("it declares a container or string longer than the data")
        return n

    def string(self) -> str:
        return bytes(self.take(self.count())).decode("utf-8")

    def value(self, m: bytes, depth: int):
        if depth > _MAX_UBJ_DEPTH:
            raise ValueError("it nests too deeply")
        if m in _UBJ_NUMBERS:
            return self.number(m)
        if m == b"S" or m == b"H":
            return self.string()
        if m == b"C":
            return bytes(self.take(1)).decode("latin-1")
        if m in (b"T", b"F", b"Z"):
            return {b"T": True, b"F": False, b"Z": None}[m]
        if m == b"[":
            return self.container(depth, is_object=False)
        if m == b"{":
            return self.container(depth, is_object=True)
        raise ValueError(f"it has an unknown marker {m!r}")

    def container(self, depth: int, *, is_object: bool):
        typed, n = None, None
        m = self.marker()
        if m == b"$":
            typed = self.marker()
            m = self.marker()
            if m != b"#":
                raise ValueError("a typed container has no count")
        if m == b"#":
            n = self.count()
            m = None
        if typed is not None and not is_object and typed in _UBJ_NUMBERS:
            dtype = np.dtype(_UBJ_NUMBERS[typed])
            return np.frombuffer(self.take(n * dtype.itemsize), dtype=dtype).astype(dtype.newbyteorder("="))
        out = {} if is_object else []
        i = 0
        while True:
            if n is not None:
                if i == n:
                    return out
            else:
                m = self.marker() if m is None else m
                if m == (b"}" if is_object else b"]"):
                    return out
            if is_object:
                if n is None:
                    self.at -= 1  # the marker read was the key's length type
                key = self.string()
                item = self.value(typed or self.marker(), depth + 1)
                out[key] = item
            else:
                item = self.value(typed or (m if n is None else self.marker()), depth + 1)
                out.append(item)
            m = None
            i += 1


def _check_xgboost_state(state) -> None:
    """An XGBoost ``Booster.__setstate__`` state: ``{"handle": bytearray}`` of a checked model."""
    if not isinstance(state, dict) or set(state) != {"handle"}:
        raise _Refused("an XGBoost booster's state is not the single model buffer XGBoost saves")
    buf = state["handle"]
    if not isinstance(buf, (bytes, bytearray)):
        raise _Refused("an XGBoost booster's state holds no model buffer")
    problem = xgboost_model_problem(bytes(buf))
    if problem:
        raise _Refused(f"its XGBoost model is malformed: {problem}")


def xgboost_model_problem(buf: bytes) -> str | None:
    """Why an XGBoost model buffer (``XGBoosterSerializeToBuffer``: UBJSON ``{"Config", "Model"}``)
    is unsafe to hand to XGBoost, or None.

    Checked: the UBJSON is well formed; the objective is a classification objective; a gblinear
    booster has one weight per feature and bias and output; for gbtree and dart, the number of
    trees, ``tree_info`` (class of each tree) and ``iteration_indptr`` agree; in every tree,
    every array has ``num_nodes`` entries, children come after their parent and name it as their
    parent (so the nodes form one tree), split features are below ``num_feature``, and
    categorical split sets lie inside ``categories``.
    """
    if not buf.startswith(b"{"):
        return ("it is not the UBJSON document XGBoost >= 1.6 writes (save it again with a "
                "current XGBoost)")
    try:
        reader = _UBJ(buf)
        if reader.marker() != b"{":
            return "it is not a UBJSON object"
        doc = reader.container(0, is_object=True)
        if reader.at != len(buf):
            return "it has bytes after its end"
        return _xgboost_doc_problem(doc)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, UnicodeDecodeError,
            OverflowError) as exc:
        return _one_line(exc) or type(exc).__name__


def _int_text(value, what: str) -> int:
    if isinstance(value, str):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{what} is not an integer")
    return value


def _xgboost_doc_problem(doc) -> str | None:
    config, model = doc.get("Config"), doc.get("Model")
    if not isinstance(config, dict) or not isinstance(model, dict):
        return "it has no Config and Model"
    train = config["learner"]["learner_train_param"]
    objective = train.get("objective")
    if objective not in _XGB_OBJECTIVES:
        return f"its objective {str(objective)[:40]!r} is not a classification objective XGBoost documents"
    learner = model["learner"]
    param = learner["learner_model_param"]
    n_features = _int_text(param["num_feature"], "num_feature")
    n_class = _int_text(param["num_class"], "num_class")
    if not (0 <= n_features <= 1 << 24 and 0 <= n_class <= 1 << 16):
        return "num_feature or num_class is out of range"
    booster = learner["gradient_booster"]
    name = booster.get("name")
    if name == "dart":
        weights = booster.get("weight_drop")
        booster = booster["gbtree"]
    elif name == "gbtree":
        weights = None
    elif name == "gblinear":  # one weight per (feature + bias, output)
        coef = np.asarray(booster["model"]["weights"])
        if coef.shape != ((n_features + 1) * max(n_class, 1),):
            return "its linear weights disagree with num_feature and num_class"
        return None
    else:
        return f"its booster {str(name)[:20]!r} is not one XGBoost documents (gbtree, dart, gblinear)"
    if booster.get("name") != "gbtree":
        return "its tree booster has no trees"
    forest = booster["model"]
    trees, info = forest["trees"], np.asarray(forest["tree_info"])
    n_trees = _int_text(forest["gbtree_model_param"]["num_trees"], "num_trees")
    if not isinstance(trees, list) or len(trees) != n_trees or n_trees > _MAX_TREES \
            or info.shape != (n_trees,) or (n_trees and info.dtype.kind not in "iu"):
        return "its number of trees disagrees with tree_info"
    if n_trees and (info.min() < 0 or info.max() >= max(n_class, 1)):
        return "tree_info names a class that does not exist"
    if weights is not None and np.asarray(weights).shape != (n_trees,):
        return "its dart weights disagree with its trees"
    indptr = np.asarray(forest.get("iteration_indptr", [0, n_trees]))
    if indptr.ndim != 1 or indptr.size < 1 or indptr[0] != 0 or indptr[-1] != n_trees \
            or np.any(np.diff(indptr) < 0):
        return "iteration_indptr disagrees with its trees"
    for i, tree in enumerate(trees):
        problem = _xgboost_tree_problem(tree, n_features)
        if problem:
            return f"tree {i}: {problem}"
    return None


def _xgboost_tree_problem(tree, n_features: int) -> str | None:
    param = tree["tree_param"]
    n = _int_text(param["num_nodes"], "num_nodes")
    if not 1 <= n <= 2 * _MAX_LEAVES:
        return "num_nodes is out of range"
    if _int_text(param.get("size_leaf_vector", "1"), "size_leaf_vector") not in (0, 1):
        return "it has vector leaves (multi_strategy='multi_output_tree'), which invaudit does not read"
    arrays = {}
    for key in ("left_children", "right_children", "parents", "split_indices", "split_conditions",
                "default_left", "base_weights"):
        arr = np.asarray(tree[key])
        if arr.shape != (n,):
            return f"{key} does not have num_nodes entries"
        arrays[key] = arr
    split_type = np.asarray(tree.get("split_type", np.zeros(n, np.uint8)))
    if split_type.shape != (n,):
        return "split_type does not have num_nodes entries"
    left = arrays["left_children"].astype(np.int64)
    right = arrays["right_children"].astype(np.int64)
    parents = arrays["parents"].astype(np.int64)
    feature = arrays["split_indices"].astype(np.int64)
    leaf = left == -1
    if not np.array_equal(leaf, right == -1):
        return "a node has one child"
    inner = np.flatnonzero(~leaf)
    lc, rc = left[inner], right[inner]
    if np.any((lc <= inner) | (rc <= inner) | (lc >= n) | (rc >= n) | (lc == rc)):
        return "its children do not come after their parents"
    if np.any(parents[lc] != inner) or np.any(parents[rc] != inner):
        return "its children and parents disagree"
    if np.any((feature[inner] < 0) | (feature[inner] >= n_features)):
        return "a split names a feature past num_feature"
    if not np.all(np.isfinite(np.asarray(arrays["split_conditions"], dtype=np.float64))):
        return "a split condition or leaf value is not finite"
    cat_nodes = np.asarray(tree.get("categories_nodes", []), dtype=np.int64).reshape(-1)
    segments = np.asarray(tree.get("categories_segments", []), dtype=np.int64).reshape(-1)
    sizes = np.asarray(tree.get("categories_sizes", []), dtype=np.int64).reshape(-1)
    cats = np.asarray(tree.get("categories", []), dtype=np.int64).reshape(-1)
    if not (cat_nodes.shape == segments.shape == sizes.shape):
        return "its categorical splits disagree"
    if cat_nodes.size and (np.any((cat_nodes < 0) | (cat_nodes >= n)) or np.any(segments < 0)
                           or np.any(sizes < 0) or np.any(segments + sizes > cats.size)):
        return "a categorical split points outside categories"
    if cats.size and (cats.min() < 0 or cats.max() >= 1 << 24):
        return "a category is out of range"
    is_cat = split_type.astype(np.int64) != 0
    if np.any(is_cat & leaf) or not np.array_equal(np.flatnonzero(is_cat), np.sort(cat_nodes)):
        return "its categorical splits disagree with split_type"
    return None


_OPTIONAL = {"lightgbm": "LightGBM", "xgboost": "XGBoost"}


def _installed(root: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(root) is not None
    except (ImportError, ValueError):
        return False


def _missing_optional(shown: str, modules) -> None:
    """A pickle of a LightGBM or XGBoost model, without that package here: say so."""
    for module in modules:
        root = str(module).partition(".")[0]
        if root in _OPTIONAL and not _installed(root):
            raise InputError(f"{shown} holds a {_OPTIONAL[root]} model, which needs the optional "
                             f"package {root} (pip install 'invaudit[boost]')")


def _load_restricted(data: bytes, shown: str, limit: int = DEFAULT_MAX_MODEL_BYTES):
    stream = _decompress(data, shown, limit)
    try:
        scan = _scan(stream)
        problem = None
    except _Corrupt as exc:
        scan, problem = exc.result, exc
    refused = [pair for pair in scan.requested if pair not in ALLOWED] + scan.pseudo
    if refused and all(str(m).partition(".")[0] in _OPTIONAL for m, _ in refused):
        _missing_optional(shown, [m for m, _ in refused])
    if refused:
        raise RefusedModelError(shown, refused)
    # allowed names from a package that is not installed: name the package and the extra
    _missing_optional(shown, [m for m, _ in scan.requested])
    if problem is not None:
        raise _input_error(shown, problem)

    fh = io.BytesIO(stream)
    if scan.has_wrapper or _WRAPPER in scan.requested:
        unpickler = _make_numpy_unpickler()(fh, shown, len(stream))
    else:
        unpickler = _RestrictedPyUnpickler(fh, shown, len(stream))
    return _guarded_load(unpickler.load, shown)


def _input_error(shown: str, exc: _Corrupt) -> InputError:
    if isinstance(exc, _Refused):
        return InputError(f"{shown} was refused: {exc.args[0]} (nothing was run)")
    return InputError(f"{shown} is not a readable model file (truncated or corrupt: "
                      f"{exc.args[0]})")


def _load_trusted(data: bytes, shown: str):
    import joblib

    return _guarded_load(lambda: joblib.load(io.BytesIO(data)), shown)


def _guarded_load(load, shown: str):
    try:
        return load()
    except InputError:
        raise
    except _Corrupt as exc:
        raise _input_error(shown, exc) from None
    except ModuleNotFoundError as exc:
        _missing_optional(shown, [exc.name or ""])
        raise InputError(f"{shown} could not be unpickled (it needs the module {exc.name}, "
                         "which is not installed)") from None
    except RecursionError:
        raise InputError(f"{shown} could not be unpickled (it nests too deeply); it may be "
                         "truncated or corrupt") from None
    except Exception as exc:  # unpickling runs (allowlisted) code: anything can go wrong
        raise InputError(f"{shown} could not be unpickled ({type(exc).__name__}: "
                         f"{_one_line(exc)}); it may be truncated or corrupt") from exc


# --------------------------------------------------------------------------------------------
# after loading


def _summarise_warnings(caught, shown: str) -> tuple[list[str], list[str]]:
    """One line for a scikit-learn version mismatch; other warnings deduplicated, one line each.

    When the versions differ, the other warnings unpickling raised are noise from the same cause
    and are dropped. Deprecation warnings (e.g. numpy 1 module paths under numpy 2) are dropped.
    Returns the lines and the scikit-learn versions the file was pickled with (if they differ).
    """
    import sklearn
    from sklearn.exceptions import InconsistentVersionWarning

    versions = sorted({str(w.message.original_sklearn_version) for w in caught
                       if issubclass(w.category, InconsistentVersionWarning)})
    if versions:
        return [f"{shown} was pickled with scikit-learn {' and '.join(versions)}; "
                f"this is scikit-learn {sklearn.__version__}: results may differ"], versions
    lines: list[str] = []
    for w in caught:
        if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning)):
            continue
        line = f"{shown}: {_one_line(w.message)}"
        if line not in lines:
            lines.append(line)
    return lines, []


def _check_fitted_classifier(estimator, shown: str, versions: list[str]) -> None:
    import sklearn
    from sklearn.base import is_classifier
    from sklearn.utils.validation import check_is_fitted

    final, label = estimator, type(estimator).__name__
    Pipeline = _imported("sklearn.pipeline", "Pipeline") or ()  # no Pipeline here if never imported
    if isinstance(estimator, Pipeline):
        final = estimator.steps[-1][1] if estimator.steps else None
        label = f"Pipeline ending in {_article(type(final).__name__)}"
    ok = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ok = hasattr(final, "fit") and is_classifier(final)
            if ok:
                check_is_fitted(final)
                ok = hasattr(final, "classes_")
        except Exception:
            ok = False
    if not ok:
        # an estimator from another scikit-learn release may lack attributes this one expects
        why = (f" (it was pickled with scikit-learn {' and '.join(versions)}; this is "
               f"scikit-learn {sklearn.__version__})" if versions else "")
        raise InputError(f"{shown} holds {_article(label)}, not a fitted classifier{why}")


def _article(name: str) -> str:
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _one_line(obj) -> str:
    text = str(obj).strip().splitlines()
    line = text[0] if text else ""
    return line if len(line) <= 200 else line[:197] + "..."


def _check_fitted_state(estimator, shown: str) -> None:
    """Refuse a fitted state that scikit-learn's compiled code would trust into a crash.

    scikit-learn's compiled code (``Tree.predict``, GradientBoosting's ``predict_stages``,
    HistGradientBoosting's predictors, libsvm, the KD and ball trees) trusts the unpickled arrays
    and reads or writes memory wherever an index or a shape points: an allowlisted but crafted
    file can crash the process or corrupt its heap. The whole object graph is walked once
    (memoised, so shared references cost nothing) and checked before anything calls that code:

    - every estimator's input width is its own ``n_features_in_``; an ensemble that calls its
      members without validating the input (forests, gradient boosting) needs the same width in
      every member; a tree or predictor with no known width is refused;
    - trees: children after their parent and inside the node array (no cycles), split features
      below the width, ``n_features`` equal to it; HistGradientBoosting predictor nodes have
      exactly scikit-learn's record layout;
    - GradientBoosting's ``estimators_`` has one column per class (one for two classes); libsvm's
      arrays agree with each other; KD/ball tree indices are in range.
    """
    # only classes whose modules are imported can have instances here, so a linear model imports
    # no tree code (start-up time, issue 16); isinstance(obj, ()) is False
    Tree = _imported("sklearn.tree._tree", "Tree") or ()
    TreePredictor = _imported("sklearn.ensemble._hist_gradient_boosting.predictor", "TreePredictor") or ()
    todo = [(estimator, None, None)]
    seen: set = set()
    while todo:
        obj, width, required = todo.pop()
        key = (id(obj), width, required)
        if key in seen:
            continue
        seen.add(key)
        if len(seen) > _MAX_GRAPH_NODES:
            raise InputError(f"{shown} was refused: its fitted state has more than "
                             f"{_MAX_GRAPH_NODES:,} parts")
        problem, children, child_required = None, (), None
        if isinstance(obj, Tree):
            problem = _tree_problem(obj, width)
        elif isinstance(obj, TreePredictor):
            problem = _predictor_problem(obj, width)
        elif type(obj).__name__ in ("KDTree", "BallTree") \
                and type(obj).__module__.startswith("sklearn.neighbors"):
            problem = _binary_tree_problem(obj, width)
        elif isinstance(obj, np.ndarray):
            children, child_required = (obj.ravel() if obj.dtype.hasobject else ()), required
        elif isinstance(obj, (list, tuple)):
            children, child_required = obj, required
        elif isinstance(obj, dict):
            children, child_required = obj.values(), required
        elif isinstance(getattr(obj, "__dict__", None), dict) and not isinstance(obj, type):
            state = obj.__dict__
            n_in = state.get("n_features_in_")
            if isinstance(n_in, (int, np.integer)) and not isinstance(n_in, bool):
                if required is not None and int(n_in) != required:
                    problem = (f"a member of an ensemble expects {int(n_in)} features where the "
                               f"ensemble has {required}")
                width = int(n_in)
            if type(obj).__module__.startswith(("lightgbm.", "xgboost.")):
                booster = _booster_problem(obj, state)
                if booster:
                    raise InputError(f"{shown} was refused: {booster}")
            problem = problem or _estimator_problem(obj, state, width)
            if _calls_members_unchecked(obj):
                child_required = width
            children = state.values()
        if problem:
            raise InputError(f"{shown} was refused: {problem}, which would make scikit-learn's "
                             "compiled code read or write outside its memory")
        todo.extend((child, width, child_required) for child in children)


def _imported(module: str, name: str):
    """``module.name`` if ``module`` is already imported, else None. An object of a class can only
    exist once the class's module has been imported (unpickling imports what the file names), so
    a check for such objects need not import the module itself."""
    return getattr(sys.modules.get(module), name, None)


def _calls_members_unchecked(obj) -> bool:
    module = type(obj).__module__
    return module.startswith(("sklearn.ensemble._forest", "sklearn.ensemble._gb"))


def _as_int(value):
    return int(value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) \
        else None


def _booster_problem(obj, state: dict) -> str | None:
    """A LightGBM / XGBoost wrapper whose sizes disagree with its (already checked) booster."""
    name = type(obj).__name__
    try:
        if name == "LGBMClassifier" and state.get("_Booster") is not None:
            booster = state["_Booster"]
            n_class = _as_int(state.get("_n_classes"))
            classes = state.get("_classes")
            if booster.num_feature() != _as_int(state.get("_n_features")) or n_class is None \
                    or booster._Booster__num_class != (1 if n_class <= 2 else n_class) \
                    or (classes is not None and len(classes) != n_class):
                return "a LightGBM classifier whose sizes disagree with its booster"
        elif name == "XGBClassifier" and state.get("_Booster") is not None:
            n_class = _as_int(state.get("n_classes_"))
            param = json.loads(state["_Booster"].save_config())["learner"]["learner_model_param"]
            if n_class is None or int(param["num_class"]) != (0 if n_class <= 2 else n_class):
                return "an XGBoost classifier whose classes disagree with its booster"
    except (AttributeError, KeyError, TypeError, ValueError):
        return f"a {name} whose booster cannot be read"
    return None


def _estimator_problem(obj, state: dict, width) -> str | None:
    name = type(obj).__name__
    module = type(obj).__module__
    if module.startswith("sklearn.ensemble._gb") and "estimators_" in state:
        est = state["estimators_"]
        classes = state.get("classes_")
        n_classes = _as_int(state.get("n_classes_"))
        if n_classes is None and classes is not None:
            n_classes = len(classes)
        per_stage = 1 if n_classes is None or n_classes <= 2 else n_classes
        if "Regressor" in name:
            per_stage = 1
        if not (isinstance(est, np.ndarray) and est.ndim == 2 and est.shape[1] == per_stage):
            return (f"a gradient boosting model whose estimators_ has shape "
                    f"{getattr(est, 'shape', '?')} where {per_stage} column(s) are expected")
        n_est = _as_int(state.get("n_estimators_"))
        if n_est is not None and est.shape[0] != n_est:
            return "a gradient boosting model whose estimators_ disagrees with n_estimators_"
        for tree in est.ravel():
            if type(tree).__name__ != "DecisionTreeRegressor":
                return "a gradient boosting stage that is not a regression tree"
            inner = getattr(tree, "tree_", None)
            if inner is None or int(inner.n_outputs) != 1:
                return "a gradient boosting stage with more than one output"
    if module.startswith("sklearn.ensemble._hist_gradient_boosting") and "_predictors" in state:
        per_iter = _as_int(state.get("n_trees_per_iteration_"))
        classes = state.get("classes_")
        if classes is not None and per_iter is not None \
                and per_iter != (1 if len(classes) <= 2 else len(classes)):
            return "a HistGradientBoosting model whose trees per iteration disagree with classes_"
        rows = state["_predictors"]
        if not isinstance(rows, list) or any(
                not isinstance(r, list) or (per_iter is not None and len(r) != per_iter)
                for r in rows):
            return "a HistGradientBoosting model whose predictors disagree with its classes"
    if "_n_support" in state and "support_vectors_" in state:
        return _libsvm_problem(state, width)
    if "_fit_X" in state and module.startswith("sklearn.neighbors"):
        fit_x = state["_fit_X"]
        if isinstance(fit_x, np.ndarray) and (fit_x.ndim != 2 or
                                              (width is not None and fit_x.shape[1] != width)):
            return "a nearest-neighbours model whose training data disagrees with its width"
    return None


def _libsvm_problem(state: dict, width) -> str | None:
    sv = state.get("support_vectors_")
    n_support = state.get("_n_support")
    support = state.get("support_")
    dual = state.get("_dual_coef_")
    intercept = state.get("_intercept_")
    prob_a, prob_b = state.get("_probA"), state.get("_probB")
    arrays = (sv, n_support, support, dual, intercept, prob_a, prob_b)
    if not all(isinstance(a, np.ndarray) for a in arrays):
        return None if not isinstance(sv, np.ndarray) else "an SVM with missing support arrays"
    if sv.ndim != 2 or n_support.ndim != 1 or n_support.dtype.kind not in "iu":
        return "an SVM whose support arrays have the wrong dimensions"
    n_class, n_sv = n_support.shape[0], sv.shape[0]
    n_pairs = n_class * (n_class - 1) // 2
    shape_fit = state.get("shape_fit_")
    ok = (n_class >= 2 and bool(np.all(n_support >= 0)) and int(n_support.sum()) == n_sv
          and support.shape == (n_sv,) and dual.shape == (n_class - 1, n_sv)
          and intercept.shape == (n_pairs,)
          and prob_a.shape in ((0,), (n_pairs,)) and prob_b.shape == prob_a.shape)
    if ok and width is not None:
        ok = sv.shape[1] == width or (sv.shape[1] == 0)
    if ok and isinstance(shape_fit, tuple) and len(shape_fit) == 2 and n_sv:
        ok = bool(np.all((support >= 0) & (support < int(shape_fit[0]))))
        if sv.shape[1]:
            ok = ok and int(shape_fit[1]) == sv.shape[1]
    classes = state.get("classes_")
    if ok and classes is not None and len(classes) != n_class:
        ok = False
    return None if ok else "an SVM whose support vectors, coefficients and counts disagree"


def _binary_tree_problem(tree, width) -> str | None:
    try:
        (data, idx, node_data, bounds, _leaf, n_levels, n_nodes, *_rest, metric,
         weight) = tree.__getstate__()
    except Exception:  # an uninitialised tree: scikit-learn cannot use it either
        return "a nearest-neighbours tree with no data"
    bad = "a nearest-neighbours tree whose indices or shapes are out of range"
    if not all(isinstance(a, np.ndarray) for a in (data, idx, node_data, bounds)) \
            or data.ndim != 2 or idx.shape != (data.shape[0],):
        return bad
    n, d = data.shape
    if width is None or d != width or n_nodes != node_data.shape[0] \
            or n_nodes != 2 ** n_levels - 1 or n_levels < 1 or n_levels > 62:
        return bad
    if bounds.ndim != 3 or bounds.shape[1:] != (n_nodes, d) or bounds.shape[0] not in (1, 2):
        return bad
    if weight is not None and (not isinstance(weight, np.ndarray) or weight.shape != (n,)):
        return bad
    if n and not bool(np.all((idx >= 0) & (idx < n))):
        return bad
    names = node_data.dtype.names or ()
    if not {"idx_start", "idx_end", "is_leaf"} <= set(names):
        return bad
    start, end = node_data["idx_start"], node_data["idx_end"]
    inner = np.flatnonzero(node_data["is_leaf"] == 0)
    if not bool(np.all((start >= 0) & (start <= end) & (end <= n))) \
            or (inner.size and int(inner.max()) * 2 + 2 >= n_nodes):
        return bad
    try:
        _p, vec, mat = metric.__getstate__()[:3]
        for arr in (vec, mat):
            if isinstance(arr, np.ndarray) and arr.size > 1 and d not in arr.shape:
                return bad
    except Exception:
        pass
    return None


def _links_ok(left, right, feature, inner, width) -> bool:
    n = left.shape[0]
    at = np.arange(n)[inner]
    left, right, feature = left[inner], right[inner], feature[inner]
    return bool(np.all((left > at) & (left < n) & (right > at) & (right < n))
                and np.all((feature >= 0) & (feature < width)))


def _tree_problem(tree, width) -> str | None:
    bad = "a decision tree whose node or feature indices are out of range"
    if width is None:
        return "a decision tree with no known input width (no n_features_in_)"
    if int(tree.n_features) != width:
        return (f"a decision tree built for {int(tree.n_features)} features inside an estimator "
                f"that takes {width}")
    n = int(tree.node_count)
    if n < 1 or n > int(tree.capacity):
        return bad
    left = np.asarray(tree.children_left, dtype=np.int64)
    right = np.asarray(tree.children_right, dtype=np.int64)
    leaf = left == -1
    if left.shape != (n,) or right.shape != (n,) or not np.array_equal(leaf, right == -1):
        return bad
    if not _links_ok(left, right, np.asarray(tree.feature, dtype=np.int64), ~leaf, width):
        return bad
    return None


def _predictor_problem(predictor, width) -> str | None:
    from sklearn.ensemble._hist_gradient_boosting.common import PREDICTOR_RECORD_DTYPE

    bad = "a HistGradientBoosting tree whose node or feature indices are out of range"
    nodes = getattr(predictor, "nodes", None)
    if width is None:
        return "a HistGradientBoosting tree with no known input width"
    if not isinstance(nodes, np.ndarray) or nodes.ndim != 1 or nodes.shape[0] < 1:
        return bad
    if nodes.dtype != PREDICTOR_RECORD_DTYPE or not nodes.flags.c_contiguous:
        return "a HistGradientBoosting tree whose node records are not scikit-learn's layout"
    inner = nodes["is_leaf"] == 0
    if not _links_ok(nodes["left"].astype(np.int64), nodes["right"].astype(np.int64),
                     nodes["feature_idx"].astype(np.int64), inner, width):
        return bad
    categorical = inner & (nodes["is_categorical"] != 0)
    if not categorical.any():
        return None
    raw = getattr(predictor, "raw_left_cat_bitsets", None)
    binned = getattr(predictor, "binned_left_cat_bitsets", None)
    if not (isinstance(raw, np.ndarray) and isinstance(binned, np.ndarray)):
        return bad
    n_sets = min(len(raw), len(binned))
    at = nodes["bitset_idx"][categorical].astype(np.int64)
    if not bool(np.all((at >= 0) & (at < n_sets))):
        return bad
    return None
