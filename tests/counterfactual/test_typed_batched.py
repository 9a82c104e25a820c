"""Typed-row searches evaluate the pipeline split at its ColumnTransformer (numeric blocks on arrays,
categorical blocks cached per category assignment, the final estimator on the encoded array):
the probabilities must be the pipeline's own ``predict_proba`` bit for bit, on rows as users
have them (string categories, blanks, categories the encoder never saw, an ID column, columns in
another order, numeric scales 1e-5..1e5), and the searches' answers must not change."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, MinMaxScaler, OneHotEncoder, StandardScaler
from sklearn.svm import SVC

import invaudit.counterfactual.tabular as typed_cf
from invaudit.models._typed_batch import CategoryCache, EncodedPipeline
from invaudit.models.tabular import split_tabular

NUM = ["tiny", "huge", "count"]
CAT = ["color", "city"]
COLORS = ["red", "green", "blue"]
CITIES = ["Oslo", "Lima", "Pune", "Kyiv"]


def _table(n, seed, unknown=False):
    rng = np.random.default_rng(seed)
    tiny = rng.normal(3e-5, 2e-5, n)
    huge = rng.lognormal(np.log(5e4), 0.8, n)
    count = rng.integers(0, 9, n).astype(float)
    color = rng.choice(COLORS + (["purple"] if unknown else []), n).astype(object)
    city = rng.choice(CITIES + (["Atlantis"] if unknown else []), n).astype(object)
    tiny[rng.random(n) < 0.1] = np.nan
    huge[rng.random(n) < 0.1] = np.nan
    color[rng.random(n) < 0.1] = np.nan
    s = (np.nan_to_num(tiny, nan=3e-5) - 3e-5) * 1e5 + (np.log(np.nan_to_num(huge, nan=5e4)) - np.log(5e4)) \
        + 0.3 * (count - 4) + np.where(color == "red", 1.0, 0.0) - np.where(city == "Lima", 1.0, 0.0)
    y = np.array(["low", "mid", "high"])[np.digitize(s + rng.normal(0, 0.3, n), [-0.5, 0.5])]
    frame = pd.DataFrame({"id": [f"R{i:03d}" for i in range(n)], "tiny": tiny, "huge": huge, "count": count,
                          "color": color, "city": city})
    return frame.astype({"id": object, "color": object, "city": object}), y


def _cat_step():
    return Pipeline([("imp", SimpleImputer(strategy="constant", fill_value="none")),
                     ("oh", OneHotEncoder(handle_unknown="ignore"))])


def _ct(**kw):
    return ColumnTransformer([("num", Pipeline([("imp", SimpleImputer()), ("sc", StandardScaler())]), NUM),
                              ("cat", _cat_step(), CAT)], **kw)


def _pipelines():
    return {
        "forest": Pipeline([("pre", _ct()), ("clf", RandomForestClassifier(n_estimators=8, max_depth=4,
                                                                          random_state=0))]),
        "hgb": Pipeline([("pre", _ct()), ("clf", HistGradientBoostingClassifier(max_iter=8, random_state=0))]),
        "mlp": Pipeline([("pre", _ct()), ("clf", MLPClassifier((6,), max_iter=150, random_state=0))]),
        "svc": Pipeline([("pre", _ct()), ("clf", SVC(probability=True, random_state=0))]),
        # sparse output of the ColumnTransformer, read by the network as a sparse matrix
        "sparse-mlp": Pipeline([("pre", _ct(sparse_threshold=1.0)),
                                ("clf", MLPClassifier((6,), max_iter=150, random_state=0))]),
        # weights, a passthrough remainder, a step after the ColumnTransformer (inside the front)
        "weighted-pca": Pipeline([
            ("pre", Pipeline([("ct", ColumnTransformer(
                [("num", Pipeline([("imp", SimpleImputer()), ("sc", MinMaxScaler())]), ["tiny", "huge"]),
                 ("cat", _cat_step(), CAT)], remainder="passthrough", transformer_weights={"num": 2.0})),
                ("pca", PCA(4, random_state=0))])),
            ("clf", MLPClassifier((6,), max_iter=150, random_state=0))]),
        # a numeric block that reads its columns by name: fed a DataFrame of its columns
        "named": Pipeline([("pre", ColumnTransformer(
            [("num", Pipeline([("f", FunctionTransformer(lambda d: d[["huge", "tiny", "count"]].to_numpy() * 2.0)),
                               ("imp", SimpleImputer()), ("sc", StandardScaler())]), NUM),
             ("cat", _cat_step(), CAT)])),
            ("clf", RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0))]),
    }


@pytest.fixture(autouse=True)
def _one_thread():
    """Batches of a few dozen rows: OpenMP teams (HistGradientBoosting) cost more than they save."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def fitted():
    train, y = _table(160, 0)
    from threadpoolctl import threadpool_limits

    with warnings.catch_warnings(), threadpool_limits(limits=1):   # OpenMP teams cost more than they save here
        warnings.simplefilter("ignore")
        return {name: p.fit(train[NUM + CAT], y) for name, p in _pipelines().items()}


