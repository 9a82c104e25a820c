"""Which answers invaudit can give for a form, and whether they are exact (``info``)."""

from __future__ import annotations

from dataclasses import dataclass

COMMANDS = ("counterfactual", "margin", "influence", "mislabel", "explain")
#: mislabel's default (issue 18), as each model's capability line names it
_COMBINED = "combined (default: model + neighbours + forest + kernel + Gaussian mixtures)"
_COMBINED_NO_MODEL = "combined (default, without a model source: neighbours + forest + kernel + Gaussian mixtures)"
_OTHERS = (f"{_COMBINED}; out-of-sample confidence, loss, knn, reference, mixture, boosting (no "
           "twice-differentiable loss)")


@dataclass(frozen=True)
class Capability:
    command: str
    available: str  # "yes" | "no" | "not yet"
    exact: str      # "yes" | "no" | "partly" | "-"
    method: str

    def as_dict(self) -> dict:
        return {"command": self.command, "available": self.available, "exact": self.exact,
                "method": self.method}


def capabilities(form) -> list:
    """One :class:`Capability` per command for ``form`` (what this version implements)."""
    k = form.kind
    caps = []
    if k == "linear":
        caps.append(Capability("counterfactual", "yes", "yes",
                               "closed form (sigmoid), Newton in the K-1 subspace (softmax), QP dual / LP"))
        caps.append(Capability("margin", "yes", "yes", "exact distance to the nearest point of another class"))
    else:
        caps.append(Capability("counterfactual", "yes", _exactness(form, "counterfactual"), {
            "quadratic": "nearest point where the target's quadratic score wins (one-dimensional dual of the "
                         "one-constraint QCQP, exact for L2; confidence as a log-odds level set); SLSQP beyond, "
                         "with the dual lower bound",
            "neighbors": _knn_method(form, "counterfactual"),
            "invertible-linear": "closed-form projection in feature space, mapped back, refined in input space (KKT residual)",
            "differentiable": "boundary search and SQP with exact gradients from several starts, verified",
            "kernel": "boundary search, SQP and SLSQP on the one-vs-one machines with exact kernel gradients, from the "
                      "row, pulled training rows and support vectors; verified with predict",
            "trees": "nearest leaf box (single trees, exact); MILP within a time limit (ensembles), else verified search",
            "black-box": "segment search toward target rows, bisection and local search, verified",
        }[k]))
        caps.append(Capability("margin", "yes", _exactness(form, "margin"), {
            "quadratic": "nearest point where another class's quadratic score wins (exact one-dimensional dual, "
                         "L2; L1/Linf: verified point and L2 lower bound)",
            "neighbors": _knn_method(form, "margin"),
            "invertible-linear": "nearest other-class point by feature-space projection refined in input space (verified upper bound)",
            "differentiable": "DeepFool-style attack (verified upper bound) and a certified lower bound",
            "kernel": "nearest other-class point by the counterfactual search (verified upper bound); Lipschitz "
                      "lower bound (rbf, sigmoid, linear kernels)",
            "trees": "nearest leaf box (single trees, exact); MILP where affordable, else bounds (ensembles)",
            "black-box": "verified boundary search (upper bound)",
        }[k]))
    supports = _influence_support

    if k == "neighbors":
        caps.append(Capability("influence", "yes", "yes",
                               "exact leave-one-out: each test row's votes re-counted without each of its k "
                               "nearest training rows (the only rows whose removal changes it)"))
        caps.append(Capability("mislabel", "yes", "yes",
                               f"{_COMBINED}; loss, confidence, knn, reference, mixture, boosting; --method loo-loss: "
                               "exact leave-one-out loss (each row's vote among its k nearest other rows)"))
    elif supports(form) == "kernel":
        caps.append(Capability("influence", "yes", "no",
                               "Koh & Liang influence on a smoothed-hinge surrogate of the SVM in its kernel feature "
                               "space (sec. 4.1) with a leverage correction; --verify-loo refits the surrogate"))
        caps.append(Capability("mislabel", "yes", "-",
                               f"{_COMBINED}; out-of-sample confidence, loss, knn, reference, mixture, boosting (no "
                               "self-influence for SVMs yet)" if form.has_proba else
                               f"{_COMBINED_NO_MODEL} (fitted without probability=True); knn, reference, mixture, boosting"))
    elif supports(form) is not None:
        exact = "yes" if k in ("linear", "invertible-linear") else "no"
        caps.append(Capability("influence", "yes", exact,
                               "Koh & Liang influence with a leverage correction, one solve per test row"))
        caps.append(Capability("mislabel", "yes", "-", f"{_COMBINED}; pruned-loo-loss, self-influence, loss, "
                               "confidence, knn, reference, mixture, boosting"
                               if k != "differentiable" else f"{_COMBINED}; loss and out-of-sample confidence (no "
                               "self-influence for networks), knn, reference, mixture, boosting"))
    elif k == "quadratic":
        why = _quadratic_refusal(form)
        caps.append(Capability("influence", "yes", "yes",
                               "exact leave-one-out: each class's Gaussian refitted in closed form without each row "
                               "(rank-one updates of the class means and (co)variances; GaussianNB's var_smoothing "
                               "recomputed)") if why is None else Capability("influence", "no", "-", why))
        caps.append(Capability("mislabel", "yes", "yes",
                               f"{_COMBINED}; loss, confidence, knn, reference, mixture, boosting; --method loo-loss: exact "
                               "leave-one-out loss (each row scored by the model refitted without it in closed form)")
                    if why is None else Capability("mislabel", "yes", "-", _OTHERS))
    elif k == "trees" and _tree_influence(form):
        caps.append(Capability("influence", "yes", "no",
                               f"{_tree_influence(form)}: leaf values recomputed without each row (Sharchilev et al. "
                               "2018); --verify-loo refits"))
        caps.append(Capability("mislabel", "yes", "-", _OTHERS))
    else:
        caps.append(Capability("influence", "no", "-", _tree_refusal(form) if k == "trees" else
                               "needs a twice-differentiable loss (LogisticRegression, MLPClassifier), an SVM, a "
                               "tree model, k-nearest neighbours, GaussianNB or QDA"))
        caps.append(Capability("mislabel", "yes", "-", _OTHERS if form.has_proba else  # e.g. LinearSVC, RidgeClassifier
                               f"{_COMBINED_NO_MODEL} (no predict_proba); knn, reference, mixture, boosting"))
    caps.append(Capability("explain", "yes", "no", "causal responsibility and multiple sufficient explanations (MultiReX); sufficiency verified"))
    if k == "black-box" and _predict_only(form):
        caps = _predict_only_capabilities(caps, prefix=not getattr(form, "composite", None))
    if getattr(form, "composite", None):  # Voting, Stacking, Bagging, AdaBoost, CalibratedClassifierCV
        from invaudit.models.composite import composite_capabilities

        caps = composite_capabilities(form, caps, Capability)
    return caps


