"""Mixed-type models: a ColumnTransformer pipeline seen in the user's own columns (issue 13).

A pipeline such as ``ColumnTransformer([("num", Pipeline([SimpleImputer(), StandardScaler()]),
num), ("cat", OneHotEncoder(handle_unknown="ignore"), cat)])`` followed by a classifier takes a
pandas DataFrame with numeric and categorical columns. :func:`split_tabular` reads it as

- an *input schema*: one :class:`Column` per model input column (numeric, integer, or
  categorical with the encoder's known categories);
- a *final form*: ``invaudit.models.adapt()`` of the steps after the ColumnTransformer, on the
  encoded features;
- for a linear final form, a :class:`LinearDecomposition`: the class scores as an affine map of
  the numeric input columns plus one constant per (categorical column, category). It is read off
  the fitted pipeline by probing it (exact for imputers followed by affine scalers and one-hot /
  ordinal encoders, which is what these pipelines are) and checked against the pipeline's own
  scores on random rows; a pipeline whose scores are not of that shape gets no decomposition and
  its counterfactuals go to the general (verified, not exact) search.

The full pipeline stays the authority: every answer is verified with its own ``predict``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .base import class_indices, estimator_name, to_jsonable

__all__ = ["Column", "TabularModel", "LinearDecomposition", "CodedRows", "split_tabular", "COLUMN_KINDS"]

COLUMN_KINDS = ("numeric", "integer", "categorical")
_ENCODERS = ("OneHotEncoder", "OrdinalEncoder")
_IMPUTERS = ("SimpleImputer", "KNNImputer", "IterativeImputer", "MissingIndicator")


@dataclass(frozen=True)
class Column:
    """One model input column.

    ``categories``: categorical columns only, the encoder's ``categories_`` for the column as the
    model's own values, missing values left out (a blank is never a category one can move to).
    ``fill``: numeric columns, the value a blank is imputed with (a ``SimpleImputer``'s
    statistic) when the pipeline has one. ``used``: False for a column the ColumnTransformer
    drops (it cannot change the prediction).
    """

    name: str
    kind: str
    categories: Optional[tuple] = None
    fill: Optional[float] = None
    used: bool = True

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind,
                "categories": None if self.categories is None
                else [to_jsonable(c) for c in self.categories]}


@dataclass(eq=False)
class LinearDecomposition:
    """Class scores of a linear final estimator in the input's own columns.

    For a row with numeric values ``x`` (blanks at their fill value) and categories ``c``::

        scores(row) = W @ x + b + sum_over_categorical_columns offsets[col][index of c[col]]

    ``numeric``: positions (in ``TabularModel.columns``) of the numeric / integer columns, the
    order of ``W``'s columns; ``W``: ``(M, len(numeric))``; ``b``: ``(M,)``; ``categorical``:
    positions of the categorical columns; ``offsets[k]``: ``(n_categories, M)``. ``M == 1`` for a
    binary model (a positive score means ``classes[1]``), as in :class:`LinearForm`.
    """

    numeric: np.ndarray
    W: np.ndarray
    b: np.ndarray
    categorical: np.ndarray
    offsets: list
    link: str
    max_error: float = 0.0


@dataclass(eq=False)
class TabularModel:
    """A fitted pipeline that takes mixed-type rows, in the user's columns.

    ``estimator``: the full fitted pipeline (verifies every answer); ``columns``: the model's
    input columns in ``feature_names_in_`` order; ``classes``: its ``classes_``;
    ``final_form``: ``adapt()`` of the steps after the ColumnTransformer (on encoded features),
    or None when they have no form; ``preprocessor``: the ColumnTransformer;
    ``final_estimator``: the steps after it (one estimator or a Pipeline).

    A HistGradientBoostingClassifier with native categorical features (bare, or at the end of a
    Pipeline) has no ColumnTransformer: ``preprocessor`` is None, ``final_form`` None (its
    categorical splits are bitsets, so its answers come from the verified search) and
    ``native_categorical`` True. ``array_input``: the model was fitted on an array (no
    ``feature_names_in_``; columns are named ``x0..x{d-1}``) and is fed a float array;
    ``category_dtypes``: ``{column: categories}`` of columns the model was fitted on as pandas
    category dtype (``categorical_features="from_dtype"``), fed as that dtype.
    """

    estimator: Any
    columns: list
    classes: np.ndarray
    final_form: Any
    preprocessor: Any = None
    final_estimator: Any = None
    array_input: bool = False
    category_dtypes: Optional[dict] = None
    native_categorical: bool = False
    _decomposition: Any = field(default=None, repr=False)
    _decomposed: bool = field(default=False, repr=False)

    # --- the schema ----------------------------------------------------------------------------
    @property
    def column_names(self) -> list:
        return [c.name for c in self.columns]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def has_proba(self) -> bool:
        return hasattr(self.estimator, "predict_proba")

    def describe(self) -> dict:
        return {
            "estimator": estimator_name(self.estimator),
            "input_schema": [c.describe() for c in self.columns],
            "final_form": None if self.final_form is None else self.final_form.kind,
            "classes": [to_jsonable(c) for c in self.classes],
            "n_features": len(self.columns),
            "feature_names": self.column_names,
            **({"categorical_splits": "native (HistGradientBoosting bitsets): verified search, not exact"}
               if self.native_categorical else {}),
        }

    # --- the estimator's own answers -----------------------------------------------------------
    def encoded(self, frame) -> np.ndarray:
        """What the final estimator sees: the ColumnTransformer's output for ``frame``, dense
        float64 (influence and mislabel work on the final estimator's parameters)."""
        if self.preprocessor is None:
            raise ValueError("this model has no ColumnTransformer in front of its final estimator")
        with _quiet():
            Z = self.preprocessor.transform(self.model_input(frame))
        if hasattr(Z, "toarray"):
            Z = Z.toarray()
        return np.asarray(Z, dtype=np.float64)

    def model_input(self, frame):
        """The rows as the estimator was fitted on them: the model's columns of ``frame``; a float
        array for a model fitted without feature names; pandas category dtype (with the model's
        known categories) for columns it was fitted on as that dtype."""
        X = frame[self.column_names]
        if self.array_input:
            return X.to_numpy(dtype=np.float64)
        if self.category_dtypes:
            import pandas as pd

            X = X.copy()
            for name, cats in self.category_dtypes.items():
                dtype = pd.CategoricalDtype(list(cats))
                if X[name].dtype != dtype:
                    X[name] = pd.Categorical(X[name].astype(object), dtype=dtype)
        return X

    def predict(self, frame):
        with _quiet():
            return self.estimator.predict(self.model_input(frame))

    def predict_index(self, frame) -> np.ndarray:
        """Class indices by the estimator's own ``predict``."""
        return class_indices(self.classes, self.predict(frame))

    def predict_proba(self, frame) -> Optional[np.ndarray]:
        if not self.has_proba:
            return None
        with _quiet():
            return np.asarray(self.estimator.predict_proba(self.model_input(frame)), dtype=np.float64)

    # --- exact structure -----------------------------------------------------------------------
    def linear_decomposition(self) -> Optional[LinearDecomposition]:
        """The :class:`LinearDecomposition` when the final form is linear and the pipeline's
        scores really have that shape (checked on random rows), else None. Cached."""
        if not self._decomposed:
            self._decomposition = _decompose(self)
            self._decomposed = True
        return self._decomposition

    def scores(self, frame) -> np.ndarray:
        """``(n, M)`` scores of a linear final form, through the real preprocessing."""
        Z = self.preprocessor.transform(frame[self.column_names])
        if hasattr(Z, "toarray"):
            Z = Z.toarray()
        return self.final_form.scores(np.asarray(Z, dtype=np.float64))


class CodedRows:
    """Typed rows coded as numbers, so a search that only ever builds ``where(mask, x, baseline)``
    (``invaudit explain``) can treat a :class:`TabularModel` as a black-box form.

    Column ``j`` of the code is the model's input column ``j``: a numeric or integer column as it
    is (NaN for a blank); a categorical column as the index of the value in
    ``Column.categories`` (NaN for a blank). A value the encoder does not know (read from the
    data as it is, since ``handle_unknown="ignore"`` accepts it) gets a code past the known
    categories, remembered here, so it decodes back to itself. Mixing the codes of two valid rows
    column by column is a valid row, and a categorical column is one feature (a one-hot group is
    one part of an explanation).

    ``predict`` / ``predict_proba`` decode and ask the pipeline itself.
    """

    kind = "black-box"
    allows_missing = True  # NaN in a row is a blank cell (the search keeps it or replaces it)

    def __init__(self, tm: TabularModel):
        self.tm = tm
        self.columns = list(tm.columns)
        self.classes = np.asarray(tm.classes)
        self.n_features = len(self.columns)
        self.feature_names = tm.column_names
        self._values = [None if c.kind != "categorical" else list(c.categories or ()) for c in self.columns]
        self._index = [None if v is None else {_plain(x): i for i, x in enumerate(v)} for v in self._values]

    @property
    def has_proba(self) -> bool:
        return self.tm.has_proba

    @property
    def categorical(self) -> np.ndarray:
        """``(D,)`` bool: which coded columns are category indices."""
        return np.array([c.kind == "categorical" for c in self.columns], dtype=bool)

    def n_known(self, j: int) -> int:
        """Number of categories the encoder knows for column ``j`` (codes ``0..n_known-1``)."""
        c = self.columns[j]
        return len(c.categories or ()) if c.kind == "categorical" else 0

    def encode(self, frame) -> np.ndarray:
        """``(n, D)`` float codes of the model's columns of ``frame``."""
        n = len(frame)
        X = np.full((n, self.n_features), np.nan)
        for j, c in enumerate(self.columns):
            col = frame[c.name].to_numpy()
            if c.kind != "categorical":
                X[:, j] = np.asarray(col, dtype=np.float64)
                continue
            index, values = self._index[j], self._values[j]
            for i, v in enumerate(col):
                if _is_missing(v):
                    continue
                key = _plain(v)
                k = index.get(key)
                if k is None:  # unknown to the encoder: keep it as it is under a code of its own
                    k = index[key] = len(values)
                    values.append(v)
                X[i, j] = k
        return X

    def decode(self, X):
        """The rows of codes ``X`` as a DataFrame in the model's columns (blanks as NaN)."""
        import pandas as pd

        X = np.asarray(X, dtype=np.float64)
        data = {}
        for j, c in enumerate(self.columns):
            col = X[:, j]
            if c.kind != "categorical":
                data[c.name] = col.copy()
                continue
            table = np.empty(len(self._values[j]) + 1, dtype=object)
            table[:-1] = self._values[j]
            table[-1] = np.nan
            codes = np.where(np.isnan(col), len(self._values[j]), col).astype(np.intp)
            data[c.name] = table[codes]
        return pd.DataFrame(data, columns=self.feature_names)

    def predict(self, X):
        enc = self._encoded(X)
        return self.tm.predict(self.decode(X)) if enc is None else self._fast.predict(enc)

    def predict_proba(self, X):
        if not self.tm.has_proba:
            return None
        enc = self._encoded(X)
        return self.tm.predict_proba(self.decode(X)) if enc is None else self._fast.predict_proba(enc)

    def __getstate__(self):
        # the split pipeline and its cache are rebuilt where the rows are (the cache holds a closure)
        return {k: v for k, v in self.__dict__.items() if k not in ("_fast", "_cache", "_assign", "_rows")}

    def _encoded(self, X):
        """The ColumnTransformer's output for the coded rows ``X`` through the pipeline split at it
        (:mod:`invaudit.models._typed_batch`, built and checked bit for bit on the first rows
        asked about; categorical blocks cached per distinct category assignment), or None when
        the whole pipeline answers."""
        from ._typed_batch import CategoryCache, EncodedPipeline

        X = np.asarray(X, dtype=np.float64)
        if not hasattr(self, "_fast"):
            self._fast = EncodedPipeline.build(self.tm, self.decode(X)) if len(X) else None
            if self._fast is None:
                return None
            self._cat = np.flatnonzero(self.categorical)
            self._num = np.flatnonzero(~self.categorical)
            self._assign: dict = {}   # category codes of a row (NaN -> -1) -> cache key
            self._rows: list = []
            self._cache = CategoryCache(self._fast, lambda keys: self.decode(np.array(
                [self._rows[k] for k in keys]))[self._fast.categorical_names])
        if self._fast is None:
            return None
        C = np.nan_to_num(X[:, self._cat], nan=-1.0)
        uniq, inv = np.unique(C, axis=0, return_inverse=True)
        ids = np.empty(len(uniq), dtype=np.int64)
        for u, row in enumerate(uniq):
            key = tuple(row.tolist())
            k = self._assign.get(key)
            if k is None:
                k = self._assign[key] = len(self._rows)
                full = np.full(self.n_features, 0.0)
                full[self._cat] = np.where(row < 0, np.nan, row)
                self._rows.append(full)
            ids[u] = k
        return self._fast.encode(X[:, self._num], self._cache.rows(ids[inv.ravel()]))

    def describe(self) -> dict:
        return self.tm.describe()


# ------------------------------------------------------------------------------------------------
# reading the pipeline
# ------------------------------------------------------------------------------------------------

class _quiet:
    def __enter__(self):
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.filterwarnings("ignore", message=".*unknown categories.*")
        warnings.filterwarnings("ignore", message="X does not have valid feature names")
        warnings.filterwarnings("ignore", message="X has feature names, but")
        return self

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)


