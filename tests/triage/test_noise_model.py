"""The class-conditional noise model of ``mislabel --method combined`` (issue 18): per-source
temperatures, the confident joint, the noise transition and the flip posterior, each against an
independent reference (a grid, loops over rows, Bayes' rule written out), and the ranking on
one-way noise (a class flipped into its neighbour)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from invaudit.models import adapt
from invaudit.triage import found_curve, rank_mislabels, recall_at
from invaudit.triage import _sources as S


def _softmax(Z):
    Z = Z - Z.max(axis=1, keepdims=True)
    E = np.exp(Z)
    return E / E.sum(axis=1, keepdims=True)


def test_temperature_maximises_the_likelihood_against_a_grid():
    rng = np.random.default_rng(0)
    n, K = 2000, 4
    logits = rng.normal(scale=3.0, size=(n, K))
    y = np.array([rng.choice(K, p=p) for p in _softmax(logits / 2.5)])  # labels drawn at temperature 2.5
    P = _softmax(logits)  # over-confident by a factor 2.5

    def nll(tau):
        Q = S.tempered(P, tau)
        return -np.log(Q[np.arange(n), y]).sum()

    grid = np.linspace(-3, 3, 601)  # log tau, steps of 0.01
    vals = np.array([nll(np.exp(t)) for t in grid])
    tau = S.temperature(P, y)
    assert nll(tau) <= vals.min() + 1e-6
    assert abs(np.log(tau) - grid[vals.argmin()]) <= 0.01
    assert 2.2 < tau < 2.8  # and it recovers the temperature the labels were drawn with
    np.testing.assert_allclose(S.tempered(P, 1.0), P, rtol=1e-12)


def _joint_by_loops(P, y, K):
    """Confident learning's calibrated joint, one row at a time."""
    n = len(y)
    t = np.array([np.mean([P[i, j] for i in range(n) if y[i] == j]) if (y == j).any() else 1.0
                  for j in range(K)])
    C = np.zeros((K, K))
    for i in range(n):
        cands = [j for j in range(K) if P[i, j] >= t[j]]
        if cands:
            C[y[i], max(cands, key=lambda j: (P[i, j], -j))] += 1
    for i in range(K):
        if C[i].sum() > 0:
            C[i] = C[i] / C[i].sum() * np.sum(y == i)
        elif np.sum(y == i):
            C[i, i] = np.sum(y == i)
    return C / C.sum()


def test_confident_joint_equals_a_loop_over_rows():
    rng = np.random.default_rng(1)
    for K in (2, 3, 5):
        P = rng.dirichlet(np.ones(K) * 0.7, size=200)
        y = rng.integers(0, K, 200)
        np.testing.assert_allclose(S.confident_joint(P, y, K), _joint_by_loops(P, y, K), atol=1e-15)


def test_flip_posterior_is_bayes_rule():
    rng = np.random.default_rng(2)
    n, K = 50, 4
    P = rng.dirichlet(np.ones(K), size=n)
    T = rng.dirichlet(np.ones(K), size=K) * 0.3 + np.eye(K) * 0.7
    y = rng.integers(0, K, n)
    flip, post = S.flip_posterior(P, y, T)
    for i in range(n):
        joint = np.array([P[i, j] * T[j, y[i]] for j in range(K)])
        np.testing.assert_allclose(post[i], joint / joint.sum(), rtol=1e-12)
        assert flip[i] == pytest.approx(1 - joint[y[i]] / joint.sum(), abs=1e-12)
    # uniform noise: the posterior ranks rows exactly as p(given) does
    eps = 0.1
    U = np.full((K, K), eps / (K - 1))
    np.fill_diagonal(U, 1 - eps)
    flip_u, _ = S.flip_posterior(P, y, U)
    p_given = P[np.arange(n), y]
    assert np.array_equal(np.argsort(flip_u, kind="stable"), np.argsort(-p_given, kind="stable"))


def _oracle_sources(n, K, rate, one_way, rng, confuse=None):
    """Sources that know every row's true class (p = 0.8 on it, the rest spread), labels flipped
    at ``rate``: to the next class (``one_way``) or to any other. ``confuse=(a, b)``: the first
    source also calls a third of class ``a`` rows class ``b`` (its own error, not noise)."""
    true = rng.integers(0, K, n)
    flip = rng.random(n) < rate
    step = np.ones(n, dtype=int) if one_way else rng.integers(1, K, n)
    y = np.where(flip, (true + step) % K, true)
    srcs = []
    for s in range(3):
        P = rng.dirichlet(np.ones(K), size=n) * 0.2
        P[np.arange(n), true] += 0.8
        if confuse is not None and s == 0:
            a, b = confuse
            rows = np.flatnonzero((true == a) & (rng.random(n) < 1 / 3))
            P[rows, b], P[rows, a] = P[rows, a], P[rows, b]
        srcs.append(P / P.sum(axis=1, keepdims=True))
    return true, y, srcs


def test_noise_transition_recovers_one_way_noise_and_not_one_sources_confusion():
    rng = np.random.default_rng(3)
    K = 4
    true, y, srcs = _oracle_sources(4000, K, 0.2, True, rng)
    P = sum(srcs) / 3
    T = S.noise_transition(P, srcs, y, K)
    np.testing.assert_allclose(T.sum(axis=1), 1.0, rtol=1e-12)
    assert (T >= 0).all()
    for c in range(K):  # c is written as c + 1 a fifth of the time, never as anything else
        assert T[c, (c + 1) % K] == pytest.approx(0.2, abs=0.04)
        assert T[c, (c + 2) % K] < 0.02 and T[c, (c + 3) % K] < 0.02
    # uniform noise: no direction stands out
    _, y_u, srcs_u = _oracle_sources(4000, K, 0.2, False, rng)
    T_u = S.noise_transition(sum(srcs_u) / 3, srcs_u, y_u, K)
    off = T_u[~np.eye(K, dtype=bool)]
    assert off.max() - off.min() < 0.03
    # one source that confuses class 0 with 2 (one way) does not make 0 -> 2 a noise direction
    _, y_c, srcs_c = _oracle_sources(4000, K, 0.1, False, rng, confuse=(0, 2))
    T_c = S.noise_transition(sum(srcs_c) / 3, srcs_c, y_c, K)
    assert T_c[0, 2] < 0.1 and T_c[2, 0] < 0.1


