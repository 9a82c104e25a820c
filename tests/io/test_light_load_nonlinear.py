"""The light load of networks and trees (issue 16): their state read without scikit-learn, the same form.

- A grid of MLPClassifiers (every activation, binary and multiclass, string classes, feature
  names, the three solvers, scalers and a whitening PCA in front) and of trees and forests
  (depths, string classes, class_weight, max_features, extra trees, a lone extra tree), and the
  sample models: the light load applies and the form built from it equals the form built from
  the real estimator bit for bit (network arrays and folded map, boxes, leaf values, classes and
  their dtype, names, preprocessing, describe()).
- The mirrored ``predict`` / ``predict_proba`` / ``apply`` are scikit-learn's own, bit for bit, on
  rows on, one ulp around and at the float32 rounding edges of every threshold, at feature scales
  1e-5..1e5, and on Fortran-ordered and strided rows.
- It declines (full load, unchanged) on another scikit-learn version, --trust, classes it does
  not read, and trees whose node links the full load refuses.
"""

from __future__ import annotations

import pickle
import sys
import warnings

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA
from sklearn.ensemble import ExtraTreesClassifier, GradientBoostingClassifier, RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.tree import DecisionTreeClassifier, ExtraTreeClassifier

from invaudit.errors import InputError
from invaudit.io import _light
from invaudit.io.model_file import load_model
from invaudit.models import adapt
from invaudit.models._light_nonlinear import LightDifferentiableForm, LightTreesForm, light_form

SCALES = np.array([1e-5, 1.0, 1e3, 1e5, 0.1])


def _data(n=80, k=2, strings=False, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5)) * SCALES + rng.normal(size=5) * SCALES
    score = (X / SCALES) @ rng.normal(size=(5, k))
    y = score.argmax(axis=1) if k > 2 else (score[:, 0] > np.median(score[:, 0])).astype(int)
    if strings:
        y = np.array(["approve", "reject", "review", "refer"])[y]
    return X, y


