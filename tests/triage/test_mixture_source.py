"""The ``mixture`` source (invaudit.triage._mixture) against independent references: explicit
refits without each row, scipy's Gaussian density, scikit-learn's GaussianMixture."""

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from invaudit.triage import _mixture as MX


def _clusters(rng, n_per=40, d=3, centres=((0, 0, 0), (5, 5, 0))):
    parts = []
    for c in centres:
        A = rng.normal(size=(d, d)) * 0.6 + np.eye(d)
        parts.append(rng.normal(size=(n_per, d)) @ A + np.asarray(c, dtype=float)[:d])
    return np.vstack(parts)


def _brute_loo(cm, X):
    """Each row's log-density under the mixture re-estimated without it, the other rows'
    responsibilities fixed: weights, means and covariances recomputed from scratch."""
    n, d = X.shape
    out = np.empty(n)
    for i in range(n):
        keep = np.arange(n) != i
        R = cm.R[keep]
        terms = []
        for k in range(R.shape[1]):
            w = R[:, k]
            N = w.sum()
            if N <= 1e-9 * max(cm.N[k], 1.0):
                continue
            mu = w @ X[keep] / N
            U = X[keep] - mu
            cov = (U * w[:, None]).T @ U / N + MX.REG * np.eye(d)
            terms.append(np.log(N / (n - 1)) + multivariate_normal(mu, cov).logpdf(X[i]))
        out[i] = np.logaddexp.reduce(terms)
    return out


@pytest.mark.parametrize("m", [1, 2, 3])
def test_loo_density_equals_explicit_refit(m):
    rng = np.random.default_rng(m)
    X = _clusters(rng)
    cm = MX.class_mixture(X, m, np.random.default_rng(7))
    got = MX.loo_log_density(cm, X)
    want = _brute_loo(cm, X)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_loo_density_at_scales_and_more_features_than_rows():
    # 12 rows in 20 dimensions at scales 1e-5 .. 1e5 (standardised first, as the source does)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(12, 20)) * np.logspace(-5, 5, 20)
    Xs = MX._standardise(X)
    cm = MX.class_mixture(Xs, 1, np.random.default_rng(0))
    np.testing.assert_allclose(MX.loo_log_density(cm, Xs), _brute_loo(cm, Xs), rtol=1e-8, atol=1e-8)


def test_one_component_is_a_gaussian_with_the_sample_covariance():
    rng = np.random.default_rng(0)
    X = _clusters(rng)
    cm = MX.class_mixture(X, 1, rng)
    mu = X.mean(axis=0)
    cov = np.cov(X.T, bias=True) + MX.REG * np.eye(3)
    T = rng.normal(size=(15, 3)) * 3
    np.testing.assert_allclose(MX.log_density(cm, T), multivariate_normal(mu, cov).logpdf(T), rtol=1e-11)


def test_em_reaches_scikit_learns_likelihood():
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(5)
    X = _clusters(rng, n_per=150, centres=((0, 0, 0), (6, 0, 0), (0, 6, 3)))
    ours = MX.log_density(MX.class_mixture(X, 3, np.random.default_rng(1), tol=1e-9), X).mean()
    ref = GaussianMixture(3, reg_covar=MX.REG, tol=1e-9, max_iter=500, n_init=2,
                          random_state=0).fit(X).score(X)
    assert ours >= ref - 1e-6


def test_loo_proba_one_component_is_exact_leave_one_out_qda():
    rng = np.random.default_rng(11)
    X = np.vstack([rng.normal(size=(25, 2)), rng.normal(size=(20, 2)) * 2 + 1,
                   rng.normal(size=(15, 2)) + [3, -2]])
    y = np.repeat([0, 1, 2], [25, 20, 15])
    P = MX.loo_proba(X, y, 3, 1)
    n = y.size
    for i in range(n):
        keep = np.arange(n) != i
        logp = []
        for c in range(3):
            rows = X[keep & (y == c)]
            cov = np.cov(rows.T, bias=True) + MX.REG * np.eye(2)
            logp.append(np.log(rows.shape[0] / (n - 1)) + multivariate_normal(rows.mean(0), cov).logpdf(X[i]))
        logp = np.asarray(logp)
        want = np.exp(logp - np.logaddexp.reduce(logp))
        np.testing.assert_allclose(P[i], want, rtol=1e-9, atol=1e-12)


def test_large_classes_fit_a_subset_and_score_the_rest_out_of_sample():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 2))
    y = (X[:, 0] > 0).astype(np.intp)
    P = MX.loo_proba(X, y, 2, 1, class_rows=50)
    fit0 = np.sort(MX._rng(0, 0, 0).choice(np.flatnonzero(y == 0), size=50, replace=False))
    out0 = np.setdiff1d(np.flatnonzero(y == 0), fit0)
    cm0 = MX.class_mixture(X[fit0], 1, MX._rng(0, 0, 1))
    cm1 = MX.class_mixture(X[np.sort(MX._rng(0, 1, 0).choice(np.flatnonzero(y == 1), size=50, replace=False))],
                           1, MX._rng(0, 1, 1))
    n0, n1 = (y == 0).sum(), (y == 1).sum()
    # a class-0 row outside the fit: both densities out of sample, its own prior without it
    i = out0[0]
    l0 = np.log((n0 - 1) / (y.size - 1)) + MX.log_density(cm0, X[i:i + 1])[0]
    l1 = np.log(n1 / (y.size - 1)) + MX.log_density(cm1, X[i:i + 1])[0]
    np.testing.assert_allclose(P[i, 0], 1.0 / (1.0 + np.exp(l1 - l0)), rtol=1e-10)


