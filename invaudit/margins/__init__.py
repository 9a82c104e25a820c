"""Adversarial margins (issue 5): how far each row is from being predicted as another class.

``margins(form, X, ...) -> MarginBatch``; ``summarize(batch, y_index, eps)`` for the report;
``project_to_boxes`` is the nearest-point-of-a-leaf-box primitive shared with the tree
counterfactual solver.
"""

from __future__ import annotations

from invaudit.margins._api import margins
from invaudit.margins._batch import MarginBatch, default_eps, summarize
from invaudit.margins.boxes import project_to_boxes

__all__ = ["margins", "MarginBatch", "summarize", "default_eps", "project_to_boxes"]