def _predict_only(form) -> bool:
    from invaudit.models.blackbox import is_predict_only

    return is_predict_only(form)


def _predict_only_capabilities(caps: list, prefix: bool = True) -> list:
    """A black box with only ``predict`` (hard voting over non-tree members, OutputCodeClassifier,
    NearestCentroid with a non-Euclidean metric): one-hot scores, so what needs a score, a
    probability or a loss is out, and what needs only the predicted class runs."""
    from invaudit.models.blackbox import PREDICT_ONLY

    po = f"{PREDICT_ONLY}: " if prefix else ""  # a composite's note already says it
    rows = {
        "counterfactual": Capability("counterfactual", "yes", "no",
                                     f"{po}segment search toward --train rows of the target class, "
                                     "bisection on the predicted class and local search, verified with predict "
                                     "(no --confidence: no probabilities)"),
        "margin": Capability("margin", "yes", "no",
                             f"{po}bisection toward rows and random points predicted otherwise "
                             "(verified upper bound only; no lower bound from queries)"),
        "influence": Capability("influence", "no", "-",
                                f"{PREDICT_ONLY}: the model exposes no scores, probabilities or loss to attribute "
                                "to training rows"),
        "mislabel": Capability("mislabel", "yes", "-",
                               f"{po}{_COMBINED_NO_MODEL}; knn, reference, mixture, boosting; loss and confidence "
                               "need predict_proba"),
        "explain": Capability("explain", "yes", "no",
                              "MultiReX on the predicted class (no --confidence: no probabilities); sufficiency "
                              "verified with predict"),
    }
    return [rows.get(c.command, c) for c in caps]


def _influence_support(form):
    """``invaudit.influence.supports(form)``; a light-loaded linear form answers from its saved
    state, so ``info`` neither unpickles the estimator nor imports the influence code (issue 16)."""
    light = getattr(form, "influence_support", None)
    if light is not None:
        return light()
    from invaudit.influence import supports

    return supports(form)


def _tree_influence(form):
    from invaudit.influence._trees import tree_method

    return tree_method(form)


def _tree_refusal(form) -> str:
    from invaudit.influence._trees import tree_refusal

    return tree_refusal(form) or "not covered"


def _quadratic_refusal(form):
    """Why GaussianNB / QDA influence does not apply to ``form`` (None: it does)."""
    from invaudit.influence._quadratic import quadratic_refusal

    return quadratic_refusal(form)


def _exactness(form, command: str) -> str:
    """The ``exact`` column of counterfactual / margin for forms other than linear."""
    k = form.kind
    if k == "trees":
        return "partly"
    if k == "quadratic":
        # margins: exact in L2 (a box that cuts the optimum makes it a bound); counterfactuals also
        # need the pair optimum to qualify (always for two classes)
        return "yes" if command == "margin" or len(form.classes) == 2 else "partly"
    if k == "neighbors":
        return "yes" if form.exact_geometry and form.k == 1 else "no"
    return "no"


