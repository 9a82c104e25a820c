"""Counterfactuals for mixed-type rows: a ColumnTransformer pipeline, answered in the user's own
columns (issue 13).

The rows are a pandas DataFrame in the model's columns (numeric columns float64 with NaN for
blanks, categorical columns holding the user's strings). Every answer is a *valid row* of that
schema: a categorical column takes one of the encoder's known categories, an integer column an
integer, a blank stays blank unless ``allow_missing_change``; and the real pipeline predicts the
target at it.

Distance
--------
One norm over all columns. A numeric column ``j`` contributes ``|x'_j - x_j| * w_j`` with
``w_j = 1 / scale_j`` (``--scale std|mad``; ``w_j = 1`` without a scale, i.e. input units); a
categorical column that changes contributes ``categorical_cost`` (default 1, in units of the
scaled numeric distance), one that does not change contributes 0. With ``m`` changed categorical
columns and numeric contributions ``d_j``:

- L1: ``m * categorical_cost + sum_j d_j``;
- L2: ``sqrt(m * categorical_cost**2 + sum_j d_j**2)``;
- Linf: ``max(categorical_cost if m else 0, max_j d_j)``.

Method
------
*Linear final estimator* (``tm.final_form.kind == "linear"``, with the scores affine in the
numeric columns and one constant per category: :meth:`TabularModel.linear_decomposition`). For a
fixed choice of categories the problem in the numeric columns is a linear counterfactual with a
shifted intercept, solved exactly by :func:`invaudit.counterfactual.linear_counterfactuals` (every
norm, boxes, frozen columns, weights). The choices are enumerated by the number ``m`` of changed
categorical columns; all rows and choices of one level go to the solver at once, and a row stops
once its best total is no more than the categorical cost of the next level alone (no choice
there can beat it). The optimum is the best total over all choices, so the answer is exact when
every choice that could matter was solved exactly (``method`` ends in ``"+enumeration"``).
Beyond ``max_combinations`` choices only levels ``m <= 2`` are solved, and a row is exact only
when the bound of level 3 proves it (``lower_bound`` says what is proven otherwise).

*Integer columns* (``integer=`` or ``Column.kind == "integer"``): with L1 / Linf each choice that
could still beat the best integer answer is solved as a mixed-integer linear program
(``scipy.optimize.milp``, HiGHS) in the order of its continuous lower bound: exact. With L2, the
continuous optimum is rounded (away from the row, and to the nearest integer) and the continuous
columns re-solved with the integers fixed, verified: ``exact`` is False and ``lower_bound`` is the
continuous relaxation.

*Any other final form* (trees, boosting, networks, black boxes): for each choice of at most two
changed categorical columns, the black-box search of :mod:`invaudit.counterfactual._nl_blackbox`
over the numeric columns (verified by ``predict``, ``exact: False``), integers rounded and
re-verified.

Missing numeric values are frozen at the imputer's fill value (the pipeline sees exactly that)
and written back as blanks; with ``allow_missing_change`` they start at the fill value and may
move (a value left there is still written back blank). A blank categorical value is frozen
unless ``allow_missing_change``.

References
----------
M. A. Carreira-Perpinan and S. S. Hada, "Inverse classification with logistic and softmax
classifiers: efficient optimization", TMLR 2026 (the linear solver used per choice).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

import numpy as np

from invaudit.errors import InputError
from invaudit.models.base import BlackBoxForm, LinearForm, to_jsonable
from invaudit.models.tabular import TabularModel, _quiet

from .constraints import Constraints

#: Rows per chunk of the typed solvers (memory and progress granularity; fixed, so deterministic).
CHUNK_ROWS = 64

#: Searches ask the final estimator about encoded arrays (the pipeline split at its
#: ColumnTransformer, :mod:`invaudit.models._typed_batch`) rather than the whole pipeline about
#: DataFrames; the same bits, many times faster. False: the whole pipeline answers every call
#: (kept for before/after comparisons).
BATCHED = True

__all__ = ["tabular_counterfactuals", "TabularCounterfactuals"]

NORMS = ("l2", "l1", "linf")
_REL = 1e-9


# ------------------------------------------------------------------------------------------------
# the result
# ------------------------------------------------------------------------------------------------

def _json(v):
    if v is None:
        return None
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if not np.isfinite(v):
            return None
        return v
    try:
        if v != v:
            return None
    except (TypeError, ValueError):
        pass
    return to_jsonable(v)


def delta_vector(columns, numeric, changes) -> list:
    """The change per input column, in the model's column order, as DESIGN.md's ``delta`` list:
    ``new - old`` for a numeric column (0 when it did not move; None where a blank is involved),
    None for a categorical column (its change, if any, is in ``changes`` as ``"col: a -> b"``)."""
    moved = {name: (old, new) for name, old, new in changes}
    out = []
    for c in columns:
        if c not in numeric:
            out.append(None)
        elif c not in moved:
            out.append(0.0)
        else:
            old, new = (_json(v) for v in moved[c])
            out.append(None if old is None or new is None else float(new) - float(old))
    return out


def _show(v) -> str:
    v = _json(v)
    if v is None:
        return "(blank)"
    if isinstance(v, float):
        return f"{v:.10g}"
    return str(v)


def _num(v):
    v = float(v)
    return v if np.isfinite(v) else None


@dataclass(frozen=True)
class TabularCounterfactuals:
    """One counterfactual per row, in the input's own columns.

    ``points``: n rows with the input's columns and dtypes (a row without an answer keeps its
    original values); ``distance``: the mixed distance of the module docstring (NaN where none);
    ``lower_bound``: a proven lower bound on the optimal distance (NaN where none);
    ``changes[i]``: ``(column, old, new)`` for each column that changed.
    """

    status: np.ndarray
    reason: np.ndarray
    points: object
    distance: np.ndarray
    original_index: np.ndarray
    target_index: np.ndarray
    predicted_index: np.ndarray
    target_probability: np.ndarray
    exact: np.ndarray
    method: np.ndarray
    lower_bound: np.ndarray
    changes: list
    norm: str
    numeric_columns: tuple = ()

    def __len__(self) -> int:
        return len(self.status)

    @classmethod
    def concat(cls, parts: list) -> "TabularCounterfactuals":
        """The results of consecutive chunks of rows as one result, in order."""
        import pandas as pd

        if len(parts) == 1:
            return parts[0]
        arrays = {name: np.concatenate([getattr(p, name) for p in parts])
                  for name in ("status", "reason", "distance", "original_index", "target_index",
                               "predicted_index", "target_probability", "exact", "method", "lower_bound")}
        return cls(points=pd.concat([p.points for p in parts]), changes=[c for p in parts for c in p.changes],
                   norm=parts[0].norm, numeric_columns=parts[0].numeric_columns, **arrays)

    def records(self, classes, row_ids) -> list[dict]:
        """The DESIGN.md counterfactual fields per row, JSON-ready, in the user's columns."""
        classes = np.asarray(classes)
        row_ids = list(row_ids)
        if len(row_ids) != len(self):
            raise ValueError(f"row_ids has {len(row_ids)} entries for {len(self)} results")

        def label(i):
            i = int(i)
            return None if i < 0 else to_jsonable(classes[i])

        numeric = set(self.numeric_columns)
        cols = list(self.points.columns)
        out = []
        for i in range(len(self)):
            has = self.status[i] in ("found", "already-target")
            row = self.points.iloc[i]
            delta = delta_vector(cols, numeric, self.changes[i])
            out.append({
                "row": to_jsonable(row_ids[i]),
                "original_class": label(self.original_index[i]),
                "target_class": label(self.target_index[i]),
                "status": str(self.status[i]),
                "counterfactual": [_json(row[c]) for c in cols] if has else None,
                "delta": delta if has else None,
                "distance": _num(self.distance[i]),
                "norm": self.norm,
                "target_probability": _num(self.target_probability[i]),
                "predicted_class": label(self.predicted_index[i]),
                "exact": bool(self.exact[i]),
                "method": str(self.method[i]),
                "changed_features": [c for c, _, _ in self.changes[i]] if has else [],
                "changes": [f"{c}: {_show(o)} -> {_show(n)}" for c, o, n in self.changes[i]] if has else [],
                "lower_bound": _num(self.lower_bound[i]),
                "reason": None if self.reason[i] is None else str(self.reason[i]),
            })
            if out[-1]["lower_bound"] is None:   # no proven bound: the field is left out (schema: a number)
                del out[-1]["lower_bound"]
        return out


