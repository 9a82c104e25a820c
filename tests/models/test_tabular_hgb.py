"""HistGradientBoostingClassifier with native categorical features, read as a typed table
(issue 13): categorical columns take only the categories the model knows (never a code moved by
an ulp), every answer is verified by the estimator's own predict, and the search is not exact."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from invaudit.counterfactual.tabular import tabular_counterfactuals
from invaudit.margins._tabular import tabular_margins
from invaudit.models.tabular import split_tabular

N_ROWS = 8


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # HistGradientBoosting's OpenMP threads on a busy shared machine: one thread is much faster
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def numpy_data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    X = np.column_stack([rng.integers(0, 6, n), rng.normal(size=n), rng.normal(size=n),
                         rng.integers(0, 6, n)]).astype(np.float64)
    votes = (X[:, 0] % 3 == 0).astype(int) + (X[:, 3] >= 3) + (X[:, 1] + X[:, 2] > 0)
    return X, (votes >= 2).astype(int)


def frame_data(n=300, seed=1):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "color": pd.Categorical(rng.choice(["red", "green", "blue", "black"], n)),
        "x": rng.normal(size=n),
        "size": pd.Categorical(rng.choice(["S", "M", "L"], n)),
        "z": rng.normal(size=n),
    })
    votes = (df["color"] == "red").astype(int) + (df["size"] == "L") + (df["x"] + df["z"] > 0)
    return df, (votes >= 2).astype(int).to_numpy()


@pytest.fixture(scope="module")
def numpy_model():
    X, y = numpy_data()
    est = HistGradientBoostingClassifier(categorical_features=[0, 3], max_iter=15, random_state=0).fit(X, y)
    return X, y, est


@pytest.fixture(scope="module")
def frame_model():
    df, y = frame_data()
    est = HistGradientBoostingClassifier(categorical_features="from_dtype", max_iter=15, random_state=0).fit(df, y)
    return df, y, est


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

def _numeric_thresholds(est):
    """{original numeric feature: sorted bin thresholds} (a superset of the split thresholds)."""
    bm = est._bin_mapper
    pre_num = [k for k, c in enumerate(bm.is_categorical) if not c]
    orig_num = [f for f, c in enumerate(est.is_categorical_) if not c]
    assert len(pre_num) == len(orig_num)
    return {f: np.sort(np.asarray(bm.bin_thresholds_[k])) for f, k in zip(orig_num, pre_num)}


def _lower_bound(est, x_num_row, cc=1.0):
    """A proven lower bound on any prediction change of one row (L2, unscaled): either a category
    changes (cost cc) or some numeric value crosses one of the model's thresholds."""
    th = _numeric_thresholds(est)
    d = min((np.abs(t - x_num_row[f]).min() for f, t in th.items() if len(t)), default=np.inf)
    return min(cc, d)


def _check(tm, est, rows, res, as_input, cat_cols, num_cols, known):
    ok = res.status == "found"
    assert ok.all(), res.status
    assert not res.exact.any()
    assert all("verified-search" in m for m in res.method[ok])
    pts = res.points
    # categorical values exactly among the known ones (no float noise: exact membership)
    for c in cat_cols:
        for v in pts[c]:
            assert v in set(known[c])
    # the estimator's own predict gives the reported class
    pred = est.predict(as_input(pts))
    np.testing.assert_array_equal(np.searchsorted(tm.classes, pred), res.target_index)
    # the reported distance is the real mixed distance of the reported point
    for i in range(len(rows)):
        m = sum(pts[c].iloc[i] != rows[c].iloc[i] for c in cat_cols)
        dn = np.linalg.norm(pts[num_cols].iloc[i].to_numpy(float) - rows[num_cols].iloc[i].to_numpy(float))
        assert res.distance[i] == pytest.approx(np.sqrt(m + dn * dn), rel=1e-9, abs=1e-12)
    return ok


# ------------------------------------------------------------------------------------------------
# (a) fitted on a numpy array with categorical_features=[0, 3]
# ------------------------------------------------------------------------------------------------

