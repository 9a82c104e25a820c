"""The kernel form: a fitted ``SVC`` / ``NuSVC`` (optionally behind affine preprocessing) as its
pairwise decision functions, with exact input gradients.

scikit-learn (libsvm) fits one binary machine per pair of classes ``(i, j)``, ``i < j``, in the
order ``(0, 1), (0, 2), ..., (0, K-1), (1, 2), ...``. With ``z = A x + c`` the preprocessed row,
``s_l`` the support vectors (``support_vectors_``, grouped by class with ``n_support_``) and
``k`` the kernel, machine ``p = (i, j)`` is::

    d_p(z) = sum_{l in SV(i)} dual_coef_[j - 1, l] k(s_l, z)
           + sum_{l in SV(j)} dual_coef_[i, l]     k(s_l, z) + intercept_[p]

and a positive ``d_p`` is a vote for class ``i`` (libsvm's ``svm_predict_values``; for two classes
scikit-learn publishes ``decision_function = -d_(0,1)``, i.e. positive means ``classes_[1]``, and
flips the signs of ``dual_coef_`` / ``intercept_`` accordingly). The predicted class is the one
with most votes, ties to the lowest class index; with ``break_ties=True`` (and
``decision_function_shape="ovr"``, more than two classes) the argmax of scikit-learn's
``decision_function`` (votes plus a squashed sum of the ``d_p``). Neither is a smooth function of
``x``: solvers search boundaries and verify with the estimator's own ``predict``.

Kernels (``gamma`` is the fitted ``_gamma``)::

    rbf      k(s, z) = exp(-gamma ||z - s||^2)    grad_z = -2 gamma k (z - s)
    poly     k(s, z) = (gamma <s, z> + coef0)^degree
                                                  grad_z = degree gamma (gamma <s, z> + coef0)^(degree-1) s
    sigmoid  k(s, z) = tanh(gamma <s, z> + coef0) grad_z = gamma (1 - k^2) s
    linear   k(s, z) = <s, z>                     grad_z = s

and ``d grad_x = grad_z @ A`` through the preprocessing. A *binary* SVC with the linear kernel is
returned as a :class:`~invaudit.models.base.LinearForm` (``W = coef_ @ A``, ``b = coef_ @ c +
intercept_``, link ``"none"``): the sign of one affine score, so the linear solvers are exact on
it. ``kernel="precomputed"`` or a callable kernel give no form here (black box).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .affine import fold_affine
from .base import LinearForm, ModelForm, apply_folded
from .linear import _is_identity_function, _is_linear_affine, split_pipeline, step_name

__all__ = ["KernelForm", "from_estimator", "KERNELS"]

KERNELS = ("rbf", "poly", "sigmoid", "linear")
_CHUNK = 4_000_000  # float64 entries of a (rows x support vectors) kernel block


@dataclass(eq=False)
class KernelForm(ModelForm):
    """One-vs-one kernel machines in input units (module docstring).

    ``pairs``: ``(P, 2)`` class indices ``(i, j)``, ``i < j``, one row per machine.
    ``support_vectors``: ``(m, Dz)`` in the space the machines see (after preprocessing);
    ``support_class``: ``(m,)`` the class index of each; ``coef``: ``(m, P)`` their coefficient
    in each machine (zero outside it); ``intercept``: ``(P,)``; ``d_p > 0`` votes ``pairs[p, 0]``.
    ``pre_A``, ``pre_c``: the folded affine preprocessing (``None``: identity).
    ``break_ties``: whether ``predict`` breaks vote ties by the decision function.
    ``final_estimator``: the SVC / NuSVC itself.
    """

    estimator: Any
    classes: np.ndarray
    n_features: int
    kernel: str
    gamma: float
    coef0: float
    degree: float
    pairs: np.ndarray
    support_vectors: np.ndarray
    support_class: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    pre_A: Optional[np.ndarray] = None
    pre_c: Optional[np.ndarray] = None
    break_ties: bool = False
    final_estimator: Any = None
    feature_names: Optional[list] = None
    preprocessing: list = field(default_factory=list)
    kind: str = "kernel"

    @property
    def n_pairs(self) -> int:
        return self.pairs.shape[0]

    def describe(self) -> dict:
        d = super().describe()
        d["kernel"] = self.kernel
        d["n_support_vectors"] = int(self.support_vectors.shape[0])
        return d

    # --- maps ----------------------------------------------------------------------------------
    def preprocess(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1:
            X = X[None, :]
        return apply_folded(X, self.pre_A, self.pre_c)

    def support_vectors_input(self) -> Optional[np.ndarray]:
        """The support vectors in input units (``None`` when the preprocessing is not
        invertible, e.g. a PCA that keeps fewer components than features)."""
        if self.pre_A is None:
            return self.support_vectors.copy()
        A = self.pre_A
        if A.shape[0] != A.shape[1]:
            return None
        try:
            return np.linalg.solve(A, (self.support_vectors - self.pre_c).T).T
        except np.linalg.LinAlgError:
            return None

    def _kernel_and_slope(self, Z: np.ndarray, with_slope: bool):
        """``(Kz, Ks)``: ``Kz[n, l] = k(s_l, z_n)`` and, for the inner-product kernels, the
        derivative of ``k`` w.r.t. ``<s, z>`` (rbf: None; the gradient has its own form)."""
        S = self.support_vectors
        if self.kernel == "rbf":
            d2 = (np.einsum("nd,nd->n", Z, Z)[:, None] - 2.0 * Z @ S.T
                  + np.einsum("md,md->m", S, S)[None, :])
            return np.exp(-self.gamma * np.maximum(d2, 0.0)), None
        u = Z @ S.T
        if self.kernel == "linear":
            return u, (np.ones_like(u) if with_slope else None)
        v = self.gamma * u + self.coef0
        if self.kernel == "poly":
            Kz = v ** self.degree
            slope = self.degree * self.gamma * v ** (self.degree - 1) if with_slope else None
            return Kz, slope
        Kz = np.tanh(v)
        return Kz, (self.gamma * (1.0 - Kz * Kz) if with_slope else None)

    def pair_values(self, X) -> np.ndarray:
        """``(n, P)``: every machine's decision value ``d_p`` (positive: a vote for
        ``pairs[p, 0]``)."""
        Z = self.preprocess(X)
        out = np.empty((Z.shape[0], self.n_pairs))
        step = max(1, _CHUNK // max(1, self.support_vectors.shape[0]))
        for a in range(0, Z.shape[0], step):  # chunks of rows bound the kernel block's memory
            Kz, _ = self._kernel_and_slope(Z[a:a + step], False)
            out[a:a + step] = Kz @ self.coef + self.intercept
        return out

    def pair_jacobian(self, X):
        """``(V, J)``: ``V = pair_values(X)`` ``(n, P)`` and ``J[n, p] = d V[n, p] / d x``
        ``(n, P, D)`` in input units (exact; module docstring)."""
        Z = self.preprocess(X)
        n, Dz = Z.shape
        P = self.n_pairs
        V = np.empty((n, P))
        Jz = np.empty((n, P, Dz))
        S = self.support_vectors
        step = max(1, _CHUNK // max(1, S.shape[0] * max(P, 1)))
        for a in range(0, n, step):  # chunks of rows bound the kernel block's memory
            Zc = Z[a:a + step]
            Kz, slope = self._kernel_and_slope(Zc, True)
            V[a:a + step] = Kz @ self.coef + self.intercept
            # one BLAS product per machine: sum_l w_l C_lp s_l for every row of the chunk
            Wk = Kz if self.kernel == "rbf" else slope
            for p in range(P):  # a loop over class pairs
                cp = self.coef[:, p]
                live = cp != 0.0
                WS = (Wk[:, live] * cp[live]) @ S[live]           # (c, Dz)
                if self.kernel == "rbf":
                    # grad d_p = -2 gamma sum_l C_lp k_l (z - s_l)
                    Jz[a:a + step, p] = -2.0 * self.gamma * ((Kz[:, live] @ cp[live])[:, None] * Zc - WS)
                else:
                    Jz[a:a + step, p] = WS
        J = Jz if self.pre_A is None else Jz @ self.pre_A
        return V, J

    def votes(self, V: np.ndarray) -> np.ndarray:
        """``(n, K)`` vote counts from pair values."""
        n = V.shape[0]
        K = self.n_classes
        out = np.zeros((n, K))
        pos = V > 0
        for p, (i, j) in enumerate(self.pairs):  # a loop over class pairs
            out[:, i] += pos[:, p]
            out[:, j] += ~pos[:, p]
        return out

    def ovr_scores(self, V: np.ndarray) -> np.ndarray:
        """scikit-learn's ``decision_function`` with ``decision_function_shape="ovr"``: votes
        plus ``sum_conf / (3 (|sum_conf| + 1))`` (``sklearn.utils.multiclass._ovr_decision_function``)."""
        n = V.shape[0]
        K = self.n_classes
        conf = np.zeros((n, K))
        for p, (i, j) in enumerate(self.pairs):  # a loop over class pairs
            conf[:, i] += V[:, p]
            conf[:, j] -= V[:, p]
        return self.votes(V) + conf / (3.0 * (np.abs(conf) + 1.0))

    def predict_from_pairs(self, V: np.ndarray) -> np.ndarray:
        """Class indices as the estimator predicts them, from pair values (used by tests; the
        solvers verify with the estimator itself)."""
        if self.n_classes == 2:
            return (V[:, 0] <= 0).astype(np.intp)
        if self.break_ties:
            return np.argmax(self.ovr_scores(V), axis=1).astype(np.intp)
        return np.argmax(self.votes(V), axis=1).astype(np.intp)  # first maximum: lowest index

    def decision_function(self, X) -> np.ndarray:
        """As scikit-learn's: ``(n,)`` for two classes, else the ``ovr``-shaped ``(n, K)``."""
        V = self.pair_values(X)
        return -V[:, 0] if self.n_classes == 2 else self.ovr_scores(V)