# ------------------------------------------------------------------------------------------------
# the problem in the user's columns
# ------------------------------------------------------------------------------------------------

def _names(v, what):
    if v is None:
        return []
    if isinstance(v, str):
        v = [s.strip() for s in v.split(",") if s.strip()]
    return [str(s) for s in v]


class _Setup:
    """The rows split into numeric values (blanks at the fill value) and category codes, and the
    per-row boxes, weights and movability of the user's options."""

    def __init__(self, tm: TabularModel, frame, *, immutable, increase_only, decrease_only, integer,
                 bounds, scale, categorical_cost, allow_missing_change, norm):
        import pandas as pd

        names = tm.column_names
        missing_cols = [c for c in names if c not in frame.columns]
        if missing_cols:
            raise InputError(f"the data has no column(s) {', '.join(missing_cols)} that the model needs.")
        self.tm = tm
        self.frame = frame[names].reset_index(drop=True)
        self.n = len(self.frame)
        self.norm = norm
        cc = float(categorical_cost)
        if not np.isfinite(cc) or cc <= 0:
            raise InputError(f"categorical_cost must be positive and finite, got {categorical_cost}.")
        self.cc = cc
        cols = tm.columns
        known = set(names)
        opts = {}
        for key, v in (("immutable", immutable), ("increase_only", increase_only),
                       ("decrease_only", decrease_only), ("integer", integer)):
            lst = _names(v, key)
            bad = [c for c in lst if c not in known]
            if bad:
                raise InputError(f"--{key.replace('_', '-')} names column(s) the model does not have: "
                                 f"{', '.join(bad)} (columns: {', '.join(names)}).")
            opts[key] = set(lst)
        for key in ("increase_only", "decrease_only", "integer"):
            bad = [c for c in opts[key] if tm.columns[names.index(c)].kind == "categorical"]
            if bad:
                raise InputError(f"--{key.replace('_', '-')} applies to numeric columns only; "
                                 f"{', '.join(sorted(bad))} is categorical.")
        both = opts["increase_only"] & opts["decrease_only"]
        if both:
            raise InputError(f"column {sorted(both)[0]} is both --increase-only and --decrease-only "
                             "(use --immutable to freeze it).")
        self.num = np.array([i for i, c in enumerate(cols) if c.kind != "categorical"], dtype=np.intp)
        self.cat = np.array([i for i, c in enumerate(cols) if c.kind == "categorical" and c.used],
                            dtype=np.intp)
        self.num_names = [cols[i].name for i in self.num]
        self.cat_names = [cols[i].name for i in self.cat]
        self.categories = [np.array(cols[i].categories, dtype=object) for i in self.cat]
        Dn = len(self.num)
        raw = np.empty((self.n, Dn))
        for k, name in enumerate(self.num_names):
            raw[:, k] = pd.to_numeric(self.frame[name], errors="coerce").to_numpy(dtype=np.float64)
        self.raw = raw
        self.missing = np.isnan(raw)
        fill = np.array([0.0 if cols[i].fill is None else cols[i].fill for i in self.num])
        self.start = np.where(self.missing, fill[None, :], raw)
        self.integer = np.array([cols[i].kind == "integer" or cols[i].name in opts["integer"]
                                 for i in self.num], dtype=bool)
        used = np.array([cols[i].used for i in self.num], dtype=bool)
        imm = np.array([n in opts["immutable"] for n in self.num_names], dtype=bool) | ~used
        inc = np.array([n in opts["increase_only"] for n in self.num_names], dtype=bool)
        dec = np.array([n in opts["decrease_only"] for n in self.num_names], dtype=bool)
        lo = np.full((self.n, Dn), -np.inf)
        hi = np.full((self.n, Dn), np.inf)
        if bounds:
            for name, (a, b) in dict(bounds).items():
                if name not in self.num_names:
                    continue   # bounds on categorical columns mean nothing
                k = self.num_names.index(name)
                lo[:, k] = -np.inf if a is None else float(a)
                hi[:, k] = np.inf if b is None else float(b)
        lo = np.minimum(lo, self.start)
        hi = np.maximum(hi, self.start)
        frozen = imm[None, :] | (self.missing & (not allow_missing_change))
        lo = np.where(inc[None, :] | frozen, self.start, lo)
        hi = np.where(dec[None, :] | frozen, self.start, hi)
        # integer columns may only reach integers: round the box inwards (the row stays inside)
        if self.integer.any():
            ii = self.integer[None, :] & ~frozen
            lo = np.where(ii, np.minimum(np.ceil(lo), self.start), lo)
            hi = np.where(ii, np.maximum(np.floor(hi), self.start), hi)
        self.lower, self.upper = lo, hi
        w = np.ones(Dn)
        if scale:
            for name, s in dict(scale).items():
                if name in self.num_names:
                    s = float(s)
                    if not np.isfinite(s) or s <= 0:
                        raise InputError(f"the scale of column {name} must be positive and finite, got {s}.")
                    w[self.num_names.index(name)] = 1.0 / s
        self.weights = w
        # categorical codes: index in the known categories, -1 blank, -2 a value the encoder never saw
        C = len(self.cat)
        codes = np.full((self.n, C), -1, dtype=np.intp)
        for k, name in enumerate(self.cat_names):
            vals = self.frame[name].to_numpy(dtype=object)
            lookup = {v: j for j, v in enumerate(self.categories[k])}
            for r, v in enumerate(vals):
                if v is None or (isinstance(v, float) and v != v):
                    codes[r, k] = -1
                else:
                    codes[r, k] = lookup.get(v, -2)
        self.codes = codes
        cimm = np.array([n in opts["immutable"] for n in self.cat_names], dtype=bool)
        self.cat_movable = ~cimm[None, :] & ((codes != -1) | bool(allow_missing_change))

    def catcost(self, m):
        m = np.asarray(m, dtype=np.float64)
        if self.norm == "l1":
            return m * self.cc
        if self.norm == "l2":
            return np.sqrt(m) * self.cc
        return np.where(m > 0, self.cc, 0.0)

    def total(self, m, d):
        c = self.catcost(m)
        if self.norm == "l1":
            return c + d
        if self.norm == "l2":
            return np.sqrt(c * c + d * d)
        return np.maximum(c, d)

    def num_distance(self, x, rows):
        d = (x - self.start[rows]) * self.weights
        return np.linalg.norm(d, ord={"l2": 2, "l1": 1, "linf": np.inf}[self.norm], axis=1) if len(d) \
            else np.zeros(0)


