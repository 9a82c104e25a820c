"""LightGBM and XGBoost model files (issue 15): loaded through the restricted loader, or refused.

- ``LGBMClassifier`` / ``XGBClassifier`` pickled as users ship them (pickle protocols 0-5,
  ``joblib.dump`` with and without compression; bare, after scalers in a Pipeline, after a
  ColumnTransformer) load and answer exactly as the originals;
- without the package, one sentence names it and the ``boost`` extra;
- hostile files that name only allowed classes (a booster called with a file name, a booster
  state whose model text or UBJSON has out-of-range nodes, features or sizes, a bytearray or
  defaultdict used for something else) are refused with exit 3 in a sandboxed child process,
  and nothing in them runs.
"""

from __future__ import annotations

import copyreg
import importlib.util
import os
import pickle
import struct
import sys
import warnings
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

lgb = pytest.importorskip("lightgbm")
xgb = pytest.importorskip("xgboost")

from sklearn.compose import ColumnTransformer  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import OneHotEncoder, StandardScaler  # noqa: E402

from invaudit.errors import InputError, RefusedModelError  # noqa: E402
from invaudit.io.model_file import _UBJ, load_model  # noqa: E402

_HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("attack_corpus", _HERE / "attack_corpus.py")
corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(corpus)


def _quiet(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


def _data(classes=2, n=300, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    s = X[:, 0] + X[:, 1] ** 2 - 1
    y = np.digitize(s, np.quantile(s, np.linspace(0, 1, classes + 1)[1:-1]))
    return X, y


def _lgb(classes=2, labels=None):
    X, y = _data(classes)
    y = y if labels is None else np.asarray(labels)[y]
    return _quiet(lambda: lgb.LGBMClassifier(n_estimators=4, num_leaves=5, verbose=-1, n_jobs=1).fit(X, y)), X


def _xgb(classes=2):
    X, y = _data(classes)
    return _quiet(lambda: xgb.XGBClassifier(n_estimators=4, max_depth=3, n_jobs=1).fit(X, y)), X


def _typed():
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"age": rng.integers(18, 80, 300).astype(float),
                          "city": rng.choice(["Oslo", "Lima", "Pune"], 300),
                          "income": rng.normal(5e4, 1e4, 300)})
    y = ((frame["age"] > 40) ^ (frame["city"] == "Lima")).astype(int)
    ct = ColumnTransformer([("num", StandardScaler(), ["age", "income"]),
                            ("cat", OneHotEncoder(handle_unknown="ignore"), ["city"])])
    pipe = make_pipeline(ct, lgb.LGBMClassifier(n_estimators=4, verbose=-1, n_jobs=1))
    return _quiet(lambda: pipe.fit(frame, y)), frame


FAMILIES = {
    "lgb-binary": lambda: _lgb(),
    "lgb-multiclass-strings": lambda: _lgb(3, labels=["low", "mid", "high"]),
    "xgb-binary": lambda: _xgb(),
    "xgb-multiclass": lambda: _xgb(3),
    "lgb-after-scaler": lambda: (_quiet(lambda: make_pipeline(StandardScaler(), lgb.LGBMClassifier(
        n_estimators=4, verbose=-1, n_jobs=1)).fit(*_data())), _data()[0]),
    "xgb-after-scaler": lambda: (_quiet(lambda: make_pipeline(StandardScaler(), xgb.XGBClassifier(
        n_estimators=4, n_jobs=1)).fit(*_data())), _data()[0]),
    "lgb-after-column-transformer": _typed,
}
HOW = ("p0", "p2", "p4", "p5", "joblib", "joblib-zlib")


def _write(obj, path, how):
    if how.startswith("p"):
        path.write_bytes(pickle.dumps(obj, protocol=int(how[1])))
    else:
        joblib.dump(obj, path, compress=("zlib", 3) if how == "joblib-zlib" else 0)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_boosters_load_restricted_and_answer_identically(tmp_path, family):
    est, X = FAMILIES[family]()
    for how in HOW if family in ("lgb-binary", "xgb-binary") else ("p2", "p5", "joblib-zlib"):
        path = tmp_path / f"m-{how}.joblib"
        _write(est, path, how)
        loaded = load_model(path)
        assert not loaded.trusted
        np.testing.assert_array_equal(_quiet(lambda: loaded.estimator.predict_proba(X)),
                                      _quiet(lambda: est.predict_proba(X)))