def test_numpy_schema(numpy_model):
    X, y, est = numpy_model
    tm = split_tabular(est)
    assert tm is not None
    assert tm.column_names == ["x0", "x1", "x2", "x3"]
    assert [c.kind for c in tm.columns] == ["categorical", "numeric", "numeric", "categorical"]
    for f in (0, 3):
        assert tm.columns[f].categories == tuple(float(v) for v in range(6))
    assert tm.final_form is None and tm.array_input and tm.category_dtypes is None
    assert "verified search" in tm.describe()["categorical_splits"]
    # fed as the array it was fitted on
    df = pd.DataFrame(X[:20], columns=tm.column_names)
    np.testing.assert_array_equal(tm.predict(df), est.predict(X[:20]))
    np.testing.assert_allclose(tm.predict_proba(df), est.predict_proba(X[:20]))


def test_numpy_mask_and_pipeline_schema(numpy_model):
    X, y, _ = numpy_model
    mask = np.array([True, False, False, True])
    est = HistGradientBoostingClassifier(categorical_features=mask, max_iter=5, random_state=0)
    pipe = Pipeline([("id", "passthrough"), ("hgb", est)]).fit(X, y)
    tm = split_tabular(pipe)
    assert [c.kind for c in tm.columns] == ["categorical", "numeric", "numeric", "categorical"]
    assert tm.columns[3].categories == tuple(float(v) for v in range(6))
    assert tm.estimator is pipe and tm.array_input


def test_plain_hgb_is_not_tabular(numpy_model):
    X, y, _ = numpy_model
    est = HistGradientBoostingClassifier(max_iter=5).fit(X, y)
    assert split_tabular(est) is None


def test_numpy_counterfactuals_and_margins(numpy_model):
    X, y, est = numpy_model
    tm = split_tabular(est)
    rows = pd.DataFrame(X[:N_ROWS], columns=tm.column_names)
    known = {"x0": tm.columns[0].categories, "x3": tm.columns[3].categories}
    as_input = lambda f: f[tm.column_names].to_numpy(dtype=np.float64)   # noqa: E731
    res = tabular_counterfactuals(tm, rows, target="other")
    _check(tm, est, rows, res, as_input, ["x0", "x3"], ["x1", "x2"], known)
    for i in range(N_ROWS):
        for c in ("x0", "x3"):
            v = res.points[c].iloc[i]
            assert v == np.round(v)   # never fractional
    mg = tabular_margins(tm, rows)
    _check(tm, est, rows, mg.counterfactuals, as_input, ["x0", "x3"], ["x1", "x2"], known)
    for i in range(N_ROWS):
        lb = _lower_bound(est, X[i])
        assert mg.margin[i] >= lb * (1 - 1e-9)
        assert mg.margin[i] > 1e-6 or lb <= 1e-6
    assert not mg.exact.any()


# ------------------------------------------------------------------------------------------------
# (b) fitted on a DataFrame with pandas category dtype and categorical_features="from_dtype"
# ------------------------------------------------------------------------------------------------

def test_frame_schema(frame_model):
    df, y, est = frame_model
    tm = split_tabular(est)
    assert tm.column_names == ["color", "x", "size", "z"]
    assert [c.kind for c in tm.columns] == ["categorical", "numeric", "categorical", "numeric"]
    assert tm.columns[0].categories == tuple(df["color"].cat.categories)
    assert tm.columns[2].categories == tuple(df["size"].cat.categories)
    assert not tm.array_input and set(tm.category_dtypes) == {"color", "size"}
    assert tm.final_form is None
    # rows read as plain strings (e.g. from a CSV) are fed as the category dtype
    plain = df.iloc[:20].astype({"color": object, "size": object})
    np.testing.assert_array_equal(tm.predict(plain), est.predict(df.iloc[:20]))


def test_frame_by_names_schema(frame_model):
    df, y, _ = frame_model
    est = HistGradientBoostingClassifier(categorical_features=["color", "size"], max_iter=5).fit(df, y)
    tm = split_tabular(Pipeline([("hgb", est)]).fit(df, y))
    assert [c.kind for c in tm.columns] == ["categorical", "numeric", "categorical", "numeric"]
    assert set(tm.columns[0].categories) == set(df["color"].cat.categories)