def _augmented_box(setup, Xa, rows, qg, Dn):
    """Fill the last two columns of the solver points ``Xa`` (row id, choice id: frozen columns the
    row builder reads back) and return the box ``(lo, hi)``: the numeric columns' bounds, every
    other column frozen at its value."""
    Xa[:, -2] = rows
    Xa[:, -1] = qg
    lo = Xa.copy()
    hi = Xa.copy()
    lo[:, :Dn] = setup.lower[rows]
    hi[:, :Dn] = setup.upper[rows]
    return lo, hi


def _combos(setup: _Setup, max_level: int, limit: int):
    """Choices of categories, by level (number of changed columns): a list of ``(level, codes)``
    with ``codes`` (q, C), ``-1`` = keep the row's own value. Returns (levels, truncated)."""
    C = len(setup.cat)
    sizes = [len(c) for c in setup.categories]
    levels = []
    count = 0
    truncated = False
    for m in range(0, min(C, max_level) + 1):
        rows = []
        for subset in itertools.combinations(range(C), m):
            for pick in itertools.product(*[range(sizes[c]) for c in subset]):
                code = np.full(C, -1, dtype=np.intp)
                code[list(subset)] = pick
                rows.append(code)
        if count + len(rows) > limit and m > 0:
            truncated = True
            break
        count += len(rows)
        levels.append((m, np.array(rows, dtype=np.intp).reshape(len(rows), C)))
    if not truncated and max_level < C:
        truncated = True
    return levels, truncated


def _valid_pairs(setup: _Setup, rows, codes):
    """(row, combo) pairs where each changed column may move and really changes."""
    if len(rows) == 0 or len(codes) == 0:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    cur = setup.codes[rows]                    # (r, C)
    mov = setup.cat_movable[rows]              # (r, C)
    ch = codes[None, :, :] >= 0                # (1, q, C)
    ok = np.all(~ch | (mov[:, None, :] & (codes[None, :, :] != cur[:, None, :])), axis=2)
    ri, qi = np.nonzero(ok)
    return np.asarray(rows)[ri], qi


# ------------------------------------------------------------------------------------------------
# the stand-in estimator: numeric values + (row, choice) ids -> the real pipeline on a DataFrame
# ------------------------------------------------------------------------------------------------

class _RowBuilder:
    """Builds the user's rows from solver points and asks the real pipeline.

    A point is ``[numeric values..., extra columns..., row id, choice id]``: the row id says which
    row the other columns come from, the choice id which categories to put in (both frozen in the
    solvers). Numeric values equal to a blank's start value are written back blank."""

    def __init__(self, setup: _Setup, codes: np.ndarray, n_extra: int, batched: bool = True):
        self.s = setup
        self.codes = codes
        self.n_extra = n_extra
        self.classes_ = setup.tm.classes
        # the pipeline split at its ColumnTransformer, checked bit for bit on these rows (None:
        # the whole pipeline answers every call)
        self.fast = None
        if batched and setup.n:
            from invaudit.models._typed_batch import CategoryCache, EncodedPipeline

            self.fast = EncodedPipeline.build(setup.tm, setup.frame)
            if self.fast is not None:
                self._q = max(len(codes), 1)
                self.cache = CategoryCache(self.fast, self._category_frame)

    def _category_frame(self, keys):
        """The categorical columns of the rows named by cache keys ``row id * choices + choice id``."""
        s = self.s
        rid, cid = np.divmod(np.asarray(keys, dtype=np.int64), self._q)
        df = s.frame[self.fast.categorical_names].iloc[rid].reset_index(drop=True)
        code = self.codes[cid]
        for k, name in enumerate(s.cat_names):
            ch = code[:, k] >= 0
            if ch.any() and name in df.columns:
                col = df[name].to_numpy(dtype=object, copy=True)
                col[ch] = s.categories[k][code[ch, k]]
                df[name] = col
        return df

    def encoded(self, X):
        """The ColumnTransformer's output for the solver points ``X`` (the fast path only)."""
        s = self.s
        X = np.asarray(X, dtype=np.float64)
        rid = X[:, -2].astype(np.int64)
        cid = X[:, -1].astype(np.int64)
        Dn = len(s.num)
        xn = X[:, :Dn]
        xn = np.where(s.missing[rid] & (xn == s.start[rid]), np.nan, xn)
        return self.fast.encode(xn, self.cache.rows(rid * self._q + cid))

    def frame(self, X):
        s = self.s
        X = np.asarray(X, dtype=np.float64)
        rid = X[:, -2].astype(np.intp)
        cid = X[:, -1].astype(np.intp)
        df = s.frame.iloc[rid].reset_index(drop=True)
        Dn = len(s.num)
        xn = X[:, :Dn]
        blank = s.missing[rid] & (xn == s.start[rid])
        for k, name in enumerate(s.num_names):
            df[name] = np.where(blank[:, k], np.nan, xn[:, k])
        code = self.codes[cid]
        for k, name in enumerate(s.cat_names):
            ch = code[:, k] >= 0
            if ch.any():
                col = df[name].to_numpy(dtype=object, copy=True)
                col[ch] = s.categories[k][code[ch, k]]
                df[name] = col
        return df

    def predict(self, X):
        if self.fast is not None:
            return self.fast.predict(self.encoded(X))
        return self.s.tm.predict(self.frame(X))


#: Final estimators whose ``predict`` is not the argmax of their ``predict_proba``: an SVC's
#: Platt-scaled probabilities disagree with its decision function near the boundary, where every
#: search ends (searching by them, every answer failed the pipeline's own ``predict``).
_PREDICT_NOT_ARGMAX = ("SVC", "NuSVC")


def _final_step(tm):
    est = tm.final_estimator
    while hasattr(est, "steps"):
        est = est.steps[-1][1]
    return est


