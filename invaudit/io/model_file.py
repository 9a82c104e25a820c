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

import copyreg
import functools
import hashlib
import inspect
import io
import lzma
import math
import pickle
import pickletools
import re
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, RefusedModelError
from ._allowlist import ALLOWED, BOUND_METHODS, MODULE_ALIASES

MODEL_SUFFIXES = (".joblib", ".pkl", ".pickle")

_WRAPPER = ("joblib.numpy_pickle", "NumpyArrayWrapper")
_GETATTR = ("builtins", "getattr")
_DTYPE = ("numpy", "dtype")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class LoadedModel:
    """A fitted classifier read from a model file.

    Attributes
    ----------
    estimator : object
        The unpickled scikit-learn classifier (or Pipeline ending in one).
    path : str
        The file, as the user named it.
    sha256 : str
        Hex digest of the file's bytes (the bytes that were loaded).
    trusted : bool
        True when loaded with ``trust=True`` (no allowlist).
    warnings : tuple of str
        One-line warnings for the user: ``--trust`` was used, the scikit-learn version differs.
    """

    estimator: object
    path: str
    sha256: str
    trusted: bool
    warnings: tuple[str, ...]


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
               expect: str = "classifier") -> LoadedModel:
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
    data = _read_file(p, shown)
    digest = hashlib.sha256(data).hexdigest()
    if expected is not None and digest != expected:
        raise InputError(f"{shown} has sha256 {digest}, expected {expected}")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimator = _load_trusted(data, shown) if trust else _load_restricted(data, shown)
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
    _check_tree_nodes(estimator, shown)
    return LoadedModel(estimator=estimator, path=shown, sha256=digest, trusted=bool(trust),
                       warnings=tuple(notes))


# --------------------------------------------------------------------------------------------
# reading bytes