def _networks():
    X2, y2 = _data()
    X3, y3 = _data(k=3, strings=True, seed=1)
    frame = pd.DataFrame(X3, columns=["age", "income", "debt", "assets", "ratio"])
    small = dict(hidden_layer_sizes=(6,), max_iter=40, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return {
            "relu-binary-scaled": make_pipeline(StandardScaler(), MLPClassifier(**small)).fit(X2, y2),
            "tanh-multi-strings-frame": make_pipeline(MinMaxScaler(), MLPClassifier(activation="tanh", **small))
            .fit(frame, y3),
            "logistic-binary-bool-sgd": make_pipeline(
                StandardScaler(), MLPClassifier(activation="logistic", solver="sgd", **small)).fit(X2, y3 == "approve"),
            "identity-multi-lbfgs": MLPClassifier(activation="identity", solver="lbfgs", hidden_layer_sizes=(4, 3),
                                                  max_iter=60, random_state=0).fit(X3 / SCALES, y3),
            "relu-two-layers-pca": make_pipeline(StandardScaler(), PCA(whiten=True),
                                                 MLPClassifier(hidden_layer_sizes=(5, 4), max_iter=40, random_state=1))
            .fit(frame, y3),
        }


def _trees():
    X2, y2 = _data(seed=2)
    X3, y3 = _data(k=3, strings=True, seed=3)
    frame = pd.DataFrame(X3, columns=["age", "income", "debt", "assets", "ratio"])
    return {
        "tree-depth3": DecisionTreeClassifier(max_depth=3, random_state=0).fit(X2, y2),
        "tree-full-strings-frame": DecisionTreeClassifier(random_state=0).fit(frame, y3),
        "extra-tree": ExtraTreeClassifier(max_depth=4, random_state=0).fit(X3, y3),
        "forest-weighted": RandomForestClassifier(n_estimators=5, max_depth=4, class_weight="balanced",
                                                  max_features=2, random_state=0).fit(X3, y3),
        "forest-binary-deep": RandomForestClassifier(n_estimators=4, random_state=1).fit(X2, y2),
        "extra-trees-frame": ExtraTreesClassifier(n_estimators=4, max_depth=5, max_features=None,
                                                  random_state=0).fit(frame, y3),
        "forest-threads": RandomForestClassifier(n_estimators=3, max_depth=3, n_jobs=2, random_state=0).fit(X2, y2),
    }


NETWORKS = _networks()
TREES = _trees()
MODELS = {**NETWORKS, **TREES}


def _light_form_of(path):
    loaded = load_model(path, light=True)
    assert loaded.light is not None and not loaded.is_loaded, path
    form = light_form(loaded)
    assert form is not None and not loaded.is_loaded, path  # built from the state alone
    return loaded, form


def _bits(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, what
    if a.dtype.kind in "OUS":
        assert np.array_equal(a, b), what
    else:
        assert a.tobytes() == b.tobytes(), what


def _same_form(light, full, X):
    assert type(full).__name__ in ("DifferentiableForm", "TreesForm")
    assert isinstance(light, (LightDifferentiableForm, LightTreesForm))
    _bits(light.classes, full.classes, "classes")
    assert (light.kind, light.n_features, light.feature_names, light.preprocessing) == \
        (full.kind, full.n_features, full.feature_names, full.preprocessing)
    assert light.describe() == full.describe()
    assert light.has_proba == full.has_proba
    if light.kind == "differentiable":
        from invaudit.influence import supports

        assert light.influence_support() == supports(full)
        assert (light.link, light.alpha) == (full.link, full.alpha)
        a, b = light.logits.__self__, full.logits.__self__  # the networks
        assert (a.activation, a.link, a.n_classes, a.n_features) == (b.activation, b.link, b.n_classes, b.n_features)
        for name in ("coefs", "intercepts"):
            for u, v in zip(getattr(a, name), getattr(b, name), strict=True):
                _bits(u, v, name)
        assert (a.A is None) == (b.A is None)
        if a.A is not None:
            _bits(a.A, b.A, "A"), _bits(a.c, b.c, "c")
        _bits(light.params(), full.params(), "params")
        _bits(light.logits(X), full.logits(X), "logits")
        _bits(light.log_proba_grad(X, 1), full.log_proba_grad(X, 1), "gradients")
    else:
        assert (light.aggregate, light.scale, light.link, light.init) == \
            (full.aggregate, full.scale, full.link, full.init)
        assert len(light.trees) == len(full.trees)
        for s, t in zip(light.trees, full.trees):
            for name in ("lower", "upper", "value"):
                _bits(getattr(s, name), getattr(t, name), name)
        leaves = full.leaf_index(X)
        _bits(light.proba_from_leaves(leaves), full.proba_from_leaves(leaves), "proba")
        # scikit-learn is imported here, so the light form's leaf_index is the real estimator's
        # apply: the mirrored routing is compared in test_the_mirrored_answers_are_scikit_learns
        plan, mine, theirs = light.__dict__["_tree_plan"], light.leaf_index.__self__, full.leaf_index.__self__
        for name in ("node_to_leaf", "node_offsets", "offsets", "sizes", "values"):
            _bits(getattr(mine, name), getattr(theirs, name), name)
        nodes = plan.apply(plan.rows32(X)).reshape(len(X), -1)
        _bits(mine.node_to_leaf[nodes + mine.node_offsets], leaves, "leaves")


def _probe(est, X):
    """Rows at feature scales 1e-5..1e5 and, for trees, rows on, one ulp around and at the float32
    rounding edges of every threshold (the other features from data rows)."""
    rows = [X[:12], X[:3] * 1.5, X[3:6] * -0.7]
    trees = []
    final = est.steps[-1][1] if hasattr(est, "steps") else est
    if hasattr(final, "tree_"):
        trees = [final.tree_]
    elif hasattr(final, "estimators_"):
        trees = [e.tree_ for e in final.estimators_]
    from invaudit.models.trees import float32_split_point

    for t in trees:
        inner = np.flatnonzero(t.children_left != -1)
        thr, feat = t.threshold[inner], t.feature[inner]
        edge = float32_split_point(thr)
        for values in (thr, np.nextafter(thr, np.inf), np.nextafter(thr, -np.inf), edge, np.nextafter(edge, np.inf)):
            R = np.repeat(X[:1], len(inner), axis=0)
            R[np.arange(len(inner)), feat] = values
            rows.append(R)
    return np.ascontiguousarray(np.vstack(rows), dtype=np.float64)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("light_nonlinear")
    out = {}
    for name, est in MODELS.items():
        out[name] = folder / f"{name}.joblib"
        joblib.dump(est, out[name])
    return out


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_light_form_is_the_real_estimators_form_bit_for_bit(files, name):
    loaded, form = _light_form_of(files[name])
    full = adapt(load_model(files[name]).estimator)
    X = _probe(MODELS[name], _data(n=20, k=3, seed=9)[0])
    _same_form(form, full, X)
    assert not loaded.is_loaded  # nothing above needed the estimator
    est = form.estimator  # when something reads it: the real one, fully loaded and checked
    assert loaded.is_loaded and type(est) is type(MODELS[name])
    np.testing.assert_array_equal(form.predict(X), MODELS[name].predict(X))


def test_the_sample_models_load_light_with_the_same_form(samples):
    X = np.load(samples / "digits_test.npz")["X"][:15]
    for name, rows in (("digits_mlp.joblib", X), ("wine_forest.joblib", None), ("breast_cancer_tree.joblib", None)):
        loaded, form = _light_form_of(samples / name)
        est = load_model(samples / name).estimator
        if rows is None:
            rows = _probe(est, np.load(samples / name.replace("forest", "test").replace("tree", "test")
                                       .replace(".joblib", ".npz"))["X"][:10])
        _same_form(form, adapt(est), rows)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_mirrored_answers_are_scikit_learns_bit_for_bit(files, name):
    est = MODELS[name]
    _, form = _light_form_of(files[name])
    plan = form._make_plan()
    X = _probe(est, _data(n=20, k=3, seed=11)[0])
    if name == "relu-two-layers-pca":
        assert plan is None  # a PCA in front: the real estimator answers
        return
    assert plan is not None
    layouts = (X, np.asfortranarray(X), np.repeat(X, 2, axis=0)[::2])
    for rows in layouts:
        if isinstance(form, LightTreesForm):
            _bits(plan.apply(plan.rows32(rows)), est.apply(rows), "apply")
            if name == "forest-threads":  # threads add the trees in any order: not mirrored
                assert not plan.ordered
                continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # fitted on a frame, asked with arrays
            _bits(plan.predict(rows), est.predict(rows), "predict")
            _bits(plan.predict_proba(rows), est.predict_proba(rows), "predict_proba")


def test_the_mirror_answers_only_without_scikit_learn_and_for_finite_float64_rows(files, monkeypatch):
    """While scikit-learn is imported (its configuration may differ) the real estimator answers;
    NaN, float32, another width, no rows, and values float32 cannot hold go to it as well."""
    for name in ("tanh-multi-strings-frame", "forest-weighted"):
        _, form = _light_form_of(files[name])
        X = _data(n=6, k=3, seed=13)[0]
        assert form._plan_for(X) is None  # scikit-learn is imported in this process
        with monkeypatch.context() as m:
            m.delitem(sys.modules, "sklearn")
            assert form._plan_for(X) is not None
            bad = X.copy()
            bad[1, 2] = np.nan
            for rows in (bad, X.astype(np.float32), X[:, :4], X[:0]):
                assert form._plan_for(rows) is None
            if isinstance(form, LightTreesForm):
                huge = X.copy()
                huge[0, 3] = 1e300  # finite in float64, inf in float32: scikit-learn refuses it
                assert form.__dict__["_tree_plan"].rows32(huge) is None
        assert not form.estimator_loaded
        if isinstance(form, LightTreesForm):  # forests route NaN (missing values): as the real one does
            _bits(form.predict_proba(bad), TREES[name].predict_proba(bad), "NaN rows")
        else:  # scikit-learn's own error
            with pytest.raises(ValueError, match="NaN"):
                form.predict(bad)


def _declined(path, **kw):
    loaded = load_model(path, light=True, **kw)
    return loaded.light is None or light_form(loaded) is None


def test_it_declines_what_it_does_not_read(tmp_path, files):
    X, y = _data()
    gb = tmp_path / "gb.joblib"
    joblib.dump(GradientBoostingClassifier(n_estimators=2).fit(X, y), gb)
    scaled = tmp_path / "scaled-forest.joblib"
    joblib.dump(make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=2, random_state=0)).fit(X, y),
                scaled)
    assert load_model(gb, light=True).light is None
    assert _declined(scaled)  # the trees form pulls its boxes back through the scaler: full path
    loaded = load_model(files["forest-weighted"], light=True, trust=True)
    assert loaded.light is None and loaded.is_loaded and loaded.trusted


