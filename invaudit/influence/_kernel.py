"""Influence for kernel SVMs (SVC, NuSVC): Koh & Liang's smoothed hinge on the kernel machine.

The hinge loss has no second derivative, so, as in Koh & Liang (2017), section 4.1 ("Non-
differentiable losses"), influence is computed for the smoothed hinge::

    SmoothHinge(s, tau) = tau * log(1 + exp((1 - s) / tau))      (-> max(0, 1 - s) as tau -> 0)

on the machine as a *linear model in its kernel feature space*. For each one-vs-one machine
``p = (i, j)`` (one machine for two classes) with rows ``R_p`` of classes ``i`` and ``j``
(``y = +1`` for ``i``, ``-1`` for ``j``: a positive decision value votes ``i``, as in
:mod:`invaudit.models.kernel`) and a basis ``B_p`` (the machine's rows, or at most
``max_basis`` of them: its support vectors first), the empirical kernel map
``phi(z) = Lambda^{-1/2} U^T k(B_p, z)`` (``K_BB = U Lambda U^T``, eigenvalues below
``1e-10 * max`` dropped) makes ``f(z) = w . phi(z) + b`` range over the span of
``k(b, .)``, ``b in B_p``, with RKHS norm ``||f||^2 = ||w||^2``. The surrogate objective is then
scikit-learn's SVC objective with the hinge smoothed::

    F_p(w, b) = sum_{r in R_p} C_r SmoothHinge(y_r f(z_r), tau) + 1/2 ||w||^2

(``C_r = C * class_weight[y_r]``; for NuSVC the equivalent ``C`` of the nu-solution, the
largest ``|dual_coef_|`` of the machine, since bounded support vectors sit at ``C``). It is
convex and smooth; it is minimised by Newton's method (Cholesky, backtracking), so the
influence of every row is exact *for the surrogate* to first order:

    loss_change_if_removed(t, r) = sum_p g_t,p^T H_p^{-1} g_r,p                (Koh & Liang eq. 2)

with ``g_r,p = C_r h'(y_r f_p(z_r)) y_r [phi(z_r); 1]`` and the test loss the sum, over the
machines that involve the test row's class, of ``SmoothHinge(o f_p(z_t))`` (``o`` the class's
side). The default estimate is *leverage-corrected*: removing row ``r`` leaves the Hessian
``H - c_r phi_r phi_r^T`` (``c_r = C_r SmoothHinge''``), and because ``g_r`` is parallel to
``phi_r`` the Newton step on the leave-one-out objective is the first-order step divided by
``1 - c_r phi_r . H^-1 phi_r`` (Sherman-Morrison); the test loss is evaluated exactly at the moved
decision values (as :class:`~._objective.LogisticObjective` does). ``verify_loo`` refits the surrogate without the row (same feature space, Newton from the
fitted parameters) for the reference. The preprocessing stays fixed. Never ``exact``: the
surrogate is not the fitted hinge machine, and first order is not a refit.

References
----------
Koh & Liang (2017), "Understanding black-box predictions via influence functions", ICML,
eq. (2) and section 4.1 (smoothed hinge; RBF SVM in its kernel feature space).
Williams & Seeger (2001), "Using the Nystroem method to speed up kernel machines" (the
empirical kernel map with a basis subset).
"""

from __future__ import annotations

import numpy as np
from scipy import linalg
from scipy.special import expit

from invaudit.errors import InputError, SolverError

from ._objective import PRE_FIXED_NOTE, STATIONARY_TOL, Objective, _training_rows
from ._parallel import single_threaded_blas

__all__ = ["KernelObjective", "is_svm", "smooth_hinge"]

_KERNELS = ("rbf", "poly", "sigmoid", "linear")


def _final_and_pre(estimator):
    steps = getattr(estimator, "steps", None)
    if steps:
        return steps[-1][1], estimator[:-1]
    return estimator, None


def is_svm(form) -> bool:
    """True for an SVC / NuSVC (any form holding one) with a kernel this module evaluates."""
    final, _ = _final_and_pre(getattr(form, "estimator", None))
    return type(final).__name__ in ("SVC", "NuSVC") and isinstance(getattr(final, "kernel", None), str) \
        and final.kernel in _KERNELS and hasattr(final, "support_vectors_")


