"""Per-feature constraints shared by the counterfactual and margin solvers.

Everything a user can ask for on the command line (``--immutable``, ``--increase-only``,
``--decrease-only``, ``--bounds data``, ``--scale std|mad``) is a per-row box on the
counterfactual *point* and a per-feature weight in the metric, so the exact linear solvers stay
exact with them (DESIGN.md, "Constraints users ask for").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from invaudit.errors import InputError

__all__ = ["Constraints", "spread"]


def _mask(mask, d: int, name: str) -> np.ndarray:
    if mask is None:
        return np.zeros(d, dtype=bool)
    m = np.asarray(mask)
    if m.shape != (d,):
        raise InputError(f"{name} must be a boolean mask of length {d}, got shape {m.shape}.")
    if m.dtype != bool:
        if not np.all(np.isin(m, (0, 1))):
            raise InputError(f"{name} must be a boolean mask (True/False per feature).")
        m = m.astype(bool)
    return m


def _vector(v, d: int, name: str) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    if a.shape != (d,):
        raise InputError(f"{name} must have one value per feature ({d}), got shape {a.shape}.")
    if np.any(np.isnan(a)):
        raise InputError(f"{name} contains NaN.")
    return a


@dataclass(frozen=True)
class Constraints:
    """Box on the counterfactual point and the metric's per-feature weights.

    Attributes
    ----------
    lower, upper : ndarray of shape (n, D)
        Bounds on the counterfactual point of each row (``-inf`` / ``+inf`` allowed). Every
        solver requires ``lower <= x <= upper`` for the row's own ``x`` (``build`` guarantees it).
    weights : ndarray of shape (D,)
        Positive, finite metric weights: the distance is ``|| weights * (x_cf - x) ||_p``.
    """

    lower: np.ndarray
    upper: np.ndarray
    weights: np.ndarray

    @classmethod
    def build(
        cls,
        X,
        *,
        immutable=None,
        increase_only=None,
        decrease_only=None,
        data_lower=None,
        data_upper=None,
        scale=None,
    ) -> "Constraints":
        """Turn the user's per-feature options into bounds and weights for the rows ``X``.

        Parameters
        ----------
        X : array of shape (n, D)
            The rows the counterfactuals start from.
        immutable, increase_only, decrease_only : bool arrays of shape (D,) or None
            ``immutable`` freezes a feature (``lower = upper = x``); ``increase_only`` sets
            ``lower = x``; ``decrease_only`` sets ``upper = x``. A feature that is both
            increase-only and decrease-only is frozen.
        data_lower, data_upper : arrays of shape (D,) or None
            The range seen in the training data (``--bounds data``). The box is widened per row to
            contain ``x`` itself: a row already outside the seen range may stay where it is on that
            feature (it is never forced to move into the range), but it cannot move farther out.
        scale : array of shape (D,) or None
            Per-feature spreads (see :func:`spread`); ``weights = 1 / scale``. ``None``: unit
            weights (distances in input units).
        """
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise InputError(f"X must be a 2-D array of rows, got {X.ndim} dimension(s).")
        n, d = X.shape
        imm = _mask(immutable, d, "immutable")
        inc = _mask(increase_only, d, "increase_only")
        dec = _mask(decrease_only, d, "decrease_only")

        lower = np.full((n, d), -np.inf)
        upper = np.full((n, d), np.inf)
        if data_lower is not None or data_upper is not None:
            lo = np.full(d, -np.inf) if data_lower is None else _vector(data_lower, d, "data_lower")
            hi = np.full(d, np.inf) if data_upper is None else _vector(data_upper, d, "data_upper")
            if np.any(lo > hi):
                j = int(np.flatnonzero(lo > hi)[0])
                raise InputError(f"data bounds are inverted for feature {j} ({lo[j]} > {hi[j]}).")
            # Widen per row so that x itself is always inside its own box.
            lower = np.minimum(np.broadcast_to(lo, (n, d)), X)
            upper = np.maximum(np.broadcast_to(hi, (n, d)), X)
        lower = np.where(inc | imm, X, lower)
        upper = np.where(dec | imm, X, upper)

        if scale is None:
            weights = np.ones(d)
        else:
            s = _vector(scale, d, "scale")
            if np.any(~np.isfinite(s)) or np.any(s <= 0):
                j = int(np.flatnonzero(~np.isfinite(s) | (s <= 0))[0])
                raise InputError(f"scale must be positive and finite; feature {j} has {s[j]}.")
            weights = 1.0 / s
        return cls(lower=np.ascontiguousarray(lower), upper=np.ascontiguousarray(upper),
                   weights=weights)

    @classmethod
    def from_options(cls, X, *, feature_names=None, X_train=None, immutable=None, increase_only=None,
                     decrease_only=None, bounds: str = "none", scale: str = "none",
                     option_name=lambda key: f"--{key.replace('_', '-')}",
                     train_hint: str = "--train TRAIN") -> "Constraints":
        """The constraints users ask for by name, as the command line and audit suites spell them.

        ``immutable`` / ``increase_only`` / ``decrease_only``: feature names or indices separated
        by commas; ``bounds``: ``"none"`` or ``"data"`` (the range of ``X_train``); ``scale``:
        ``"none"``, ``"std"`` or ``"mad"`` of ``X_train``. ``option_name(key)`` and ``train_hint``
        word the error messages for the caller (a flag, or a suite's YAML path).
        """
        from invaudit.io import parse_columns

        X = np.asarray(X, dtype=np.float64)
        d = X.shape[1]
        names = None if feature_names is None else list(feature_names)
        if (scale != "none" or bounds == "data") and X_train is None:
            key = "scale" if scale != "none" else "bounds"
            raise InputError(f"{option_name(key)} needs {train_hint} (spreads and ranges are taken from it).")
        masks = {k: parse_columns(v, names, d, what=option_name(k))
                 for k, v in (("immutable", immutable), ("increase_only", increase_only),
                              ("decrease_only", decrease_only))}
        both = masks["increase_only"] & masks["decrease_only"]
        if both.any():
            j = int(np.argmax(both))
            raise InputError(f"feature {names[j] if names else j} is both {option_name('increase_only')} and "
                             f"{option_name('decrease_only')} (use {option_name('immutable')} to freeze it).")
        Xtr = None if X_train is None else np.asarray(X_train, dtype=np.float64)
        return cls.build(
            X,
            **{k: (m if m.any() else None) for k, m in masks.items()},
            data_lower=Xtr.min(axis=0) if bounds == "data" else None,
            data_upper=Xtr.max(axis=0) if bounds == "data" else None,
            scale=spread(Xtr, scale) if scale != "none" else None,
        )

    @classmethod
    def none(cls, X) -> "Constraints":
        """No bounds, unit weights."""
        return cls.build(X)

    def validate(self, X: np.ndarray) -> None:
        """Raise :class:`InputError` unless the constraints fit the rows ``X``."""
        n, d = X.shape
        if self.lower.shape != (n, d) or self.upper.shape != (n, d):
            raise InputError(
                f"constraint bounds have shape {self.lower.shape}, expected {(n, d)} for these rows."
            )
        if self.weights.shape != (d,):
            raise InputError(f"constraint weights must have length {d}, got {self.weights.shape}.")
        w = self.weights
        if np.any(~np.isfinite(w)) or np.any(w <= 0):
            raise InputError("constraint weights must be positive and finite.")
        if np.any(np.isnan(self.lower)) or np.any(np.isnan(self.upper)):
            raise InputError("constraint bounds contain NaN.")
        bad = (self.lower > X) | (self.upper < X)
        if np.any(bad):
            i, j = np.argwhere(bad)[0]
            raise InputError(
                f"row {i} lies outside its own bounds on feature {j} "
                f"({X[i, j]} not in [{self.lower[i, j]}, {self.upper[i, j]}])."
            )


def spread(X_train, kind: str) -> np.ndarray:
    """Per-feature spread of the training data, the unit of ``--scale``.

    Parameters
    ----------
    X_train : array of shape (m, D)
    kind : {"std", "mad"}
        ``"std"``: the standard deviation (``ddof=0``). ``"mad"``: the median absolute deviation
        from the median, unscaled (no 1.4826 factor), as in Wachter et al.'s counterfactual
        distance.

    Returns
    -------
    ndarray of shape (D,)
        Strictly positive spreads. A feature whose spread is zero (e.g. a MAD of zero on a
        mostly-constant feature) falls back to its standard deviation, and a feature that is
        constant in the training data falls back to 1 (input units).
    """
    X = np.asarray(X_train, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise InputError("the training data must be a non-empty 2-D array to compute spreads.")
    if not np.all(np.isfinite(X)):
        raise InputError("the training data contains NaN or infinite values.")
    std = X.std(axis=0)
    if kind == "std":
        s = std
    elif kind == "mad":
        med = np.median(X, axis=0)
        s = np.median(np.abs(X - med), axis=0)
        s = np.where(s > 0, s, std)
    else:
        raise InputError(f"unknown spread kind {kind!r}; use 'std' or 'mad'.")
    return np.where(s > 0, s, 1.0)