def test_another_scikit_learn_version_declines(tmp_path):
    import sklearn

    version = sklearn.__version__.encode()
    for name in ("relu-binary-scaled", "forest-weighted"):
        raw = pickle.dumps(MODELS[name], protocol=4)
        path = tmp_path / f"{name}.pkl"
        path.write_bytes(raw.replace(version, b"0" * len(version)))
        loaded = load_model(path, light=True)
        assert loaded.light is None
        assert any("pickled with scikit-learn" in w for w in loaded.warnings)


def test_trees_the_full_load_refuses_are_declined_and_refused(tmp_path):
    X, y = _data()
    for field, value in (("left_child", 10 ** 6), ("feature", 7), ("right_child", 0)):
        est = DecisionTreeClassifier(max_depth=3, random_state=0).fit(X, y)
        state = est.tree_.__getstate__()
        nodes = state["nodes"].copy()
        nodes[field][0] = value
        crafted = type(est.tree_)(*est.tree_.__reduce__()[1])
        crafted.__setstate__({**state, "nodes": nodes})
        est.tree_ = crafted
        path = tmp_path / f"{field}.joblib"
        joblib.dump(est, path)
        assert _declined(path), field
        with pytest.raises(InputError, match="was refused"):
            load_model(path, light=True).estimator


