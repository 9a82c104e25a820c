"""Hostile model files and suites (issue 14), built at test time: nothing opaque is committed.

Every file here is made only of names on the allowlist (or is not a pickle at all), so the
allowlist alone does not stop it: each one crashed, hung or exhausted the machine before the
loader checked dtypes, array sizes, shared structure, decompressed sizes, file kinds and the
fitted state. ``build(folder)`` writes them all and returns ``{name: path}``.

Run as ``python attack_corpus.py --worker``, this file is also the sandboxed loader the tests
drive: it reads one path per line on stdin, loads it with ``load_model`` and answers one JSON
line per path (``{"status": "ok"|"refused"|"error", "message", "seconds"}``). The tests start it
under an address-space limit, so a file that would allocate gigabytes fails there, not on the
machine, and a signal or a hang is seen as such.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import pickle
import select
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np

MEMORY_LIMIT = int(1.5 * (1 << 30))
SECONDS = 10.0


# --------------------------------------------------------------------------------------------
# pieces whose __reduce__ emits exactly the calls an attacker would write

class _Dtype:
    """numpy.dtype(spec, False, True) whose state is set to ``state`` (BUILD)."""

    def __init__(self, spec, state):
        self.spec, self.state = spec, state

    def __reduce__(self):
        return np.dtype, (self.spec, False, True), self.state


def _hidden_object_dtype():
    # a V8 record whose only field is an object, with flags that claim no references
    return _Dtype("V8", (3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 0))


def _offset_outside_dtype():
    return _Dtype("V8", (3, "|", None, ("a",), {"a": (np.dtype("<f8"), 4096)}, 8, 1, 0))


class _Reconstructed:
    """numpy._core.multiarray._reconstruct(ndarray, (0,), b'b') then __setstate__."""

    def __init__(self, shape, dtype, raw, initial=(0,)):
        self.shape, self.dtype, self.raw, self.initial = shape, dtype, raw, initial

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        return (_reconstruct, (np.ndarray, self.initial, b"b"),
                (1, self.shape, self.dtype, False, self.raw))


class _FromBuffer:
    """Protocol 5's numpy._core.numeric._frombuffer(buffer, dtype, shape, order)."""

    def __init__(self, raw, dtype, shape):
        self.raw, self.dtype, self.shape = raw, dtype, shape

    def __reduce__(self):
        from numpy._core.numeric import _frombuffer

        return _frombuffer, (self.raw, self.dtype, self.shape, "C")


class _NdarrayCall:
    """numpy.ndarray(shape): allocates whatever the shape says."""

    def __init__(self, shape):
        self.shape = shape

    def __reduce__(self):
        return np.ndarray, (self.shape,)


class _TreeCall:
    """sklearn.tree._tree.Tree(n_features, n_classes, n_outputs) with a given state."""

    def __init__(self, n_features, n_classes, n_outputs, state):
        self.args = (n_features, n_classes, n_outputs)
        self.state = state

    def __reduce__(self):
        from sklearn.tree._tree import Tree

        return Tree, self.args, self.state


# --------------------------------------------------------------------------------------------
# fitted models to poison

def _data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 0.5)
    return X, y


def _logreg():
    from sklearn.linear_model import LogisticRegression

    X, y = _data()
    return LogisticRegression().fit(X, y)


def _write_pickle(obj, path, protocol=4):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def _joblib_with_dtype(est, path, fake_dtype):
    """A joblib file whose classes_ wrapper carries ``fake_dtype``; the raw bytes follow."""
    from joblib.numpy_pickle import NumpyPickler

    target = est.classes_

    class Poisoning(NumpyPickler):
        def _create_array_wrapper(self, array):
            wrapper = super()._create_array_wrapper(array)
            if array is target:
                wrapper.dtype = fake_dtype
            return wrapper

    with open(path, "wb") as fh:
        Poisoning(fh, protocol=4).dump(est)
    return path