def _expected_digest(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    text = str(sha256).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise InputError(f"--sha256 must be 64 hexadecimal digits, got {sha256!r}")
    return text


def _read_file(p: Path, shown: str) -> bytes:
    # Read once: the digest, the scan and the load all see the same bytes.
    try:
        with open(p, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise InputError(f"model file {shown} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"model file {shown} is a directory, not a file") from None
    except OSError as exc:
        raise InputError(f"cannot read model file {shown}: {exc.strerror or exc}") from None


def _decompress(data: bytes, shown: str) -> bytes:
    """The pickle stream inside ``data``: joblib's compressors are detected by magic bytes."""
    # joblib's own detection, so whatever joblib.dump(compress=...) wrote is recognised.
    from joblib.compressor import _COMPRESSORS
    from joblib.numpy_pickle_utils import _detect_compressor

    kind = _detect_compressor(io.BytesIO(data))
    if kind == "not-compressed":
        return data
    if kind == "compat":
        raise InputError(f"{shown} was written by joblib older than 0.10, a format invaudit "
                         "does not read; save the model again with a current joblib")
    try:
        with _COMPRESSORS[kind].decompressor_file(io.BytesIO(data)) as fh:
            return fh.read()
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError, MemoryError) as exc:
        raise InputError(f"{shown} is {kind}-compressed but cannot be decompressed "
                         f"({_one_line(exc)})") from None


# --------------------------------------------------------------------------------------------
# the scan: list every global the stream asks for, executing nothing


class _Corrupt(Exception):
    """The stream is not a well-formed pickle (reason in args[0])."""


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
        return self.func.pair if isinstance(self.func, _Global) else None


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
        elif name in ("LIST", "FROZENSET"):
            stack.append(pop_mark())
        elif name == "TUPLE":
            stack.append(tuple(pop_mark()))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = [pop() for _ in range(n)][::-1]
            stack.append(tuple(items))
        elif name == "DICT":
            items = pop_mark()
            stack.append({_key(k): v for k, v in zip(items[::2], items[1::2])})
        elif name == "APPEND":
            value = pop()
            if stack and isinstance(stack[-1], list):
                stack[-1].append(value)
        elif name in ("APPENDS", "ADDITEMS"):
            items = pop_mark()
            if stack and isinstance(stack[-1], list):
                stack[-1].extend(items)
        elif name == "SETITEM":
            value, key = pop(), pop()
            if stack and isinstance(stack[-1], dict):
                stack[-1][_key(key)] = value
        elif name == "SETITEMS":
            items = pop_mark()
            if stack and isinstance(stack[-1], dict):
                stack[-1].update({_key(k): v for k, v in zip(items[::2], items[1::2])})
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


def _key(k):
    try:
        hash(k)
    except TypeError:
        return _Opaque()
    return k


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
    if not (isinstance(value, _Call) and value.pair() == _DTYPE):
        raise _Corrupt("a joblib array wrapper has no dtype")
    dtype = np.dtype(*_concrete(value.args))
    if value.state is not None:
        dtype.__setstate__(_concrete(value.state))
    return dtype


def _concrete(value):
    """Turn a symbolic value made of constants and dtypes back into Python objects."""
    if value is None or isinstance(value, (bool, int, float, str, bytes, bytearray)):
        return value
    if isinstance(value, tuple):
        return tuple(_concrete(v) for v in value)
    if isinstance(value, list):
        return [_concrete(v) for v in value]
    if isinstance(value, dict):
        return {_concrete(k): _concrete(v) for k, v in value.items()}
    if isinstance(value, _Call) and value.pair() == _DTYPE:
        return _concrete_dtype(value)
    raise _Corrupt("a joblib array wrapper has an unreadable dtype")


def _checked_shape(shape) -> tuple:
    if not (isinstance(shape, tuple)
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise _Corrupt("a joblib array wrapper has an invalid shape")
    return shape


# --------------------------------------------------------------------------------------------
# the load: unpicklers whose find_class enforces the allowlist


class _RestrictedMixin:
    """``find_class`` that only returns allowlisted globals (and a restricted ``getattr``)."""

    _shown = ""

    def find_class(self, module, name):
        pair = (module, name)
        if pair not in ALLOWED:
            raise RefusedModelError(self._shown, [pair])
        if pair == _GETATTR:
            return self._bound_method
        real_module = MODULE_ALIASES.get(module, module)
        try:
            return super().find_class(real_module, name)
        except (ImportError, AttributeError):
            raise InputError(
                f"{self._shown} needs {module}.{name}, which this installation does not provide "
                "(was it pickled with another scikit-learn or numpy version?)"
            ) from None

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


class _RestrictedUnpickler(_RestrictedMixin, pickle.Unpickler):
    """Plain pickles (the C unpickler)."""

    def __init__(self, file, shown: str):
        super().__init__(file)
        self._shown = shown


class _RestrictedPyUnpickler(_RestrictedMixin, pickle._Unpickler):
    """A joblib object-dtype array's nested stream (pure Python: reads no further than STOP)."""

    def __init__(self, file, shown: str):
        super().__init__(file)
        self._shown = shown


@functools.cache
def _make_numpy_unpickler():
    # Deferred so that importing invaudit does not import joblib's persistence machinery.
    from joblib.numpy_pickle import NumpyArrayWrapper, NumpyUnpickler

    class _RestrictedNumpyUnpickler(_RestrictedMixin, NumpyUnpickler):
        """joblib files: arrays are read here, never by ``NumpyArrayWrapper.read``."""

        dispatch = NumpyUnpickler.dispatch.copy()

        def __init__(self, file, shown: str, size: int):
            NumpyUnpickler.__init__(self, shown, file, ensure_native_byte_order=True)
            self._shown = shown
            self._size = size

        def load_build(self):
            pickle._Unpickler.load_build(self)
            if type(self.stack[-1]) is NumpyArrayWrapper:
                self.stack[-1] = self._read_array(self.stack[-1])

        dispatch[pickle.BUILD[0]] = load_build

        def _read_array(self, wrapper) -> np.ndarray:
            dtype = getattr(wrapper, "dtype", None)
            shape = getattr(wrapper, "shape", None)
            order = getattr(wrapper, "order", None)
            if not isinstance(dtype, np.dtype) or order not in ("C", "F") \
                    or getattr(wrapper, "subclass", None) is not np.ndarray:
                raise _Corrupt("a joblib array wrapper is malformed")
            shape = _checked_shape(shape)
            frame = self._unframer.current_frame
            if frame is not None and frame.read(1):
                raise _Corrupt("array data starts inside a pickle frame")
            fh = self.file_handle
            if dtype.hasobject:
                array = _RestrictedPyUnpickler(fh, self._shown).load()
                if not (isinstance(array, np.ndarray) and array.dtype.hasobject
                        and array.shape == shape):
                    raise _Corrupt("a joblib object array does not match its description")
                return array
            if getattr(wrapper, "numpy_array_alignment_bytes", None) is not None:
                pad = fh.read(1)
                if len(pad) != 1 or len(fh.read(pad[0])) != pad[0]:
                    raise _Corrupt("array data is truncated")
            count = math.prod(shape)
            nbytes = count * dtype.itemsize
            if nbytes > self._size - fh.tell():
                raise _Corrupt("array data is truncated")
            if nbytes == 0:
                flat = np.empty(count, dtype=dtype)
            else:
                buf = bytearray(nbytes)
                if fh.readinto(buf) != nbytes:
                    raise _Corrupt("array data is truncated")
                flat = np.frombuffer(buf, dtype=dtype, count=count)
            array = flat.reshape(shape[::-1]).T if order == "F" else flat.reshape(shape)
            if not array.dtype.isnative:
                array = array.astype(array.dtype.newbyteorder("="))
            return array

    return _RestrictedNumpyUnpickler


def _load_restricted(data: bytes, shown: str):
    stream = _decompress(data, shown)
    try:
        scan = _scan(stream)
        problem = None
    except _Corrupt as exc:
        scan, problem = exc.result, exc.args[0]
    refused = [pair for pair in scan.requested if pair not in ALLOWED] + scan.pseudo
    if refused:
        raise RefusedModelError(shown, refused)
    if problem is not None:
        raise InputError(f"{shown} is not a readable model file (truncated or corrupt: {problem})")

    fh = io.BytesIO(stream)
    if scan.has_wrapper or _WRAPPER in scan.requested:
        unpickler = _make_numpy_unpickler()(fh, shown, len(stream))
    else:
        unpickler = _RestrictedUnpickler(fh, shown)
    return _guarded_load(unpickler.load, shown)


def _load_trusted(data: bytes, shown: str):
    import joblib

    return _guarded_load(lambda: joblib.load(io.BytesIO(data)), shown)


def _guarded_load(load, shown: str):
    try:
        return load()
    except InputError:
        raise
    except _Corrupt as exc:
        raise InputError(f"{shown} is not a readable model file (truncated or corrupt: "
                         f"{exc.args[0]})") from None
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
    from sklearn.pipeline import Pipeline
    from sklearn.utils.validation import check_is_fitted

    final, label = estimator, type(estimator).__name__
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


def _check_tree_nodes(estimator, shown: str) -> None:
    """Refuse decision trees whose node links or feature indices point outside their arrays.

    scikit-learn's compiled tree code (``Tree.predict``, HistGradientBoosting's predictors) trusts
    the unpickled node arrays and reads memory wherever a child or feature index points: an
    allowlisted but crafted file can crash the process. Every ``Tree`` and ``TreePredictor`` in the
    object graph is checked: children come after their parent and inside the node array (which
    also rules out cycles), and split features are below the input width — the smallest
    ``n_features_in_`` of the estimators enclosing the tree (the one that calls the tree code
    validates its input against its own ``n_features_in_``).
    """
    from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor
    from sklearn.tree._tree import Tree

    todo = [(estimator, None)]
    seen: set = set()
    while todo:
        obj, width = todo.pop()
        if (id(obj), width) in seen:
            continue
        seen.add((id(obj), width))
        if isinstance(obj, Tree):
            ok, children = _tree_ok(obj, width), ()
        elif isinstance(obj, TreePredictor):
            ok, children = _predictor_ok(obj, width), ()
        elif isinstance(obj, np.ndarray):
            ok, children = True, (obj.ravel() if obj.dtype.hasobject else ())
        elif isinstance(obj, (list, tuple)):
            ok, children = True, obj
        elif isinstance(obj, dict):
            ok, children = True, obj.values()
        elif isinstance(getattr(obj, "__dict__", None), dict) and not isinstance(obj, type):
            n_in = obj.__dict__.get("n_features_in_")
            if isinstance(n_in, (int, np.integer)) and not isinstance(n_in, bool):
                width = int(n_in) if width is None else min(width, int(n_in))
            ok, children = True, obj.__dict__.values()
        else:
            ok, children = True, ()
        if not ok:
            raise InputError(f"{shown} holds a decision tree whose node or feature indices are "
                             "out of range (scikit-learn would read outside its memory); "
                             "it was refused")
        todo.extend((child, width) for child in children)


def _links_ok(left, right, feature, inner, width) -> bool:
    n = left.shape[0]
    at = np.arange(n)[inner]
    left, right, feature = left[inner], right[inner], feature[inner]
    return bool(np.all((left > at) & (left < n) & (right > at) & (right < n))
                and np.all((feature >= 0) & (feature < width)))


def _tree_ok(tree, width) -> bool:
    n = int(tree.node_count)
    if n < 1 or n > int(tree.capacity):
        return False
    left = np.asarray(tree.children_left, dtype=np.int64)
    right = np.asarray(tree.children_right, dtype=np.int64)
    leaf = left == -1
    if left.shape != (n,) or right.shape != (n,) or not np.array_equal(leaf, right == -1):
        return False
    bound = int(tree.n_features) if width is None else min(int(tree.n_features), width)
    return _links_ok(left, right, np.asarray(tree.feature, dtype=np.int64), ~leaf, bound)


_PREDICTOR_FIELDS = ("left", "right", "is_leaf", "feature_idx", "is_categorical", "bitset_idx")


def _predictor_ok(predictor, width) -> bool:
    nodes = getattr(predictor, "nodes", None)
    if width is None or not isinstance(nodes, np.ndarray) or nodes.ndim != 1 \
            or nodes.shape[0] < 1 or not set(_PREDICTOR_FIELDS) <= set(nodes.dtype.names or ()):
        return False
    inner = nodes["is_leaf"] == 0
    if not _links_ok(nodes["left"].astype(np.int64), nodes["right"].astype(np.int64),
                     nodes["feature_idx"].astype(np.int64), inner, width):
        return False
    categorical = inner & (nodes["is_categorical"] != 0)
    if not categorical.any():
        return True
    n_sets = min(len(getattr(predictor, "raw_left_cat_bitsets", ())),
                 len(getattr(predictor, "binned_left_cat_bitsets", ())))
    at = nodes["bitset_idx"][categorical].astype(np.int64)
    return bool(np.all((at >= 0) & (at < n_sets)))