def _front(estimator):
    """(ColumnTransformer, the steps after it) or None."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if not isinstance(estimator, Pipeline) or len(estimator.steps) < 2:
        return None
    first = estimator.steps[0][1]
    rest = list(estimator.steps[1:])
    if isinstance(first, Pipeline) and len(first.steps) >= 1 and isinstance(first.steps[0][1], ColumnTransformer):
        # a ColumnTransformer inside a Pipeline at the front: its later steps join the rest
        rest = list(first.steps[1:]) + rest
        first = first.steps[0][1]
    if not isinstance(first, ColumnTransformer):
        return None
    if len(rest) == 1:
        final = rest[0][1]
    else:
        final = Pipeline(rest)
    return first, final


def _input_indices(ct, names):
    """{transformer name: list of input column positions} for a fitted ColumnTransformer."""
    mapping = getattr(ct, "_transformer_to_input_indices", None)
    if mapping is not None:
        return {k: [int(i) for i in v] for k, v in mapping.items()}
    out = {}
    for name, _, cols in ct.transformers_:
        if isinstance(cols, slice):
            idx = list(range(len(names)))[cols]
        else:
            arr = np.atleast_1d(np.asarray(cols))
            if arr.dtype == bool:
                idx = list(np.flatnonzero(arr))
            elif arr.dtype.kind in "iu":
                idx = [int(i) for i in arr]
            else:
                idx = [names.index(str(c)) for c in arr]
        out[name] = idx
    return out


def _steps(trans):
    steps = getattr(trans, "steps", None)
    if steps is not None:
        out = []
        for _, s in steps:
            out.extend(_steps(s))
        return out
    return [trans]


def _is_missing(v) -> bool:
    try:
        return v is None or (isinstance(v, float) and np.isnan(v)) or v is np.nan or bool(
            np.isscalar(v) and v != v)
    except (TypeError, ValueError):
        return False


def split_tabular(estimator, *, integer_columns=()) -> Optional[TabularModel]:
    """The mixed-type view of a fitted pipeline, or None when it is not one.

    Parameters
    ----------
    estimator : object
        A fitted Pipeline whose first step is a ColumnTransformer (or a Pipeline starting with
        one) and whose input has categorical columns (OneHotEncoder / OrdinalEncoder, possibly
        after an imputer) or imputers.
    integer_columns : iterable of str
        Numeric columns whose values must stay integers (``--integer``).

    Also a HistGradientBoostingClassifier with native categorical features (``is_categorical_``;
    fitted on an array with ``categorical_features`` indices or a mask, or on a DataFrame by
    names or ``"from_dtype"``), bare or at the end of a Pipeline: its categorical columns take
    the categories the fitted model knows, the others are numeric (the trees form does not model
    its bitset splits, so a category code must never be moved as a number).

    Returns
    -------
    TabularModel or None
        None for anything else: plain numeric models keep the array path.
    """
    front = _front(estimator)
    if front is None:
        return _split_native_hgb(estimator, integer_columns)
    ct, final = front
    names = getattr(ct, "feature_names_in_", None)
    if names is None:
        return None
    names = [str(c) for c in names]
    integer_columns = {str(c) for c in integer_columns}
    unknown = integer_columns - set(names)
    if unknown:
        from invaudit.errors import InputError

        raise InputError(f"--integer names columns the model does not have: {', '.join(sorted(unknown))}.")
    kinds = {c: None for c in names}
    cats: dict = {}
    fills: dict = {}
    mixed = False
    idx = _input_indices(ct, names)
    for tname, trans, _ in ct.transformers_:
        cols = [names[i] for i in idx.get(tname, [])]
        if not cols or (isinstance(trans, str) and trans == "drop"):
            continue
        steps = [] if isinstance(trans, str) else _steps(trans)
        enc = next((s for s in steps if type(s).__name__ in _ENCODERS), None)
        imp = next((s for s in steps if type(s).__name__ in _IMPUTERS), None)
        if imp is not None:
            mixed = True
        if enc is not None:
            mixed = True
            for j, c in enumerate(cols):
                known = tuple(v for v in enc.categories_[j] if not _is_missing(v))
                kinds[c] = "categorical"
                cats[c] = known
            continue
        for j, c in enumerate(cols):
            kinds[c] = "integer" if c in integer_columns else "numeric"
            if type(imp).__name__ == "SimpleImputer" and steps and steps[0] is imp:
                stat = np.asarray(imp.statistics_)
                if j < len(stat):
                    try:
                        fills[c] = float(stat[j])
                    except (TypeError, ValueError):
                        pass
    # a HistGradientBoosting final step whose native categorical features are passed through by
    # the ColumnTransformer unchanged: those input columns are categorical with its categories
    hgb = _native_hgb(final)
    if hgb is not None:
        known = _hgb_known_categories(hgb)
        for f, tname, local in _ct_output_sources(ct):
            if f not in known:
                continue
            if local < len(idx.get(tname, [])):
                c = names[idx[tname][local]]
                mixed = True
                kinds[c] = "categorical"
                cats[c] = known[f]
    if not mixed:
        return None
    bad_int = [c for c in integer_columns if kinds.get(c) == "categorical"]
    if bad_int:
        from invaudit.errors import InputError

        raise InputError(f"--integer names categorical columns: {', '.join(sorted(bad_int))}.")
    columns = []
    for c in names:
        k = kinds[c]
        if k is None:   # dropped by the ColumnTransformer: cannot affect the prediction
            columns.append(Column(c, "integer" if c in integer_columns else "numeric", used=False))
        elif k == "categorical":
            columns.append(Column(c, k, categories=cats[c]))
        else:
            columns.append(Column(c, k, fill=fills.get(c)))
    final_form = None
    try:
        from . import adapt

        final_form = adapt(final)
    except Exception:  # noqa: BLE001 -- a final step without a form is still auditable by queries
        final_form = None
    return TabularModel(estimator=estimator, columns=columns, classes=np.asarray(estimator.classes_),
                        final_form=final_form, preprocessor=ct, final_estimator=final,
                        native_categorical=hgb is not None)


# ------------------------------------------------------------------------------------------------
# HistGradientBoosting with native categorical features
# ------------------------------------------------------------------------------------------------

def _is_identity(step) -> bool:
    if step is None or (isinstance(step, str) and step == "passthrough"):
        return True
    return type(step).__name__ == "FunctionTransformer" and getattr(step, "func", None) is None


def _native_hgb(estimator):
    """The HistGradientBoostingClassifier with at least one native categorical feature that
    ``estimator`` is (or ends in, after identity steps only), else None."""
    from sklearn.pipeline import Pipeline

    est = estimator
    while isinstance(est, Pipeline):
        if not all(_is_identity(s) for _, s in est.steps[:-1]):
            return None
        est = est.steps[-1][1]
    if type(est).__name__ != "HistGradientBoostingClassifier":
        return None
    is_cat = getattr(est, "is_categorical_", None)
    if is_cat is None or not np.any(np.asarray(is_cat, dtype=bool)):
        return None
    return est


def _plain(v):
    """A numpy scalar as the Python value (exact: 4.0 stays 4.0, "a" stays "a")."""
    return v.item() if isinstance(v, np.generic) else v


def _hgb_known_categories(est) -> dict:
    """``{feature position: tuple of known categories}`` of a fitted HistGradientBoosting model's
    native categorical features, as the values the model is fed (missing values left out).

    scikit-learn >= 1.4 keeps an ``OrdinalEncoder`` inside ``est._preprocessor`` (a
    ColumnTransformer) whose ``categories_`` are the raw values it knows, for numeric codes and
    pandas categories alike; older versions bin the raw integer codes directly and keep the known
    ones in ``est._bin_mapper.bin_thresholds_[f]``."""
    is_cat = np.asarray(est.is_categorical_, dtype=bool)
    d = len(is_cat)
    out = {}
    pre = getattr(est, "_preprocessor", None)
    if pre is not None:
        mapping = getattr(pre, "_transformer_to_input_indices", None)
        if mapping is None:
            mapping = _input_indices(pre, [str(i) for i in range(d)])
        for tname, trans, _ in pre.transformers_:
            if type(trans).__name__ != "OrdinalEncoder":
                continue
            for j, f in enumerate(mapping.get(tname, [])):
                out[int(f)] = tuple(_plain(v) for v in trans.categories_[j] if not _is_missing(v))
    else:
        bins = est._bin_mapper.bin_thresholds_
        for f in np.flatnonzero(is_cat):
            out[int(f)] = tuple(float(v) for v in np.asarray(bins[f]) if not _is_missing(v))
    lost = [int(f) for f in np.flatnonzero(is_cat) if int(f) not in out]
    if lost:
        from invaudit.errors import InputError

        # refuse rather than fall back to moving category codes as numbers
        raise InputError(f"cannot read the known categories of native categorical feature(s) {lost} of "
                         f"{type(est).__name__} (scikit-learn version not supported).")
    return out


def _ct_output_sources(ct):
    """``(output feature position, transformer name, position within that transformer's input
    columns)`` for each output of a fitted ColumnTransformer whose transformer keeps its columns
    one to one (``passthrough``, fitted as an identity FunctionTransformer), from
    ``output_indices_``."""
    out = []
    for tname, trans, _ in ct.transformers_:
        if not _is_identity(trans):
            continue
        sl = getattr(ct, "output_indices_", {}).get(tname)
        if sl is None:
            continue
        for local, f in enumerate(range(sl.start, sl.stop)):
            out.append((f, tname, local))
    return out


def _split_native_hgb(estimator, integer_columns) -> Optional[TabularModel]:
    """A HistGradientBoostingClassifier with native categorical features (bare or at the end of a
    Pipeline of identity steps) as a :class:`TabularModel`, else None."""
    hgb = _native_hgb(estimator)
    if hgb is None:
        return None
    known = _hgb_known_categories(hgb)
    d = len(hgb.is_categorical_)
    fitted_names = getattr(estimator, "feature_names_in_", None)
    if fitted_names is None:
        fitted_names = getattr(hgb, "feature_names_in_", None)
    array_input = fitted_names is None
    names = [f"x{i}" for i in range(d)] if array_input else [str(c) for c in fitted_names]
    integer_columns = {str(c) for c in integer_columns}
    from invaudit.errors import InputError

    unknown = integer_columns - set(names)
    if unknown:
        raise InputError(f"--integer names columns the model does not have: {', '.join(sorted(unknown))}.")
    bad_int = sorted(names[f] for f in known if names[f] in integer_columns)
    if bad_int:
        raise InputError(f"--integer names categorical columns: {', '.join(bad_int)}.")
    columns = []
    for f, c in enumerate(names):
        if f in known:
            columns.append(Column(c, "categorical", categories=known[f]))
        else:
            columns.append(Column(c, "integer" if c in integer_columns else "numeric"))
    from_dtype = isinstance(getattr(hgb, "categorical_features", None), str) and \
        hgb.categorical_features == "from_dtype"
    category_dtypes = {names[f]: known[f] for f in known} if (from_dtype and not array_input) else None
    return TabularModel(estimator=estimator, columns=columns, classes=np.asarray(estimator.classes_),
                        final_form=None, preprocessor=None, final_estimator=hgb, array_input=array_input,
                        category_dtypes=category_dtypes, native_categorical=True)


# ------------------------------------------------------------------------------------------------
# the linear decomposition
# ------------------------------------------------------------------------------------------------

def has_categorical_splits(estimator) -> bool:
    """True when the estimator (or the last step of a Pipeline) is a HistGradientBoosting model
    with native categorical features. Such a model must never be read as numbers: moving a category
    code by an ulp "changes" the prediction at a meaningless distance."""
    est = estimator
    while hasattr(est, "steps"):
        est = est.steps[-1][1]
    is_cat = getattr(est, "is_categorical_", None)
    if is_cat is not None and bool(np.any(np.asarray(is_cat, dtype=bool))):
        return True
    from invaudit.models import _boosters   # LightGBM / XGBoost categorical splits

    return _boosters.has_categorical_splits(est)


def reference_frame(tm: TabularModel, n: int):
    """``n`` copies of a reference row: numeric columns at their fill value (or 0), each
    categorical column at its first known category, dtypes as the data layer gives them."""
    import pandas as pd

    data = {}
    for c in tm.columns:
        if c.kind == "categorical":
            first = c.categories[0] if c.categories else np.nan
            data[c.name] = pd.Series([first] * n, dtype=object)
        else:
            data[c.name] = np.full(n, 0.0 if c.fill is None else c.fill, dtype=np.float64)
    return pd.DataFrame(data)


def _decompose(tm: TabularModel) -> Optional[LinearDecomposition]:
    form = tm.final_form
    if form is None or getattr(form, "kind", None) != "linear":
        return None
    cols = tm.columns
    num = np.array([i for i, c in enumerate(cols) if c.kind != "categorical"], dtype=np.intp)
    cat = np.array([i for i, c in enumerate(cols) if c.kind == "categorical"], dtype=np.intp)
    if any(not cols[i].categories for i in cat):
        return None
    # probes: the reference row; +-h on each numeric column; every category of each column
    n_probe = 1 + 2 * len(num) + sum(len(cols[i].categories) for i in cat)
    P = reference_frame(tm, n_probe)
    h = np.array([max(abs(cols[i].fill or 0.0), 1.0) for i in num])
    r = 1
    for k, i in enumerate(num):
        name = cols[i].name
        base = P.at[0, name]
        P.loc[r, name] = base + h[k]
        P.loc[r + 1, name] = base - h[k]
        r += 2
    for i in cat:
        for v in cols[i].categories:
            P.loc[r, cols[i].name] = v
            r += 1
    try:
        with _quiet():
            S = tm.scores(P)
    except Exception:  # noqa: BLE001 -- a preprocessing the probes cannot pass: no decomposition
        return None
    s0 = S[0]
    W = np.empty((S.shape[1], len(num)))
    r = 1
    for k in range(len(num)):
        W[:, k] = (S[r] - S[r + 1]) / (2.0 * h[k])
        r += 2
    offsets = []
    for i in cat:
        m = len(cols[i].categories)
        offsets.append(S[r:r + m] - s0)
        r += m
    x0 = P.iloc[0, num].to_numpy(dtype=np.float64) if len(num) else np.zeros(0)
    b = s0 - W @ x0
    dec = LinearDecomposition(numeric=num, W=W, b=b, categorical=cat, offsets=offsets, link=form.link)
    # check the shape of the scores on random rows: numeric values around the probes, random
    # categories (pipelines with interactions or non-affine numeric steps fail here)
    rng = np.random.default_rng(0)
    m = 24
    Q = reference_frame(tm, m)
    Xn = x0[None, :] + h[None, :] * rng.uniform(-3, 3, size=(m, len(num)))
    for k, i in enumerate(num):
        Q[cols[i].name] = Xn[:, k]
    codes = []
    for i in cat:
        cc = rng.integers(0, len(cols[i].categories), size=m)
        codes.append(cc)
        Q[cols[i].name] = np.array(cols[i].categories, dtype=object)[cc]
    try:
        with _quiet():
            S_true = tm.scores(Q)
    except Exception:  # noqa: BLE001
        return None
    S_dec = dec_scores(dec, Xn, np.column_stack(codes) if codes else np.zeros((m, 0), dtype=int))
    err = np.abs(S_true - S_dec)
    tol = 1e-8 * (1.0 + np.abs(S_true))
    if not np.all(err <= tol):
        return None
    dec.max_error = float(err.max()) if err.size else 0.0
    return dec


def dec_scores(dec: LinearDecomposition, x_num: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Scores from the decomposition: numeric values ``(n, Dn)`` and category codes ``(n, C)``
    (positions in each column's ``categories``)."""
    s = x_num @ dec.W.T + dec.b
    for k, off in enumerate(dec.offsets):
        s = s + off[codes[:, k]]
    return s