def _asymmetric(seed, n=600):
    X, y = make_classification(n_samples=n, n_features=8, n_informative=5, n_redundant=1, n_classes=4,
                               n_clusters_per_class=1, class_sep=1.5, random_state=100 + seed)
    X = X * np.logspace(-3, 3, 8)  # features at very different scales
    rng = np.random.default_rng(seed)
    rows = rng.choice(n, n // 10, replace=False)
    noisy = y.copy()
    noisy[rows] = (y[rows] + 1) % 4  # every flipped label goes to the next class
    return X, noisy, noisy != y


def test_combined_uses_the_direction_of_one_way_noise():
    gain = []
    for seed in (0, 1):
        X, noisy, wrong = _asymmetric(seed)
        est = Pipeline([("s", StandardScaler()), ("c", LogisticRegression(max_iter=2000))])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            form = adapt(est.fit(X, noisy))
        r = rank_mislabels(form, X, noisy, method="combined", seed=seed)
        s = r.summary()
        T = np.array(s["noise_transition"])
        assert T.shape == (4, 4) and np.allclose(T.sum(axis=1), 1.0)
        assert set(s["source_temperatures"]) == {"model", "knn", "reference", "kernel", "mixture"}
        # the estimated noise runs c -> c + 1
        assert all(T[c, (c + 1) % 4] > 2 * T[c, (c + 2) % 4] for c in range(4))
        # the same calibrated mixture without the noise model: -log p(given)
        cal = [S.tempered(r.source_proba[k], r.temperatures[k]) for k in r.weights]
        P = sum(r.weights[k] * c for k, c in zip(r.weights, cal))
        plain = np.lexsort((np.arange(noisy.size), np.log(P[np.arange(noisy.size), noisy])))
        # gains of the noise model: recall in the top 10%, and the found-vs-checked curve's
        # mean over the first 20% of rows checked (steadier on 60 flipped rows)
        n = noisy.size
        gain.append((recall_at(r.order, wrong, (0.1,))[0.1] - recall_at(plain, wrong, (0.1,))[0.1],
                     found_curve(r.order, wrong)[: n // 5].mean() - found_curve(plain, wrong)[: n // 5].mean()))
        assert recall_at(r.order, wrong, (0.1,))[0.1] >= 0.7
        # the suggestion for a flipped row is mostly the class it was flipped from
        top = r.order[:40]
        top = top[wrong[top]]
        assert np.mean(r.suggested[top] == (noisy[top] - 1) % 4) >= 0.7
    gain = np.array(gain)
    # the noise model helps (less than before the mixture source: that already finds most of them)
    assert gain[:, 0].mean() >= 0 and gain[:, 1].mean() > 0, gain


def test_kernel_source_is_out_of_fold_refits_and_sees_curved_boundaries():
    from sklearn.datasets import make_gaussian_quantiles
    from sklearn.kernel_approximation import Nystroem
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    X, y = make_gaussian_quantiles(n_samples=360, n_features=4, n_classes=3, random_state=7)
    rng = np.random.default_rng(7)
    wrong = rng.random(360) < 0.1
    noisy = np.where(wrong, (y + rng.integers(1, 3, 360)) % 3, y)
    X = X * np.array([1e-5, 1.0, 1e5, 10.0])  # scales 1e-5..1e5: the source standardises
    splits = S.fold_splits(noisy, 3, 5, 2)
    seen = []
    P = S.kernel_proba(X, noisy, 3, splits, seed=2, jobs=1, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(i, 5) for i in range(1, 6)]
    # the map reads no labels: fitted once on all rows, the same whatever the labels say
    F = S.kernel_features(X, seed=2)
    assert F.shape == (360, 180)  # at most half the rows as landmarks
    # independent reference: scikit-learn's scaler + Nystroem on all rows, then cold fits on
    # scikit-learn's own shuffled stratified folds, each converged far below the source's tolerance
    Fr = Nystroem(n_components=180, random_state=2).fit_transform(StandardScaler().fit_transform(X))
    np.testing.assert_allclose(F, Fr, rtol=1e-12, atol=1e-12)
    ref = np.full_like(P, np.nan)
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=2).split(X, noisy):
        est = LogisticRegression(max_iter=20000, tol=1e-10).fit(Fr[tr], noisy[tr])
        ref[te] = est.predict_proba(Fr[te])
    # warm starts stop at scikit-learn's tolerance: close to each fold's optimum, not equal
    assert np.abs(P - ref).max() < 0.01, np.abs(P - ref).max()
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-12)
    # concentric shells: a linear model sees nothing, the kernel source most flipped labels
    score = -np.log(P[np.arange(360), noisy])
    found = recall_at(np.lexsort((np.arange(360), -score)), wrong, (0.1,))[0.1]
    est = LogisticRegression(max_iter=2000).fit(X / X.std(axis=0), noisy)
    lin = -np.log(est.predict_proba(X / X.std(axis=0))[np.arange(360), noisy])
    base = recall_at(np.lexsort((np.arange(360), -lin)), wrong, (0.1,))[0.1]
    assert found >= 0.5 and found >= base + 0.3, (found, base)
