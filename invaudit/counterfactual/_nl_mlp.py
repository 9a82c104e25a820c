"""Counterfactuals for networks (the differentiable form): a verified local answer.

The closest point with the target predicted (and ``p(target) >= P``) is a non-convex problem; no
polynomial method certifies its global optimum for a ReLU network in general. invaudit uses
exact backpropagation in numpy (``form.logit_grad``) for

1. starts: the row itself, and the target-class reference rows (training data, else the batch)
   nearest to it, clipped into its box and pulled toward it by bisection on the segment (each a
   verified point);
2. from each, the boundary search and SQP of :mod:`._nl_smooth` (the SQP step is exact within
   one activation region of a piecewise-linear network), and SLSQP with analytic gradients
   where that helps (L1 / Linf; L2 on smooth activations).

The closest point the estimator confirms is kept. ``exact`` is always False; what backs an
answer is the estimator's verification, the number of starts, and (L2) the local KKT residual.
"""

from __future__ import annotations

from invaudit.counterfactual._nl_common import Problem, pulled_points
from invaudit.counterfactual._nl_smooth import ScoreModel, solve_smooth

__all__ = ["solve_mlp"]


def solve_mlp(prob: Problem, *, n_pull: int = 3, polish: int = 1, maxiter: int = 100,
              progress_offset: int = 0, progress_total=None):
    """Closest verified counterfactual of every row for a DifferentiableForm (module docstring)."""
    model = ScoreModel(prob.form)
    starts = pulled_points(prob, n_pull)
    return solve_smooth(model, prob, starts=starts, method="mlp-boundary-search+sqp", maxiter=maxiter,
                        polish=polish, progress_offset=progress_offset, progress_total=progress_total)
