"""Evidence about a label that does not come from the audited model (issue 18).

A model can only find the wrong labels its own assumptions let it see: a linear model fitted to
classes that are unions of clusters calls a correctly labelled row in a far cluster "suspect" and
cannot tell a flipped row inside a cluster of another class from its neighbours. Two sources of
evidence that do not share those assumptions:

``knn``
    The labels of the row's ``k`` nearest training rows, searched only among the rows *outside*
    its own fold (so neither the row nor anything fitted to it votes), in the space the model
    itself measures: after the model's own affine preprocessing where it has one
    (:attr:`~invaudit.models.base.LinearForm.pre_A`, ``pre_c``), otherwise on standardised
    features. The vote becomes a probability with a Laplace prior (one pseudo-count spread over
    the classes), so that ``k`` neighbours never give exactly 0 or 1.
``reference``
    Out-of-sample probabilities of a flexible reference model: by default the out-of-bag
    probabilities of a random forest (:func:`default_reference`, :func:`oob_proba`: one fit, each
    row judged only by trees that never saw it), or the user's own estimator, cloned and refitted
    on each fold's training part (:func:`reference_proba`; a fitted one is refitted out of fold).

Every source returns an ``(n, K)`` matrix of out-of-sample class probabilities; its label-noise
score is ``1 - p(given label)``. :func:`combine` turns several into one ranking.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from invaudit.errors import InputError
from invaudit.models.base import class_indices

__all__ = ["Evidence", "mixture_weights", "fold_splits", "knn_proba", "reference_proba", "fold_proba", "default_reference",
           "oob_proba", "is_oob_reference", "forest_rows", "model_space", "combine", "DEFAULT_K",
           "FrameRefit", "coded_rows", "frame_form", "frame_refit", "temperature", "tempered",
           "confident_joint", "noise_transition", "flip_posterior", "kernel_model", "kernel_proba",
           "kernel_features", "kernel_landmarks", "KERNEL_COMPONENTS", "TREES",
           "FOREST_ROWS", "forest_sample", "KNN_ROWS", "knn_reference", "KERNEL_ROWS",
           "kernel_fit_rows", "BOOSTING", "BOOSTING_WORK", "BOOSTING_MIN_ROUNDS", "boosting_plan",
           "boosting_model", "boosting_categories", "boosting_proba"]

#: Neighbours in ``knn`` (the issue asks for 10-20; 15 is the middle and what the README reports).
DEFAULT_K = 15


@dataclass(frozen=True, eq=False)
class Evidence:
    """One source's out-of-sample class probabilities for every training row."""

    name: str
    proba: np.ndarray
    note: str = ""

    def score(self, y: np.ndarray) -> np.ndarray:
        """Label-noise score: ``1 - p(given label)``."""
        return 1.0 - self.proba[np.arange(y.size), y]


def fold_splits(y: np.ndarray, K: int, n_folds: int, seed: int) -> list:
    """Stratified k-fold splits (plain shuffled k-fold when a class has fewer rows than folds);
    the same splits :func:`invaudit.triage.out_of_fold_proba` uses."""
    from sklearn.model_selection import KFold, StratifiedKFold

    n = y.size
    if n_folds < 2:
        raise InputError("out-of-fold evidence needs at least 2 folds.")
    counts = np.bincount(y, minlength=K)
    present = counts[counts > 0]
    dummy = np.zeros((n, 1))
    if present.size and present.min() >= n_folds:
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    else:
        splitter = KFold(n_splits=min(n_folds, n), shuffle=True, random_state=seed)
    return list(splitter.split(dummy, y))


def model_space(form, X: np.ndarray) -> tuple[np.ndarray, str]:
    """Rows in the space the model measures distance in: its own folded affine preprocessing
    where it has one, else standardised features (constant features left at 0)."""
    pre_A = getattr(form, "pre_A", None)
    if pre_A is not None:  # every form with pre_A folds it the same way (a KNN form has no preprocess())
        from invaudit.models.base import apply_folded

        return apply_folded(X, pre_A, getattr(form, "pre_c", None)), "the model's own scaling"
    cat = categorical_mask(form)
    num = np.ones(X.shape[1], dtype=bool) if cat is None else ~cat
    Xn = X[:, num]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-blank column
        mu = np.nanmean(Xn, axis=0)
        sd = np.nanstd(Xn, axis=0)
    Z = (Xn - mu) / np.where(sd > 0, sd, 1.0)
    Z = np.where(np.isfinite(Z), Z, 0.0)  # a blank sits at the column's mean
    if cat is None or not cat.any():
        return Z, "standardised features"
    # category indices one-hot, each indicator 1/sqrt(2): two different categories are one
    # standardised unit apart; a blank is no category (half a unit from every one)
    parts = [Z]
    for j in np.flatnonzero(cat):
        codes = X[:, j]
        m = int(np.nanmax(codes)) + 1 if np.isfinite(codes).any() else 0
        oh = np.zeros((X.shape[0], m))
        ok = np.isfinite(codes)
        oh[np.flatnonzero(ok), codes[ok].astype(np.intp)] = np.sqrt(0.5)
        parts.append(oh)
    return np.hstack(parts), "standardised numeric columns and one-hot categories"


#: Rows up to which ``knn`` searches every training row outside a row's fold (exact brute force);
#: past it, neighbours are searched among :func:`knn_reference`'s rows only (issue 18: brute force
#: is O(n^2); at 100,000 rows x 100 features it cost ~120 CPU-s, most of ``combined``'s 189).
KNN_ROWS = 20_000


