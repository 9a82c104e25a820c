"""Diffeomorphic counterfactuals: move in the latent coordinates of an invertible map fitted on
the data, so the counterfactual stays near the data instead of being the closest point.

Dombrowski, Gerken, Müller & Kessel, "Diffeomorphic counterfactuals with generative models"
(TPAMI 2023), sec. 3: with an invertible map ``g`` from latent coordinates ``z`` to inputs ``x``
(there a normalizing flow), gradient ascent on ``log p(target | g(z))`` *in z* moves along the
data manifold, because the pulled-back gradient ``J_g^T grad_x`` is small in directions the data
does not vary in. Here ``g`` is the inverse of

- ``"pca"``: a whitening PCA fitted on the training rows (``z = (x - mu) V / s``, with
  ``s_i = sqrt(lambda_i + 1e-6 lambda_max)`` so that constant directions stay invertible); the
  latent gradient is then ``Sigma grad_x`` in input space: steps follow the data's covariance;
- ``"quantile"``: a QuantileTransformer with normal output fitted on the training rows
  (elementwise; its inverse saturates at the training range, so steps cannot leave it; its
  derivative is a secant over +-0.05 latent units, which crosses the flat steps a quantile map
  has on discrete data);
- a user's fitted transformer with ``transform`` / ``inverse_transform`` (``--manifold PATH``);
  its Jacobian is taken by finite differences.

The ascent starts at the row's own latent point ``z0 = g^{-1}(x)`` and takes normalised steps
``z <- z + eta grad_z / ||grad_z||`` (``eta`` grows by 1.2 after a step that did not lower the
log-probability, halves and retries after one that did) until the estimator confirms the
target (and ``p >= P``); the last step is then bisected in latent space so the path stops just
past the boundary. The constraints' box is enforced after every step by clipping ``g(z)`` and
mapping back. Forms without input gradients (trees, black boxes) use latent interpolation
instead: straight segments in ``z`` toward the nearest target-class reference rows, bisected.

``target="other"``: each row aims at its runner-up class (the most probable other class).
Answers are never exact and do not minimise the distance: they trade distance for plausibility
(see :mod:`._nl_plausibility`).
"""

from __future__ import annotations

import numpy as np

from invaudit.counterfactual._nl_common import Answers, Problem, distance, qualifies
from invaudit.errors import InputError

__all__ = ["fit_latent", "solve_manifold", "PcaLatent", "TransformerLatent"]


class PcaLatent:
    """Whitening PCA as an invertible affine map (module docstring)."""

    name = "pca"

    def __init__(self, X_train: np.ndarray):
        X = np.asarray(X_train, dtype=np.float64)
        if X.shape[0] < 2:
            raise InputError("--manifold pca needs at least two training rows.")
        self.mu = X.mean(axis=0)
        C = np.cov(X - self.mu, rowvar=False).reshape(X.shape[1], X.shape[1])
        lam, V = np.linalg.eigh(C)
        lam = np.maximum(lam, 0.0)
        self.V = V
        self.s = np.sqrt(lam + 1e-6 * max(float(lam.max()), 1e-300) + 1e-300)

    def forward(self, X):
        return ((X - self.mu) @ self.V) / self.s

    def inverse(self, Z):
        return (Z * self.s) @ self.V.T + self.mu

    def vjp_inverse(self, Z, G):
        """``G[i] @ d inverse / d z`` at ``Z[i]``: ``s * (V^T g)``."""
        return (G @ self.V) * self.s


class TransformerLatent:
    """A fitted scikit-learn-style transformer (``transform`` / ``inverse_transform``) as the
    latent map; ``elementwise`` transformers get a two-point central difference per coordinate,
    others a full finite-difference Jacobian (``D + 1`` evaluations per row, in one call)."""

    def __init__(self, transformer, name: str, elementwise: bool = False):
        self.t = transformer
        self.name = name
        self.elementwise = elementwise

    def forward(self, X):
        return np.asarray(self.t.transform(X), dtype=np.float64)

    def inverse(self, Z):
        return np.asarray(self.t.inverse_transform(Z), dtype=np.float64)

    def vjp_inverse(self, Z, G):
        n, D = Z.shape
        h = 1e-5 * (1.0 + np.abs(Z))
        if self.elementwise:
            # a secant over +-0.05 latent units: a quantile map fitted on discrete data is flat
            # between its knots, and the secant sees through those steps
            h = np.full_like(Z, 0.05)
            up = self.inverse(Z + h)
            dn = self.inverse(Z - h)
            return G * (up - dn) / (2.0 * h)
        base = self.inverse(Z)
        E = np.eye(D)[None, :, :] * h[:, :, None]            # (n, D, D): row j perturbs z_j
        Zp = (Z[:, None, :] + E).reshape(n * D, D)
        Xp = self.inverse(Zp).reshape(n, D, -1)
        Jt = (Xp - base[:, None, :]) / h[:, :, None]          # Jt[i, j] = d x / d z_j
        return np.einsum("nd,njd->nj", G, Jt)


