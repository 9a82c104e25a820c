"""The mixed-type view of ColumnTransformer pipelines: schema, and the linear decomposition
checked against the pipeline's own decision_function."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from invaudit.errors import InputError
from invaudit.models.tabular import dec_scores, split_tabular


def credit(n=200, seed=0):
    rng = np.random.default_rng(seed)
    income = np.round(np.exp(rng.uniform(np.log(1e3), np.log(1e5), n)))
    age = rng.integers(18, 80, n).astype(float)
    loans = rng.poisson(1.5, n).astype(float)
    emp = rng.choice(["unemployed", "salaried", "self-employed", "retired"], n).astype(object)
    housing = rng.choice(["rent", "own", "mortgage"], n).astype(object)
    y = np.where(np.log(income) + 0.3 * (emp == "salaried") - 0.2 * loans + rng.normal(0, 1, n) > 9.2,
                 "good", "bad")
    income[rng.random(n) < 0.1] = np.nan
    emp[rng.random(n) < 0.1] = np.nan
    df = pd.DataFrame({"id": np.arange(n).astype(str), "income": income, "age": age, "n_loans": loans,
                       "employment": emp, "housing": housing})
    return df.astype({"id": object, "employment": object, "housing": object}), y


def pipeline(clf):
    ct = ColumnTransformer([("num", Pipeline([("imp", SimpleImputer()), ("sc", StandardScaler())]),
                             ["income", "age", "n_loans"]),
                            ("cat", OneHotEncoder(handle_unknown="ignore"), ["employment", "housing"])])
    return Pipeline([("pre", ct), ("clf", clf)])


@pytest.fixture(scope="module")
def data():
    df, y = credit()
    return df, y, pipeline(LogisticRegression(max_iter=2000)).fit(df.drop(columns="id"), y)


def test_schema(data):
    df, y, model = data
    tm = split_tabular(model, integer_columns=["n_loans"])
    assert tm.column_names == ["income", "age", "n_loans", "employment", "housing"]
    kinds = {c.name: c.kind for c in tm.columns}
    assert kinds == {"income": "numeric", "age": "numeric", "n_loans": "integer",
                     "employment": "categorical", "housing": "categorical"}
    emp = tm.columns[3]
    assert emp.categories == ("retired", "salaried", "self-employed", "unemployed")   # no blank category
    assert tm.columns[0].fill == pytest.approx(np.nanmean(df["income"]))
    d = tm.describe()
    assert d["final_form"] == "linear"
    assert d["input_schema"][3] == {"name": "employment", "kind": "categorical",
                                    "categories": ["retired", "salaried", "self-employed", "unemployed"]}
    np.testing.assert_array_equal(tm.predict_index(df), np.searchsorted(tm.classes, model.predict(df.drop(columns="id"))))
    np.testing.assert_allclose(tm.predict_proba(df), model.predict_proba(df.drop(columns="id")))
    with pytest.raises(InputError):
        split_tabular(model, integer_columns=["employment"])
    with pytest.raises(InputError):
        split_tabular(model, integer_columns=["nope"])


def test_linear_decomposition_matches_the_pipeline(data):
    df, y, model = data
    tm = split_tabular(model)
    dec = tm.linear_decomposition()
    assert dec is not None and dec.W.shape == (1, 3)
    full = df.dropna()
    codes = np.column_stack([
        np.array([tm.columns[i].categories.index(v) for v in full[tm.columns[i].name]]) for i in dec.categorical])
    s = dec_scores(dec, full[["income", "age", "n_loans"]].to_numpy(float), codes)[:, 0]
    ref = model.decision_function(full.drop(columns="id"))
    np.testing.assert_allclose(s, ref, rtol=1e-9, atol=1e-9)
    # the gradient is the classifier's coefficients over the scaler's scale (independent check)
    sc = model.named_steps["pre"].named_transformers_["num"].named_steps["sc"]
    np.testing.assert_allclose(dec.W[0], model.named_steps["clf"].coef_[0, :3] / sc.scale_, rtol=1e-9)


def test_not_tabular_and_non_linear():
    X = np.random.default_rng(0).normal(size=(50, 3))
    y = (X[:, 0] > 0).astype(int)
    assert split_tabular(Pipeline([("sc", StandardScaler()), ("lr", LogisticRegression())]).fit(X, y)) is None
    assert split_tabular(LogisticRegression().fit(X, y)) is None
    num = pd.DataFrame(X, columns=["a", "b", "c"])
    plain = Pipeline([("pre", ColumnTransformer([("n", StandardScaler(), ["a", "b", "c"])])),
                      ("lr", LogisticRegression())]).fit(num, y)
    assert split_tabular(plain) is None        # numeric only, no imputers: today's path
    df, yy = credit(n=120)
    rf = pipeline(RandomForestClassifier(n_estimators=5, random_state=0)).fit(df.drop(columns="id"), yy)
    tm = split_tabular(rf)
    assert tm.final_form.kind == "trees"
    assert tm.linear_decomposition() is None
