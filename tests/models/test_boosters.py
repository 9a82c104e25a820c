"""LightGBM and XGBoost classifiers in the trees form (issue 15).

The form's probabilities and raw scores, computed from the leaf boxes alone, must equal the
libraries' own ``predict_proba`` / raw margins on random rows, rows exactly on (and one ulp past)
every box bound, and rows with NaN where the model was fitted with missing values; every row
without NaN must lie in the boxes ``leaf_index`` reports. Margins and counterfactuals from the
tree-ensemble MILP are checked against a brute force over the grid of split cells, whose split
points are read here from the libraries' dumps independently of the form.
"""

from __future__ import annotations

import itertools
import json
import warnings

import numpy as np
import pytest

lgb = pytest.importorskip("lightgbm")
xgb = pytest.importorskip("xgboost")

from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import MinMaxScaler, RobustScaler, StandardScaler  # noqa: E402

from invaudit.counterfactual import Constraints  # noqa: E402
from invaudit.counterfactual.nonlinear import counterfactuals_nonlinear_with_extras  # noqa: E402
from invaudit.errors import UnsupportedModelError  # noqa: E402
from invaudit.margins import margins  # noqa: E402
from invaudit.models import _boosters, adapt  # noqa: E402
from invaudit.models.trees import _pull_back, float32_split_point  # noqa: E402

ORD = {"l2": 2, "l1": 1, "linf": np.inf}