def knn_reference(n_rows: int, max_rows: Optional[int] = KNN_ROWS, seed: int = 0) -> Optional[np.ndarray]:
    """Which rows ``knn`` may take as neighbours: None (every row) up to ``max_rows`` rows, else a
    boolean mask of ``max_rows`` rows drawn at random from the stream ``(seed, "knn")`` (without
    looking at labels; its own stream, so that a caller who drew anything else from
    ``default_rng(seed)``, such as the benchmark's flipped rows, does not get the same rows).

    The vote of the ``k`` nearest among ``m`` random rows is the vote the source gives on a data
    set of ``m`` rows (its neighbourhoods hold about ``k / m`` of the data), at a cost linear in
    ``n`` (``0.8 n m`` distances instead of ``0.8 n^2``); the rows it judges are still all of them,
    each against reference rows outside its own fold. What it costs in recall of flipped labels
    (top 10%, ``benchmarks/mislabel.py --large-quality``, 30,000 rows, 2 seeds, exact vs 20,000
    reference rows): 0.298 vs 0.284 on the ``--large`` rows (100 features, 10 classes), 0.655 vs
    0.651 on classes that are unions of clusters; with 6,000 reference rows (the share 20,000 is
    of 100,000) 0.254 and 0.595, a proxy for the loss at 100,000 rows. In ``combined`` the
    mixture weighs the source by how well it predicts the labels, as for any other source."""
    if max_rows is None or n_rows <= max_rows:
        return None
    mask = np.zeros(n_rows, dtype=bool)
    rng = np.random.default_rng((int(seed), 0x6B6E6E))  # 0x6B6E6E: "knn"
    mask[rng.choice(n_rows, size=int(max_rows), replace=False)] = True
    return mask


def knn_proba(Z: np.ndarray, y: np.ndarray, K: int, splits, *, k: int = DEFAULT_K,
              prior: float = 1.0, weights: Optional[np.ndarray] = None,
              max_rows: Optional[int] = KNN_ROWS, seed: int = 0, among: str = "fold") -> np.ndarray:
    """``(n, K)``: for each row, the smoothed label shares of its ``k`` nearest rows among the
    training rows outside its fold (Euclidean distance in ``Z``).
    ``p_j = (count_j + prior / K) / (sum_j count_j + prior)``, where a neighbour's vote counts
    ``weights[neighbour]`` (default 1, so the denominator is ``k + prior``). Past ``max_rows``
    rows the neighbours are searched among :func:`knn_reference`'s ``max_rows`` random rows
    (``seed``) outside the fold; up to it (and with ``max_rows=None``) among all of them.

    ``among="others"``: the ``k`` nearest among *every other* row (leave-one-out; ``splits`` is
    not used), or every other reference row past ``max_rows``. A vote fits nothing, so the row
    itself never voting is all that out-of-fold guards; the folds only take a fifth of the
    candidates away. On the development sets (not the benchmark's; 8 sets x 3 seeds) it raised
    the source's recall of flipped labels in the top 10% from .597 to .608 (``combined``: .713
    to .714); on the benchmark's clustered set from .392 to .428 (issue 18 C2 report)."""
    from sklearn.neighbors import NearestNeighbors

    n = y.size
    counts = np.zeros((n, K))
    ref = knn_reference(n, max_rows, seed)
    if among == "others":
        cand = np.arange(n) if ref is None else np.flatnonzero(ref)
        kk = min(k, cand.size - 1)
        if kk < 1:
            raise InputError("the knn source needs at least two rows.")
        nn = NearestNeighbors(n_neighbors=kk + 1, algorithm="brute").fit(Z[cand])
        idx = cand[nn.kneighbors(Z, return_distance=False)]  # (n, kk + 1)
        own = idx == np.arange(n)[:, None]
        # drop the row itself wherever it came (a duplicate may come first), else the farthest
        drop = np.where(own.any(axis=1), own.argmax(axis=1), kk)
        keep = np.ones(idx.shape, dtype=bool)
        keep[np.arange(n), drop] = False
        idx = idx[keep].reshape(n, kk)
        vote = np.ones(idx.shape) if weights is None else weights[idx]
        np.add.at(counts, (np.repeat(np.arange(n), kk), y[idx].ravel()), vote.ravel())
        counts *= k / kk
        return (counts + prior / K) / (counts.sum(axis=1, keepdims=True) + prior)
    if among != "fold":
        raise ValueError(f"among must be 'fold' or 'others', not {among!r}")
    for tr, te in splits:  # loop over folds
        if ref is not None:
            tr = np.asarray(tr)
            tr = tr[ref[tr]]  # the reference rows of the fold's training part
        kk = min(k, tr.size)
        nn = NearestNeighbors(n_neighbors=kk, algorithm="brute").fit(Z[tr])
        idx = nn.kneighbors(Z[te], return_distance=False)
        lab = y[tr][idx]  # (n_te, kk)
        vote = np.ones(idx.shape) if weights is None else weights[tr][idx]
        rows = np.repeat(np.arange(te.size), kk)
        c = np.zeros((te.size, K))
        np.add.at(c, (rows, lab.ravel()), vote.ravel())
        counts[te] = c * (k / kk)
    return (counts + prior / K) / (counts.sum(axis=1, keepdims=True) + prior)


#: Trees of the default forest (the ``reference`` random forest).
TREES = {"reference": 100}

#: Rows each tree of a default forest is grown on, at most (half the rows up to 10,000 rows).
FOREST_ROWS = 5_000