def test_early_stopped_models_keep_their_best_iteration(tmp_path):
    X, y = _data(n=400)
    a = _quiet(lambda: lgb.LGBMClassifier(n_estimators=100, verbose=-1, n_jobs=1).fit(
        X[:250], y[:250], eval_set=[(X[250:], y[250:])], callbacks=[lgb.early_stopping(2, verbose=False)]))
    b = _quiet(lambda: xgb.XGBClassifier(n_estimators=100, early_stopping_rounds=2, n_jobs=1).fit(
        X[:250], y[:250], eval_set=[(X[250:], y[250:])], verbose=False))
    for est in (a, b):
        _write(est, tmp_path / "m.joblib", "joblib")
        back = load_model(tmp_path / "m.joblib").estimator
        np.testing.assert_array_equal(_quiet(lambda: back.predict_proba(X)), _quiet(lambda: est.predict_proba(X)))


@pytest.mark.parametrize("package", ["lightgbm", "xgboost"])
def test_a_missing_package_is_named_with_the_extra(tmp_path, monkeypatch, package):
    est, _ = _lgb() if package == "lightgbm" else _xgb()
    path = tmp_path / "m.joblib"
    _write(est, path, "joblib")
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    with pytest.raises(InputError) as exc:
        load_model(path)
    message = str(exc.value)
    assert f"needs the optional package {package} (pip install 'invaudit[boost]')" in message
    assert "corrupt" not in message and "\n" not in message


# --- hostile files ------------------------------------------------------------------------------

class _Built:
    """``cls.__new__(cls)`` then ``__setstate__(state)``: exactly what pickle writes for a booster."""

    def __init__(self, cls, state):
        self.cls, self.state = cls, state

    @property
    def __class__(self):  # pickle checks that NEWOBJ's class is the object's own
        return self.cls

    def __reduce__(self):
        return copyreg.__newobj__, (self.cls,), self.state