def _random_rows(n, seed):
    """Rows as a user has them: the ID column first, the model's columns in reverse order, blanks,
    categories never seen in training, numeric values spread over scales 1e-5..1e5 (and beyond
    the training range)."""
    frame, _ = _table(n, seed, unknown=True)
    rng = np.random.default_rng(seed + 1)
    frame["tiny"] = np.where(np.isnan(frame["tiny"]), np.nan, rng.normal(0, 1e-4, n))
    frame["huge"] = np.where(np.isnan(frame["huge"]), np.nan, rng.normal(0, 1e5, n))
    return frame[["id"] + (NUM + CAT)[::-1]]


@pytest.mark.parametrize("name", list(_pipelines()))
def test_batched_evaluation_is_the_pipelines_predict_proba(fitted, name):
    pipe = fitted[name]
    tm = split_tabular(pipe)
    rows = _random_rows(60, 7)
    check = rows.iloc[:12]   # built and checked on some rows, then asked about others
    fast = EncodedPipeline.build(tm, check)
    assert fast is not None, name
    assert fast.num_as_frame == (name == "named")
    num = rows[[c.name for c in tm.columns if c.kind != "categorical"]].to_numpy(dtype=np.float64)
    cache = CategoryCache(fast, lambda keys: rows.iloc[keys])
    # the cache is filled by a first batch, then answers a batch in another order with repeats
    first = np.arange(0, 60, 3)
    fast.predict_proba(fast.encode(num[first], cache.rows(first)))
    order = np.random.default_rng(0).permutation(np.r_[np.arange(60), first])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = pipe.predict_proba(rows.iloc[order][NUM + CAT])
        want_label = pipe.predict(rows.iloc[order][NUM + CAT])
    Z = fast.encode(num[order], cache.rows(order))
    got = fast.predict_proba(Z)
    assert got.dtype == want.dtype and np.array_equal(got, want), (name, np.abs(got - want).max())
    assert np.array_equal(fast.predict(Z), want_label)


