"""Build the bundled sample models and their data, deterministically.

Only data sets that ship with scikit-learn are used (no downloads). Run from the repository root:

    python sample_models/build.py

It writes, next to this file, for each data set ``<name>_train.csv`` / ``<name>_test.csv``
(features plus a ``target`` column) and ``<name>_train.npz`` / ``<name>_test.npz`` (arrays ``X``,
``y``), and one ``.joblib`` file per model. ``audit.yaml`` is written by hand, not by this script.

``credit_train.csv`` / ``credit_test.csv`` are a synthetic loan table as users have them (string
categories, blank cells, a ``customer`` ID column, columns in another order than the model's) and
``credit_logreg.joblib`` the ColumnTransformer pipeline that reads it.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import joblib
import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits, load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import PowerTransformer, StandardScaler
from sklearn.tree import DecisionTreeClassifier

HERE = Path(__file__).resolve().parent


def _clean(name: str) -> str:
    return name.strip().replace(" ", "_").replace("(", "").replace(")", "")


def split(name: str):
    """The fixed train/test split every sample model of a data set uses."""
    if name == "breast_cancer":
        ds = load_breast_cancer()
        names = [_clean(n) for n in ds.feature_names]
    elif name == "digits":
        ds = load_digits()
        names = [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]
    elif name == "wine":
        ds = load_wine()
        names = [_clean(n) for n in ds.feature_names]
    else:
        raise ValueError(name)
    X = ds.data.astype(np.float64)
    y = ds.target.astype(np.int64)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    return names, Xtr, Xte, ytr, yte


def write_data(name: str, names, X, y, part: str) -> None:
    with open(HERE / f"{name}_{part}.csv", "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(list(names) + ["target"])
        for row, label in zip(X, y):
            w.writerow([repr(float(v)) for v in row] + [int(label)])
    np.savez(HERE / f"{name}_{part}.npz", X=X, y=y)


def models():
    """(file name, data set, unfitted estimator) for every bundled model."""
    return [
        ("breast_cancer_logreg", "breast_cancer",
         Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=1000))])),
        ("breast_cancer_tree", "breast_cancer",
         DecisionTreeClassifier(max_depth=4, random_state=0)),
        ("breast_cancer_power", "breast_cancer",
         Pipeline([("power", PowerTransformer()), ("clf", LogisticRegression(max_iter=1000))])),
        ("digits_logreg", "digits", LogisticRegression(max_iter=2000)),
        ("digits_mlp", "digits", MLPClassifier(hidden_layer_sizes=(64,), max_iter=500, random_state=0)),
        ("digits_noisy_logreg", "digits_noisy", LogisticRegression(max_iter=10000, tol=1e-6)),
        ("wine_forest", "wine", RandomForestClassifier(n_estimators=10, max_depth=3, random_state=0)),
    ]


def main() -> int:
    splits = {}
    for name in ("breast_cancer", "digits", "wine"):
        names, Xtr, Xte, ytr, yte = split(name)
        splits[name] = (names, Xtr, ytr)
        write_data(name, names, Xtr, ytr, "train")
        write_data(name, names, Xte, yte, "test")
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    # A training set with known wrong labels, for `invaudit mislabel --truth` (5% flipped).
    names, Xtr, ytr = splits["digits"]
    rng = np.random.default_rng(0)
    wrong = np.sort(rng.choice(len(ytr), size=len(ytr) // 20, replace=False))
    noisy = ytr.copy()
    noisy[wrong] = (ytr[wrong] + rng.integers(1, 10, size=wrong.size)) % 10
    np.savez(HERE / "digits_noisy_train.npz", X=Xtr, y=noisy)
    (HERE / "digits_noisy_truth.txt").write_text("".join(f"{i}\n" for i in wrong))
    splits["digits_noisy"] = (names, Xtr, noisy)

    for fname, dname, est in models():
        names, Xtr, ytr = splits[dname]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(Xtr, ytr)
        accuracy = est.score(Xtr, ytr)
        # Record the CSV column names so invaudit can match columns by name.
        _set_feature_names(est, names)
        joblib.dump(est, HERE / f"{fname}.joblib", compress=3)
        print(f"wrote {fname}.joblib ({type(est).__name__}, train accuracy {accuracy:.3f})")
    write_credit()
    return 0


CREDIT_NUMERIC = ["income", "age", "n_loans"]
CREDIT_CATEGORICAL = ["employment", "housing"]


def credit_table(n: int, seed: int):
    """A synthetic loan table: approval depends on income, loans, employment and housing."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "customer": [f"C{seed}{i:04d}" for i in range(n)],
        "housing": rng.choice(["rent", "own", "mortgage"], n).astype(object),
        "income": np.round(rng.lognormal(10, 0.6, n), 2),
        "employment": rng.choice(["unemployed", "salaried", "self-employed", "retired"], n).astype(object),
        "age": rng.integers(18, 80, n),
        "n_loans": rng.integers(0, 6, n),
    })
    score = (np.log(df["income"]) - 10) * 2 - 0.4 * df["n_loans"] + 1.5 * (df["employment"] == "salaried") \
        - 1.5 * (df["employment"] == "unemployed") + 0.7 * (df["housing"] == "own")
    df["approved"] = (score + rng.normal(0, 0.5, n) > 0).astype(int)
    df.loc[rng.random(n) < 0.08, "income"] = np.nan
    df.loc[rng.random(n) < 0.08, "employment"] = np.nan
    return df


def write_credit() -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder

    train, test = credit_table(600, 1), credit_table(60, 2)
    pre = ColumnTransformer([
        ("num", Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())]), CREDIT_NUMERIC),
        ("cat", Pipeline([("impute", SimpleImputer(strategy="most_frequent")),
                          ("onehot", OneHotEncoder(handle_unknown="ignore"))]), CREDIT_CATEGORICAL),
    ])
    est = Pipeline([("pre", pre), ("clf", LogisticRegression(max_iter=1000))])
    est.fit(train[CREDIT_NUMERIC + CREDIT_CATEGORICAL], train["approved"])
    for part, df in (("train", train), ("test", test)):
        df.to_csv(HERE / f"credit_{part}.csv", index=False, lineterminator="\n")
    joblib.dump(est, HERE / "credit_logreg.joblib", compress=3)
    acc = est.score(train[CREDIT_NUMERIC + CREDIT_CATEGORICAL], train["approved"])
    print(f"wrote credit_logreg.joblib (ColumnTransformer + LogisticRegression, train accuracy {acc:.3f})")


def _set_feature_names(est, names) -> None:
    """Fitting on a plain array leaves no ``feature_names_in_``; set it the way fitting on a
    DataFrame would, so the model knows its columns (without needing pandas here)."""
    arr = np.asarray(names, dtype=object)
    steps = getattr(est, "steps", None)
    target = steps[0][1] if steps else est  # a Pipeline reports its first step's names
    target.feature_names_in_ = arr


if __name__ == "__main__":
    sys.exit(main())
