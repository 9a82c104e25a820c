"""The audit's influence check on every family ``invaudit influence`` covers (issue 15): tree
models (leaf refits), k-nearest neighbours, GaussianNB and QDA (exact leave-one-out) and SVC
(smoothed hinge), on CSVs with an ID column, string labels, columns in another order and
features at scales 1e-5..1e5, and on typed rows behind a ColumnTransformer.

For the exact families the check's value (the largest share of a test row's total absolute
influence carried by one training row) is recomputed from real scikit-learn refits without each
training row; for the estimated ones, from the same objective the ``influence`` command uses."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

N_TRAIN, N_TEST, TEST_ROWS = 70, 6, 4
FEATURES = ["income", "tiny", "age", "huge"]
SCALES = {"income": 1e3, "tiny": 1e-5, "age": 1.0, "huge": 1e5}
NAMES = np.array(["bad", "fair", "good"])


def _frames(seed=0):
    rng = np.random.default_rng(seed)
    n = N_TRAIN + N_TEST
    Z = rng.normal(size=(n, 4))
    s = Z[:, 0] + 0.6 * Z[:, 1] ** 2 - 0.4 * Z[:, 2] + 0.3 * rng.normal(size=n)
    y = NAMES[np.digitize(s, np.quantile(s, [0.33, 0.66]))]
    df = pd.DataFrame({f: Z[:, j] * SCALES[f] for j, f in enumerate(FEATURES)})
    df.insert(0, "customer", [f"c{i:04d}" for i in range(n)])
    df["label"] = y
    return df.iloc[:N_TRAIN].reset_index(drop=True), df.iloc[N_TRAIN:].reset_index(drop=True)


def _models():
    from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.naive_bayes import GaussianNB
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC
    from sklearn.tree import DecisionTreeClassifier

    return {
        "tree": (DecisionTreeClassifier(max_depth=3, random_state=0), False),
        "forest": (RandomForestClassifier(n_estimators=8, max_depth=3, random_state=0), False),
        "boosting": (GradientBoostingClassifier(n_estimators=6, max_depth=2, random_state=0), False),
        "knn": (make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=3)), True),
        "gnb": (GaussianNB(), True),
        "qda": (make_pipeline(StandardScaler(), QuadraticDiscriminantAnalysis(reg_param=0.05)), True),
        "svc": (make_pipeline(StandardScaler(), SVC(C=1.0)), False),
    }


def _share(changes):
    """The check's value: a test row no training row moves (a pure leaf) has share 0."""
    a = np.abs(changes)
    tot = a.sum(axis=1)
    return float(np.max(np.where(tot > 0, a.max(axis=1) / np.where(tot > 0, tot, 1.0), 0.0)))


def _refit_share(est, Xtr, ytr, Xte, yte):
    """The check's value from real refits of the final estimator without each training row (its
    preprocessing fixed, as influence keeps it)."""
    pre = est[:-1] if hasattr(est, "steps") else None
    final = est[-1] if hasattr(est, "steps") else est
    Z, Zt = (Xtr, Xte) if pre is None else (pre.transform(Xtr), pre.transform(Xte))

    def loss(m):
        p = m.predict_proba(Zt)[np.arange(len(yte)), np.searchsorted(m.classes_, yte)]
        return -np.log(np.maximum(p, np.finfo(float).eps))

    base = loss(final)
    ch = np.empty((len(yte), len(ytr)))
    for i in range(len(ytr)):  # a real refit per training row
        keep = np.arange(len(ytr)) != i
        ch[:, i] = loss(clone(final).fit(Z[keep], ytr[keep])) - base
    return _share(ch)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    import joblib

    d = tmp_path_factory.mktemp("families")
    train, test = _frames()
    train.to_csv(d / "train.csv", index=False)
    test[["label", "huge", "customer", "age", "tiny", "income"]].to_csv(d / "test.csv", index=False)  # another order
    models = {}
    for name, (est, exact) in _models().items():
        est.fit(train[FEATURES], train["label"])
        joblib.dump(est, d / f"{name}.joblib")
        models[name] = (est, exact)
    return d, train, test, models


