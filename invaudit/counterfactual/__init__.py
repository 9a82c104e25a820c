"""Closest counterfactuals and model inversion (DESIGN.md: ``counterfactual``).

Public API: :func:`counterfactuals`, :func:`invert`, :class:`Constraints`, :func:`spread`,
:class:`CounterfactualBatch`.
"""

from __future__ import annotations

from .constraints import Constraints, spread
from .result import CounterfactualBatch
from .solve import counterfactuals, invert

__all__ = ["counterfactuals", "invert", "Constraints", "spread", "CounterfactualBatch"]
