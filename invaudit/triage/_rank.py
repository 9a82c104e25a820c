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
``pruned-loo-loss``
    Mislabelled rows pull the model towards themselves, which hides them and their like.
    So: (1) approximate leave-one-out probabilities and losses for every row from one
    factorisation; (2) the number of suspects is estimated as confident learning does — the
    off-diagonal count of the confident joint on those leave-one-out probabilities — and that
    many rows with the highest leave-one-out loss are set aside; (3) the model is refitted once
    without them (preprocessing fixed); (4) every row is scored by its out-of-sample loss under
    that model: exactly for the rows set aside, by approximate leave-one-out for the others.
    The best *model-based* method in the benchmark, and the ``model`` source of ``combined``.
``knn``
    Out-of-fold label agreement of the row's nearest training rows, in the model's own
    (scaled) input space: :func:`invaudit.triage._sources.knn_proba`. Score ``-log p(given)``.
``reference``
    Out-of-sample probabilities of a flexible reference model: by default the out-of-bag
    probabilities of one random forest (no refits), or the user's own estimator cloned and
    refitted per fold: :func:`~._sources.reference_proba`. Score ``-log p(given)``.
``mixture``
    Each class a mixture of full-covariance Gaussians (mixture discriminant analysis), scored by
    approximate leave-one-out, averaged over 1 to 4 components per class:
    :func:`invaudit.triage._mixture.mixture_proba`. Score ``-log p(given)``.
``combined`` (the default)
    A model can only find the wrong labels its assumptions let it see (issue 18: on classes
    that are unions of clusters, a linear model's ranking is barely better than its in-sample
    loss). ``combined`` asks five sources that fail in different ways: the model (``pruned-
    loo-loss`` where the model has a convex loss, else its ``confidence`` refits), the
    neighbours (``knn``), a flexible model (``reference``), a smooth non-linear model
    (``kernel``: logistic regression on Nystroem RBF features, out of fold,
    :func:`~._sources.kernel_model`; it draws the curved boundaries, such as concentric
    shells, that trees and neighbours follow only in steps) and a generative one (``mixture``:
    a class that is a union of clusters is a mixture of Gaussians, each with the directions
    that matter inside it; neighbours and trees lose those among features that carry no
    signal). Each gives out-of-sample class probabilities ``P_s``. (Gradient boosting,
    ``--method boosting``, is a source usable alone but not part of ``combined``: on the
    development sets it added +0.001 recall on average for ~20% more work; extremely randomised
    trees, a source until the mixture came, added nothing beside it on the development sets
    (.804 with, .804 without) for 3.7 of ~16 CPU-s at 10,000 rows; README.) The default forest
    and the mixture are computed on threads of their own while the other sources are computed
    (``jobs=1``: all in turn; the answer is the same). Three
    steps, none tuned on the benchmark (every constant comes from the data in hand):

    1. *Calibration.* Each ``P_s`` gets one temperature (``softmax(log P_s / tau_s)``,
       :func:`~._sources.temperature`) maximising the likelihood of the given labels: the
       sources are calibrated very differently (a smoothed neighbour vote is never sure, an
       out-of-bag forest often exactly sure), and step 2 rewards likelihood, which should
       reflect how well a source tells the classes apart, not its calibration.
    2. *Mixture.* ``P = sum_s w_s P_s`` with weights maximising the likelihood of the given
       labels (EM, :func:`~._sources.mixture_weights`). Every ``P_s`` is out of sample and a
       flipped label costs every source alike, so a source earns weight only by predicting the
       labels that are right (a linear model on clustered classes gets little, the same model
       on linearly separable classes most). (A second round with every row weighted by its
       mixture probability of being right was tried and dropped: with the forest reference it
       lost recall on the development sets, and it doubled the cost.)
    3. *Noise model.* Labels are often wrong in a structured way (a class written as its
       neighbour). With class-conditional noise ``T[j, i] = P(given i | true j)``, Bayes' rule
       gives the posterior that the given label ``i`` is right,
       ``p(i|x) T[i, i] / sum_j p(j|x) T[j, i]`` (:func:`~._sources.flip_posterior`). ``T``
       comes from confident learning's joint (Northcutt et al. 2021), which mixes flips with
       the sources' confusion near class boundaries: only the one-way excess of the joint that
       *every* source shows counts as directed noise, the rest is spread as uniform noise
       (:func:`~._sources.noise_transition`). Under uniform noise the posterior ranks rows
       exactly as ``P(given)`` does; under one-way noise a row whose label is a plausible flip
       of what it looks like rises, and one whose label no class is written as sinks.

    The score is ``-log`` of that posterior (``summary.noise_transition`` holds ``T``,
    ``summary.source_temperatures`` and ``source_weights`` the rest), each source's own
    ``-log P_s(given)`` is reported beside it (``sources``), and the suggested label is the
    most probable class under ``P``, as for every other method. (Not the posterior's: a
    plausible flip rate makes a given label a priori likely right, so the posterior's most
    probable class stays the given label for most flipped rows found; on the development sets
    it named the true class for 40% of the flipped rows in the top 10%, ``P`` for 95%.)
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from invaudit.errors import InputError, SolverError, UnsupportedModelError
from invaudit.models.base import ModelForm, to_jsonable

