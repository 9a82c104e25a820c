"""Typed rows (ColumnTransformer pipelines) in parallel: the typed solvers' fixed chunks of rows
run serially, on a process pool or on a Dask LocalCluster with the same answers bit for bit, in
process and through the command line (``--jobs``, ``--scheduler``); every answer is checked by
the pipeline itself."""

import warnings

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from invaudit import parallel
from invaudit.counterfactual import tabular as cf_tabular
from invaudit.counterfactual.tabular import tabular_counterfactuals
from invaudit.margins._tabular import tabular_margins
from invaudit.models.tabular import split_tabular

NUM = ["income", "age", "ratio"]
CAT = ["employment", "housing"]


def loans(n, seed=0):
    """Credit-like rows: an ID column, string categories with blanks, scales 1e-5..1e5, columns
    not in the model's order."""
    rng = np.random.default_rng(seed)
    income = np.round(np.exp(rng.uniform(np.log(2e3), np.log(2e5), n)), 2)
    age = rng.integers(18, 80, n).astype(float)
    ratio = rng.uniform(0, 4e-5, n)  # a feature at 1e-5 scale
    emp = rng.choice(["unemployed", "salaried", "self-employed", "retired"], n).astype(object)
    housing = rng.choice(["rent", "own", "mortgage"], n).astype(object)
    score = (np.log(income) - 10.0) + 0.03 * (age - 45) - 2e4 * ratio \
        + np.where(emp == "unemployed", -1.5, 0.5) + np.where(housing == "own", 0.8, 0.0)
    y = np.where(score + rng.normal(0, 0.7, n) > 0, "approved", "declined")
    income[rng.random(n) < 0.08] = np.nan
    emp[rng.random(n) < 0.08] = np.nan
    df = pd.DataFrame({"housing": housing, "customer": [f"K{i:05d}" for i in range(n)], "ratio": ratio,
                       "employment": emp, "income": income, "age": age})
    return df.astype({"housing": object, "employment": object, "customer": object}), y


def pipeline(clf):
    ct = ColumnTransformer([("num", Pipeline([("imp", SimpleImputer()), ("sc", StandardScaler())]), NUM),
                            ("cat", Pipeline([("imp", SimpleImputer(strategy="most_frequent")),
                                              ("oh", OneHotEncoder(handle_unknown="ignore"))]), CAT)])
    return Pipeline([("pre", ct), ("clf", clf)])


@pytest.fixture(scope="module")
def data():
    return loans(260)


@pytest.fixture(scope="module")
def linear(data):
    df, y = data
    return pipeline(LogisticRegression(max_iter=3000)).fit(df[NUM + CAT], y)


@pytest.fixture(scope="module")
def forest(data):
    df, y = data
    return pipeline(RandomForestClassifier(n_estimators=12, max_depth=5, random_state=0)).fit(df[NUM + CAT], y)


# the pool's answers are the ones compared; `cluster` (tests/conftest.py) is one LocalCluster per run
pytestmark = pytest.mark.usefixtures("pool_answers")


def same(a, b):
    """Two typed results equal bit for bit: every array, the points frame and the changes."""
    for name in ("status", "reason", "distance", "original_index", "target_index", "predicted_index",
                 "target_probability", "exact", "method", "lower_bound"):
        x, y = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        assert x.dtype == y.dtype and x.shape == y.shape, name
        if x.dtype.kind == "f":
            assert np.array_equal(x, y, equal_nan=True), name
        else:
            assert all((u == v) or (u is None and v is None) for u, v in zip(x.tolist(), y.tolist())), name
    pd.testing.assert_frame_equal(a.points, b.points, check_exact=True)
    assert [[(c, str(o), str(n)) for c, o, n in r] for r in a.changes] == \
        [[(c, str(o), str(n)) for c, o, n in r] for r in b.changes]


def check_valid(tm, res, frame, target=None):
    """Every found answer is a valid row the pipeline itself puts in the target class; frozen
    blanks stay blank; categories are known ones."""
    ok = np.flatnonzero(res.status == "found")
    assert ok.size
    pts = res.points.iloc[ok]
    pred = tm.predict_index(pts)
    assert np.array_equal(pred, res.target_index[ok])
    orig = tm.predict_index(frame.iloc[ok])
    assert np.all(pred != orig) if target is None else np.array_equal(pred, np.asarray(target)[ok])
    for c in CAT:
        seen = set(pts[c].dropna())
        assert seen <= {"unemployed", "salaried", "self-employed", "retired", "rent", "own", "mortgage"}
    blank = frame["income"].isna().to_numpy()[ok]
    assert pts["income"].isna().to_numpy()[blank].all()


