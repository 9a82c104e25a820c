"""Red team 3: ``--out`` files must read back as the answers they hold, whatever the column names.

Found: a model with a feature named ``row`` (the name ``--out`` gives its first column when no
``--id-column`` is passed) got a CSV whose header said ``row,row,...``: read back, the ``row``
column was the row numbers and the feature's values sat in ``row.1``, silently; a typed-rows model
with such a feature stopped with an internal error. IDs and column names holding a comma or a quote
were written unquoted, so their rows had too many fields and every value after them moved one
column to the right. The reference is the report's own JSON answer, read back by name with the
standard library's CSV reader.
"""

from __future__ import annotations

import csv
import warnings

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

NAMES = ["row", "amount, EUR", 'say "hi"', "größe"]


def _read(path):
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    assert len(set(header)) == len(header), header
    assert all(len(r) == len(header) for r in body), (header, body)
    return header, body


@pytest.fixture(scope="module")
def numeric(tmp_path_factory):
    d = tmp_path_factory.mktemp("rt3out")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4)) * np.array([1e-5, 1.0, 1e3, 1e5])
    y = np.where(X[:, 0] / 1e-5 + X[:, 2] / 1e3 > 0, "yes", "no")
    frame = pd.DataFrame(X, columns=NAMES)
    joblib.dump(make_pipeline(StandardScaler(), LogisticRegression()).fit(frame, y), d / "m.joblib")
    test = frame.iloc[:8][NAMES[::-1]].copy()  # columns in another order than the fit
    test.insert(0, "label", y[:8])
    test.insert(1, "who", [f'Smith, "J{i}"' for i in range(8)])
    test.to_csv(d / "test.csv", index=False)
    return d


def _check(header, body, results, id_name=None):
    index = header[0]
    assert index not in NAMES[1:]
    by_row = {r["row"]: r for r in results}
    for line in body:
        values = dict(zip(header, line))
        if id_name is None:
            r = by_row[int(values[index])]
        else:
            r = next(r for r in results if r.get("row_id") == values[index])
        point = r.get("counterfactual")
        if point is None:  # a margin: the adversarial point is the row plus its perturbation
            continue
        for name, v in zip(NAMES, point):
            assert float(values[name]) == v, (name, values[name], v)


@pytest.mark.parametrize("id_name", [None, "who"])
def test_counterfactual_out_csv_reads_back_by_name(numeric, invaudit, id_name):
    out = numeric / f"cf_{id_name}.csv"
    args = ["counterfactual", numeric / "m.joblib", numeric / "test.csv", "--label-column", "label",
            "--target", "yes", "--out", out, "--format", "json", "-q"]
    if id_name:
        args += ["--id-column", id_name]
    r = invaudit(*args)
    assert r.code == 0, r.err
    results = r.json()["results"]
    header, body = _read(out)
    assert len(body) == sum(x["status"] == "found" for x in results) > 0
    assert set(NAMES) <= set(header)
    if id_name:
        assert header[0] == "who" and {b[0] for b in body} <= {f'Smith, "J{i}"' for i in range(8)}
    _check(header, body, results, id_name)


def test_margin_out_csv_has_one_column_per_name(numeric, invaudit):
    out = numeric / "margin.csv"
    r = invaudit("margin", numeric / "m.joblib", numeric / "test.csv", "--label-column", "label",
                 "--out", out, "--format", "json", "-q")
    assert r.code == 0, r.err
    header, body = _read(out)
    assert len(body) == 8 and set(NAMES) <= set(header)
    pert = {x["row"]: x["perturbation"] for x in r.json()["results"]}
    test = pd.read_csv(numeric / "test.csv")
    for line in body:
        values = dict(zip(header, line))
        i = int(values[header[0]])
        for name, p in zip(NAMES, pert[i]):
            assert float(values[name]) == test[name].iloc[i] + p


def test_typed_rows_out_with_a_feature_named_row(tmp_path, invaudit):
    rng = np.random.default_rng(1)
    n = 80
    frame = pd.DataFrame({"row": rng.normal(size=n), "city": rng.choice(["Åre", "Bonn, DE"], n)})
    y = np.where(frame["row"] + (frame["city"] == "Åre") > 0.5, "yes", "no")
    ct = ColumnTransformer([("cat", OneHotEncoder(), ["city"])], remainder="passthrough")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        joblib.dump(make_pipeline(ct, LogisticRegression()).fit(frame, y), tmp_path / "t.joblib")
    test = frame.iloc[:6].copy()
    test["label"] = y[:6]
    test.to_csv(tmp_path / "test.csv", index=False)
    out = tmp_path / "typed.csv"
    r = invaudit("counterfactual", tmp_path / "t.joblib", tmp_path / "test.csv", "--label-column", "label",
                 "--target", "yes", "--out", out, "--format", "json", "-q")
    assert r.code == 0, r.err
    results = r.json()["results"]
    header, body = _read(out)
    assert header.count("row") == 1 and header[0] != "row"
    names = r.json()["model"]["feature_names"]
    by_row = {x["row"]: x for x in results}
    assert len(body) == sum(x["status"] == "found" for x in results) > 0
    for line in body:
        values = dict(zip(header, line))
        point = dict(zip(names, by_row[int(values[header[0]])]["counterfactual"]))
        assert float(values["row"]) == point["row"] and values["city"] == point["city"]