def test_every_family_runs_its_influence_check(invaudit, validate, fitted):
    d, train, test, models = fitted
    checks = "".join(f"  - name: {name}\n    kind: influence\n    model: {name}.joblib\n    test_rows: {TEST_ROWS}\n"
                     f"    max_share: 1.0\n" for name in models)
    checks += (f"  - name: strict-knn\n    kind: influence\n    model: knn.joblib\n    test_rows: {TEST_ROWS}\n"
               "    max_share: 0.01\n")
    (d / "suite.yaml").write_text("model: tree.joblib\ntrain: train.csv\ntest: test.csv\nlabel_column: label\n"
                                  "id_column: customer\nchecks:\n" + checks)
    r = invaudit("audit", d / "suite.yaml", "--format", "json")
    assert r.code == 1, r.err  # only strict-knn fails
    by = {x["name"]: x for x in validate(r.json())["results"]}
    Xtr, ytr = train[FEATURES].to_numpy(), train["label"].to_numpy()
    Xte, yte = test[FEATURES].to_numpy()[:TEST_ROWS], test["label"].to_numpy()[:TEST_ROWS]
    from invaudit.influence import build_influence_objective, predicted_loss_changes
    from invaudit.models import adapt
    from invaudit.models.base import class_indices

    for name, (est, exact) in models.items():
        res = by[name]
        assert res["passed"] is True, (name, res["details"])
        assert res["details"]["exact"] is exact, name
        if exact:  # independent: real refits
            assert res["value"] == pytest.approx(_refit_share(est, Xtr, ytr, Xte, yte), abs=1e-6), name
        else:  # the influence command's own objective on the same rows
            form = adapt(est)
            obj = build_influence_objective(form, Xtr, class_indices(form.classes, ytr))
            ch = predicted_loss_changes(obj, Xte, class_indices(form.classes, yte))
            assert res["value"] == pytest.approx(_share(ch), abs=1e-6), name
            assert res["details"]["method"] == obj.method
    strict = by["strict-knn"]
    assert strict["passed"] is False and "training row" in strict["details"]["reason"]
    assert strict["value"] == by["knn"]["value"] > 1 / 3 - 1e-9  # 3 neighbours: one carries at least a third


def test_typed_rows_tree_and_naive_bayes(invaudit, validate, tmp_path):
    """A ColumnTransformer (a string category with blanks, imputed and one-hot encoded; numeric
    columns passed through) in front of a DecisionTree and a GaussianNB."""
    import joblib
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.naive_bayes import GaussianNB
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder
    from sklearn.tree import DecisionTreeClassifier

    train, test = _frames(seed=1)
    rng = np.random.default_rng(1)
    for df in (train, test):
        df["region"] = rng.choice(["north", "south", "east"], size=len(df)).astype(object)
        df.loc[rng.random(len(df)) < 0.15, "region"] = np.nan
    cols = FEATURES + ["region"]
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)

    def pipe(final):
        ct = ColumnTransformer([("cat", make_pipeline(SimpleImputer(strategy="most_frequent"),
                                                      OneHotEncoder(handle_unknown="ignore")), ["region"]),
                                ("num", "passthrough", FEATURES)], sparse_threshold=0)
        return make_pipeline(ct, final).fit(train[cols], train["label"])

    models = {"tree": pipe(DecisionTreeClassifier(max_depth=3, random_state=0)), "gnb": pipe(GaussianNB())}
    for name, est in models.items():
        joblib.dump(est, tmp_path / f"{name}.joblib")
    checks = "".join(f"  - name: {name}\n    kind: influence\n    model: {name}.joblib\n    test_rows: {TEST_ROWS}\n"
                     "    max_share: 1.0\n" for name in models)
    (tmp_path / "suite.yaml").write_text("model: tree.joblib\ntrain: train.csv\ntest: test.csv\nlabel_column: label\n"
                                         "id_column: customer\nchecks:\n" + checks)
    r = invaudit("audit", tmp_path / "suite.yaml", "--format", "json")
    assert r.code == 0, r.err
    by = {x["name"]: x for x in validate(r.json())["results"]}
    assert by["tree"]["passed"] is True and "single tree" in by["tree"]["details"]["method"]
    gnb = models["gnb"]
    Xtr = gnb[:-1].transform(train[cols])
    Xte = gnb[:-1].transform(test[cols].iloc[:TEST_ROWS])
    ref = _refit_share(gnb[-1], Xtr, train["label"].to_numpy(), Xte,
                       test["label"].to_numpy()[:TEST_ROWS])
    assert by["gnb"]["details"]["exact"] is True
    assert by["gnb"]["value"] == pytest.approx(ref, abs=1e-6)
