"""Evidence sources of mislabel triage (issue 18) against independent references."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.optimize import minimize
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.tree import DecisionTreeClassifier

from invaudit.models import adapt
from invaudit.triage import (fold_splits, knn_proba, mixture_weights, model_space, rank_mislabels,
                             recall_at)


def _fit(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y)
    return est, adapt(est)


def _blobs(n=90, d=3, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    X = rng.standard_normal((k, d))[y] * 2 + rng.standard_normal((n, d))
    noisy = np.where(rng.random(n) < 0.15, (y + 1) % k, y)
    return X, noisy


def _clustered(seed=0):
    """Classes that are unions of clusters: a linear model is wrong about this data."""
    X, y = make_classification(n_samples=500, n_features=10, n_informative=6, n_redundant=2, n_classes=3,
                               n_clusters_per_class=3, class_sep=1.5, random_state=seed)
    rng = np.random.default_rng(seed)
    rows = rng.choice(y.size, 50, replace=False)
    noisy = y.copy()
    noisy[rows] = (y[rows] + rng.integers(1, 3, rows.size)) % 3
    return X, noisy, np.isin(np.arange(y.size), rows)


def test_knn_agreement_is_brute_force_out_of_fold_vote():
    X, y = _blobs(n=60, k=3, seed=1)
    splits = fold_splits(y, 3, 4, seed=2)
    k = 7
    P = knn_proba(X, y, 3, splits, k=k, prior=1.0)
    expect = np.empty_like(P)
    for tr, te in splits:
        for i in te:  # brute force, one row at a time
            d = np.linalg.norm(X[tr] - X[i], axis=1)
            nb = tr[np.argsort(d, kind="stable")[:k]]
            counts = np.bincount(y[nb], minlength=3)
            expect[i] = (counts + 1 / 3) / (k + 1)
            # the row itself and the rows of its fold never vote
            assert i not in nb and not np.isin(nb, te).any()
    np.testing.assert_allclose(P, expect)
    np.testing.assert_allclose(P.sum(axis=1), 1.0)
    # and sklearn's own neighbour search agrees on the first fold
    tr, te = splits[0]
    idx = NearestNeighbors(n_neighbors=k).fit(X[tr]).kneighbors(X[te], return_distance=False)
    np.testing.assert_allclose(P[te], (np.stack([np.bincount(y[tr][r], minlength=3) for r in idx]) + 1 / 3) / (k + 1))


def test_knn_among_every_other_row_is_brute_force_leave_one_out():
    """``among="others"``: the k nearest of all the other rows (or of the other reference rows),
    the row itself never voting even when an exact duplicate of it (another label) comes first."""
    X, y = _blobs(n=70, k=3, seed=4)
    X = np.vstack([X, X[:5]]) * np.array([1e-5, 1.0, 1e5])
    y = np.concatenate([y, (y[:5] + 1) % 3])  # duplicates of rows 0..4 with other labels
    Z = (X - X.mean(axis=0)) / X.std(axis=0)
    w = np.linspace(0.5, 2.0, y.size)
    n, k = y.size, 6

    def brute(allowed, weights):
        """The vote of each row's k nearest allowed other rows, and whether the k-th place is
        clear (no exact tie with the next row, which either search may break its own way)."""
        P, clear = np.empty((n, 3)), np.empty(n, dtype=bool)
        for i in range(n):
            cand = np.flatnonzero(allowed & (np.arange(n) != i))
            d2 = ((Z[cand] - Z[i]) ** 2).sum(axis=1)
            o = np.argsort(d2, kind="stable")
            nb = cand[o[:k]]
            clear[i] = d2[o[k - 1]] < d2[o[k]]
            c = np.bincount(y[nb], weights=weights[nb], minlength=3)
            P[i] = (c + 1 / 3) / (c.sum() + 1)
        return P, clear

    ones = np.ones(n)
    P = knn_proba(Z, y, 3, None, k=k, among="others")
    want, clear = brute(np.ones(n, bool), ones)
    assert clear.sum() >= n - 15
    np.testing.assert_allclose(P[clear], want[clear], rtol=0, atol=1e-12)
    assert P[0, y[70]] >= (1 + 1 / 3) / (k + 1)  # the duplicate votes, the row itself does not
    want, clear = brute(np.ones(n, bool), w)
    np.testing.assert_allclose(knn_proba(Z, y, 3, None, k=k, among="others", weights=w)[clear],
                               want[clear], rtol=0, atol=1e-12)
    # a row's own label never reaches its vote
    y2 = y.copy()
    y2[9] = (y[9] + 1) % 3
    np.testing.assert_array_equal(knn_proba(Z, y2, 3, None, k=k, among="others")[9], P[9])
    # past max_rows: the k nearest of the other reference rows
    from invaudit.triage._sources import knn_reference

    Pb = knn_proba(Z, y, 3, None, k=k, among="others", max_rows=40, seed=3)
    want, clear = brute(knn_reference(n, 40, 3), ones)
    assert clear.sum() >= n - 15
    np.testing.assert_allclose(Pb[clear], want[clear], rtol=0, atol=1e-12)
    with pytest.raises(ValueError):
        knn_proba(Z, y, 3, None, among="folds")


def test_knn_space_is_the_models_own_scaling_else_standardised():
    X, y = _blobs(n=60, seed=3)
    X = X * np.array([1.0, 100.0, 0.01]) + 5
    est, form = _fit(Pipeline([("s", MinMaxScaler()), ("c", LogisticRegression())]), X, y)
    Z, what = model_space(form, X)
    np.testing.assert_allclose(Z, est[:-1].transform(X), atol=1e-12)
    assert "own scaling" in what
    tree, tform = _fit(DecisionTreeClassifier(max_depth=2, random_state=0), X, y)
    Z, what = model_space(tform, X)
    np.testing.assert_allclose(Z, StandardScaler().fit_transform(X), atol=1e-12)
    assert what == "standardised features"
    r = rank_mislabels(form, X, y, method="knn", k=5, seed=1)
    np.testing.assert_allclose(r.score, -np.log(knn_proba(est[:-1].transform(X), y, 3, fold_splits(y, 3, 5, 1), k=5)[np.arange(60), y]))


@pytest.mark.parametrize("fitted", [True, False])
def test_reference_probabilities_are_cross_val_predict(fitted):
    X, y = _blobs(n=90, seed=4)
    est, form = _fit(LogisticRegression(), X, y)
    ref = Pipeline([("s", StandardScaler()), ("c", LogisticRegression(C=0.3))])
    if fitted:  # a fitted reference is cloned and refitted out of fold, never used as it is
        ref.fit(X[:10], y[:10])
    r = rank_mislabels(form, X, y, method="reference", reference=ref, n_folds=5, seed=7)
    P = cross_val_predict(clone(ref), X, y, method="predict_proba",
                          cv=StratifiedKFold(5, shuffle=True, random_state=7))
    np.testing.assert_allclose(r.score, -np.log(P[np.arange(90), y]), rtol=1e-8)
    np.testing.assert_array_equal(r.suggested, P.argmax(axis=1))
    np.testing.assert_allclose(r.source_proba["reference"], P, rtol=1e-8, atol=1e-12)


def test_mixture_weights_maximise_the_likelihood_of_the_given_labels():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    Ps = [rng.dirichlet(np.ones(3) * a, size=200) for a in (0.5, 1.0, 3.0)]
    Ps[0][np.arange(200), y] += 1.0  # the first source predicts the labels best
    Ps = [P / P.sum(axis=1, keepdims=True) for P in Ps]
    w = mixture_weights(Ps, y, iters=5000, tol=0)
    L = np.stack([P[np.arange(200), y] for P in Ps], axis=1)

    def nll(v):
        v = np.exp(v) / np.exp(v).sum()
        return -np.log(L @ v).sum()

    ref = minimize(nll, np.zeros(3), method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000})
    v = np.exp(ref.x) / np.exp(ref.x).sum()
    assert nll(np.log(np.maximum(w, 1e-300))) <= ref.fun + 1e-6
    np.testing.assert_allclose(w, v, atol=2e-3)
    assert w[0] == w.max() and np.isclose(w.sum(), 1.0)


def test_combined_beats_loss_ranking_on_clustered_classes():
    found = {"combined": [], "loss": []}
    for seed in (0, 1):
        X, noisy, wrong = _clustered(seed)
        est, form = _fit(Pipeline([("s", StandardScaler()), ("c", LogisticRegression(max_iter=2000))]), X, noisy)
        ref = DecisionTreeClassifier(min_samples_leaf=5, random_state=0)
        for m in found:
            r = rank_mislabels(form, X, noisy, method=m, seed=seed, reference=ref)
            found[m].append(recall_at(r.order, wrong, (0.1,))[0.1])
    comb, loss = np.mean(found["combined"]), np.mean(found["loss"])
    assert comb >= loss + 0.1, found


def test_combined_reports_each_source_and_is_deterministic():
    X, noisy, wrong = _clustered(3)
    est, form = _fit(LogisticRegression(max_iter=2000), X, noisy)
    ref = DecisionTreeClassifier(min_samples_leaf=5, random_state=0)
    a = rank_mislabels(form, X, noisy, method="combined", seed=5, reference=ref)
    b = rank_mislabels(form, X, noisy, method="combined", seed=5, reference=ref)
    assert a.method == "combined" and not a.exact  # its model source is approximate leave-one-out
    np.testing.assert_array_equal(a.order, b.order)
    np.testing.assert_array_equal(a.score, b.score)
    assert a.weights == b.weights and set(a.weights) == {"model", "knn", "reference", "kernel", "mixture"}
    assert np.isclose(sum(a.weights.values()), 1.0)
    rec = a.records(top=3)
    assert set(rec[0]["sources"]) == {"model", "knn", "reference", "kernel", "mixture"}
    i = rec[0]["train_row"]
    for s, v in rec[0]["sources"].items():
        assert v == pytest.approx(a.sources[s][i])
    assert a.summary()["source_weights"] == a.weights
    # the suggestion is the combined evidence's most probable class, so fixing helps
    fixed = a.fixed_labels(40)
    assert np.sum(fixed != noisy) <= 40
    c = rank_mislabels(form, X, noisy, method="combined", seed=6, reference=ref)
    assert not np.array_equal(a.score, c.score)  # the seed drives the folds


def test_frame_refit_reads_rows_as_the_model_was_fitted():
    """A from_dtype HistGradientBoosting over coded rows: the fitted wrapper answers as the model
    does on its DataFrame (blanks included), a clone is unfitted and refits on a DataFrame with the
    same category dtypes, and the knn space one-hots the categories."""
    import pandas as pd
    from sklearn.ensemble import HistGradientBoostingClassifier

    from invaudit.models.tabular import split_tabular
    from invaudit.triage._sources import coded_rows, frame_form

    rng = np.random.default_rng(0)
    n = 120
    df = pd.DataFrame({"c": pd.Categorical(rng.choice(["a", "b", "c"], n)), "x": rng.normal(size=n)})
    df.loc[::17, "c"] = np.nan
    df.loc[::13, "x"] = np.nan
    y = np.where((df["c"] == "a") ^ (df["x"] > 0), "p", "q")
    est = HistGradientBoostingClassifier(categorical_features="from_dtype", max_iter=5, random_state=0).fit(df, y)
    tm = split_tabular(est)
    plain = df.astype({"c": object})   # as a CSV gives it
    X = coded_rows(tm, plain)
    assert np.isnan(X[::17, 0]).all() and np.isnan(X[::13, 1]).all()
    form = frame_form(tm)
    np.testing.assert_array_equal(form.predict_proba(X), est.predict_proba(df))
    refit = clone(form.estimator)
    assert not hasattr(refit, "estimator_")
    refit.fit(X[:80], y[:80])
    want = clone(est).fit(df.iloc[:80], y[:80]).predict_proba(df.iloc[80:])
    np.testing.assert_allclose(refit.predict_proba(X[80:]), want, rtol=0, atol=1e-12)
    assert isinstance(refit.estimator_.feature_names_in_, np.ndarray)
    Z, space = model_space(form, X)
    assert "one-hot" in space and Z.shape == (n, 1 + 3) and np.isfinite(Z).all()
    i, j = np.flatnonzero(X[:, 0] == 0)[0], np.flatnonzero(X[:, 0] == 1)[0]
    assert np.linalg.norm(Z[i, 1:] - Z[j, 1:]) == pytest.approx(1.0)


def test_default_reference_is_out_of_bag_of_one_forest():
    """The default reference: each row's probabilities averaged over exactly the trees whose
    bootstrap sample left it out (brute force over the trees' own samples), from one fit."""
    from invaudit.triage import default_reference, oob_proba

    X, y = _blobs(n=90, k=3, seed=6)
    est, form = _fit(LogisticRegression(), X, y)
    ref = default_reference(90, seed=4).set_params(n_estimators=25, n_jobs=1)
    P = oob_proba(ref, X, y, np.arange(3))
    rf = clone(ref).fit(X, y)
    assert rf.max_samples == 0.5
    votes, seen = np.zeros((90, 3)), np.zeros(90)
    for tree in rf.estimators_:
        # each tree's bootstrap sample: 45 draws with replacement from its own random state
        drawn = np.random.RandomState(tree.random_state).randint(0, 90, 45)
        out = np.setdiff1d(np.arange(90), drawn)
        votes[out] += tree.predict_proba(X[out])
        seen[out] += 1
    assert seen.min() > 0
    np.testing.assert_allclose(P, votes / seen[:, None], atol=1e-12)
    # --method reference without --reference: that forest, seeded by --seed
    r = rank_mislabels(form, X, y, method="reference", seed=4)
    full = oob_proba(default_reference(90, seed=4), X, y, np.arange(3))
    np.testing.assert_allclose(r.score, -np.log(np.clip(full[np.arange(90), y], 1e-300, 1.0)))  # p = 0: 690.8
    assert any("out-of-bag" in n for n in r.notes)


def test_default_forest_grows_each_tree_on_a_bounded_sample():
    """Half the rows up to 10,000 rows, then 5,000 rows a tree: a tree's cost stays flat as the
    data grow, and every row is out of bag for more trees, not fewer."""
    from invaudit.triage import default_reference
    from invaudit.triage._sources import FOREST_ROWS

    for make in (default_reference,):
        assert make(10).max_samples is None
        assert make(20).max_samples == 0.5 and make(10_000).max_samples == 0.5
        assert make(10_001).max_samples == FOREST_ROWS == 5_000
        assert make(100_000).max_samples == 5_000
    # the draws each tree is grown on (its root's weight: bootstrap counts are sample weights)
    rng = np.random.default_rng(0)
    for n, drawn in ((12_000, 5_000), (9_000, 4_500)):
        X, y = rng.random((n, 1)), rng.integers(0, 2, n)
        for make in (default_reference,):
            f = make(n, seed=1).set_params(n_estimators=2, n_jobs=1, oob_score=False, max_depth=1)
            roots = [t.tree_.weighted_n_node_samples[0] for t in f.fit(X, y).estimators_]
            assert roots == [drawn, drawn]


def test_default_combined_finds_clustered_flips_the_model_misses():
    found = {"combined": [], "reference": [], "loss": []}
    for seed in (0, 1):
        X, noisy, wrong = _clustered(seed)
        est, form = _fit(Pipeline([("s", StandardScaler()), ("c", LogisticRegression(max_iter=2000))]), X, noisy)
        for m in found:
            r = rank_mislabels(form, X, noisy, method=m, seed=seed)
            found[m].append(recall_at(r.order, wrong, (0.1,))[0.1])
    assert np.mean(found["reference"]) >= np.mean(found["loss"]) + 0.1, found
    assert np.mean(found["combined"]) >= np.mean(found["loss"]) + 0.1, found


def _hgb_reference(X, y, splits, seed, rounds=30):
    """The bounded boosting source written out with scikit-learn alone: one
    HistGradientBoostingClassifier per fold (learning rate 0.3, at most ``rounds`` rounds, 32 bins,
    early stopping on a tenth of the fold's training part), predicting the held-out rows."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    K = int(y.max()) + 1
    P = np.zeros((y.size, K))
    with threadpool_limits(limits=1, user_api="openmp"):  # OpenMP threads spin on a loaded machine
        for tr, te in splits:
            est = HistGradientBoostingClassifier(learning_rate=0.3, max_iter=rounds, max_bins=32,
                                                 early_stopping=True, validation_fraction=0.1,
                                                 n_iter_no_change=5, random_state=seed).fit(X[tr], y[tr])
            P[np.ix_(te, est.classes_)] = est.predict_proba(X[te])
    return P


def test_boosting_source_is_out_of_fold_refits_of_the_bounded_model():
    from invaudit.triage._sources import boosting_proba

    X, noisy, _ = _clustered(2)
    X = X[:200] * np.array([1e-5, 1e5, 1, 1, 1, 1, 1, 1, 1, 1])  # features at scales 1e-5..1e5
    y = noisy[:200]
    splits = fold_splits(y, 3, 3, 7)
    got = boosting_proba(X, y, 3, splits, seed=7)
    np.testing.assert_allclose(got, _hgb_reference(X, y, splits, 7), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-12)
    # out of fold: a row's own label never reaches the model that judges it
    y2 = y.copy()
    y2[11] = (y[11] + 1) % 3
    again = boosting_proba(X, y2, 3, splits, seed=7)
    np.testing.assert_array_equal(again[11], got[11])
    assert not np.array_equal(again, got)  # the label does reach the other folds' models


def test_boosting_is_a_method_alone_and_not_part_of_combined():
    """``--method boosting``: the ranking by -log of the bounded boosting source's out-of-fold
    probability of the given label (scikit-learn refits on the same folds as the reference), for
    any model form (a tree here: no convex loss); ``combined`` no longer asks it."""
    from invaudit.triage import METHODS, available_methods

    X, noisy, wrong = _clustered(4)
    X, noisy, wrong = X[:240] * np.logspace(-5, 5, 10), noisy[:240], wrong[:240]
    _, form = _fit(DecisionTreeClassifier(min_samples_leaf=5, random_state=0), X, noisy)
    assert "boosting" in METHODS and "boosting" in available_methods(form)
    ticks = []
    r = rank_mislabels(form, X, noisy, method="boosting", seed=2, progress=lambda d, t: ticks.append((d, t)))
    P = _hgb_reference(X, noisy, fold_splits(noisy, 3, 5, 2), 2)
    want = -np.log(np.clip(P[np.arange(240), noisy], 1e-300, 1.0))
    np.testing.assert_allclose(r.score, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(r.order, np.lexsort((np.arange(240), -want)))
    np.testing.assert_array_equal(r.suggested, P.argmax(axis=1))
    assert r.method == "boosting" and not r.sources and ticks[-1] == (5, 5)
    assert any(n.startswith("boosting source: out-of-fold probabilities") for n in r.notes)
    assert recall_at(r.order, wrong, (0.1,))[0.1] >= 0.25  # chance: 0.1
    c = rank_mislabels(form, X, noisy, method="combined", seed=2, jobs=1)
    assert "boosting" not in c.sources and "boosting" not in c.weights


def test_boosting_work_is_bounded_and_small_classes_fit_without_early_stopping(monkeypatch):
    from invaudit.triage import _sources as S

    for n_fit, d, k in ((960, 20, 4), (1150, 64, 10), (8_000, 50, 10), (80_000, 100, 10), (50, 3, 2)):
        rounds, rows = S.boosting_plan(n_fit, d, k)
        trees = 1 if k == 2 else k
        assert S.BOOSTING_MIN_ROUNDS <= rounds <= 30 and 1 <= rows <= n_fit
        assert rounds * rows * d * trees <= S.BOOSTING_WORK or (rounds, rows) == (30, n_fit)
        if rows < n_fit:  # rounds drop to their floor before rows are dropped
            assert rounds == S.BOOSTING_MIN_ROUNDS
            assert (rows + 1) * d * trees * rounds > S.BOOSTING_WORK
    assert S.boosting_plan(8_000, 50, 10) == (6, 8_000)  # 10,000 rows x 50 x 10 classes, 5 folds

    # a tiny budget: each fold fitted on a random subset, within the bound, rounds capped
    monkeypatch.setattr(S, "BOOSTING_WORK", 5 * 120 * 4 * 3)
    fitted = []
    make = S.boosting_model

    def spy(*a, **kw):
        est = make(*a, **kw)
        fit = est.fit

        def recording_fit(X, y):
            out = fit(X, y)
            fitted.append((X.shape, out.n_iter_, est.early_stopping))
            return out
        est.fit = recording_fit
        return est
    monkeypatch.setattr(S, "boosting_model", spy)
    X, y = _blobs(n=300, d=4, k=3, seed=5)
    y = y.copy()
    y[7] = 2
    y[y == 2] = 0
    y[7] = 2  # class 2 has one row: too small for a stratified validation split
    splits = fold_splits(y, 3, 5, 0)
    P = S.boosting_proba(X, y, 3, splits, seed=0)
    assert np.all(np.isfinite(P)) and np.allclose(P.sum(axis=1), 1.0)
    assert all(shape == (120, 4) and n_iter <= 5 for shape, n_iter, _ in fitted)
    assert any(es is False for *_, es in fitted)  # the fold holding row 7 in training fell back
