"""The real palmerpenguins table (344 rows, CC0; the `palmerpenguins` package ships the CSV), as a
user has it: string categories, blanks written as ``NA``, an ID column, columns in another order
than the model's. Every command runs on ColumnTransformer pipelines ending in LogisticRegression,
RandomForest, MLP and HistGradientBoosting, and on a HistGradientBoosting with native categorical
splits; every answer is a valid row that the model itself puts in the reported class, and the
linear answers match an independent enumeration + linprog reference."""

from __future__ import annotations

import itertools
import warnings

import joblib
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

pytest.importorskip("palmerpenguins")

NUM = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
CAT = ["island", "sex"]
ISLANDS = {"Biscoe", "Dream", "Torgersen"}
SEXES = {"female", "male"}


def _penguins_csv_text() -> str:
    from importlib.resources import files

    return (files("palmerpenguins") / "data" / "penguins.csv").read_text()


@pytest.fixture(scope="module")
def penguins(tmp_path_factory):
    import io

    d = tmp_path_factory.mktemp("penguins")
    text = _penguins_csv_text()
    assert ",NA," in text  # the file as shipped: blanks are written NA
    raw = pd.read_csv(io.StringIO(text))
    raw.insert(0, "penguin_id", [f"P{i:03d}" for i in range(len(raw))])
    # the user's file: an ID column, the label, columns in another order, NA kept as written
    cols = ["penguin_id", "sex", "body_mass_g", "species", "island", "bill_depth_mm", "year",
            "flipper_length_mm", "bill_length_mm"]
    raw[cols].to_csv(d / "penguins.csv", index=False, na_rep="NA")
    X, y = raw[NUM + CAT], raw["species"]
    pre = ColumnTransformer([("num", Pipeline([("imp", SimpleImputer()), ("sc", StandardScaler())]), NUM),
                             ("cat", OneHotEncoder(handle_unknown="ignore"), CAT)])
    finals = {"logreg": LogisticRegression(max_iter=5000),
              "forest": RandomForestClassifier(n_estimators=15, max_depth=5, random_state=0),
              "mlp": MLPClassifier((8,), max_iter=3000, random_state=0),
              "hgb": HistGradientBoostingClassifier(max_iter=20, random_state=0)}
    from threadpoolctl import threadpool_limits

    # one thread: HistGradientBoosting's OpenMP teams made these two 344-row fits 15 CPU-s (75 s of
    # wall time on the shared 2-core machine) instead of 0.3
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore")
        for name, final in finals.items():
            joblib.dump(Pipeline([("pre", pre), ("clf", final)]).fit(X, y), d / f"{name}.joblib")
        Xc = X.astype({c: "category" for c in CAT})
        joblib.dump(HistGradientBoostingClassifier(max_iter=20, categorical_features="from_dtype",
                                                   random_state=0).fit(Xc, y), d / "hgb_native.joblib")
    return d, raw


def _model_reads(name, frame):
    """The rows as the model was fitted on them (category dtype for the native HGB)."""
    frame = frame[NUM + CAT].copy()
    for c in CAT:
        frame[c] = frame[c].astype(object).where(frame[c].notna(), np.nan)
    if name == "hgb_native":
        frame = frame.astype({c: "category" for c in CAT})
    return frame


def _check_rows(d, name, raw, out_csv, results, key):
    """Every written row: known categories, blanks stayed blank, and the model's own prediction
    is the class the report gives."""
    model = joblib.load(d / f"{name}.joblib")
    pts = pd.read_csv(out_csv)
    assert len(pts) > 0
    assert set(pts["island"].dropna()) <= ISLANDS and set(pts["sex"].dropna()) <= SEXES
    pred = model.predict(_model_reads(name, pts))
    by_id = {r["row_id"]: r for r in results}
    orig = raw.set_index("penguin_id")
    for pid, p, (_, row) in zip(pts["penguin_id"], pred, pts.iterrows()):
        assert p == by_id[pid][key], (name, pid, p, by_id[pid])
        for c in NUM + CAT:
            if pd.isna(orig.loc[pid, c]):
                assert pd.isna(row[c]), f"{name} {pid}: the blank {c} was filled"


@pytest.mark.parametrize("name", ["logreg", "forest", "mlp", "hgb", "hgb_native"])
def test_counterfactual_and_margin_give_valid_rows(invaudit, validate, penguins, name):
    d, raw = penguins
    common = ("--label-column", "species", "--id-column", "penguin_id", "--rows", "0,3,150,300",
              "--format", "json", "--trust")
    r = invaudit("counterfactual", d / f"{name}.joblib", d / "penguins.csv", "--target", "Gentoo",
                 "--out", d / f"cf_{name}.csv", *common)
    assert r.code == 0, r.err
    rep = validate(r.json())
    found = [x for x in rep["results"] if x["status"] == "found"]
    assert len(found) >= 3, rep["results"]
    _check_rows(d, name, raw, d / f"cf_{name}.csv", rep["results"], "predicted_class")
    assert all(x["predicted_class"] == "Gentoo" for x in found)
    if name != "logreg":
        assert not any(x["exact"] for x in rep["results"])
    m = invaudit("margin", d / f"{name}.joblib", d / "penguins.csv", "--out", d / f"adv_{name}.csv", *common)
    assert m.code == 0, m.err
    mrep = validate(m.json())
    assert sum(x["margin"] is not None for x in mrep["results"]) >= 3
    _check_rows(d, name, raw, d / f"adv_{name}.csv", mrep["results"], "nearest_class")
    for x in mrep["results"]:
        if x["margin"] is not None:
            assert x["nearest_class"] != x["predicted_class"]