class _Call:
    """``func(*args)`` (REDUCE)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _ubj(value) -> bytes:
    """UBJSON as XGBoost writes it (typed numeric arrays, int64 lengths)."""
    if isinstance(value, dict):
        out = b"{"
        for k, v in value.items():
            key = k.encode()
            out += b"L" + struct.pack(">q", len(key)) + key + _ubj(v)
        return out + b"}"
    if isinstance(value, np.ndarray):
        code = {"f": (b"d", ">f4"), "i": (b"l", ">i4"), "u": (b"U", ">u1")}[value.dtype.kind]
        if value.dtype == np.int64:
            code = (b"L", ">i8")
        return b"[$" + code[0] + b"#L" + struct.pack(">q", len(value)) + value.astype(code[1]).tobytes()
    if isinstance(value, list):
        return b"[" + b"".join(_ubj(v) for v in value) + b"]"
    if isinstance(value, str):
        raw = value.encode()
        return b"SL" + struct.pack(">q", len(raw)) + raw
    if isinstance(value, bool):
        return b"T" if value else b"F"
    if value is None:
        return b"Z"
    if isinstance(value, int):
        return b"L" + struct.pack(">q", value)
    if isinstance(value, float):
        return b"D" + struct.pack(">d", value)
    raise TypeError(type(value))


def _xgb_doc(est):
    buf = bytes(est.get_booster().__getstate__()["handle"])
    reader = _UBJ(buf)
    assert reader.marker() == b"{"
    return reader.container(0, is_object=True)


def _with_xgb_buffer(est, buf):
    clone = _quiet(lambda: pickle.loads(pickle.dumps(est)))
    clone._Booster = _Built(xgb.core.Booster, {"handle": bytearray(buf)})
    return clone


def _with_lgb_state(est, **changes):
    state = est.booster_.__getstate__()
    state.update(changes)
    clone = _quiet(lambda: pickle.loads(pickle.dumps(est)))
    clone._Booster = _Built(lgb.basic.Booster, state)
    return clone


def _edit_text(est, old, new, count=1):
    """The model text with one edit, and ``tree_sizes`` made to agree (as an attacker would)."""
    import re

    text = est.booster_.model_to_string()
    assert old in text, old
    text = text.replace(old, new, count)
    starts = [m.start() for m in re.finditer(r"^Tree=", text, re.M)] + [text.index("end of trees")]
    sizes = " ".join(str(b - a) for a, b in zip(starts, starts[1:]))
    return re.sub(r"^tree_sizes=.*$", "tree_sizes=" + sizes, text, count=1, flags=re.M)


def _tree0(doc):
    return doc["Model"]["learner"]["gradient_booster"]["model"]["trees"][0]


def _hostile(tmp_path, marker):
    """{name: (path, expected phrase)}: each names only allowed classes (or one that is refused)."""
    lgbm, _ = _lgb()
    xgbm, _ = _xgb()
    out = {}

    def put(name, obj, phrase, protocol=4):
        path = tmp_path / f"{name}.pkl"
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
        out[name] = (path, phrase)

    # a booster named, and os.system behind it: refused by name before anything is unpickled
    evil = _quiet(lambda: pickle.loads(pickle.dumps(lgbm)))
    evil._Booster = _Built(lgb.basic.Booster, {"_handle": _Call(os.system, f"touch {marker}")})
    put("lgb-booster-with-os-system", evil, "system)")
    # allowed classes called with arguments: Booster(model_file=...) reads a file
    put("lgb-booster-called-with-a-file", _Call(lgb.basic.Booster, None, None, "/etc/passwd"),
        "only its saved state may be loaded")
    put("xgb-booster-called-with-a-file", _Call(xgb.core.Booster, None, None, "/etc/passwd"),
        "only its saved state may be loaded")
    put("wrapper-called-with-arguments", _Call(lgb.sklearn.LGBMClassifier, "gbdt"),
        "only its saved state may be loaded")
    put("bytearray-bomb", _Call(bytearray, 10 ** 12), "bytearray() is called")
    put("defaultdict-factory", _Call(__import__("collections").defaultdict, lgb.sklearn.LGBMClassifier),
        "factory")
    # LightGBM model text that LightGBM's parser would trust
    put("lgb-child-out-of-range", _with_lgb_state(lgbm, _handle=_edit_text(lgbm, "left_child=1", "left_child=9")),
        "do not form a tree")
    put("lgb-child-cycle", _with_lgb_state(lgbm, _handle=_edit_text(lgbm, "left_child=1", "left_child=0")),
        "do not form a tree")
    feature_line = next(line for line in lgbm.booster_.model_to_string().split("\n")
                        if line.startswith("split_feature="))
    n_split = len(feature_line.split("=")[1].split())
    put("lgb-feature-out-of-range", _with_lgb_state(lgbm, _handle=_edit_text(
        lgbm, feature_line, "split_feature=" + " ".join(["4000"] * n_split))), "past max_feature_idx")
    put("lgb-tree-sizes-lie", _with_lgb_state(lgbm, _handle=lgbm.booster_.model_to_string().replace(
        "tree_sizes=", "tree_sizes=9", 1)), "tree_sizes")
    put("lgb-short-array", _with_lgb_state(lgbm, _handle=_edit_text(lgbm, "\nleaf_value=", "\nleaf_value=1 ")),
        "leaf_value has")
    put("lgb-state-not-text", _with_lgb_state(lgbm, _handle=12345), "no model text")
    put("lgb-state-network", _with_lgb_state(lgbm, _network=True), "network")
    put("lgb-state-unknown-attribute", _with_lgb_state(lgbm, train_set=[1]), "never saves")
    # XGBoost UBJSON that XGBoost's parser would trust
    doc = _xgb_doc(xgbm)
    assert load_model(_write_tmp(tmp_path, _with_xgb_buffer(xgbm, _ubj(doc)))).estimator is not None
    bad = _xgb_doc(xgbm)
    tree = _tree0(bad)
    tree["split_indices"] = tree["split_indices"].copy()
    tree["split_indices"][0] = 4000
    put("xgb-feature-out-of-range", _with_xgb_buffer(xgbm, _ubj(bad)), "past num_feature")
    bad = _xgb_doc(xgbm)
    tree = _tree0(bad)
    tree["left_children"] = tree["left_children"].copy()
    tree["left_children"][1] = 0
    put("xgb-child-cycle", _with_xgb_buffer(xgbm, _ubj(bad)), "after their parents")
    bad = _xgb_doc(xgbm)
    tree = _tree0(bad)
    tree["right_children"] = tree["right_children"].copy()
    tree["right_children"][0] = 10 ** 6
    put("xgb-child-out-of-range", _with_xgb_buffer(xgbm, _ubj(bad)), "after their parents")
    bad = _xgb_doc(xgbm)
    _tree0(bad)["tree_param"]["num_nodes"] = "100000"
    put("xgb-num-nodes-lie", _with_xgb_buffer(xgbm, _ubj(bad)), "num_nodes entries")
    bad = _xgb_doc(xgbm)
    bad["Config"]["learner"]["learner_train_param"]["objective"] = "reg:squarederror"
    put("xgb-not-a-classifier", _with_xgb_buffer(xgbm, _ubj(bad)), "not a classification objective")
    raw = _ubj(_xgb_doc(xgbm))
    put("xgb-truncated", _with_xgb_buffer(xgbm, raw[: len(raw) // 2]), "XGBoost model is malformed")
    at = raw.index(b"[$d#L")  # a typed array claiming 2**40 floats
    put("xgb-array-count-bomb", _with_xgb_buffer(xgbm, raw[:at + 5] + struct.pack(">q", 1 << 40)
                                                + raw[at + 13:]), "longer than the data")
    clone = _quiet(lambda: pickle.loads(pickle.dumps(xgbm)))
    clone._Booster = _Built(xgb.core.Booster, {"handle": bytearray(raw), "feature_names": ["a"]})
    put("xgb-state-extra-key", clone, "single model buffer")
    return out


def _write_tmp(tmp_path, obj):
    path = tmp_path / "roundtrip.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=4))
    return path


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    folder = tmp_path_factory.mktemp("boost-attacks")
    marker = folder / "ran"
    return _hostile(folder, marker), marker


@pytest.fixture(scope="module")
def sandbox():
    box = corpus.Sandbox()
    yield box
    box.close()


def test_hostile_booster_files_are_refused_in_a_sandbox(hostile, sandbox):
    files, marker = hostile
    for name, (path, phrase) in files.items():
        answer = sandbox.load(path)
        assert answer["status"] == "refused", (name, answer)
        assert phrase in answer["message"] and "\n" not in answer["message"].strip(), (name, answer)
        assert answer["seconds"] < 10, (name, answer)
    assert not marker.exists()


def test_hostile_booster_files_exit_3_on_the_command_line(hostile, invaudit):
    files, marker = hostile
    for name in ("lgb-booster-with-os-system", "lgb-child-out-of-range", "xgb-feature-out-of-range",
                 "lgb-booster-called-with-a-file"):
        r = invaudit("info", files[name][0])
        assert r.code == 3 and "Traceback" not in r.err, (name, r.err)
    assert not marker.exists()


def test_a_refused_booster_lists_the_names_it_wanted(tmp_path):
    lgbm, _ = _lgb()
    evil = _quiet(lambda: pickle.loads(pickle.dumps(lgbm)))
    evil._Booster = _Built(lgb.basic.Booster, {"_handle": _Call(eval, "1")})
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(RefusedModelError, match="eval"):
        load_model(path)


def test_model_text_and_ubjson_checks_accept_what_the_libraries_write():
    from invaudit.io.model_file import lightgbm_model_problem, xgboost_model_problem

    X, y = _data(3)
    rng = np.random.default_rng(0)
    Xc = np.column_stack([X, rng.integers(0, 6, len(X))]).astype(float)
    models = [
        lgb.LGBMClassifier(n_estimators=3, verbose=-1, n_jobs=1).fit(X, y),
        lgb.LGBMClassifier(n_estimators=3, linear_tree=True, verbose=-1, n_jobs=1).fit(X, y),
        lgb.LGBMClassifier(n_estimators=3, min_data_per_group=5, cat_smooth=1, verbose=-1, n_jobs=1).fit(
            Xc, y, categorical_feature=[4]),
        lgb.LGBMClassifier(n_estimators=1, min_child_samples=1000, verbose=-1, n_jobs=1).fit(X, y % 2),
    ]
    for m in _quiet(lambda: models):
        assert lightgbm_model_problem(m.booster_.model_to_string()) is None
    for m in _quiet(lambda: [xgb.XGBClassifier(n_estimators=3, n_jobs=1).fit(X, y),
                             xgb.XGBClassifier(n_estimators=3, booster="dart", n_jobs=1).fit(X, y % 2),
                             xgb.XGBClassifier(n_estimators=2, enable_categorical=True, n_jobs=1,
                                               feature_types=["q"] * 4 + ["c"]).fit(Xc, y)]):
        assert xgboost_model_problem(bytes(m.get_booster().__getstate__()["handle"])) is None
    assert "UBJSON" in xgboost_model_problem(b"binf\x00\x00")
    assert lightgbm_model_problem("not a model") is not None


@pytest.mark.parametrize("family,attr,value,phrase", [
    ("lgb", "_n_features", 7, "sizes disagree with its booster"),
    ("lgb", "_n_classes", 5, "sizes disagree with its booster"),
    ("xgb", "n_classes_", 5, "classes disagree with its booster"),
])
def test_a_wrapper_that_disagrees_with_its_booster_is_refused(tmp_path, family, attr, value, phrase):
    est, _ = _lgb() if family == "lgb" else _xgb()
    setattr(est, attr, value)
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps(est))
    with pytest.raises(InputError, match=phrase):
        load_model(path)


def test_a_gblinear_model_loads_and_bad_weights_are_refused(tmp_path):
    X, y = _data(3)
    est = _quiet(lambda: xgb.XGBClassifier(n_estimators=3, booster="gblinear", n_jobs=1).fit(X, y))
    _write(est, tmp_path / "m.joblib", "joblib")
    np.testing.assert_array_equal(load_model(tmp_path / "m.joblib").estimator.predict_proba(X),
                                  est.predict_proba(X))
    doc = _xgb_doc(est)
    doc["Model"]["learner"]["gradient_booster"]["model"]["weights"] = np.zeros(5, dtype=np.float32)
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps(_with_xgb_buffer(est, _ubj(doc)), protocol=4))
    with pytest.raises(InputError, match="linear weights disagree"):
        load_model(path)


def test_xgboost_training_callbacks_load_but_their_logger_is_never_called(tmp_path):
    X, y = _data(n=300)
    callbacks = [xgb.callback.EarlyStopping(rounds=2, save_best=True), xgb.callback.EvaluationMonitor(period=50)]
    est = _quiet(lambda: xgb.XGBClassifier(n_estimators=30, callbacks=callbacks, n_jobs=1).fit(
        X[:200], y[:200], eval_set=[(X[200:], y[200:])], verbose=False))
    for how in ("p2", "p4", "joblib"):
        _write(est, tmp_path / "m.joblib", how)
        np.testing.assert_array_equal(load_model(tmp_path / "m.joblib").estimator.predict_proba(X),
                                      _quiet(lambda: est.predict_proba(X)))
    path = tmp_path / "call.pkl"
    path.write_bytes(pickle.dumps(_Call(xgb.collective.communicator_print, "hello"), protocol=4))
    with pytest.raises(InputError, match="which a model only holds"):
        load_model(path)
