"""The nearest point of a leaf box: the building block of exact tree margins and counterfactuals."""

from __future__ import annotations

import numpy as np

from invaudit.errors import InputError
from invaudit.margins._common import check_norm, weighted_norm

__all__ = ["project_to_boxes", "intersect_boxes"]


def project_to_boxes(x, lower, upper, weights=None, norm: str = "l2"):
    """Nearest point of every half-open box ``{z : lower < z <= upper}`` to ``x``.

    Parameters
    ----------
    x : (D,) or (n, D)
        The point(s).
    lower, upper : (L, D), or (n, L, D) for per-row boxes
        Box bounds, open below and closed above (scikit-learn's trees send ``x <= threshold``
        left); ``-inf`` / ``inf`` where a feature is unconstrained.
    weights : (D,), optional
        Positive metric weights: the distance is ``||weights * (z - x)||_norm``.
    norm : "l2", "l1" or "linf"

    Returns
    -------
    points : (L, D) or (n, L, D)
        ``points[..., l, :]`` lies in box ``l`` (NaN for an empty box).
    distances : (L,) or (n, L)
        The distance of that point (``inf`` for an empty box).

    Notes
    -----
    A box is a product of intervals, so the coordinate-wise clip of ``x`` minimises every
    ``|z_f - x_f|`` at once and therefore every weighted l_p distance (p >= 1): it is the
    projection for l1, l2 and linf alike. The open lower side has no nearest point; the point
    returned is the nearest one representable in float64, ``nextafter(lower, +inf)``, so it lies
    *inside* the box and its distance exceeds the infimum by at most one ulp of ``lower``.
    """
    check_norm(norm)
    x = np.asarray(x, dtype=np.float64)
    lower = np.asarray(lower, dtype=np.float64)
    upper = np.asarray(upper, dtype=np.float64)
    if lower.shape != upper.shape or lower.ndim not in (2, 3):
        raise InputError(f"box bounds must both have shape (L, D) or (n, L, D), "
                         f"got {lower.shape} and {upper.shape}.")
    d = lower.shape[-1]
    if x.shape[-1] != d or x.ndim not in (1, 2):
        raise InputError(f"x must have shape (D,) or (n, D) with D = {d}, got {x.shape}.")
    w = np.ones(d) if weights is None else np.asarray(weights, dtype=np.float64)
    xe = x[None, :] if x.ndim == 1 else x[:, None, :]
    inside_lower = np.nextafter(lower, np.inf)  # smallest float strictly above the open side
    empty = np.any(inside_lower > upper, axis=-1)
    pts = np.minimum(np.maximum(xe, inside_lower), upper)
    dist = weighted_norm(pts - xe, w, norm)
    if np.any(empty):
        pts = np.where(empty[..., None], np.nan, pts)
        dist = np.where(empty, np.inf, dist)
    return pts, dist


def intersect_boxes(lower, upper, point_lower, point_upper):
    """Half-open leaf boxes ``lower < z <= upper`` intersected with closed per-row bounds
    ``point_lower <= z <= point_upper`` ((n, D) each), as half-open boxes ``(n, L, D)``.

    ``z >= c`` is ``z > nextafter(c, -inf)`` exactly in float64, so the intersection stays
    half-open with ``lower' = max(lower, nextafter(point_lower, -inf))``.
    """
    lo = np.nextafter(np.asarray(point_lower, dtype=np.float64), -np.inf)
    return (np.maximum(lower[None, :, :], lo[:, None, :]),
            np.minimum(upper[None, :, :], np.asarray(point_upper, dtype=np.float64)[:, None, :]))
