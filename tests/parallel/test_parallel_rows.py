"""Row-parallel runs (invaudit.parallel): serial, a process pool and a Dask LocalCluster give the
same answers bit for bit; where a solver promises that a row's answer does not depend on the
other rows, the chunked run also equals one plain call of the solver on all rows."""

import dataclasses

import joblib
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from invaudit import parallel
from invaudit.models import adapt


def _form(samples, name):
    return adapt(joblib.load(samples / f"{name}.joblib"))


def _rows(samples, name, n):
    z = np.load(samples / f"{name}.npz")
    return np.asarray(z["X"][:n], dtype=np.float64), np.asarray(z["y"][:n])


def assert_same(a, b, rtol=0.0):
    """Two results equal bit for bit (``rtol=0``: arrays NaN where NaN, dataclass fields, lists,
    dicts), or with floats within ``rtol`` and everything else exactly."""
    if dataclasses.is_dataclass(a):
        assert type(a) is type(b)
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), rtol)
    elif isinstance(a, np.ndarray):
        assert a.shape == b.shape and a.dtype == b.dtype
        if a.dtype.kind == "f":
            assert np.array_equal(a, b, equal_nan=True) if rtol == 0 else \
                np.allclose(a, b, rtol=rtol, atol=0, equal_nan=True)
        else:
            assert np.array_equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k], rtol)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y, rtol)
    elif isinstance(a, float) and np.isnan(a):
        assert isinstance(b, float) and np.isnan(b)
    elif isinstance(a, float) and rtol:
        assert b == pytest.approx(a, rel=rtol, abs=0)
    else:
        assert a == b


# the pool's answers are the ones compared; `cluster` (tests/conftest.py) is one LocalCluster per run
pytestmark = pytest.mark.usefixtures("pool_answers")


# --- the plan ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 7, 127, 128, 1000, 100_003])
def test_plan_covers_every_row_once_in_order(n):
    chunks = parallel.plan(n, min_rows=64, max_chunks=64)
    assert [a for a, _ in chunks[1:]] == [b for _, b in chunks[:-1]]
    assert (chunks[0][0], chunks[-1][1]) == (0, n) if n else chunks == []
    assert len(chunks) <= 64
    assert all(b - a >= 64 for a, b in chunks) or len(chunks) == 1


# --- in-process API: serial == pool == cluster --------------------------------------------------------

def test_margins_mlp_serial_pool_cluster_equal(samples, cluster):
    form = _form(samples, "digits_mlp")
    X, _ = _rows(samples, "digits_test", 12)
    seen = []
    serial = parallel.margins(form, X, jobs=1, min_rows=4, progress=lambda d, t: seen.append((d, t)))
    assert len(serial) == 12 and seen[-1] == (12, 12)
    assert all(b[0] >= a[0] for a, b in zip(seen, seen[1:]))  # progress never goes back
    pool = parallel.margins(form, X, jobs=2, min_rows=4)
    assert parallel.last_run["pool"] >= 1  # a worker process solved at least one chunk
    dask = parallel.margins(form, X, scheduler=cluster, min_rows=4)
    assert parallel.last_run["cluster"] == 3
    assert_same(serial, pool)
    assert_same(serial, dask)
    # every reported perturbation is verified by the model itself
    ok = np.isfinite(serial.margin)
    assert ok.sum() >= 10
    pred = form.estimator.predict(X[ok] + serial.perturbation[ok])
    assert np.all(pred != form.estimator.predict(X[ok]))


def test_forest_counterfactuals_equal_everywhere_and_to_one_call(samples, cluster):
    from invaudit.counterfactual import counterfactuals_with_extras

    form = _form(samples, "wine_forest")
    X, _ = _rows(samples, "wine_test", 6)
    # a generous time limit: a row that runs out of time gets whatever was found by then, which
    # depends on the machine's load, not on where the row is solved
    kw = dict(target="other", time_limit=600.0)
    serial = parallel.counterfactuals_with_extras(form, X, jobs=1, min_rows=2, **kw)
    pool = parallel.counterfactuals_with_extras(form, X, jobs=2, min_rows=2, **kw)
    assert parallel.last_run["pool"] >= 1
    dask = parallel.counterfactuals_with_extras(form, X, scheduler=cluster, min_rows=2, **kw)
    assert_same(serial, pool)
    assert_same(serial, dask)
    # tree counterfactuals do not depend on the batch: the same as one call on all rows
    with threadpool_limits(1):
        whole = counterfactuals_with_extras(form, X, **kw)
    assert_same(serial, whole)
    found = serial[0].status == "found"
    assert found.sum() >= 5
    assert np.all(form.estimator.predict(serial[0].x_cf[found]) != form.estimator.predict(X[found]))