def test_pandas_output_keeps_the_whole_pipeline(fitted):
    train, y = _table(80, 3)
    ct = ColumnTransformer([("num", SimpleImputer(), NUM),
                            ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), CAT)])
    pipe = Pipeline([("pre", ct.set_output(transform="pandas")), ("clf", RandomForestClassifier(3, random_state=0))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe.fit(train[NUM + CAT].fillna({"color": "red"}), y)
    tm = split_tabular(pipe)
    assert tm is not None and EncodedPipeline.build(tm, _random_rows(5, 1).fillna({"color": "red"})) is None


def test_search_batches_are_the_pipelines_answers(fitted, monkeypatch):
    """Inside a real search (categories changed by the choice table, blanks at their fill value,
    integer repair), sampled batches asked of the split pipeline get the whole pipeline's
    probabilities on the same rows as DataFrames, bit for bit; the answer is verified."""
    tm = split_tabular(fitted["forest"], integer_columns=["count"])
    rows = _random_rows(40, 11).reset_index(drop=True)
    t = tm.classes.tolist().index("high")
    rows = rows.iloc[np.flatnonzero(tm.predict_index(rows) != t)[:1]].reset_index(drop=True)
    fast_proba = typed_cf._RowBuilderProba.predict_proba
    seen = []

    def checked(self, X):
        p = fast_proba(self, X)
        if self.fast is not None and len(seen) % 8 == 0:   # every 8th batch: the whole pipeline too
            X = np.asarray(X, dtype=np.float64)
            assert np.array_equal(p, self.s.tm.predict_proba(self.frame(X)))
            seen.append(len(X))
        elif self.fast is not None:
            seen.append(0)
        return p

    monkeypatch.setattr(typed_cf._RowBuilderProba, "predict_proba", checked)
    res = typed_cf.tabular_counterfactuals(tm, rows, target=t, norm="l1",
                                           scale={"tiny": 1e-5, "huge": 1e4, "count": 1.0})
    assert len(seen) > 40 and sum(n > 1 for n in seen) >= 5   # many batches, several checked
    assert res.status.tolist() == ["found"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert fitted["forest"].predict(res.points[NUM + CAT])[0] == "high"


def test_svc_answers_are_searched_by_its_own_predict(fitted):
    """An SVC's Platt probabilities disagree with its ``predict`` at the boundary: searched by their
    argmax, every answer failed the pipeline's own check; searched by ``predict`` they are found."""
    pipe = fitted["svc"]
    tm = split_tabular(pipe)
    rows = _random_rows(40, 11).reset_index(drop=True)
    t = tm.classes.tolist().index("high")
    rows = rows.iloc[np.flatnonzero(tm.predict_index(rows) != t)[:2]].reset_index(drop=True)
    res = typed_cf.tabular_counterfactuals(tm, rows, target=t, norm="l1", scale={"tiny": 1e-5, "huge": 1e4},
                                           immutable=["color"])
    found = np.flatnonzero(res.status == "found")
    assert len(found) == 2, res.reason
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert (pipe.predict(res.points.iloc[found][NUM + CAT]) == "high").all()


@pytest.mark.parametrize("name", ["forest", "sparse-mlp"])
def test_coded_rows_for_explain_are_the_pipelines_answers(fitted, name):
    """``explain`` asks :class:`CodedRows` about mutants ``where(mask, row, baseline)``: the split
    pipeline answers them with the pipeline's own bits (blanks and unseen categories kept)."""
    import pickle

    from invaudit.models.tabular import CodedRows

    pipe = fitted[name]
    coded = CodedRows(split_tabular(pipe))
    rows = _random_rows(30, 3)
    X = coded.encode(rows)
    assert np.isnan(X).any() and (X[:, coded.categorical] >= np.array([3, 4])).any()   # blanks, unseen
    rng = np.random.default_rng(0)
    base = X[rng.integers(0, len(X), len(X))]
    for _ in range(3):
        M = np.where(rng.random(X.shape) < 0.5, X, base)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = pipe.predict_proba(coded.decode(M)[NUM + CAT])
            want_label = pipe.predict(coded.decode(M)[NUM + CAT])
        assert np.array_equal(coded.predict_proba(M), want)
        assert np.array_equal(coded.predict(M), want_label)
    assert coded._fast is not None
    assert "_fast" not in coded.__getstate__() and "_cache" not in coded.__getstate__()   # rebuilt where sent
    if name == "sparse-mlp":   # through pickle (as to a Dask worker): rebuilt there, same answers
        again = pickle.loads(pickle.dumps(coded))
        assert np.array_equal(again.predict_proba(X), coded.predict_proba(X))
