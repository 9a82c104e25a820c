"""Red team 4: data files read as the model's own ``predict`` reads them, or refused (exit 3).

Found: an NPZ whose ``feature_names`` member lists the columns in another order than the model's
was read by position, silently (every answer about other rows than the file held); categories the
encoder knows with spaces (UCI Adult's `` Male``, `` ?``, as ``pandas.read_csv`` reads that file)
were stripped: with ``handle_unknown="ignore"`` the rows became unknown categories and reports
gave other classes than the model's, with a strict encoder an internal error (exit 4); labels with
spaces (`` >50K``) were refused as unknown classes. The reference is the estimator's own
``predict`` on the file as pandas reads it.
"""

from __future__ import annotations

import warnings

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler


@pytest.fixture(scope="module")
def named(tmp_path_factory):
    d = tmp_path_factory.mktemp("rt4data")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 3)) * np.array([1e-5, 1.0, 1e5])
    y = np.where(X[:, 0] / 1e-5 + X[:, 1] + X[:, 2] / 1e5 + 0.5 * rng.normal(size=80) > 0, "yes", "no")
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(frame, y)
    joblib.dump(model, d / "m.joblib")
    np.savez(d / "other_order.npz", X=X[:, [2, 0, 1]], y=y, feature_names=np.array(["c", "a", "b"]))
    np.savez(d / "unknown_name.npz", X=X[:, [2, 0, 1]], feature_names=np.array(["c", "a", "zz"]))
    np.savez(d / "short_names.npz", X=X, feature_names=np.array(["a", "b"]))
    frame.assign(label=y).to_csv(d / "data.csv", index=False)
    frame.assign(label=y).to_csv(d / "semi.csv", index=False, sep=";")
    with open(d / "bom.csv", "w", encoding="utf-8-sig") as fh:
        fh.write(frame.assign(label=y).to_csv(index=False))
    dup = frame.assign(label=y)
    dup.insert(2, "a2", 5.0)
    dup.to_csv(d / "dup.csv", index=False)
    (d / "dup.csv").write_text((d / "dup.csv").read_text().replace("a2", "a", 1))
    frame.assign(b="x", label=y).to_csv(d / "str_b.csv", index=False)
    return d, model, frame, y


def _margins(r):
    assert r.code == 0, r.err
    return {x["row"]: x for x in r.json()["results"]}


def test_npz_feature_names_in_another_order_are_matched_by_name(named, invaudit):
    d, model, frame, y = named
    ref = _margins(invaudit("margin", d / "m.joblib", d / "data.csv", "--label-column", "label",
                            "--rows", "0-9", "--format", "json", "-q"))
    r = invaudit("margin", d / "m.joblib", d / "other_order.npz", "--rows", "0-9", "--format", "json", "-q")
    got = _margins(r)
    assert r.json()["data"]["column_match"] == "name"
    pred = model.predict(frame.iloc[:10])
    for i in range(10):
        assert got[i]["predicted_class"] == pred[i] == ref[i]["predicted_class"]
        assert got[i]["margin"] == pytest.approx(ref[i]["margin"], rel=1e-12)
        # the perturbation is in the model's column order: the row plus it flips the model
        p = frame.iloc[[i]].to_numpy() + 1.0001 * np.array(got[i]["perturbation"])
        assert model.predict(pd.DataFrame(p, columns=frame.columns))[0] != pred[i]


@pytest.mark.parametrize("name", ["unknown_name.npz", "short_names.npz", "semi.csv", "dup.csv", "str_b.csv"])
def test_malformed_files_are_refused(named, invaudit, name):
    d = named[0]
    r = invaudit("margin", d / "m.joblib", d / name, "--format", "json", "-q")
    assert r.code == 3 and r.out == "" and "Traceback" not in r.err, (r.code, r.err)
    assert len(r.err.strip().splitlines()) == 1


def test_bom_header_is_read_by_name(named, invaudit):
    d, model, frame, _ = named
    got = _margins(invaudit("margin", d / "m.joblib", d / "bom.csv", "--label-column", "label",
                            "--rows", "0-4", "--format", "json", "-q"))
    assert [got[i]["predicted_class"] for i in range(5)] == list(model.predict(frame.iloc[:5]))


@pytest.fixture(scope="module")
def adult(tmp_path_factory):
    """Categories and labels with a leading space, as pandas reads UCI Adult's CSV."""
    d = tmp_path_factory.mktemp("rt4adult")
    rng = np.random.default_rng(1)
    n = 120
    f = pd.DataFrame({"age": rng.normal(40, 10, n), "sex": rng.choice([" Male", " Female"], n),
                      "wc": rng.choice([" Private", " Self-emp", " ?"], n)})
    s = (f.age - 40) / 10 + (f.sex == " Male") * 1.5 - (f.wc == " ?") * 2
    y = np.where(s + rng.normal(size=n) * 0.3 > 0, " >50K", " <=50K")
    models = {}
    for hu in ("ignore", "error"):
        ct = ColumnTransformer([("num", StandardScaler(), ["age"]),
                                ("cat", OneHotEncoder(handle_unknown=hu), ["sex", "wc"])])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            models[hu] = make_pipeline(ct, LogisticRegression()).fit(f, y)
        joblib.dump(models[hu], d / f"{hu}.joblib")
    f.assign(label=y).to_csv(d / "adult.csv", index=False)
    return d, models


@pytest.mark.parametrize("hu", ["ignore", "error"])
def test_categories_and_labels_with_spaces_are_the_models_own(adult, invaudit, hu):
    d, models = adult
    read = pd.read_csv(d / "adult.csv")
    assert read.sex[0] in (" Male", " Female")
    pred = models[hu].predict(read.iloc[:12, :3])
    assert len(set(pred)) == 2
    r = invaudit("counterfactual", d / f"{hu}.joblib", d / "adult.csv", "--label-column", "label",
                 "--rows", "0-11", "--target", " >50K", "--format", "json", "-q")
    assert r.code == 0, r.err
    for x in r.json()["results"]:
        i = x["row"]
        assert x["original_class"] == pred[i]
        assert x["status"] in ("found", "already-target")
        cf = pd.DataFrame([x["counterfactual"]], columns=["age", "sex", "wc"])
        assert models[hu].predict(cf)[0] == " >50K"
        assert cf.sex[0] in (" Male", " Female") and cf.wc[0] in (" Private", " Self-emp", " ?")
    m = _margins(invaudit("margin", d / f"{hu}.joblib", d / "adult.csv", "--label-column", "label",
                          "--rows", "0-11", "--format", "json", "-q"))
    assert [m[i]["label"] for i in range(12)] == list(read.label[:12])
    assert [m[i]["predicted_class"] for i in range(12)] == list(pred)