def test_explain_equal_everywhere_and_to_one_call(samples, cluster):
    from invaudit.explain import explain_rows

    form = _form(samples, "breast_cancer_logreg")
    X, _ = _rows(samples, "breast_cancer_test", 9)
    ids = np.arange(100, 109)  # rows keep their own numbers (they seed the partitions)
    kw = dict(rows=ids, baseline=np.zeros(X.shape[1]), iterations=4, seed=3)
    serial = parallel.explain_rows(form, X, jobs=1, min_rows=3, **kw)
    pool = parallel.explain_rows(form, X, jobs=2, min_rows=3, **kw)
    assert parallel.last_run["pool"] >= 1
    dask = parallel.explain_rows(form, X, scheduler=cluster, min_rows=3, **kw)
    whole = explain_rows(form, X, **kw)
    assert [r.row for r in serial] == ids.tolist()
    assert_same(serial, pool)
    assert_same(serial, dask)
    # a row's answer does not depend on the batch; only the last bits of the probabilities do
    # (BLAS picks its kernels by the size of the batch of mutants)
    assert_same(serial, whole, rtol=1e-12)


def test_influence_chunks_equal_one_call(samples):
    from invaudit.influence import build_objective
    from invaudit.influence import influence as solve

    form = _form(samples, "breast_cancer_logreg")
    Xtr, ytr = _rows(samples, "breast_cancer_train", 426)
    Xte, yte = _rows(samples, "breast_cancer_test", 12)
    y_index = np.searchsorted(form.classes, ytr)
    t_index = np.searchsorted(form.classes, yte)
    obj = build_objective(form, Xtr, y_index)
    whole = solve(obj, Xte, t_index, top=5)
    pool = parallel.influence(obj, Xte, t_index, top=5, jobs=2, min_rows=4)
    assert parallel.last_run["pool"] >= 1
    assert_same(whole, pool)


def test_a_solver_error_in_a_worker_is_raised_as_itself(samples):
    from invaudit.errors import InputError

    form = _form(samples, "digits_mlp")
    X, _ = _rows(samples, "digits_test", 16)
    with pytest.raises(InputError, match="label"):
        parallel.margins(form, X, y_index=np.full(16, 99), jobs=2, min_rows=8)


def test_bad_jobs_refused():
    from invaudit.errors import InputError

    with pytest.raises(InputError, match="--jobs"):
        parallel.resolve_jobs(0)
    assert parallel.resolve_jobs(-1) == parallel.cores()


# --- through the command line --------------------------------------------------------------------------