def _tuple_dag(levels=40):
    """(t, t) nested ``levels`` deep through the memo, used as a dict key: 2**levels to hash."""
    out = bytearray(b"\x80\x04")
    out += b")\x94"  # EMPTY_TUPLE, MEMOIZE -> memo 0
    for i in range(levels):
        out += b"h" + bytes([i]) + b"h" + bytes([i]) + b"\x86\x94"  # GET i, GET i, TUPLE2, MEMOIZE
    out += b"}" + b"h" + bytes([levels]) + b"N" + b"s" + b"."  # {t: None}
    return bytes(out)


def _list_dag(levels=40):
    """[x, x] nested ``levels`` deep through the memo, as the whole file: 2**levels to walk."""
    out = bytearray(b"\x80\x04]\x94")  # EMPTY_LIST, MEMOIZE -> memo 0
    for i in range(levels):
        out += b"]\x94(h" + bytes([i]) + b"h" + bytes([i]) + b"e"  # [memo i, memo i]
    return bytes(out + b".")


def _bomb(kind: str, size: int) -> bytes:
    """``size`` zero bytes compressed by ``kind``, cheaply: repeated members of 1 MiB."""
    mib = bytes(1 << 20)
    n = max(1, size >> 20)
    if kind == "gzip":
        return gzip.compress(mib, 9) * n
    if kind == "bz2":
        return bz2.compress(mib, 1) * n
    if kind == "xz":
        return lzma.compress(mib, preset=0) * n
    if kind == "zlib":  # joblib's zlib files are one zlib stream
        comp = zlib.compressobj(9)
        return b"".join([comp.compress(mib) for _ in range(n)] + [comp.flush()])
    raise ValueError(kind)


YAML_ALIAS_BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
model: m.joblib
checks: *i
"""

YAML_PYTHON_TAG = """\
model: !!python/object/apply:os.system ["echo pwned"]
checks:
  - kind: margin
    min_margin: 0