from . import _mixture, _sources

__all__ = ["METHODS", "DEFAULT_METHOD", "MislabelRanking", "rank_mislabels",
           "recall_at", "found_curve", "truth_mask", "available_methods"]

METHODS = ("combined", "knn", "reference", "boosting", "mixture", "pruned-loo-loss", "loo-loss", "self-influence",
           "loss", "confidence")
#: Needs the Hessian of a convex, twice-differentiable objective (logistic regression).
_OBJECTIVE_METHODS = ("pruned-loo-loss", "loo-loss", "self-influence")
#: Evidence that does not come from the audited model: every form gets them.
_MODEL_FREE_METHODS = ("combined", "knn", "reference", "boosting", "mixture")
#: The best method on the benchmark's data sets (benchmarks/mislabel.py; see the README).
DEFAULT_METHOD = "combined"


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
    #: per-source scores (``-log p(given)`` under each source), each ``(n,)``; ``combined`` only
    sources: dict = field(default_factory=dict, repr=False)
    #: the mixture weight of each source (``combined``)
    weights: dict = field(default_factory=dict)
    #: each source's ``(n, K)`` probabilities: what ``--method knn`` / ``reference`` with the
    #: same folds and seed would use
    source_proba: dict = field(default_factory=dict, repr=False)
    #: the temperature each source was calibrated with (``combined``)
    temperatures: dict = field(default_factory=dict)
    #: ``(K, K)`` estimated label-noise transition ``T[true, given]`` (``combined``)
    transition: Optional[np.ndarray] = field(default=None, repr=False)

    def records(self, top: Optional[int] = None) -> list[dict]:
        """DESIGN.md's mislabel results, most suspect first (``top=None``: every row)."""
        rows = self.order if top is None else self.order[:max(0, int(top))]
        out = [{"train_row": int(i), "score": float(self.score[i]),
                "given_label": to_jsonable(self.classes[self.given[i]]),
                "suggested_label": to_jsonable(self.classes[self.suggested[i]])}
               for i in rows]
        if self.sources:
            cols = {name: np.asarray(v, dtype=np.float64)[rows] for name, v in self.sources.items()}
            for j, r in enumerate(out):
                r["sources"] = {name: float(v[j]) for name, v in cols.items()}
        return out

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
        if self.weights:
            d["source_weights"] = {k: float(v) for k, v in self.weights.items()}
        if self.temperatures:
            d["source_temperatures"] = {k: float(v) for k, v in self.temperatures.items()}
        if self.transition is not None:
            # rows: true class, columns: given label (the model's labels, in its class order)
            d["noise_transition"] = [[float(v) for v in row] for row in self.transition]
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
    return _MODEL_FREE_METHODS + ("loss", "confidence")


