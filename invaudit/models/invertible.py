"""The invertible-linear form: ``x -> z = phi(x)`` through invertible preprocessing, then a
linear classifier on ``z`` (DESIGN.md, "Model forms"; the boundary-projection setting of
Zhuang et al., "Decision explanation and feature importance for invertible networks").

``from_estimator(est)`` accepts a :class:`~sklearn.pipeline.Pipeline` whose steps before the
classifier are each

- affine and full rank (``invaudit.models.affine.is_affine_step``; MinMaxScaler without
  ``clip``), or
- an invertible elementwise map:

  * ``PowerTransformer`` (Yeo & Johnson 2000, eq. 2.1; Box & Cox 1964, eq. 1), with or without
    ``standardize``;
  * ``QuantileTransformer`` with ``output_distribution`` ``"uniform"`` or ``"normal"``;
  * ``FunctionTransformer`` whose ``func`` / ``inverse_func`` are one of the numpy ufunc pairs
    log/exp, log1p/expm1, sqrt/square, arcsinh/sinh (either way round, no ``kw_args``),

with at least one elementwise step (an all-affine pipeline is a linear form), followed by a
classifier that :mod:`invaudit.models.linear` accepts. Anything else gives ``None``.

All maps are written here in numpy, vectorised over rows and features:

- ``forward`` reproduces each step's ``transform`` (including scikit-learn's clipping), so
  ``linear.decision_function(forward(X)) == est.decision_function(X)``;
- ``inverse`` is the exact inverse on ``[domain_lower, domain_upper]``;
- ``jacobian`` is analytic: for an elementwise step ``diag(f'(x))``, for an affine one ``A``,
  composed by the chain rule; ``vjp`` runs the same chain backwards without forming ``J``.

Domains (where ``inverse(forward(x)) == x``), in each step's own input coordinates:
Yeo-Johnson ``R``; Box-Cox ``(0, inf)``; QuantileTransformer ``[q_min, q_max]`` of the fitted
quantiles (``"normal"`` output: shrunk by scikit-learn's ``BOUNDS_THRESHOLD`` snap and
``ppf`` clipping, see :class:`_QuantileStep`); log ``(0, inf)``; log1p ``(-1, inf)``; sqrt and
square ``[0, inf)``; exp, expm1, sinh up to where they overflow, and expm1 from
``log(sqrt(eps)) ~ -18`` where it saturates (the round trip keeps 1e-8 relative accuracy there;
maps that saturate smoothly, e.g. Yeo-Johnson with a negative lambda far out, lose accuracy
gradually as their derivative vanishes). The input-space box
is the pull-back of these through the chain; bounds written as closed may be open (log, Box-Cox
at 0), so solvers should stay strictly inside a finite bound. When a non-diagonal affine step
(a PCA) precedes a bounded step, the domain is a polytope rather than a box and the pipeline is
not given this form (``None``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, PowerTransformer, QuantileTransformer

from . import linear as _linear
from .affine import is_affine_step, step_affine
from .base import InvertibleLinearForm

__all__ = ["from_estimator"]

try:  # the threshold QuantileTransformer snaps to its bounds with
    from sklearn.preprocessing._data import BOUNDS_THRESHOLD as _BOUNDS_THRESHOLD
except ImportError:  # pragma: no cover - private name, value as of scikit-learn 1.9
    _BOUNDS_THRESHOLD = 1e-7

_EPS = np.finfo(np.float64).eps
_MAX = np.finfo(np.float64).max
_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)


def from_estimator(est) -> InvertibleLinearForm | None:
    """The invertible-linear form of a fitted Pipeline, or ``None`` (see the module docstring).

    Parameters
    ----------
    est : sklearn.pipeline.Pipeline
        Invertible / affine steps followed by a linear classifier.

    Returns
    -------
    InvertibleLinearForm or None
        ``forward``, ``inverse``, ``jacobian``, ``vjp`` of the preprocessing chain, the
        classifier's :class:`~invaudit.models.base.LinearForm` on its output ``z`` and the
        input-space box ``[domain_lower, domain_upper]`` on which ``inverse`` is exact.
    """
    if not isinstance(est, Pipeline):
        return None
    split = _linear.split_pipeline(est)
    if split is None:
        return None
    pre, final = split
    if _linear.linear_parts(final) is None:
        return None
    pre = [s for s in pre if not _linear._is_identity_function(s)]
    if not pre:
        return None
    D = getattr(pre[0], "n_features_in_", None)
    if D is None:
        return None
    D = int(D)
    steps = []
    for s in pre:  # a loop over pipeline steps, at adapt time
        step = _make_step(s, D)
        if step is None:
            return None
        steps.append(step)
    if not any(step.elementwise for step in steps):
        return None  # all affine: that is the linear form
    linear = _linear.from_estimator(final)
    if linear is None or linear.n_features != D:
        return None
    chain = _Chain(tuple(steps), D)
    domain = chain.domain()
    if domain is None:
        return None
    lower, upper = domain
    return InvertibleLinearForm(
        estimator=est,
        forward=chain.forward,
        inverse=chain.inverse,
        jacobian=chain.jacobian,
        vjp=chain.vjp,
        linear=linear,
        classes=np.asarray(final.classes_),
        n_features=D,
        feature_names=_linear._feature_names(est),
        preprocessing=[step.name for step in steps],
        domain_lower=lower,
        domain_upper=upper,
    )


# --- the chain ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Chain:
    """Steps applied in order; each is an :class:`_AffineStep` or an elementwise step."""

    steps: tuple
    n_features: int

    def _trace(self, X: np.ndarray) -> list:
        """Inputs of every step, then the output (``len(steps) + 1`` arrays)."""
        xs = [X]
        with np.errstate(all="ignore"):  # outside the domain the maps give nan / inf
            for step in self.steps:
                xs.append(step.forward(xs[-1]))
        return xs

    def forward(self, X: np.ndarray) -> np.ndarray:
        """``Z = phi(X)``: the pipeline's transform chain, ``(n, D) -> (n, D)``."""
        X, one = _rows(X, self.n_features)
        Z = self._trace(X)[-1]
        return Z[0] if one else Z

    def inverse(self, Z: np.ndarray) -> np.ndarray:
        """``X = phi^{-1}(Z)``: the steps' inverses in reverse order."""
        Z, one = _rows(Z, self.n_features)
        with np.errstate(all="ignore"):
            for step in reversed(self.steps):
                Z = step.inverse(Z)
        return Z[0] if one else Z

    def jacobian(self, X: np.ndarray) -> np.ndarray:
        """``(n, D, D)``, ``J[i] = d phi(X)[i] / d X[i]`` by the chain rule (forward mode)."""
        X, one = _rows(X, self.n_features)
        xs = self._trace(X)
        n, D = X.shape
        J = np.broadcast_to(np.eye(D), (n, D, D))
        with np.errstate(all="ignore"):
            for step, x_in in zip(self.steps, xs):
                if step.elementwise:
                    J = step.deriv(x_in)[:, :, None] * J
                elif step.diagonal:
                    J = step.a[None, :, None] * J
                else:
                    J = step.A @ J
        J = np.array(J, dtype=np.float64)  # a fresh, writeable array even for no-op chains
        return J[0] if one else J

    def vjp(self, X: np.ndarray, G: np.ndarray) -> np.ndarray:
        """``G[i] @ J[i]`` for every row (reverse mode; ``J`` is never formed)."""
        X, one = _rows(X, self.n_features)
        G = np.asarray(G, dtype=np.float64).reshape(X.shape)
        xs = self._trace(X)
        with np.errstate(all="ignore"):
            for step, x_in in zip(reversed(self.steps), reversed(xs[:-1])):
                if step.elementwise:
                    G = G * step.deriv(x_in)
                elif step.diagonal:
                    G = G * step.a
                else:
                    G = G @ step.A
        return G[0] if one else G

    def domain(self):
        """Input-space box on which ``inverse(forward(x)) == x``, pulled back step by step
        (every elementwise map here is increasing); ``None`` if it is not a box or empty."""
        D = self.n_features
        lo, hi = np.full(D, -np.inf), np.full(D, np.inf)
        with np.errstate(all="ignore"):
            for step in reversed(self.steps):
                if step.elementwise:
                    lo, hi = step.preimage(lo, hi)
                elif step.diagonal:
                    l, h = (lo - step.c) / step.a, (hi - step.c) / step.a
                    pos = step.a > 0
                    lo, hi = np.where(pos, l, h), np.where(pos, h, l)
                elif np.any(np.isfinite(lo)) or np.any(np.isfinite(hi)):
                    return None
        if np.any(np.isnan(lo)) or np.any(np.isnan(hi)) or np.any(lo > hi):
            return None
        return lo, hi


