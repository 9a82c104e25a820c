"""A ColumnTransformer pipeline evaluated on encoded arrays (typed rows, issue 13).

The searches on typed rows (counterfactuals and margins of non-linear final estimators, explain)
ask the pipeline about many small batches of candidate rows. Each call of the whole pipeline on a
DataFrame pays scikit-learn's input checks once per transformer (~10-20 ms, whatever the batch
size), which bound those searches. :class:`EncodedPipeline` splits the fitted pipeline at its
ColumnTransformer and evaluates a batch as

- the numeric blocks (transformers whose input columns are all numeric: imputers, scalers, ...)
  called on the batch's numeric values, one call per block;
- the categorical blocks (encoders) looked up in a :class:`CategoryCache`: their output depends
  only on the categories of a row, so each distinct category assignment is transformed once per
  search;
- the blocks stacked as the ColumnTransformer stacks them (dense ``np.hstack``, or
  ``scipy.sparse.hstack(...).tocsr()`` when it was fitted to give sparse output), weights
  applied, then the steps after it and the final estimator's own ``predict_proba`` / ``predict``.

The operations are the ColumnTransformer's own on the same inputs, so the encoded array is the
one the pipeline builds; :meth:`EncodedPipeline.build` checks that bit for bit on the rows at hand
(blanks, unknown categories and all) and returns None when it is not (a transformer that reads
column names, mixes numeric and categorical columns, pandas output, ...): the caller then keeps
the whole pipeline. The pipeline's own ``predict`` still verifies every reported answer.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["EncodedPipeline", "CategoryCache"]


def _same(a, b) -> bool:
    """Bit-for-bit equality of two encoded batches (dense or sparse; NaN equal to NaN)."""
    import scipy.sparse as sp

    if sp.issparse(a) != sp.issparse(b):
        return False
    if sp.issparse(a):
        if a.shape != b.shape or a.format != b.format:
            return False
        a, b = a.toarray(), b.toarray()
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind != "f":
        return bool(np.array_equal(a, b))
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    # -0.0 == 0.0, so compare the sign bits too
    return bool(np.all(same) and np.array_equal(np.signbit(a), np.signbit(b)))


class EncodedPipeline:
    """The pipeline of a :class:`invaudit.models.tabular.TabularModel` split at its
    ColumnTransformer (module docstring). Build it with :meth:`build`.

    ``numeric``: positions of the model's non-categorical input columns (the order of the
    ``num`` arrays the methods take); ``categorical_names``: the categorical columns the
    encoders read (the columns of the frames given to :meth:`categorical_outputs`).
    """

    def __init__(self, tm, blocks, steps, last, sparse_output, num_as_frame):
        self.tm = tm
        self.blocks = blocks            # (kind, transformer, weight, local columns, column names)
        self.steps = steps              # transformers after the ColumnTransformer
        self.last = last                # the final estimator
        self.sparse_output = sparse_output
        self.num_as_frame = num_as_frame
        self.numeric = np.array([i for i, c in enumerate(tm.columns) if c.kind != "categorical"], dtype=np.intp)
        names = []
        for kind, _, _, _, cols in blocks:
            if kind == "cat":
                names.extend(c for c in cols if c not in names)
        self.categorical_names = names
        self.n_cat_blocks = sum(1 for b in blocks if b[0] == "cat")
        self._forest = None
        self._replay = {}   # id(numeric block) -> its steps as numpy operations, where checked

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def build(cls, tm, frame) -> Optional["EncodedPipeline"]:
        """The split pipeline of ``tm``, or None where it cannot be evaluated this way or where
        its encoding of ``frame`` (rows in the model's columns, as the solvers give them to the
        pipeline) is not bit for bit the ColumnTransformer's."""
        try:
            return cls._build(tm, frame)
        except Exception:  # noqa: BLE001 -- anything unexpected: the whole pipeline answers
            return None

    @classmethod
    def _build(cls, tm, frame):
        import pandas as pd

        from .tabular import _front, _input_indices, _quiet

        ct = tm.preprocessor
        if ct is None or tm.array_input or tm.category_dtypes or tm.native_categorical:
            return None
        front = _front(tm.estimator)
        if front is None or front[0] is not ct:
            return None
        names = [str(c) for c in getattr(ct, "feature_names_in_", [])]
        if names != tm.column_names:
            return None
        idx = _input_indices(ct, names)
        kinds = {c.name: c.kind for c in tm.columns}
        num_pos = {c.name: k for k, c in enumerate(c for c in tm.columns if c.kind != "categorical")}
        weights = ct.transformer_weights or {}
        blocks = []
        for tname, trans, cols in ct.transformers_:
            if isinstance(trans, str) and trans == "drop":
                continue
            if isinstance(trans, str) or np.isscalar(cols) and not isinstance(cols, (bool, np.bool_)):
                return None   # an unfitted "passthrough" or a 1-D column selection: not this path
            use = [names[i] for i in idx.get(tname, [])]
            if not use:
                continue
            ks = {kinds[c] == "categorical" for c in use}
            if len(ks) != 1:
                return None   # one transformer reading numeric and categorical columns
            if ks.pop():
                blocks.append(("cat", trans, weights.get(tname), None, use))
            else:
                blocks.append(("num", trans, weights.get(tname), np.array([num_pos[c] for c in use]), use))
        final = tm.final_estimator
        steps, last = [], final
        if hasattr(final, "steps"):
            steps = [s for _, s in final.steps[:-1] if s is not None and not (isinstance(s, str) and s == "passthrough")]
            last = final.steps[-1][1]
        if any(isinstance(s, str) for s in steps):
            return None
        sparse_output = bool(getattr(ct, "sparse_output_", False))
        X = frame[tm.column_names].reset_index(drop=True)
        with _quiet():
            want = ct.transform(X)
        import scipy.sparse as sp

        if not (isinstance(want, np.ndarray) or sp.issparse(want)):
            return None   # pandas / polars output (set_output): the final estimator sees names
        num = cls._numeric_values(tm, X)
        cat_frame = X[[c for c in tm.column_names if kinds[c] == "categorical"]]
        for as_frame in (False, True):   # arrays when the blocks give the same bits, else frames
            self = cls(tm, blocks, steps, last, sparse_output, as_frame)
            try:
                got = self.encode(num, self.categorical_outputs(cat_frame))
            except Exception:  # noqa: BLE001 -- a block that needs its column names
                continue
            if _same(got, want):
                # numeric blocks of imputers and scalers as numpy operations, where each gives its
                # transformer's own bits on these rows
                for kind, trans, _, local, cols in blocks:
                    ops = _replay_steps(trans) if kind == "num" else None
                    if ops is not None:
                        x = num[:, local]
                        with _quiet():
                            ref = trans.transform(pd.DataFrame(x, columns=cols) if as_frame else x)
                        if _same(_run_replay(ops, x), ref):
                            self._replay[id(trans)] = ops
                if self._replay and not _same(self.encode(num, self.categorical_outputs(cat_frame)), want):
                    self._replay = {}
                self._forest = _forest_trees(last) if not steps else None
                if self._forest is not None and hasattr(last, "predict_proba"):
                    with _quiet():
                        ref = np.asarray(last.predict_proba(got), dtype=np.float64)
                    if not _same(self.predict_proba(got), ref):
                        self._forest = None
                return self
        return None

    @staticmethod
    def _numeric_values(tm, frame) -> np.ndarray:
        cols = [c.name for c in tm.columns if c.kind != "categorical"]
        out = np.empty((len(frame), len(cols)))
        for k, c in enumerate(cols):
            out[:, k] = np.asarray(frame[c], dtype=np.float64)
        return out

    # --- evaluation ----------------------------------------------------------------------------
    def categorical_outputs(self, cat_frame) -> list:
        """The categorical blocks' outputs for ``cat_frame`` (its columns: at least
        :attr:`categorical_names`), one entry per categorical block."""
        from .tabular import _quiet

        out = []
        with _quiet():
            for kind, trans, weight, _, cols in self.blocks:
                if kind == "cat":
                    out.append(_weighted(trans.transform(cat_frame[cols]), weight))
        return out

    def encode(self, num: np.ndarray, cat_outputs: list):
        """The ColumnTransformer's output for rows with numeric values ``num`` (``(n, Dn)`` in the
        order of :attr:`numeric`, NaN for blanks) and categorical blocks ``cat_outputs`` (rows of
        :meth:`categorical_outputs`, in the same row order)."""
        import pandas as pd

        from .tabular import _quiet

        Xs = []
        c = 0
        with _quiet():
            for kind, trans, weight, local, cols in self.blocks:
                if kind == "cat":
                    Xs.append(cat_outputs[c])
                    c += 1
                    continue
                x = num[:, local]
                if self._replay.get(id(trans)) is not None:
                    Xs.append(_weighted(_run_replay(self._replay[id(trans)], x), weight))
                    continue
                if self.num_as_frame:
                    x = pd.DataFrame(x, columns=cols)
                Xs.append(_weighted(trans.transform(x), weight))
        return _hstack(Xs, len(num), self.sparse_output)

    def final_input(self, Z):
        """What the final estimator sees: ``Z`` through the steps after the ColumnTransformer."""
        from .tabular import _quiet

        with _quiet():
            for s in self.steps:
                Z = s.transform(Z)
        return Z

    def predict_proba(self, Z) -> np.ndarray:
        """The pipeline's ``predict_proba`` of the rows whose encoding is ``Z``."""
        from .tabular import _quiet

        Z = self.final_input(Z)
        if self._forest is not None and isinstance(Z, np.ndarray) and np.isfinite(Z).all():
            return _forest_proba(self._forest, Z)
        with _quiet():
            return np.asarray(self.last.predict_proba(Z), dtype=np.float64)

    def predict(self, Z) -> np.ndarray:
        """The pipeline's ``predict`` of the rows whose encoding is ``Z``."""
        from .tabular import _quiet

        Z = self.final_input(Z)
        with _quiet():
            return self.last.predict(Z)