def _why_not(form) -> str:
    if getattr(form, "composite", None):
        return "this model combines separately fitted models, so no single loss stands behind it"
    if form.kind == "differentiable":
        return ("an MLPClassifier's loss is not convex and its Hessian too large to factorise "
                "once for every row")
    return "this model has no twice-differentiable loss"


def rank_mislabels(form: ModelForm, X, y, *, method: str = "auto", objective=None,
                   n_folds: int = 5, seed: int = 0, reference=None, k: int = _sources.DEFAULT_K,
                   progress: Optional[Callable[[int, int], None]] = None,
                   jobs: Optional[int] = None, scheduler=None) -> MislabelRanking:
    """Score every training row by how likely its label is wrong.

    Parameters
    ----------
    form : ModelForm
        The model (any form; the objective methods need LogisticRegression).
    X : (n, D) training rows in input units.
    y : (n,) given labels as class indices.
    method : one of :data:`METHODS`, or ``"auto"``: :data:`DEFAULT_METHOD` (``combined``, every
        model).
    objective : an :class:`~invaudit.influence.Objective` already built for these rows
        (reused, so influence and triage share one factorisation); built here if needed.
    n_folds, seed : the folds of ``confidence``, ``knn`` and ``reference`` (one set of
        stratified folds, shuffled with ``seed``; the default reference model is seeded too).
    reference : the reference model of ``reference`` and ``combined``: any scikit-learn
        classifier with ``predict_proba``, fitted or not (it is cloned and refitted on every
        fold); default :func:`~._sources.default_reference` (a random forest, out of bag).
    k : neighbours of ``knn``.
    progress : ``progress(done, total)`` after each refit.
    jobs, scheduler : where the out-of-fold refits run (``confidence``, a ``--reference``'s
        folds, the ``model`` source of ``combined`` without a convex loss): ``jobs`` processes
        on this machine (None: all cores once the first fold shows the rest would take over
        half a second; 1: serial) or a Dask scheduler (:func:`invaudit.parallel.map_items`).
        The answer is the same bit for bit whatever runs the folds. ``jobs`` also sets the
        default forest's threads; ``combined`` (unless ``jobs=1`` or a ``scheduler``) fits its
        two default forests on threads of their own, one thread each, beside the other sources.

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
        method = DEFAULT_METHOD
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    if method not in avail:
        raise UnsupportedModelError(
            f"--method {method} needs LogisticRegression (optionally after preprocessing); "
            f"{_why_not(form)}, so it gets {', '.join(avail[:-1])} and {avail[-1]}."
        )
    if avail != METHODS and method not in _MODEL_FREE_METHODS:
        notes.append(f"{_why_not(form)}: only loss, confidence and the model-free methods "
                     "(combined, knn, reference, boosting, mixture) are available")

    if method in _MODEL_FREE_METHODS:
        return _rank_with_sources(form, X, y, method, objective=objective, n_folds=n_folds,
                                  seed=seed, reference=reference, k=k, progress=progress,
                                  notes=notes, jobs=jobs, scheduler=scheduler)
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
                             "the model refitted without them; every row scored out of sample" if n_pruned >= 0
                             else "the refit without the suspects failed (does TRAIN hold every class the model "
                                  "knows?); rows are ranked by the approximate leave-one-out loss alone")
    elif method == "loss":
        proba = _proba(form, X)
        score = -np.log(np.clip(proba[np.arange(y.size), y], 1e-300, 1.0))
        exact = True
        notes.append("in-sample loss: rows the model has memorised look clean")
    else:
        proba = out_of_fold_proba(form, X, y, n_folds=n_folds, seed=seed, progress=progress,
                                  jobs=jobs, scheduler=scheduler)
        score = confident_learning_score(proba, y)
        exact = True
        notes.append(f"out-of-sample probabilities from {n_folds}-fold refits of a clone of the "
                     f"model (seed {seed})")
    score = np.asarray(score, dtype=np.float64)
    order = np.lexsort((np.arange(y.size), -score))
    suggested = np.argmax(proba, axis=1).astype(np.intp)
    return MislabelRanking(order=order, score=score, given=y, suggested=suggested, method=method,
                           exact=exact, classes=np.asarray(form.classes), notes=tuple(notes))


def _log_loss(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    return -np.log(np.clip(proba[np.arange(y.size), y], 1e-300, 1.0))


def _model_evidence(form, X, y, *, objective, n_folds, seed, progress, notes, jobs=None,
                    scheduler=None):
    """The audited model's own out-of-sample probabilities: ``pruned-loo-loss``'s where the
    model has a convex loss, else ``confidence``'s k-fold refits; None without predict_proba."""
    if "pruned-loo-loss" in available_methods(form):
        if objective is None:
            from invaudit.influence import build_objective

            objective = build_objective(form, X, y)
        est = "leverage-corrected" if "leverage-corrected" in objective.estimates else "first-order"
        _, proba, n_pruned = _pruned(objective, objective.loo_losses(est), objective.loo_proba(est),
                                     y, est)
        notes.append(f"model source: pruned approximate leave-one-out ({n_pruned} suspects set "
                     "aside and the model refitted once)" if n_pruned >= 0 else
                     "model source: approximate leave-one-out (the refit without the suspects failed)")
        return proba
    if not form.has_proba:
        notes.append("model source skipped: the model has no predict_proba")
        return None
    notes.append(f"model source: out-of-fold probabilities of {n_folds} refits of the model")
    return out_of_fold_proba(form, X, y, n_folds=n_folds, seed=seed, progress=progress,
                             jobs=jobs, scheduler=scheduler)


