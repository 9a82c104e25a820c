"""Tree ensembles answer in a time limit and are never absurd (issue 15).

Every counterfactual and margin of every tree family is compared with three references computed
here from the estimator's own ``predict`` alone:

(a) the nearest training row the model assigns the target class (margins: any other class);
(b) the best single-feature change: the row with one feature moved just across one split point
    of the model (each side of every threshold, a relative 1e-7 beyond it), for every split
    point;
(c) a greedy walk that crosses one split point at a time (the crossing that raises the target's
    probability most per unit of distance) until the prediction flips.

The answer must be at most as far as the cheapest of the three; it must be verified by
``predict`` and, when the time limit is tiny, still be there (anytime).
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from sklearn.ensemble import (ExtraTreesClassifier, GradientBoostingClassifier,
                              HistGradientBoostingClassifier, RandomForestClassifier)

from invaudit.counterfactual.nonlinear import counterfactuals_nonlinear
from invaudit.margins import margins
from invaudit.models import adapt

warnings.filterwarnings("ignore", message="X does not have valid feature names")


@pytest.fixture(scope="module", autouse=True)
def _one_openmp_thread():
    """HistGradientBoosting fits and predicts with OpenMP; on a busy shared machine its spinning
    threads make small calls 10-20x slower (measured), so these tests use one thread."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        yield

FAMILIES = {
    "forest": lambda: RandomForestClassifier(n_estimators=15, max_depth=5, random_state=0),
    "extra": lambda: ExtraTreesClassifier(n_estimators=15, max_depth=5, random_state=0),
    "gboost": lambda: GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=0),
    "hist": lambda: HistGradientBoostingClassifier(max_iter=20, max_depth=4, random_state=0),
    "forest3": lambda: RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0),
    "lightgbm": lambda: pytest.importorskip("lightgbm").LGBMClassifier(
        n_estimators=20, num_leaves=8, verbose=-1, n_jobs=1, random_state=0),
    "xgboost": lambda: pytest.importorskip("xgboost").XGBClassifier(
        n_estimators=20, max_depth=3, n_jobs=1, random_state=0),
}


