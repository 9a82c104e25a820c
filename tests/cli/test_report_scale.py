"""Issue 16 (report layer, streaming): results stay columns until they are written.

- ``--format jsonl``: the envelope, one line per result, the summary; the same results as the
  JSON report.
- ``--format table`` never encodes the JSON and shows the rows the full report would sort first.
- A streamed margin run keeps memory bounded by its chunk, not by the number of rows.
- ``--rows`` on a CSV reads only up to the last row it names.
- ``--out`` written chunk by chunk holds exactly the reported points; a run that fails after
  its first chunk leaves no report behind.
"""

from __future__ import annotations

import json
import tracemalloc

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

import invaudit.cli._common as common
from invaudit.io import report as report_mod


def _jsonl(text: str):
    lines = [json.loads(line) for line in text.splitlines()]
    return lines[0], lines[1:-1], lines[-1]


def _small_chunks(monkeypatch, rows: int) -> None:
    monkeypatch.setattr(common, "margin_chunk_rows", lambda form, n: rows)


@pytest.fixture
def linear_model(tmp_path):
    """A 3-class linear model on 40 features with weights at very different scales."""
    rng = np.random.default_rng(3)
    D = 40
    clf = LogisticRegression()
    clf.coef_ = rng.normal(size=(3, D)) * np.logspace(-3, 2, D)
    clf.intercept_ = rng.normal(size=3)
    clf.classes_ = np.array(["ham", "spam, maybe", "eggs \"x\""], dtype=object)
    clf.n_features_in_ = D
    path = tmp_path / "lin.joblib"
    joblib.dump(clf, path)
    return clf, path


def _npy(tmp_path, n, D=40, seed=0, name="X.npy"):
    X = np.random.default_rng(seed).normal(size=(n, D)) * np.logspace(2, -3, D)
    path = tmp_path / name
    np.save(path, X)
    return X, path


def test_jsonl_lines_are_the_json_reports_results_in_chunks(invaudit, linear_model, tmp_path, monkeypatch, validate):
    clf, model = linear_model
    X, data = _npy(tmp_path, 230)
    _small_chunks(monkeypatch, 64)  # four chunks, the last one short
    full = invaudit("margin", model, data, "--format", "json", "--json", tmp_path / "r.json")
    assert full.code == 0, full.err
    rep = validate(full.json())
    assert json.loads((tmp_path / "r.json").read_text()) == rep
    r = invaudit("margin", model, data, "--format", "jsonl")
    assert r.code == 0, r.err
    head, rows, tail = _jsonl(r.out)
    assert head["schema"] == rep["schema"] and head["model"] == rep["model"] and head["params"] == rep["params"]
    assert rows == rep["results"] and len(rows) == 230
    assert tail["summary"] == rep["summary"] and "elapsed_s" in tail
    # the rows are the solver's answers: every perturbation moves its row to another class
    P = np.array([r["perturbation"] for r in rows])
    pred = clf.predict(X)
    assert np.all(clf.predict(X + P) != pred)
    assert [r["predicted_class"] for r in rows] == pred.tolist()
    # a chunked run and a one-chunk run give the same report
    _small_chunks(monkeypatch, 10_000)
    one = invaudit("margin", model, data, "--format", "json").json()
    assert one["results"] == rep["results"] and one["summary"] == rep["summary"]


def test_jsonl_of_a_counterfactual_report_matches_its_json(invaudit, samples, validate):
    args = ("counterfactual", samples / "breast_cancer_logreg.joblib", samples / "breast_cancer_test.csv",
            "--label-column", "target", "--rows", "0-5", "--norm", "l1")
    rep = validate(invaudit(*args, "--format", "json").json())
    r = invaudit(*args, "--format", "jsonl")
    head, rows, tail = _jsonl(r.out)
    assert rows == rep["results"] and tail["summary"] == rep["summary"] and head["command"] == "counterfactual"
    for row in rows:  # one line per result: vectors are on their row's line
        assert len(row["counterfactual"]) == len(row["delta"]) == 30
        np.testing.assert_allclose(np.abs(row["delta"]).sum(), row["distance"], rtol=1e-9)