def _replay_steps(trans):
    """A numeric block (one transformer or a Pipeline of them) as a list of numpy operations
    ``(op, a)``, the ones its ``transform`` performs on a dense float64 array, in its order:
    ``SimpleImputer`` (NaN filled with its finite statistics), ``StandardScaler``,
    ``RobustScaler``, ``MinMaxScaler`` (no clip), ``MaxAbsScaler``. None for anything else."""
    steps = [s for _, s in trans.steps] if hasattr(trans, "steps") else [trans]
    ops = []
    for st in steps:
        name = type(st).__name__
        if st is None or (isinstance(st, str) and st == "passthrough"):
            continue
        if name == "SimpleImputer":
            mv = st.missing_values
            stat = np.asarray(getattr(st, "statistics_", None), dtype=np.float64)
            if not (isinstance(mv, float) and np.isnan(mv)) or st.add_indicator or not np.all(np.isfinite(stat)):
                return None
            ops.append(("fill", stat))
        elif name == "StandardScaler":
            if st.with_mean:
                ops.append(("sub", np.asarray(st.mean_, dtype=np.float64)))
            if st.with_std:
                ops.append(("div", np.asarray(st.scale_, dtype=np.float64)))
        elif name == "RobustScaler":
            if st.with_centering:
                ops.append(("sub", np.asarray(st.center_, dtype=np.float64)))
            if st.with_scaling:
                ops.append(("div", np.asarray(st.scale_, dtype=np.float64)))
        elif name == "MinMaxScaler" and not st.clip:
            ops.append(("mul", np.asarray(st.scale_, dtype=np.float64)))
            ops.append(("add", np.asarray(st.min_, dtype=np.float64)))
        elif name == "MaxAbsScaler":
            ops.append(("div", np.asarray(st.scale_, dtype=np.float64)))
        else:
            return None
    return ops


