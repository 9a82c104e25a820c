"""The light load: a model file's fitted state read without importing scikit-learn (issue 16).

Importing scikit-learn takes 2.6-3.0 s of CPU (it imports scipy.stats); unpickling a model needs
it only to build objects whose state the file already holds. For the classes in
:data:`LIGHT_CLASSES` (linear classifiers and the affine steps the linear form folds in front of
them) and :data:`NONLINEAR_CLASSES` (MLPClassifier; decision trees and random / extra-trees
forests, whose compiled ``Tree`` becomes a :class:`LightTree`) the restricted unpickler of
:mod:`invaudit.io.model_file` is run with a different ``find_class``: a scikit-learn class
becomes a :class:`LightObject` (its class path and the dict its ``__setstate__`` would receive),
numpy arrays are real arrays (checked exactly as in the full load), and joblib's array wrapper is
read here, so neither scikit-learn nor joblib is imported.

The light load *declines* (returns None) whenever it is not sure to describe the same object
the full load would build: a class outside the list, a call it does not model, a state that is
not a plain dict, a Tree whose node records are not in this scikit-learn's layout, or a
``_sklearn_version`` other than the installed scikit-learn's (read with
:mod:`importlib.metadata`, no import). The caller then does the full load, unchanged. Nothing
here ever calls scikit-learn code; the light objects are data.
"""

from __future__ import annotations

import functools
import io
import pickle

from ._allowlist import ALLOWED

__all__ = ["LIGHT_CLASSES", "NONLINEAR_CLASSES", "LightObject", "LightTree", "class_name", "class_path",
           "light_load", "light_eligible"]

_PIPELINE = ("sklearn.pipeline", "Pipeline")

#: scikit-learn classes the light load builds as :class:`LightObject`. Each is read by
#: :mod:`invaudit.models.linear` through plain attributes of its saved state only (no property,
#: no method): tests/io/test_light_load.py checks that for every attribute the linear form reads.
LIGHT_CLASSES = frozenset({
    _PIPELINE,
    ("sklearn.preprocessing._data", "StandardScaler"),
    ("sklearn.preprocessing._data", "MinMaxScaler"),
    ("sklearn.preprocessing._data", "MaxAbsScaler"),
    ("sklearn.preprocessing._data", "RobustScaler"),
    ("sklearn.decomposition._pca", "PCA"),
    ("sklearn.linear_model._logistic", "LogisticRegression"),
    ("sklearn.linear_model._logistic", "LogisticRegressionCV"),
    ("sklearn.discriminant_analysis", "LinearDiscriminantAnalysis"),
    ("sklearn.svm._classes", "LinearSVC"),
    ("sklearn.linear_model._stochastic_gradient", "SGDClassifier"),
    ("sklearn.linear_model._perceptron", "Perceptron"),
})

#: Networks and trees, read by :mod:`invaudit.models._light_nonlinear` (their fitted state is plain
#: arrays; a Tree's is its node records and values, :class:`LightTree`).
NONLINEAR_CLASSES = frozenset({
    ("sklearn.neural_network._multilayer_perceptron", "MLPClassifier"),
    ("sklearn.preprocessing._label", "LabelBinarizer"),
    ("sklearn.tree._classes", "DecisionTreeClassifier"),
    ("sklearn.tree._classes", "ExtraTreeClassifier"),
    ("sklearn.ensemble._forest", "RandomForestClassifier"),
    ("sklearn.ensemble._forest", "ExtraTreesClassifier"),
    ("sklearn.tree._tree", "Tree"),
})
_TREE = ("sklearn.tree._tree", "Tree")
_ALL_CLASSES = LIGHT_CLASSES | NONLINEAR_CLASSES

#: Compiled loss objects an SGD model keeps (``_loss_function_``), an MLP's optimiser and random
#: state: carried as opaque light objects with their constructor arguments, never built or read.
_OPAQUE_MODULES = ("sklearn.linear_model._sgd_fast", "sklearn._loss._loss",
                   "sklearn.neural_network._stochastic_optimizers", "numpy.random._pickle",
                   "numpy.random._mt19937")

# What else a light file may name: numpy's array, dtype and scalar reconstruction, joblib's
# array wrapper, and the helpers protocols 0-2 use for plain objects and bytes. The restricted
# unpickler handles each of these itself.
_HELPERS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
    ("joblib.numpy_pickle", "NumpyArrayWrapper"),
    ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
    ("_codecs", "encode"), ("__builtin__", "bytes"), ("builtins", "bytes"),
})
_WRAPPER = ("joblib.numpy_pickle", "NumpyArrayWrapper")


def _is_opaque(pair) -> bool:
    return pair in ALLOWED and str(pair[0]).startswith(_OPAQUE_MODULES)


def light_eligible(requested) -> bool:
    """Whether every global a scanned stream names can be read by the light load."""
    return bool(requested) and all(p in _ALL_CLASSES or p in _HELPERS or _is_opaque(p)
                                   for p in requested)


