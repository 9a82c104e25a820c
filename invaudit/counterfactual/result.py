"""The result bundle of :func:`invaudit.counterfactual.counterfactuals`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from invaudit.models.base import to_jsonable

__all__ = ["CounterfactualBatch", "STATUSES"]

STATUSES = ("found", "already-target", "infeasible", "failed")


def _num(v):
    """A float (or int) as a JSON value; NaN and infinities become None."""
    v = float(v)
    return v if np.isfinite(v) else None


def _vec(a):
    return [None if not np.isfinite(v) else float(v) for v in a]


@dataclass(frozen=True)
class CounterfactualBatch:
    """One counterfactual per row; every array has length ``n`` (``(n, D)`` for points).

    Attributes
    ----------
    status : object array of str
        ``found``, ``already-target``, ``infeasible`` or ``failed``.
    reason : object array of str or None
        Why a row is infeasible or failed (``None`` otherwise).
    x_cf, delta : ndarray (n, D)
        The counterfactual point and ``x_cf - x`` (NaN rows where none was found).
    distance : ndarray (n,)
        ``|| weights * delta ||_norm`` (NaN where none).
    original_index, target_index, predicted_index : int arrays (n,)
        Class indices: the estimator's prediction at ``x``, the class asked for (for
        ``target="other"`` the closest class found), and the estimator's own prediction at
        ``x_cf`` (``-1`` where there is no point).
    target_probability : ndarray (n,)
        ``predict_proba(x_cf)[target]`` by the estimator (NaN without probabilities or point).
    exact : bool array (n,)
        True only when ``distance`` is within 1e-9 relative of a proven lower bound on the
        optimum (the scores' rounding included), backed by ``kkt_residual`` (or an LP duality
        gap) at most 1e-9, and the point is verified by the estimator
        (``invaudit.counterfactual.solve.EXACT_MEANS``).
    method : object array of str
    kkt_residual : ndarray (n,)
        The relative KKT residual (or LP duality gap) of the returned solution; NaN when the
        method has no certificate.
    iterations : int array (n,)
    changed : bool array (n, D)
        Features whose value differs between ``x`` and ``x_cf``.
    norm : str
        ``"l2"``, ``"l1"`` or ``"linf"``.
    """

    status: np.ndarray
    reason: np.ndarray
    x_cf: np.ndarray
    delta: np.ndarray
    distance: np.ndarray
    original_index: np.ndarray
    target_index: np.ndarray
    predicted_index: np.ndarray
    target_probability: np.ndarray
    exact: np.ndarray
    method: np.ndarray
    kkt_residual: np.ndarray
    iterations: np.ndarray
    changed: np.ndarray
    norm: str

    def __len__(self) -> int:
        return len(self.status)

    def records(self, classes, row_ids, feature_names=None) -> list[dict]:
        """The DESIGN.md result fields, one JSON-ready dict per row.

        Parameters
        ----------
        classes : array-like
            The model's ``classes_`` (labels are reported as these values).
        row_ids : sequence
            The row number each result belongs to in the user's data (e.g. after ``--rows``).
        feature_names : sequence of str or None
            Names for ``changed_features``; feature indices are used without them.
        """
        classes = np.asarray(classes)
        row_ids = list(row_ids)
        if len(row_ids) != len(self):
            raise ValueError(f"row_ids has {len(row_ids)} entries for {len(self)} results")

        def label(i):
            i = int(i)
            return None if i < 0 else to_jsonable(classes[i])

        out = []
        for i in range(len(self)):
            has_point = bool(np.all(np.isfinite(self.x_cf[i])))
            changed = np.flatnonzero(self.changed[i])
            if feature_names is not None:
                changed_features = [str(feature_names[j]) for j in changed]
            else:
                changed_features = [int(j) for j in changed]
            out.append({
                "row": to_jsonable(row_ids[i]),
                "original_class": label(self.original_index[i]),
                "target_class": label(self.target_index[i]),
                "status": str(self.status[i]),
                "counterfactual": _vec(self.x_cf[i]) if has_point else None,
                "delta": _vec(self.delta[i]) if has_point else None,
                "distance": _num(self.distance[i]),
                "norm": self.norm,
                "target_probability": _num(self.target_probability[i]),
                "predicted_class": label(self.predicted_index[i]),
                "exact": bool(self.exact[i]),
                "method": str(self.method[i]),
                "changed_features": changed_features,
                "kkt_residual": _num(self.kkt_residual[i]),
                "iterations": int(self.iterations[i]),
                "reason": None if self.reason[i] is None else str(self.reason[i]),
            })
        return out

    def columns(self, classes, row_ids, feature_names=None):
        """The fields of :meth:`records` held as columns (``invaudit.io.report.Columns``): the
        report writes the point and delta matrices in bulk, one line per row, and a table turns
        only the rows it shows into dicts."""
        from invaudit.io.report import Columns, to_json

        classes = [to_jsonable(c) for c in np.asarray(classes)]
        row_ids = list(row_ids)
        n = len(self)
        if len(row_ids) != n:
            raise ValueError(f"row_ids has {len(row_ids)} entries for {n} results")
        x_cf = np.asarray(self.x_cf, dtype=np.float64)
        has_point = np.all(np.isfinite(x_cf), axis=1) if x_cf.size else np.zeros(n, dtype=bool)
        if x_cf.ndim == 2 and x_cf.shape[1] == 0:
            has_point = np.ones(n, dtype=bool)
        names = [to_json(str(f)) for f in feature_names] if feature_names is not None else None
        changed = np.asarray(self.changed, dtype=bool).reshape(n, -1)
        changed_raw = []
        for i in range(n):
            idx = np.flatnonzero(changed[i])
            if names is None:
                changed_raw.append(to_json(idx.astype(np.int64)))
            else:
                changed_raw.append(b"[" + b",".join(names[j] for j in idx.tolist()) + b"]")
        statuses = list(STATUSES) + sorted({str(s) for s in self.status} - set(STATUSES))
        status_code = np.array([statuses.index(str(s)) for s in self.status], dtype=np.intp)
        methods, method_code = np.unique(np.asarray(self.method).astype(str), return_inverse=True)
        rows = np.asarray([to_jsonable(r) for r in row_ids], dtype=object)
        cols = Columns(n)
        if all(isinstance(r, int) for r in rows.tolist()):
            cols.add("row", "int", np.asarray(rows.tolist(), dtype=np.int64))
        else:
            cols.add("row", "obj", rows.tolist())
        cols.add("original_class", "cat", np.asarray(self.original_index, dtype=np.intp), values=classes)
        cols.add("target_class", "cat", np.asarray(self.target_index, dtype=np.intp), values=classes)
        cols.add("status", "cat", status_code, values=statuses)
        cols.add("counterfactual", "vec", x_cf.reshape(n, -1), present=has_point)
        cols.add("delta", "vec", np.asarray(self.delta, dtype=np.float64).reshape(n, -1), present=has_point)
        cols.add("distance", "num", np.asarray(self.distance, dtype=np.float64))
        cols.add("norm", "const", self.norm)
        cols.add("target_probability", "num", np.asarray(self.target_probability, dtype=np.float64))
        cols.add("predicted_class", "cat", np.asarray(self.predicted_index, dtype=np.intp), values=classes)
        cols.add("exact", "bool", np.asarray(self.exact, dtype=bool))
        cols.add("method", "cat", method_code.reshape(-1), values=[str(m) for m in methods])
        cols.add("changed_features", "raw", changed_raw)
        cols.add("kkt_residual", "num", np.asarray(self.kkt_residual, dtype=np.float64))
        cols.add("iterations", "int", np.asarray(self.iterations, dtype=np.int64))
        cols.add("reason", "obj", [None if r is None else str(r) for r in self.reason])
        return cols

    def compact(self, cols, X=None, *, form=None) -> dict:
        """Make ``cols`` (from :meth:`columns`, with any extras added) write the compact report,
        schema ``invaudit.counterfactual/2``; returns the envelope's extra top-level fields.

        What /2 writes instead of /1's lists (every /1 value is rebuilt from it bit for bit by
        :func:`invaudit.io.report.expand_report`, given the data rows ``X``):

        - ``counterfactual``: the list, or ``{"index", "value"}`` of the entries that differ
          from the input row ``x`` (bitwise), whichever is shorter;
        - ``delta``: left out where it is ``counterfactual - x`` bit for bit (checked here, row
          by row; a row where it is not keeps its ``delta``, sparse against zeros where shorter);
        - ``changed_features``: left out (the features where ``counterfactual != x``);
          ``n_changed`` counts them;
        - ``feature_importance``: ``{"gradient": k}`` where it is ``gradients[k] * delta`` bit
          for bit, ``gradients`` (top level) being the input gradients of the target's log-odds
          against the original class, one per (original, target) pair of a linear model (the
          same for every row); otherwise the list or its sparse form against zeros, ``null`` for
          a row without a point.

        ``X``: the rows the counterfactuals start from, ``(n, D)``; None (``--from`` model
        inversion: the start is not a data row) keeps ``counterfactual`` as a list, ``delta``
        (sparse where shorter) and ``changed_features``.
        """
        def bits(a):
            return np.ascontiguousarray(a, dtype=np.float64).view(np.uint64)

        n = len(self)
        x_cf = np.asarray(self.x_cf, dtype=np.float64).reshape(n, -1)
        delta = np.asarray(self.delta, dtype=np.float64).reshape(n, -1)
        has = np.all(np.isfinite(x_cf), axis=1) if x_cf.shape[1] else np.ones(n, dtype=bool)
        extra: dict = {}
        if X is None:
            cols.sparse("delta")
        else:
            X = np.asarray(X, dtype=np.float64).reshape(n, -1)
            if X.shape != x_cf.shape:
                raise ValueError(f"X has shape {X.shape} for counterfactuals of shape {x_cf.shape}")
            cols.sparse("counterfactual", base=X)
            with np.errstate(invalid="ignore"):
                same = np.all(bits(x_cf - X) == bits(delta), axis=1)
            cols.sparse("delta").leave_out("delta", rows=~has | same)
            cols.leave_out("changed_features")
            with np.errstate(invalid="ignore"):
                n_changed = np.where(has, np.sum(x_cf != X, axis=1), 0)
            cols.add("n_changed", "int", n_changed.astype(np.int64))
        if "feature_importance" in cols:
            fi = np.asarray(cols.column("feature_importance"), dtype=np.float64).reshape(n, -1)
            by_gradient = np.full(n, -1, dtype=np.intp)
            if X is not None and form is not None and getattr(form, "kind", None) == "linear":
                grads, by_gradient = _importance_gradients(form, X, fi, delta, has, self.original_index,
                                                           self.target_index)
                if grads is not None:
                    extra["gradients"] = grads
            none = np.all(np.isnan(fi), axis=1) if fi.shape[1] else np.zeros(n, dtype=bool)
            sparse = cols.sparse("feature_importance").encoder("feature_importance")

            def fi_enc(lo, hi):
                return [b'{"gradient":%d}' % g if g >= 0 else (b"null" if blank else v)
                        for v, blank, g in zip(sparse(lo, hi), none[lo:hi].tolist(), by_gradient[lo:hi].tolist())]

            cols.encode_with("feature_importance", fi_enc)
        return extra


def _importance_gradients(form, X, fi, delta, has, original_index, target_index):
    """For a linear model: one input gradient per (original, target) class pair, and for each row
    the gradient ``g`` with ``fi == g * delta`` bit for bit (``-1`` where none is, or no point).
    Returns ``(gradients (m, D) or None, (n,) index into them)``."""
    from invaudit.counterfactual._nl_smooth import ScoreModel

    n = fi.shape[0]
    o = np.asarray(original_index, dtype=np.intp)
    t = np.asarray(target_index, dtype=np.intp)
    which = np.full(n, -1, dtype=np.intp)
    go = np.flatnonzero(has & (o >= 0) & (t >= 0) & (o != t))
    if go.size == 0:
        return None, which
    pairs, first, inverse = np.unique(np.stack([o[go], t[go]], axis=1), axis=0, return_index=True,
                                      return_inverse=True)
    inverse = inverse.reshape(-1)
    rep = go[first]
    G = np.asarray(ScoreModel(form).margin_grad(X[rep], t[rep], o[rep]), dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        ok = np.all((G[inverse] * delta[go]).view(np.uint64) == np.ascontiguousarray(fi[go]).view(np.uint64), axis=1)
    used = np.unique(inverse[ok])
    if used.size == 0:
        return None, which
    renumber = np.full(len(pairs), -1, dtype=np.intp)
    renumber[used] = np.arange(used.size)
    which[go[ok]] = renumber[inverse[ok]]
    return G[used], which