def test_frame_counterfactuals_and_margins(frame_model):
    df, y, est = frame_model
    tm = split_tabular(est)
    rows = df.iloc[:N_ROWS].reset_index(drop=True)
    known = {"color": tm.columns[0].categories, "size": tm.columns[2].categories}
    res = tabular_counterfactuals(tm, rows, target="other")
    _check(tm, est, rows, res, lambda f: f, ["color", "size"], ["x", "z"], known)
    assert isinstance(res.points["color"].dtype, pd.CategoricalDtype)
    assert not res.points[["color", "size"]].isna().any().any()
    mg = tabular_margins(tm, rows)
    _check(tm, est, rows, mg.counterfactuals, lambda f: f, ["color", "size"], ["x", "z"], known)
    Xn = rows.to_numpy(dtype=object)
    for i in range(N_ROWS):
        xr = np.array([np.nan, Xn[i, 1], np.nan, Xn[i, 3]], dtype=float)
        lb = _lower_bound(est, xr)
        assert mg.margin[i] >= lb * (1 - 1e-9)
        assert mg.margin[i] > 1e-6 or lb <= 1e-6


def test_passthrough_after_column_transformer(frame_model):
    df, y, _ = frame_model
    d2 = df.assign(color=df["color"].cat.codes.astype(float), size=df["size"].cat.codes.astype(float))
    ct = ColumnTransformer([("num", StandardScaler(), ["x", "z"])], remainder="passthrough")
    pipe = Pipeline([("pre", ct), ("hgb", HistGradientBoostingClassifier(categorical_features=[2, 3],
                                                                         max_iter=5))]).fit(d2, y)
    tm = split_tabular(pipe)
    kinds = {c.name: c.kind for c in tm.columns}
    assert kinds == {"color": "categorical", "x": "numeric", "size": "categorical", "z": "numeric"}
    assert tm.columns[2].categories == (0.0, 1.0, 2.0)


# ------------------------------------------------------------------------------------------------
# brute force on a tiny case
# ------------------------------------------------------------------------------------------------

def test_brute_force_tiny():
    rng = np.random.default_rng(5)
    n = 300
    c = rng.integers(0, 3, n).astype(float)
    x = rng.normal(size=n) * 2
    y = ((x + np.array([-1.5, 0.0, 1.5])[c.astype(int)] + rng.normal(0, 0.3, n)) > 0).astype(int)
    X = np.column_stack([c, x])
    est = HistGradientBoostingClassifier(categorical_features=[0], max_depth=2, max_iter=5,
                                         random_state=0).fit(X, y)
    tm = split_tabular(est)
    assert tm.columns[0].categories == (0.0, 1.0, 2.0)
    rows = X[:8]
    cc = 0.7
    res = tabular_counterfactuals(tm, pd.DataFrame(rows, columns=tm.column_names), target="other",
                                  categorical_cost=cc)
    # the reference: every category x a fine grid over the numeric column (plus each threshold's
    # two sides, where the optimum of a tree ensemble lies)
    th = _numeric_thresholds(est)[1]
    grid = np.r_[np.linspace(x.min() - 1, x.max() + 1, 20001), th, np.nextafter(th, np.inf)]
    own = est.predict(rows)
    for i in range(len(rows)):
        best = np.inf
        for k in (0.0, 1.0, 2.0):
            P = np.column_stack([np.full(len(grid), k), grid])
            hit = est.predict(P) != own[i]
            if hit.any():
                d = np.abs(grid[hit] - rows[i, 1]).min()
                best = min(best, np.sqrt((k != rows[i, 0]) * cc ** 2 + d * d))
        assert np.isfinite(best)
        assert res.status[i] == "found"
        assert not res.exact[i]
        assert res.points.iloc[i, 0] in (0.0, 1.0, 2.0)
        assert est.predict(res.points.to_numpy()[[i]])[0] != own[i]
        assert res.distance[i] <= best * 1.05 + 1e-9
        step = grid[1] - grid[0]
        assert res.distance[i] >= best - step - 1e-9