def _data(n=400, d=5, classes=2, nan=True, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * np.array([1e-3, 1.0, 1e3, 10.0, 1.0])[:d]
    s = X[:, 0] * 1e3 + X[:, 1] - X[:, 2] / 1e3 + 0.5 * rng.normal(size=n)
    y = np.digitize(s, np.quantile(s, np.linspace(0, 1, classes + 1)[1:-1]))
    if nan:
        X[rng.random(n) < 0.1, 1] = np.nan
    return X, y


def _quiet(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


MODELS = {
    "lgb-binary": lambda: lgb.LGBMClassifier(n_estimators=8, num_leaves=7, verbose=-1, n_jobs=1),
    "lgb-multi": lambda: lgb.LGBMClassifier(n_estimators=6, num_leaves=5, verbose=-1, n_jobs=1),
    "lgb-rf": lambda: lgb.LGBMClassifier(boosting_type="rf", n_estimators=5, subsample=0.7,
                                         subsample_freq=1, verbose=-1, n_jobs=1),
    "lgb-dart": lambda: lgb.LGBMClassifier(boosting_type="dart", n_estimators=6, verbose=-1, n_jobs=1),
    "lgb-sigmoid": lambda: lgb.LGBMClassifier(n_estimators=6, sigmoid=2.5, verbose=-1, n_jobs=1),
    "lgb-zero-missing": lambda: lgb.LGBMClassifier(n_estimators=6, zero_as_missing=True, verbose=-1, n_jobs=1),
    "xgb-binary": lambda: xgb.XGBClassifier(n_estimators=8, max_depth=3, n_jobs=1),
    "xgb-multi": lambda: xgb.XGBClassifier(n_estimators=6, max_depth=3, n_jobs=1),
    "xgb-parallel": lambda: xgb.XGBClassifier(n_estimators=3, num_parallel_tree=3, subsample=0.7,
                                              max_depth=3, n_jobs=1),
    "xgb-dart": lambda: xgb.XGBClassifier(n_estimators=6, booster="dart", rate_drop=0.3, max_depth=3, n_jobs=1),
    "xgb-missing-zero": lambda: xgb.XGBClassifier(n_estimators=6, missing=0.0, max_depth=3, n_jobs=1),
    "pipe-lgb": lambda: make_pipeline(StandardScaler(), lgb.LGBMClassifier(n_estimators=6, verbose=-1, n_jobs=1)),
    "pipe-xgb": lambda: make_pipeline(MinMaxScaler(), RobustScaler(), xgb.XGBClassifier(n_estimators=6, n_jobs=1)),
}


def _fit(name):
    classes = 3 if name in ("lgb-multi", "xgb-multi", "xgb-parallel", "pipe-lgb") else 2
    X, y = _data(classes=classes, seed=len(name))
    if "zero" in name:
        X = np.where(np.abs(X) < 0.2 * np.nanstd(X, axis=0), 0.0, X)
    return _quiet(lambda: MODELS[name]().fit(X, y)), X


def _probe_rows(form, X, rng, per_tree=40):
    """Random rows, rows with one feature exactly on a box bound and one ulp above it, NaN rows."""
    base = np.nan_to_num(X[rng.integers(0, len(X), 100)])
    rows = [base, X[rng.integers(0, len(X), 60)]]
    for tree in form.trees:
        for B in (tree.lower, tree.upper):
            at = np.argwhere(np.abs(B) < 1e200)  # (a pipeline's bound past what its scaler maps finitely)
            for leaf, f in at[rng.permutation(len(at))[:per_tree]]:
                r = np.nan_to_num(X[rng.integers(len(X))]).copy()
                r[f] = B[leaf, f]
                r2 = r.copy()
                r2[f] = np.nextafter(B[leaf, f], np.inf)
                rows.append(np.vstack([r, r2]))
    return np.vstack(rows)


def _raw(form, leaves):
    """init + scale * sum of leaf values, per output, from the boxes' values alone."""
    total = sum(t.value[leaves[:, i]] for i, t in enumerate(form.trees))
    return form.init + form.scale * total


def _library_raw(est, R):
    final = est.steps[-1][1] if hasattr(est, "steps") else est
    Z = est[:-1].transform(R) if hasattr(est, "steps") else R
    if type(final).__module__.startswith("lightgbm"):
        raw = final.predict(Z, raw_score=True)
    else:
        raw = final.predict(Z, output_margin=True)
    return np.asarray(raw, dtype=np.float64).reshape(len(R), -1)


@pytest.mark.parametrize("name", list(MODELS))
def test_form_scores_equal_the_library_on_bounds_and_nan(name):
    est, X = _fit(name)
    form = adapt(est)
    assert form.kind == "trees" and form.aggregate == "boosting"
    R = _probe_rows(form, X, np.random.default_rng(1))
    leaves = form.leaf_index(R)
    np.testing.assert_allclose(form.proba_from_leaves(leaves), _quiet(lambda: est.predict_proba(R)),
                               rtol=0, atol=1e-6)
    lib = _library_raw(est, R)
    ours = _raw(form, leaves)
    if name == "lgb-sigmoid":  # p = sigmoid(2.5 * raw): the form's scale holds the 2.5
        lib = 2.5 * lib
    if name == "lgb-rf":  # raw_score is the sum of the 5 trees, predict_proba uses their mean
        lib = lib / 5
    np.testing.assert_allclose(ours, lib, rtol=1e-6, atol=1e-5)
    # every row without NaN lies in the box leaf_index reports, in every tree
    full = ~np.isnan(R).any(axis=1)
    for t, tree in enumerate(form.trees):
        lo, up = tree.lower[leaves[full, t]], tree.upper[leaves[full, t]]
        assert np.all((lo < R[full]) & (R[full] <= up)), (name, t)
    # and the boxes of one tree never overlap: a box's own corner belongs to that box only
    tree = form.trees[0]
    corner = np.where(np.isfinite(tree.upper), tree.upper, np.where(np.isfinite(tree.lower),
                                                                    tree.lower + 1.0, 0.0))
    inside = np.all((tree.lower[None] < corner[:, None]) & (corner[:, None] <= tree.upper[None]), axis=2)
    real = np.all(tree.lower < tree.upper, axis=1)
    assert np.all(inside[real].sum(axis=1) == 1)


def test_early_stopping_reads_only_the_trees_predict_uses():
    X, y = _data(n=500, nan=False, seed=3)
    a = _quiet(lambda: lgb.LGBMClassifier(n_estimators=200, learning_rate=0.3, verbose=-1, n_jobs=1).fit(
        X[:300], y[:300], eval_set=[(X[300:], y[300:])], callbacks=[lgb.early_stopping(2, verbose=False)]))
    b = _quiet(lambda: xgb.XGBClassifier(n_estimators=200, learning_rate=0.3, early_stopping_rounds=2, n_jobs=1).fit(
        X[:300], y[:300], eval_set=[(X[300:], y[300:])], verbose=False))
    assert a.best_iteration_ < 200 and b.best_iteration < 199
    for est in (a, b):
        form = adapt(est)
        R = _probe_rows(form, X, np.random.default_rng(0), per_tree=5)
        np.testing.assert_allclose(form.proba_from_leaves(form.leaf_index(R)),
                                   _quiet(lambda: est.predict_proba(R)), atol=1e-6, rtol=0)
    assert len(adapt(a).trees) == a.best_iteration_


def test_scaler_bounds_are_pulled_back_exactly():
    """The largest double whose scaled value is at most v: scaled(p) <= v < scaled(next(p))."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3)) * [1e-5, 1.0, 1e5] + [0.0, 3.0, -2e5]
    for scaler in (StandardScaler().fit(X), MinMaxScaler().fit(X), RobustScaler().fit(X)):
        f = np.repeat(np.arange(3), 20)
        v = rng.normal(size=60) * 2
        p = _pull_back(scaler.transform, f, v, 3)
        Z = np.zeros((60, 3))
        Z[np.arange(60), f] = p
        Zn = np.zeros((60, 3))
        Zn[np.arange(60), f] = np.nextafter(p, np.inf)
        at, past = scaler.transform(Z)[np.arange(60), f], scaler.transform(Zn)[np.arange(60), f]
        assert np.all(at <= v) and np.all(past > v)


def test_categorical_splits_are_refused_with_a_sentence_but_read_exactly_on_request():
    from invaudit.models.tabular import has_categorical_splits

    rng = np.random.default_rng(0)
    n = 600
    X = np.column_stack([rng.integers(0, 12, n), rng.normal(size=n), rng.integers(0, 4, n)]).astype(float)
    y = (np.isin(X[:, 0], [1, 3, 4, 8, 11]) ^ (X[:, 1] > 0.2)).astype(int)
    est = lgb.LGBMClassifier(n_estimators=8, num_leaves=6, min_child_samples=5, cat_smooth=1,
                             min_data_per_group=5, verbose=-1, n_jobs=1)
    _quiet(lambda: est.fit(X, y, categorical_feature=[0, 2]))
    # queried as a black box (info and the query commands work); the point commands refuse it
    assert adapt(est).kind == "black-box" and has_categorical_splits(est)
    with pytest.raises(UnsupportedModelError, match="splits on categories .categorical_feature."):
        _boosters.from_estimator(est)
    assert _boosters.has_categorical_splits(est)
    assert not _boosters.has_categorical_splits(_fit("lgb-binary")[0])
    form = _boosters.from_estimator(est, categorical=True)
    # category c is c <= x < c + 1 (0 is -1 < x < 1); negative codes and huge values go right
    vals = np.array([-3, -1.0, -0.99, -0.5, -1e-40, 0, 0.5, 0.999, 1, 1.5, np.nextafter(3.0, 0), 3,
                     7.5, 11, 11.99, 12, 13, 40, 1e10, 3e9])
    R = np.column_stack([rng.choice(vals, 2000), rng.normal(size=2000), rng.choice(vals, 2000)])
    leaves = form.leaf_index(R)
    np.testing.assert_allclose(form.proba_from_leaves(leaves), est.predict_proba(R), atol=1e-12, rtol=0)
    for t, tree in enumerate(form.trees):
        assert np.all((tree.lower[leaves[:, t]] < R) & (R <= tree.upper[leaves[:, t]]))
    Xc = X.copy()
    xg = xgb.XGBClassifier(n_estimators=4, enable_categorical=True, max_depth=3,
                           feature_types=["c", "q", "c"], n_jobs=1)
    _quiet(lambda: xg.fit(Xc, y))
    assert adapt(xg).kind == "black-box" and has_categorical_splits(xg)
    with pytest.raises(UnsupportedModelError, match="XGBoost model splits on categories"):
        _boosters.from_estimator(xg)
    assert _boosters.has_categorical_splits(make_pipeline(StandardScaler(), xg))
    # XGBoost: int(float32(x)) in the set goes right; negative and unknown codes go left
    form = _boosters.from_estimator(xg, categorical=True)
    vals = np.append(vals, [-1e-50, 2.0 ** 24, 2.0 ** 24 - 1])
    R = np.column_stack([rng.choice(vals, 2000), rng.normal(size=2000), rng.choice(vals, 2000)])
    leaves = form.leaf_index(R)
    np.testing.assert_allclose(form.proba_from_leaves(leaves), xg.predict_proba(R), atol=1e-6, rtol=0)
    for t, tree in enumerate(form.trees):
        assert np.all((tree.lower[leaves[:, t]] < R) & (R <= tree.upper[leaves[:, t]]))


def test_objectives_outside_the_form_stay_black_boxes():
    X, y = _data(classes=3, nan=False)
    est = _quiet(lambda: lgb.LGBMClassifier(objective="multiclassova", n_estimators=3, verbose=-1, n_jobs=1).fit(X, y))
    assert adapt(est).kind == "black-box"


# --- margins and counterfactuals against a brute force over grid cells ---------------------------

def _cuts(est, d):
    """Per feature, the float64 cut points of every split, read from the library's own dump."""
    cuts = [[] for _ in range(d)]
    if isinstance(est, lgb.LGBMClassifier):
        todo = [t["tree_structure"] for t in est.booster_.dump_model()["tree_info"]]
        while todo:
            nd = todo.pop()
            if "split_feature" in nd:
                cuts[nd["split_feature"]].append(float(nd["threshold"]))  # x <= threshold
                todo += [nd["left_child"], nd["right_child"]]
    else:
        doc = json.loads(bytes(est.get_booster().save_raw(raw_format="json")))
        for tree in doc["learner"]["gradient_booster"]["model"]["trees"]:
            for left, f, c in zip(tree["left_children"], tree["split_indices"], tree["split_conditions"]):
                if left != -1:  # float32(x) < c  iff  x <= the float64 split point of prev32(c)
                    below = np.nextafter(np.float32(c), np.float32(-np.inf))
                    cuts[f].append(float(float32_split_point(np.array([float(below)]))[0]))
    return [np.unique(c) for c in cuts]


def _grid(est, cuts):
    cells = []
    for c in cuts:
        edges = np.concatenate([[-np.inf], c, [np.inf]])
        a, b = edges[:-1], edges[1:]
        inside = np.where(np.isfinite(b), b, np.where(np.isfinite(a), 2 * np.abs(np.where(
            np.isfinite(a), a, 0.0)) + 1.0, 0.0))
        cells.append((a, b, inside))
    combos = np.array(list(itertools.product(*[range(len(a)) for a, _, _ in cells])))
    pts = np.column_stack([cells[f][2][combos[:, f]] for f in range(len(cuts))])
    lo = np.column_stack([cells[f][0][combos[:, f]] for f in range(len(cuts))])
    hi = np.column_stack([cells[f][1][combos[:, f]] for f in range(len(cuts))])
    cls = np.searchsorted(est.classes_, _quiet(lambda: est.predict(pts)))
    return lo, hi, cls


def _reference(grid, x, ok_cls, norm):
    lo, hi, cls = grid
    ok = ok_cls(cls)
    if not ok.any():
        return np.inf, None
    closed = np.clip(x, lo[ok], hi[ok])
    dist = np.linalg.norm(closed - x, ord=ORD[norm], axis=1)
    m = int(np.argmin(dist))
    return float(dist[m]), closed[m]


def _slack(x, pts, norm):
    moved = np.zeros(len(x), dtype=bool)
    z = np.abs(x)
    for pt in pts:
        if pt is not None and np.all(np.isfinite(pt)):
            moved |= pt != x
            z = np.maximum(z, np.abs(pt))
    return float(np.linalg.norm(np.where(moved, 64 * np.spacing(2 * z), 0.0), ord=ORD[norm]))


def _tiny(kind, classes, scales, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(200, 2))
    y = (X[:, 0] + 0.7 * X[:, 1] ** 2 - 0.5 > 0).astype(int)
    if classes == 3:
        y = y + (X[:, 1] > 0.8)
    X = X * np.asarray(scales)
    if kind == "lgb":
        est = lgb.LGBMClassifier(n_estimators=4, num_leaves=4, min_child_samples=5, verbose=-1, n_jobs=1)
    else:
        est = xgb.XGBClassifier(n_estimators=4, max_depth=2, n_jobs=1)
    return _quiet(lambda: est.fit(X, y)), X


def _query(X, cuts, rng):
    rows = [X[i] for i in rng.choice(len(X), 3, replace=False)]
    for mode in ("on", "above", "near"):
        x = X[rng.integers(len(X))].copy()
        for f, c in enumerate(cuts):
            if len(c) and rng.random() < 0.7:
                t = c[rng.integers(len(c))]
                x[f] = {"on": t, "above": np.nextafter(t, np.inf), "near": t - 1e-9 * abs(t)}[mode]
        rows.append(x)
    return np.array(rows)


TINY = [("lgb", 2, (1.0, 1.0)), ("lgb", 3, (1e-4, 1e3)), ("xgb", 2, (1e3, 1e-3)), ("xgb", 3, (1.0, 1.0))]


@pytest.mark.parametrize("kind,classes,scales", TINY)
def test_margins_and_counterfactuals_match_a_brute_force(kind, classes, scales):
    est, X = _tiny(kind, classes, scales, seed=classes)
    cuts = _cuts(est, 2)
    grid = _grid(est, cuts)
    form = adapt(est)
    Xq = _query(X, cuts, np.random.default_rng(7))
    pred = form.predict_index(Xq)
    exact = []
    for norm in ("l2", "l1", "linf"):
        batch = margins(form, Xq, norm=norm, time_limit=20)
        for i, x in enumerate(Xq):
            ref, pt = _reference(grid, x, lambda c: c != pred[i], norm)
            m, tol = batch.margin[i], _slack(x, [x + batch.perturbation[i], pt], norm)
            after = form.predict_index((x + batch.perturbation[i])[None, :])[0]
            assert after != pred[i]
            assert m >= ref - tol and batch.lower_bound[i] <= ref * (1 + 1e-9) + tol, (i, m, ref)
            if batch.exact[i]:
                assert abs(m - ref) <= 1e-6 * ref + tol, (i, norm, m, ref, batch.method[i])
            exact.append(bool(batch.exact[i]))
    target = (pred + 1) % form.n_classes
    cons = Constraints.none(Xq)
    for norm in ("l2", "l1"):
        b, extras = counterfactuals_nonlinear_with_extras(form, Xq, target=target, norm=norm,
                                                          constraints=cons, time_limit=20)
        for i, x in enumerate(Xq):
            ref, pt = _reference(grid, x, lambda c: c == target[i], norm)
            if not np.isfinite(ref):
                assert b.status[i] == "infeasible"
                continue
            assert b.status[i] == "found" and b.predicted_index[i] == target[i]
            tol = _slack(x, [b.x_cf[i], pt], norm)
            assert b.distance[i] >= ref - tol and not extras["lower_bound"][i] > ref * (1 + 1e-9) + tol
            if b.exact[i]:
                assert abs(b.distance[i] - ref) <= 1e-6 * ref + tol, (i, norm, b.distance[i], ref)
            exact.append(bool(b.exact[i]))
    assert np.mean(exact) >= 0.9


def test_every_command_answers_on_a_booster_file(tmp_path, invaudit):
    """info names the form truthfully; margin and counterfactual come from the MILP and are exact
    on this small model; explain and mislabel answer; rows are matched to the model by name."""
    import joblib
    import pandas as pd

    rng = np.random.default_rng(4)
    frame = pd.DataFrame({"age": rng.integers(18, 80, 240).astype(float),
                          "income": rng.normal(5e4, 2e4, 240), "ratio": rng.normal(size=240) * 1e-4})
    y = ((frame.age > 45) ^ (frame.income > 5e4)).astype(int)
    est = _quiet(lambda: xgb.XGBClassifier(n_estimators=5, max_depth=2, n_jobs=1).fit(frame, y))
    joblib.dump(est, tmp_path / "m.joblib")
    shuffled = frame[["ratio", "income", "age"]].assign(y=y)
    shuffled.iloc[:150].to_csv(tmp_path / "train.csv", index=False)
    shuffled.iloc[150:156].to_csv(tmp_path / "test.csv", index=False)
    info = invaudit("info", tmp_path / "m.joblib", "--format", "json")
    assert info.code == 0, info.err
    rep = info.json()
    assert rep["model"]["form"] == "trees" and rep["model"]["feature_names"] == ["age", "income", "ratio"]
    caps = {c["command"]: c for c in rep["results"]}
    assert caps["margin"]["available"] == "yes" and "MILP" in caps["margin"]["method"]
    r = invaudit("margin", tmp_path / "m.joblib", tmp_path / "test.csv", "--label-column", "y", "--format", "json")
    assert r.code == 0, r.err
    rows = r.json()["results"]
    assert all(x["exact"] for x in rows)
    X = shuffled.iloc[150:156][["age", "income", "ratio"]].to_numpy()
    moved = X + np.array([x["perturbation"] for x in rows])
    assert np.all(est.predict(moved) != est.predict(X))
    r = invaudit("counterfactual", tmp_path / "m.joblib", tmp_path / "test.csv", "--label-column", "y",
                 "--format", "json")
    assert r.code == 0, r.err
    assert all(x["status"] == "found" and x["exact"] for x in r.json()["results"])
    for args in (("explain", tmp_path / "m.joblib", tmp_path / "test.csv", "--label-column", "y",
                  "--train", tmp_path / "train.csv", "--rows", "0-1"),
                 ("mislabel", tmp_path / "m.joblib", tmp_path / "train.csv", "--label-column", "y", "--top", "3")):
        r = invaudit(*args, "--format", "json")
        assert r.code == 0, (args[0], r.err)
        assert r.json()["results"]


def test_scikit_learn_forests_after_scalers_are_read_too():
    """The scaler pull-back is not booster-specific: a forest after a scaler is in the trees form
    with boxes in input units, and the estimator agrees on rows exactly on every bound."""
    from sklearn.ensemble import RandomForestClassifier

    X, y = _data(classes=3, nan=False, seed=9)
    est = make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=4, max_depth=4, random_state=0))
    est.fit(X, y)
    form = adapt(est)
    assert form.kind == "trees" and form.preprocessing == ["StandardScaler"]
    R = _probe_rows(form, X, np.random.default_rng(2), per_tree=30)
    leaves = form.leaf_index(R)
    np.testing.assert_allclose(form.proba_from_leaves(leaves), est.predict_proba(R), atol=1e-12, rtol=0)
    for t, tree in enumerate(form.trees):
        assert np.all((tree.lower[leaves[:, t]] < R) & (R <= tree.upper[leaves[:, t]]))