class _RowBuilderProba(_RowBuilder):
    """With probabilities, one pipeline call answers both questions the searches ask of the same
    points (``predict`` as the argmax of ``predict_proba``, except for the final estimators of
    :data:`_PREDICT_NOT_ARGMAX`, which are asked for ``predict``); the final answers are checked
    once more with the pipeline's own ``predict``."""

    _last = None

    def __init__(self, setup, codes, n_extra, batched=True):
        super().__init__(setup, codes, n_extra, batched=batched)
        self._own_predict = type(_final_step(setup.tm)).__name__ in _PREDICT_NOT_ARGMAX

    def predict_proba(self, X):
        X = np.asarray(X, dtype=np.float64)
        key = (X.shape, hash(X.tobytes()))
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        if self.fast is not None:
            p = self.fast.predict_proba(self.encoded(X))
        else:
            p = self.s.tm.predict_proba(self.frame(X))
        self._last = (key, p)
        return p

    def predict(self, X):
        if self._own_predict:
            return super().predict(X)
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def _builder(setup, codes, n_extra):
    cls = _RowBuilderProba if setup.tm.has_proba else _RowBuilder
    return cls(setup, codes, n_extra, batched=BATCHED)


# ------------------------------------------------------------------------------------------------
# per-pair bookkeeping
# ------------------------------------------------------------------------------------------------

class _Best:
    """Best verified answer per row, and what is proven about the rest."""

    def __init__(self, n, Dn):
        self.total = np.full(n, np.inf)
        self.x = np.full((n, Dn), np.nan)
        self.combo = np.full(n, -1, dtype=np.intp)       # index into the global combo table
        self.target = np.full(n, -1, dtype=np.intp)
        self.exact = np.zeros(n, dtype=bool)
        self.method = np.full(n, None, dtype=object)
        self.already = np.zeros(n, dtype=bool)
        # lower bound over choices not solved exactly (inf: none open)
        self.open_lb = np.full(n, np.inf)
        self.failed = np.zeros(n, dtype=bool)
        self.tried = np.zeros(n, dtype=bool)

    def offer(self, rows, total, x, combo, target, exact, method):
        """Keep the better answers (per row; several pairs per row allowed)."""
        if len(rows) == 0:
            return
        order = np.lexsort((total, rows))
        rows, total, x, combo, target, exact, method = (rows[order], total[order], x[order], combo[order],
                                                        target[order], exact[order], method[order])
        first = np.r_[True, rows[1:] != rows[:-1]]
        r = rows[first]
        better = total[first] < self.total[r]
        rr = r[better]
        sel = np.flatnonzero(first)[better]
        self.total[rr] = total[sel]
        self.x[rr] = x[sel]
        self.combo[rr] = combo[sel]
        self.target[rr] = target[sel]
        self.exact[rr] = exact[sel]
        self.method[rr] = method[sel]

    def open(self, rows, lb):
        if len(rows):
            np.minimum.at(self.open_lb, rows, lb)


def _flat_codes(levels):
    table = np.concatenate([c for _, c in levels], axis=0) if levels else np.zeros((1, 0), dtype=np.intp)
    level_of = np.concatenate([np.full(len(c), m) for m, c in levels]) if levels else np.zeros(1)
    start = np.cumsum([0] + [len(c) for _, c in levels])
    return table, level_of.astype(np.intp), start


# ------------------------------------------------------------------------------------------------
# linear final estimator: exact enumeration
# ------------------------------------------------------------------------------------------------

def _current_offsets(tm, dec, setup):
    """``(n, C, M)`` score offsets of each row's own category (probing blanks and unseen values)."""
    from invaudit.models.tabular import reference_frame

    n, C = setup.codes.shape
    M = dec.W.shape[0]
    out = np.zeros((n, C, M))
    for k in range(C):
        code = setup.codes[:, k]
        known = code >= 0
        out[known, k] = dec.offsets[k][code[known]]
        odd = np.flatnonzero(~known)
        if len(odd):
            name = setup.cat_names[k]
            vals = setup.frame[name].to_numpy(dtype=object)[odd]
            keys = ["\0nan" if (v is None or (isinstance(v, float) and v != v)) else v for v in vals]
            uniq = list(dict.fromkeys(keys))
            P = reference_frame(tm, 1 + len(uniq))
            col = P[name].to_numpy(dtype=object, copy=True)
            col[1:] = [np.nan if u == "\0nan" else u for u in uniq]
            P[name] = col
            with _quiet():
                S = tm.scores(P)
            off = {u: S[1 + j] - S[0] for j, u in enumerate(uniq)}
            out[odd, k] = np.array([off[u] for u in keys])
    return out


