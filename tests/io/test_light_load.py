"""The light load (issue 16): a linear model's state read without scikit-learn, the same form.

- For a grid of linear classifiers and affine pipelines (binary, multiclass, string classes,
  feature names, every scaler, PCA with fewer components and whitening, nested pipelines,
  passthrough), written by joblib (uncompressed and every compressor) and by pickle (protocols
  2-5): the light load applies, and the linear form built from it equals the one built from the
  real estimator bit for bit (W, b, link, classes, names, preprocessing, folded map), as does
  what ``info`` says (description, influence support).
- Where it declines (other classes, other scikit-learn versions, unfitted models, hostile
  streams), it declines, and the full load says what it always said.
- The estimator is unpickled only when read, and is then the real estimator.
- What the light path assumes of scikit-learn is checked against the installed version: the
  class paths, plain (non-property) attributes, joblib's compressor prefixes.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import inspect
import io
import pickle
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, Perceptron, RidgeClassifier, SGDClassifier
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import (FunctionTransformer, MaxAbsScaler, MinMaxScaler, PowerTransformer, RobustScaler,
                                   StandardScaler)
from sklearn.svm import LinearSVC

from invaudit.errors import InputError, RefusedModelError
from invaudit.influence import supports
from invaudit.io import _light
from invaudit.io import model_file as mf
from invaudit.io.model_file import load_model
from invaudit.models import adapt, linear
from invaudit.models._light_linear import LightLinearForm, light_form

SCALES = np.array([1e-5, 1.0, 1e3, 1e5, 0.1, 3.0])


def _data(n=90, k=2, strings=False, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6)) * SCALES + rng.normal(size=6) * SCALES
    score = (X / SCALES) @ rng.normal(size=(6, k))
    y = score.argmax(axis=1) if k > 2 else (score[:, 0] > np.median(score[:, 0])).astype(int)
    if strings:
        y = np.array(["approve", "reject", "review", "refer"])[y]
    return X, y


def _models():
    X2, y2 = _data()
    X3, y3 = _data(k=3, strings=True, seed=1)
    frame = pd.DataFrame(X3, columns=[f"f{j}" for j in range(6)])
    lr = dict(max_iter=3000)
    out = {
        "lr-binary": LogisticRegression(**lr).fit(X2, y2),
        "lr-multi-strings": LogisticRegression(**lr).fit(X3, y3),
        "lr-frame-scaled": make_pipeline(StandardScaler(), LogisticRegression(**lr)).fit(frame, y3),
        "lr-l1": LogisticRegression(l1_ratio=1.0, solver="saga", max_iter=200).fit(X2 / SCALES, y2),
        "lr-no-penalty": LogisticRegression(C=np.inf, **lr).fit(X2 / SCALES, y2),
        "lr-cv": LogisticRegressionCV(cv=3, Cs=3, max_iter=500).fit(X2 / SCALES, y2),
        "lda-svd": LinearDiscriminantAnalysis().fit(X3, y3),
        "lda-lsqr": LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(X2, y2),
        "linear-svc": make_pipeline(MinMaxScaler(), LinearSVC()).fit(X3, y3),
        "sgd-hinge": make_pipeline(StandardScaler(), SGDClassifier(random_state=0)).fit(X2, y2),
        "sgd-log-multi": make_pipeline(MaxAbsScaler(), SGDClassifier(loss="log_loss", random_state=0)).fit(X3, y3),
        "sgd-huber": make_pipeline(RobustScaler(), SGDClassifier(loss="modified_huber", random_state=0)).fit(X2, y2),
        "perceptron": make_pipeline(StandardScaler(with_mean=False), Perceptron(random_state=0)).fit(X2, y2),
        "pca-whiten": make_pipeline(StandardScaler(), PCA(4, whiten=True), LogisticRegression(**lr)).fit(frame, y3),
        "nested-passthrough": Pipeline([("pre", Pipeline([("s", StandardScaler()), ("p", "passthrough")])),
                                        ("m", RobustScaler(with_centering=False)), ("pca", PCA()),
                                        ("clf", LogisticRegression(**lr))]).fit(X2, y2),
    }
    return out


MODELS = _models()


def _write(est, path, how):
    if how.startswith("pickle"):
        with open(path, "wb") as fh:
            pickle.dump(est, fh, protocol=int(how[-1]))
    else:
        joblib.dump(est, path, compress={"joblib": 0, "zlib": ("zlib", 3)}.get(how, (how, 3)))
    return path


def _same_form(light, full):
    assert isinstance(light, LightLinearForm) and type(full) is not LightLinearForm
    for name in ("W", "b", "pre_A", "pre_c"):
        a, b = getattr(light, name), getattr(full, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), name
    assert light.classes.dtype == full.classes.dtype and np.array_equal(light.classes, full.classes)
    assert (light.link, light.n_features, light.feature_names, light.preprocessing) == \
        (full.link, full.n_features, full.feature_names, full.preprocessing)
    assert light.describe() == full.describe()
    assert light.influence_support() == supports(full)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_light_form_is_the_real_estimators_form_bit_for_bit(tmp_path, name):
    path = _write(MODELS[name], tmp_path / f"{name}.joblib", "joblib")
    loaded = load_model(path, light=True)
    assert loaded.light is not None and not loaded.is_loaded
    form = light_form(loaded)
    assert form is not None and not loaded.is_loaded  # built from the state alone
    full = adapt(load_model(path).estimator)
    _same_form(form, full)
    assert not loaded.is_loaded
    # the estimator, when something reads it, is the real one, fully loaded and checked
    est = form.estimator
    assert loaded.is_loaded and type(est) is type(MODELS[name])
    X, _ = _data(n=40, k=3, seed=7)
    np.testing.assert_array_equal(est.predict(X), MODELS[name].predict(X))
    assert form.final_estimator is linear.split_pipeline(est)[1]
    np.testing.assert_array_equal(form.predict(X), full.predict(X))


@pytest.mark.parametrize("how", ["zlib", "gzip", "bz2", "xz", "lzma", "pickle2", "pickle3", "pickle4", "pickle5"])
def test_every_file_layout_gives_the_same_light_form(tmp_path, how):
    for name in ("lr-frame-scaled", "sgd-log-multi"):
        path = _write(MODELS[name], tmp_path / f"{name}.pkl", how)
        loaded = load_model(path, light=True)
        assert loaded.light is not None, (name, how)
        _same_form(light_form(loaded), adapt(load_model(path).estimator))


def test_the_sample_linear_models_load_light_with_the_same_form(samples):
    light_ones = 0
    for path in sorted(samples.glob("*.joblib")):
        loaded = load_model(path, light=True)
        form = light_form(loaded)
        full = adapt(load_model(path).estimator)
        if form is None:  # declined: the form is not linear, or the file holds typed columns
            assert loaded.light is None or full.kind != "linear" or full.preprocessing, path
            continue
        light_ones += 1
        _same_form(form, full)
    assert light_ones >= 3  # breast_cancer_logreg, digits_logreg, digits_noisy_logreg


def _declined(est, tmp_path, name="m.joblib"):
    path = tmp_path / name
    joblib.dump(est, path)
    return load_model(path, light=True)


def test_other_classes_decline_and_load_fully(tmp_path):
    X, y = _data()
    others = [
        # (decision trees, forests and MLPs are light too: tests/io/test_light_load_nonlinear.py)
        GradientBoostingClassifier(n_estimators=2, max_depth=2).fit(X, y),
        RidgeClassifier().fit(X, y),  # classes_ is a property of its label binarizer
        OneVsRestClassifier(LogisticRegression()).fit(X, y),
        make_pipeline(PowerTransformer(), LogisticRegression()).fit(X / SCALES, y),
        make_pipeline(FunctionTransformer(), LogisticRegression()).fit(X / SCALES, y),
    ]
    for i, est in enumerate(others):
        loaded = _declined(est, tmp_path, f"m{i}.joblib")
        assert loaded.light is None and loaded.is_loaded, type(est).__name__
        assert type(loaded.estimator) is type(est)


def _version_edited(est, path, old: bytes, new: bytes):
    raw = pickle.dumps(est, protocol=4)
    assert raw.count(old) >= 1
    path.write_bytes(raw.replace(old, new))
    return path


def test_another_scikit_learn_version_declines_and_warns_as_before(tmp_path):
    import sklearn

    X, y = _data()
    version = sklearn.__version__.encode()
    other = b"0" * len(version)  # same length: the pickle stays well formed
    path = _version_edited(LogisticRegression().fit(X / SCALES, y), tmp_path / "old.pkl", version, other)
    loaded = load_model(path, light=True)
    assert loaded.light is None
    assert any("pickled with scikit-learn" in w for w in loaded.warnings)
    assert loaded.warnings == load_model(path).warnings


def test_an_unfitted_model_is_refused_by_the_full_load(tmp_path, invaudit):
    path = tmp_path / "unfitted.joblib"
    joblib.dump(make_pipeline(StandardScaler(), LogisticRegression()), path)
    loaded = load_model(path, light=True)
    assert light_form(loaded) is None  # no classes_: not this form; the real load decides
    with pytest.raises(InputError, match="not a fitted classifier"):
        loaded.estimator
    r = invaudit("info", path)
    assert r.code == 3 and "not a fitted classifier" in r.err


def _refusal(path, **kw):
    with pytest.raises(InputError) as exc:
        load_model(path, **kw)
    return type(exc.value), str(exc.value)


def test_hostile_streams_are_refused_as_before(tmp_path):
    import os

    spec = importlib.util.spec_from_file_location("attack_corpus", Path(__file__).with_name("attack_corpus.py"))
    corpus = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(corpus)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo hacked",))

    X, y = _data()
    fitted = LogisticRegression().fit(X / SCALES, y)
    files = []
    est = copy.deepcopy(fitted)
    est.extra_ = Evil()
    files.append(tmp_path / "evil.pkl")
    files[-1].write_bytes(pickle.dumps(est))
    est = copy.deepcopy(fitted)
    est.coef_ = corpus._NdarrayCall((1, 10**9))  # an allocation bomb
    files.append(tmp_path / "bomb.pkl")
    files[-1].write_bytes(pickle.dumps(est, protocol=4))
    est = copy.deepcopy(fitted)
    est.classes_ = corpus._Reconstructed((2,), corpus._hidden_object_dtype(), bytes(16))
    files.append(tmp_path / "dtype.pkl")
    files[-1].write_bytes(pickle.dumps(est, protocol=4))
    files.append(tmp_path / "cut.joblib")
    joblib.dump(fitted, files[-1])
    files[-1].write_bytes(files[-1].read_bytes()[:-40])
    # (decompression bombs and the rest of the attack corpus go through `invaudit info`, which
    # tries the light load first, in tests/io/test_fuzz_models.py)
    answers = [_refusal(path, light=True) for path in files]
    assert answers == [_refusal(path) for path in files]
    assert answers[0][0] is RefusedModelError
    assert all(kind is InputError and "refused" in text for kind, text in answers[1:3])
    assert "truncated" in answers[3][1]


def test_the_light_version_check_reads_the_installed_scikit_learn():
    import sklearn

    assert _light.installed_sklearn_version() == sklearn.__version__


def test_linear_class_paths_name_the_installed_classes():
    paths = (linear._PROBA_LINK_TYPES | linear._NO_LINK_TYPES
             | {linear._SGD, linear._OVR, linear._PIPELINE}) | _light.LIGHT_CLASSES
    for module, name in paths:
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            assert name == "PassiveAggressiveClassifier"  # removed in scikit-learn 1.10
            continue
        assert (cls.__module__, cls.__qualname__) == (module, name)


# Every attribute invaudit.models.linear / affine and the light form read from a light object:
# each must be a plain instance attribute (saved in the state), never a property or method.
_READ = ("classes_", "coef_", "intercept_", "loss", "_label_binarizer", "feature_names_in_", "n_features_in_",
         "steps", "mean_", "scale_", "with_mean", "with_std", "min_", "clip", "center_", "components_", "whiten",
         "explained_variance_", "penalty", "l1_ratio", "C", "func", "kw_args")


def test_light_classes_keep_what_the_linear_form_reads_in_their_state():
    from sklearn.base import BaseEstimator

    bad = []
    for module, name in _light.LIGHT_CLASSES:
        cls = getattr(importlib.import_module(module), name)
        # a Pipeline is read for its steps only (its feature_names_in_ property is its first step's
        # attribute, which linear._feature_names reads from that step itself)
        for attr in (("steps",) if name == "Pipeline" else _READ):
            static = inspect.getattr_static(cls, attr, None)
            if static is not None and (inspect.isdatadescriptor(static) or callable(static)):
                bad.append((name, attr))
        assert cls.__setstate__ is BaseEstimator.__setstate__, name  # a plain dict update
    assert not bad


def test_compressor_detection_agrees_with_joblib(tmp_path):
    from joblib.compressor import _COMPRESSORS
    from joblib.numpy_pickle_utils import _ZFILE_PREFIX, _detect_compressor

    assert [(k, v.prefix) for k, v in _COMPRESSORS.items()] == list(mf._COMPRESSOR_PREFIXES)
    assert _ZFILE_PREFIX == mf._COMPAT_PREFIX
    X, y = _data()
    est = LogisticRegression().fit(X / SCALES, y)
    heads = [b"", b"\x80\x04", b"ZF", b"x", b"]\x00\x00", b"]\x01", b"BZh9", b"\x04\"M\x18"]
    for how in ("joblib", "zlib", "gzip", "bz2", "xz", "lzma", "pickle2", "pickle5"):
        heads.append(_write(est, tmp_path / f"{how}.pkl", how).read_bytes()[:8])
    for head in heads:
        assert mf._detect_compressor(head) == _detect_compressor(io.BytesIO(head)), head


# --- predict / predict_proba mirrored without scikit-learn -------------------------------------

_MIRRORED = ("lr-binary", "lr-multi-strings", "lr-frame-scaled", "lr-no-penalty")


def _probe_rows(est, X):
    """Rows of every kind a solver sends: data rows (C and Fortran order, a strided view) and points
    on the decision boundary between two classes (where one ulp decides the label)."""
    from invaudit.counterfactual import counterfactuals

    form = adapt(est)
    target = (form.predict_index(X) + 1) % len(form.classes)
    cf = counterfactuals(form, X, target=target)
    points = np.asarray(cf.x_cf, dtype=np.float64)
    points = points[np.all(np.isfinite(points), axis=1)]
    return [X, np.asfortranarray(X), np.repeat(X, 2, axis=0)[::2], points]


@pytest.mark.parametrize("name", _MIRRORED)
def test_the_mirrored_predictions_are_scikit_learns_bit_for_bit(tmp_path, name):
    from invaudit.models._light_linear import _mirror_predict, _mirror_proba, sklearn_plan

    path = _write(MODELS[name], tmp_path / "m.joblib", "zlib")
    real = load_model(path).estimator
    plan = sklearn_plan(load_model(path, light=True).light)
    assert plan is not None
    X, _ = _data(n=60, k=3, seed=11)
    for rows in _probe_rows(real, X):
        np.testing.assert_array_equal(_mirror_predict(plan, rows)[0], real.predict(rows))
        got, want = _mirror_proba(plan, rows), real.predict_proba(rows)
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes()


def test_models_the_mirror_does_not_model_have_no_plan(tmp_path):
    from invaudit.models._light_linear import sklearn_plan

    X, y = _data()
    for est in (MODELS["lda-svd"], MODELS["sgd-log-multi"], MODELS["pca-whiten"], MODELS["linear-svc"],
                make_pipeline(StandardScaler(copy=False), LogisticRegression()).fit(X / SCALES, y),
                make_pipeline(MinMaxScaler(clip=True), LogisticRegression()).fit(X / SCALES, y)):
        loaded = _declined(est, tmp_path)
        assert loaded.light is not None and sklearn_plan(loaded.light) is None


_CHILD = r"""
import sys, numpy as np
from invaudit.io.model_file import load_model
from invaudit.models._light_linear import light_form
form = light_form(load_model(sys.argv[1], light=True))
X = np.load(sys.argv[2])
labels = form.predict(X)
np.save(sys.argv[3], form.predict_proba(X))
np.save(sys.argv[4], form.predict_index(X))
print("sklearn" in sys.modules, form.has_proba)
"""


def test_a_fresh_process_predicts_without_scikit_learn(tmp_path):
    import subprocess
    import sys

    name = "lr-frame-scaled"
    path = _write(MODELS[name], tmp_path / "m.joblib", "joblib")
    real = load_model(path).estimator
    X, _ = _data(n=50, k=3, seed=12)
    rows = np.vstack(_probe_rows(real, X))
    np.save(tmp_path / "X.npy", rows)
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(tmp_path / "X.npy"), str(tmp_path / "p.npy"),
                           str(tmp_path / "i.npy")], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("False True")  # answered without importing scikit-learn
    assert np.load(tmp_path / "p.npy").tobytes() == real.predict_proba(rows).tobytes()
    from invaudit.models.base import class_indices

    np.testing.assert_array_equal(np.load(tmp_path / "i.npy"), class_indices(real.classes_, real.predict(rows)))


def test_a_state_no_fitted_estimator_has_is_left_to_the_full_load(tmp_path):
    """Crafted (allowlisted) states: steps that are not steps, a scaler without its statistics, a
    non-numeric C. The light form declines or answers as the real estimator does; never a crash."""
    X, y = _data()
    bad = []
    pipe = make_pipeline(StandardScaler(), LogisticRegression()).fit(X / SCALES, y)
    pipe.steps = 5
    bad.append(pipe)
    pipe = make_pipeline(StandardScaler(), LogisticRegression()).fit(X / SCALES, y)
    del pipe.steps[0][1].mean_
    bad.append(pipe)
    lr = LogisticRegression().fit(X / SCALES, y)
    lr.C = "many"
    bad.append(lr)
    for i, est in enumerate(bad):
        path = tmp_path / f"bad{i}.joblib"
        joblib.dump(est, path)
        loaded = load_model(path, light=True)
        try:
            full = adapt(load_model(path).estimator)
        except Exception as exc:  # the full path's own failure: the light path may not hide it
            assert light_form(loaded) is None
            with pytest.raises(type(exc)):
                adapt(loaded.estimator)
            continue
        form = light_form(loaded)
        if i == 2:  # C = "many": the mirror fails as supports() does on the real estimator
            with pytest.raises(ValueError):
                supports(full)
            with pytest.raises(ValueError):
                form.influence_support()
        elif form is not None:
            _same_form(form, full)


def test_what_the_mirror_does_not_model_goes_to_the_real_estimator(tmp_path, monkeypatch):
    """Non-finite rows, another dtype or width: the real estimator answers (scikit-learn's own
    error for NaN); so it does as soon as scikit-learn is imported (its configuration may differ)."""
    import sys

    path = _write(MODELS["lr-multi-strings"], tmp_path / "m.joblib", "joblib")
    X, _ = _data(n=5, k=3, seed=13)
    form = light_form(load_model(path, light=True))
    assert form._mirror(X) is None  # scikit-learn is imported in this process
    monkeypatch.delitem(sys.modules, "sklearn")
    assert form._mirror(X) is not None
    bad = X.copy()
    bad[1, 2] = np.nan
    for rows in (bad, X.astype(np.float32), X[:, :4], X[:0]):
        assert form._mirror(rows) is None
    monkeypatch.undo()
    with pytest.raises(ValueError, match="NaN"):
        form.predict(bad)
