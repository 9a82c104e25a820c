"""Influence functions for scikit-learn models (Koh & Liang, ICML 2017), natively in numpy.

Build the training objective once, then ask questions of it::

    objective = build_objective(form, X_train, y_train)      # Hessian + factorisation
    result = influence(objective, X_test, y_test, top=10)     # helpful / harmful rows
    check = verify_loo(objective, X_test, y_test, result.top_rows(5))
    group = group_influence(objective, X_test, y_test, rows, refit=True)

The same objective serves :mod:`invaudit.triage` (self-influence, approximate leave-one-out
losses and probabilities).

Every family has its own objective behind the same interface; :func:`influence_family` says which
one a form gets and :func:`build_influence_objective` builds it: Koh & Liang for logistic
regression, networks and SVMs (:func:`build_objective`), leaf refits for tree models
(:mod:`._trees`), exact leave-one-out for k-nearest neighbours (:mod:`._neighbors`) and for
GaussianNB / QDA (:mod:`._quadratic`).

``build_objective``, ``influence``, ``predicted_loss_changes`` and ``group_influence`` run
BLAS on one thread and spread their independent blocks of work over the cores themselves
(:mod:`invaudit.influence._parallel`); limiting BLAS to one thread in the caller (for example
``threadpoolctl.threadpool_limits(1)``) keeps them on one core.
"""

from __future__ import annotations

from ._influence import (GroupInfluence, InfluenceResult, LOOVerification, RowInfluence,
                         TrainRowEffect, group_influence, influence, predicted_loss_changes,
                         verify_loo)
from ._objective import (ESTIMATES, SUPPORTED_MESSAGE, LogisticObjective, NetworkObjective,
                         Objective, build_objective, supports)
from ._trees import TreeObjective, build_tree_objective, tree_method


def build_neighbors_objective(form, X_train, y_train):
    """The exact leave-one-out objective of a KNN classifier (:mod:`._neighbors`)."""
    from ._neighbors import NeighborsObjective

    return NeighborsObjective(form, X_train, y_train)


def build_quadratic_objective(form, X_train, y_train):
    """The exact leave-one-out objective of GaussianNB / QDA (:mod:`._quadratic`)."""
    from ._quadratic import QuadraticObjective

    return QuadraticObjective(form, X_train, y_train)


def influence_family(form) -> str | None:
    """Which influence objective :func:`build_influence_objective` builds for ``form``:
    ``"logistic"``, ``"network"``, ``"kernel"`` (:func:`supports`), ``"trees"`` (leaf refits),
    ``"neighbors"`` or ``"quadratic"`` (exact leave-one-out), or None (no influence for it)."""
    kind = supports(form)
    if kind is not None:
        return kind
    k = getattr(form, "kind", None)
    if k == "trees":
        return "trees" if tree_method(form) is not None else None
    if k == "neighbors":
        return "neighbors"
    if k == "quadratic":
        from ._quadratic import quadratic_method

        return "quadratic" if quadratic_method(form) is not None else None
    return None


def build_influence_objective(form, X_train, y_train):
    """The influence objective of any form invaudit covers (:func:`influence_family`); for the
    others, :func:`build_objective`'s refusal (an :class:`~invaudit.errors.UnsupportedModelError`
    naming what is covered)."""
    family = influence_family(form)
    if family == "trees":
        return build_tree_objective(form, X_train, y_train)
    if family == "neighbors":
        return build_neighbors_objective(form, X_train, y_train)
    if family == "quadratic" or getattr(form, "kind", None) == "quadratic":
        return build_quadratic_objective(form, X_train, y_train)  # refuses with the reason
    if family is None and getattr(form, "kind", None) == "trees":
        return build_tree_objective(form, X_train, y_train)  # refuses, naming the tree models covered
    return build_objective(form, X_train, y_train)

__all__ = [
    "build_objective", "Objective", "LogisticObjective", "NetworkObjective", "ESTIMATES",
    "SUPPORTED_MESSAGE", "supports", "influence", "InfluenceResult", "RowInfluence", "TrainRowEffect",
    "predicted_loss_changes", "verify_loo", "LOOVerification", "group_influence",
    "GroupInfluence", "TreeObjective", "build_tree_objective", "tree_method",
    "build_neighbors_objective", "build_quadratic_objective", "influence_family",
    "build_influence_objective",
]
