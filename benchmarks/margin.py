"""Benchmark: ``invaudit margin`` solvers against ART's DeepFool, and the speed targets.

Run by hand (not by pytest), in an environment that has the ``bench`` extra, e.g.::

    python -m venv /tmp/margin-venv
    /tmp/margin-venv/bin/pip install numpy scipy scikit-learn joblib threadpoolctl packaging \
        adversarial-robustness-toolbox
    PYTHONPATH=. /tmp/margin-venv/bin/python benchmarks/margin.py

What it prints (one run):

1. Digits logistic regression (``sample_models/digits_logreg.joblib``, its test rows): invaudit's
   exact L2 margins vs ART's DeepFool (``SklearnClassifier``) — seconds per row, the speed-up,
   and the ratio ``||ART perturbation|| / invaudit margin`` over rows where ART succeeded (it can
   never be below 1: invaudit's margin is exact). ART's points are checked with ``predict``.
2. Linear L2 margins for 100,000 rows x 100 features x 10 classes (target: under 2 s).
3. The digits MLP (``sample_models/digits_mlp.joblib``): milliseconds per row (target: under
   50), every perturbation verified, and how close the certified lower bound is.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

import joblib  # noqa: E402

from invaudit.margins import margins  # noqa: E402
from invaudit.models import adapt  # noqa: E402
from invaudit.models.base import LinearForm  # noqa: E402


def _digits():
    path = ROOT / "sample_models" / "digits_test.npz"
    if path.exists():
        d = np.load(path)
        return d["X"].astype(np.float64), d["y"]
    from sklearn.datasets import load_digits

    ds = load_digits()
    return ds.data.astype(np.float64), ds.target


def _timed(fn, repeat=1):
    best, out = np.inf, None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def digits_logreg_vs_art():
    X, _ = _digits()
    clf = joblib.load(ROOT / "sample_models" / "digits_logreg.joblib")
    form = adapt(clf)
    n = X.shape[0]
    t_inv, batch = _timed(lambda: margins(form, X, norm="l2"), repeat=20)
    assert batch.exact.all()
    after = form.predict_index(X + batch.perturbation)
    assert np.all(after != batch.predicted_index)
    print("1. digits logistic regression, L2, %d rows x %d features x %d classes" % (n, X.shape[1], form.n_classes))
    print(f"   invaudit exact margins      {t_inv:9.4f} s total   {t_inv / n * 1e3:9.4f} ms/row   all verified")
    try:
        from art.attacks.evasion import DeepFool
        from art.estimators.classification import SklearnClassifier
    except Exception as err:  # the bench extra is missing
        print(f"   ART not available ({type(err).__name__}: {err}); install adversarial-robustness-toolbox")
        return
    art_clf = SklearnClassifier(model=clf, clip_values=None)
    attack = DeepFool(classifier=art_clf, max_iter=100, epsilon=1e-6, nb_grads=form.n_classes,
                      batch_size=n, verbose=False)
    t_art, adv = _timed(lambda: attack.generate(X), repeat=3)
    pred = clf.predict(X)
    ok = clf.predict(adv) != pred
    ratio = np.linalg.norm(adv - X, axis=1)[ok] / batch.margin[ok]
    print(f"   ART DeepFool                {t_art:9.4f} s total   {t_art / n * 1e3:9.4f} ms/row   "
          f"succeeded on {ok.sum()}/{n}")
    print(f"   speed-up per row            {t_art / t_inv:9.0f}x")
    print(f"   ART distance / exact margin min {ratio.min():.6f}  median {np.median(ratio):.6f}  max {ratio.max():.6f}")
    assert ratio.min() >= 1 - 1e-9, "an exact margin larger than a perturbation ART found"
    m = 100  # ART's default batch size (1): one row at a time
    one = DeepFool(classifier=art_clf, max_iter=100, epsilon=1e-6, nb_grads=form.n_classes, verbose=False)
    t_one, _ = _timed(lambda: one.generate(X[:m]))
    print(f"   ART DeepFool, batch_size=1  {t_one:9.4f} s / {m} rows {t_one / m * 1e3:9.4f} ms/row   "
          f"speed-up {t_one / m / (t_inv / n):.0f}x")


def linear_100k():
    rng = np.random.default_rng(0)
    n, D, K = 100_000, 100, 10
    from sklearn.linear_model import LogisticRegression

    Xt = rng.normal(size=(5000, D))
    yt = rng.integers(0, K, size=5000)
    Xt += 0.5 * np.eye(K, D)[yt] * 3
    clf = LogisticRegression(max_iter=300).fit(Xt, yt)
    form = LinearForm(estimator=clf, W=clf.coef_.copy(), b=clf.intercept_.copy(), link="softmax",
                      classes=clf.classes_, n_features=D)
    X = rng.normal(size=(n, D))
    t, batch = _timed(lambda: margins(form, X, norm="l2"), repeat=3)
    print(f"2. linear L2 margins, {n:,} rows x {D} features x {K} classes: {t:.3f} s "
          f"(target < 2 s); exact {batch.exact.mean():.3f}, verified {np.isfinite(batch.perturbation_norm).mean():.3f}")
    for norm in ("l1", "linf"):
        t, _ = _timed(lambda: margins(form, X, norm=norm))
        print(f"   same, {norm}: {t:.3f} s")


def digits_mlp():
    X, _ = _digits()
    est = joblib.load(ROOT / "sample_models" / "digits_mlp.joblib")
    form = adapt(est)
    n = X.shape[0]
    print(f"3. digits MLP ({est}), {n} rows")
    for norm in ("l2", "linf", "l1"):
        t, batch = _timed(lambda: margins(form, X, norm=norm))
        found = np.isfinite(batch.margin)
        after = form.predict_index(X[found] + batch.perturbation[found])
        verified = np.all(after != batch.predicted_index[found])
        print(f"   {norm:4s} {t / n * 1e3:7.2f} ms/row (target < 50)   found {found.sum()}/{n}   "
              f"verified {verified}   median lower/upper {np.median(batch.lower_bound[found] / batch.margin[found]):.3f}")


if __name__ == "__main__":
    digits_logreg_vs_art()
    linear_100k()
    digits_mlp()