def _data(k, n=300, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * np.array([1.0, 10.0, 0.1, 1.0, 3.0, 1.0])[:d]
    s = X[:, 0] + 0.1 * X[:, 1] ** 2 / 10 - 5 * X[:, 2] + 0.3 * X[:, 3] * X[:, 4]
    y = np.digitize(s, np.quantile(s, np.linspace(0, 1, k + 1)[1:-1]))
    return X, y


def _thresholds(est):
    """(feature, threshold) of every split of the estimator (LightGBM / XGBoost: the finite
    bounds of the leaf boxes of their trees form, i.e. their split points)."""
    name = type(est).__name__
    if name in ("LGBMClassifier", "XGBClassifier"):
        out = set()
        for tb in adapt(est).trees:
            for bounds in (tb.lower, tb.upper):
                r, f = np.nonzero(np.isfinite(bounds))
                out.update(zip(f.tolist(), bounds[r, f].tolist()))
        return sorted(out)
    if name == "HistGradientBoostingClassifier":
        nodes = [p.nodes for it in est._predictors for p in it]
        return [(int(f), float(t)) for nd in nodes for f, t, leaf in
                zip(nd["feature_idx"], nd["num_threshold"], nd["is_leaf"]) if not leaf]
    trees = [e.tree_ for e in np.asarray(est.estimators_).ravel()]
    return [(int(f), float(t)) for tr in trees for f, t, c in
            zip(tr.feature, tr.threshold, tr.children_left) if c != -1]


def _qualifies(est, Y, target, orig):
    p = est.predict(Y)
    return (p != orig) if target is None else (p == target)


def _references(est, X_train, x, target, orig, ord=2):
    """(a), (b), (c) of the module docstring in the norm ``ord``; inf where a reference finds
    nothing."""
    # (a)
    ok = _qualifies(est, X_train, target, orig)
    a = float(np.min(np.linalg.norm(X_train[ok] - x, ord=ord, axis=1))) if ok.any() else np.inf
    # (b)
    splits = _thresholds(est)
    cand = []
    for f, t in splits:
        for v in (t + 1e-7 * max(1.0, abs(t)), t - 1e-7 * max(1.0, abs(t))):
            y = x.copy()
            y[f] = v
            cand.append(y)
    Y = np.array(cand)
    ok = _qualifies(est, Y, target, orig)
    b = float(np.min(np.abs(Y[ok] - x).sum(axis=1))) if ok.any() else np.inf
    # (c)
    by_f = {}
    for f, t in splits:
        by_f.setdefault(f, set()).add(t)
    by_f = {f: np.array(sorted(ts)) for f, ts in by_f.items()}
    cls = target if target is not None else None

    def score(P):
        pr = est.predict_proba(P)
        if cls is not None:
            return pr[:, cls] - np.max(np.delete(pr, cls, axis=1), axis=1)
        return np.max(np.delete(pr, orig, axis=1), axis=1) - pr[:, orig]

    y = x.copy()
    c = np.inf
    cur = score(y[None])[0]
    for _ in range(200):
        moves = []
        for f, ts in by_f.items():
            up = ts[ts >= y[f]]
            dn = ts[ts < y[f]]
            if up.size:
                moves.append((f, up[0] + 1e-7 * max(1.0, abs(up[0]))))
            if dn.size:
                moves.append((f, dn[-1] - 1e-7 * max(1.0, abs(dn[-1]))))
        Y = np.repeat(y[None], len(moves), axis=0)
        for j, (f, v) in enumerate(moves):
            Y[j, f] = v
        ok = _qualifies(est, Y, target, orig)
        dist = np.linalg.norm(Y - x, ord=ord, axis=1)
        if ok.any():
            c = float(dist[ok].min())
            break
        gain = score(Y) - cur
        added = dist - np.linalg.norm(y - x, ord=ord)
        if not np.any(gain > 0):
            break
        j = int(np.argmax(np.where(gain > 0, gain / np.maximum(added, 1e-12), -np.inf)))
        y, cur = Y[j], cur + gain[j]
    return a, b, c


@pytest.fixture(scope="module", params=list(FAMILIES))
def fitted(request):
    k = 3 if request.param == "forest3" else 2
    X, y = _data(k)
    est = FAMILIES[request.param]().fit(X[:250], y[:250])
    if adapt(est).kind != "trees":
        pytest.skip(f"{request.param} is not read into the trees form by this version")
    return request.param, est, X[:250], X[250:256]


@pytest.mark.parametrize("milp", [True, False])
def test_counterfactuals_are_never_absurd(fitted, milp):
    name, est, Xtr, Xq = fitted
    form = adapt(est)
    orig = est.predict(Xq)
    t = (form.predict_index(Xq) + 1) % form.n_classes
    b = counterfactuals_nonlinear(form, Xq, target=t, X_train=Xtr, time_limit=5.0,
                                  max_milp_binaries=20000 if milp else 0)
    for i in range(len(Xq)):
        assert b.status[i] == "found"
        assert est.predict(b.x_cf[i][None])[0] == est.classes_[t[i]]
        a, s, c = _references(est, Xtr, Xq[i], est.classes_[t[i]], orig[i])
        assert b.distance[i] <= min(a, s, c) * (1 + 1e-9), (name, i, b.distance[i], a, s, c)


@pytest.mark.parametrize("milp,norm", [(True, "l2"), (False, "l2"), (False, "l1"), (False, "linf")])
def test_margins_are_never_absurd(fitted, milp, norm):
    name, est, Xtr, Xq = fitted
    form = adapt(est)
    orig = est.predict(Xq)
    m = margins(form, Xq, X_train=Xtr, time_limit=5.0, max_milp_binaries=20000 if milp else 0, norm=norm)
    for i in range(len(Xq)):
        assert np.isfinite(m.margin[i])
        assert est.predict((Xq[i] + m.perturbation[i])[None])[0] != orig[i]
        assert m.lower_bound[i] <= m.margin[i] * (1 + 1e-12)
        a, s, c = _references(est, Xtr, Xq[i], None, orig[i], ord={"l2": 2, "l1": 1, "linf": np.inf}[norm])
        assert m.margin[i] <= min(a, s, c) * (1 + 1e-9), (name, i, m.margin[i], a, s, c)


def test_a_tiny_time_limit_still_returns_verified_points():
    """Anytime: a 100-tree forest with a 1 ms limit per row still answers every row (verified,
    not exact), and the run takes well under a second a row."""
    X, y = _data(2, n=400, d=6, seed=3)
    est = RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0).fit(X[:350], y[:350])
    form = adapt(est)
    Xq = X[350:354]
    t0 = time.perf_counter()
    m = margins(form, Xq, X_train=X[:350], time_limit=0.001)
    c = counterfactuals_nonlinear(form, Xq, target="other", time_limit=0.001, run_time_limit=0.0)
    elapsed = time.perf_counter() - t0
    assert np.all(np.isfinite(m.margin)) and not m.exact.any()
    assert np.all(est.predict(Xq + m.perturbation) != est.predict(Xq))
    assert np.all(m.lower_bound <= m.margin)
    assert np.all(c.status == "found") and not c.exact.any()
    assert np.all(est.predict(c.x_cf) != est.predict(Xq))
    assert all(str(s).startswith(("tree-ensemble-anytime", "tree-ensemble-milp (time limit")) for s in c.method)
    assert elapsed < 8 * 2.0 * len(Xq)  # generous: the machine may be shared


