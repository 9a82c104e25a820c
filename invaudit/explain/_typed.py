"""Baselines for typed rows (a ColumnTransformer pipeline, a HistGradientBoosting with native
categorical features), on the codes of :class:`invaudit.models.tabular.CodedRows`.

A baseline here is a valid row of the model's input schema: numeric columns finite, integer
columns whole, categorical columns a category the encoder knows -- so every mutant
``where(mask, row, baseline)`` is a valid row too.

- ``contrast`` (the default for typed rows): per row, the typical training row of the classes the
  model does *not* predict for that row -- among the ``--train`` rows the model assigns another
  class, the median of each numeric column (rounded for integer columns and for columns with whole
  numbers in every training row) and the most frequent
  known category of each categorical column. Keeping features of the row then has to move the
  model from "another class" back to the row's class, which is what an explanation means; the
  zero or mean baseline of a binary model often already gets the row's label, leaving the row
  with no explanation. A row's baseline depends only on its class and the training data.
- ``mean``: one row for every row -- numeric columns the ``--train`` mean (rounded the same way),
  categorical columns the most frequent known category.
- ``zero``: numeric columns 0, categorical columns the encoder's first category (no ``--train``).
"""

from __future__ import annotations

import numpy as np

from invaudit.errors import InputError

TYPED_BASELINES = ("contrast", "mean", "zero")


def _column_summary(coded, Xt: np.ndarray, central: str) -> np.ndarray:
    """One valid coded row summarising the training rows ``Xt`` (``(m, D)`` codes, NaN blanks)."""
    D = coded.n_features
    out = np.zeros(D)
    for j, c in enumerate(coded.columns):
        col = Xt[:, j]
        col = col[~np.isnan(col)]
        if c.kind == "categorical":
            known = coded.n_known(j)
            col = col[col < known].astype(np.intp)
            out[j] = float(np.argmax(np.bincount(col, minlength=known))) if col.size else 0.0
            continue
        if col.size == 0:
            v = 0.0 if c.fill is None or not np.isfinite(c.fill) else float(c.fill)
        else:
            v = float(np.median(col) if central == "median" else np.mean(col))
        if c.kind == "integer" or (col.size and np.all(col == np.round(col))):
            v = float(np.round(v))  # whole numbers in every training row stay whole
        out[j] = v
    return out


def typed_baseline(spec: str, coded, labels, X_train=None, train_pred=None) -> np.ndarray:
    """The ``(n, D)`` per-row coded baseline for ``--baseline spec`` on typed rows.

    Parameters
    ----------
    spec : {"contrast", "mean", "zero"}
    coded : CodedRows
    labels : ndarray of int, shape (n,)
        Class index each row is explained for.
    X_train : ndarray of shape (m, D), optional
        Coded ``--train`` rows (needed for ``contrast`` and ``mean``).
    train_pred : ndarray of int, shape (m,), optional
        The model's predicted class index of each training row (``contrast``).
    """
    s = str(spec).strip().lower()
    labels = np.asarray(labels, dtype=np.intp)
    n, D = labels.shape[0], coded.n_features
    if s not in TYPED_BASELINES:
        raise InputError(f"--baseline for a model that reads typed rows must be one of {', '.join(TYPED_BASELINES)} "
                         f"(a number means nothing for a categorical column), got {spec!r}.")
    if s == "zero":
        return np.tile(_column_summary(coded, np.empty((0, D)), "mean"), (n, 1))
    if X_train is None or len(X_train) == 0:
        raise InputError(f"explain on typed rows needs --train for its baseline (--baseline {s}: the typical "
                         "training row" + (" of the other classes" if s == "contrast" else "") +
                         "); or use --baseline zero.")
    Xt = np.asarray(X_train, dtype=np.float64)
    if s == "mean":
        return np.tile(_column_summary(coded, Xt, "mean"), (n, 1))
    train_pred = np.asarray(train_pred, dtype=np.intp)
    K = len(coded.classes)
    table = np.zeros((K, D))
    for k in range(K):
        other = train_pred != k
        # no training row of another class: the typical training row is the best there is
        table[k] = _column_summary(coded, Xt[other] if other.any() else Xt, "median")
    return table[labels]


def baseline_rows(coded, baseline: np.ndarray) -> list:
    """The coded baseline rows in the user's columns, ``[{column: value}, ...]`` (JSON-ready)."""
    from invaudit.models.base import to_jsonable

    frame = coded.decode(np.atleast_2d(baseline))
    names = coded.feature_names
    return [{name: to_jsonable(v) for name, v in zip(names, row)} for row in frame.itertuples(index=False)]