def _run_replay(ops, x) -> np.ndarray:
    """The numpy operations of :func:`_replay_steps` on a copy of ``x`` (the transformers copy)."""
    x = np.array(x, dtype=np.float64)
    for op, a in ops:
        if op == "fill":
            x = np.where(np.isnan(x), a, x)
        elif op == "sub":
            x -= a
        elif op == "div":
            x /= a
        elif op == "mul":
            x *= a
        else:
            x += a
    return x


def _forest_trees(est):
    """The trees of a random forest / extra-trees classifier that sums them one after another
    (``n_jobs`` None or 1: scikit-learn's own order), else None."""
    if type(est).__name__ not in ("RandomForestClassifier", "ExtraTreesClassifier"):
        return None
    if getattr(est, "n_jobs", None) not in (None, 1) or getattr(est, "n_outputs_", 1) != 1:
        return None
    return list(est.estimators_)


def _forest_proba(trees, Z) -> np.ndarray:
    """``ForestClassifier.predict_proba`` of a finite dense ``Z`` without its per-call joblib and
    validation overhead (~0.2 ms a tree): the same float32 input, each tree's own
    ``predict_proba``, summed in the forest's order, divided by the number of trees."""
    X = np.ascontiguousarray(Z, dtype=np.float32)
    out = None
    for t in trees:
        p = t.predict_proba(X, check_input=False)
        if out is None:
            out = np.zeros(p.shape, dtype=np.float64)
        out += p
    out /= len(trees)
    return out


