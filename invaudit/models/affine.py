"""Folding affine preprocessing steps into one map ``Z = X @ A.T + c``.

Used by the linear form (to express W and b in input units) and by the differentiable form
(a network after a scaler). Each supported step is exactly affine; anything else is not.
"""

from __future__ import annotations

import numpy as np

def _class_name(step) -> str:
    """``type(step).__name__`` (a light-loaded step's recorded class name, invaudit.io._light)."""
    from invaudit.io._light import class_name

    return class_name(step)


AFFINE_STEPS = ("StandardScaler", "MinMaxScaler", "MaxAbsScaler", "RobustScaler", "PCA")


def is_affine_step(step) -> bool:
    """True for the steps this module folds exactly (PCA only when it is full rank)."""
    name = _class_name(step)
    if name == "passthrough" or step is None or step == "passthrough":
        return True
    if name not in AFFINE_STEPS:
        return False
    if name == "PCA":
        return step.components_.shape[0] == step.components_.shape[1]
    if name == "MinMaxScaler" and getattr(step, "clip", False):
        return False  # clipping makes it piecewise, not affine
    return True


def step_affine(step, d: int) -> tuple[np.ndarray, np.ndarray]:
    """``(A, c)`` with ``step.transform(X) == X @ A.T + c`` for a fitted affine step on ``d`` inputs."""
    if step is None or (isinstance(step, str) and step == "passthrough"):
        return np.eye(d), np.zeros(d)
    name = _class_name(step)
    if name == "StandardScaler":
        mean = step.mean_ if getattr(step, "with_mean", True) and step.mean_ is not None else np.zeros(d)
        scale = step.scale_ if getattr(step, "with_std", True) and step.scale_ is not None else np.ones(d)
        return np.diag(1.0 / scale), -np.asarray(mean, float) / scale
    if name == "MinMaxScaler":
        return np.diag(np.asarray(step.scale_, float)), np.asarray(step.min_, float)
    if name == "MaxAbsScaler":
        return np.diag(1.0 / np.asarray(step.scale_, float)), np.zeros(d)
    if name == "RobustScaler":
        center = step.center_ if step.center_ is not None else np.zeros(d)
        scale = step.scale_ if step.scale_ is not None else np.ones(d)
        return np.diag(1.0 / np.asarray(scale, float)), -np.asarray(center, float) / scale
    if name == "PCA":
        comp = np.asarray(step.components_, float)
        mean = np.asarray(step.mean_, float)
        if getattr(step, "whiten", False):
            comp = comp / np.sqrt(np.asarray(step.explained_variance_, float))[:, None]
        return comp, -comp @ mean
    raise TypeError(f"{name} is not an affine step")


def fold_affine(steps, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Compose fitted affine steps (applied in order) into one ``(A, c)``."""
    A, c = np.eye(d), np.zeros(d)
    for step in steps:
        A_s, c_s = step_affine(step, A.shape[0])
        A, c = A_s @ A, A_s @ c + c_s
    return A, c