class LightObject:
    """A scikit-learn object as data: its class path, constructor arguments and saved state.

    Attributes of the state are readable as attributes (``obj.coef_``); a missing one raises
    AttributeError, as on the real object. Nothing here is callable.
    """

    __slots__ = ("module", "name", "args", "state")

    def __init__(self, pair, args=()):
        self.module, self.name = pair
        self.args = args
        self.state = None

    @property
    def pair(self) -> tuple:
        return (self.module, self.name)

    def __getattr__(self, attr):
        state = object.__getattribute__(self, "state")
        if isinstance(state, dict) and attr in state:
            return state[attr]
        raise AttributeError(attr)

    def __setstate__(self, state):  # BUILD: keep the dict as it is (checked in light_load)
        self.state = state

    def __repr__(self) -> str:
        return f"<light {self.module}.{self.name}>"


#: scikit-learn 1.9's Tree node record (``sklearn.tree._tree.NODE_DTYPE``); a light tree whose
#: nodes have another layout is declined (tests/io/test_light_load_nonlinear.py compares it).
TREE_NODE_DTYPE = {
    "names": ["left_child", "right_child", "feature", "threshold", "impurity", "n_node_samples",
              "weighted_n_node_samples", "missing_go_to_left"],
    "formats": ["<i8", "<i8", "<i8", "<f8", "<f8", "<i8", "<f8", "u1"],
    "offsets": [0, 8, 16, 24, 32, 40, 48, 56],
    "itemsize": 64,
}


class LightTree(LightObject):
    """A ``sklearn.tree._tree.Tree`` as data: the read-only attributes of the real one, as the same
    arrays (views of the saved node records and values, cut to ``node_count``)."""

    __slots__ = ()

    @property
    def n_features(self):
        return self.args[0]

    @property
    def n_classes(self):
        return self.args[1]

    @property
    def n_outputs(self):
        return self.args[2]

    @property
    def max_n_classes(self):
        return int(max(self.args[1]))

    @property
    def node_count(self):
        return self.state["node_count"]

    @property
    def capacity(self):
        return self.state["nodes"].shape[0]

    @property
    def max_depth(self):
        return self.state["max_depth"]

    def _field(self, name):
        return self.state["nodes"][name][:self.node_count]

    children_left = property(lambda self: self._field("left_child"))
    children_right = property(lambda self: self._field("right_child"))
    feature = property(lambda self: self._field("feature"))
    threshold = property(lambda self: self._field("threshold"))
    impurity = property(lambda self: self._field("impurity"))
    n_node_samples = property(lambda self: self._field("n_node_samples"))
    weighted_n_node_samples = property(lambda self: self._field("weighted_n_node_samples"))
    missing_go_to_left = property(lambda self: self._field("missing_go_to_left"))

    @property
    def value(self):
        return self.state["values"][:self.node_count]


def _tree_state_ok(tree: LightTree) -> bool:
    """Whether a light tree's saved state is one ``Tree.__setstate__`` takes as it is (the node
    records in this scikit-learn's layout, values float64 of the declared shape)."""
    import numpy as np

    state = tree.state
    if not isinstance(state, dict) or set(state) != {"max_depth", "node_count", "nodes", "values"}:
        return False
    nodes, values, count = state["nodes"], state["values"], state["node_count"]
    if not (isinstance(nodes, np.ndarray) and nodes.ndim == 1 and nodes.dtype == np.dtype(TREE_NODE_DTYPE)
            and nodes.flags.c_contiguous and isinstance(values, np.ndarray)
            and values.dtype == np.float64 and values.flags.c_contiguous):
        return False
    if not (isinstance(count, int) and 1 <= count <= nodes.shape[0]):
        return False
    return values.shape == (nodes.shape[0], int(tree.n_outputs), tree.max_n_classes)


def class_path(obj) -> tuple:
    """``(module, qualname)`` of an object's class; a light object's recorded class."""
    if isinstance(obj, LightObject):
        return obj.pair
    kind = type(obj)
    return (kind.__module__, kind.__qualname__)


def class_name(obj) -> str:
    """``type(obj).__name__``; a light object's recorded class name."""
    return obj.name if isinstance(obj, LightObject) else type(obj).__name__


class _Decline(Exception):
    """The light load does not model this stream: do the full load."""


class _LightClass:
    """What ``find_class`` returns for a light class: a marker, never a real class."""

    __slots__ = ("pair",)

    def __init__(self, pair):
        self.pair = pair


class _Wrapper:
    """joblib's NumpyArrayWrapper, as data (its BUILD state lands in ``__dict__``)."""