def test_exact_on_small_forests_at_the_default_time_limit():
    """10 trees of depth 4: the MILP proves most rows optimal within the default limit."""
    X, y = _data(2, n=300, d=6, seed=1)
    est = RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0).fit(X[:250], y[:250])
    form = adapt(est)
    c = counterfactuals_nonlinear(form, X[250:258], target="other", X_train=X[:250])
    assert np.mean(c.exact) >= 0.5
    m = margins(form, X[250:258], X_train=X[:250])
    assert np.mean(m.exact) >= 0.5


def test_cli_time_limits_and_progress_lines_on_a_log(invaudit, monkeypatch, tmp_path):
    """End to end: --time-limit and --run-time-limit reach the solvers (params say so), every
    row still gets a verified answer, and stderr (not a terminal) carries plain progress lines
    whose done count moves row by row, while stdout carries only the report."""
    import re

    import joblib

    X, y = _data(2, n=400, d=6, seed=5)
    est = RandomForestClassifier(n_estimators=30, max_depth=8, random_state=0).fit(X[:350], y[:350])
    joblib.dump(est, tmp_path / "forest.joblib")
    np.save(tmp_path / "rows.npy", X[350:354])
    np.savez(tmp_path / "train.npz", X=X[:350], y=y[:350])
    monkeypatch.delenv("INVAUDIT_NO_PROGRESS", raising=False)
    monkeypatch.setenv("INVAUDIT_PROGRESS_INTERVAL", "0.05")
    line = re.compile(r"^invaudit (margin|counterfactual): (margins|counterfactuals) (\d+)/4, \d+ s elapsed$")
    for cmd in ("margin", "counterfactual"):
        r = invaudit(cmd, tmp_path / "forest.joblib", tmp_path / "rows.npy", "--train", tmp_path / "train.npz",
                     "--time-limit", "0.2", "--run-time-limit", "0.5", "--format", "json")
        assert r.code == 0, r.err
        rep = r.json()
        assert rep["params"]["time_limit"] == 0.2 and rep["params"]["run_time_limit"] == 0.5
        pts = []
        for res in rep["results"]:
            assert res["exact"] is False or res.get("method", "").startswith("tree-ensemble-milp")
            if cmd == "margin":
                pts.append(X[350 + res["row"]] + np.asarray(res["perturbation"], dtype=float))
            else:
                assert res["status"] == "found"
                pts.append(np.asarray(res["counterfactual"], dtype=float))
        assert np.all(est.predict(np.array(pts)) != est.predict(X[350:354]))
        done = [int(m.group(3)) for m in map(line.match, r.err.splitlines()) if m]
        assert done and done == sorted(done) and len(set(done)) >= 2, r.err
        assert "s elapsed" not in r.out
    bad = invaudit("margin", tmp_path / "forest.joblib", tmp_path / "rows.npy", "--time-limit", "-1")
    assert bad.code == 2
