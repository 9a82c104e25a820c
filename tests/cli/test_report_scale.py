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