def fit_latent(manifold, X_train):
    """The latent map for ``manifold`` ("pca", "quantile" or a fitted transformer)."""
    if isinstance(manifold, str):
        if X_train is None:
            raise InputError(f"--manifold {manifold} needs --train TRAIN (the map is fitted on it).")
        if manifold == "pca":
            return PcaLatent(X_train)
        if manifold == "quantile":
            from sklearn.preprocessing import QuantileTransformer

            m = X_train.shape[0]
            qt = QuantileTransformer(output_distribution="normal", n_quantiles=max(2, min(1000, m)),
                                     random_state=0).fit(X_train)
            return TransformerLatent(qt, "quantile", elementwise=True)
        raise InputError(f"unknown manifold {manifold!r}; use pca, quantile or a transformer file.")
    return TransformerLatent(manifold, type(manifold).__name__)


def _runner_up(form, X):
    """The most probable class other than the predicted one, per row."""
    if form.has_proba:
        S = form.predict_proba(X)
    else:
        from invaudit.models.blackbox import class_scores

        S = class_scores(form, X)
    S = np.array(S, dtype=np.float64)
    S[np.arange(len(X)), form.predict_index(X)] = -np.inf
    return np.argmax(S, axis=1).astype(np.intp)


def _ascent(prob: Problem, latent, eta0: float, max_iter: int):
    from invaudit.counterfactual._nl_smooth import ScoreModel

    model = ScoreModel(prob.form)
    X0 = prob.X
    n, D = X0.shape
    t = prob.target
    lo, hi = prob.lower, prob.upper
    z = latent.forward(X0)
    x = np.clip(latent.inverse(z), lo, hi)
    eta = np.full(n, eta0)
    S = model.scores(x)
    lp = model.log_proba(S)[np.arange(n), t]
    done = np.zeros(n, dtype=bool)
    out = np.full((n, D), np.nan)
    iters = np.zeros(n, dtype=np.int64)
    z_prev = z.copy()
    for _ in range(max_iter):  # a loop over iterations, vectorised over rows
        act = np.flatnonzero(~done)
        if len(act) == 0:
            break
        ok = qualifies(prob.form, x[act], t[act], prob.P)[0]
        if np.any(ok):
            hit = act[ok]
            # the last step crossed the boundary: bisect it in latent space
            a_lo, a_hi = np.zeros(len(hit)), np.ones(len(hit))
            for _b in range(12):
                mid = 0.5 * (a_lo + a_hi)
                zm = z_prev[hit] + mid[:, None] * (z[hit] - z_prev[hit])
                xm = np.clip(latent.inverse(zm), lo[hit], hi[hit])
                g = qualifies(prob.form, xm, t[hit], prob.P)[0]
                a_hi = np.where(g, mid, a_hi)
                a_lo = np.where(g, a_lo, mid)
            zf = z_prev[hit] + a_hi[:, None] * (z[hit] - z_prev[hit])
            xf = np.clip(latent.inverse(zf), lo[hit], hi[hit])
            good = qualifies(prob.form, xf, t[hit], prob.P)[0]
            out[hit] = np.where(good[:, None], xf, x[hit])
            done[hit] = True
            act = act[~ok]
        if len(act) == 0:
            break
        S, J = model.scores_jac(x[act])
        gS = model.log_proba_score_grad(S, t[act])
        gx = np.einsum("nm,nmd->nd", gS, J)
        gz = latent.vjp_inverse(z[act], gx)
        nrm = np.linalg.norm(gz, axis=1)
        stuck = ~(nrm > 0) | ~np.all(np.isfinite(gz), axis=1)
        step = np.where(stuck[:, None], 0.0, gz / np.where(nrm > 0, nrm, 1.0)[:, None])
        # try the step; shrink eta for rows whose log-probability does not rise
        pending = ~stuck
        for _ls in range(8):
            pi = np.flatnonzero(pending)
            if len(pi) == 0:
                break
            rows = act[pi]
            zt = z[rows] + eta[rows][:, None] * step[pi]
            xt = np.clip(latent.inverse(zt), lo[rows], hi[rows])
            zt = latent.forward(xt)
            lpt = model.log_proba(model.scores(xt))[np.arange(len(rows)), t[rows]]
            up = lpt >= lp[rows]  # ties accepted: plateaus of a quantile map are crossed
            acc = rows[up]
            z_prev[acc] = z[acc]
            z[acc], x[acc], lp[acc] = zt[up], xt[up], lpt[up]
            eta[acc] *= 1.2
            eta[rows[~up]] *= 0.5
            iters[rows] += 1
            pending[pi[up]] = False
        # rows that can no longer climb are finished without an answer
        done[act[stuck | (eta[act] < 1e-12 * eta0)]] = True
    return out, iters


