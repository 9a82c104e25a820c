"""stdout carries only the report (DESIGN.md): HiGHS's MIP solver printf()s a debug line
("HighsMipSolverData::transformNewIntegerFeasibleSolution tmpSolver.run();") on the C stdout
whatever its output options say. The typed-row MILP (integer columns, L1 / Linf) hit it, so
``--format json`` printed lines of it around the report and the report did not parse."""

import ctypes
import json
import sys

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, OrdinalEncoder, StandardScaler

from invaudit.cli.app import main

COLOR, SIZE, GRADE = ["red", "green", "blue"], ["S", "M", "L", "XL"], ["lo", "mid", "hi"]
MODEL_COLUMNS = ["a", "b", "c", "color", "size", "grade"]


def _frame(n, seed):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"id": [f"r{i}" for i in range(n)], "size": rng.choice(SIZE, n).astype(object),
                       "a": rng.normal(0, 1e-5, n), "color": rng.choice(COLOR, n).astype(object),
                       "b": rng.normal(0, 1e5, n), "grade": rng.choice(GRADE, n).astype(object),
                       "c": rng.integers(0, 10, n).astype(float)})
    s = df.a * 1e5 + df.b * 1e-5 + 0.3 * df.c + (df.color == "red") - 1.2 * (df["size"] == "XL") \
        + 0.8 * (df.grade == "hi")
    df["y"] = np.digitize(s + rng.normal(0, 0.7, n), [0.5, 2.0])
    return df


def _flush_c_stdio():
    """What the C library still buffers for stdout lands in the captured file now."""
    if sys.platform.startswith("win"):
        return
    ctypes.CDLL(None).fflush(None)


@pytest.fixture(scope="module")
def typed_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("native")
    train, test = _frame(300, 0), _frame(10, 1)
    pre = ColumnTransformer([
        ("num", Pipeline([("imp", SimpleImputer()), ("sc", StandardScaler())]), ["a", "b"]),
        ("c", MinMaxScaler(), ["c"]),
        ("cat", OneHotEncoder(handle_unknown="ignore"), ["color", "size"]),
        ("ord", OrdinalEncoder(), ["grade"])])
    model = Pipeline([("pre", pre), ("clf", LogisticRegression(C=10.0, max_iter=2000))])
    model.fit(train[MODEL_COLUMNS], train.y)
    joblib.dump(model, d / "model.joblib")
    # row 1 is one whose MILPs make HiGHS print; columns in another order, an ID column
    test.iloc[[1]][["y", "grade", "c", "id", "b", "size", "a", "color"]].to_csv(d / "rows.csv", index=False)
    return d, model


@pytest.mark.skipif(sys.platform.startswith("win"), reason="flushes the C library's stdout")
def test_typed_integer_milp_keeps_stdout_to_the_report(typed_model, capfd, monkeypatch):
    d, model = typed_model
    monkeypatch.setenv("INVAUDIT_NO_PROGRESS", "1")
    _flush_c_stdio()
    capfd.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["counterfactual", str(d / "model.joblib"), str(d / "rows.csv"), "--label-column", "y",
              "--id-column", "id", "--integer", "c", "--norm", "linf", "--format", "json", "--quiet"])
    sys.stdout.flush()
    _flush_c_stdio()
    out, _ = capfd.readouterr()
    assert exc.value.code == 0
    assert "Highs" not in out
    report = json.loads(out)   # the whole of stdout is the report
    rows = pd.read_csv(d / "rows.csv")
    for r in report["results"]:
        assert r["status"] == "found"
        point = pd.DataFrame([dict(zip(report["model"]["feature_names"], r["counterfactual"]))])
        assert model.predict(point[MODEL_COLUMNS])[0] == r["target_class"]
        assert float(point["c"].iloc[0]).is_integer()
    assert len(report["results"]) == len(rows)


def _brute_force(model, row, target, norm, steps):
    """The closest row the model assigns ``target`` with ``a`` frozen and ``c`` whole: every
    choice of (color, size, grade) and every whole step of ``c`` in ``steps``; the scores are affine in
    ``b`` (probed from the model itself), so each choice is a one-dimensional interval."""
    import itertools

    combos = list(itertools.product(COLOR, SIZE, GRADE))
    probe = []
    for color, size, grade in combos:
        for db, dc in ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0)):
            probe.append({**row, "color": color, "size": size, "grade": grade, "b": row["b"] + db,
                          "c": row["c"] + dc})
    S = model.decision_function(pd.DataFrame(probe)[MODEL_COLUMNS]).reshape(len(combos), 3, -1)
    best = np.inf
    for (color, size, grade), s in zip(combos, S):
        m = (color != row["color"]) + (size != row["size"]) + (grade != row["grade"])
        s0, gb, gc = s[0], s[1] - s[0], s[2] - s[0]
        for k in steps:
            lo, hi = -np.inf, np.inf
            for j in range(len(s0)):
                if j == target:
                    continue
                # (s_t - s_j)(b + db, c + k) > 0, with a hair for the scores' rounding
                c0 = (s0[target] - s0[j]) + k * (gc[target] - gc[j]) - 1e-9 * (1 + np.abs(s0).max())
                g = gb[target] - gb[j]
                if g > 0:
                    lo = max(lo, -c0 / g)
                elif g < 0:
                    hi = min(hi, -c0 / g)
                elif c0 < 0:
                    lo, hi = np.inf, -np.inf
            if lo > hi:
                continue
            db = 0.0 if lo <= 0.0 <= hi else (lo if lo > 0 else hi)
            parts = (float(m), abs(k), abs(db))
            total = max(min(parts[0], 1.0), parts[1], parts[2]) if norm == "linf" else sum(parts)
            best = min(best, total)
    return best


@pytest.mark.parametrize("norm", ["linf", "l1"])
def test_typed_integer_answers_equal_brute_force_over_categories_and_whole_steps(typed_model, norm):
    """``exact: true`` typed answers with an integer column (the MILP path) against a brute force
    over every category choice and every whole step of ``c`` (``a`` frozen, so ``b`` at scale
    1e5 and ``c`` compete with the categories' unit cost)."""
    from invaudit.counterfactual.tabular import tabular_counterfactuals
    from invaudit.models.tabular import split_tabular

    _, model = typed_model
    rows = _frame(10, 1).iloc[[1, 4, 7]].reset_index(drop=True)
    target = (model.predict(rows[MODEL_COLUMNS]) + 1) % 3
    res = tabular_counterfactuals(split_tabular(model), rows[MODEL_COLUMNS], target=target, norm=norm,
                                  immutable=["a"], integer=["c"])
    assert np.all(res.status == "found")
    for i in range(len(rows)):
        row = rows.iloc[i][MODEL_COLUMNS].to_dict()
        window = int(np.ceil(res.distance[i])) + 1     # a whole step of c costs its size
        ref = _brute_force(model, row, target[i], norm, range(-window, window + 1))
        assert res.distance[i] <= ref * (1 + 1e-6) + 1e-9, (i, res.distance[i], ref)
        if res.exact[i]:
            assert res.distance[i] >= ref * (1 - 1e-6) - 1e-9, (i, res.distance[i], ref)
        point = res.points.iloc[[i]]
        assert model.predict(point[MODEL_COLUMNS])[0] == target[i]
        assert float(point["c"].iloc[0]).is_integer() and point["a"].iloc[0] == row["a"]
    assert res.exact.any()