def _rank_with_sources(form, X, y, method, *, objective, n_folds, seed, reference, k, progress,
                       notes, jobs=None, scheduler=None) -> MislabelRanking:
    """``knn``, ``reference``, ``boosting`` and ``combined`` (see the module docstring)."""
    n, K = X.shape[0], len(form.classes)
    classes = np.asarray(form.classes)
    # ``combined`` computes the default forest and the mixture on threads of their own beside the
    # other sources (tree building and BLAS release the GIL), each on one core; ``--jobs 1``: all
    # in turn here. Each source is the same computation wherever it runs, so the answer is too.
    beside = method == "combined" and scheduler is None and _threads(jobs) != 1
    Z = space = None
    if method in ("combined", "knn", "mixture"):
        Z, space = _sources.model_space(form, X)
    pool = None
    pending: dict = {}
    stack = ExitStack()
    try:
        if method == "combined":
            # BLAS on one thread for every source, whether they run in turn or beside each other
            # (a source that limits BLAS itself, on another thread, would otherwise change the
            # thread count under the one running here, and its rounding with it); made again once
            # SciPy, which brings a BLAS of its own, is imported (below)
            from invaudit.influence._parallel import single_threaded_blas

            stack.enter_context(single_threaded_blas())
        if beside:
            from concurrent.futures import ThreadPoolExecutor

            pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="invaudit-source")
            # the mixture first: numpy alone, it runs while this thread imports scikit-learn
            pending["mixture"] = pool.submit(_mixture.mixture_proba, Z, y, K, seed=seed, suspects=_suspects)
        splits = _sources.fold_splits(y, K, n_folds, seed)  # imports scikit-learn, and SciPy with it
        if method == "combined":  # SciPy's own BLAS on one thread too, until this ranking ends
            stack.enter_context(single_threaded_blas(refresh=True))
        forest_jobs = 1 if beside else _threads(jobs)
        ref = reference if reference is not None else _sources.default_reference(n, seed, n_jobs=forest_jobs)
        oob = reference is None  # the default forest: out-of-bag, one fit
        use_model = method == "combined"
        use_mixture = method in ("combined", "mixture")
        refits = 0 if method in ("knn", "mixture") else (1 if oob and method != "boosting" else len(splits))
        done = [0]
        total = refits + (n_folds if use_model and "pruned-loo-loss" not in available_methods(form)
                          and form.has_proba else 0) + (len(splits) + 1 if use_model else 0)
        if use_mixture:
            total += 2 * len(_mixture.component_counts(y, K, n_features=Z.shape[1]))

        def tick(*_):
            done[0] += 1
            if progress is not None:
                progress(min(done[0], max(total, 1)), max(total, 1))

        forests: dict = {}  # name -> estimator whose out-of-bag probabilities are a source
        if method in ("combined", "reference") and oob:
            forests["reference"] = ref
        Xf = _sources.forest_rows(form, X) if forests else None
        if pool is not None:
            pending.update({name: pool.submit(_forest_source, est, Xf, y, classes)
                            for name, est in forests.items()})
        probas = _gather_sources(form, X, y, method, objective=objective, n_folds=n_folds, seed=seed,
                                 ref=ref, oob=oob, k=k, splits=splits, forests=forests,
                                 pending=pending, Xf=Xf, Z=Z, space=space, tick=tick, notes=notes,
                                 jobs=jobs, scheduler=scheduler)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
        stack.close()
    weights: dict = {}
    temperatures: dict = {}
    transition = None
    if method == "combined":
        names = list(probas)
        temperatures = {s: _sources.temperature(probas[s], y) for s in names}
        cal = [_sources.tempered(probas[s], temperatures[s]) for s in names]
        P, w = _sources.combine(cal, y)
        weights = dict(zip(names, (float(v) for v in w)))
        transition = _sources.noise_transition(P, cal, y, K)
        _, post = _sources.flip_posterior(P, y, transition)
        score = _log_loss(post, y)
        suggested = np.argmax(P, axis=1).astype(np.intp)  # not the posterior's (docstring)
        notes.append("combined: each source calibrated by one temperature ("
                     + ", ".join(f"{s} {v:.2f}" for s, v in temperatures.items())
                     + "), mixed with weights maximising the likelihood of the given labels ("
                     + ", ".join(f"{s} {v:.2f}" for s, v in weights.items())
                     + "); rows scored by -log of the posterior that the given label is right under "
                     f"a class-conditional noise model (estimated flip rate {_flip_rate(P, y, K):.1%})")
    else:
        P = probas[method]
        score = _log_loss(P, y)
        suggested = np.argmax(P, axis=1).astype(np.intp)
    order = np.lexsort((np.arange(n), -score))
    sources = {s: _log_loss(p, y) for s, p in probas.items()} if method == "combined" else {}
    # the model source of ``combined`` is approximate leave-one-out where the model has a convex
    # loss: the mixture is then no more exact than it
    exact = not (method == "combined" and "pruned-loo-loss" in available_methods(form))
    return MislabelRanking(order=order, score=score, given=y, suggested=suggested, method=method,
                           exact=exact, classes=classes, notes=tuple(notes), sources=sources,
                           weights=weights, source_proba=dict(probas), temperatures=temperatures,
                           transition=transition)


