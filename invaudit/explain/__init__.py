"""Which parts of an input are enough for its prediction, and is there more than one such part?

Causal responsibility maps and multiple minimal sufficient explanations (MultiReX: Chockler,
Kelly, Kroening et al., "Multiple different black box explanations for image classifiers").
Works for any model with ``predict`` (``predict_proba`` for ``confidence``).
"""

from __future__ import annotations

from invaudit.explain._multirex import (
    DEFAULT_ITERATIONS,
    DEFAULT_MAX_EXPLANATIONS,
    Explanation,
    RowExplanation,
    explain_row,
    explain_rows,
    parse_shape,
    records,
    resolve_baseline,
    summary,
)
from invaudit.explain._typed import TYPED_BASELINES, baseline_rows, typed_baseline

__all__ = [
    "DEFAULT_ITERATIONS",
    "DEFAULT_MAX_EXPLANATIONS",
    "Explanation",
    "RowExplanation",
    "explain_row",
    "explain_rows",
    "parse_shape",
    "records",
    "resolve_baseline",
    "summary",
    "TYPED_BASELINES",
    "baseline_rows",
    "typed_baseline",
]
