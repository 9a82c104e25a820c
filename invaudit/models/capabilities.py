"""Which answers invaudit can give for a form, and whether they are exact (``info``)."""

from __future__ import annotations

from dataclasses import dataclass

COMMANDS = ("counterfactual", "margin", "influence", "mislabel", "explain")


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
        caps.append(Capability("counterfactual", "yes", "partly" if k == "trees" else "no", {
            "invertible-linear": "closed-form projection in feature space, mapped back, refined in input space (KKT residual)",
            "differentiable": "boundary search and SQP with exact gradients from several starts, verified",
            "trees": "nearest leaf box (single trees, exact); MILP within a time limit (ensembles), else verified search",
            "black-box": "segment search toward target rows, bisection and local search, verified",
        }[k]))
        caps.append(Capability("margin", "yes", "partly" if k == "trees" else "no", {
            "invertible-linear": "nearest other-class point by feature-space projection refined in input space (verified upper bound)",
            "differentiable": "DeepFool-style attack (verified upper bound) and a certified lower bound",
            "trees": "nearest leaf box (single trees, exact); MILP where affordable, else bounds (ensembles)",
            "black-box": "verified boundary search (upper bound)",
        }[k]))
    from invaudit.influence import supports

    if supports(form) is not None:
        exact = "yes" if k in ("linear", "invertible-linear") else "no"
        caps.append(Capability("influence", "yes", exact,
                               "Koh & Liang influence with a leverage correction, one solve per test row"))
        caps.append(Capability("mislabel", "yes", "-", "pruned approximate leave-one-out loss (default), self-influence, loss, confidence; combined, knn, reference"
                               if k != "differentiable" else "loss and out-of-sample confidence (no self-influence for networks)"))
    else:
        caps.append(Capability("influence", "no", "-", "needs a twice-differentiable loss (LogisticRegression, MLPClassifier)"))
        caps.append(Capability("mislabel", "yes", "-", "out-of-sample confidence (default), loss; combined, knn, reference (no twice-differentiable loss)"))
    caps.append(Capability("explain", "yes", "no", "causal responsibility and multiple sufficient explanations (MultiReX); sufficiency verified"))
    return caps


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
    caps.append(Capability("explain", "yes", "no",
                           "MultiReX on the input columns (a categorical column is one part); baseline: per row the "
                           "typical --train row of the other classes; sufficiency verified with the model's predict"))
    encoded = tm.final_form is not None and tm.preprocessor is not None
    if getattr(tm, "native_categorical", False) and getattr(tm, "array_input", False):
        caps.append(Capability("mislabel", "yes", "-",
                               "out-of-sample confidence from refits on the model's own array input (default); "
                               "loss, combined, knn, reference"))
    elif encoded:
        caps.append(Capability("mislabel", "yes", "-",
                               "the final estimator's rankings on the ColumnTransformer's output (it stays fixed): "
                               + ("pruned approximate leave-one-out loss (default)" if kind == "logistic"
                                  else "out-of-sample confidence (default)") + "; combined, knn, reference"))
    for cmd in COMMANDS:
        if cmd in ("counterfactual", "margin", "explain") or (cmd == "influence" and kind is not None) \
                or (cmd == "mislabel" and any(c.command == "mislabel" for c in caps)):
            continue
        why = ("needs a ColumnTransformer in front of the final estimator" if not encoded
               else "needs a final estimator with a twice-differentiable loss (LogisticRegression, MLPClassifier)")
        caps.append(Capability(cmd, "no", "-", why))
    order = {c: i for i, c in enumerate(COMMANDS)}
    return sorted(caps, key=lambda c: order[c.command])
