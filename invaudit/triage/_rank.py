"""Which training labels to check first (Koh & Liang 2017, case study 4 / section 5.4).

A reviewer can check only a fraction of the labels; every method here scores every training
row (higher: more suspect) and the rows are checked in that order.

Methods
-------
``loo-loss``
    The row's approximate leave-one-out log loss: its in-sample loss corrected by
    self-influence. Removing row ``i`` moves the parameters by one Newton step on the objective
    without it (the leverage-corrected removal of :mod:`invaudit.influence`), which moves the
    row's own scores by ``Z_i^T delta_theta_i``; the loss is evaluated exactly at the moved
    scores. This is the approximate leave-one-out of Rahnama Rad & Maleki (2020, JRSS-B,
    "A scalable estimate of the out-of-sample prediction error via approximate leave-one-out"),
    and to first order ``loss_i + s_i g_i^T H^-1 g_i``. One factorisation for all rows.
``self-influence``
    ``s_i g_i^T H^-1 g_i``: the first-order change of the row's own loss if it were removed
    (Koh & Liang, sec. 5.4).
``loss``
    The in-sample log loss ``-log p(given label)`` from the model's own ``predict_proba``.
``confidence``
    Out-of-sample probabilities from k-fold refits of a clone of the model, scored in the
    manner of confident learning (Northcutt, Jiang & Chuang 2021, JAIR, "Confident learning:
    estimating uncertainty in dataset labels", sec. 3.1): per-class thresholds ``t_j`` (the
    mean probability of class ``j`` over rows labelled ``j``); a row is flagged when its most
    probable class among those above their thresholds is not its given label. Flagged rows
    come first, each group ordered by self-confidence ``p(given label)``.
``pruned-loo-loss`` (the default)
    Mislabelled rows pull the model towards themselves, which hides them and their like.
    So: (1) approximate leave-one-out probabilities and losses for every row from one
    factorisation; (2) the number of suspects is estimated as confident learning does — the
    off-diagonal count of the confident joint on those leave-one-out probabilities — and that
    many rows with the highest leave-one-out loss are set aside; (3) the model is refitted once
    without them (preprocessing fixed); (4) every row is scored by its out-of-sample loss under
    that model: exactly for the rows set aside, by approximate leave-one-out for the others.
    The benchmark (benchmarks/mislabel.py) shows it best on every bundled data set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from invaudit.errors import InputError, UnsupportedModelError
from invaudit.models.base import ModelForm, class_indices, to_jsonable

__all__ = ["METHODS", "DEFAULT_METHOD", "FALLBACK_METHOD", "MislabelRanking", "rank_mislabels",
           "recall_at", "found_curve", "truth_mask", "available_methods"]

METHODS = ("pruned-loo-loss", "loo-loss", "self-influence", "loss", "confidence")
#: Needs the Hessian of a convex, twice-differentiable objective (logistic regression).
_OBJECTIVE_METHODS = ("pruned-loo-loss", "loo-loss", "self-influence")
#: The best method on the bundled data sets (benchmarks/mislabel.py; see the README).
DEFAULT_METHOD = "pruned-loo-loss"
#: The default for models without a twice-differentiable loss.
FALLBACK_METHOD = "confidence"


@dataclass(frozen=True, eq=False)
class MislabelRanking:
    """Every training row scored, most suspect first.

    ``order``: row numbers, most suspect first (each row exactly once). ``score``,
    ``given``, ``suggested``: per row, indexed by row number (class *indices*); ``suggested``
    is the most probable class under the probabilities the method used (equal to ``given``
    when the row looks right). ``classes`` turns indices into the model's labels."""

    order: np.ndarray
    score: np.ndarray
    given: np.ndarray
    suggested: np.ndarray
    method: str
    exact: bool
    classes: np.ndarray = field(repr=False)
    notes: tuple = ()

    def records(self, top: Optional[int] = None) -> list[dict]:
        """DESIGN.md's mislabel results, most suspect first (``top=None``: every row)."""
        rows = self.order if top is None else self.order[:max(0, int(top))]
        return [{"train_row": int(i), "score": float(self.score[i]),
                 "given_label": to_jsonable(self.classes[self.given[i]]),
                 "suggested_label": to_jsonable(self.classes[self.suggested[i]])}
                for i in rows]

    def fixed_labels(self, n: int) -> np.ndarray:
        """Class indices with the ``n`` most suspect rows relabelled to their suggestion."""
        if n < 0:
            raise InputError("--fix must be non-negative.")
        y = self.given.copy()
        top = self.order[:n]
        y[top] = self.suggested[top]
        return y

    def summary(self, truth: Optional[np.ndarray] = None,
                fractions: Sequence[float] = (0.01, 0.05, 0.1, 0.2)) -> dict:
        """``method``, ``exact``, ``n_rows``, ``notes``; with ``truth`` (a mask of the rows whose
        label is wrong) also ``n_wrong`` and ``found_after_checking`` (fraction of wrong labels
        found after checking each fraction of the data)."""
        d = {"method": self.method, "exact": bool(self.exact), "n_rows": int(self.order.size),
             "notes": list(self.notes)}
        if truth is not None:
            truth = np.asarray(truth, dtype=bool)
            d["n_wrong"] = int(truth.sum())
            d["found_after_checking"] = {f"{f:g}": v for f, v in
                                         recall_at(self.order, truth, fractions).items()}
        return d