def test_the_light_tree_has_the_real_trees_attributes(files):
    """LightTree answers what scikit-learn's Tree answers (same arrays, dtypes, shapes), and the
    node record layout it accepts is the installed scikit-learn's."""
    from sklearn.tree._tree import NODE_DTYPE

    assert np.dtype(_light.TREE_NODE_DTYPE) == NODE_DTYPE
    loaded, _ = _light_form_of(files["forest-weighted"])
    for light, real in zip(loaded.light.estimators_, TREES["forest-weighted"].estimators_, strict=True):
        lt, rt = light.tree_, real.tree_
        for name in ("n_features", "n_outputs", "max_n_classes", "node_count", "capacity", "max_depth"):
            assert int(getattr(lt, name)) == int(getattr(rt, name)), name
        _bits(lt.n_classes, rt.n_classes, "n_classes")
        for name in ("children_left", "children_right", "feature", "threshold", "impurity", "n_node_samples",
                     "weighted_n_node_samples", "missing_go_to_left", "value"):
            _bits(getattr(lt, name), getattr(rt, name), name)


def test_a_light_form_sent_to_a_spawned_worker_is_the_full_form(files):
    """Pickled (loky, Dask: workers that are not forked), a light form becomes the full form of the
    real estimator, which is unpickled here first."""
    for name in ("tanh-multi-strings-frame", "forest-weighted"):
        loaded, form = _light_form_of(files[name])
        copy = pickle.loads(pickle.dumps(form))
        assert loaded.is_loaded and type(copy).__name__ in ("DifferentiableForm", "TreesForm")
        X = _data(n=8, k=3, seed=17)[0]
        _same_form(form, copy, X)
