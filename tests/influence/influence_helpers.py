"""Small problems and independent references for the influence tests."""

from __future__ import annotations

import warnings

import numpy as np
from scipy.special import log_softmax, logsumexp

from invaudit.models import adapt


def data(n=100, d=4, k=2, seed=0, noise=0.15):
    """Overlapping Gaussian classes (no separation, so every fit has a finite optimum)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    rng.shuffle(y)
    centres = rng.standard_normal((k, d)) * 1.2
    X = centres[y] + rng.standard_normal((n, d))
    flip = rng.random(n) < noise
    y = np.where(flip, (y + 1) % k, y)
    return X * rng.uniform(0.5, 3.0, d) + rng.uniform(-2, 2, d), y


def fit(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y)
    return est, adapt(est)


def objective_value(theta, Z, y, s, lam, R, M, fit_intercept):
    """sum_i s_i * log loss_i + lam/2 sum R_d Theta[k, d]^2, written from scratch."""
    D1 = Z.shape[1] + int(fit_intercept)
    Theta = theta.reshape(M, D1)
    Zt = np.column_stack([Z, np.ones(len(Z))]) if fit_intercept else Z
    eta = Zt @ Theta.T
    if M == 1:
        sign = np.where(y == 1, 1.0, -1.0)
        loss = np.logaddexp(0.0, -sign * eta[:, 0])
    else:
        loss = logsumexp(eta, axis=1) - eta[np.arange(len(y)), y]
    return float(np.sum(s * loss) + 0.5 * lam * np.sum(R * Theta ** 2))


def objective_gradient(theta, Z, y, s, lam, R, M, fit_intercept):
    D1 = Z.shape[1] + int(fit_intercept)
    Theta = theta.reshape(M, D1)
    Zt = np.column_stack([Z, np.ones(len(Z))]) if fit_intercept else Z
    eta = Zt @ Theta.T
    if M == 1:
        r = (1.0 / (1.0 + np.exp(-eta[:, 0])) - (y == 1))[:, None]
    else:
        r = np.exp(log_softmax(eta, axis=1))
        r[np.arange(len(y)), y] -= 1.0
    return ((s[:, None] * r).T @ Zt + lam * R * Theta).ravel()