def _rows(X, D: int) -> tuple[np.ndarray, bool]:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        return X.reshape(1, -1), True
    return X, False


# --- steps -------------------------------------------------------------------------------

def _make_step(step, D: int):
    kind = type(step)
    if kind is PowerTransformer:
        return _PowerStep.from_transformer(step)
    if kind is QuantileTransformer:
        return _QuantileStep.from_transformer(step)
    if kind is FunctionTransformer:
        return _UfuncStep.from_transformer(step, D)
    if not is_affine_step(step) or (type(step).__name__ == "MinMaxScaler" and step.clip):
        return None
    A, c = step_affine(step, D)
    if A.shape != (D, D) or not (np.all(np.isfinite(A)) and np.all(np.isfinite(c))):
        return None
    if np.linalg.cond(A) > 1.0 / np.sqrt(_EPS):  # not numerically invertible
        return None
    return _AffineStep.make(A, c, _linear.step_name(step))


@dataclass(frozen=True)
class _AffineStep:
    """``z = x @ A.T + c`` (``a`` is ``diag(A)`` when ``A`` is diagonal)."""

    A: np.ndarray
    c: np.ndarray
    A_inv: np.ndarray
    a: np.ndarray | None
    name: str
    elementwise: bool = False

    @classmethod
    def make(cls, A, c, name):
        diag = np.diag(A)
        a = diag.copy() if np.array_equal(A, np.diag(diag)) else None
        return cls(A=A, c=c, A_inv=np.linalg.inv(A), a=a, name=name)

    @property
    def diagonal(self) -> bool:
        return self.a is not None

    def forward(self, X):
        if self.a is not None:
            return X * self.a + self.c
        return X @ self.A.T + self.c

    def inverse(self, Z):
        if self.a is not None:
            return (Z - self.c) / self.a
        return (Z - self.c) @ self.A_inv.T


