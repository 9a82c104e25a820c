"""Counterfactuals for ColumnTransformer pipelines on mixed-type rows (issue 13), checked against
an independent reference: every category combination enumerated, the numeric part solved in
closed form (binary) or by scipy.optimize.linprog (multiclass L1), scores from the pipeline's own
decision_function."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import linprog
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from invaudit.counterfactual.tabular import tabular_counterfactuals
from invaudit.errors import InputError
from invaudit.models.tabular import split_tabular

NUM = ["income", "age", "n_loans"]
CAT = ["employment", "housing"]
EMP = ["unemployed", "salaried", "self-employed", "retired"]
HOUSING = ["rent", "own", "mortgage"]


def credit(n=300, seed=0):
    rng = np.random.default_rng(seed)
    income = np.round(np.exp(rng.uniform(np.log(1e3), np.log(1e5), n)))
    age = rng.integers(18, 80, n).astype(float)
    loans = rng.poisson(1.5, n).astype(float)
    emp = rng.choice(EMP, n, p=[0.15, 0.5, 0.2, 0.15]).astype(object)
    housing = rng.choice(HOUSING, n).astype(object)
    score = ((np.log(income) - 10) * 1.5 + 0.02 * (age - 45) - 0.4 * loans
             + np.select([emp == "unemployed", emp == "salaried"], [-1.5, 0.8], 0.0)
             + np.where(housing == "own", 0.7, 0.0))
    y = np.where(score + rng.normal(0, 0.8, n) > 0, "good", "bad")
    income[rng.random(n) < 0.08] = np.nan
    emp[rng.random(n) < 0.07] = np.nan
    df = pd.DataFrame({"id": [f"C{i:04d}" for i in range(n)], "income": income, "age": age,
                       "n_loans": loans, "employment": emp, "housing": housing})
    # the data layer's contract: categorical columns are object dtype holding strings and NaN
    return df.astype({"id": object, "employment": object, "housing": object}), y


def penguins(n=240, seed=1):
    rng = np.random.default_rng(seed)
    sp = rng.integers(0, 3, n)
    island = np.where(sp == 0, rng.choice(["Torgersen", "Biscoe", "Dream"], n),
                      np.where(sp == 1, "Dream", "Biscoe")).astype(object)
    flip_swap = rng.random(n) < 0.15
    island[flip_swap] = rng.choice(["Torgersen", "Biscoe", "Dream"], flip_swap.sum())
    sex = rng.choice(["male", "female"], n).astype(object)
    bill_len = np.array([38.8, 48.8, 47.5])[sp] + rng.normal(0, 2.5, n)
    bill_dep = np.array([18.3, 18.4, 15.0])[sp] + rng.normal(0, 1.0, n)
    flipper = np.array([190, 196, 217])[sp] + rng.normal(0, 6, n)
    mass = np.array([3700, 3733, 5076])[sp] + rng.normal(0, 400, n) + np.where(sex == "male", 300, -300)
    bill_len[rng.random(n) < 0.05] = np.nan
    sex[rng.random(n) < 0.05] = np.nan
    df = pd.DataFrame({"bill_length_mm": bill_len, "bill_depth_mm": bill_dep, "flipper_length_mm": flipper,
                       "body_mass_g": mass, "island": island, "sex": sex}).astype({"island": object, "sex": object})
    y = np.array(["Adelie", "Chinstrap", "Gentoo"])[sp]
    return df, y


def pipeline(clf, num, cat):
    ct = ColumnTransformer([("num", Pipeline([("imp", SimpleImputer()), ("sc", StandardScaler())]), num),
                            ("cat", OneHotEncoder(handle_unknown="ignore"), cat)])
    return Pipeline([("pre", ct), ("clf", clf)])


@pytest.fixture(scope="module")
def credit_lr():
    df, y = credit()
    model = pipeline(LogisticRegression(max_iter=2000), NUM, CAT).fit(df.drop(columns="id"), y)
    return df, y, model


@pytest.fixture(scope="module")
def penguins_lr():
    df, y = penguins()
    num = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
    model = pipeline(LogisticRegression(max_iter=5000), num, ["island", "sex"]).fit(df, y)
    return df, y, model, num


SCALE = {"income": 2.0e4, "age": 15.0, "n_loans": 1.2}


# ---- the independent reference -------------------------------------------------------------

def _gradient(model, num):
    """d scores / d numeric input, from the fitted scaler and classifier (not from invaudit)."""
    sc = model.named_steps["pre"].named_transformers_["num"].named_steps["sc"]
    coef = model.named_steps["clf"].coef_          # (M, n_num + n_onehot)
    return coef[:, :len(num)] / sc.scale_


def _combos(row, cats, categories, immutable=()):
    """Every category assignment for a row: (changed count, assignment dict). Blanks and
    immutable columns stay."""
    options = []
    for c in cats:
        v = row[c]
        if (isinstance(v, float) and np.isnan(v)) or c in immutable:
            options.append([v])
        else:
            options.append([v] + [k for k in categories[c] if k != v])
    for pick in itertools.product(*options):
        m = sum(1 for c, p in zip(cats, pick) if not (p is row[c] or p == row[c]))
        yield m, dict(zip(cats, pick))


def _variants(df_row, cats, categories, immutable=()):
    rows, ms = [], []
    for m, assign in _combos(df_row, cats, categories, immutable):
        r = df_row.copy()
        for c, v in assign.items():
            r[c] = v
        rows.append(r)
        ms.append(m)
    V = pd.DataFrame(rows).reset_index(drop=True)
    for c in V.columns:
        V[c] = V[c].astype(object if c in cats else np.float64)
    return V, np.array(ms)


def _categories(model, cats):
    enc = model.named_steps["pre"].named_transformers_["cat"]
    return {c: [v for v in enc.categories_[j] if not (isinstance(v, float) and np.isnan(v))]
            for j, c in enumerate(cats)}


def binary_reference(model, df, row_idx, norm, weights, cc=1.0, immutable=()):
    """min over category choices of the mixed distance; the numeric part in closed form."""
    X = df[NUM + CAT]
    a_full = _gradient(model, NUM)[0]
    categories = _categories(model, CAT)
    out = []
    orig = model.predict(X.iloc[row_idx])
    for i, o in zip(row_idx, orig):
        row = X.iloc[i]
        V, ms = _variants(row, CAT, categories, immutable)
        s = model.decision_function(V[NUM + CAT])
        sign = 1.0 if o == model.classes_[0] else -1.0   # toward the other class
        movable = np.array([not np.isnan(row[c]) and c not in immutable for c in NUM])
        a = a_full * movable * np.array([weights[c] for c in NUM])   # score change per unit of z = dx / spread
        need = np.maximum(-sign * s, 0.0)
        dual = {"l2": np.linalg.norm(a), "l1": np.abs(a).max(), "linf": np.abs(a).sum()}[norm]
        d = need / dual
        cat = {"l1": ms * cc, "l2": np.sqrt(ms) * cc, "linf": np.where(ms > 0, cc, 0.0)}[norm]
        tot = {"l1": cat + d, "l2": np.sqrt(cat ** 2 + d ** 2), "linf": np.maximum(cat, d)}[norm]
        out.append(tot.min())
    return np.array(out)


def _check_valid(tm, res, frame, target=None, immutable=()):
    f = np.isin(res.status, ["found", "already-target"])
    pts = res.points[f]
    # categories known, blanks stay blank, immutable untouched, integers integer
    for col in tm.columns:
        vals = pts[col.name].to_numpy()
        orig = frame[col.name].to_numpy()[f]
        if col.kind == "categorical":
            for v, o in zip(vals, orig):
                if isinstance(o, float) and np.isnan(o):
                    assert isinstance(v, float) and np.isnan(v)
                elif v != o:
                    assert v in col.categories
        else:
            assert np.all(np.isnan(vals) == np.isnan(orig.astype(float)))
            if col.kind == "integer":
                ch = ~np.isnan(vals) & (vals != orig)
                assert np.all(vals[ch] == np.round(vals[ch]))
        if col.name in immutable:
            assert all((a == b) or (a != a and b != b) for a, b in zip(vals, orig))
    pred = tm.estimator.predict(pts[tm.column_names])
    assert np.all(pred == tm.classes[res.predicted_index[f]])
    if target is not None:
        assert np.all(res.predicted_index[f] == np.asarray(target)[f])
    assert list(res.points.columns) == tm.column_names
    for c in tm.column_names:
        assert res.points[c].dtype == frame[tm.column_names][c].dtype


# ---- tests ------------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["l2", "l1", "linf"])
def test_binary_linear_exact_against_enumeration(credit_lr, norm):
    df, _, model = credit_lr
    tm = split_tabular(model)
    rows = df.iloc[:25]
    t = 1 - tm.predict_index(rows)
    res = tabular_counterfactuals(tm, rows, target=t, norm=norm, scale=SCALE)
    ref = binary_reference(model, df, np.arange(25), norm, SCALE)
    assert np.all(res.status == "found")
    assert np.all(res.exact)
    np.testing.assert_allclose(res.distance, ref, rtol=1e-6)
    np.testing.assert_allclose(res.lower_bound, res.distance)
    _check_valid(tm, res, rows, t)
    assert any(len(c) and any(name in CAT for name, _, _ in c) for c in res.changes)


def test_binary_linear_immutable_and_cost(credit_lr):
    df, _, model = credit_lr
    tm = split_tabular(model)
    rows = df.iloc[25:45]
    t = 1 - tm.predict_index(rows)
    res = tabular_counterfactuals(tm, rows, target=t, norm="l2", scale=SCALE, immutable=["housing", "age"],
                                  categorical_cost=0.5)
    sc = dict(SCALE)
    ref = binary_reference(model, df, np.arange(25, 45), "l2", sc, cc=0.5, immutable=("housing", "age"))
    np.testing.assert_allclose(res.distance, ref, rtol=1e-6)
    assert np.all(res.exact)
    _check_valid(tm, res, rows, t, immutable=("housing", "age"))


def test_multiclass_l1_against_linprog(penguins_lr):
    df, _, model, num = penguins_lr
    tm = split_tabular(model)
    rows = df.iloc[:8]
    orig = tm.predict_index(rows)
    t = (orig + 1) % 3
    scale = {c: float(df[c].std()) for c in num}
    res = tabular_counterfactuals(tm, rows, target=t, norm="l1", scale=scale)
    G = _gradient(model, num)                       # (3, 4)
    categories = _categories(model, ["island", "sex"])
    w = np.array([1.0 / scale[c] for c in num])
    for r in range(len(rows)):
        row = rows.iloc[r]
        V, ms = _variants(row, ["island", "sex"], categories)
        S = model.decision_function(V[tm.column_names])
        movable = ~np.isnan(row[num].to_numpy(dtype=float))
        best = np.inf
        for s, m in zip(S, ms):
            # minimise sum(u) with u >= |w z|, (G_t - G_k) z >= s_k - s_t  (z: numeric change)
            p = len(num)
            A, b = [], []
            for k in range(3):
                if k == t[r]:
                    continue
                A.append(np.r_[-(G[t[r]] - G[k]), np.zeros(p)])
                b.append(-(s[k] - s[t[r]]))
            for j in range(p):
                e = np.zeros(2 * p)
                e[j], e[p + j] = w[j], -1
                A.append(e.copy()); b.append(0.0)
                e[j] = -w[j]
                A.append(e); b.append(0.0)
            bounds = [(None, None) if movable[j] else (0, 0) for j in range(p)] + [(0, None)] * p
            lp = linprog(np.r_[np.zeros(p), np.ones(p)], A_ub=np.array(A), b_ub=np.array(b), bounds=bounds,
                         method="highs")
            if lp.status == 0:
                best = min(best, m + lp.fun)
        assert res.status[r] == "found"
        assert res.distance[r] == pytest.approx(best, rel=1e-6, abs=1e-9)
    assert np.all(res.exact)
    _check_valid(tm, res, rows, t)


def test_multiclass_l2_exact_and_valid(penguins_lr):
    df, _, model, num = penguins_lr
    tm = split_tabular(model)
    rows = df.iloc[8:20]
    t = (tm.predict_index(rows) + 2) % 3
    res = tabular_counterfactuals(tm, rows, target=t, norm="l2")
    assert np.all(res.status == "found") and np.all(res.exact)
    _check_valid(tm, res, rows, t)


def test_integer_columns_l1_milp_against_brute_force(credit_lr):
    df, _, model = credit_lr
    tm = split_tabular(model, integer_columns=["n_loans"])
    rows = df.iloc[:10]
    t = 1 - tm.predict_index(rows)
    res = tabular_counterfactuals(tm, rows, target=t, norm="l1", scale=SCALE, immutable=["age"])
    assert np.all(res.status == "found")
    assert np.all(res.exact)
    assert all(m.startswith("milp") or "categories-only" in m or "l1" in m for m in res.method)
    _check_valid(tm, res, rows, t, immutable=("age",))
    # brute force: every category choice, every n_loans change in -12..12, income closed form
    a = _gradient(model, NUM)[0]
    categories = _categories(model, CAT)
    X = rows[NUM + CAT]
    for r in range(len(rows)):
        row = X.iloc[r]
        sign = 1.0 if t[r] == 1 else -1.0
        V, ms = _variants(row, CAT, categories)
        s = model.decision_function(V)
        best = np.inf
        for dn in range(-12, 13):
            need = np.maximum(-sign * (s + a[2] * dn) + 1e-12, 0.0)
            if np.isnan(row["income"]):
                d_inc = np.where(need > 1e-12, np.inf, 0.0)
            else:
                d_inc = need / (abs(a[0]) * SCALE["income"])
            best = min(best, float(np.min(ms + abs(dn) / SCALE["n_loans"] + d_inc)))
        assert res.distance[r] == pytest.approx(best, rel=1e-6, abs=1e-9)


def test_integer_columns_l2_round_and_repair(credit_lr):
    df, _, model = credit_lr
    tm = split_tabular(model, integer_columns=["n_loans", "age"])
    rows = df.iloc[:10]
    t = 1 - tm.predict_index(rows)
    res = tabular_counterfactuals(tm, rows, target=t, norm="l2", scale=SCALE)
    f = res.status == "found"
    assert f.all()
    _check_valid(tm, res, rows, t)
    assert np.all(res.lower_bound[f] <= res.distance[f] * (1 + 1e-9))
    cont = binary_reference(model, df, np.arange(10), "l2", SCALE)
    np.testing.assert_allclose(res.lower_bound, cont, rtol=1e-6)
    assert not res.exact[~np.isclose(res.distance, res.lower_bound)].any()


def test_already_target_infeasible_and_records(credit_lr):
    df, _, model = credit_lr
    tm = split_tabular(model)
    rows = df.iloc[:6]
    orig = tm.predict_index(rows)
    res = tabular_counterfactuals(tm, rows, target=orig, norm="l2")
    assert np.all(res.status == "already-target") and np.all(res.distance == 0)
    everything = tm.column_names
    res = tabular_counterfactuals(tm, rows, target=1 - orig, immutable=everything)
    assert np.all(res.status == "infeasible")
    res = tabular_counterfactuals(tm, rows, target=1 - orig, norm="l1", scale=SCALE)
    recs = res.records(tm.classes, list(df["id"].iloc[:6]))
    json.dumps(recs)
    r0 = recs[0]
    for key in ("row", "original_class", "target_class", "status", "counterfactual", "delta", "distance",
                "norm", "target_probability", "predicted_class", "exact", "method", "changed_features",
                "changes", "reason"):
        assert key in r0
    assert r0["row"] == "C0000"
    # DESIGN.md: ``counterfactual`` and ``delta`` are lists in the model's column order
    assert isinstance(r0["counterfactual"], list) and len(r0["counterfactual"]) == len(tm.column_names)
    assert isinstance(r0["delta"], list) and len(r0["delta"]) == len(tm.column_names)
    for rec, ch in zip(recs, res.changes):
        assert rec["changed_features"] == [c for c, _, _ in ch]
        assert all(" -> " in s for s in rec["changes"])
    with pytest.raises(InputError):
        tabular_counterfactuals(tm, rows, target=1 - orig, increase_only=["housing"])
    with pytest.raises(InputError):
        tabular_counterfactuals(tm, rows, target=1 - orig, immutable=["nope"])


def test_missing_values_may_change_when_allowed(credit_lr):
    df, _, model = credit_lr
    tm = split_tabular(model)
    blank = df.index[df["income"].isna()][:4]
    rows = df.loc[blank]
    t = 1 - tm.predict_index(rows)
    frozen = tabular_counterfactuals(tm, rows, target=t, norm="l2", scale=SCALE)
    free = tabular_counterfactuals(tm, rows, target=t, norm="l2", scale=SCALE, allow_missing_change=True)
    assert np.all(frozen.points["income"].isna())
    assert np.all(free.distance <= frozen.distance + 1e-9)
    _check_valid(tm, frozen, rows, t)


@pytest.mark.parametrize("clf", [RandomForestClassifier(n_estimators=25, random_state=0),
                                 HistGradientBoostingClassifier(max_iter=30, random_state=0),
                                 MLPClassifier((8,), max_iter=300, random_state=0)])
def test_nonlinear_final_estimators_give_valid_verified_rows(clf):
    import warnings

    df, y = credit(n=200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = pipeline(clf, NUM, CAT).fit(df.drop(columns="id"), y)
    tm = split_tabular(model, integer_columns=["n_loans"])
    assert tm.final_form is not None and tm.final_form.kind != "linear"
    assert tm.linear_decomposition() is None
    rows = df.iloc[:2]
    t = 1 - tm.predict_index(rows)
    res = tabular_counterfactuals(tm, rows, target=t, norm="l2", scale=SCALE)
    assert np.all(np.isin(res.status, ["found", "failed"]))
    assert (res.status == "found").any()
    assert not res.exact.any()
    _check_valid(tm, res, rows, t)


def test_chunks_give_the_batch_answer_and_report_progress(credit_lr):
    """Rows are solved in chunks (bounded memory, progress between chunks): a linear model's
    answers do not depend on the chunking, and progress reaches every row in order."""
    df, _, model = credit_lr
    tm = split_tabular(model)
    rows = df.iloc[:30]
    t = 1 - tm.predict_index(rows)
    whole = tabular_counterfactuals(tm, rows, target=t, norm="l1", scale=SCALE, chunk_rows=1000)
    seen = []
    parts = tabular_counterfactuals(tm, rows, target=t, norm="l1", scale=SCALE, chunk_rows=7,
                                    progress=lambda done, total: seen.append((done, total)))
    assert seen == [(7, 30), (14, 30), (21, 30), (28, 30), (30, 30)]
    np.testing.assert_array_equal(parts.status, whole.status)
    np.testing.assert_allclose(parts.distance, whole.distance, rtol=1e-12)
    # the same columns change to the same values (up to the last bit of BLAS summation order)
    assert [[c for c, _, _ in ch] for ch in parts.changes] == [[c for c, _, _ in ch] for ch in whole.changes]
    assert list(parts.points.index) == list(range(30))
    pd.testing.assert_frame_equal(parts.points, whole.points, rtol=1e-12)
    ref = binary_reference(model, df, np.arange(30), "l1", SCALE)
    np.testing.assert_allclose(parts.distance, ref, rtol=1e-6)