def test_linear_typed_counterfactuals_serial_pool_cluster_equal(data, linear, cluster):
    df, _ = data
    tm = split_tabular(linear)
    rows = df.iloc[:23].reset_index(drop=True)
    t = 1 - tm.predict_index(rows)
    kw = dict(target=t, norm="l1", scale={"income": 2e4, "age": 15.0, "ratio": 1e-5}, chunk_rows=5)
    seen = []
    serial = tabular_counterfactuals(tm, rows, jobs=1, progress=lambda d, n: seen.append((d, n)), **kw)
    assert seen == [(5, 23), (10, 23), (15, 23), (20, 23), (23, 23)]
    pool = tabular_counterfactuals(tm, rows, jobs=2, **kw)
    assert parallel.last_run["pool"] >= 1  # a worker process solved at least one chunk
    dask = tabular_counterfactuals(tm, rows, scheduler=cluster, **kw)
    assert parallel.last_run["cluster"] == 5
    same(serial, pool)
    same(serial, dask)
    # the linear answers are exact and do not depend on the chunking (up to BLAS's last bits)
    whole = tabular_counterfactuals(tm, rows, **dict(kw, chunk_rows=100))
    np.testing.assert_allclose(serial.distance, whole.distance, rtol=1e-12)
    assert serial.exact[serial.status == "found"].all()
    check_valid(tm, serial, rows, t)
    assert list(serial.points.index) == list(range(23))


def test_forest_typed_margins_serial_and_pool_equal(data, forest):
    """A forest after the ColumnTransformer: the verified search, seeded per chunk (about a second
    of CPU per row, hence two rows; the cluster runs the same chunk function, tested above)."""
    df, _ = data
    tm = split_tabular(forest)
    assert tm.linear_decomposition() is None
    rows = df.iloc[40:42].reset_index(drop=True)
    kw = dict(norm="l2", scale={"income": 2e4, "age": 15.0, "ratio": 1e-5}, chunk_rows=1, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        serial = tabular_margins(tm, rows, jobs=1, **kw)
        pool = tabular_margins(tm, rows, jobs=2, **kw)
    assert parallel.last_run["pool"] >= 1
    same(serial.counterfactuals, pool.counterfactuals)
    np.testing.assert_array_equal(serial.margin, pool.margin)
    check_valid(tm, serial.counterfactuals, rows)
    assert not serial.exact.any()


# --- through the command line --------------------------------------------------------------------------

def _results(r):
    assert r.code == 0, r.err
    rep = r.json()
    return rep["results"], rep["summary"]


@pytest.fixture
def files(tmp_path, data, linear):
    df, y = data
    test = df.iloc[100:124].copy()
    test["decision"] = y[100:124]
    csv = tmp_path / "loans.csv"
    test.to_csv(csv, index=False, na_rep="")
    joblib.dump(linear, tmp_path / "linear.joblib")
    return tmp_path, csv


@pytest.mark.parametrize("command", ["counterfactual", "margin"])
def test_cli_typed_rows_jobs_and_scheduler_equal(invaudit, files, monkeypatch, cluster, command):
    folder, csv = files
    monkeypatch.setattr(cf_tabular, "CHUNK_ROWS", 4)  # 24 rows: six chunks
    args = (command, folder / "linear.joblib", csv, "--label-column", "decision", "--id-column", "customer",
            "--norm", "l1", "--format", "json")
    serial = _results(invaudit(*args, "--jobs", "1", "--out", folder / "serial.csv"))
    pool = _results(invaudit(*args, "--jobs", "2", "--out", folder / "pool.csv"))
    dask = _results(invaudit(*args, "--scheduler", cluster))
    assert serial == pool == dask
    assert [r["row_id"] for r in serial[0]] == [f"K{i:05d}" for i in range(100, 124)]
    assert (folder / "serial.csv").read_bytes() == (folder / "pool.csv").read_bytes()
    # the written rows are read back by the model and land in another class
    model = joblib.load(folder / "linear.joblib")
    back = pd.read_csv(folder / "pool.csv", keep_default_na=True)
    orig = pd.read_csv(csv).set_index("customer").loc[back["customer"]]
    assert len(back) >= 20
    assert np.all(model.predict(back[NUM + CAT]) != model.predict(orig[NUM + CAT]))