"""


def build(folder) -> dict:
    """Write every attack into ``folder``; returns {name: path} (model files and suites)."""
    from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier
    from sklearn.tree import DecisionTreeClassifier

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    X, y = _data()
    out = {}

    def model(name, suffix=".pkl"):
        path = folder / f"{name}{suffix}"
        out[name] = path
        return path

    # dtype tricks: a hidden object field, plain pickle / joblib raw bytes / protocol-5 buffer
    est = _logreg()
    est.classes_ = _Reconstructed((2,), _hidden_object_dtype(), bytes(16))
    _write_pickle(est, model("dtype-hidden-object"))
    _joblib_with_dtype(_logreg(), model("dtype-hidden-object-joblib", ".joblib"),
                       _hidden_object_dtype())
    est = _logreg()
    est.classes_ = _FromBuffer(bytes(16), _hidden_object_dtype(), (2,))
    _write_pickle(est, model("dtype-hidden-object-frombuffer"), protocol=5)
    est = _logreg()
    est.classes_ = _Reconstructed((2,), _offset_outside_dtype(), bytes(16))
    _write_pickle(est, model("dtype-offset-outside"))
    # ... and a HistGradientBoosting predictor whose node record puts 'left' past the record
    from sklearn.ensemble._hist_gradient_boosting.common import PREDICTOR_RECORD_DTYPE

    hgb = HistGradientBoostingClassifier(max_iter=2, random_state=0).fit(X, y % 2)
    predictor = hgb._predictors[0][0]
    nodes = predictor.nodes
    state = list(PREDICTOR_RECORD_DTYPE.__reduce__()[2])
    fields = dict(state[4])
    fields["left"] = (fields["left"][0], 4000)
    state[4] = fields
    predictor.nodes = _Reconstructed(nodes.shape, _Dtype("V56", tuple(state)), nodes.tobytes())
    _write_pickle(hgb, model("hgb-node-offset-outside"))

    # fitted state that compiled code trusts
    gb = GradientBoostingClassifier(n_estimators=3, max_depth=2, random_state=0).fit(X, y)
    gb.estimators_ = np.tile(gb.estimators_, (1, 1334))  # 3 columns -> 4,002
    _write_pickle(gb, model("gb-tiled-estimators"))
    tree = DecisionTreeClassifier(max_depth=2, random_state=0).fit(X, y)
    state = tree.tree_.__getstate__()
    state["nodes"] = state["nodes"].copy()
    state["nodes"]["feature"][0] = 5 * 10**8
    tree.tree_ = _TreeCall(10**9, np.array([3], dtype=np.intp), 1, state)
    del tree.n_features_in_
    _write_pickle(tree, model("tree-n-features-bomb"))

    # allocation bombs
    est = _logreg()
    est.coef_ = _NdarrayCall((1, 10**9))
    _write_pickle(est, model("ndarray-bomb"))
    est = _logreg()
    est.coef_ = _Reconstructed((0,), np.dtype("f8"), b"", initial=(1, 10**9))
    _write_pickle(est, model("reconstruct-bomb"))
    big = 160 << 20  # past the 128 MiB floor of the decompression ceiling
    for kind in ("gzip", "bz2", "xz", "zlib"):
        model(f"{kind}-bomb", ".joblib").write_bytes(_bomb(kind, big))

    # hangs
    model("tuple-dag-key").write_bytes(_tuple_dag())
    model("list-dag").write_bytes(_list_dag())
    fifo = model("fifo")
    os.mkfifo(fifo)

    suite_model = folder / "m.joblib"
    import joblib

    joblib.dump(_logreg(), suite_model)
    (folder / "alias-bomb.yaml").write_text(YAML_ALIAS_BOMB)
    (folder / "python-tag.yaml").write_text(YAML_PYTHON_TAG)
    out["yaml-alias-bomb"] = folder / "alias-bomb.yaml"
    out["yaml-python-tag"] = folder / "python-tag.yaml"
    return out


MODEL_ATTACKS = (
    "dtype-hidden-object", "dtype-hidden-object-joblib", "dtype-hidden-object-frombuffer",
    "dtype-offset-outside", "hgb-node-offset-outside", "gb-tiled-estimators",
    "tree-n-features-bomb", "ndarray-bomb", "reconstruct-bomb", "gzip-bomb", "bz2-bomb",
    "xz-bomb", "zlib-bomb", "tuple-dag-key", "list-dag", "fifo",
)


# --------------------------------------------------------------------------------------------
# the sandboxed loader

def _limit_memory():  # pragma: no cover - runs in the child
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


class Sandbox:
    """A child process that loads model files under an address-space limit, one per request."""

    def __init__(self):
        self.proc = None

    def _start(self):
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
                   MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
        root = Path(__file__).resolve().parents[2]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, cwd=root,
                                     preexec_fn=_limit_memory)
        self._ask("")  # wait until the imports are done

    def _ask(self, line: str, timeout: float = 120.0):
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.close()
            return {"status": "hang", "message": f"no answer in {timeout:.0f} s"}
        answer = self.proc.stdout.readline()
        if not answer:
            code = self.proc.wait()
            self.proc = None
            return {"status": "died", "message": f"exit code {code}"}
        return json.loads(answer)

    def load(self, path, timeout: float = 3 * SECONDS) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        return self._ask(str(path), timeout)

    def close(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def _worker():  # pragma: no cover - runs in the child
    import resource
    import warnings

    warnings.simplefilter("ignore")
    from invaudit.errors import InputError
    from invaudit.io.model_file import load_model
    import sklearn.ensemble  # noqa: F401  (import time is not load time)
    import sklearn.linear_model  # noqa: F401

    for line in sys.stdin:
        path = line.rstrip("\n")
        if not path:
            print(json.dumps({"status": "ready"}), flush=True)
            continue
        start = time.perf_counter()
        try:
            load_model(path)
            status, message = "ok", ""
        except InputError as exc:
            status, message = "refused", str(exc)
        except BaseException as exc:  # anything else breaks the exit-code contract
            status, message = "error", f"{type(exc).__name__}: {exc}"[:500]
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({"status": status, "message": message,
                          "seconds": time.perf_counter() - start, "max_rss": rss}), flush=True)


if __name__ == "__main__":  # pragma: no cover
    if "--worker" in sys.argv:
        _worker()
    else:
        for name, path in build(sys.argv[1] if len(sys.argv) > 1 else "attacks").items():
            print(name, path)
