"""One-vs-rest probabilities with a confidence: a verified local optimum (never exact).

For ``p_k = sigmoid(s_k) / sum_j sigmoid(s_j)`` the set ``{p_t >= P}`` is not convex in the
scores, so no certificate of global optimality is available. Each row is solved by SLSQP from
the exact argmax counterfactual (the same class region, without the confidence), and the caller
verifies the point with the estimator. This is the one place that loops over rows: it only runs
for one-vs-rest models asked for a confidence, a rare combination.
"""

from __future__ import annotations

import numpy as np

from . import _dual
from ._common import _Sol

__all__ = ["solve_ovr"]


def _ovr_logp(s, t):
    """log p_t for one-vs-rest normalised sigmoids, and its gradient w.r.t. the scores."""
    from scipy.special import expit, log_expit  # lazy: scipy.special costs ~1 s of start-up

    ls = log_expit(s)
    mx = ls.max()
    lse = mx + np.log(np.exp(ls - mx).sum())
    q = np.exp(ls - lse)                 # normalised sigmoids
    dls = 1.0 - expit(s)                 # d log sigmoid(s) / ds
    grad = -q * dls
    grad[t] += dls[t]
    return ls[t] - lse, grad


def solve_ovr(A, s0, t, conf, norm, lz, uz):
    n, K = s0.shape
    p = A.shape[1]
    sol = _Sol(n, p)
    sd = 1.0 + np.abs(s0 - s0[np.arange(n), t][:, None]).max(axis=1)
    tau = 1e-10 * sd
    M = A @ A.T
    start = _dual.dual_l2(A, M, s0, t, mode="caps", cap=tau, lz=lz, uz=uz)
    target_logp = np.log(conf)
    for i in range(n):   # noqa: the documented per-row loop (non-convex, local)
        if start["state"][i] == "infeasible":
            sol.state[i] = "infeasible"
            sol.reason[i] = "no point within the constraints makes the target the predicted class"
            sol.method[i] = "slsqp-local"
            continue
        ti = int(t[i])
        oth = [j for j in range(K) if j != ti]
        Ad = A[oth] - A[ti]
        d0 = s0[i, oth] - s0[i, ti]
        need = target_logp + 1e-10 * (1.0 + abs(target_logp))

        def logp(z, i=i, ti=ti):
            return _ovr_logp(s0[i] + A @ z, ti)

        zs = np.nan_to_num(start["z"][i])
        bnds = None if lz is None else list(zip(lz[i], uz[i]))
        if norm == "l2":
            x0 = zs
            obj = (lambda v: 0.5 * v @ v, lambda v: v)
            unpack = lambda v: v  # noqa: E731
            cons = [{"type": "ineq", "fun": lambda v: logp(v)[0] - need,
                     "jac": lambda v: logp(v)[1] @ A},
                    {"type": "ineq", "fun": lambda v, d0=d0, Ad=Ad, i=i: -(d0 + Ad @ v) - tau[i],
                     "jac": lambda v, Ad=Ad: -Ad}]
        elif norm == "l1":
            x0 = np.concatenate([np.maximum(zs, 0), np.maximum(-zs, 0)])
            obj = (lambda v: v.sum(), lambda v: np.ones_like(v))
            unpack = lambda v: v[:p] - v[p:]  # noqa: E731
            cons = [{"type": "ineq", "fun": lambda v: logp(v[:p] - v[p:])[0] - need,
                     "jac": lambda v: np.concatenate([logp(v[:p] - v[p:])[1] @ A,
                                                      -(logp(v[:p] - v[p:])[1] @ A)])},
                    {"type": "ineq",
                     "fun": lambda v, d0=d0, Ad=Ad, i=i: -(d0 + Ad @ (v[:p] - v[p:])) - tau[i],
                     "jac": lambda v, Ad=Ad: np.hstack([-Ad, Ad])}]
            if lz is None:
                bnds = [(0, None)] * (2 * p)
            else:
                bnds = [(0, max(u, 0))for u in uz[i]] + [(0, max(-lo, 0)) for lo in lz[i]]
        else:
            x0 = np.concatenate([zs, [np.abs(zs).max() if p else 0.0]])
            obj = (lambda v: v[-1], lambda v: np.eye(p + 1)[-1])
            unpack = lambda v: v[:p]  # noqa: E731
            cons = [{"type": "ineq", "fun": lambda v: logp(v[:p])[0] - need,
                     "jac": lambda v: np.concatenate([logp(v[:p])[1] @ A, [0.0]])},
                    {"type": "ineq", "fun": lambda v, d0=d0, Ad=Ad, i=i: -(d0 + Ad @ v[:p]) - tau[i],
                     "jac": lambda v, Ad=Ad: np.hstack([-Ad, np.zeros((len(oth), 1))])},
                    {"type": "ineq", "fun": lambda v: np.concatenate([v[-1] - v[:p], v[-1] + v[:p]]),
                     "jac": lambda v: np.vstack([np.hstack([-np.eye(p), np.ones((p, 1))]),
                                                 np.hstack([np.eye(p), np.ones((p, 1))])])}]
            bnds = None if lz is None else list(zip(lz[i], uz[i])) + [(0, None)]
        from scipy.optimize import minimize  # lazy: ~0.5-1 s of start-up for the paths that never need it

        res = minimize(obj[0], x0, jac=obj[1], constraints=cons, bounds=bnds, method="SLSQP",
                       options={"ftol": 1e-14, "maxiter": 500})
        z = unpack(res.x)
        if lz is not None:
            z = np.clip(z, lz[i], uz[i])
        okc = logp(z)[0] >= target_logp and np.all(d0 + Ad @ z < 0)
        sol.iters[i] = int(res.nit)
        sol.method[i] = "slsqp-local"
        if okc:
            sol.z[i] = z
            sol.state[i] = "local"
        else:
            sol.state[i] = "failed"
            sol.reason[i] = f"the local solver did not reach p >= {conf:g} ({res.message})"
    return sol