def available_methods(form: ModelForm) -> tuple:
    """The methods ``form``'s model supports (objective methods need logistic regression)."""
    from invaudit.influence import supports

    if supports(form) == "logistic":
        return METHODS
    return ("loss", "confidence")


def _why_not(form) -> str:
    if form.kind == "differentiable":
        return ("an MLPClassifier's loss is not convex and its Hessian too large to factorise "
                "once for every row")
    return "this model has no twice-differentiable loss"


def rank_mislabels(form: ModelForm, X, y, *, method: str = "auto", objective=None,
                   n_folds: int = 5, seed: int = 0,
                   progress: Optional[Callable[[int, int], None]] = None) -> MislabelRanking:
    """Score every training row by how likely its label is wrong.

    Parameters
    ----------
    form : ModelForm
        The model (any form; the objective methods need LogisticRegression).
    X : (n, D) training rows in input units.
    y : (n,) given labels as class indices.
    method : one of :data:`METHODS`, or ``"auto"``: :data:`DEFAULT_METHOD` where available,
        :data:`FALLBACK_METHOD` otherwise.
    objective : an :class:`~invaudit.influence.Objective` already built for these rows
        (reused, so influence and triage share one factorisation); built here if needed.
    n_folds, seed : the k-fold refits of ``confidence``.
    progress : ``progress(done, total)`` after each refit of ``confidence``.

    Raises
    ------
    UnsupportedModelError
        An objective method for a model without a twice-differentiable loss, or ``loss`` /
        ``confidence`` for a model without ``predict_proba``.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != int(form.n_features):
        raise InputError(f"the training data must have {form.n_features} features, got shape {X.shape}.")
    y = np.asarray(y)
    if y.shape != (X.shape[0],):
        raise InputError("the training data needs one label per row.")
    y = y.astype(np.intp)
    K = len(form.classes)
    if y.size and (y.min() < 0 or y.max() >= K):
        raise InputError(f"training labels must be class indices in 0..{K - 1}.")
    avail = available_methods(form)
    notes = []
    if method == "auto":
        method = DEFAULT_METHOD if DEFAULT_METHOD in avail else FALLBACK_METHOD
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    if method not in avail:
        raise UnsupportedModelError(
            f"--method {method} needs LogisticRegression (optionally after preprocessing); "
            f"{_why_not(form)}, so it gets {' and '.join(avail)}."
        )
    if avail != METHODS:
        notes.append(f"{_why_not(form)}: only loss and confidence are available")

    if method in _OBJECTIVE_METHODS:
        if objective is None:
            from invaudit.influence import build_objective

            objective = build_objective(form, X, y)
        notes.extend(objective.notes)
        if method == "self-influence":
            score = objective.self_influence("first-order")
            proba = objective.train_proba
            exact = bool(objective.exact)
        else:
            est = "leverage-corrected" if "leverage-corrected" in objective.estimates else "first-order"
            score = objective.loo_losses(est)
            proba = objective.loo_proba(est)
            exact = False
            notes.append(f"approximate leave-one-out ({est}: one Newton step per row, from one "
                         "factorisation)")
            if method == "pruned-loo-loss":
                score, proba, n_pruned = _pruned(objective, score, proba, y, est)
                notes.append(f"{n_pruned} suspects (confident learning's estimate) set aside and "
                             "the model refitted without them; every row scored out of sample")
    elif method == "loss":
        proba = _proba(form, X)
        score = -np.log(np.clip(proba[np.arange(y.size), y], 1e-300, 1.0))
        exact = True
        notes.append("in-sample loss: rows the model has memorised look clean")
    else:
        proba = out_of_fold_proba(form, X, y, n_folds=n_folds, seed=seed, progress=progress)
        score = confident_learning_score(proba, y)
        exact = True
        notes.append(f"out-of-sample probabilities from {n_folds}-fold refits of a clone of the "
                     f"model (seed {seed})")
    score = np.asarray(score, dtype=np.float64)
    order = np.lexsort((np.arange(y.size), -score))
    suggested = np.argmax(proba, axis=1).astype(np.intp)
    return MislabelRanking(order=order, score=score, given=y, suggested=suggested, method=method,
                           exact=exact, classes=np.asarray(form.classes), notes=tuple(notes))


def _pruned(objective, loo_loss, loo_proba, y, est):
    """Steps (2)-(4) of ``pruned-loo-loss`` (see the module docstring)."""
    n, K = loo_proba.shape
    n_suspects = int(np.sum(confident_learning_score(loo_proba, y) >= 1.0))
    order = np.lexsort((np.arange(n), -loo_loss))
    # never set aside so many rows of a class that fewer than two remain
    counts = np.bincount(y, minlength=K)
    cls = y[order]
    onehot = np.eye(K, dtype=np.int64)[cls]
    seen = np.cumsum(onehot, axis=0)[np.arange(n), cls]
    allowed = order[seen <= counts[cls] - 2]
    suspects = np.sort(allowed[:n_suspects])
    if suspects.size == 0:
        return loo_loss, loo_proba, 0
    clean = objective.refitted(suspects)
    keep = np.ones(n, dtype=bool)
    keep[suspects] = False
    est_c = "leverage-corrected" if "leverage-corrected" in clean.estimates else "first-order"
    score = np.empty(n)
    proba = np.empty((n, K))
    score[keep] = clean.loo_losses(est_c)
    proba[keep] = clean.loo_proba(est_c)
    score[suspects] = clean.losses(objective.X[suspects], y[suspects])
    proba[suspects] = clean.proba(objective.X[suspects])
    return score, proba, int(suspects.size)


def _proba(form, X) -> np.ndarray:
    if not form.has_proba:
        raise UnsupportedModelError("this model has no predict_proba, so it has no log loss to rank by.")
    return np.asarray(form.predict_proba(X), dtype=np.float64)


def confident_learning_score(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Confident-learning suspicion (Northcutt et al. 2021, sec. 3.1): ``1 - p(given)`` plus 1
    for rows in an off-diagonal cell of the confident joint (their most probable class among
    those reaching their per-class threshold is not the given one), so flagged rows come
    first, each group by self-confidence."""
    n, K = proba.shape
    counts = np.bincount(y, minlength=K)
    sums = np.zeros(K)
    np.add.at(sums, y, proba[np.arange(n), y])
    # t_j: mean probability of class j over the rows labelled j (classes without rows: 1)
    t = np.where(counts > 0, sums / np.maximum(counts, 1), 1.0)
    above = proba >= t[None, :]
    masked = np.where(above, proba, -np.inf)
    best = np.argmax(masked, axis=1)
    flagged = above.any(axis=1) & (best != y)
    return flagged.astype(np.float64) + (1.0 - proba[np.arange(n), y])