# --- constraints in the user's columns (shared by the CLI and the audit suite) -------------------

def column_list(spec, tm: TabularModel, what: str) -> tuple:
    """``"age,income"`` -> ``("age", "income")``, every name a column of the model's input;
    ``what`` names the option in the error (``--immutable``, ``checks[0].immutable``)."""
    from invaudit.errors import InputError

    if spec is None or not str(spec).strip():
        return ()
    names = tm.column_names
    out = []
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        if part not in names:
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise InputError(f"{what}: '{part}' is not a column of the model's input ({shown}).")
        out.append(part)
    return tuple(out)


def whole_number_columns(tm: TabularModel, train_frame, exclude=()) -> tuple:
    """The numeric columns (not in ``exclude``) whose every value in ``train_frame`` is a whole
    number: kept whole in answers, as integer columns are."""
    if train_frame is None:
        return ()
    out = []
    for c in tm.columns:
        if c.kind != "numeric" or c.name in exclude:
            continue
        v = np.asarray(train_frame[c.name], dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size and np.all(v == np.round(v)):
            out.append(c.name)
    return tuple(out)


def numeric_constraints(tm: TabularModel, train_frame, *, scale: str, bounds: str,
                        option_name=lambda key: f"--{key}", train_hint: str = "--train TRAIN"):
    """``(bounds, scale)`` dicts for the numeric columns, measured on ``train_frame`` (``None``
    each where not asked for). ``option_name`` and ``train_hint`` word the error when a
    training frame is needed but missing."""
    from invaudit.errors import InputError

    if train_frame is None:
        if scale != "none":
            raise InputError(f"{option_name('scale')} {scale} needs {train_hint} (the spread is measured there).")
        if bounds != "none":
            raise InputError(f"{option_name('bounds')} data needs {train_hint} (the ranges are taken from it).")
        return None, None
    num = [c.name for c in tm.columns if c.kind in ("numeric", "integer")]
    rng = spread = None
    if bounds == "data":
        rng = {}
        for c in num:
            v = np.asarray(train_frame[c], dtype=np.float64)
            v = v[np.isfinite(v)]
            if v.size:
                rng[c] = (float(v.min()), float(v.max()))
    if scale != "none":
        spread = {}
        for c in num:
            v = np.asarray(train_frame[c], dtype=np.float64)
            v = v[np.isfinite(v)]
            if scale == "std":
                s = float(np.std(v)) if v.size else 0.0
            else:
                s = float(1.4826 * np.median(np.abs(v - np.median(v)))) if v.size else 0.0
            # a constant column keeps unit weight rather than an infinite one
            spread[c] = s if s > 0 and np.isfinite(s) else 1.0
    return rng, spread