def test_mixture_source_averages_calibrated_component_counts():
    from invaudit.triage import _sources as S

    rng = np.random.default_rng(4)
    X = _clusters(rng, n_per=30)
    y = np.repeat([0, 1], 30)
    P, ms, aside = MX.mixture_proba(X, y, 2, seed=3)
    assert ms == (1, 2, 3) and aside == -1
    Xs = MX._standardise(X)
    want = np.mean([S.tempered(Pm, S.temperature(Pm, y))
                    for Pm in (MX.loo_proba(Xs, y, 2, m, seed=3) for m in ms)], axis=0)
    np.testing.assert_allclose(P, want, rtol=1e-12)
    np.testing.assert_allclose(P.sum(axis=1), 1.0)


def test_second_pass_refits_without_the_suspects():
    """With ``suspects``: every mixture fitted again on the other rows (EM warm-started); the set-
    aside rows are scored out of sample in every class, their labels count in no class prior.
    Checked with one component per class, where the refit is exact (a Gaussian of the kept rows)."""
    from invaudit.triage import _sources as S

    rng = np.random.default_rng(8)
    X = np.vstack([rng.normal(size=(30, 2)), rng.normal(size=(30, 2)) + 3])
    y = np.repeat([0, 1], 30)
    y[[0, 1, 35]] = [1, 1, 0]  # three flipped labels
    aside = np.array([0, 35])
    P, ms, n_aside = MX.mixture_proba(X, y, 2, max_components=1, suspects=lambda P, y: aside)
    assert ms == (1,) and n_aside == 2
    Xs = MX._standardise(X)
    keep = np.ones(60, dtype=bool)
    keep[aside] = False
    want = np.empty((60, 2))
    for i in range(60):
        logp = []
        for c in (0, 1):
            rows = keep & (y == c) & (np.arange(60) != i)
            cov = np.cov(Xs[rows].T, bias=True) + MX.REG * np.eye(2)
            logp.append(np.log(rows.sum()) + multivariate_normal(Xs[rows].mean(0), cov).logpdf(Xs[i]))
        want[i] = np.exp(np.asarray(logp) - np.logaddexp.reduce(logp))
    np.testing.assert_allclose(P, S.tempered(want, S.temperature(want, y)), rtol=1e-9, atol=1e-12)


def test_unions_of_clusters_found_where_a_linear_model_is_blind():
    """Two classes, each the union of two opposite clusters (XOR): the audited logistic
    regression cannot tell the classes apart, the mixture source finds the flipped labels."""
    from sklearn.linear_model import LogisticRegression

    from invaudit.models import adapt
    from invaudit.triage import rank_mislabels, recall_at

    rng = np.random.default_rng(0)
    centres = np.array([[3, 3], [-3, -3], [3, -3], [-3, 3]], dtype=float)
    X = np.vstack([rng.normal(size=(60, 2)) + c for c in centres])
    X = np.hstack([X, rng.normal(size=(240, 3))])  # three noise features
    y = np.repeat([0, 0, 1, 1], 60)
    flipped = rng.choice(240, size=24, replace=False)
    noisy = y.copy()
    noisy[flipped] = 1 - noisy[flipped]
    wrong = np.isin(np.arange(240), flipped)
    form = adapt(LogisticRegression().fit(X, noisy))
    mix = rank_mislabels(form, X, noisy, method="mixture", seed=0)
    loss = rank_mislabels(form, X, noisy, method="loss")
    r_mix = recall_at(mix.order, wrong, (0.1,))[0.1]
    r_loss = recall_at(loss.order, wrong, (0.1,))[0.1]
    assert r_mix >= 0.9 and r_loss <= 0.3
    assert np.mean(mix.suggested[flipped] == y[flipped]) >= 0.9  # suggestions: the true class


def test_component_counts_follow_class_sizes_and_the_work_bound():
    y = np.repeat(np.arange(10), 1000)
    assert MX.component_counts(y, 10, n_features=50) == (1, 2, 3, 4)
    assert MX.component_counts(np.repeat([0, 1], [25, 5]), 2) == (1, 2)  # one per MIN_ROWS rows
    big = np.repeat(np.arange(10), 10_000)  # 100,000 rows x 100 features: 1..2 within the bound
    counts = MX.component_counts(big, 10, n_features=100)
    t = counts[-1]
    assert counts == (1, 2) and 1e5 * 10 * 100 ** 2 * t * (t + 1) / 2 <= MX.MIXTURE_WORK
    assert 1e5 * 10 * 100 ** 2 * (t + 1) * (t + 2) / 2 > MX.MIXTURE_WORK
