"""The bounded ``knn`` and ``kernel`` sources past a size threshold (issue 18, 100,000 rows).

Up to the threshold the sources are what they were (exact brute-force neighbours, every row in
every fold's fit); past it ``knn`` searches a fixed random subset of reference rows and every
``kernel`` fold is fitted on a reweighted random subset. The bounded paths are exercised here with
small thresholds on small data (the code is the same at any size) and checked against
independent references: neighbours by numpy brute force, fits by cold scikit-learn refits.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from invaudit.models import adapt
from invaudit.triage import _sources as S
from invaudit.triage import rank_mislabels


def _rows(n=400, d=4, K=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    X = rng.standard_normal((K, d))[y] * 1.5 + rng.standard_normal((n, d))
    noisy = np.where(rng.random(n) < 0.1, (y + 1) % K, y)
    return X, noisy


def _brute_knn(Z, y, K, splits, allowed, k, prior=1.0):
    """Independent reference: for every held-out row, the k nearest allowed rows outside its
    fold by explicit squared distances and a full sort, their labels counted."""
    n = y.size
    P = np.empty((n, K))
    for tr, te in splits:
        cand = np.asarray(tr)[allowed[np.asarray(tr)]]
        for i in te:
            d2 = ((Z[cand] - Z[i]) ** 2).sum(axis=1)
            nb = cand[np.argsort(d2, kind="stable")[:k]]
            c = np.bincount(y[nb], minlength=K).astype(float)
            P[i] = (c + prior / K) / (k + prior)
    return P


def test_knn_reference_is_none_up_to_the_threshold_and_a_fixed_random_subset_past_it():
    assert S.knn_reference(500, 500, seed=3) is None
    assert S.knn_reference(500, None, seed=3) is None
    m = S.knn_reference(501, 200, seed=3)
    assert m.dtype == bool and m.shape == (501,) and int(m.sum()) == 200
    np.testing.assert_array_equal(m, S.knn_reference(501, 200, seed=3))  # deterministic
    assert not np.array_equal(m, S.knn_reference(501, 200, seed=4))
    # its own random stream: rows a caller drew from default_rng(seed) (the benchmark's flips)
    # are not all reference rows (they were, before the stream was separated)
    n = 30_000
    flips = np.random.default_rng(0).choice(n, n // 10, replace=False)
    share = S.knn_reference(n, 10_000, seed=0)[flips].mean()
    assert abs(share - 1 / 3) < 0.03, share


def test_bounded_knn_is_the_exact_vote_among_the_reference_rows_outside_each_fold():
    X, y = _rows(n=300)
    Z = StandardScaler().fit_transform(X)
    splits = S.fold_splits(y, 3, 5, 1)
    P = S.knn_proba(Z, y, 3, splits, k=7, max_rows=120, seed=5)
    allowed = S.knn_reference(300, 120, seed=5)
    np.testing.assert_allclose(P, _brute_knn(Z, y, 3, splits, allowed, 7), rtol=0, atol=1e-12)
    # the judged rows are all rows (reference rows too, never by themselves or their fold)
    assert np.isfinite(P).all() and P.shape == (300, 3)


def test_knn_is_unchanged_up_to_the_threshold():
    X, y = _rows(n=240, seed=2)
    Z = StandardScaler().fit_transform(X)
    splits = S.fold_splits(y, 3, 5, 0)
    exact = S.knn_proba(Z, y, 3, splits, k=9, max_rows=None)
    np.testing.assert_allclose(exact, _brute_knn(Z, y, 3, splits, np.ones(240, bool), 9), atol=1e-12)
    np.testing.assert_array_equal(S.knn_proba(Z, y, 3, splits, k=9), exact)  # default: 240 <= KNN_ROWS
    np.testing.assert_array_equal(S.knn_proba(Z, y, 3, splits, k=9, max_rows=240), exact)
    # one row past the threshold the bound applies (and changes some votes)
    assert not np.array_equal(S.knn_proba(Z, y, 3, splits, k=9, max_rows=239), exact)
    assert S.KNN_ROWS >= 10_000  # every size the benchmark measures recall at is exact


def test_kernel_fit_rows_keep_rare_classes_and_reweight_to_the_full_counts():
    rng = np.random.default_rng(0)
    y = np.concatenate([np.zeros(5000, int), np.ones(3000, int), np.full(40, 2)])
    rng.shuffle(y)
    assert S.kernel_fit_rows(y, 3, max_rows=y.size, seed=0) is None
    keep, w = S.kernel_fit_rows(y, 3, max_rows=2000, seed=0)
    assert keep.all() == False and keep[y == 2].all()  # noqa: E712  the rare class: every row
    np.testing.assert_array_equal(w[y == 2], 1.0)
    pi = 1.0 / w
    # inclusion probability max(m / n, 500 / count): 2000/8040 for class 0, 500/3000 -> 2000/8040
    np.testing.assert_allclose(pi[y == 0], 2000 / 8040)
    np.testing.assert_allclose(pi[y == 1], 2000 / 8040)
    # weighted counts estimate the full counts (Horvitz-Thompson), within 4 standard errors
    for c, cnt in ((0, 5000), (1, 3000)):
        est = w[keep & (y == c)].sum()
        p = 2000 / 8040
        assert abs(est - cnt) < 4 * np.sqrt(cnt * (1 - p) / p), (c, est)
    k2, w2 = S.kernel_fit_rows(y, 3, max_rows=2000, seed=0)
    np.testing.assert_array_equal(k2, keep)


def test_bounded_kernel_folds_are_weighted_refits_on_the_kept_rows(monkeypatch):
    monkeypatch.setattr(S, "KERNEL_CLASS_ROWS", 30)  # (500 would keep every row of 300)
    X, y = _rows(n=300, d=3, K=3, seed=4)
    y[:12] = 3  # a rare fourth class: kept whole, so it never gets probability 0
    y[12:24] = 3
    K = 4
    splits = S.fold_splits(y, K, 5, 3)
    P = S.kernel_proba(X, y, K, splits, seed=3, max_rows=100)
    keep, w = S.kernel_fit_rows(y, K, max_rows=100, seed=3)
    assert 100 < keep.sum() < 160 and keep[y == 3].all()  # ~100 + the rare class's 24 rows
    F = S.kernel_features(X, seed=3)
    ref = np.full_like(P, np.nan)
    for tr, te in splits:
        tr = np.asarray(tr)[keep[np.asarray(tr)]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est = LogisticRegression(max_iter=20000, tol=1e-8).fit(F[tr], y[tr], sample_weight=w[tr])
        ref[np.ix_(te, est.classes_)] = est.predict_proba(F[te])
    assert not np.isnan(ref).any()
    # warm starts stop at scikit-learn's tolerance: close to each fold's optimum
    assert np.abs(P - ref).max() < 0.01, np.abs(P - ref).max()
    assert (P[y == 3, 3] > 0).all()
    # unchanged up to the threshold (300 <= KERNEL_ROWS): every row in every fit, unweighted
    assert S.kernel_fit_rows(y, K, seed=3) is None and S.kernel_fit_rows(y, K, 300, seed=3) is None
    assert S.KERNEL_ROWS >= 10_000


def test_combined_past_the_thresholds_uses_the_bounded_sources_and_says_so(monkeypatch):
    X, y = _rows(n=240, d=4, K=3, seed=6)
    X = X * np.array([1e-5, 1.0, 1e3, 1e5])
    est = Pipeline([("s", StandardScaler()), ("m", LogisticRegression(max_iter=2000))]).fit(X, y)
    form = adapt(est)
    small = rank_mislabels(form, X, y, method="knn", seed=1, jobs=1)
    assert not any("reference rows" in s for s in small.notes)
    monkeypatch.setattr(S, "KNN_ROWS", 100)
    monkeypatch.setattr(S, "KERNEL_ROWS", 100)
    monkeypatch.setattr(S, "KERNEL_CLASS_ROWS", 20)
    big = rank_mislabels(form, X, y, method="combined", seed=1, jobs=1)
    assert any("among 100 random reference rows" in s for s in big.notes)
    assert any("about 100 of the rows, reweighted" in s for s in big.notes)
    # the knn source is the bounded vote on the model's own scaling; the kernel one the bounded fits
    Z = est[:-1].transform(X)
    splits = S.fold_splits(y, 3, 5, 1)
    np.testing.assert_allclose(big.source_proba["knn"],
                               S.knn_proba(Z, y, 3, splits, max_rows=100, seed=1), atol=1e-12)
    np.testing.assert_allclose(big.source_proba["kernel"],
                               S.kernel_proba(Z, y, 3, splits, seed=1, max_rows=100), atol=1e-12)
    assert not np.array_equal(big.source_proba["knn"], small.source_proba["knn"])
    assert sorted(big.order.tolist()) == list(range(240))


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