def _solve_linear(setup, tm, dec, targets, confidence, time_limit, max_combinations, best):
    from invaudit.counterfactual.solve import counterfactuals as linear_counterfactuals

    n = setup.n
    Dn = len(setup.num)
    M = dec.W.shape[0]
    K = tm.n_classes
    levels, truncated = _combos(setup, len(setup.cat), max_combinations)
    if truncated:
        levels, truncated = _combos(setup, 2, max_combinations)
    table, level_of, _ = _flat_codes(levels)
    C = table.shape[1]
    with _quiet():
        s_row = tm.scores(setup.frame)
    cur = _current_offsets(tm, dec, setup)
    builder = _builder(setup, table, M)
    D = Dn + M + 2
    W_aug = np.zeros((M, D))
    W_aug[:, :Dn] = dec.W
    W_aug[:, Dn:Dn + M] = np.eye(M)
    form = LinearForm(estimator=builder, W=W_aug, b=np.zeros(M), link=dec.link, classes=tm.classes,
                      n_features=D)
    w_aug = np.ones(D)
    w_aug[:Dn] = setup.weights
    movable_int = setup.integer & np.any(setup.lower < setup.upper, axis=0)
    int_method = None
    if movable_int.any():
        int_method = "milp" if setup.norm in ("l1", "linf") and (confidence is None or M == 1) else "round"
    deadline = time.monotonic() + max(float(time_limit), 0.0) * max(1, n)
    offset = 0
    for m, codes in levels:
        q0 = offset
        offset += len(codes)
        active = np.flatnonzero(best.total > setup.catcost(m) * (1 + _REL) + 0.0)
        active = active[~best.already[active]]
        if len(active) == 0:
            continue
        rows, qi = _valid_pairs(setup, active, codes)
        if len(rows) == 0:
            continue
        qg = qi + q0
        # targets per pair ("other": one pair per class other than the row's prediction)
        if targets is None:
            if K == 2:
                tt = 1 - setup.orig[rows]
            else:
                rep = K - 1
                rows, qg = np.repeat(rows, rep), np.repeat(qg, rep)
                oth = np.array([[k for k in range(K) if k != o] for o in range(K)], dtype=np.intp)
                tt = oth[setup.orig[rows], np.tile(np.arange(rep), len(rows) // rep)]
        else:
            tt = targets[rows]
        code = table[qg]
        sh = s_row[rows].copy()
        for k in range(C):
            ch = code[:, k] >= 0
            if ch.any():
                sh[ch] += dec.offsets[k][code[ch, k]] - cur[rows[ch], k]
        xs = setup.start[rows]
        Xa = np.empty((len(rows), D))
        Xa[:, :Dn] = xs
        Xa[:, Dn:Dn + M] = sh - xs @ dec.W.T
        lo, hi = _augmented_box(setup, Xa, rows, qg, Dn)
        cons = Constraints(lower=lo, upper=hi, weights=w_aug)
        res = linear_counterfactuals(form, Xa, target=tt, confidence=confidence, norm=setup.norm,
                                     constraints=cons)
        best.tried[rows] = True
        got = (res.status == "found") | (res.status == "already-target")
        xr = res.x_cf[:, :Dn]
        dnum = np.where(got, setup.num_distance(np.nan_to_num(xr), rows), np.nan)
        tot = setup.total(m, dnum)
        # choices that failed: all that is known is their categorical cost
        fail = res.status == "failed"
        best.open(rows[fail], np.full(int(fail.sum()), float(setup.catcost(m))))
        best.failed[rows[fail]] = True
        methods = np.array([f"{'categories-only' if mm == 'check' else mm}+enumeration" for mm in res.method], dtype=object)
        if m == 0:
            best.already[rows[res.status == "already-target"]] = True
        if int_method is None:
            ex = got & res.exact
            # a verified but uncertified answer proves only its categorical cost
            best.open(rows[got & ~ex], np.full(int((got & ~ex).sum()), float(setup.catcost(m))))
            g = np.flatnonzero(got)
            best.offer(rows[g], tot[g], xr[g], qg[g], tt[g], ex[g], methods[g])
            continue
        # integer columns: the continuous optimum is a lower bound for its choice
        intok = got & np.all(~movable_int | (xr == np.round(xr)) | (xr == xs), axis=1)
        g = np.flatnonzero(intok)
        best.offer(rows[g], tot[g], xr[g], qg[g], tt[g], (res.exact & intok)[g], methods[g])
        need = np.flatnonzero(got & ~intok)
        if len(need) == 0:
            continue
        lb_cont = np.where(res.exact, tot, setup.catcost(m))
        if int_method == "round":
            xi, ti = _round_repair(setup, form, Xa[need], xr[need], tt[need], confidence, cons, need, Dn,
                                   movable_int, linear_counterfactuals)
            di = setup.num_distance(np.nan_to_num(xi), rows[need])
            toti = setup.total(m, di)
            ok = np.isfinite(toti) & ti
            best.offer(rows[need][ok], toti[ok], xi[ok], qg[need][ok], tt[need][ok],
                       np.zeros(int(ok.sum()), dtype=bool),
                       np.array(["round-and-repair+enumeration"] * int(ok.sum()), dtype=object))
            best.open(rows[need], lb_cont[need])
            continue
        # MILP per pair, cheapest lower bound first, skipping pairs that cannot win
        order = need[np.argsort(lb_cont[need], kind="stable")]
        for j in order:
            i = rows[j]
            if lb_cont[j] >= best.total[i] * (1 - _REL):
                continue
            if time.monotonic() > deadline:
                best.open(np.array([i]), np.array([lb_cont[j]]))
                continue
            x, status = _milp(setup, dec, i, sh[j], tt[j], confidence, movable_int, time_limit)
            if status == "infeasible":
                continue
            if x is None:
                best.open(np.array([i]), np.array([lb_cont[j]]))
                continue
            xa = Xa[j].copy()
            xa[:Dn] = x
            if builder.predict(xa[None, :])[0] != tm.classes[tt[j]]:
                best.open(np.array([i]), np.array([lb_cont[j]]))
                continue
            d = setup.num_distance(x[None, :], np.array([i]))
            best.offer(np.array([i]), setup.total(m, d), x[None, :], np.array([qg[j]]), np.array([tt[j]]),
                       np.array([True]), np.array(["milp-highs+enumeration"], dtype=object))
    if truncated:
        nxt = levels[-1][0] + 1 if levels else 0
        still = ~best.already
        best.open(np.flatnonzero(still), np.full(int(still.sum()), float(setup.catcost(nxt))))
    return table, level_of


def _round_repair(setup, form, Xa, xr, tt, confidence, cons, idx, Dn, movable_int, solver):
    """L2 with integer columns: round the continuous optimum's integer columns (away from the
    row; to the nearest integer), fix them and re-solve the continuous columns. Returns the best
    verified points (NaN rows where none) and a found mask."""
    xs = Xa[:, :Dn]
    best_x = np.full((len(Xa), Dn), np.nan)
    best_d = np.full(len(Xa), np.inf)
    for mode in ("away", "nearest"):
        xi = xr.copy()
        mv = movable_int[None, :] & (xr != xs)
        if mode == "away":
            r = np.where(xr > xs, np.ceil(xr), np.floor(xr))
        else:
            r = np.round(xr)
        xi = np.where(mv, r, xs)
        lo, hi = cons.lower[idx].copy(), cons.upper[idx].copy()
        xi = np.clip(xi, lo[:, :Dn], hi[:, :Dn])
        X2 = Xa.copy()
        X2[:, :Dn] = np.where(movable_int[None, :], xi, xs)
        lo[:, :Dn] = np.minimum(lo[:, :Dn], X2[:, :Dn])
        hi[:, :Dn] = np.maximum(hi[:, :Dn], X2[:, :Dn])
        lo[:, :Dn][:, movable_int] = X2[:, :Dn][:, movable_int]
        hi[:, :Dn][:, movable_int] = X2[:, :Dn][:, movable_int]
        c2 = Constraints(lower=lo, upper=hi, weights=cons.weights)
        res = solver(form, X2, target=tt, confidence=confidence, norm=setup.norm, constraints=c2)
        got = (res.status == "found") | (res.status == "already-target")
        x = res.x_cf[:, :Dn]
        d = np.where(got, np.linalg.norm((np.nan_to_num(x) - xs) * setup.weights, axis=1), np.inf)
        better = d < best_d
        best_x[better] = x[better]
        best_d[better] = d[better]
    return best_x, np.isfinite(best_d)


def _milp(setup, dec, i, s_start, t, confidence, movable_int, time_limit):
    """One choice of categories for row ``i`` with integer columns, L1 / Linf, as a MILP.
    Returns ``(x or None, status)``."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    Dn = len(setup.num)
    x0 = setup.start[i]
    lo, hi = setup.lower[i], setup.upper[i]
    w = setup.weights
    W = dec.W
    M = W.shape[0]
    K = setup.tm.n_classes
    # scores(x) = s_start + W (x - x0); class scores for the argmax: binary -> [0, s]
    if M == 1:
        Wf = np.vstack([np.zeros(Dn), W[0]])
        sf = np.array([0.0, s_start[0]])
    else:
        Wf, sf = W, s_start
    others = [k for k in range(K) if k != t]
    need = 0.0
    if confidence is not None and M == 1:
        need = max(math.log(confidence) - math.log1p(-confidence), 0.0)
    tau = 1e-9 * (1.0 + np.abs(sf).max())
    L1 = setup.norm == "l1"
    nu = Dn if L1 else 1
    nv = Dn + nu
    c = np.zeros(nv)
    c[Dn:] = 1.0
    A, lb_, ub_ = [], [], []
    for k in others:
        row = np.zeros(nv)
        row[:Dn] = Wf[t] - Wf[k]
        # (Wf_t - Wf_k) x >= sf_k - sf_t + (Wf_t - Wf_k) x0 + tau (+ need for the binary confidence)
        A.append(row)
        lb_.append(sf[k] - sf[t] + (Wf[t] - Wf[k]) @ x0 + tau + (need if M == 1 else 0.0))
        ub_.append(np.inf)
    for j in range(Dn):
        for sgn in (1.0, -1.0):
            row = np.zeros(nv)
            row[j] = sgn * w[j]
            row[Dn + (j if L1 else 0)] = -1.0
            A.append(row)
            lb_.append(-np.inf)
            ub_.append(sgn * w[j] * x0[j])
    integrality = np.zeros(nv)
    integrality[:Dn] = movable_int & (lo < hi)
    bl = np.r_[lo, np.zeros(nu)]
    bu = np.r_[hi, np.full(nu, np.inf)]
    # an unbounded integer variable is fine for HiGHS; infinite continuous bounds too
    # (HiGHS printf()s debug lines on stdout, which carries only the report: silenced)
    from invaudit._native_stdout import native_stdout_silenced

    with native_stdout_silenced():
        res = milp(c, constraints=LinearConstraint(np.array(A), np.array(lb_), np.array(ub_)),
                   integrality=integrality, bounds=Bounds(bl, bu),
                   options={"time_limit": float(time_limit), "mip_rel_gap": 1e-12})
    if res.status == 2:
        return None, "infeasible"
    if res.status != 0 or res.x is None:
        return None, "failed"
    x = res.x[:Dn].copy()
    x[integrality[:Dn] > 0] = np.round(x[integrality[:Dn] > 0])
    x = np.clip(x, lo, hi)
    return x, "ok"


# ------------------------------------------------------------------------------------------------
# other final forms: verified search per choice of at most two changed categories
# ------------------------------------------------------------------------------------------------

def _search_pairs(setup, form, Xa, lo, hi, w, tt, confidence, seed, m_pair, rows, *, keep, rounds):
    """Two stages, to bound the work: every (row, choice) pair gets the verified segment search
    toward reference points (no local search); then each row's ``keep`` most promising pairs
    (by total distance) get the local search. Returns (points, found, method)."""
    from invaudit.counterfactual._nl_blackbox import solve_blackbox
    from invaudit.counterfactual._nl_common import Pool, Problem, qualifies

    n = len(Xa)
    orig = form.predict_index(Xa)
    pool = Pool(form, Xa)
    prob = Problem(form=form, X=Xa, target=tt, P=confidence, norm=setup.norm, lower=lo, upper=hi,
                   weights=w, orig=orig, pool=pool, seed=int(seed))
    x = np.full(Xa.shape, np.nan)
    found = np.zeros(n, dtype=bool)
    method = np.full(n, "", dtype=object)
    already = qualifies(form, Xa, tt, confidence)[0]
    x[already] = Xa[already]
    found[already] = True
    method[already] = "categories-only"
    todo = np.flatnonzero(~already)
    if len(todo):
        a = solve_blackbox(prob.subset(todo), n_endpoints=4, rounds=0)
        ok = a.state == "found"
        x[todo[ok]] = a.x_cf[ok]
        found[todo[ok]] = True
        method[todo[ok]] = "segment-bisection"
    # the most promising pairs of each row get the local search
    d = np.where(found, np.linalg.norm((np.nan_to_num(x) - Xa) * w,
                                       ord={"l2": 2, "l1": 1, "linf": np.inf}[setup.norm], axis=1), np.inf)
    tot = setup.total(m_pair, d)
    cand = np.flatnonzero(found & ~already & (d > 0))
    if len(cand) and rounds > 0:
        order = cand[np.lexsort((tot[cand], rows[cand]))]
        rank = np.zeros(len(order), dtype=np.intp)
        r = rows[order]
        starts = np.r_[0, np.flatnonzero(r[1:] != r[:-1]) + 1]
        for k, st in enumerate(starts):
            end = starts[k + 1] if k + 1 < len(starts) else len(order)
            rank[st:end] = np.arange(end - st)
        pick = order[rank < keep]
        from invaudit.counterfactual._nl_blackbox import local_search

        sub = prob.subset(pick)
        B, dB = local_search(sub, x[pick], d[pick], rounds=rounds)
        ok = np.isfinite(dB)
        if ok.any():
            good = qualifies(form, B[ok], tt[pick][ok], confidence)[0]
            idx = pick[ok][good]
            x[idx] = B[ok][good]
            method[idx] = "segment-bisection+local-search"
    return x, found, method


def _solve_search(setup, tm, targets, confidence, time_limit, seed, best, max_level=2, max_pairs=4000,
                  keep_best=2, rounds=8):
    n = setup.n
    Dn = len(setup.num)
    K = tm.n_classes
    levels, _ = _combos(setup, max_level, 20000)
    table, level_of, _ = _flat_codes(levels)
    builder = _builder(setup, table, 0)
    form = BlackBoxForm(estimator=builder, classes=tm.classes, n_features=Dn + 2)
    rows, qg = _valid_pairs(setup, np.arange(n), table)
    if len(rows) > max_pairs:   # keep the cheapest choices (lower levels first)
        order = np.lexsort((rows, level_of[qg]))[:max_pairs]
        rows, qg = rows[order], qg[order]
    if targets is None:
        rep = K - 1
        rows, qg = np.repeat(rows, rep), np.repeat(qg, rep)
        oth = np.array([[k for k in range(K) if k != o] for o in range(K)], dtype=np.intp)
        tt = oth[setup.orig[rows], np.tile(np.arange(rep), len(rows) // max(rep, 1))]
    else:
        tt = targets[rows]
    if len(rows) == 0:
        return table, level_of
    Xa = np.empty((len(rows), Dn + 2))
    Xa[:, :Dn] = setup.start[rows]
    lo, hi = _augmented_box(setup, Xa, rows, qg, Dn)
    w_aug = np.r_[setup.weights, 1.0, 1.0]
    m_pair = level_of[qg]
    x, got, meth = _search_pairs(setup, form, Xa, lo, hi, w_aug, tt, confidence, seed, m_pair, rows,
                                 keep=keep_best, rounds=rounds)
    x = x[:, :Dn]
    best.tried[rows] = True
    mi = setup.integer & np.any(setup.lower < setup.upper, axis=0)
    if mi.any() and got.any():
        g = np.flatnonzero(got)
        xs = Xa[g, :Dn]
        frac = np.any(mi[None, :] & (x[g] != np.round(x[g])) & (x[g] != xs), axis=1)
        if frac.any():
            gf = g[frac]
            ok_any = np.zeros(len(gf), dtype=bool)
            xbest = x[gf].copy()
            for mode in ("nearest", "away"):
                xx = x[gf].copy()
                r = np.round(xx) if mode == "nearest" else np.where(xx > Xa[gf, :Dn], np.ceil(xx), np.floor(xx))
                chg = mi[None, :] & (xx != Xa[gf, :Dn])
                xx = np.where(chg, np.clip(r, setup.lower[rows[gf]], setup.upper[rows[gf]]), xx)
                pts = Xa[gf].copy()
                pts[:, :Dn] = xx
                pr = class_index(tm, builder.predict(pts))
                okm = pr == tt[gf]
                if confidence is not None and tm.has_proba:
                    p = builder.predict_proba(pts)[np.arange(len(gf)), tt[gf]]
                    okm &= p >= confidence
                take = okm & ~ok_any
                xbest[take] = xx[take]
                ok_any |= okm
            x[gf] = xbest
            got[gf[~ok_any]] = False
    m = m_pair
    dnum = setup.num_distance(np.nan_to_num(x), rows)
    tot = setup.total(m, dnum)
    g = np.flatnonzero(got)
    z = g[(dnum[g] == 0) & (m[g] == 0)]
    best.already[rows[z]] = True
    best.failed[rows[~got]] = True
    methods = np.array([f"verified-search:{mm}+categorical-search" for mm in meth[g]], dtype=object)
    best.offer(rows[g], tot[g], x[g], qg[g], tt[g], np.zeros(len(g), dtype=bool), methods)
    return table, level_of


def _chunk(shared, part, a, b, progress):
    """Chunks ``part["idx"]`` (consecutive, ``chunk_rows`` rows each) of a run, each solved on its
    own as a call with those rows only (module level: a worker process imports it by name)."""
    tm, frame, target, size, options = (shared[k] for k in ("tm", "frame", "target", "size", "options"))
    out = []
    for k in part["idx"]:
        lo = int(k) * size
        hi = min(lo + size, len(frame))
        out.append(tabular_counterfactuals(tm, frame.iloc[lo:hi], target=target if isinstance(target, str)
                                           else target[lo:hi], chunk_rows=size, **options))
    return out


def _chunked(tm, frame, target, size, *, jobs, scheduler, progress, options) -> "TabularCounterfactuals":
    """The rows in consecutive chunks of ``size`` (fixed: the chunks, hence the answers, do not
    depend on who solves them), one chunk per task of :func:`invaudit.parallel.map_chunks`."""
    from invaudit import parallel

    n_all = len(frame)
    k = -(-n_all // size)
    report = None
    if progress is not None:
        def report(done, total):  # chunks done -> rows done (only the last chunk is shorter)
            progress(n_all if done >= total else min(n_all, done * size), n_all)
    shared = {"tm": tm, "frame": frame, "target": target, "size": int(size), "options": options}
    parts = parallel.map_chunks(_chunk, k, shared=shared, parts={"idx": np.arange(k)}, jobs=jobs,
                                scheduler=scheduler, progress=report, min_rows=1, max_chunks=k)
    return TabularCounterfactuals.concat([r for p in parts for r in p])


def class_index(tm, labels):
    from invaudit.models.base import class_indices

    return class_indices(tm.classes, labels)


# ------------------------------------------------------------------------------------------------
# the entry point
# ------------------------------------------------------------------------------------------------

def tabular_counterfactuals(tm: TabularModel, frame, *, target, confidence=None, norm="l2",
                            immutable=(), increase_only=(), decrease_only=(), integer=(), bounds=None,
                            scale=None, categorical_cost=1.0, allow_missing_change=False,
                            time_limit=10.0, seed=0, max_combinations=20000, progress=None,
                            chunk_rows=None, jobs=1, scheduler=None) -> TabularCounterfactuals:
    """The closest valid row of the input schema that the pipeline assigns to ``target``.

    Parameters
    ----------
    tm : TabularModel
        :func:`invaudit.models.tabular.split_tabular` of the fitted pipeline.
    frame : pandas.DataFrame
        The rows, with (at least) the model's columns: numeric float64 with NaN for blanks,
        categorical as the user's values (NaN for blanks).
    target : int array (n,), int, or "other"
        Class indices; ``"other"``: for each row the closest class other than its prediction.
    confidence : float in (0, 1), optional
        Also ask for ``p(target) >= confidence`` (verified by ``predict_proba``).
    norm : {"l2", "l1", "linf"}
    immutable, increase_only, decrease_only, integer : column names (a list or "a,b")
    bounds : dict column -> (lo, hi), optional
        Numeric columns' ranges (``--bounds data``); a row outside stays where it is.
    scale : dict column -> spread, optional
        ``--scale std|mad``: numeric column ``j`` contributes ``|dx_j| / scale_j``.
    categorical_cost : float
        The cost of changing one categorical column (module docstring).
    allow_missing_change : bool
        Let blanks take values (they are frozen otherwise).
    time_limit : float
        Seconds per MILP (integer columns, L1 / Linf) and per row overall for them.
    seed : int
        Seeds the search for non-linear final estimators.
    max_combinations : int
        The most choices of categories enumerated for a linear model; beyond, at most two
        changed categorical columns (module docstring).
    progress : callable(done, total), optional
        Called after each chunk of rows.
    chunk_rows : int, optional
        Rows are solved in consecutive chunks of this many (default :data:`CHUNK_ROWS`; bounded
        memory, progress between chunks). Every row's answer is the same whatever else is in the batch, up to the
        non-linear search's cap on category choices per chunk: the chunk size is fixed, so
        results are deterministic.
    jobs, scheduler : the chunks in parallel (:mod:`invaudit.parallel`: ``jobs`` None is auto,
        1 serial, N processes; ``scheduler`` a Dask address). The chunks are the same whoever
        solves them, so the answers are identical bit for bit; with more than one chunk, every
        chunk runs with BLAS on one thread, serially as in parallel.

    Returns
    -------
    TabularCounterfactuals

    What is exact
    -------------
    Linear final estimators: the optimum over every choice of categories, each solved exactly
    (all norms, boxes, weights, frozen columns; integer columns under L1 / Linf by MILP), unless
    the enumeration was capped and the bound does not prove it, or L2 with integer columns
    (round-and-repair, with the continuous relaxation as ``lower_bound``). Other final forms:
    never (verified by the pipeline's own ``predict``).
    """
    n_all = len(frame)
    chunk_rows = CHUNK_ROWS if chunk_rows is None else max(1, int(chunk_rows))
    if n_all > chunk_rows:
        t_all = target
        if not isinstance(target, str):
            t_all = np.asarray(target)
            if t_all.ndim == 0:
                t_all = np.full(n_all, t_all)
        return _chunked(tm, frame, t_all, chunk_rows, jobs=jobs, scheduler=scheduler, progress=progress,
                        options=dict(confidence=confidence, norm=norm, immutable=immutable,
                                     increase_only=increase_only, decrease_only=decrease_only, integer=integer,
                                     bounds=bounds, scale=scale, categorical_cost=categorical_cost,
                                     allow_missing_change=allow_missing_change, time_limit=time_limit, seed=seed,
                                     max_combinations=max_combinations))
    # a chunk is at most a few thousand small batches: thread teams cost more than they save (an
    # OpenMP team per HistGradientBoosting tree made its two verification calls seconds long on a
    # loaded machine)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return _solve_rows(tm, frame, target=target, confidence=confidence, norm=norm, immutable=immutable,
                           increase_only=increase_only, decrease_only=decrease_only, integer=integer,
                           bounds=bounds, scale=scale, categorical_cost=categorical_cost,
                           allow_missing_change=allow_missing_change, time_limit=time_limit, seed=seed,
                           max_combinations=max_combinations, progress=progress)


def _solve_rows(tm, frame, *, target, confidence, norm, immutable, increase_only, decrease_only, integer, bounds,
                scale, categorical_cost, allow_missing_change, time_limit, seed, max_combinations, progress):
    """:func:`tabular_counterfactuals` of one chunk of rows."""
    import pandas as pd

    if norm not in NORMS:
        raise InputError(f"unknown norm {norm!r}; use one of {', '.join(NORMS)}.")
    if confidence is not None:
        confidence = float(confidence)
        if not (0.0 < confidence < 1.0):
            raise InputError(f"confidence must lie strictly between 0 and 1, got {confidence}.")
        if not tm.has_proba:
            raise InputError("this model has no predict_proba, so a confidence cannot be verified.")
    setup = _Setup(tm, frame, immutable=immutable, increase_only=increase_only, decrease_only=decrease_only,
                   integer=integer, bounds=bounds, scale=scale, categorical_cost=categorical_cost,
                   allow_missing_change=allow_missing_change, norm=norm)
    n = setup.n
    K = tm.n_classes
    Dn = len(setup.num)
    orig = tm.predict_index(setup.frame) if n else np.zeros(0, dtype=np.intp)
    setup.orig = orig
    if isinstance(target, str):
        if target != "other":
            raise InputError(f"target must be class indices or 'other', got {target!r}.")
        targets = None
    else:
        targets = np.asarray(target)
        if targets.ndim == 0:
            targets = np.full(n, targets)
        if targets.shape != (n,) or not np.issubdtype(targets.dtype, np.integer):
            raise InputError(f"target must be one class index per row ({n}).")
        if n and (targets.min() < 0 or targets.max() >= K):
            raise InputError(f"target class index out of range for a {K}-class model.")
        targets = targets.astype(np.intp)
    best = _Best(n, Dn)
    dec = tm.linear_decomposition()
    if n == 0:
        table, level_of = np.zeros((1, len(setup.cat)), dtype=np.intp), np.zeros(1, dtype=np.intp)
    elif dec is not None:
        table, level_of = _solve_linear(setup, tm, dec, targets, confidence, time_limit, max_combinations, best)
    else:
        # many small pipeline calls: thread pools cost more than they save (as in .nonlinear)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):
            table, level_of = _solve_search(setup, tm, targets, confidence, time_limit, seed, best)

    # ---- the answers as rows of the user's schema, verified once more by the pipeline ---------
    points = setup.frame.copy()
    have = np.isfinite(best.total)
    hv = np.flatnonzero(have)
    xs = best.x[hv]
    if len(hv):
        xi = setup.integer[None, :] & (xs != setup.start[hv])
        xs = np.where(xi, np.round(xs) + 0.0, xs)   # + 0.0: no "-0.0" in the user's data
        blank = setup.missing[hv] & (xs == setup.start[hv])
        for k, name in enumerate(setup.num_names):
            col = points[name].to_numpy(dtype=np.float64, copy=True)
            col[hv] = np.where(blank[:, k], np.nan, xs[:, k])
            points[name] = col
        code = table[best.combo[hv]]
        for k, name in enumerate(setup.cat_names):
            ch = code[:, k] >= 0
            if ch.any():
                col = points[name].to_numpy(dtype=object, copy=True)
                col[hv[ch]] = setup.categories[k][code[ch, k]]
                points[name] = col
        for name in setup.cat_names:
            dt = setup.frame[name].dtype
            if points[name].dtype != dt:
                if isinstance(dt, pd.CategoricalDtype):
                    # the user's dtype may not list every category the model knows: add the new ones
                    new = [v for v in pd.unique(points[name].dropna()) if v not in set(dt.categories)]
                    if new:
                        dt = pd.CategoricalDtype(list(dt.categories) + new, ordered=dt.ordered)
                points[name] = points[name].astype(dt)
    pred = np.full(n, -1, dtype=np.intp)
    tprob = np.full(n, np.nan)
    if len(hv):
        sub = points.iloc[hv]
        pred[hv] = tm.predict_index(sub)
        pr = tm.predict_proba(sub)
        if pr is not None:
            tprob[hv] = pr[np.arange(len(hv)), best.target[hv]]
    ok = have & (pred == np.where(have, best.target, -2))
    if confidence is not None:
        ok &= ~(tprob < confidence)
    lost = have & ~ok
    status = np.full(n, "failed", dtype=object)
    reason = np.full(n, None, dtype=object)
    status[ok] = np.where(best.already[ok] & (best.total[ok] == 0), "already-target", "found")
    reason[lost] = "the pipeline's own prediction does not confirm the point"
    none = ~have
    certified = none & best.tried & ~best.failed & (dec is not None) & ~np.isfinite(best.open_lb)
    status[certified] = "infeasible"
    reason[certified] = "no choice of categories and numeric values within the constraints reaches the target"
    status[none & ~certified] = np.where(best.tried[none & ~certified], "failed", "infeasible")
    for i in np.flatnonzero(none & ~certified):
        reason[i] = ("no verified point was found" if best.tried[i]
                     else "no column may move (every column is frozen, blank or immutable)")
    exact = ok & best.exact & (best.open_lb >= best.total * (1 - 1e-9))
    lower = np.where(ok & exact, best.total, np.where(ok, np.minimum(best.open_lb, best.total), np.nan))
    lower = np.where(ok & ~exact & (dec is None), np.nan, lower)
    lower = np.where(certified, np.inf, lower)
    dist = np.where(ok, best.total, np.nan)
    method = np.full(n, "", dtype=object)
    method[ok] = best.method[ok]
    method[status == "already-target"] = "check"
    tgt_out = np.where(ok, best.target, -1) if targets is None else targets.copy()
    points_out = points.copy()
    keep = ~ok
    if keep.any():
        points_out.loc[keep] = setup.frame.loc[keep]
    changes = []
    for i in range(n):
        ch = []
        if ok[i]:
            for name in tm.column_names:
                a, b = setup.frame.at[i, name], points_out.at[i, name]
                same = (a == b) or (_json(a) is None and _json(b) is None)
                if not same:
                    ch.append((name, a, b))
        changes.append(ch)
    if isinstance(frame, pd.DataFrame) and len(frame.index) == n:
        points_out.index = frame.index
    if progress is not None:
        progress(n, n)
    return TabularCounterfactuals(
        status=status, reason=reason, points=points_out, distance=dist, original_index=orig,
        target_index=np.asarray(tgt_out, dtype=np.intp), predicted_index=pred, target_probability=tprob,
        exact=exact, method=method, lower_bound=np.where(np.isinf(lower), np.nan, lower), changes=changes, norm=norm, numeric_columns=tuple(setup.num_names))