def _weighted(res, weight):
    return res if weight is None else res * weight


def _hstack(Xs, n, sparse_output):
    """``ColumnTransformer._hstack`` for the default (numpy / scipy) output."""
    import scipy.sparse as sp

    if not Xs:
        return np.zeros((n, 0))
    if sparse_output:
        from sklearn.utils import check_array

        return sp.hstack([check_array(X, accept_sparse=True, ensure_all_finite=False) for X in Xs]).tocsr()
    return np.hstack([X.toarray() if sp.issparse(X) else X for X in Xs])


class CategoryCache:
    """The categorical blocks' outputs of rows named by integer keys, each key transformed once.

    ``make_frame(keys)`` gives the categorical columns of the rows ``keys`` (a DataFrame, one row
    per key, in order); :meth:`rows` returns the blocks' outputs for any sequence of keys."""

    def __init__(self, enc: EncodedPipeline, make_frame):
        self.enc = enc
        self.make_frame = make_frame
        self.pos: dict = {}
        self.store = None

    def rows(self, keys) -> list:
        import scipy.sparse as sp

        keys = np.asarray(keys, dtype=np.int64)
        if self.enc.n_cat_blocks == 0:
            return []
        uk, inv = np.unique(keys, return_inverse=True)
        pos = self.pos
        new = np.array([k for k in uk.tolist() if k not in pos], dtype=np.int64)
        if len(new):
            outs = self.enc.categorical_outputs(self.make_frame(new).reset_index(drop=True))
            base = len(pos)   # cached keys hold rows 0 .. len(pos) - 1 of the store
            if self.store is None:
                self.store = outs
            else:
                self.store = [sp.vstack([a, b], format="csr") if sp.issparse(a) else np.vstack([a, b])
                              for a, b in zip(self.store, outs)]
            for j, k in enumerate(new.tolist()):
                pos[k] = base + j
        where = np.array([pos[k] for k in uk.tolist()], dtype=np.intp)[inv.ravel()]
        return [s[where] for s in self.store]
