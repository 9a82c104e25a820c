"""Classifiers that answer only ``predict`` (issue 15): a hard VotingClassifier over members that
are not all decision trees, OutputCodeClassifier, NearestCentroid with a non-Euclidean metric.
They are black boxes with one-hot scores; the commands that need only the predicted class run and
are verified by the estimator, the others refuse in one sentence, and ``info`` says which."""

from __future__ import annotations

import warnings

import joblib
import numpy as np
import pytest
from sklearn.ensemble import VotingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OutputCodeClassifier
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier, NearestCentroid
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier

from invaudit.models import adapt
from invaudit.models.blackbox import PREDICT_ONLY, PredictOnlyForm, class_scores, is_predict_only
from invaudit.models.capabilities import capabilities
from invaudit.models.composite import CompositeBlackBoxForm

SCALE = np.array([1e-3, 1e3])


def _data(n=80, seed=0, classes=2):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2)) * SCALE
    z = X / SCALE
    y = (z[:, 0] + 0.5 * z[:, 1] ** 2 > 0.4).astype(int)
    if classes == 3:
        y = np.digitize(z[:, 0] + z[:, 1], [-0.7, 0.7])
    return X, y


def _hard_vote():
    return VotingClassifier([("lr", make_pipeline(StandardScaler(), LogisticRegression())),
                             ("svc", make_pipeline(StandardScaler(), SVC())),
                             ("knn", make_pipeline(StandardScaler(), KNeighborsClassifier(3)))], voting="hard")