def _l1_reference(model, row, target):
    """min over every category choice (blanks stay) of |changed categories| + the L1 numeric
    change that makes ``target`` win, by linprog on the pipeline's own decision_function and the
    fitted scaler/coefficients (not invaudit's code)."""
    sc = model.named_steps["pre"].named_transformers_["num"].named_steps["sc"]
    G = model.named_steps["clf"].coef_[:, :len(NUM)] / sc.scale_           # d score / d numeric input
    enc = model.named_steps["pre"].named_transformers_["cat"]
    options = []
    for j, c in enumerate(CAT):
        v = row[c]
        options.append([v] if pd.isna(v) else [v] + [k for k in enc.categories_[j] if k != v])
    movable = ~pd.isna(row[NUM]).to_numpy()
    p, K = len(NUM), len(model.classes_)
    best = np.inf
    for pick in itertools.product(*options):
        m = sum(1 for c, v in zip(CAT, pick) if not (pd.isna(v) and pd.isna(row[c])) and v != row[c])
        v_row = row.copy()
        for c, v in zip(CAT, pick):
            v_row[c] = v
        s = model.decision_function(pd.DataFrame([v_row[NUM + CAT]]).astype({c: object for c in CAT}))[0]
        A, b = [], []
        for k in range(K):
            if k != target:  # (G_t - G_k) z >= s_k - s_t
                A.append(np.r_[-(G[target] - G[k]), np.zeros(p)])
                b.append(s[target] - s[k])
        for j in range(p):   # u_j >= |z_j|
            for sign in (1.0, -1.0):
                e = np.zeros(2 * p)
                e[j], e[p + j] = sign, -1.0
                A.append(e)
                b.append(0.0)
        bounds = [(None, None) if movable[j] else (0, 0) for j in range(p)] + [(0, None)] * p
        lp = linprog(np.r_[np.zeros(p), np.ones(p)], A_ub=np.array(A), b_ub=np.array(b), bounds=bounds,
                     method="highs")
        if lp.status == 0:
            best = min(best, m + lp.fun)
    return best


def test_linear_counterfactuals_are_exact_against_enumeration(invaudit, validate, penguins):
    d, raw = penguins
    model = joblib.load(d / "logreg.joblib")
    rows = [0, 1, 3, 40, 160, 200, 330]
    r = invaudit("counterfactual", d / "logreg.joblib", d / "penguins.csv", "--label-column", "species",
                 "--id-column", "penguin_id", "--target", "Chinstrap", "--norm", "l1", "--trust",
                 "--rows", ",".join(map(str, rows)), "--format", "json")
    assert r.code == 0, r.err
    rep = validate(r.json())
    t = list(model.classes_).index("Chinstrap")
    for x in rep["results"]:
        row = raw.iloc[x["row"]]
        if x["status"] == "already-target":
            assert model.predict(_model_reads("logreg", raw.iloc[[x["row"]]]))[0] == "Chinstrap"
            continue
        assert x["status"] == "found" and x["exact"], x
        assert x["distance"] == pytest.approx(_l1_reference(model, row, t), rel=1e-6, abs=1e-9)


def test_influence_mislabel_and_explain_run_on_the_real_table(invaudit, validate, penguins, tmp_path):
    d, raw = penguins
    inf = invaudit("influence", d / "logreg.joblib", d / "penguins.csv", d / "penguins.csv", "--trust",
                   "--label-column", "species", "--id-column", "penguin_id", "--rows", "0-2", "--top", "3",
                   "--format", "json")
    assert inf.code == 0, inf.err
    rep = validate(inf.json())
    assert all(e["train_row_id"].startswith("P") for x in rep["results"] for e in x["helpful"])
    # mislabel: flip 10% of the real labels; the flipped rows rank high
    rng = np.random.default_rng(0)
    noisy = pd.read_csv(d / "penguins.csv")
    flip = rng.choice(len(noisy), len(noisy) // 10, replace=False)
    species = np.array(sorted(noisy["species"].unique()))
    noisy.loc[flip, "species"] = [rng.choice(species[species != s]) for s in noisy.loc[flip, "species"]]
    noisy.to_csv(tmp_path / "noisy.csv", index=False, na_rep="NA")
    for name in ("logreg", "hgb_native"):
        mis = invaudit("mislabel", d / f"{name}.joblib", tmp_path / "noisy.csv", "--trust", "--label-column",
                       "species", "--id-column", "penguin_id", "--top", str(len(flip)), "--format", "json")
        assert mis.code == 0, (name, mis.err)
        top = {x["train_row"] for x in validate(mis.json())["results"]}
        assert len(top & set(flip.tolist())) >= len(flip) // 2, name
    ex = invaudit("explain", d / "forest.joblib", d / "penguins.csv", "--trust", "--label-column", "species",
                  "--id-column", "penguin_id", "--train", d / "penguins.csv", "--rows", "0,150,300",
                  "--format", "json")
    assert ex.code == 0, ex.err
    erep = validate(ex.json())
    explained = [x for x in erep["results"] if x["explanations"]]
    assert len(explained) >= 2
    for x in explained:
        for e in x["explanations"]:
            assert e["sufficient"] and set(e["features"]) <= set(range(len(NUM + CAT)))