def forest_sample(n_rows: int):
    """``max_samples`` of the default forests: every row up to 20 rows, half the rows up to
    ``2 * FOREST_ROWS``, then :data:`FOREST_ROWS` rows. The bound keeps a tree's cost flat as
    the data grow (fully grown trees cost ~``m log m`` in their ``m`` rows; at 100,000 rows
    half the rows would be ten times the trees of 10,000); every row is then out of bag for
    more trees, not fewer (95 of 100 at 100,000 rows)."""
    if n_rows < 20:
        return None
    return 0.5 if n_rows <= 2 * FOREST_ROWS else FOREST_ROWS


def default_reference(n_rows: int, seed: int = 0, n_jobs: int = -1):
    """The default reference model: a random forest whose out-of-bag probabilities are the
    ``reference`` evidence (:func:`oob_proba`: one fit, no refits). ``TREES["reference"]`` (100)
    fully grown trees, each on a bootstrap sample of half the rows: every row is out of bag for
    about 60 of them (``100 * exp(-1/2)``), so its probabilities are averages over many trees
    that never saw it, at the cost of about 50 trees on all rows. Fully grown trees follow
    clusters and curved boundaries a linear model cannot; a flipped label moves only the leaves
    it lands in. Category-index columns are read one-hot (:func:`forest_rows`). Chosen over
    gradient boosting refitted on 5 folds, the first default: on every development set (not the
    benchmark's) it found more flipped labels, at a fraction of the cost (README, issue 18).
    It had 200 trees until ``combined`` gained a second forest (extremely randomised trees, since
    replaced by the ``mixture`` source): half the trees cost about 0.01 recall alone and half the
    time (10,000 x 50 rows, 10 classes: ~10 CPU-s for 200)."""
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=TREES["reference"], max_samples=forest_sample(n_rows),
                                  bootstrap=True, oob_score=True, n_jobs=n_jobs, random_state=seed)


#: Landmark rows of the ``kernel`` source's Nystroem feature map (at most half the rows). Was 300:
#: 200 costs half as much and changed ``combined``'s recall by less than one flipped row on every
#: development set.
KERNEL_COMPONENTS = 200