def _knn_method(form, command: str) -> str:
    if form.kind != "neighbors":
        return ""
    if form.exact_geometry and form.k == 1:
        return ("nearest Voronoi cell of " + ("another class" if command == "margin" else "the target class")
                + ": one QP (L2) / LP (L1, Linf) per candidate cell, pruned by bisector bounds (exact)")
    if form.exact_geometry:
        return ("bisection toward the nearest training rows of " + ("another class" if command == "margin" else
                "the target class") + ", then a walk over order-k Voronoi cells (verified; never farther than "
                "the nearest such row" + ("; lower bound for uniform votes)" if form.weights == "uniform" else ")"))
    return (f"{form.metric} metric: bisection toward the nearest training rows of the "
            + ("other classes" if command == "margin" else "target class") + " (verified upper bound)")


def tabular_capabilities(tm, typed_commands=("counterfactual", "margin")) -> list:
    """What a model that reads typed rows (a ColumnTransformer pipeline) can be asked today."""
    final = getattr(tm.final_form, "kind", None)
    exact_linear = final == "linear" and tm.linear_decomposition() is not None
    caps = [
        Capability("counterfactual", "yes", "yes" if exact_linear else "no",
                   "every category combination that can matter, each solved exactly in the numeric columns "
                   "(linear final estimator)" if exact_linear else
                   "search over category changes near the row plus the numeric columns, verified with predict"),
        Capability("margin", "yes", "yes" if exact_linear else "no",
                   "the same mixed search with target 'any other class'" + (" (exact)" if exact_linear else
                                                                             " (verified upper bound)")),
    ]
    from invaudit.influence import supports

    kind = supports(tm.final_form) if tm.final_form is not None and tm.preprocessor is not None else None
    if kind is not None:
        caps.append(Capability("influence", "yes", "yes" if kind == "logistic" else "no",
                               "Koh & Liang influence on the final estimator's parameters (the ColumnTransformer "
                               "stays fixed), rows in the user's columns"))
    elif tm.final_form is not None and tm.preprocessor is not None and _tree_influence(tm.final_form):
        kind = "trees"
        caps.append(Capability("influence", "yes", "no",
                               f"{_tree_influence(tm.final_form)} on the ColumnTransformer's output (it stays fixed): "
                               "leaf values recomputed without each row; rows in the user's columns"))
    elif tm.final_form is not None and tm.preprocessor is not None and tm.final_form.kind == "neighbors":
        kind = "neighbors"
        caps.append(Capability("influence", "yes", "yes",
                               "exact leave-one-out by recounting the votes on the ColumnTransformer's output (it "
                               "stays fixed); rows in the user's columns"))
    elif tm.final_form is not None and tm.preprocessor is not None and tm.final_form.kind == "quadratic" \
            and _quadratic_refusal(tm.final_form) is None:
        kind = "quadratic"
        caps.append(Capability("influence", "yes", "yes",
                               "exact leave-one-out: each class's Gaussian refitted in closed form on the "
                               "ColumnTransformer's output (it stays fixed); rows in the user's columns"))
    caps.append(Capability("explain", "yes", "no",
                           "MultiReX on the input columns (a categorical column is one part); baseline: per row the "
                           "typical --train row of the other classes; sufficiency verified with the model's predict"))
    encoded = tm.final_form is not None and tm.preprocessor is not None
    if getattr(tm, "native_categorical", False) and (getattr(tm, "array_input", False)
                                                     or getattr(tm, "category_dtypes", None)):
        caps.append(Capability("mislabel", "yes", "-",
                               f"{_COMBINED}, its model source out-of-sample confidence from refits on the model's "
                               "own input (an array, or a DataFrame with its category dtypes); confidence, loss, knn, "
                               "reference, mixture, boosting"))
    elif encoded:
        caps.append(Capability("mislabel", "yes", "-",
                               "the final estimator's rankings on the ColumnTransformer's output (it stays fixed): "
                               f"{_COMBINED}; "
                               + ("pruned-loo-loss, self-influence, " if kind == "logistic"
                                  else "loo-loss (exact leave-one-out), " if kind == "neighbors"
                                  else "") + "confidence, loss, knn, reference, mixture, boosting"))
    for cmd in COMMANDS:
        if cmd in ("counterfactual", "margin", "explain") or (cmd == "influence" and kind is not None) \
                or (cmd == "mislabel" and any(c.command == "mislabel" for c in caps)):
            continue
        why = ("needs a ColumnTransformer in front of the final estimator" if not encoded
               else "needs a final estimator with a twice-differentiable loss (LogisticRegression, MLPClassifier), "
                    "an SVM, a tree model, k-nearest neighbours, GaussianNB or QDA")
        caps.append(Capability(cmd, "no", "-", why))
    order = {c: i for i, c in enumerate(COMMANDS)}
    return sorted(caps, key=lambda c: order[c.command])