def smooth_hinge(s: np.ndarray, tau: float):
    """``(value, first, second derivative)`` of ``tau log(1 + exp((1 - s) / tau))`` at ``s``."""
    u = (1.0 - s) / tau
    val = tau * np.logaddexp(0.0, u)
    sig = expit(u)
    return val, -sig, sig * (1.0 - sig) / tau


def _kernel(final, A: np.ndarray, B: np.ndarray) -> np.ndarray:
    kind = final.kernel
    if kind == "rbf":
        d2 = np.einsum("nd,nd->n", A, A)[:, None] - 2.0 * A @ B.T + np.einsum("md,md->m", B, B)[None, :]
        return np.exp(-float(final._gamma) * np.maximum(d2, 0.0))
    u = A @ B.T
    if kind == "linear":
        return u
    v = float(final._gamma) * u + float(final.coef0)
    return v ** float(final.degree) if kind == "poly" else np.tanh(v)


class _Machine:
    """One pairwise machine's surrogate: feature map, fitted parameters and Hessian factor."""

    def __init__(self, final, Z, rows, ylab, Cr, basis, tau):
        self.final, self.rows, self.ylab, self.Cr, self.tau = final, rows, ylab, Cr, tau
        self.Zb = Z[basis]
        Kbb = _kernel(final, self.Zb, self.Zb)
        lam, U = linalg.eigh((Kbb + Kbb.T) / 2.0)
        keep = lam > 1e-10 * max(lam.max(), 1e-300)
        self.T = U[:, keep] / np.sqrt(lam[keep])            # phi(z) = k(B, z) @ T
        self.Phi = np.column_stack([_kernel(final, Z[rows], self.Zb) @ self.T, np.ones(len(rows))])
        self.m = self.Phi.shape[1]
        self.reg = np.ones(self.m)
        self.reg[-1] = 0.0                                  # the intercept is not penalised

    def features(self, Z):
        return np.column_stack([_kernel(self.final, Z, self.Zb) @ self.T, np.ones(Z.shape[0])])

    def objective(self, theta, weight):
        s = self.ylab * (self.Phi @ theta)
        v, d1, d2 = smooth_hinge(s, self.tau)
        c = self.Cr * weight
        F = float(c @ v + 0.5 * np.sum(self.reg * theta * theta))
        g = self.Phi.T @ (c * d1 * self.ylab) + self.reg * theta
        H = (self.Phi * (c * d2)[:, None]).T @ self.Phi + np.diag(self.reg)
        return F, g, H

    def fit(self, theta0, weight, *, tol=1e-10, max_iter=200):
        """Newton's method with backtracking (the objective is convex and smooth); where rows
        sit on the hinge's flat or linear parts the Hessian is nearly singular, and a failed
        line search adds a Levenberg-Marquardt ridge ``mu I`` until a step descends."""
        theta = theta0.copy()
        F, g, H = self.objective(theta, weight)
        scale = 1.0 + np.abs(np.diag(H)).max()
        mu = 0.0
        eye = np.eye(self.m)
        for _ in range(max_iter):
            step = -linalg.solve(H + (mu + 1e-12 * scale) * eye, g, assume_a="pos")
            dec = -float(g @ step)
            if dec / 2.0 <= tol * max(1.0, abs(F)) and mu == 0.0:
                break
            a, ok = 1.0, False
            for _ls in range(30):
                Fn, gn, Hn = self.objective(theta + a * step, weight)
                if Fn <= F - 1e-4 * a * dec:
                    ok = True
                    break
                a *= 0.5
            if not ok:
                if mu > 1e12 * scale:
                    break
                mu = max(10.0 * mu, 1e-6 * scale)
                continue
            theta, F, g, H = theta + a * step, Fn, gn, Hn
            mu = 0.0 if mu < 1e-6 * scale else mu / 10.0
        return theta, F, g, H

    def start(self, d_rows):
        """Parameters whose decision values best match ``d_rows`` (the fitted machine's, on its
        rows) in least squares: Newton then starts next to the hinge solution."""
        theta, *_ = linalg.lstsq(self.Phi, d_rows)
        return theta


