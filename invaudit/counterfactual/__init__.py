"""Closest counterfactuals and model inversion (DESIGN.md: ``counterfactual``).

Public API: :func:`counterfactuals` (every model form), :func:`counterfactuals_with_extras`
(adds feature importance and plausibility), :func:`invert`, :class:`Constraints`,
:func:`spread`, :class:`CounterfactualBatch`.

Linear forms go to the exact solvers in :mod:`.solve`; every other form (and a linear form
with a ``manifold``) to :mod:`.nonlinear`, which says for each answer what backs it.
"""

from __future__ import annotations

from .constraints import Constraints, spread
from .nonlinear import counterfactuals_nonlinear as _nonlinear
from .nonlinear import counterfactuals_nonlinear_with_extras as counterfactuals_with_extras
from .nonlinear import feature_importance, plausibility
from .result import CounterfactualBatch
from .solve import counterfactuals as linear_counterfactuals
from .solve import invert


def counterfactuals(form, X, *, target, confidence=None, norm="l2", constraints=None, **options):
    """The closest counterfactual of every row of ``X`` for any model form.

    ``options`` (``X_train``, ``y_train_index``, ``manifold``, ``seed``, ``progress``, ...) are
    those of :func:`invaudit.counterfactual.nonlinear.counterfactuals_nonlinear`; a linear form
    without a manifold is solved exactly by :func:`linear_counterfactuals`.
    """
    if getattr(form, "kind", None) == "linear" and options.get("manifold") is None:
        return linear_counterfactuals(form, X, target=target, confidence=confidence, norm=norm,
                                      constraints=constraints)
    return _nonlinear(form, X, target=target, confidence=confidence, norm=norm, constraints=constraints,
                      **options)


__all__ = ["counterfactuals", "counterfactuals_with_extras", "linear_counterfactuals", "invert",
           "feature_importance", "plausibility", "Constraints", "spread", "CounterfactualBatch"]