def test_table_shows_the_smallest_margins_without_encoding_json(invaudit, linear_model, tmp_path, monkeypatch):
    _, model = linear_model
    _, data = _npy(tmp_path, 300, seed=5)
    _small_chunks(monkeypatch, 70)
    rep = invaudit("margin", model, data, "--format", "json").json()
    order = sorted(rep["results"], key=lambda x: (x["margin"] is None, x["margin"] or 0.0))[:20]

    def refuse(*a, **k):
        raise AssertionError("the table path encoded JSON")

    monkeypatch.setattr(report_mod.Columns, "lines", refuse)
    monkeypatch.setattr(report_mod, "encode", refuse)
    r = invaudit("margin", model, data)
    assert r.code == 0, r.err
    body = [ln.split("│") for ln in r.out.splitlines() if "│" in ln]  # data rows (the header uses ┃)
    assert [int(c[0]) for c in body] == [x["row"] for x in order]
    assert "280 more rows" in r.out


def _peak(invaudit, *args) -> int:
    tracemalloc.start()
    try:
        r = invaudit(*args)
        assert r.code == 0, r.err
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_streamed_margin_run_keeps_memory_bounded_by_its_chunk(invaudit, tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    D = 200
    clf = LogisticRegression()
    clf.coef_, clf.intercept_ = rng.normal(size=(3, D)), rng.normal(size=3)
    clf.classes_, clf.n_features_in_ = np.arange(3), D
    joblib.dump(clf, tmp_path / "m.joblib")
    n = 1200
    _, small = _npy(tmp_path, n, D=D, name="small.npy")
    _, large = _npy(tmp_path, 4 * n, D=D, seed=1, name="large.npy")
    _small_chunks(monkeypatch, 100)
    args = ("margin", tmp_path / "m.joblib")
    invaudit(*args, small, "--rows", "0-150", "--json", tmp_path / "warm.json")  # imports and caches first
    p_small = _peak(invaudit, *args, small, "--json", tmp_path / "s.json", "--out", tmp_path / "s.npy")
    p_large = _peak(invaudit, *args, large, "--json", tmp_path / "l.json", "--out", tmp_path / "l.npy")
    matrix = 4 * n * D * 8  # the large run's perturbations as one float64 matrix: 7.7 MB
    assert p_large < 1.3 * p_small + 1e6, (p_small, p_large)
    assert p_large < matrix / 2, (p_large, matrix)
    assert (tmp_path / "l.json").stat().st_size > 2 * matrix  # the report itself holds every vector
    rep = json.loads((tmp_path / "l.json").read_text())
    assert len(rep["results"]) == 4 * n


def test_out_points_written_in_chunks_are_the_reported_points(invaudit, linear_model, tmp_path, monkeypatch):
    clf, model = linear_model
    X, data = _npy(tmp_path, 150, seed=7)
    _small_chunks(monkeypatch, 40)
    for out in (tmp_path / "adv.npy", tmp_path / "adv.csv"):
        rep = invaudit("margin", model, data, "--format", "json", "--out", out).json()
        P = np.array([r["perturbation"] for r in rep["results"]])
        pts = np.load(out) if out.suffix == ".npy" else np.loadtxt(out, delimiter=",", skiprows=1)[:, 1:]
        assert pts.shape == X.shape
        np.testing.assert_array_equal(pts, X + P)  # bit for bit: shortest round-trip decimals
        assert np.all(clf.predict(pts) != clf.predict(X))


def test_a_run_failing_after_its_first_chunk_leaves_no_report(invaudit, linear_model, tmp_path, monkeypatch):
    _, model = linear_model
    _, data = _npy(tmp_path, 200, seed=8)
    _small_chunks(monkeypatch, 50)
    import invaudit.parallel as parallel

    real, calls = parallel.margins, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("solver broke")
        return real(*a, **k)

    monkeypatch.setattr(parallel, "margins", flaky)
    target = tmp_path / "r.json"
    target.write_text("old\n")
    r = invaudit("margin", model, data, "--json", target, "--out", tmp_path / "p.npy")
    assert r.code == 4 and "solver broke" in r.err
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X.npy", "lin.joblib", "r.json"]


def test_rows_on_a_csv_read_only_up_to_the_last_row_named(invaudit, samples, tmp_path, validate):
    text = (samples / "breast_cancer_test.csv").read_text().splitlines()
    header, good = text[0], text[1:4]
    bad = ["1,2,oops", "not,a,row,at,all", '"unterminated'] * 50
    path = tmp_path / "d.csv"
    path.write_text("\n".join([header, *good, *bad]) + "\n")
    model = samples / "breast_cancer_logreg.joblib"
    r = invaudit("margin", model, path, "--label-column", "target", "--rows", "0-2", "--format", "json")
    assert r.code == 0, r.err
    rep = validate(r.json())
    assert [x["row"] for x in rep["results"]] == [0, 1, 2]
    assert rep["data"]["n_rows"] == 3 + len(bad)  # lines counted, not parsed
    # the same rows of the intact file give the same answers
    ok = tmp_path / "ok.csv"
    ok.write_text("\n".join([header, *good]) + "\n")
    same = invaudit("margin", model, ok, "--label-column", "target", "--format", "json").json()
    assert same["results"] == rep["results"]
    # asking for a row past the good ones reads the bad lines, and says so
    r = invaudit("margin", model, path, "--label-column", "target", "--rows", "5")
    assert r.code == 3 and "line 5" in r.err and "\n" not in r.err.strip()
    r = invaudit("margin", model, ok, "--label-column", "target", "--rows", "7")
    assert r.code == 3 and "out of range" in r.err


def test_margins_with_only_a_scale_equal_the_per_row_box_path(invaudit, linear_model, tmp_path):
    """Without a box the constraints are the metric's weights alone (built once, not as infinite
    per-row bounds per chunk): the answers are the ones the full per-row constraints give."""
    from invaudit.counterfactual import Constraints
    from invaudit.margins import margins
    from invaudit.models import adapt

    clf, model = linear_model
    X, data = _npy(tmp_path, 90, seed=11)
    Xtr, train = _npy(tmp_path, 60, seed=12, name="train.npy")
    for scale in ("none", "mad"):
        extra = () if scale == "none" else ("--scale", scale, "--train", train)
        rep = invaudit("margin", model, data, "--norm", "l1", *extra, "--format", "json").json()
        cons = Constraints.from_options(X, X_train=Xtr, scale=scale)
        assert cons.lower.shape == X.shape  # the reference: a box per row, all infinite
        ref = margins(adapt(clf), X, norm="l1", constraints=cons)
        assert [r["margin"] for r in rep["results"]] == ref.margin.tolist()
        assert np.array_equal(np.array([r["perturbation"] for r in rep["results"]]), ref.perturbation)
        assert [r["method"] for r in rep["results"]] == [str(m) for m in ref.method]


def test_tied_margins_show_in_row_order_across_chunks(invaudit, linear_model, tmp_path, monkeypatch):
    """Rows with equal margins (here: repeated rows) are shown in row order, whichever chunk they
    came in: the table and the summary's most fragile rows are a stable sort's first rows."""
    _, model = linear_model
    base = np.random.default_rng(13).normal(size=(4, 40)) * np.logspace(2, -3, 40)
    X = base[np.random.default_rng(14).integers(0, 4, size=90)]
    path = tmp_path / "ties.npy"
    np.save(path, X)
    _small_chunks(monkeypatch, 45)  # two chunks, each with ties at its 20th row
    rep = invaudit("margin", model, path, "--format", "json").json()
    order = sorted(rep["results"], key=lambda x: (x["margin"] is None, x["margin"] or 0.0))
    assert len({x["margin"] for x in order[:20]}) < 20  # ties at the cut
    r = invaudit("margin", model, path)
    body = [ln.split("│") for ln in r.out.splitlines() if "│" in ln]
    assert [int(c[0]) for c in body] == [x["row"] for x in order[:20]]
    assert [x["row"] for x in rep["summary"]["most_fragile"]] == [x["row"] for x in order[:10]]


def test_method_categories_are_numpys_unique():
    from invaudit.margins._batch import _categories

    rng = np.random.default_rng(0)
    pool = np.array(["linear-box-exact", "linear-closed-form", "linear-closed-form (unreachable)", "é", "a"],
                    dtype=object)
    cases = [pool[rng.integers(0, k, n)] for k in (1, 2, 5) for n in (0, 1, 37)]
    cases += [np.array([str(i) for i in range(100)], dtype=object), np.array([1, "1", None], dtype=object)]
    for a in cases:
        for arr in (a, a.astype(str)):
            values, codes = _categories(arr)
            ref_values, ref_codes = np.unique(np.asarray(arr).astype(str), return_inverse=True)
            assert values == [str(v) for v in ref_values] and np.array_equal(codes, ref_codes.reshape(-1))


def _sleepy_chunk(shared, part, a, b, progress):
    import time

    time.sleep(shared["sleep"])  # wall time, no CPU: the rest of the run looks long enough for workers
    return np.full((b - a, shared["width"]), float(a))  # ~1.3 MB per chunk to send back


def test_default_jobs_stays_serial_where_solving_costs_less_than_sending_results_back(monkeypatch):
    """With the default --jobs, workers start only when a chunk's CPU exceeds SHIP_RATIO times the
    (measured) cost of pickling its result back; the answers are the same either way."""
    from invaudit import parallel

    if not parallel._can_fork():
        pytest.skip("forked workers only")
    monkeypatch.setattr(parallel, "_OWN_OPENMP_THREADS", ())
    monkeypatch.setattr(parallel, "_SHIP_RATE", [])
    shared, n = {"sleep": 0.12, "width": 20_000}, 64
    run = lambda: list(parallel.imap_chunks(_sleepy_chunk, n, shared=shared, parts={"X": np.zeros((n, 1))},
                                            jobs=None, min_rows=8))
    cheap = run()
    assert parallel.last_run["pool"] == 0 and parallel.last_run["here"] == 8
    assert parallel._SHIP_RATE and parallel._SHIP_RATE[0] > 0  # measured on the first result
    monkeypatch.setattr(parallel, "SHIP_RATIO", 0.0)  # sending back costs nothing: the pool starts
    pooled = run()
    assert parallel.last_run["pool"] >= 1
    assert [c for c, _ in pooled] == [c for c, _ in cheap]
    assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(cheap, pooled))