# --- adapter ------------------------------------------------------------------------------------

def _is_svc(est) -> bool:
    from sklearn.svm import SVC, NuSVC

    return type(est) in (SVC, NuSVC)  # exact types: a subclass may override predict


def from_estimator(est) -> ModelForm | None:
    """The kernel form of a fitted ``SVC`` / ``NuSVC`` (or a Pipeline of affine steps ending in
    one), a :class:`LinearForm` for a binary linear-kernel one, or ``None``."""
    split = split_pipeline(est)
    if split is None:
        return None
    pre, final = split
    if not _is_svc(final) or not hasattr(final, "support_vectors_"):
        return None
    kernel = final.kernel
    if not isinstance(kernel, str) or kernel not in KERNELS:
        return None
    classes = getattr(final, "classes_", None)
    if classes is None or np.ndim(classes) != 1 or len(classes) < 2:
        return None
    classes = np.asarray(classes)
    if not all(_is_linear_affine(s) for s in pre):
        return None
    pre = [s for s in pre if not _is_identity_function(s)]
    S = np.asarray(final.support_vectors_, dtype=np.float64)
    if hasattr(S, "toarray"):  # fitted on a sparse matrix
        return None
    dz = S.shape[1]
    if pre:
        d = getattr(pre[0], "n_features_in_", None)
        if d is None:
            return None
        d = int(d)
        A, c = fold_affine(pre, d)
        if A.shape[0] != dz or not (np.all(np.isfinite(A)) and np.all(np.isfinite(c))):
            return None
    else:
        d, A, c = dz, None, None
    names = _feature_names(est, pre)
    preprocessing = [step_name(s) for s in pre]
    K = len(classes)
    dual = np.asarray(final.dual_coef_, dtype=np.float64)
    intercept = np.asarray(final.intercept_, dtype=np.float64)
    n_sv = np.asarray(final.n_support_, dtype=np.intp)
    if dual.shape != (K - 1, S.shape[0]) or n_sv.sum() != S.shape[0]:
        return None
    if K == 2 and kernel == "linear":
        W_z = dual @ S                         # (1, Dz): the published coef_
        b_z = intercept.copy()
        W = W_z if A is None else W_z @ A
        b = b_z if A is None else W_z @ c + b_z
        return LinearForm(estimator=est, W=W, b=b, link="none", classes=classes, n_features=d,
                          feature_names=names, preprocessing=preprocessing, final_estimator=final,
                          pre_A=A, pre_c=c)
    starts = np.concatenate([[0], np.cumsum(n_sv)])
    sv_class = np.repeat(np.arange(K), n_sv)
    pairs = np.array([(i, j) for i in range(K) for j in range(i + 1, K)], dtype=np.intp)
    coef = np.zeros((S.shape[0], len(pairs)))
    if K == 2:
        # scikit-learn flipped the signs for two classes; undo it so d > 0 votes for class 0
        coef[:, 0] = -dual[0]
        b_pairs = -intercept
    else:
        for p, (i, j) in enumerate(pairs):  # a loop over class pairs
            si = slice(starts[i], starts[i + 1])
            sj = slice(starts[j], starts[j + 1])
            coef[si, p] = dual[j - 1, si]
            coef[sj, p] = dual[i, sj]
        b_pairs = intercept.copy()
    if not (np.all(np.isfinite(coef)) and np.all(np.isfinite(b_pairs))):
        return None
    break_ties = bool(getattr(final, "break_ties", False)) and K > 2 and \
        getattr(final, "decision_function_shape", "ovr") == "ovr"
    return KernelForm(
        estimator=est, classes=classes, n_features=d, kernel=kernel,
        gamma=float(getattr(final, "_gamma", 0.0)), coef0=float(final.coef0),
        degree=float(final.degree), pairs=pairs, support_vectors=S, support_class=sv_class,
        coef=coef, intercept=b_pairs, pre_A=A, pre_c=c, break_ties=break_ties,
        final_estimator=final, feature_names=names, preprocessing=preprocessing)


def _feature_names(est, pre) -> list | None:
    for obj in [est] + list(pre[:1]):
        names = getattr(obj, "feature_names_in_", None)
        if names is not None:
            return [str(n) for n in names]
    return None