@functools.cache
def _light_unpickler():
    from . import model_file as mf

    class _LightUnpickler(mf._RestrictedMixin, pickle._Unpickler):
        dispatch = dict(pickle._Unpickler.dispatch)

        def __init__(self, file, shown: str, size: int):
            pickle._Unpickler.__init__(self, file)
            self._fh = file
            self._init_checks(shown, size)
            self.objects: list = []

        def find_class(self, module, name):
            pair = (module, name)
            if pair in _ALL_CLASSES or _is_opaque(pair):
                return _LightClass(pair)
            if pair == _WRAPPER:
                return _Wrapper
            if pair not in _HELPERS:
                raise _Decline(f"{module}.{name}")
            return mf._RestrictedMixin.find_class(self, module, name)

        def _call(self, func, args, kwargs=None, *, new=False):
            if isinstance(func, _LightClass):
                if kwargs or not isinstance(args, tuple):
                    raise _Decline("a call with keyword arguments")
                if func.pair == _TREE and not new:  # Tree(n_features, n_classes, n_outputs)
                    mf._check_tree_args(args)
                    obj = LightTree(func.pair, args)
                elif new and not args and func.pair != _TREE:
                    obj = LightObject(func.pair)
                elif _is_opaque(func.pair) and not new:
                    obj = LightObject(func.pair, args)
                else:
                    raise _Decline("a scikit-learn class called with arguments")
                self.objects.append(obj)
                return obj
            if func is _Wrapper:
                if not new or args or kwargs:
                    raise _Decline("joblib's array wrapper called with arguments")
                return _Wrapper()
            return mf._RestrictedMixin._call(self, func, args, kwargs, new=new)

        def _copyreg_reconstructor(self, cls, base, state):
            if isinstance(cls, _LightClass):  # protocols 0-1: object.__new__(cls)
                if base is not object or state is not None:
                    raise _Decline("copy_reg._reconstructor with a base other than object")
                obj = LightObject(cls.pair)
                self.objects.append(obj)
                return obj
            return mf._RestrictedMixin._copyreg_reconstructor(self, cls, base, state)

        def _instantiate(self, klass, args):  # INST and OBJ: not written by protocols >= 2
            raise _Decline("an INST or OBJ opcode")

        def load_build(self):
            self._checked_build(pickle._Unpickler.dispatch[pickle.BUILD[0]])
            top = self.stack[-1]
            if type(top) is _Wrapper:
                w = top.__dict__
                self.stack[-1] = mf._read_wrapped_array(
                    self, self._fh, dtype=w.get("dtype"), shape=w.get("shape"), order=w.get("order"),
                    subclass=w.get("subclass"), aligned=w.get("numpy_array_alignment_bytes") is not None,
                    nested=self._nested)

        def _nested(self, fh):  # an object array's elements: read alike, their objects checked alike
            inner = _light_unpickler()(fh, self._shown, self._size)
            value = inner.load()
            self.objects.extend(inner.objects)
            return value

    mf._install_checks(_LightUnpickler)
    _LightUnpickler.dispatch[pickle.BUILD[0]] = _LightUnpickler.load_build
    return _LightUnpickler


@functools.cache
def installed_sklearn_version() -> str | None:
    """The installed scikit-learn's version, from its metadata (nothing is imported).

    Read from the name of the one ``scikit_learn-<version>.dist-info`` folder beside the package
    ``find_spec`` locates (``importlib.metadata`` costs ~0.03 s of imports at every start);
    anything else (no folder, several, an unusual layout) asks ``importlib.metadata``."""
    import importlib.util
    import os

    try:
        spec = importlib.util.find_spec("sklearn")
        where = list(spec.submodule_search_locations or ()) if spec is not None else []
        if len(where) == 1:
            site = os.path.dirname(os.path.abspath(where[0]))
            found = [n for n in os.listdir(site)
                     if n.startswith("scikit_learn-") and n.endswith(".dist-info")]
            if len(found) == 1:
                return found[0][len("scikit_learn-"):-len(".dist-info")]
    except (ImportError, OSError, ValueError):
        pass
    from importlib import metadata

    try:
        return metadata.version("scikit-learn")
    except metadata.PackageNotFoundError:  # pragma: no cover - a core dependency
        return None


def light_load(stream: bytes, shown: str, size: int):
    """The root :class:`LightObject` of a pickle stream, or None when the light load declines.

    ``stream`` is the (decompressed) pickle that the scan already read and allowed. Errors of any
    kind decline: the full load then reads the same stream and reports them as it always has.
    """
    version = installed_sklearn_version()
    if version is None:
        return None
    unpickler = _light_unpickler()(io.BytesIO(stream), shown, size)
    try:
        root = unpickler.load()
    except Exception:  # _Decline, or anything the full load will report in its own words
        return None
    if type(root) is not LightObject:
        return None
    for obj in unpickler.objects:
        if _is_opaque(obj.pair):  # a compiled loss object: carried, never read
            continue
        if type(obj) is LightTree:  # no version in a Tree's state; its layout is checked instead
            if not _tree_state_ok(obj):
                return None
            continue
        state = obj.state
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            return None
        # BaseEstimator.__setstate__ pops the version (warning when it differs) and updates the
        # dict: the light object holds exactly what the real one would, for this version only.
        if state.pop("_sklearn_version", None) != version:
            return None
    return root
