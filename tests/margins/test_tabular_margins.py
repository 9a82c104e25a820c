"""Margins of mixed-type rows: exact for a linear final estimator, against enumeration of every
category choice with the numeric part in closed form (binary L2: |score| / ||w||)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from invaudit.margins._tabular import tabular_margins
from invaudit.models.tabular import split_tabular

NUM = ["income", "age", "n_loans"]
CAT = ["employment", "housing"]


def credit(n=200, seed=3):
    rng = np.random.default_rng(seed)
    income = np.round(np.exp(rng.uniform(np.log(1e3), np.log(1e5), n)))
    age = rng.integers(18, 80, n).astype(float)
    loans = rng.poisson(1.5, n).astype(float)
    emp = rng.choice(["unemployed", "salaried", "self-employed", "retired"], n).astype(object)
    housing = rng.choice(["rent", "own", "mortgage"], n).astype(object)
    y = np.where(np.log(income) + 0.8 * (emp == "salaried") - 0.3 * loans + 0.5 * (housing == "own")
                 + rng.normal(0, 0.7, n) > 9.3, "good", "bad")
    income[rng.random(n) < 0.1] = np.nan
    emp[rng.random(n) < 0.1] = np.nan
    df = pd.DataFrame({"income": income, "age": age, "n_loans": loans, "employment": emp, "housing": housing})
    return df.astype({"employment": object, "housing": object}), y


@pytest.fixture(scope="module")
def fitted():
    df, y = credit()
    ct = ColumnTransformer([("num", Pipeline([("imp", SimpleImputer()), ("sc", StandardScaler())]), NUM),
                            ("cat", OneHotEncoder(handle_unknown="ignore"), CAT)])
    model = Pipeline([("pre", ct), ("clf", LogisticRegression(max_iter=2000))]).fit(df, y)
    return df, y, model


def test_binary_l2_margins_exact(fitted):
    df, y, model = fitted
    tm = split_tabular(model)
    rows = df.iloc[:10]
    scale = {"income": 2e4, "age": 15.0, "n_loans": 1.0}
    res = tabular_margins(tm, rows, norm="l2", scale=scale, labels_index=np.searchsorted(tm.classes, y[:10]))
    sc = model.named_steps["pre"].named_transformers_["num"].named_steps["sc"]
    g = model.named_steps["clf"].coef_[0, :3] / sc.scale_ * np.array([scale[c] for c in NUM])
    enc = model.named_steps["pre"].named_transformers_["cat"]
    cats = {c: [v for v in enc.categories_[j] if isinstance(v, str)] for j, c in enumerate(CAT)}
    for i in range(len(rows)):
        row = rows.iloc[i]
        a = g * np.array([not np.isnan(row[c]) for c in NUM])
        opts = [[row[c]] if not isinstance(row[c], str) else cats[c] for c in CAT]
        best = np.inf
        for pick in itertools.product(*opts):
            r = row.copy()
            m = 0
            for c, v in zip(CAT, pick):
                m += int(isinstance(row[c], str) and v != row[c])
                r[c] = v
            frame = pd.DataFrame([r]).astype({c: float for c in NUM} | {c: object for c in CAT})
            s = model.decision_function(frame)[0]
            own = model.predict(rows.iloc[[i]])[0]
            if model.predict(frame)[0] != own:
                d = 0.0
            else:
                d = abs(s) / np.linalg.norm(a)
            best = min(best, np.sqrt(m + d * d))
        assert res.margin[i] == pytest.approx(best, rel=1e-6)
    assert np.all(res.exact)
    np.testing.assert_allclose(res.lower_bound, res.margin)
    assert np.all(res.nearest_index == 1 - res.predicted_index)
    pred = tm.predict_index(res.points)
    assert np.all(pred == res.nearest_index)
    recs = res.records(tm.classes, range(10))
    json.dumps(recs)
    for key in ("row", "label", "predicted_class", "margin", "norm", "nearest_class", "perturbation", "exact",
                "lower_bound", "method", "changes"):
        assert key in recs[0]
    # a list in the model's column order: the numeric change, None for categorical columns
    for r in recs:
        assert len(r["perturbation"]) == len(tm.column_names)
        assert all(v is None or isinstance(v, float) for v in r["perturbation"])


def test_immutable_columns_stay(fitted):
    df, y, model = fitted
    tm = split_tabular(model, integer_columns=["n_loans"])
    rows = df.iloc[20:30]
    res = tabular_margins(tm, rows, norm="l1", immutable=["employment", "income"],
                          scale={"income": 2e4, "age": 15.0, "n_loans": 1.0})
    ok = np.isfinite(res.margin)
    assert ok.all()
    pts = res.points[ok]
    assert pts["employment"].equals(rows["employment"][ok])
    assert pts["income"].equals(rows["income"][ok])
    assert np.all(pts["n_loans"] == np.round(pts["n_loans"]))
    assert np.all(res.exact)