def _forest_source(est, Xf, y, classes):
    """Out-of-bag probabilities of one default forest, or the error that stopped it (a forest
    that cannot read blanks on an older scikit-learn): ``(proba or None, message)``."""
    try:
        return _sources.oob_proba(est, Xf, y, classes), ""
    except ValueError as exc:
        return None, str(exc).split("\n")[0]


def _boosting_source(form, X, y, K, splits, seed, progress=None):
    """Out-of-fold probabilities of the bounded boosting source, or the error that stopped it:
    ``(proba or None, message)``."""
    try:
        return _sources.boosting_proba(X, y, K, splits, seed=seed, progress=progress,
                                       categorical=_sources.boosting_categories(form, X)), ""
    except ValueError as exc:
        return None, str(exc).split("\n")[0]


def _gather_sources(form, X, y, method, *, objective, n_folds, seed, ref, oob, k, splits, forests,
                    pending, Xf, Z, space, tick, notes, jobs, scheduler) -> dict:
    """Each source's out-of-sample probabilities, in a fixed order (model, knn, reference,
    kernel, mixture); the default forest and the mixture come from ``pending`` (futures of
    threads started by the caller) or are computed here."""
    n, K = X.shape[0], len(form.classes)
    classes = np.asarray(form.classes)

    def forest(name):
        if name in pending:
            res, why = pending[name].result()
        else:
            res, why = _forest_source(forests[name], Xf, y, classes)
        tick()
        if res is None and name == "reference":
            raise InputError(f"the default reference forest cannot read these rows: {why}")
        return res, why

    probas: dict = {}
    if method == "combined":
        pm = _model_evidence(form, X, y, objective=objective, n_folds=n_folds, seed=seed,
                             progress=tick, notes=notes, jobs=jobs, scheduler=scheduler)
        if pm is not None:
            probas["model"] = pm
    if method in ("combined", "knn"):
        # past KNN_ROWS rows the neighbours come from a random reference subset (issue 18)
        probas["knn"] = _sources.knn_proba(Z, y, K, splits, k=k, seed=seed, max_rows=_sources.KNN_ROWS)
        among = "" if n <= _sources.KNN_ROWS else f" among {_sources.KNN_ROWS:,} random reference rows"
        notes.append(f"knn source: labels of the {k} nearest rows{among} outside each row's fold "
                     f"({n_folds} folds, seed {seed}), on {space}")
    kernel = None
    if method == "combined":  # computed before waiting for the forests (they run beside it)
        kernel = _sources.kernel_proba(Z, y, K, splits, seed=seed, progress=tick, jobs=jobs,
                                       scheduler=scheduler, max_rows=_sources.KERNEL_ROWS)
    if method == "boosting":  # OpenMP on one thread (the answer is the same wherever it runs)
        boost, why_boost = _boosting_source(form, X, y, K, splits, seed, progress=tick)
        if boost is None:
            raise InputError(f"the boosting source cannot read these rows: {why_boost}")
        probas["boosting"] = boost
        sizes = [np.asarray(tr).size for tr, _ in splits]
        plans = [_sources.boosting_plan(m, X.shape[1], K) for m in sizes]
        rounds = max(r for r, _ in plans)
        rows = min(r for _, r in plans)
        notes.append(f"boosting source: out-of-fold probabilities of a HistGradientBoostingClassifier "
                     f"({n_folds} folds; at most {rounds} rounds, learning rate "
                     f"{_sources.BOOSTING['learning_rate']}, early stopping on a tenth of each fold's "
                     f"training rows; seed {seed})"
                     + ("" if all(r >= m for (_, r), m in zip(plans, sizes)) else
                        f"; each fold fitted on {rows:,} random rows of its training part"))
    if method in ("combined", "reference"):
        if oob:
            probas["reference"], _ = forest("reference")
            notes.append(f"reference source: out-of-bag probabilities of a {type(ref).__name__} "
                         f"({ref.n_estimators} trees, each on half the rows; seed {seed}; the default "
                         "reference)")
        else:
            probas["reference"] = _sources.reference_proba(ref, X, y, classes, splits, progress=tick,
                                                           jobs=jobs, scheduler=scheduler)
            notes.append(f"reference source: out-of-fold probabilities of {n_folds} refits of "
                         f"{type(ref).__name__}")
    if method == "combined":
        probas["kernel"] = kernel
        notes.append(f"kernel source: out-of-fold probabilities of a logistic regression on "
                     f"{_sources.kernel_landmarks(n)} Nystroem RBF features of the standardised rows "
                     f"(one map for all folds; {n_folds} folds, each warm-started from the last; seed {seed})"
                     + ("" if n <= _sources.KERNEL_ROWS else
                        f"; each fold fitted on about {_sources.KERNEL_ROWS:,} of the rows, reweighted"))
    if method in ("combined", "mixture"):
        if "mixture" in pending:
            P, ms, aside = pending["mixture"].result()
            for _ in range(2 * len(ms)):
                tick()
        else:
            P, ms, aside = _mixture.mixture_proba(Z, y, K, seed=seed, progress=tick, suspects=_suspects)
        probas["mixture"] = P
        big = int(np.bincount(y, minlength=K).max()) > _mixture.MIXTURE_CLASS_ROWS
        notes.append(f"mixture source: each class a mixture of {ms[0]} to {ms[-1]} full-covariance Gaussians "
                     f"on {space}, scored by approximate leave-one-out, the "
                     f"{len(ms)} calibrated probabilities averaged; "
                     + (f"fitted again without the {aside} suspects (confident learning's estimate) of that "
                        "first pass" if aside > 0 else "no suspects to set aside")
                     + f" (seed {seed})"
                     + (f"; each class fitted on at most {_mixture.MIXTURE_CLASS_ROWS:,} random rows, "
                        "the others scored out of sample" if big else ""))
    return probas


