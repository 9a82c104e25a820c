"""The ``mixture`` evidence source: each class a mixture of Gaussians (mixture discriminant
analysis, Hastie & Tibshirani 1996, "Discriminant analysis by Gaussian mixtures", JRSS-B), scored
by approximate leave-one-out.

Why: a class that is a union of clusters defeats a linear model (one direction per class cannot
separate it), and when some features carry no signal it also defeats neighbours (the distances
are drowned by the noise features) and thins the trees' splits. A Gaussian per cluster with its own
full covariance learns which directions matter inside each cluster.

How, per class ``c`` with ``n_c`` rows (features standardised once):

1. *Fit.* ``m`` components by EM from k-means (k-means++ seeds and Lloyd steps; own random
   stream per class and ``m``), each covariance ``Sigma_k = S_k / N_k + REG I`` with ``S_k`` the
   component's weighted scatter and ``N_k`` its weight: ``REG`` is a thousandth of a standardised
   feature's variance, which keeps every covariance invertible when a component has fewer rows
   than features (as scikit-learn's ``reg_covar``).
2. *Leave one out.* A row's own label must not vouch for it. Holding the fitted responsibilities
   ``r_ik`` fixed, removing row ``i`` from component ``k`` is a rank-one downdate of its scatter
   (``S'_k = S_k - r_ik N_k / (N_k - r_ik) u u^T``, ``u = x_i - mu_k``) and of its weight and mean;
   its log-density at ``x_i`` follows in closed form from one eigendecomposition of ``S_k`` per
   component (Sherman-Morrison and the matrix determinant lemma). Rows of other classes are out
   of sample already. Class priors are the label shares without the row.
3. *How many components.* Not chosen: ``m = 1 .. MAX_COMPONENTS`` (the same ``m`` for every class,
   at most one component per ``MIN_ROWS`` rows of the largest class) each give leave-one-out class
   probabilities, each is calibrated by one temperature (:func:`._sources.temperature`) and the
   source is their mean. Choosing the ``m`` whose probabilities give the given labels the highest
   likelihood was tried on the development sets and lost recall: more components also fit the
   flipped rows (a cluster of rows flipped into a class becomes a component of it), so the
   likelihood prefers too many; the mean keeps the one-Gaussian view (``m = 1`` is quadratic
   discriminant analysis) beside the clustered ones.

Cost: per class and ``m``, EM on the class's rows (at most ``MIXTURE_CLASS_ROWS`` random rows; the
others are scored out of sample) and one pass over all rows per component.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

__all__ = ["MAX_COMPONENTS", "MIN_ROWS", "MIXTURE_CLASS_ROWS", "mixture_proba", "component_counts",
           "class_mixture", "loo_log_density", "log_density", "loo_proba"]

#: Largest number of Gaussians per class (4: on the development sets 1..4 ranked as well as 1..5
#: inside ``combined``, .805 vs .806 mean recall, for two thirds of the cost).
MAX_COMPONENTS = 4
#: A class gets at most one component per this many rows.
MIN_ROWS = 10
#: EM for a class runs on at most this many of its rows (a random subset past it).
MIXTURE_CLASS_ROWS = 2_000
#: Bound on the multiply-adds of one scoring pass (every row under every component): at 10,000 rows
#: x 50 features x 10 classes 1..4 components take 2.5e9; at 100,000 x 100 x 10 only 1..2 fit.
MIXTURE_WORK = 3e10
#: Added to every covariance's diagonal (the features are standardised: variance 1).
REG = 1e-3
#: Lloyd steps of the k-means start.
LLOYD = 20
#: EM stops when the mean log-likelihood per row moves less than this, or after MAX_ITER steps.
TOL = 1e-4
MAX_ITER = 200


@dataclass
class ClassMixture:
    """A fitted mixture: per component its weight ``N`` (sum of responsibilities), mean ``mu``,
    eigenvectors ``V`` and eigenvalues ``lam`` of its scatter ``S``, and the responsibilities ``R``
    of the rows it was fitted on (the ones the leave-one-out removes)."""
    N: np.ndarray        # (m,)
    mu: np.ndarray       # (m, d)
    V: np.ndarray        # (m, d, d)
    lam: np.ndarray      # (m, d)
    R: np.ndarray        # (rows fitted, m)


def _standardise(Z: np.ndarray) -> np.ndarray:
    """Columns to mean 0, variance 1 (constant columns to 0; a blank sits at the column's mean)."""
    finite = np.isfinite(Z)
    if finite.all():
        mu, sd = Z.mean(axis=0), Z.std(axis=0)
    else:
        Zf = np.where(finite, Z, np.nan)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-blank column
            mu, sd = np.nanmean(Zf, axis=0), np.nanstd(Zf, axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    out = (Z - np.where(np.isfinite(mu), mu, 0.0)) / sd
    return np.where(np.isfinite(out), out, 0.0)


def _sqdist(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    return np.maximum((X * X).sum(axis=1)[:, None] - 2.0 * X @ C.T + (C * C).sum(axis=1)[None, :], 0.0)


def _kmeans(X: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """Cluster labels of k-means: k-means++ seeds (Arthur & Vassilvitskii 2007), then Lloyd steps."""
    n = X.shape[0]
    idx = [int(rng.integers(n))]
    d2 = np.sum((X - X[idx[0]]) ** 2, axis=1)
    for _ in range(1, m):
        tot = d2.sum()
        if not tot > 0:
            break
        j = min(int(np.searchsorted(np.cumsum(d2), rng.random() * tot, side="right")), n - 1)
        idx.append(j)
        d2 = np.minimum(d2, np.sum((X - X[j]) ** 2, axis=1))
    C = X[np.asarray(idx)]
    lab = np.argmin(_sqdist(X, C), axis=1)
    for _ in range(LLOYD):
        onehot = np.zeros((X.shape[0], C.shape[0]))
        onehot[np.arange(X.shape[0]), lab] = 1.0
        counts = onehot.sum(axis=0)
        sums = onehot.T @ X
        live = counts > 0
        C = sums[live] / counts[live, None]
        new = np.argmin(_sqdist(X, C), axis=1)
        if np.array_equal(new, lab) and live.all():
            break
        lab = new
    return lab


def _moments(X: np.ndarray, R: np.ndarray):
    """M-step: weights, means and scatters (components of weight ~0 dropped, with their column
    of ``R``)."""
    N = R.sum(axis=0)
    keep = N > 1e-8 * X.shape[0]
    R, N = R[:, keep], N[keep]
    mu = (R.T @ X) / N[:, None]
    n, d = X.shape
    m = N.size
    # every component's weighted second moment in one product, centred after
    S = ((X[:, None, :] * R[:, :, None]).reshape(n, m * d).T @ X).reshape(m, d, d)
    S -= N[:, None, None] * mu[:, :, None] * mu[:, None, :]
    S = 0.5 * (S + S.transpose(0, 2, 1))
    return R, N, mu, S


def _weighted_log_densities(X, N, mu, W, logdet):
    """``log(N_k / sum N) + log N(x; mu_k, Sigma_k)`` for every row and component: ``W_k`` whitens
    ``Sigma_k`` (``z = (x - mu_k) W_k`` has identity covariance), ``logdet_k = log det Sigma_k``;
    every component's ``z`` from one product."""
    m, d = mu.shape
    z = (X @ W.transpose(1, 0, 2).reshape(d, m * d)).reshape(-1, m, d)
    z -= np.einsum("kd,kde->ke", mu, W)[None, :, :]
    out = -0.5 * (np.einsum("nkd,nkd->nk", z, z) + logdet[None, :] + d * np.log(2 * np.pi))
    return out + np.log(N / N.sum())[None, :]


def _log_weighted_densities(X, N, mu, S):
    """:func:`_weighted_log_densities` of covariances ``S_k / N_k + REG I``, by Cholesky factors
    (the EM steps)."""
    d = X.shape[1]
    cov = S / N[:, None, None]
    cov[:, np.arange(d), np.arange(d)] += REG
    L = np.linalg.cholesky(cov)
    logdet = 2.0 * np.log(np.diagonal(L, axis1=1, axis2=2)).sum(axis=1)
    return _weighted_log_densities(X, N, mu, np.linalg.inv(L).transpose(0, 2, 1), logdet)


def _eigen(S: np.ndarray):
    """Eigenvectors and eigenvalues of each scatter (PSD: rounding below 0 is noise)."""
    lam, V = np.linalg.eigh(S)
    return V, np.maximum(lam, 0.0)


def _lse(logp: np.ndarray) -> np.ndarray:
    top = logp.max(axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return top[:, 0] + np.log(np.exp(logp - top).sum(axis=1))


def class_mixture(X: np.ndarray, m: int, rng: np.random.Generator, *, tol: Optional[float] = None,
                  max_iter: int = MAX_ITER, init: Optional[np.ndarray] = None) -> ClassMixture:
    """EM fit of ``m`` full-covariance Gaussians to the rows ``X`` (already standardised), from
    k-means or from the responsibilities ``init`` (``(n, m')``: a warm start)."""
    tol = TOL if tol is None else tol
    n, d = X.shape
    m = max(1, min(m, n))
    if init is not None:
        R = np.asarray(init, dtype=np.float64)
    else:
        lab = _kmeans(X, m, rng) if m > 1 else np.zeros(n, dtype=np.intp)
        R = np.zeros((n, int(lab.max()) + 1))
        R[np.arange(n), lab] = 1.0
    R, N, mu, S = _moments(X, R)
    prev = -np.inf
    for _ in range(max_iter if N.size > 1 else 0):
        logp = _log_weighted_densities(X, N, mu, S)
        lse = _lse(logp)
        R = np.exp(logp - lse[:, None])
        R, N, mu, S = _moments(X, R)  # parameters consistent with the R returned
        ll = float(lse.mean())
        if ll - prev < tol * max(1.0, abs(ll)):
            break
        prev = ll
    V, lam = _eigen(S)
    return ClassMixture(N=N, mu=mu, V=V, lam=lam, R=R)


def log_density(cm: ClassMixture, X: np.ndarray) -> np.ndarray:
    """Log-density of each row of ``X`` under the fitted mixture (rows not in its fit)."""
    ev = cm.lam / cm.N[:, None] + REG                      # (m, d) covariance eigenvalues
    return _lse(_weighted_log_densities(X, cm.N, cm.mu, cm.V / np.sqrt(ev)[:, None, :],
                                        np.log(ev).sum(axis=1)))


def loo_log_density(cm: ClassMixture, X: np.ndarray) -> np.ndarray:
    """Log-density of each fitted row ``X[i]`` under the mixture refitted without it, the
    responsibilities of the other rows held fixed (module docstring, step 2)."""
    n, d = X.shape
    if n < 2:
        return np.full(n, -np.inf)
    cols = []
    for k in range(cm.N.size):
        r = cm.R[:, k]
        N = cm.N[k]
        Np = N - r                                   # the component's weight without the row
        ok = Np > 1e-9 * max(N, 1.0)
        Nps = np.where(ok, Np, 1.0)
        u = X - cm.mu[k]
        z2 = (u @ cm.V[k]) ** 2
        # A = S / N' + REG I (per row: N' differs); Sigma' = A - c u u^T, c = r N / N'^2
        evA = cm.lam[k][None, :] / Nps[:, None] + REG
        qA = np.sum(z2 / evA, axis=1)
        logdetA = np.sum(np.log(evA), axis=1)
        c = r * N / (Nps * Nps)
        t = np.maximum(1.0 - c * qA, 1e-300)
        maha = (N / Nps) ** 2 * qA / t               # x - mu' = u N / N'
        lp = np.log(Nps / (n - 1)) - 0.5 * (maha + logdetA + np.log(t) + d * np.log(2 * np.pi))
        cols.append(np.where(ok, lp, -np.inf))
    return _lse(np.column_stack(cols))


def _rng(seed: int, c: int, m: int) -> np.random.Generator:
    return np.random.default_rng((int(seed), 0x6D6978, int(c), int(m)))  # 0x6D6978: "mix"


def _fit_classes(Xs: np.ndarray, y: np.ndarray, K: int, m: int, seed: int, class_rows: Optional[int],
                 keep: np.ndarray, warm: Optional[dict] = None) -> dict:
    """``{c: (fit rows, ClassMixture)}``: each class's mixture fitted on its kept rows (at most
    ``class_rows`` random ones); ``warm``: an earlier result whose responsibilities start EM
    where its fit rows include the new ones."""
    fits = {}
    for c in range(K):
        rows = np.flatnonzero((y == c) & keep)
        if rows.size == 0:
            continue
        fit = rows
        if class_rows is not None and rows.size > class_rows:
            fit = np.sort(_rng(seed, c, 0).choice(rows, size=class_rows, replace=False))
        init = None
        if warm is not None and c in warm:
            old_rows, old = warm[c]
            at = np.searchsorted(old_rows, fit)
            if np.all(at < old_rows.size) and np.array_equal(old_rows[np.minimum(at, old_rows.size - 1)], fit):
                init = old.R[at]
        fits[c] = fit, class_mixture(Xs[fit], min(m, max(1, fit.size // MIN_ROWS)), _rng(seed, c, m), init=init)
    return fits


def _class_proba(Xs: np.ndarray, y: np.ndarray, K: int, fits: dict, keep: np.ndarray) -> np.ndarray:
    """Class probabilities of every row from fitted class mixtures: a row's own class's density
    by approximate leave-one-out where the row was in the fit, every other one out of sample;
    class priors the kept label shares, the row's own label left out."""
    n = y.size
    L = np.full((n, K), -np.inf)
    counts = np.bincount(y[keep], minlength=K)
    for c, (fit, cm) in fits.items():
        in_fit = np.zeros(n, dtype=bool)
        in_fit[fit] = True
        L[~in_fit, c] = log_density(cm, Xs[~in_fit])
        L[fit, c] = loo_log_density(cm, Xs[fit])
        prior = np.full(n, np.log(counts[c]))   # the common denominator cancels
        own = counts[c] - 1
        prior[(y == c) & keep] = np.log(own) if own > 0 else -np.inf
        L[:, c] += prior
    E = np.exp(L - _lse(L)[:, None])
    return E / E.sum(axis=1, keepdims=True)


def loo_proba(Xs: np.ndarray, y: np.ndarray, K: int, m: int, *, seed: int = 0,
              class_rows: Optional[int] = MIXTURE_CLASS_ROWS, keep: Optional[np.ndarray] = None) -> np.ndarray:
    """Class probabilities of every row with ``m`` components per class: its own class's density
    by approximate leave-one-out when the row was in the fit, the others out of sample. ``keep``:
    the rows whose labels the class mixtures and class priors are fitted on (default all); the
    others are scored out of sample."""
    keep = np.ones(y.size, dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    return _class_proba(Xs, y, K, _fit_classes(Xs, y, K, m, seed, class_rows, keep), keep)


def component_counts(y: np.ndarray, K: int, max_components: int = MAX_COMPONENTS,
                     n_features: int = 0) -> tuple:
    """The numbers of components per class the ``mixture`` source averages over: 1 .. t, ``t`` at
    most ``max_components``, one per ``MIN_ROWS`` rows of the largest class, and small enough that
    scoring every row under every component (``n K d^2 (1 + .. + t)`` multiply-adds a pass) stays
    within :data:`MIXTURE_WORK`."""
    y = np.asarray(y, dtype=np.intp)
    counts = np.bincount(y, minlength=K)
    biggest = int(counts.max()) if counts.size else 0
    top = max(1, min(max_components, biggest // MIN_ROWS))
    per = float(y.size) * K * float(n_features) ** 2
    while top > 1 and per * top * (top + 1) / 2 > MIXTURE_WORK:
        top -= 1
    return tuple(range(1, top + 1))


def mixture_proba(Z: np.ndarray, y: np.ndarray, K: int, *, seed: int = 0,
                  max_components: int = MAX_COMPONENTS, progress=None,
                  class_rows: Optional[int] = MIXTURE_CLASS_ROWS,
                  suspects: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None
                  ) -> tuple[np.ndarray, tuple, int]:
    """The ``mixture`` source: ``(P, ms, n_set_aside)``, the mean over ``m`` in ``ms`` (1 ..
    ``max_components``, at most one component per ``MIN_ROWS`` rows of the largest class) of the
    leave-one-out class probabilities with ``m`` components per class, each calibrated by one
    temperature first (module docstring, step 3). With ``suspects`` (``suspects(P, y)`` -> row
    numbers), step 4: the rows it names on that mean are set aside, every mixture is fitted again
    without them (EM warm-started from the first fit) and the mean taken again
    (``n_set_aside = -1``: no second pass). BLAS on one thread (``combined`` runs this beside
    other sources); the answer is the same wherever it runs."""
    from invaudit.influence._parallel import single_threaded_blas

    from ._sources import temperature, tempered

    y = np.asarray(y, dtype=np.intp)
    ms = component_counts(y, K, max_components, np.shape(Z)[1])

    def mean(keep, warm):
        total = np.zeros((y.size, K))
        fitted = {}
        for m in ms:
            fitted[m] = _fit_classes(Xs, y, K, m, seed, class_rows, keep, None if warm is None else warm[m])
            P = _class_proba(Xs, y, K, fitted[m], keep)
            total += tempered(P, temperature(P, y))
            if progress is not None:
                progress()
        return total / len(ms), fitted

    with single_threaded_blas():
        Xs = _standardise(np.asarray(Z, dtype=np.float64))
        everyone = np.ones(y.size, dtype=bool)
        P, fitted = mean(everyone, None)
        if suspects is None:
            return P, ms, -1
        aside = np.asarray(suspects(P, y), dtype=np.intp)
        if aside.size == 0:
            return P, ms, 0
        keep = everyone.copy()
        keep[aside] = False
        P, _ = mean(keep, fitted)
    return P, ms, int(aside.size)