def _cheap_hard_vote():
    """A hard vote that answers ``predict`` quickly (the query-only search asks it a few hundred
    times): a linear model, a tree and naive Bayes, none of them a pipeline."""
    return VotingClassifier([("lr", LogisticRegression()), ("dt", DecisionTreeClassifier(max_depth=4, random_state=0)),
                             ("nb", GaussianNB())], voting="hard")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict_only")
    X, y = _data()
    X3, y3 = _data(classes=3, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        joblib.dump(_cheap_hard_vote().fit(X, y), d / "hard.joblib")
        joblib.dump(OutputCodeClassifier(LogisticRegression(), random_state=0).fit(X3, y3), d / "ecoc.joblib")
    np.savez(d / "train.npz", X=X, y=y)
    np.save(d / "x.npy", X[:4])
    return d, X, y


@pytest.mark.parametrize("make, classes, composite", [
    (_hard_vote, 2, True),
    (lambda: OutputCodeClassifier(LogisticRegression(), random_state=0), 3, False),
    (lambda: NearestCentroid(metric="manhattan"), 3, False),
])
def test_predict_only_models_are_black_boxes_with_one_hot_scores(make, classes, composite):
    X, y = _data(classes=classes)
    est = make().fit(X, y)
    assert not hasattr(est, "predict_proba") and not hasattr(est, "decision_function")
    form = adapt(est)
    assert form.kind == "black-box" and is_predict_only(form) and not form.has_proba
    desc = form.describe()
    if composite:
        assert isinstance(form, CompositeBlackBoxForm) and PREDICT_ONLY in desc["composite"]
    else:
        assert isinstance(form, PredictOnlyForm) and desc["black_box"] == PREDICT_ONLY
    S = class_scores(form, X)  # one-hot rows of the estimator's own predict, at every scale
    assert S.shape == (len(X), classes)
    np.testing.assert_array_equal(S.sum(axis=1), 1.0)
    np.testing.assert_array_equal(form.classes[np.argmax(S, axis=1)], est.predict(X))
    caps = {c.command: c for c in capabilities(form)}
    assert caps["influence"].available == "no"
    assert caps["margin"].exact == "no" and "no lower bound" in caps["margin"].method
    assert caps["counterfactual"].available == caps["explain"].available == caps["mislabel"].available == "yes"
    assert "combined (default, without a model source" in caps["mislabel"].method


def test_a_meta_estimators_own_estimator_attribute_is_not_the_forms():
    # OutputCodeClassifier (and Bagging, Calibrated) keep the unfitted base in `.estimator`: only
    # a form's `.estimator` is the fitted model to ask
    X, y = _data(classes=3)
    ecoc = OutputCodeClassifier(LogisticRegression(), random_state=0).fit(X, y)
    assert hasattr(ecoc.estimator, "predict_proba") and is_predict_only(ecoc)
    assert not is_predict_only(LogisticRegression().fit(X, y))


def test_margin_is_a_verified_upper_bound_near_a_brute_force_grid(invaudit, validate, files):
    """On two features the nearest point of another class is found by brute force on a fine grid
    (in standardised units, the --scale std metric): the black box's verified margin is never
    below the true one (it is a point the estimator confirms) and within a small factor of the
    grid's (the search is not absurd)."""
    d, X, y = files
    est = joblib.load(d / "hard.joblib")
    r = invaudit("margin", d / "hard.joblib", d / "x.npy", "--rows", "0-1", "--train", d / "train.npz", "--scale", "std",
                 "--format", "json")
    assert r.code == 0, r.err
    rep = validate(r.json())
    X0 = np.load(d / "x.npy")
    sd = X.std(axis=0)
    g = np.linspace(-4, 4, 321)
    G = np.stack(np.meshgrid(g, g), axis=-1).reshape(-1, 2) * sd + X.mean(axis=0)
    pg = est.predict(G)
    h = (g[1] - g[0]) * np.sqrt(2) / 2  # a grid point is this close to any point of its cell
    for x in rep["results"]:
        assert x["exact"] is False and x["lower_bound"] is None
        p = X0[x["row"]] + np.asarray(x["perturbation"], dtype=float)
        assert est.predict(p[None])[0] == x["nearest_class"] != est.predict(X0[x["row"]][None])[0]
        assert np.isclose(x["margin"], np.linalg.norm((p - X0[x["row"]]) / sd), rtol=1e-9)
        other = pg != est.predict(X0[x["row"]][None])[0]
        d_grid = np.min(np.linalg.norm((G[other] - X0[x["row"]]) / sd, axis=1))
        assert x["margin"] <= 1.25 * d_grid + h  # close to the brute-force optimum


def test_counterfactuals_are_confirmed_by_the_hard_vote(invaudit, validate, files):
    d, X, y = files
    est = joblib.load(d / "hard.joblib")
    r = invaudit("counterfactual", d / "hard.joblib", d / "x.npy", "--rows", "0", "--target", "other",
                 "--train", d / "train.npz", "--format", "json")
    assert r.code == 0, r.err
    X0 = np.load(d / "x.npy")
    for x in validate(r.json())["results"]:
        assert x["status"] == "found" and x["exact"] is False
        assert est.predict(np.array([x["counterfactual"]]))[0] == x["target_class"] != x["original_class"]
        # never farther than the nearest training row the model puts in the target class
        Xt = X[est.predict(X) == x["target_class"]]
        assert x["distance"] <= np.min(np.linalg.norm(Xt - X0[x["row"]], axis=1)) * (1 + 1e-9)


def test_what_needs_scores_refuses_in_one_sentence_and_mislabel_ranks_without_them(invaudit, validate, files):
    d, X, y = files
    for args in (("influence", d / "hard.joblib", d / "train.npz", d / "train.npz", "--rows", "0"),
                 ("counterfactual", d / "hard.joblib", d / "x.npy", "--rows", "0", "--confidence", "0.8"),
                 ("mislabel", d / "hard.joblib", d / "train.npz", "--method", "loss")):
        r = invaudit(*args)
        assert r.code == 3 and r.err.count("\n") == 1 and "Traceback" not in r.err, r.err
    r = invaudit("mislabel", d / "hard.joblib", d / "train.npz", "--top", "5", "--format", "json")
    assert r.code == 0, r.err
    rep = validate(r.json())
    # the default (combined) ranks without a model source: the model has no predict_proba
    assert rep["summary"]["method"] == "combined" and "no predict_proba" in r.err
    assert set(rep["summary"]["source_weights"]) == {"knn", "reference", "kernel", "mixture"}
    r = invaudit("info", d / "ecoc.joblib", "--format", "json")
    assert r.code == 0, r.err
    rep = validate(r.json())
    assert rep["model"]["form"] == "black-box" and rep["model"]["black_box"] == PREDICT_ONLY
    assert rep["summary"]["black_box"] == PREDICT_ONLY