def _interpolate(prob: Problem, latent, n_endpoints: int = 8, steps: int = 25):
    """Latent interpolation toward the nearest target reference rows (forms without gradients)."""
    X0 = prob.X
    n, D = X0.shape
    out = np.full((n, D), np.nan)
    best = np.full(n, np.inf)
    Z0 = latent.forward(X0)
    for cls in np.unique(prob.target):  # a loop over classes
        rows = np.flatnonzero(prob.target == cls)
        pool = prob.pool.for_class(int(cls), prob.P) if prob.pool is not None else np.zeros((0, D))
        if len(pool) == 0:
            continue
        Zp = latent.forward(pool)
        dz = np.linalg.norm(Z0[rows][:, None, :] - Zp[None, :, :], axis=2)
        k = min(n_endpoints, len(pool))
        near = np.argsort(dz, axis=1, kind="stable")[:, :k]
        ri = np.repeat(rows, k)
        ze = Zp[near.ravel()]
        z0 = Z0[ri]
        ends = np.clip(latent.inverse(ze), prob.lower[ri], prob.upper[ri])
        ok_end = qualifies(prob.form, ends, prob.target[ri], prob.P)[0]
        a_lo, a_hi = np.zeros(len(ri)), np.ones(len(ri))
        for _ in range(steps):
            mid = 0.5 * (a_lo + a_hi)
            xm = np.clip(latent.inverse(z0 + mid[:, None] * (ze - z0)), prob.lower[ri], prob.upper[ri])
            g = qualifies(prob.form, xm, prob.target[ri], prob.P)[0]
            a_hi = np.where(g, mid, a_hi)
            a_lo = np.where(g, a_lo, mid)
        pts = np.clip(latent.inverse(z0 + a_hi[:, None] * (ze - z0)), prob.lower[ri], prob.upper[ri])
        good = ok_end & qualifies(prob.form, pts, prob.target[ri], prob.P)[0]
        d = np.where(good, np.linalg.norm((latent.forward(pts) - z0), axis=1), np.inf).reshape(len(rows), k)
        j = np.argmin(d, axis=1)
        dj = d[np.arange(len(rows)), j]
        pj = pts.reshape(len(rows), k, D)[np.arange(len(rows)), j]
        better = dj < best[rows]
        out[rows[better]] = pj[better]
        best[rows[better]] = dj[better]
    return out


def solve_manifold(base: Problem, todo, tgt, manifold, X_train, *, max_iter: int = 300):
    """Diffeomorphic counterfactuals for the rows ``todo`` (module docstring).

    Returns ``(answers for all rows of base, name of the latent map)``.
    """
    n, D = base.X.shape
    ans = Answers(n, D)
    latent = fit_latent(manifold, X_train)
    name = latent.name
    todo = np.asarray(todo, dtype=np.intp)
    if len(todo) == 0:
        return ans, name
    t = tgt[todo] if tgt is not None else _runner_up(base.form, base.X[todo])
    prob = base.subset(todo, target=t)
    if base.form.kind in ("linear", "invertible-linear", "differentiable"):
        ref = latent.forward(X_train) if X_train is not None else latent.forward(base.X)
        eta0 = 0.05 * float(np.median(np.std(ref, axis=0))) if len(ref) > 1 else 0.05
        eta0 = eta0 if eta0 > 0 else 0.05
        pts, iters = _ascent(prob, latent, eta0, max_iter)
        method = np.full(len(todo), f"manifold-{name}-gradient-ascent", dtype=object)
        how = np.full(len(todo), "gradient ascent of log p(target) in latent coordinates", dtype=object)
        miss = np.flatnonzero(~np.all(np.isfinite(pts), axis=1))
        if len(miss):  # the ascent stalled (a flat stretch of the map): interpolate instead
            pts[miss] = _interpolate(prob.subset(miss), latent)
            method[miss] = f"manifold-{name}-latent-interpolation"
            how[miss] = "gradient ascent stalled; latent interpolation toward target-class rows"
    else:
        pts = _interpolate(prob, latent)
        iters = np.ones(len(todo), dtype=np.int64)
        method = f"manifold-{name}-latent-interpolation"
        how = "latent interpolation toward target-class reference rows"
    have = np.all(np.isfinite(pts), axis=1)
    ok = np.zeros(len(todo), dtype=bool)
    if np.any(have):
        ok[have] = qualifies(base.form, pts[have], t[have], base.P)[0]
    d = distance(np.nan_to_num(pts) - prob.X, base.weights, base.norm)
    method = np.broadcast_to(np.asarray(method, dtype=object), (len(todo),))
    how = np.broadcast_to(np.asarray(how, dtype=object), (len(todo),))
    backing = np.array([f"verified by the estimator; {h} (not a closest point)" for h in how],
                       dtype=object)
    ans.offer(todo[ok], pts[ok], d[ok], t[ok], method[ok], exact=False, iters=iters[ok],
              backing=backing[ok])
    ans.iters[todo[~ok]] += iters[~ok]
    ans.target[todo[~ok]] = t[~ok]
    ans.method[todo[~ok]] = method[~ok]
    ans.fail(todo[~ok], "the latent path did not reach the target")
    return ans, name