def out_of_fold_proba(form, X, y, *, n_folds: int = 5, seed: int = 0,
                      progress: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
    """``(n, K)`` out-of-sample probabilities from stratified k-fold refits of a clone of
    ``form.estimator`` (the whole pipeline, refitted on each fold's training part)."""
    import warnings

    from sklearn.base import clone
    from sklearn.model_selection import KFold, StratifiedKFold

    if not form.has_proba:
        raise UnsupportedModelError("confidence needs predict_proba, which this model lacks.")
    n, K = X.shape[0], len(form.classes)
    if n_folds < 2:
        raise InputError("confidence needs at least 2 folds.")
    counts = np.bincount(y, minlength=K)
    present = counts[counts > 0]
    if present.size and present.min() >= n_folds:
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    else:
        splitter = KFold(n_splits=min(n_folds, n), shuffle=True, random_state=seed)
    classes = np.asarray(form.classes)
    proba = np.zeros((n, K))
    splits = list(splitter.split(X, y))
    for f, (tr, te) in enumerate(splits):  # loop over folds
        est = clone(form.estimator)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(X[tr], classes[y[tr]])
        p = np.asarray(est.predict_proba(X[te]), dtype=np.float64)
        cols = class_indices(classes, np.asarray(est.classes_))
        proba[np.ix_(te, cols)] = p
        if progress is not None:
            progress(f + 1, len(splits))
    return proba


# --- evaluation against known wrong labels ------------------------------------------------------

def truth_mask(given, true_labels) -> np.ndarray:
    """Boolean mask of the rows whose given label differs from the true one (both as class
    indices, or both as labels)."""
    given, true_labels = np.asarray(given), np.asarray(true_labels)
    if given.shape != true_labels.shape:
        raise InputError(f"--truth has {true_labels.size} labels for {given.size} training rows.")
    return given != true_labels


def found_curve(order, truth) -> np.ndarray:
    """``(n + 1,)``: the fraction of wrong labels found after checking the first ``k`` rows of
    ``order`` (``k = 0..n``); ``found_curve[k]`` against ``k / n`` is the found-vs-checked
    curve."""
    truth = np.asarray(truth, dtype=bool)
    order = np.asarray(order, dtype=np.intp)
    total = int(truth.sum())
    found = np.concatenate([[0], np.cumsum(truth[order])]).astype(np.float64)
    return found / total if total else np.zeros_like(found)


def recall_at(order, truth, fractions: Sequence[float] = (0.01, 0.05, 0.1, 0.2)) -> dict:
    """``{fraction: share of wrong labels among the first ceil(fraction * n) rows checked}``."""
    curve = found_curve(order, truth)
    n = curve.size - 1
    out = {}
    for f in fractions:
        if not 0 <= f <= 1:
            raise InputError("fractions checked must lie in [0, 1].")
        out[float(f)] = float(curve[int(np.ceil(f * n - 1e-9))])
    return out