class _Elementwise:
    """Increasing elementwise map with ``forward``, ``inverse``, ``deriv`` and its own domain
    ``[lower, upper]`` (per feature)."""

    elementwise = True
    diagonal = False
    lower: np.ndarray
    upper: np.ndarray

    def preimage(self, lo, hi):
        """Box of inputs in the domain whose outputs lie in ``[lo, hi]``."""
        L, U = self.lower, self.upper
        f_L = self.forward(L[None, :])[0]
        f_U = self.forward(U[None, :])[0]
        inv_lo = self.inverse(np.clip(lo, f_L, f_U)[None, :])[0]
        inv_hi = self.inverse(np.clip(hi, f_L, f_U)[None, :])[0]
        new_lo = np.where(lo <= f_L, L, np.maximum(L, inv_lo))
        new_hi = np.where(hi >= f_U, U, np.minimum(U, inv_hi))
        return new_lo, new_hi


class _PowerStep(_Elementwise):
    """PowerTransformer: ``z = (psi_lambda(x) - mean) / scale`` per feature.

    Yeo-Johnson (Yeo & Johnson 2000, eq. 2.1), with the stable forms scipy uses:
    ``x >= 0``: ``expm1(l log1p(x)) / l`` (``log1p(x)`` if ``l == 0``);
    ``x < 0``: ``-expm1((2 - l) log1p(-x)) / (2 - l)`` (``-log1p(-x)`` if ``l == 2``);
    derivative ``(1 + x)^(l - 1)`` resp. ``(1 - x)^(1 - l)``.
    Box-Cox (Box & Cox 1964): ``(x^l - 1) / l`` (``log x`` if ``l == 0``), ``x > 0``;
    derivative ``x^(l - 1)``. ``mean``, ``scale`` come from the internal StandardScaler when
    ``standardize`` is on (else 0 and 1).
    """

    def __init__(self, method, lambdas, mean, scale, name):
        self.method = method
        self.lam = np.asarray(lambdas, dtype=np.float64)
        self.mean = np.asarray(mean, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        self.name = name
        D = self.lam.shape[0]
        low = -np.inf if method == "yeo-johnson" else 0.0
        self.lower, self.upper = np.full(D, low), np.full(D, np.inf)
        # scipy's branch tests for lambda == 0 and lambda == 2
        self.l0 = np.abs(self.lam) < _EPS
        self.l2 = ~(np.abs(self.lam - 2.0) > _EPS)
        self.lam_p = np.where(self.l0, 1.0, self.lam)
        self.lam_n = np.where(self.l2, 1.0, 2.0 - self.lam)

    @classmethod
    def from_transformer(cls, t):
        if t.method not in ("yeo-johnson", "box-cox"):
            return None
        D = len(t.lambdas_)
        if t.standardize:
            mean, scale = t._scaler.mean_, t._scaler.scale_
            name = f"PowerTransformer({t.method}, standardize)"
        else:
            mean, scale = np.zeros(D), np.ones(D)
            name = f"PowerTransformer({t.method})"
        if not (np.all(np.isfinite(t.lambdas_)) and np.all(np.asarray(scale) > 0)):
            return None
        return cls(t.method, t.lambdas_, mean, scale, name)

    def _psi(self, X):
        if self.method == "box-cox":
            return special.boxcox(X, self.lam)
        pos = X >= 0
        lp = np.log1p(np.where(pos, X, 0.0))
        ln = np.log1p(np.where(pos, 0.0, -X))
        out_pos = np.where(self.l0, lp, np.expm1(self.lam_p * lp) / self.lam_p)
        out_neg = np.where(self.l2, -ln, -np.expm1(self.lam_n * ln) / self.lam_n)
        return np.where(pos, out_pos, out_neg)

    def forward(self, X):
        return (self._psi(X) - self.mean) / self.scale

    def inverse(self, Z):
        Y = Z * self.scale + self.mean
        if self.method == "box-cox":
            return special.inv_boxcox(Y, self.lam)
        pos = Y >= 0
        yp = np.where(pos, Y, 0.0)
        yn = np.where(pos, 0.0, Y)
        inv_pos = np.where(self.l0, np.expm1(yp), np.expm1(np.log1p(self.lam_p * yp) / self.lam_p))
        inv_neg = np.where(
            self.l2, -np.expm1(-yn), -np.expm1(np.log1p(-self.lam_n * yn) / self.lam_n)
        )
        return np.where(pos, inv_pos, inv_neg)

    def deriv(self, X):
        if self.method == "box-cox":
            d = np.exp((self.lam - 1.0) * np.log(X))
        else:
            pos = X >= 0
            d = np.where(
                pos,
                np.exp((self.lam - 1.0) * np.log1p(np.where(pos, X, 0.0))),
                np.exp((1.0 - self.lam) * np.log1p(np.where(pos, 0.0, -X))),
            )
        return d / self.scale


class _QuantileStep(_Elementwise):
    """QuantileTransformer, as scikit-learn's ``_transform_col`` computes it.

    ``u = (interp_up(x) + interp_down(x)) / 2``: piecewise-linear interpolation of the
    references ``r`` (``linspace(0, 1, Q)``) at the fitted quantiles ``q``, once ascending and
    once descending (they differ only at repeated quantiles). ``x`` at or beyond the range maps
    to 0 / 1; with ``"normal"`` output, ``x`` within ``BOUNDS_THRESHOLD`` (``T``) of the range
    is snapped to 0 / 1 and ``z = clip(Phi^{-1}(u), Phi^{-1}(T - eps), Phi^{-1}(1 - T + eps))``.

    Derivative: the slope of the segment (averaged over both interpolations), 0 outside the
    range and where snapped or clipped; times ``1 / phi(z)`` for normal output
    (``d Phi^{-1}(u) / du``). The inverse interpolates ``q`` at ``u`` (``u = Phi(z)`` for
    normal output) without snapping; it is exact where the forward map neither snaps nor
    clips: ``[q_min, q_max]`` for uniform output, and for normal output
    ``[max(q_min + 2T, x(2T)), min(q_max - 2T, x(1 - 2T))]`` (a factor 2 of margin over
    scikit-learn's thresholds so that rounding cannot cross them).
    """

    def __init__(self, quantiles, references, normal, name):
        self.q = np.asarray(quantiles, dtype=np.float64)
        self.r = np.asarray(references, dtype=np.float64)
        self.normal = bool(normal)
        self.name = name
        Q, D = self.q.shape
        self.cols = np.arange(D)
        self.n_bisect = int(Q).bit_length() + 1
        self.clip_min = special.ndtri(_BOUNDS_THRESHOLD - np.spacing(1))
        self.clip_max = special.ndtri(1 - (_BOUNDS_THRESHOLD - np.spacing(1)))
        if not self.normal:
            self.lower, self.upper = self.q[0].copy(), self.q[-1].copy()
        else:
            T2 = 2.0 * _BOUNDS_THRESHOLD
            x_lo = self._interp_inverse(np.full((1, D), T2))[0]
            x_hi = self._interp_inverse(np.full((1, D), 1.0 - T2))[0]
            self.lower = np.maximum(self.q[0] + T2, x_lo)
            self.upper = np.minimum(self.q[-1] - T2, x_hi)

    @classmethod
    def from_transformer(cls, t):
        if t.output_distribution not in ("uniform", "normal"):
            return None
        q = np.asarray(t.quantiles_, dtype=np.float64)
        if q.shape[0] < 2 or not np.all(np.isfinite(q)) or np.any(np.diff(q, axis=0) < 0):
            return None
        return cls(q, t.references_, t.output_distribution == "normal",
                   f"QuantileTransformer({t.output_distribution})")

    def _count(self, X, strict: bool):
        """Per entry, how many of its column's quantiles are ``<= x`` (``< x`` if strict):
        a bisection vectorised over rows and features (a loop over log2(Q) levels)."""
        Q = self.q.shape[0]
        lo = np.zeros(X.shape, dtype=np.intp)
        hi = np.full(X.shape, Q, dtype=np.intp)
        for _ in range(self.n_bisect):
            mid = (lo + hi) // 2
            knot = self.q[np.minimum(mid, Q - 1), self.cols]
            go = (knot < X) if strict else (knot <= X)
            active = lo < hi
            lo = np.where(active & go, mid + 1, lo)
            hi = np.where(active & ~go, mid, hi)
        return lo

    def _uniform(self, X):
        """``(u, du/dx)`` before snapping: the averaged interpolation and its slope."""
        q, r, cols = self.q, self.r, self.cols
        Q = q.shape[0]
        right = self._count(X, strict=False)  # q[j] <= x < q[j + 1], j = right - 1
        j = np.clip(right - 1, 0, Q - 2)
        qa, qb = q[j, cols], q[j + 1, cols]
        slope_up = (r[j + 1] - r[j]) / (qb - qa)
        inside_up = (right > 0) & (right < Q)
        v_up = np.where(right == 0, r[0], np.where(right == Q, r[-1], r[j] + (X - qa) * slope_up))
        left = self._count(X, strict=True)  # q[k - 1] < x <= q[k], k = left
        k = np.clip(left, 1, Q - 1)
        qa, qb = q[k - 1, cols], q[k, cols]
        slope_dn = (r[k] - r[k - 1]) / (qb - qa)
        inside_dn = (left > 0) & (left < Q)
        v_dn = np.where(left == 0, r[0], np.where(left == Q, r[-1], r[k] - (qb - X) * slope_dn))
        u = 0.5 * (v_up + v_dn)
        du = 0.5 * (np.where(inside_up, slope_up, 0.0) + np.where(inside_dn, slope_dn, 0.0))
        return u, du

    def _snapped(self, X):
        if self.normal:
            low = X - _BOUNDS_THRESHOLD < self.q[0]
            high = X + _BOUNDS_THRESHOLD > self.q[-1]
        else:
            low, high = X == self.q[0], X == self.q[-1]
        return low, high

    def forward(self, X):
        u, _ = self._uniform(X)
        low, high = self._snapped(X)
        u = np.where(low, 0.0, np.where(high, 1.0, u))
        if not self.normal:
            return u
        return np.clip(special.ndtri(u), self.clip_min, self.clip_max)

    def deriv(self, X):
        u, du = self._uniform(X)
        low, high = self._snapped(X)
        du = np.where(low | high, 0.0, du)
        if not self.normal:
            return du
        z = special.ndtri(u)
        inside = (z >= self.clip_min) & (z <= self.clip_max)
        pdf = _INV_SQRT_2PI * np.exp(-0.5 * z * z)
        return np.where(inside & ~low & ~high, du / pdf, 0.0)

    def _interp_inverse(self, U):
        r, q = self.r, self.q
        Q = r.shape[0]
        U = np.clip(U, 0.0, 1.0)
        j = np.clip(np.searchsorted(r, U, side="right") - 1, 0, Q - 2)
        qa, qb = q[j, self.cols], q[j + 1, self.cols]
        return qa + (U - r[j]) * ((qb - qa) / (r[j + 1] - r[j]))

    def inverse(self, Z):
        U = special.ndtr(Z) if self.normal else Z
        return self._interp_inverse(U)


def _safe_recip_sqrt1p(x):
    return 1.0 / np.hypot(1.0, x)


# name -> (forward, inverse, derivative, domain lower, domain upper)
_UFUNCS = {
    "log": (np.log, np.exp, lambda x: 1.0 / x, 0.0, np.inf),
    "exp": (np.exp, np.log, np.exp, np.log(np.finfo(np.float64).tiny), np.log(_MAX)),
    "log1p": (np.log1p, np.expm1, lambda x: 1.0 / (1.0 + x), -1.0, np.inf),
    # expm1 saturates at -1: below log(sqrt(eps)) ~ -18 the round trip through log1p loses
    # more than half the digits (error ~ eps / exp(x)); below ~ -36.7 it is not injective
    "expm1": (np.expm1, np.log1p, np.exp, 0.5 * np.log(_EPS), np.log(_MAX)),
    "sqrt": (np.sqrt, np.square, lambda x: 0.5 / np.sqrt(x), 0.0, np.inf),
    "square": (np.square, np.sqrt, lambda x: 2.0 * x, 0.0, np.sqrt(_MAX)),
    "arcsinh": (np.arcsinh, np.sinh, _safe_recip_sqrt1p, -np.inf, np.inf),
    "sinh": (np.sinh, np.arcsinh, np.cosh, -np.arcsinh(_MAX), np.arcsinh(_MAX)),
}
_INVERSE_OF = {"log": "exp", "exp": "log", "log1p": "expm1", "expm1": "log1p",
               "sqrt": "square", "square": "sqrt", "arcsinh": "sinh", "sinh": "arcsinh"}


class _UfuncStep(_Elementwise):
    """FunctionTransformer with a numpy ufunc pair (see ``_UFUNCS``)."""

    def __init__(self, fname, D):
        self.fname = fname
        self.forward, self.inverse, self.deriv, low, up = _UFUNCS[fname]
        self.lower, self.upper = np.full(D, low), np.full(D, up)
        self.name = f"FunctionTransformer({fname})"

    @classmethod
    def from_transformer(cls, t, D: int):
        if t.kw_args or t.inv_kw_args:
            return None
        fname = next((n for n in _UFUNCS if t.func is getattr(np, n)), None)
        if fname is None or t.inverse_func is not getattr(np, _INVERSE_OF[fname]):
            return None
        return cls(fname, D)