def kernel_landmarks(n_rows: int) -> int:
    """Landmark rows of the ``kernel`` source's map for ``n_rows`` rows: :data:`KERNEL_COMPONENTS`,
    at most half the rows (at least one)."""
    return max(1, min(KERNEL_COMPONENTS, n_rows // 2))


def kernel_features(Z: np.ndarray, seed: int = 0) -> np.ndarray:
    """``(n, m)``: the ``kernel`` source's features of every row, the Nystroem approximation of
    the Gaussian (RBF) kernel on the standardised rows ``Z`` with :func:`kernel_landmarks` rows
    drawn with ``seed`` as landmarks (scikit-learn's ``Nystroem``, ``gamma = 1 / n_features``).

    Fitted *once* on all rows, not per fold: the map reads no labels (the scaling and the
    landmarks' kernel matrix are functions of the rows alone), so a held-out row's features say
    nothing about its label; per fold it cost five fits and five transforms of the same rows."""
    from sklearn.kernel_approximation import Nystroem
    from sklearn.preprocessing import StandardScaler

    Zs = StandardScaler().fit_transform(Z)
    return Nystroem(n_components=kernel_landmarks(Z.shape[0]), random_state=seed).fit_transform(Zs)


#: Rows up to which every fold's ``kernel`` model is fitted on all of the fold's training part;
#: past it, on :func:`kernel_fit_rows` (about this many rows, reweighted), issue 18.
KERNEL_ROWS = 20_000

#: Rows of every class a bounded ``kernel`` fit keeps in expectation, at least (all of a smaller class).
KERNEL_CLASS_ROWS = 500


def kernel_fit_rows(y: np.ndarray, K: int, max_rows: Optional[int] = KERNEL_ROWS,
                    seed: int = 0) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """The rows the ``kernel`` source's folds are fitted on: None (every row) up to ``max_rows``
    rows; past it ``(mask, weight)``, each row kept with probability ``pi = max(max_rows / n,
    KERNEL_CLASS_ROWS / count(its label))`` (at most 1) drawn from the stream ``(seed, "ker")``,
    and weighted ``1 / pi`` in the fit.

    The weighted loss of the kept rows is an unbiased estimate of the loss of all rows, so the
    fit approximates the full one with the same balance of data and penalty (``C``) and the same
    class priors, while a rare class keeps all its rows (a class missing from a fold's fit would
    get probability 0 for every row). Every L-BFGS iteration reads every fitted row, so the
    fits cost about ``max_rows / n`` of the full ones; every held-out row is still judged. What
    it costs in recall of flipped labels (top 10%, ``benchmarks/mislabel.py --large-quality``,
    30,000 rows, 2 seeds, all rows vs 20,000): 0.409 vs 0.403 on the ``--large`` rows (100
    features, 10 classes), 0.638 vs 0.636 on classes that are unions of clusters; fitted on
    6,000 rows (the share 20,000 is of 100,000) 0.377 and 0.615."""
    n = y.size
    if max_rows is None or n <= max_rows:
        return None
    counts = np.bincount(y, minlength=K).astype(np.float64)
    pi = np.minimum(1.0, np.maximum(max_rows / n, KERNEL_CLASS_ROWS / np.maximum(counts, 1.0)))
    rng = np.random.default_rng((int(seed), 0x6B6572))  # 0x6B6572: "ker"
    keep = rng.random(n) < pi[y]
    return keep, 1.0 / pi[y]


def kernel_model(n_rows: int = 0, seed: int = 0):
    """The ``kernel`` source of ``combined``: a logistic regression (``C = 1``) on
    :func:`kernel_features`, refitted out of fold (:func:`kernel_proba`). It draws smooth curved
    boundaries (concentric shells, moons, round clusters) that a linear model cannot and that
    axis-aligned trees and a vote of neighbours approximate only in steps; its errors are unlike
    theirs, which is what a mixture needs. Every setting is scikit-learn's default or a size,
    none tuned on the benchmark: ``gamma = 1 / n_features`` on standardised features (a typical
    squared distance ``2 D`` gives ``exp(-2)``), ``C = 1``, scikit-learn's tolerance, warm
    starts (``n_rows`` and ``seed`` are kept for callers; the map takes them)."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=1000, warm_start=True)


def kernel_proba(Z: np.ndarray, y: np.ndarray, K: int, splits, *, seed: int = 0,
                 progress: Optional[Callable[[int, int], None]] = None, jobs: Optional[int] = None,
                 scheduler=None, max_rows: Optional[int] = KERNEL_ROWS) -> np.ndarray:
    """``(n, K)`` out-of-fold probabilities of :func:`kernel_model` on :func:`kernel_features`
    of the rows ``Z`` (the space of :func:`model_space`), on the same folds as ``knn``.

    The folds run in turn in this process, BLAS on one thread (the default forests run beside
    it on threads of their own), each fit *warm-started* from the previous fold's coefficients
    and run to scikit-learn's tolerance: at 10,000 rows x 10 classes 148 L-BFGS iterations in
    all instead of 263 (~2.3 instead of ~3.8 CPU-s, with the shared map). A warm start begins
    from a fit that saw the fold's held-out rows; the optimiser then moves to the fold's own
    optimum and stops at the same tolerance as a cold start (there, mean ``p(given)`` of the
    flipped rows 0.08744 warm, 0.08740 cold, 0.08737 converged to 1e-9). ``jobs`` and
    ``scheduler`` do not apply (the folds depend on each other); the answer is the same
    wherever the caller runs. Past ``max_rows`` rows each fold is fitted on the reweighted rows
    of :func:`kernel_fit_rows` in its training part (``max_rows=None``: all rows)."""
    from sklearn.exceptions import ConvergenceWarning

    from invaudit.influence._parallel import single_threaded_blas

    F = kernel_features(Z, seed)
    proba = np.zeros((y.size, K))
    fit_rows = kernel_fit_rows(y, K, max_rows, seed)
    last = None  # (classes, coef_, intercept_) of the previous fold
    with single_threaded_blas(), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for i, (tr, te) in enumerate(splits):  # loop over folds: each starts where the last stopped
            tr, te = np.asarray(tr), np.asarray(te)
            sw = None
            if fit_rows is not None:  # past max_rows: the kept rows of the training part, reweighted
                tr = tr[fit_rows[0][tr]]
                sw = fit_rows[1][tr]
            est = kernel_model(y.size, seed)
            if last is not None and np.array_equal(last[0], np.unique(y[tr])):
                est.coef_, est.intercept_ = last[1].copy(), last[2].copy()
            est.fit(F[tr], y[tr], sample_weight=sw)
            last = (est.classes_, est.coef_, est.intercept_)
            proba[np.ix_(te, est.classes_.astype(np.intp))] = est.predict_proba(F[te])
            if progress is not None:
                progress(i + 1, len(splits))
    return proba


#: The ``boosting`` source (``--method boosting``; issue 18): scikit-learn's HistGradientBoosting,
#: bounded. A larger learning rate than scikit-learn's 0.1 and at most 30 rounds instead of 100,
#: 32 bins instead of 255, and early stopping on a tenth of each fold's own training part
#: (scored by the log loss, stopped after 5 rounds without gain). On the development sets
#: (README) this bounded model ranked flipped labels as well as the default one inside
#: ``combined`` (mean recall .714 vs .715), at a fraction of the cost. Not part of ``combined``
#: since: beside the other five sources it added +0.001 mean recall on the development sets.
BOOSTING = {"learning_rate": 0.3, "max_iter": 30, "max_bins": 32, "early_stopping": True,
            "validation_fraction": 0.1, "n_iter_no_change": 5}

#: Work of one fold's fit, at most, in rows x features x trees (a round grows one tree per class,
#: one in all for two classes): the rounds are capped so that the fold's training rows fit
#: (at 10,000 rows x 50 features x 10 classes: 6 rounds, ~0.5 CPU-s a fold); when even
#: :data:`BOOSTING_MIN_ROUNDS` rounds would not, the fold is fitted on a random subset of its
#: training rows that does. Every benchmark and development set gets all 30 rounds.
BOOSTING_WORK = 25_000_000

#: Rounds a bounded ``boosting`` fit runs at least (rows are subsampled before rounds drop below).
BOOSTING_MIN_ROUNDS = 5


def boosting_plan(n_fit: int, n_features: int, n_classes: int) -> tuple[int, int]:
    """``(rounds, rows)`` of one fold's ``boosting`` fit on ``n_fit`` training rows:
    ``rounds = min(30, BOOSTING_WORK // (n_fit * n_features * trees))`` (``trees``: one per class
    and round, one for two classes), at least :data:`BOOSTING_MIN_ROUNDS`; ``rows`` is ``n_fit``,
    or fewer when even that many rounds exceed :data:`BOOSTING_WORK`."""
    trees = 1 if n_classes <= 2 else int(n_classes)
    per_round = max(int(n_features), 1) * trees
    rounds = BOOSTING["max_iter"] if n_fit <= 0 else BOOSTING_WORK // (int(n_fit) * per_round)
    rounds = int(min(BOOSTING["max_iter"], rounds))
    if rounds >= BOOSTING_MIN_ROUNDS:
        return rounds, int(n_fit)
    return BOOSTING_MIN_ROUNDS, int(max(1, min(n_fit, BOOSTING_WORK // (BOOSTING_MIN_ROUNDS * per_round))))


def boosting_model(rounds: int = BOOSTING["max_iter"], seed: int = 0, categorical=None):
    """The ``boosting`` source's model: a ``HistGradientBoostingClassifier`` with
    :data:`BOOSTING` and ``rounds`` rounds at most (``categorical``: a boolean mask of the
    category-index columns it splits on as categories)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    params = dict(BOOSTING, max_iter=int(rounds))
    return HistGradientBoostingClassifier(random_state=seed, categorical_features=categorical, **params)


def boosting_categories(form, X: np.ndarray) -> Optional[np.ndarray]:
    """The category-index columns of the rows that the ``boosting`` model reads as categories:
    those of :func:`categorical_mask` with fewer categories than its bins (the rest are read as
    their index), else None."""
    cat = categorical_mask(form, X)
    if cat is None or not cat.any():
        return None
    for j in np.flatnonzero(cat):
        codes = X[:, j]
        ok = np.isfinite(codes)
        if ok.any() and np.max(codes[ok]) >= BOOSTING["max_bins"] - 1:
            cat[j] = False
    return cat if cat.any() else None


def boosting_proba(X: np.ndarray, y: np.ndarray, K: int, splits, *, seed: int = 0,
                   categorical: Optional[np.ndarray] = None,
                   progress: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
    """``(n, K)`` out-of-fold probabilities of :func:`boosting_model` on the rows ``X`` as they
    are (blanks are its missing values), on the same folds as ``knn``: each fold's model is
    fitted on the fold's training part (:func:`boosting_plan`: all of it, or a random subset
    drawn with ``seed`` when the work bound asks) and predicts the held-out part.

    OpenMP runs on one thread here (the fits run beside the forests' threads, which keep the
    other core busy; the folds run in turn), so the answer is the same wherever it runs.
    A fold whose classes are too small for a stratified validation split is fitted without
    early stopping. Why boosting beside the two forests: it grows trees on the residuals of
    the others, so it follows a class made of several clusters differently from bagged trees
    fitted to the labels themselves (README)."""
    from threadpoolctl import threadpool_limits

    n, D = X.shape
    rng = np.random.default_rng(seed)
    proba = np.zeros((n, K))
    with threadpool_limits(limits=1, user_api="openmp"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, (tr, te) in enumerate(splits):  # loop over folds
            tr, te = np.asarray(tr), np.asarray(te)
            rounds, rows = boosting_plan(tr.size, D, K)
            fit = tr if rows >= tr.size else np.sort(rng.choice(tr, size=rows, replace=False))
            est = boosting_model(rounds, seed, categorical)
            try:
                est.fit(X[fit], y[fit])
            except ValueError:  # a class too small for the stratified validation split
                est = boosting_model(rounds, seed, categorical).set_params(early_stopping=False)
                est.fit(X[fit], y[fit])
            proba[np.ix_(te, est.classes_.astype(np.intp))] = est.predict_proba(X[te])
            if progress is not None:
                progress(i + 1, len(splits))
    return proba


def is_oob_reference(estimator) -> bool:
    """True for a bagged forest that gives out-of-bag probabilities (``oob_score=True``)."""
    return bool(getattr(estimator, "oob_score", False)) and bool(getattr(estimator, "bootstrap", False)) \
        and hasattr(estimator, "n_estimators")


def forest_rows(form, X: np.ndarray) -> np.ndarray:
    """The rows as the default forest reads them: as they are, except category-index columns
    (:func:`coded_rows`), which become one indicator per category (a blank: none)."""
    cat = categorical_mask(form)
    if cat is None or not cat.any():
        return X
    parts = [X[:, ~cat]]
    for j in np.flatnonzero(cat):
        codes = X[:, j]
        m = int(np.nanmax(codes)) + 1 if np.isfinite(codes).any() else 0
        oh = np.zeros((X.shape[0], m))
        ok = np.isfinite(codes)
        oh[np.flatnonzero(ok), codes[ok].astype(np.intp)] = 1.0
        parts.append(oh)
    return np.hstack(parts)


def oob_proba(estimator, X: np.ndarray, y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """``(n, K)`` out-of-bag probabilities of one fit of a clone of a bagged forest: each row's
    probabilities averaged over the trees whose bootstrap sample left it out, so no tree that
    saw the row (or its label) votes on it. A row no tree left out (possible only with very few
    trees) gets the class shares of the training labels."""
    from sklearn.base import clone

    est = clone(estimator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, classes[y])
    P = np.asarray(est.oob_decision_function_, dtype=np.float64)
    K = len(classes)
    proba = np.zeros((y.size, K))
    proba[:, class_indices(classes, np.asarray(est.classes_))] = P
    bad = ~np.isfinite(proba).all(axis=1) | (proba.sum(axis=1) <= 0)
    if bad.any():
        proba[bad] = np.bincount(y, minlength=K) / y.size
    return proba


def sample_weight_param(estimator) -> Optional[str]:
    """The fit parameter that passes row weights to ``estimator`` (``"sample_weight"``, or
    ``"<last step>__sample_weight"`` for a Pipeline), or None when it takes none."""
    from sklearn.pipeline import Pipeline
    from sklearn.utils.validation import has_fit_parameter

    if isinstance(estimator, FrameRefit):
        return "sample_weight" if sample_weight_param(estimator.estimator) is not None else None
    if isinstance(estimator, Pipeline):
        name, last = estimator.steps[-1]
        return f"{name}__sample_weight" if has_fit_parameter(last, "sample_weight") else None
    return "sample_weight" if has_fit_parameter(estimator, "sample_weight") else None


def _fit_fold(shared, fold):
    """One fold of an out-of-fold refit (module level, so pool workers and Dask import it by
    name): a clone of the estimator fitted on the fold's training part, its probabilities on
    the held-out part and where their columns go among the model's classes."""
    from sklearn.base import clone

    estimator, X, y, classes, sample_weight = shared
    tr, te = fold
    est = clone(estimator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_params = {} if sample_weight is None else {
            sample_weight_param(estimator): sample_weight[tr]}
        est.fit(X[tr], classes[y[tr]], **fit_params)
        p = np.asarray(est.predict_proba(X[te]), dtype=np.float64)
    return class_indices(classes, np.asarray(est.classes_)), p


def fold_proba(estimator, X: np.ndarray, y: np.ndarray, classes: np.ndarray, splits, *,
               sample_weight: Optional[np.ndarray] = None,
               progress: Optional[Callable[[int, int], None]] = None,
               jobs: Optional[int] = None, scheduler=None) -> np.ndarray:
    """``(n, K)`` out-of-fold probabilities: for each ``(train, test)`` split a clone of
    ``estimator`` fitted on ``train`` (labels as the model's class values) predicts ``test``.
    The folds run through :func:`invaudit.parallel.map_items` (``jobs`` processes, or a Dask
    ``scheduler``); each fold is the same work wherever it runs and the results are put back
    in fold order, so the answer does not depend on ``jobs`` (BLAS runs on one thread per fold
    everywhere)."""
    from invaudit import parallel

    n, K = X.shape[0], len(classes)
    splits = [(np.asarray(tr), np.asarray(te)) for tr, te in splits]
    done = None if progress is None else (lambda d, t: progress(d, len(splits)))
    fits = parallel.map_items(_fit_fold, splits, shared=(estimator, X, y, classes, sample_weight),
                              jobs=jobs, scheduler=scheduler, progress=done)
    proba = np.zeros((n, K))
    for (_, te), (cols, p) in zip(splits, fits):
        proba[np.ix_(te, cols)] = p
    return proba


def reference_proba(estimator, X: np.ndarray, y: np.ndarray, classes: np.ndarray, splits,
                    progress: Optional[Callable[[int, int], None]] = None,
                    sample_weight: Optional[np.ndarray] = None, *, jobs: Optional[int] = None,
                    scheduler=None) -> np.ndarray:
    """``(n, K)`` out-of-fold probabilities of clones of ``estimator`` refitted on each fold's
    training part (labels passed as the model's own class values; ``sample_weight``, if given,
    through :func:`sample_weight_param`); the folds on ``jobs`` processes or a Dask
    ``scheduler`` (:func:`fold_proba`)."""
    if not hasattr(estimator, "predict_proba"):
        raise InputError(f"the reference model ({type(estimator).__name__}) has no predict_proba.")
    return fold_proba(estimator, X, y, classes, splits, sample_weight=sample_weight,
                      progress=progress, jobs=jobs, scheduler=scheduler)


def mixture_weights(probas, y: np.ndarray, *, iters: int = 500, tol: float = 1e-10,
                    floor: float = 1e-6) -> np.ndarray:
    """Weights ``w`` (on the simplex) of the mixture ``sum_s w_s P_s`` that maximise the
    likelihood of the given labels, ``sum_i log sum_s w_s P_s[i, y_i]``, by EM (the objective
    is concave in ``w``; each step raises it). Every ``P_s`` is out of sample, so a source
    that merely memorised the labels cannot win weight; a flipped label costs every source
    alike, so the weights reflect how well each source predicts the labels where they are right.
    """
    L = np.stack([np.clip(P[np.arange(y.size), y], floor, 1.0) for P in probas], axis=1)
    S = L.shape[1]
    w = np.full(S, 1.0 / S)
    last = -np.inf
    for _ in range(iters):  # loop over EM steps, vectorised over rows
        mix = L @ w
        ll = float(np.log(mix).sum())
        w = (L * w / mix[:, None]).mean(axis=0)
        if ll - last < tol * max(1.0, abs(ll)):
            break
        last = ll
    return w / w.sum()


def combine(probas, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mixture of the sources' probabilities with :func:`mixture_weights`:
    ``(P, w)``."""
    w = mixture_weights(probas, y)
    P = sum(wi * Pi for wi, Pi in zip(w, probas))
    return P, w


#: Probabilities are floored here before logarithms (an out-of-bag forest gives exact zeros).
_FLOOR = 1e-12


def temperature(P: np.ndarray, y: np.ndarray, *, floor: float = _FLOOR) -> float:
    """The temperature ``tau`` of ``softmax(log P / tau)`` that maximises the likelihood of the
    given labels (a one-parameter calibration, Guo et al. 2017, on out-of-sample probabilities).

    Sources are calibrated differently: a Laplace-smoothed neighbour vote is never sure, an
    out-of-bag forest often exactly sure, an approximate leave-one-out model in between.
    The mixture weights (:func:`mixture_weights`) reward a likelihood, so a badly calibrated
    source would lose (or win) weight for its calibration rather than for how well it tells the
    classes apart; one temperature per source, fitted on the same given labels, removes that.
    Flipped labels pull every temperature up a little (towards less confident), alike for
    every source. ``tau`` is searched in ``[e^-3, e^3]`` (bounded Brent on ``log tau``)."""
    from scipy.optimize import minimize_scalar

    n = y.size
    if n == 0:
        return 1.0
    L = np.log(np.clip(P, floor, 1.0))
    rows = np.arange(n)

    def nll(log_tau: float) -> float:
        Z = L / np.exp(log_tau)
        Z = Z - Z.max(axis=1, keepdims=True)
        return float(-(Z[rows, y] - np.log(np.exp(Z).sum(axis=1))).sum())

    res = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(res.x))


def tempered(P: np.ndarray, tau: float, *, floor: float = _FLOOR) -> np.ndarray:
    """``softmax(log P / tau)`` row by row."""
    Z = np.log(np.clip(P, floor, 1.0)) / tau
    Z = Z - Z.max(axis=1, keepdims=True)
    E = np.exp(Z)
    return E / E.sum(axis=1, keepdims=True)


def confident_joint(P: np.ndarray, y: np.ndarray, K: int) -> np.ndarray:
    """``(K, K)`` calibrated confident joint ``Q[given, true]`` of confident learning (Northcutt
    et al. 2021, sec. 3.1-3.2), normalised to sum to 1: a row labelled ``i`` counts for class
    ``j``, the most probable class among those whose probability reaches their threshold
    ``t_j`` (mean ``P_j`` over rows labelled ``j``); rows reaching no threshold do not count;
    each given-label row of counts is rescaled to the number of rows with that label."""
    n = y.size
    counts = np.bincount(y, minlength=K).astype(np.float64)
    sums = np.zeros(K)
    np.add.at(sums, y, P[np.arange(n), y])
    t = np.where(counts > 0, sums / np.maximum(counts, 1.0), 1.0)
    above = P >= t[None, :]
    best = np.argmax(np.where(above, P, -np.inf), axis=1)
    ok = above.any(axis=1)
    C = np.zeros((K, K))
    np.add.at(C, (y[ok], best[ok]), 1.0)
    rs = C.sum(axis=1)
    C = np.where(rs[:, None] > 0, C / np.where(rs > 0, rs, 1.0)[:, None] * counts[:, None], 0.0)
    empty = (rs == 0) & (counts > 0)  # a label no row of which reached a threshold: all right
    C[empty, empty] = counts[empty]
    total = C.sum()
    return C / total if total > 0 else np.eye(K) / max(K, 1)


def noise_transition(P: np.ndarray, probas, y: np.ndarray, K: int) -> np.ndarray:
    """``(K, K)`` label-noise transition ``T[true, given]`` (rows sum to 1) for
    :func:`flip_posterior`.

    The confident joint of one set of probabilities mixes two things: labels that were flipped
    and classes that the probabilities confuse (rows near a boundary). Confusion near a
    boundary runs both ways between two classes; noise of the kind "class ``j`` is often
    written as ``i``" runs one way. So the off-diagonal of each source's confident joint is
    split into its symmetric part ``min(Q[i, j], Q[j, i])`` and its directed excess. A
    directed excess is taken as noise only as far as *every* source sees it (the elementwise
    minimum over the sources: confusion peculiar to one source's errors does not count); all
    other off-diagonal mass of the pooled probabilities ``P`` is spread evenly over the
    off-diagonal cells, which is the uniform-noise model under which the posterior ranks rows
    exactly as ``p(given)`` does. Under uniform noise the excesses are small and the ranking
    stays close to the mixture's; under one-way noise (a class flipped into its neighbour)
    every source sees the same excess and rows whose given label is a plausible flip of what
    they look like rise."""
    Q = confident_joint(P, y, K)
    off_mask = 1.0 - np.eye(K)
    off = Q * off_mask
    excess = None
    for Ps in probas:
        Qs = confident_joint(Ps, y, K) * off_mask
        ex = Qs - np.minimum(Qs, Qs.T)
        excess = ex if excess is None else np.minimum(excess, ex)
    if excess is None:
        excess = np.zeros((K, K))
    uniform = max(off.sum() - excess.sum(), 0.0) / max(K * (K - 1), 1)
    N = excess + uniform * off_mask          # noise joint, [given, true]
    prior = Q.sum(axis=0)                    # P(true j)
    T = N.T / np.where(prior > 0, prior, 1.0)[:, None]
    np.fill_diagonal(T, 0.0)
    T = np.minimum(T, 1.0)
    T /= np.maximum(T.sum(axis=1, keepdims=True), 1.0)  # never more than all of a class flipped
    np.fill_diagonal(T, 1.0 - T.sum(axis=1))
    return T


def flip_posterior(P: np.ndarray, y: np.ndarray, T: np.ndarray, *,
                   floor: float = _FLOOR) -> tuple[np.ndarray, np.ndarray]:
    """``(flip, post)``: for every row the posterior probability that its given label ``y`` is
    a flip, ``1 - p(y|x) T[y, y] / sum_j p(j|x) T[j, y]`` (Bayes' rule with class-conditional
    noise: the true class ``j`` has probability ``p(j|x)``, and is written as ``y`` with
    probability ``T[j, y]``), and ``post`` the ``(n, K)`` posterior of the true class,
    ``p(j|x) T[j, y] / sum_k p(k|x) T[k, y]``."""
    n = y.size
    joint = P * T[:, y].T                                   # (n, K): p(j|x) T[j, y_i]
    den = np.maximum(joint.sum(axis=1), floor)
    post = joint / den[:, None]
    flip = 1.0 - post[np.arange(n), y]
    return np.clip(flip, 0.0, 1.0), post


# --- typed rows: a model fitted on a DataFrame (pandas category dtypes) ------------------------

class FrameRefit:
    """A classifier fitted on a DataFrame, refitted and queried from numeric rows.

    The rankings work on a float array; a model fitted from pandas category dtypes
    (HistGradientBoosting with ``categorical_features="from_dtype"``) must be refitted on a
    DataFrame with the same columns and the same category dtypes. Here a categorical column of
    the array holds the index of the category among ``categories[column]`` (NaN: blank); every
    ``fit`` / ``predict_proba`` turns the array back into the DataFrame the model was fitted on:
    the columns of ``as_dtype`` as ``pd.CategoricalDtype(categories[column])``, the other
    categorical columns as their category values, numeric columns as floats (NaN stays NaN).
    ``clone`` gives an unfitted copy (the wrapped estimator cloned), so it works wherever a
    scikit-learn classifier is refitted out of fold.
    """

    _estimator_type = "classifier"

    def __init__(self, estimator=None, columns=(), categories=None, as_dtype=()):
        self.estimator = estimator
        self.columns = columns
        self.categories = categories
        self.as_dtype = as_dtype

    # scikit-learn's clone protocol
    def get_params(self, deep=False):
        return {"estimator": self.estimator, "columns": self.columns,
                "categories": self.categories, "as_dtype": self.as_dtype}

    def set_params(self, **params):
        for k, v in params.items():
            setattr(self, k, v)
        return self

    def frame(self, X: np.ndarray):
        """The DataFrame the model reads for the numeric rows ``X``."""
        import pandas as pd

        X = np.asarray(X, dtype=np.float64)
        cats = self.categories or {}
        data = {}
        for j, name in enumerate(self.columns):
            if name in cats:
                known = list(cats[name])
                codes = np.where(np.isfinite(X[:, j]), X[:, j], -1).astype(np.int64)
                if name in self.as_dtype:
                    data[name] = pd.Categorical.from_codes(codes, dtype=pd.CategoricalDtype(known))
                else:
                    values = np.empty(codes.size, dtype=object)
                    values[:] = [known[c] if c >= 0 else np.nan for c in codes]
                    data[name] = pd.Series(values, dtype=object)
                    if all(isinstance(v, (int, float, np.number)) for v in known):
                        data[name] = data[name].astype(np.float64)
            else:
                data[name] = X[:, j]
        return pd.DataFrame(data, columns=list(self.columns))

    def fit(self, X, y, sample_weight=None):
        from sklearn.base import clone

        est = clone(self.estimator)
        kw = {} if sample_weight is None else {sample_weight_param(est): sample_weight}
        est.fit(self.frame(X), y, **kw)
        self.estimator_ = est
        self.classes_ = np.asarray(est.classes_)
        return self

    def predict_proba(self, X):
        return self.estimator_.predict_proba(self.frame(X))

    def predict(self, X):
        return self.estimator_.predict(self.frame(X))


def coded_rows(tm, frame) -> np.ndarray:
    """``(n, D)`` float rows of a typed table for :class:`FrameRefit`: numeric columns as they
    are, categorical columns as the index of the value among the model's known categories (NaN
    for a blank or a category the model does not know, which is how its category dtype reads it)."""
    import pandas as pd

    out = np.empty((len(frame), len(tm.columns)))
    for j, c in enumerate(tm.columns):
        col = frame[c.name]
        if c.kind == "categorical":
            codes = pd.Categorical(col.astype(object), categories=list(c.categories)).codes
            out[:, j] = np.where(codes >= 0, codes, np.nan)
        else:
            out[:, j] = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
    return out


def frame_refit(tm, estimator=None, fitted: bool = True) -> FrameRefit:
    """``tm``'s model (or another ``estimator``: a ``--reference``) as a :class:`FrameRefit`
    reading :func:`coded_rows`; ``fitted``: ``tm``'s own fitted model answers directly."""
    cats = {c.name: tuple(c.categories) for c in tm.columns if c.kind == "categorical"}
    wrap = FrameRefit(tm.estimator if estimator is None else estimator, tuple(tm.column_names), cats,
                      tuple((tm.category_dtypes or {}).keys()))
    if fitted and estimator is None:
        wrap.estimator_ = tm.estimator
        wrap.classes_ = np.asarray(tm.classes)
    return wrap


def frame_form(tm):
    """A black-box form of ``tm``'s model over :func:`coded_rows` (``loss`` asks it directly,
    ``confidence`` and ``combined`` refit clones of it on DataFrames)."""
    from invaudit.models.base import BlackBoxForm

    return BlackBoxForm(estimator=frame_refit(tm), classes=np.asarray(tm.classes),
                        n_features=len(tm.columns), feature_names=list(tm.column_names))


def categorical_mask(form, X: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
    """Which columns of the rows are category indices (a :class:`FrameRefit` model), else None;
    with ``X``, only those a HistGradientBoosting can split on as categories (< 255 of them)."""
    est = getattr(form, "estimator", None)
    if not isinstance(est, FrameRefit):
        return None
    cats = est.categories or {}
    mask = np.array([c in cats for c in est.columns], dtype=bool)
    if X is not None:
        mask &= np.array([len(cats.get(c, ())) < 255 for c in est.columns], dtype=bool)
    return mask