def _flip_rate(P, y, K) -> float:
    """Share of rows in the off-diagonal of the confident joint of ``P``."""
    Q = _sources.confident_joint(P, y, K)
    return float(1.0 - np.trace(Q))


def _threads(jobs) -> int:
    """Threads of the default forest: ``--jobs`` (all cores when not given)."""
    from invaudit.parallel import resolve_jobs

    j = resolve_jobs(jobs)
    return -1 if j is None else j


def _suspects(P, y, score=None) -> np.ndarray:
    """Confident learning's count of wrong labels on ``P`` (the off-diagonal of the confident
    joint), that many rows of highest ``-log P(given)``, never leaving a class fewer than two
    rows: the rows set aside by ``pruned-loo-loss`` and ``combined``."""
    n, K = P.shape
    n_suspects = int(np.sum(confident_learning_score(P, y) >= 1.0))
    score = _log_loss(P, y) if score is None else score
    order = np.lexsort((np.arange(n), -score))
    counts = np.bincount(y, minlength=K)
    cls = y[order]
    onehot = np.eye(K, dtype=np.int64)[cls]
    seen = np.cumsum(onehot, axis=0)[np.arange(n), cls]
    allowed = order[seen <= counts[cls] - 2]
    return np.sort(allowed[:n_suspects])


