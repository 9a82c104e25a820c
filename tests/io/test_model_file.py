"""Safe model loading: invaudit.io.model_file.

The reference for every round trip is the estimator itself, in memory, before it was written:
a loaded model must answer exactly as the original does. Refusals are checked by what did NOT
happen (a marker file the payload would have created does not exist) as well as by the names
reported.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import pickletools
import subprocess
import warnings

import joblib
import numpy as np
import pytest
import sklearn
import sklearn.base
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.ensemble import (ExtraTreesClassifier, GradientBoostingClassifier,
                              HistGradientBoostingClassifier, RandomForestClassifier)
from sklearn.linear_model import (LinearRegression, LogisticRegression, RidgeClassifier,
                                  SGDClassifier)
from sklearn.multiclass import OneVsRestClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import (FunctionTransformer, MaxAbsScaler, MinMaxScaler,
                                   PowerTransformer, QuantileTransformer, RobustScaler,
                                   StandardScaler)
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor, ExtraTreeClassifier
from threadpoolctl import threadpool_limits

from invaudit.errors import InputError, RefusedModelError
from invaudit.io.model_file import LoadedModel, _RestrictedUnpickler, file_sha256, load_model

# --------------------------------------------------------------------------------------------
# data and models

_rng = np.random.default_rng(0)
X = np.abs(_rng.normal(size=(90, 4))) + 0.5
_s = X[:, 0] - X[:, 1]
Y2 = (_s > np.median(_s)).astype(int)
Y3 = np.digitize(_s, np.quantile(_s, [1 / 3, 2 / 3]))
YS = np.array(["cat", "dog", "eel"])[Y3]
X_CAT = X.copy()
X_CAT[:, 3] = _rng.integers(0, 3, size=len(X))


def _mlp(activation, solver):
    return MLPClassifier(hidden_layer_sizes=(4,), activation=activation, solver=solver,
                         max_iter=30, random_state=0)


FAMILIES = {
    "logreg-binary": (lambda: LogisticRegression(), X, Y2),
    "logreg-multinomial": (lambda: LogisticRegression(), X, Y3),
    "logreg-string-labels": (lambda: LogisticRegression(), X, YS),
    "linearsvc": (lambda: LinearSVC(), X, Y3),
    "sgd-hinge": (lambda: SGDClassifier(random_state=0), X, Y2),
    "sgd-logloss-averaged": (lambda: SGDClassifier(loss="log_loss", average=True,
                                                   random_state=0), X, Y3),
    "ridge": (lambda: RidgeClassifier(), X, Y3),
    "lda": (lambda: LinearDiscriminantAnalysis(), X, Y3),
    "ovr": (lambda: OneVsRestClassifier(LogisticRegression()), X, Y3),
    "pipe-scalers-pca": (lambda: make_pipeline(StandardScaler(), MinMaxScaler(), MaxAbsScaler(),
                                               RobustScaler(), PCA(), LogisticRegression()), X, Y3),
    "pipe-power-quantile": (lambda: make_pipeline(PowerTransformer(), QuantileTransformer(
        n_quantiles=20), LogisticRegression()), X, Y2),
    "pipe-boxcox": (lambda: make_pipeline(PowerTransformer(method="box-cox"),
                                          LogisticRegression()), X, Y2),
    "pipe-log1p": (lambda: make_pipeline(FunctionTransformer(np.log1p, np.expm1),
                                         LogisticRegression()), X, Y3),
    "mlp-relu-adam": (lambda: _mlp("relu", "adam"), X, Y3),
    "mlp-tanh-sgd": (lambda: _mlp("tanh", "sgd"), X, Y2),
    "mlp-logistic-lbfgs": (lambda: _mlp("logistic", "lbfgs"), X, Y3),
    "mlp-identity-adam": (lambda: _mlp("identity", "adam"), X, Y2),
    "pipe-scaler-mlp": (lambda: make_pipeline(StandardScaler(), _mlp("relu", "sgd")), X, YS),
    "tree": (lambda: DecisionTreeClassifier(max_depth=4, random_state=0), X, Y3),
    "extra-tree": (lambda: ExtraTreeClassifier(random_state=0), X, Y2),
    "forest": (lambda: RandomForestClassifier(n_estimators=4, random_state=0), X, Y3),
    "forest-randomstate-oob": (lambda: RandomForestClassifier(
        n_estimators=6, oob_score=True, random_state=np.random.RandomState(1)), X, Y2),
    "extra-trees": (lambda: ExtraTreesClassifier(n_estimators=4, random_state=0), X, YS),
    "gb-binary": (lambda: GradientBoostingClassifier(n_estimators=4, random_state=0), X, Y2),
    "gb-multiclass-subsample": (lambda: GradientBoostingClassifier(
        n_estimators=4, subsample=0.7, max_features=2, random_state=0), X, Y3),
    "gb-exponential": (lambda: GradientBoostingClassifier(n_estimators=3, loss="exponential",
                                                          random_state=0), X, Y2),
    "hgb-binary": (lambda: HistGradientBoostingClassifier(max_iter=4, random_state=0), X, Y2),
    # categorical features (ColumnTransformer, partial, slice) and a scorer (bound method)
    "hgb-multiclass-categorical-scorer": (lambda: HistGradientBoostingClassifier(
        max_iter=6, categorical_features=[3], early_stopping=True, scoring="accuracy",
        validation_fraction=0.3, random_state=0), X_CAT, Y3),
}

_FITTED: dict = {}


def fitted(name):
    if name not in _FITTED:
        make, Xf, y = FAMILIES[name]
        # one thread: OpenMP spinning on a shared machine costs more than it saves on 90 rows
        with warnings.catch_warnings(), threadpool_limits(limits=1):
            warnings.simplefilter("ignore")  # ConvergenceWarning from tiny max_iter
            _FITTED[name] = (make().fit(Xf, y), Xf)
    return _FITTED[name]


def write(obj, path, how):
    """Write ``obj`` to ``path`` as a plain pickle or with joblib.dump."""
    if how == "pickle4":
        path.write_bytes(pickle.dumps(obj, protocol=4))
    elif how == "pickle5":
        path.write_bytes(pickle.dumps(obj, protocol=5))
    elif how == "joblib0":
        joblib.dump(obj, path, compress=0)
    elif how == "joblib3":
        joblib.dump(obj, path, compress=3)
    else:  # ("lzma", 3) and friends
        joblib.dump(obj, path, compress=how)
    return path


def answers(est, Xf):
    out = [np.asarray(est.predict(Xf))]
    for method in ("predict_proba", "decision_function"):
        if hasattr(est, method):
            out.append(np.asarray(getattr(est, method)(Xf)))
    return out


# --------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("how", ["pickle4", "pickle5", "joblib0", "joblib3"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_round_trips_and_answers_identically(tmp_path, family, how):
    est, Xf = fitted(family)
    suffix = ".joblib" if how.startswith("joblib") else ".pkl"
    path = write(est, tmp_path / f"model{suffix}", how)
    loaded = load_model(path)
    assert isinstance(loaded, LoadedModel)
    assert type(loaded.estimator) is type(est)
    assert loaded.trusted is False and loaded.warnings == ()
    assert loaded.path == str(path)
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    for got, want in zip(answers(loaded.estimator, Xf), answers(est, Xf), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("compress", [("zlib", 1), ("gzip", 3), ("bz2", 3), ("lzma", 3),
                                      ("xz", 3)])
def test_every_joblib_compressor_round_trips(tmp_path, compress):
    est, Xf = fitted("gb-multiclass-subsample")
    path = write(est, tmp_path / "model.joblib", compress)
    for got, want in zip(answers(load_model(path).estimator, Xf), answers(est, Xf), strict=True):
        np.testing.assert_array_equal(got, want)


def test_joblib_object_arrays_of_plain_values_round_trip(tmp_path):
    # feature names (an object array of str, what fitting on a DataFrame leaves) are kept
    est = LogisticRegression().fit(X, Y2)
    est.feature_names_in_ = np.array(["a", "b", "c", "d"], dtype=object)
    for how in ("joblib0", "joblib3", "pickle5"):
        got = load_model(write(est, tmp_path / f"{how}.joblib", how)).estimator
        assert got.feature_names_in_.dtype == object
        assert list(got.feature_names_in_) == ["a", "b", "c", "d"]


def test_pinned_digest_accepted_in_either_case(tmp_path):
    path = write(fitted("tree")[0], tmp_path / "m.pickle", "pickle4")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_sha256(path) == digest
    assert load_model(path, sha256=digest.upper()).sha256 == digest


def test_loaded_model_is_frozen(tmp_path):
    loaded = load_model(write(fitted("tree")[0], tmp_path / "m.pkl", "pickle4"))
    with pytest.raises(AttributeError):
        loaded.trusted = True


# --------------------------------------------------------------------------------------------
# refusals: nothing runs


class RunsShell:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class RunsEval:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w').close()",))


class RunsPopen:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (subprocess.Popen, (["touch", self.marker],))


class Harmless:
    """A module-level class: pickled by reference to this test module."""

    def __init__(self, value=1):
        self.value = value


class TaggedLogisticRegression(LogisticRegression):
    """A harmless custom classifier: refused by default, loaded with trust."""


SYSTEM = (os.system.__module__, "system")  # ("posix", "system") on Linux


def _malicious_model(payload):
    est = LogisticRegression().fit(X, Y2)
    est.extra_ = payload  # a fitted estimator carrying the payload among real arrays
    return est


@pytest.mark.parametrize("how", ["pickle4", "pickle5", "joblib0", "joblib3"])
@pytest.mark.parametrize("payload, name", [(RunsShell, SYSTEM), (RunsEval, ("builtins", "eval")),
                                           (RunsPopen, ("subprocess", "Popen"))])
def test_code_running_pickles_are_refused_before_anything_runs(tmp_path, how, payload, name):
    marker = tmp_path / "pwned"
    path = write(_malicious_model(payload(marker)), tmp_path / "evil.joblib", how)
    with pytest.raises(RefusedModelError) as info:
        load_model(path)
    assert name in info.value.names
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_all_offending_names_are_listed(tmp_path):
    marker = tmp_path / "pwned"
    payload = [RunsShell(marker), RunsEval(marker), RunsPopen(marker), Harmless()]
    path = write(_malicious_model(payload), tmp_path / "evil.pkl", "pickle4")
    with pytest.raises(RefusedModelError) as info:
        load_model(path)
    names = info.value.names
    assert {SYSTEM, ("builtins", "eval"), ("subprocess", "Popen")} <= set(names)
    assert (Harmless.__module__, "Harmless") in names
    assert not marker.exists()


def _short(text):
    data = text.encode()
    return b"\x8c" + bytes([len(data)]) + data  # SHORT_BINUNICODE


def _stack_global_system(marker, via_memo):
    """Hand-written protocol 4: posix.system via STACK_GLOBAL, optionally through the memo."""
    if via_memo:
        names = _short(SYSTEM[0]) + b"\x94" + _short(SYSTEM[1]) + b"\x94" + b"0" + b"0" \
            + b"h\x00" + b"h\x01"  # MEMOIZE both, POP both, BINGET them back
    else:
        names = _short(SYSTEM[0]) + _short(SYSTEM[1])
    return b"\x80\x04" + names + b"\x93" + _short(f"touch {marker}") + b"\x85R."


@pytest.mark.parametrize("via_memo", [False, True])
def test_stack_global_spelling_is_refused(tmp_path, via_memo):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    data = _stack_global_system(marker, via_memo)
    assert [op.name for op, _, _ in pickletools.genops(data)][-3:] == ["TUPLE1", "REDUCE", "STOP"]
    path.write_bytes(data)
    with pytest.raises(RefusedModelError) as info:
        load_model(path)
    assert info.value.names == [SYSTEM]
    assert not marker.exists()


def test_protocol0_global_opcode_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps(RunsShell(marker), protocol=0))
    with pytest.raises(RefusedModelError) as info:
        load_model(path)
    assert SYSTEM in info.value.names
    assert not marker.exists()


def test_truncated_malicious_stream_is_still_refused(tmp_path):
    marker = tmp_path / "pwned"
    data = pickle.dumps(_malicious_model(RunsShell(marker)), protocol=4)
    path = tmp_path / "evil.pkl"
    path.write_bytes(data[: data.index(b"touch")])  # cut right after the global is named
    with pytest.raises(RefusedModelError) as info:
        load_model(path)
    assert SYSTEM in info.value.names
    assert not marker.exists()


@pytest.mark.parametrize("how", ["joblib0", "joblib3"])
def test_object_array_inside_joblib_is_refused_when_its_elements_are(tmp_path, how):
    marker = tmp_path / "pwned"
    arr = np.empty(3, dtype=object)
    arr[:] = [RunsShell(marker), Harmless(), "fine"]
    path = write(_malicious_model(arr), tmp_path / "evil.joblib", how)
    with pytest.raises(RefusedModelError) as info:
        load_model(path)
    assert SYSTEM in info.value.names
    assert (Harmless.__module__, "Harmless") in info.value.names
    assert not marker.exists()


def test_find_class_refuses_even_without_the_scan(tmp_path):
    # defence in depth: the unpickler itself refuses, whatever the scan said
    marker = tmp_path / "pwned"
    data = _stack_global_system(marker, via_memo=False)
    with pytest.raises(RefusedModelError) as info:
        _RestrictedUnpickler(io.BytesIO(data), "x.pkl").load()
    assert info.value.names == [SYSTEM]
    assert not marker.exists()


class GetsAttribute:
    def __reduce__(self):
        return (getattr, (LogisticRegression(), "fit"))


def test_getattr_is_refused_except_for_the_listed_bound_method(tmp_path):
    path = write(_malicious_model(GetsAttribute()), tmp_path / "evil.pkl", "pickle4")
    with pytest.raises(RefusedModelError) as info:
        load_model(path)
    assert ("builtins", "getattr(LogisticRegression, 'fit')") in info.value.names
    with pytest.raises(RefusedModelError):  # the runtime check, without the scan
        _RestrictedUnpickler(io.BytesIO(path.read_bytes()), str(path)).load()


# --------------------------------------------------------------------------------------------
# trust


@pytest.mark.parametrize("how", ["pickle4", "joblib3"])
def test_trust_loads_a_custom_class_with_a_warning(tmp_path, how):
    est = TaggedLogisticRegression().fit(X, Y3)
    path = write(est, tmp_path / "custom.joblib", how)
    with pytest.raises(RefusedModelError) as info:
        load_model(path)
    assert (TaggedLogisticRegression.__module__, "TaggedLogisticRegression") in info.value.names
    loaded = load_model(path, trust=True)
    assert loaded.trusted is True
    assert loaded.warnings == (
        f"loaded {path} without restriction (--trust): a pickle can run code",)
    np.testing.assert_array_equal(loaded.estimator.predict_proba(X), est.predict_proba(X))


# --------------------------------------------------------------------------------------------
# bad input


def test_digest_mismatch_is_refused(tmp_path):
    path = write(fitted("tree")[0], tmp_path / "m.pkl", "pickle4")
    wrong = "0" * 64
    with pytest.raises(InputError) as info:
        load_model(path, sha256=wrong)
    assert f"has sha256 {file_sha256(path)}, expected {wrong}" in str(info.value)
    with pytest.raises(InputError, match="64 hexadecimal"):
        load_model(path, sha256="abc")


def test_wrong_suffix_missing_file_and_directory(tmp_path):
    path = write(fitted("tree")[0], tmp_path / "m.txt", "pickle4")
    with pytest.raises(InputError, match="m.txt is not a model file"):
        load_model(path)
    with pytest.raises(InputError, match="does not exist"):
        load_model(tmp_path / "absent.joblib")
    (tmp_path / "dir.pkl").mkdir()
    with pytest.raises(InputError, match="dir.pkl"):
        load_model(tmp_path / "dir.pkl")


@pytest.mark.parametrize("how", ["pickle4", "pickle5", "joblib0", "joblib3"])
@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.97])
def test_truncated_files_are_input_errors(tmp_path, how, keep):
    full = write(fitted("forest")[0], tmp_path / "full.joblib", how).read_bytes()
    path = tmp_path / "cut.joblib"
    path.write_bytes(full[: int(len(full) * keep)])
    with pytest.raises(InputError) as info:
        load_model(path)
    assert not isinstance(info.value, RefusedModelError)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("obj, label", [
    # DecisionTreeRegressor is allowlisted (GradientBoosting's stages), so it gets this far
    (DecisionTreeRegressor(max_depth=2).fit(X, X[:, 0]), "a DecisionTreeRegressor"),
    (LogisticRegression(), "a LogisticRegression"),
    (make_pipeline(StandardScaler(), DecisionTreeRegressor()).fit(X, X[:, 0]),
     "a Pipeline ending in a DecisionTreeRegressor"),
    ({"coef": np.ones(3)}, "a dict"),
])
def test_not_a_fitted_classifier(tmp_path, obj, label):
    path = write(obj, tmp_path / "m.joblib", "joblib0")
    with pytest.raises(InputError) as info:
        load_model(path)
    assert str(info.value) == f"{path} holds {label}, not a fitted classifier"


def test_a_regressor_is_an_input_error_with_or_without_trust(tmp_path):
    path = write(LinearRegression().fit(X, X[:, 0]), tmp_path / "m.pkl", "pickle4")
    with pytest.raises(RefusedModelError):  # not on the allowlist: an InputError (exit 3)
        load_model(path)
    with pytest.raises(InputError) as info:
        load_model(path, trust=True)
    assert str(info.value) == f"{path} holds a LinearRegression, not a fitted classifier"


def _with_tree_nodes(est, field, value):
    """``est`` with node 0 of its tree changed (a crafted file; never predicted with)."""
    tree = est.tree_
    state = tree.__getstate__()
    nodes = state["nodes"].copy()
    nodes[field][0] = value
    crafted = type(tree)(*tree.__reduce__()[1])
    crafted.__setstate__({**state, "nodes": nodes})
    est.tree_ = crafted
    return est


@pytest.mark.parametrize("field, value", [("left_child", 10**6), ("right_child", 0),
                                          ("left_child", -1), ("feature", 4), ("feature", -5)])
def test_trees_with_out_of_range_nodes_are_refused(tmp_path, field, value):
    # scikit-learn's compiled predict would read outside the node array (a segfault)
    est = _with_tree_nodes(DecisionTreeClassifier(max_depth=3, random_state=0).fit(X, Y3),
                           field, value)
    path = write(est, tmp_path / "m.joblib", "joblib3")
    with pytest.raises(InputError, match="out of range") as info:
        load_model(path)
    assert not isinstance(info.value, RefusedModelError)


def test_tree_features_are_bounded_by_the_enclosing_input_width(tmp_path):
    est = DecisionTreeClassifier(max_depth=3, random_state=0).fit(X, Y3)
    assert est.tree_.feature.max() >= 1
    forest = RandomForestClassifier(n_estimators=2, random_state=0).fit(X, Y3)
    forest.estimators_[1] = est
    forest.n_features_in_ = 1  # the forest validates 1 column; its tree reads column 1
    with pytest.raises(InputError, match="out of range|was refused"):
        load_model(write(forest, tmp_path / "m.pkl", "pickle5"))


def test_hist_gradient_boosting_predictors_are_checked(tmp_path):
    est = HistGradientBoostingClassifier(max_iter=3, random_state=0).fit(X, Y2)
    nodes = est._predictors[1][0].nodes.copy()
    nodes["left"][0] = len(nodes) + 7
    est._predictors[1][0].nodes = nodes
    with pytest.raises(InputError, match="out of range|was refused"):
        load_model(write(est, tmp_path / "m.joblib", "joblib0"))


# --------------------------------------------------------------------------------------------
# version mismatch


def test_version_mismatch_is_one_warning_line(tmp_path, monkeypatch):
    est = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression())]).fit(X, Y3)
    with monkeypatch.context() as m:
        m.setattr(sklearn.base, "__version__", "0.99.1")  # what __getstate__ records
        data = pickle.dumps(est, protocol=5)
    path = tmp_path / "old.pkl"
    path.write_bytes(data)
    loaded = load_model(path)
    assert loaded.warnings == (
        f"{path} was pickled with scikit-learn 0.99.1; this is scikit-learn "
        f"{sklearn.__version__}: results may differ",)
    np.testing.assert_array_equal(loaded.estimator.predict_proba(X), est.predict_proba(X))


# --------------------------------------------------------------------------------------------
# robustness: a damaged file is an InputError or loads, never anything else


_VALID = pickle.dumps(LogisticRegression().fit(X, Y2), protocol=4)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)),
                min_size=1, max_size=4))
def test_corrupted_bytes_never_escape_as_other_errors(tmp_path, edits):
    data = bytearray(_VALID)
    for pos, value in edits:
        data[pos] = value
    path = tmp_path / "fuzz.pkl"
    path.write_bytes(bytes(data))
    try:
        loaded = load_model(path)
    except InputError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(loaded, LoadedModel)


# --------------------------------------------------------------------------------------------
# issue 14: every classifier scikit-learn ships, and the transformers people put in front of one,
# load at every protocol and with every joblib compressor available here

def _all_classifiers():
    from sklearn.utils import all_estimators

    return dict(all_estimators(type_filter="classifier"))


def _classifier(name, cls):
    import inspect

    params = inspect.signature(cls).parameters
    kw = {}
    if name in ("StackingClassifier", "VotingClassifier"):
        kw["estimators"] = [("lr", LogisticRegression()),
                            ("dt", DecisionTreeClassifier(max_depth=2, random_state=0))]
    elif "estimator" in params:
        kw["estimator"] = LogisticRegression()
    if "n_estimators" in params:
        kw["n_estimators"] = 3
    if name in ("SVC", "NuSVC"):
        kw["probability"] = True
    if "random_state" in params:
        kw["random_state"] = 0
    if name == "QuadraticDiscriminantAnalysis":
        kw["reg_param"] = 0.1
    kw.update({"MLPClassifier": {"max_iter": 30},
               "HistGradientBoostingClassifier": {"max_iter": 5},
               "LogisticRegressionCV": {"Cs": 2, "cv": 2},
               "TunedThresholdClassifierCV": {"cv": 2, "thresholds": 5}}.get(name, {}))
    return cls(**kw)


def _fit_classifier(name):
    est = _classifier(name, _all_classifiers()[name])
    Xf, y = X, (Y2 if name in ("TunedThresholdClassifierCV", "FixedThresholdClassifier") else Y3)
    if name == "CategoricalNB":
        Xf = np.floor(X).astype(int)
    if name in ("ClassifierChain", "MultiOutputClassifier"):
        y = np.c_[Y3, Y2]
    with warnings.catch_warnings(), threadpool_limits(1):  # 2 shared cores: no oversubscription
        warnings.simplefilter("ignore")
        return est.fit(Xf, y), Xf


def _compressors():
    out = [None, ("zlib", 1), ("gzip", 1), ("bz2", 1), ("lzma", 1), ("xz", 1)]
    try:
        import lz4  # noqa: F401

        out.append(("lz4", 1))
    except ImportError:
        pass
    return out


def _grid_cell(name, k):
    """A deterministic sample of the protocol x compressor grid for one estimator."""
    digest = int(hashlib.sha256(f"{name}:{k}".encode()).hexdigest(), 16)
    comps = _compressors()
    return digest % 6, comps[(digest // 6) % len(comps)]


def _dump(obj, path, protocol, compress):
    if compress is None:
        with open(path, "wb") as fh:
            pickle.dump(obj, fh, protocol=protocol)
    else:
        joblib.dump(obj, path, compress=compress, protocol=protocol)
    return path


def _same_answers(est, loaded, Xf):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(loaded.predict(Xf), est.predict(Xf))
        if hasattr(est, "predict_proba"):
            try:
                expected = est.predict_proba(Xf)
            except Exception:
                return
            np.testing.assert_allclose(loaded.predict_proba(Xf), expected)


@pytest.mark.parametrize("name", sorted(_all_classifiers()))
def test_every_scikit_learn_classifier_loads(tmp_path, name):
    est, Xf = _fit_classifier(name)
    for k in range(2):
        protocol, compress = _grid_cell(name, k)
        path = _dump(est, tmp_path / f"m{k}.joblib", protocol, compress)
        loaded = load_model(path).estimator
        if name in ("ClassifierChain", "MultiOutputClassifier"):
            continue  # multi-output: load_model accepts it; predictions checked below
        _same_answers(est, loaded, Xf)


def _pipelines():
    import pandas as pd
    from sklearn import feature_selection as F
    from sklearn import impute as I
    from sklearn import preprocessing as P
    from sklearn.compose import ColumnTransformer, make_column_selector
    from sklearn.decomposition import TruncatedSVD
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_union
    from sklearn.svm import SVC

    df = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    df["colour"] = np.array(["red", "green", "blue"])[np.arange(len(X)) % 3]
    df.loc[3, "b"] = np.nan
    num = df.drop(columns="colour")
    ct = ColumnTransformer([
        ("num", make_pipeline(I.SimpleImputer(), P.StandardScaler(), P.PolynomialFeatures(2)),
         make_column_selector(dtype_include="number")),
        ("onehot", make_pipeline(I.SimpleImputer(strategy="most_frequent"),
                                 P.OneHotEncoder(handle_unknown="ignore")), ["colour"]),
        ("ord", P.OrdinalEncoder(), ["colour"]),
        ("target", P.TargetEncoder(random_state=0), ["colour"]),
    ])
    return {
        "svc-probability": (make_pipeline(P.StandardScaler(), SVC(probability=True,
                                                                  random_state=0)), X, Y3),
        "knn": (KNeighborsClassifier(n_neighbors=3, algorithm="kd_tree"), X, Y3),
        "knn-ball": (KNeighborsClassifier(n_neighbors=3, algorithm="ball_tree"), X, Y2),
        "column-transformer": (make_pipeline(ct, F.VarianceThreshold(), F.SelectKBest(k=5),
                                             LogisticRegression()), df, Y3),
        "imputers-discretizers": (make_pipeline(I.KNNImputer(n_neighbors=3),
                                                P.KBinsDiscretizer(n_bins=3, encode="onehot-dense"),
                                                LogisticRegression()), num, Y3),
        "union-selectors": (make_pipeline(
            I.SimpleImputer(add_indicator=True),
            make_union(P.StandardScaler(), TruncatedSVD(2), P.FunctionTransformer(np.log1p)),
            F.SelectPercentile(percentile=60), F.RFE(LogisticRegression(), n_features_to_select=4),
            F.SelectFromModel(LogisticRegression()), LogisticRegression()), num, Y2),
        "tree-after-polynomial": (make_pipeline(I.SimpleImputer(), P.PolynomialFeatures(2),
                                                DecisionTreeClassifier(random_state=0)), num, Y3),
    }


@pytest.mark.parametrize("name", sorted(_pipelines()))
def test_pipelines_of_common_transformers_load_at_every_protocol(tmp_path, name):
    est, Xf, y = _pipelines()[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(Xf, y)
    comps = _compressors()
    for protocol in range(6):
        compress = comps[protocol % len(comps)]
        path = _dump(est, tmp_path / f"p{protocol}.joblib", protocol, compress)
        _same_answers(est, load_model(path).estimator, Xf)


def test_svc_and_knn_adapt_to_a_form(tmp_path):
    from invaudit.models import adapt

    for name in ("svc-probability", "knn"):
        est, Xf, y = _pipelines()[name]
        est.fit(Xf, y)
        path = _dump(est, tmp_path / f"{name}.pkl", 2, None)
        form = adapt(load_model(path).estimator)
        assert form.n_features == X.shape[1]


def test_lz4_without_the_package_is_one_sentence(tmp_path):
    try:
        import lz4  # noqa: F401
        pytest.skip("lz4 is installed here")
    except ImportError:
        pass
    path = tmp_path / "m.joblib"
    path.write_bytes(b"\x04\x22\x4d\x18" + bytes(64))
    with pytest.raises(InputError, match="needs the lz4 package"):
        load_model(path)


def test_lightgbm_pickle_without_the_package_names_the_extra(tmp_path):
    import importlib.util

    if importlib.util.find_spec("lightgbm") is not None:
        pytest.skip("lightgbm is installed here")
    path = tmp_path / "m.pkl"
    path.write_bytes(b"\x80\x04\x8c\x10lightgbm.sklearn\x94\x8c\x0eLGBMClassifier\x94\x93\x94)"
                     b"\x81\x94.")
    with pytest.raises(InputError, match=r"needs the optional package lightgbm \(pip install"):
        load_model(path)


@pytest.mark.parametrize("stream, why", [
    (b"c_codecs\nencode\n(Vabc\nVrot13\ntR.", "_codecs.encode"),
    (b"ccopy_reg\n_reconstructor\n(csklearn.linear_model._logistic\nLogisticRegression\n"
     b"c__builtin__\nslice\nNtR.", "base other than object"),
    (b"c__builtin__\nbytes\n(I1000000000\ntR.", "bytes() is called with arguments"),
    (b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00f8\x89\x88\x87R(K\x03X\x01\x00\x00\x00>NNNJ"
     b"\xff\xff\xff\xffJ\xff\xff\xff\xffK\x01tbh\x00.", "does not match it"),
])
def test_protocol_0_to_2_names_are_allowed_only_for_what_they_do(tmp_path, stream, why):
    path = tmp_path / "m.pkl"
    path.write_bytes(stream)
    with pytest.raises(InputError, match="refused|corrupt") as err:
        load_model(path)
    assert why in str(err.value) or "corrupt" in str(err.value)


def test_max_model_bytes_is_an_environment_variable(tmp_path, monkeypatch):
    path = write(fitted("tree")[0], tmp_path / "m.joblib", "joblib0")
    monkeypatch.setenv("INVAUDIT_MAX_MODEL_BYTES", "1K")
    with pytest.raises(InputError, match="limit on model files.*INVAUDIT_MAX_MODEL_BYTES"):
        load_model(path)
    monkeypatch.setenv("INVAUDIT_MAX_MODEL_BYTES", "64M")
    load_model(path)
    monkeypatch.setenv("INVAUDIT_MAX_MODEL_BYTES", "lots")
    with pytest.raises(InputError, match="must be a number of bytes"):
        load_model(path)


def test_decompression_stops_at_the_ratio_ceiling(tmp_path, monkeypatch):
    from invaudit.io import model_file

    monkeypatch.setattr(model_file, "_FLOOR", 1 << 20)
    path = tmp_path / "m.joblib"
    joblib.dump(np.zeros(1 << 20), path, compress=("gzip", 9))  # 8 MiB in a few KiB
    with pytest.raises(InputError, match=r"gzip-compressed and expands to more than .*200 times"):
        load_model(path)


def test_a_fifo_model_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "m.pkl"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="named pipe"):
        load_model(fifo)


def test_lz4_compressed_joblib_loads_and_predicts_the_same(tmp_path):
    pytest.importorskip("lz4")
    import joblib
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    X = np.random.default_rng(0).normal(size=(60, 3))
    y = (X[:, 0] > 0).astype(int)
    est = Pipeline([("s", StandardScaler()), ("c", SVC())]).fit(X, y)
    path = tmp_path / "svc.joblib"
    joblib.dump(est, path, compress=("lz4", 3))
    loaded = load_model(path).estimator
    np.testing.assert_array_equal(loaded.predict(X), est.predict(X))
    np.testing.assert_allclose(loaded.decision_function(X), est.decision_function(X), rtol=0, atol=0)