def _first_call_imports(shared, part, a, b, progress):
    import sys
    import time
    import types

    name = shared["module"]
    if name not in sys.modules:  # the first chunk pays for an import (CPU), as a cold solver does
        sys.modules[name] = types.ModuleType(name)
        end = time.thread_time() + 0.3
        while time.thread_time() < end:
            pass
    return _sleepy_chunk(shared, part, a, b, progress)


def test_default_jobs_times_another_chunk_when_the_first_imported_modules(monkeypatch):
    """A first chunk that imported the solver's modules measured the imports, not the rows: the
    decision waits for the next chunk (here cheap to solve, costly to send back: serial)."""
    import sys

    from invaudit import parallel

    if not parallel._can_fork():
        pytest.skip("forked workers only")
    monkeypatch.setattr(parallel, "_OWN_OPENMP_THREADS", ())
    monkeypatch.setattr(parallel, "_SHIP_RATE", [])
    name = "_invaudit_test_cold_solver_module"
    monkeypatch.delitem(sys.modules, name, raising=False)
    shared, n = {"sleep": 0.1, "width": 20_000, "module": name}, 64
    got = list(parallel.imap_chunks(_first_call_imports, n, shared=shared, parts={"X": np.zeros((n, 1))},
                                    jobs=None, min_rows=8))
    assert parallel.last_run["pool"] == 0 and parallel.last_run["here"] == 8
    assert [c for c, _ in got] == parallel.plan(n, min_rows=8)
    assert all(np.all(x == a) for (a, _), x in got)
    sys.modules.pop(name, None)


def test_smallest_first_is_a_stable_sorts_first_rows():
    rng = np.random.default_rng(5)
    for t in range(300):
        n = int(rng.integers(0, 40))
        key = rng.integers(0, 5, n).astype(float)  # many ties
        key[rng.random(n) < 0.2] = np.inf
        k = None if t % 7 == 0 else int(rng.integers(0, 45))
        ref = np.argsort(key, kind="stable")[:k]
        assert np.array_equal(report_mod.smallest_first(key, k), ref), (key, k)