def _pruned(objective, loo_loss, loo_proba, y, est):
    """Steps (2)-(4) of ``pruned-loo-loss`` (see the module docstring)."""
    n, K = loo_proba.shape
    suspects = _suspects(loo_proba, y, loo_loss)
    if suspects.size == 0:
        return loo_loss, loo_proba, 0
    try:
        clean = objective.refitted(suspects)
    except (SolverError, ValueError):
        # e.g. TRAIN lacks one of the model's classes and the refit falls back to scikit-learn,
        # which cannot fit a class it is not shown: keep the unpruned estimate, and say so
        return loo_loss, loo_proba, -1
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
                      progress: Optional[Callable[[int, int], None]] = None,
                      jobs: Optional[int] = None, scheduler=None) -> np.ndarray:
    """``(n, K)`` out-of-sample probabilities from stratified k-fold refits of a clone of
    ``form.estimator`` (the whole pipeline, refitted on each fold's training part); the folds
    (:func:`~._sources.fold_splits`) on ``jobs`` processes or a Dask ``scheduler``, with the
    same answer whatever runs them (:func:`~._sources.fold_proba`)."""
    if not form.has_proba:
        raise UnsupportedModelError("confidence needs predict_proba, which this model lacks.")
    if n_folds < 2:
        raise InputError("confidence needs at least 2 folds.")
    K = len(form.classes)
    splits = _sources.fold_splits(y, K, n_folds, seed)
    return _sources.fold_proba(form.estimator, X, y, np.asarray(form.classes), splits,
                               progress=progress, jobs=jobs, scheduler=scheduler)


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
