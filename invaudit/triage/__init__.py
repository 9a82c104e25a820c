"""Mislabel triage: which training labels a reviewer should check first.

    ranking = rank_mislabels(form, X_train, y_train)            # method "auto": combined
    ranking.records(top=20)                                       # DESIGN.md result fields
    recall_at(ranking.order, truth_mask(y_train, y_true))         # with known wrong labels
    found_curve(ranking.order, mask)                              # found-vs-checked curve
    ranking.fixed_labels(50)                                      # --fix 50
"""

from __future__ import annotations

from ._rank import (DEFAULT_METHOD, METHODS, MislabelRanking,
                    available_methods, confident_learning_score, found_curve,
                    out_of_fold_proba, rank_mislabels, recall_at, truth_mask)
from ._sources import (DEFAULT_K, default_reference, fold_splits, forest_rows, knn_proba,
                       mixture_weights, model_space, oob_proba, reference_proba)

__all__ = ["rank_mislabels", "MislabelRanking", "METHODS", "DEFAULT_METHOD",
           "available_methods", "recall_at", "found_curve", "truth_mask",
           "confident_learning_score", "out_of_fold_proba", "knn_proba", "reference_proba",
           "default_reference", "fold_splits", "model_space", "mixture_weights", "DEFAULT_K",
           "oob_proba", "forest_rows"]
