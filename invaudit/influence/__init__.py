"""Influence functions for scikit-learn models (Koh & Liang, ICML 2017), natively in numpy.

Build the training objective once, then ask questions of it::

    objective = build_objective(form, X_train, y_train)      # Hessian + factorisation
    result = influence(objective, X_test, y_test, top=10)     # helpful / harmful rows
    check = verify_loo(objective, X_test, y_test, result.top_rows(5))
    group = group_influence(objective, X_test, y_test, rows, refit=True)

The same objective serves :mod:`invaudit.triage` (self-influence, approximate leave-one-out
losses and probabilities).

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

__all__ = [
    "build_objective", "Objective", "LogisticObjective", "NetworkObjective", "ESTIMATES",
    "SUPPORTED_MESSAGE", "supports", "influence", "InfluenceResult", "RowInfluence", "TrainRowEffect",
    "predicted_loss_changes", "verify_loo", "LOOVerification", "group_influence",
    "GroupInfluence", "TreeObjective", "build_tree_objective", "tree_method",
    "build_neighbors_objective",
]