class KernelObjective(Objective):
    """The smoothed-hinge surrogate of an SVC / NuSVC (module docstring)."""

    kind = "kernel"
    thread_safe = False

    def __init__(self, form, X_train, y_train, *, temperature: float = 0.1, max_basis: int = 1000):
        if not is_svm(form):
            raise InputError("this objective models SVC / NuSVC only.")
        if not temperature > 0:
            raise InputError("the smoothed hinge's temperature must be positive.")
        self.form = form
        final, pre = _final_and_pre(form.estimator)
        self.estimator, self.pre = final, pre
        self.classes = np.asarray(form.classes)
        self.K = len(self.classes)
        X, y = _training_rows(X_train, y_train, form.n_features, self.K)
        self.X, self.y = X, y
        self.n_rows = X.shape[0]
        self.tau = float(temperature)
        Z = self.features(X)
        cw = np.asarray(getattr(final, "class_weight_", np.ones(self.K)), dtype=np.float64)
        if cw.shape != (self.K,):
            cw = np.ones(self.K)
        self.pairs = [(i, j) for i in range(self.K) for j in range(i + 1, self.K)]
        n_sv = np.asarray(final.n_support_, dtype=np.intp)
        sv_starts = np.concatenate([[0], np.cumsum(n_sv)])
        dual = np.abs(np.asarray(final.dual_coef_, dtype=np.float64))
        is_nu = type(final).__name__ == "NuSVC"
        support = np.asarray(getattr(final, "support_", np.zeros(0, dtype=np.intp)), dtype=np.intp)
        self.machines = []
        self.thetas = []
        # the fitted machines' own decision values (d > 0 votes the pair's first class)
        if self.K == 2:
            d_fitted = -np.asarray(final.decision_function(Z), dtype=np.float64).reshape(-1, 1)
        else:
            d_fitted = form.pair_values(X)
        notes = [f"SVMs have no second derivative: influence is for a smoothed-hinge surrogate (temperature "
                 f"{self.tau:g}) of each one-vs-one machine in its kernel feature space (Koh & Liang sec. 4.1); "
                 "the loss explained is that smoothed hinge"]
        rng = np.random.default_rng(0)
        for p, (i, j) in enumerate(self.pairs):  # a loop over class pairs
            rows = np.flatnonzero((y == i) | (y == j))
            if rows.size == 0:
                raise InputError(f"the training data holds no rows of classes {self.classes[i]!r} or "
                                 f"{self.classes[j]!r}.")
            ylab = np.where(y[rows] == i, 1.0, -1.0)
            if is_nu:
                blk = np.r_[sv_starts[i]:sv_starts[i + 1], sv_starts[j]:sv_starts[j + 1]]
                coefs = np.concatenate([dual[j - 1, sv_starts[i]:sv_starts[i + 1]],
                                        dual[i, sv_starts[j]:sv_starts[j + 1]]]) if self.K > 2 else dual[0, blk]
                C = float(coefs.max()) if coefs.size else 1.0
            else:
                C = float(final.C)
            Cr = C * cw[y[rows]]
            if rows.size <= max_basis:
                basis = np.arange(rows.size)
            else:
                # support vectors of this machine first (the rows whose index is in support_), then
                # a seeded sample of the rest
                in_sv = np.isin(rows, support)
                first = np.flatnonzero(in_sv)[:max_basis]
                rest = np.flatnonzero(~in_sv)
                extra = rng.choice(rest, size=max(0, min(rest.size, max_basis - first.size)), replace=False)
                basis = np.sort(np.concatenate([first, extra]))
                if p == 0 or len(notes) == 1:
                    notes.append(f"kernel feature space spanned by at most {max_basis} rows per machine "
                                 "(support vectors first; Nystroem)")
            mach = _Machine(final, Z, rows, ylab, Cr, basis, self.tau)
            theta, F, g, H = mach.fit(mach.start(d_fitted[rows, p]), np.ones(rows.size))
            mach.theta = theta
            try:
                mach.cho = linalg.cho_factor(H, lower=True)
            except linalg.LinAlgError:
                raise SolverError("the smoothed-hinge Hessian is not positive definite.") from None
            mach.grad_norm = float(np.max(np.abs(g))) if g.size else 0.0
            self.machines.append(mach)
            self.thetas.append(theta)
        self.n_params = int(sum(m.m for m in self.machines))
        self.offsets = np.concatenate([[0], np.cumsum([m.m for m in self.machines])])
        self.stationarity = float(max(m.grad_norm for m in self.machines) / max(self.n_rows, 1))
        agree = self._agreement(Z)
        notes.append(f"the surrogate predicts like the fitted SVM on {100 * agree:.1f}% of the training rows")
        if self.stationarity > STATIONARY_TOL:
            notes.append(f"the surrogate's fit is not at a stationary point (objective gradient "
                         f"{self.stationarity:.1e} on the mean scale)")
        if pre is not None:
            notes.append(PRE_FIXED_NOTE.format(", ".join(type(s).__name__ for _, s in pre.steps)))
        self.notes = tuple(notes)
        self.convex = True
        self.exact = False
        self.method = "cholesky"
        self.estimates = ("first-order", "leverage-corrected")
        self.agreement = agree
        # per machine: each training row's gradient (rows of the machine only)
        for mach in self.machines:
            s = mach.ylab * (mach.Phi @ mach.theta)
            _, d1, _ = smooth_hinge(s, self.tau)
            mach.G = mach.Phi * (mach.Cr * d1 * mach.ylab)[:, None]

    # --- model ----------------------------------------------------------------------------------
    def features(self, X):
        X = np.asarray(X, dtype=np.float64)
        return X if self.pre is None else np.asarray(self.pre.transform(X), dtype=np.float64)

    def _values(self, Z, thetas=None):
        """``(n, P)`` surrogate decision values of every machine."""
        thetas = self.thetas if thetas is None else thetas
        return np.column_stack([m.features(Z) @ th for m, th in zip(self.machines, thetas)])

    def _agreement(self, Z) -> float:
        V = self._values(Z)
        votes = np.zeros((Z.shape[0], self.K))
        for p, (i, j) in enumerate(self.pairs):  # a loop over class pairs
            votes[:, i] += V[:, p] > 0
            votes[:, j] += V[:, p] <= 0
        pred = np.argmax(votes, axis=1)
        return float(np.mean(pred == self.form.predict_index(self.X))) if Z.shape[0] else 1.0

    def _side(self, y):
        """``(n, P)``: +1 / -1 where machine ``p`` involves class ``y`` (its side), 0 elsewhere."""
        out = np.zeros((y.shape[0], len(self.pairs)))
        for p, (i, j) in enumerate(self.pairs):  # a loop over class pairs
            out[:, p] = np.where(y == i, 1.0, np.where(y == j, -1.0, 0.0))
        return out

    def _losses_at(self, X, y, thetas=None):
        V = self._values(self.features(X), thetas)
        o = self._side(np.asarray(y, dtype=np.intp))
        val, _, _ = smooth_hinge(o * V, self.tau)
        return np.sum(np.where(o != 0, val, 0.0), axis=1)

    # --- the Objective interface --------------------------------------------------------------
    def losses(self, X, y):
        return self._losses_at(X, y)

    def predicted_index(self, X):
        return self.form.predict_index(np.asarray(X, dtype=np.float64))

    @property
    def train_losses(self):
        return self.losses(self.X, self.y)

    def test_gradients(self, X, y):
        """``(T, n_params)``: the test loss's gradient, machine blocks side by side."""
        Z = self.features(X)
        o = self._side(np.asarray(y, dtype=np.intp))
        out = np.zeros((Z.shape[0], self.n_params))
        for p, m in enumerate(self.machines):  # a loop over class pairs
            use = o[:, p] != 0
            if not use.any():
                continue
            F = m.features(Z[use])
            _, d1, _ = smooth_hinge(o[use, p] * (F @ m.theta), self.tau)
            out[np.ix_(use, np.arange(self.offsets[p], self.offsets[p + 1]))] = F * (d1 * o[use, p])[:, None]
        return out

    def solve(self, G):
        G = np.atleast_2d(np.asarray(G, dtype=np.float64))
        out = np.empty_like(G)
        for p, m in enumerate(self.machines):  # a loop over class pairs
            sl = slice(self.offsets[p], self.offsets[p + 1])
            out[:, sl] = linalg.cho_solve(m.cho, G[:, sl].T).T
        return out

    def prepare(self, estimate: str) -> None:
        """Per machine: ``H^-1 phi_r`` for every row, the leverages ``c_r phi_r . H^-1 phi_r`` and
        the coefficients of the leave-one-out Newton steps (cached; see :meth:`loss_changes`)."""
        if estimate != "leverage-corrected":
            return
        for m in self.machines:  # a loop over class pairs
            if getattr(m, "steps", None) is not None:
                continue
            s = m.ylab * (m.Phi @ m.theta)
            _, d1, d2 = smooth_hinge(s, self.tau)
            Uh = linalg.cho_solve(m.cho, m.Phi.T)            # (m, n_p): H^-1 phi_r
            lev = m.Cr * d2 * np.einsum("rj,jr->r", m.Phi, Uh)
            a = m.Cr * d1 * m.ylab                           # g_r = a_r phi_r
            m.steps = Uh * (a / np.maximum(1.0 - lev, 1e-12))[None, :]   # Delta theta_r, columns

    def loss_changes(self, X_test, y_test, estimate, rows=None, U=None):
        """``(T, n or len(rows))`` predicted changes of the test losses.

        First order: ``sum_p u_t,p . g_r,p`` (Koh & Liang eq. 2). Leverage-corrected: removing row
        ``r`` leaves ``H - c_r phi_r phi_r^T`` (``c_r = C_r h''``), and since ``g_r = a_r phi_r``
        the Newton step on the leave-one-out objective is ``a_r H^-1 phi_r / (1 - c_r phi_r .
        H^-1 phi_r)`` (Sherman-Morrison), the first-order step divided by one minus the row's
        leverage; the test loss is then evaluated exactly at the moved decision values."""
        if estimate != "leverage-corrected":
            if U is None:
                U = self.solve(self.test_gradients(X_test, y_test))
            S = np.zeros((U.shape[0], self.n_rows))
            for p, m in enumerate(self.machines):  # a loop over class pairs
                S[:, m.rows] += U[:, self.offsets[p]:self.offsets[p + 1]] @ m.G.T
            return S if rows is None else S[:, np.asarray(rows, dtype=np.intp)]
        self.prepare(estimate)
        Z = self.features(X_test)
        o = self._side(np.asarray(y_test, dtype=np.intp))
        S = np.zeros((Z.shape[0], self.n_rows))
        for p, m in enumerate(self.machines):  # a loop over class pairs
            use = np.flatnonzero(o[:, p] != 0)
            if use.size == 0:
                continue
            F = m.features(Z[use])
            v = F @ m.theta
            shift = F @ m.steps                              # (t, n_p): moved decision values
            op = o[use, p][:, None]
            S[np.ix_(use, m.rows)] += (smooth_hinge(op * (v[:, None] + shift), self.tau)[0]
                                       - smooth_hinge(op * v[:, None], self.tau)[0])
        return S if rows is None else S[:, np.asarray(rows, dtype=np.intp)]

    def ranking_scores(self, X_test, y_test, estimate, U=None):
        S = self.loss_changes(X_test, y_test, estimate, U=U)
        return S, lambda idx: np.take_along_axis(S, idx, axis=1)

    def self_influence(self, estimate: str = "first-order") -> np.ndarray:
        """``sum_p g_r,p . H_p^-1 g_r,p`` per training row."""
        out = np.zeros(self.n_rows)
        for m in self.machines:  # a loop over class pairs
            out[m.rows] += np.einsum("ij,ji->i", m.G, linalg.cho_solve(m.cho, m.G.T))
        return out

    def feature_gradients(self, u, rows):
        raise InputError("--features (I_pert,loss) is not available for SVMs yet: a row's features also "
                         "move the kernel feature space it spans.")

    def refit_without(self, rows, *, tol=1e-10, max_iter=None):
        """The surrogate refitted without ``rows`` (Newton from the fitted parameters, the same
        feature space): a list of per-machine parameters."""
        drop = np.zeros(self.n_rows, dtype=bool)
        drop[np.asarray(rows, dtype=np.intp)] = True
        thetas = []
        with single_threaded_blas():  # many small solves: BLAS threads only contend
            for m in self.machines:  # a loop over class pairs
                weight = (~drop[m.rows]).astype(np.float64)
                th, *_ = m.fit(m.theta, weight, tol=tol, max_iter=max_iter or 200)
                thetas.append(th)
        return thetas

    def refit_losses(self, fitted, X, y):
        return self._losses_at(X, y, fitted)

    def group_prediction(self, rows, X_test, y_test):
        rows = np.unique(np.asarray(rows, dtype=np.intp))
        S = self.loss_changes(X_test, y_test, "first-order", rows=rows)
        return S.sum(axis=1), None