@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of a few rows, so that small test data is cut into several chunks."""
    monkeypatch.setattr(parallel, "_margin_rows", lambda form: 3)
    monkeypatch.setattr(parallel, "_counterfactual_rows", lambda form, X_train, manifold: 3)


def _results(r):
    assert r.code == 0, r.err
    rep = r.json()
    return rep["results"], rep["summary"]


def test_cli_margin_jobs_and_scheduler_equal(invaudit, samples, small_chunks, cluster, validate):
    args = ("margin", samples / "digits_mlp.joblib", samples / "digits_test.csv", "--label-column", "target",
            "--rows", "20-27", "--format", "json")
    serial = _results(invaudit(*args, "--jobs", "1"))
    r = invaudit(*args, "--jobs", "2")
    pool = _results(r)
    validate(r.json())
    dask = _results(invaudit(*args, "--scheduler", cluster))
    assert serial == pool == dask
    assert [r["row"] for r in serial[0]] == list(range(20, 28))


def test_cli_counterfactual_jobs_and_scheduler_equal(invaudit, samples, small_chunks, cluster):
    # a single tree: exact without a time limit, so nothing depends on the machine's load
    args = ("counterfactual", samples / "breast_cancer_tree.joblib", samples / "breast_cancer_test.csv",
            "--label-column", "target", "--rows", "0-8", "--format", "json")
    serial = _results(invaudit(*args, "--jobs", "1"))
    pool = _results(invaudit(*args, "--jobs", "2"))
    dask = _results(invaudit(*args, "--scheduler", cluster))
    assert serial == pool == dask
    assert all(r["status"] == "found" and r["exact"] for r in serial[0])


def test_cli_explain_jobs_and_scheduler_equal(invaudit, samples, monkeypatch, cluster):
    real = parallel.explain_rows

    def small(*a, **kw):  # chunks of 3 rows
        kw.setdefault("min_rows", 3)
        return real(*a, **kw)

    monkeypatch.setattr(parallel, "explain_rows", small)
    args = ("explain", samples / "breast_cancer_logreg.joblib", samples / "breast_cancer_test.csv",
            "--label-column", "target", "--rows", "5-13", "--iterations", "4", "--format", "json")
    serial = _results(invaudit(*args, "--jobs", "1"))
    pool = _results(invaudit(*args, "--jobs", "2"))
    dask = _results(invaudit(*args, "--scheduler", cluster))
    assert serial == pool == dask
    assert [r["row"] for r in serial[0]] == list(range(5, 14))


def test_cli_unreachable_scheduler_is_one_sentence_exit_3(invaudit, samples, monkeypatch):
    pytest.importorskip("dask.distributed")
    monkeypatch.setattr(parallel, "CONNECT_TIMEOUT_S", 1.0)
    r = invaudit("margin", samples / "breast_cancer_logreg.joblib", samples / "breast_cancer_test.csv",
                 "--label-column", "target", "--rows", "0-3", "--scheduler", "tcp://127.0.0.1:9")
    assert r.code == 3
    assert r.out == ""
    assert r.err.strip().count("\n") == 0 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in r.err
    assert "Traceback" not in r.err


def test_cli_scheduler_from_environment(invaudit, samples, monkeypatch):
    pytest.importorskip("dask.distributed")
    monkeypatch.setattr(parallel, "CONNECT_TIMEOUT_S", 1.0)
    monkeypatch.setenv("INVAUDIT_SCHEDULER", "tcp://127.0.0.1:9")
    r = invaudit("counterfactual", samples / "breast_cancer_logreg.joblib", samples / "breast_cancer_test.csv",
                 "--label-column", "target", "--rows", "0-3")
    assert r.code == 3 and "tcp://127.0.0.1:9" in r.err


def test_cli_scheduler_without_dask_is_exit_3(invaudit, samples, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "dask", None)  # import dask now fails
    monkeypatch.setitem(sys.modules, "dask.distributed", None)
    monkeypatch.setitem(sys.modules, "distributed", None)
    r = invaudit("margin", samples / "breast_cancer_logreg.joblib", samples / "breast_cancer_test.csv",
                 "--label-column", "target", "--scheduler", "tcp://127.0.0.1:9")
    assert r.code == 3
    assert r.err.strip().count("\n") == 0 and "needs Dask" in r.err and "pip install" in r.err


def test_cli_jobs_zero_is_a_usage_error(invaudit, samples):
    r = invaudit("margin", samples / "breast_cancer_logreg.joblib", samples / "breast_cancer_test.csv",
                 "--label-column", "target", "--jobs", "0")
    assert r.code == 2 and "--jobs" in r.err


def _refit_fold(common, fold):
    """One fold of an out-of-fold refit (module level: workers import it by name)."""
    from sklearn.base import clone

    est, X, y = common
    train, test = fold
    return clone(est).fit(X[train], y[train]).predict_proba(X[test])


def test_map_items_folds_equal_serial_and_pool(samples):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    X, y = _rows(samples, "breast_cancer_train", 200)
    X = (X - X.mean(axis=0)) / X.std(axis=0)  # standardised: a quick fit
    folds = list(StratifiedKFold(4, shuffle=True, random_state=0).split(X, y))
    est = LogisticRegression(max_iter=500)
    import sys

    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import a test module
    serial = parallel.map_items(_refit_fold, folds, shared=(est, X, y), jobs=1)
    pool = parallel.map_items(_refit_fold, folds, shared=(est, X, y), jobs=2)
    assert parallel.last_run["pool"] >= 1
    assert_same(serial, pool)
    with threadpool_limits(1):  # a refit by hand, fold by fold
        ref = [_refit_fold((est, X, y), f) for f in folds]
    assert_same(serial, ref)


def test_spawned_workers_where_fork_is_not_used(samples, monkeypatch):
    """The pool off Linux (joblib's loky: workers read the model from a temporary file)."""
    monkeypatch.setattr(parallel, "_USE_FORK", False)
    form = _form(samples, "breast_cancer_logreg")
    X, _ = _rows(samples, "breast_cancer_test", 6)
    kw = dict(rows=np.arange(6), baseline=np.zeros(X.shape[1]), iterations=4, seed=1)
    serial = parallel.explain_rows(form, X, jobs=1, min_rows=2, **kw)
    pool = parallel.explain_rows(form, X, jobs=2, min_rows=2, **kw)
    assert parallel.last_run["pool"] >= 1
    assert_same(serial, pool)
