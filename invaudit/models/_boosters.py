"""LightGBM and XGBoost classifiers in the trees form, read from their own JSON dumps.

``LGBMClassifier`` is read from ``Booster.dump_model()`` and ``XGBClassifier`` from
``Booster.save_raw("json")`` (the model XGBoost itself saves: trees, ``tree_info``, base score).
Each split is turned into the exact set of float64 inputs that go left, *as the library
evaluates it*:

LightGBM (``x`` is used as a double)
    numeric split: left iff ``x <= threshold``. A dense row is read with every value of magnitude
    at most ``kZeroThreshold = 1e-35f`` stored as 0; with ``missing_type == "Zero"`` such values
    (zeros) take ``default_left``; NaN takes ``default_left`` with ``missing_type == "NaN"`` and
    is read as 0 otherwise.
    categorical split (``decision_type == "=="``): ``int(x)`` (truncated toward zero); a negative
    result goes right; left iff it is in the split's category set. So category ``c >= 1`` is
    ``c <= x < c + 1`` and category 0 is ``-1 < x < 1``.
XGBoost (``x`` is first rounded to float32, as its DMatrix stores it)
    numeric split: left iff ``float32(x) < split_condition`` (float32); a value equal to the
    model's ``missing`` (NaN by default) takes ``default_left``.

A split therefore cuts a feature's line into runs (open below, closed above, the convention of
:class:`~invaudit.models.base.TreeBoxes`), each sent to one child; a leaf reached through runs
that are not contiguous (a category set, LightGBM's zero band) becomes several boxes with the
same value. The boxes of a tree partition the space (rows with NaN excepted; those are routed by
the library and reported in the first box of their leaf).

Scores. LightGBM: raw score = sum of leaf values (the first tree holds the initial score;
``boosting_type="rf"`` averages the trees); ``binary`` is ``p = sigmoid(sigma * raw)``
(``scale = sigma``), ``cross_entropy`` is ``sigmoid(raw)``, ``multiclass`` is ``softmax(raw)``.
XGBoost: margin = base margin + sum of leaf values (``dart``: each tree times its weight);
``binary:logistic`` is ``sigmoid``, ``multi:softprob`` is ``softmax``. Trees are ordered so that
tree ``t`` adds to output ``t % M``, as :class:`~invaudit.models.trees._Trees` expects. Only the
trees the estimator's own ``predict`` uses are read (``best_iteration`` after early stopping).

Not represented (``from_estimator`` returns None, so the model stays a black box): other
objectives (``multiclassova``, ``binary:logitraw``, custom ones), LightGBM linear trees, XGBoost
vector-leaf trees and gblinear. Categorical splits (LightGBM ``categorical_feature`` or pandas
category columns, XGBoost ``enable_categorical``) raise
:class:`~invaudit.errors.UnsupportedModelError`: the solvers would move a category code as a
number. They are read exactly all the same with ``from_estimator(est, categorical=True)``
(LightGBM: ``int(x)`` truncated toward zero, in the set goes left, negative goes right; XGBoost:
``int(float32(x))`` in the set goes right, negative or past ``2**24`` goes left), for a solver
that keeps those columns whole.

``leaf_index`` walks the tree of runs the boxes were built from (vectorised over rows and trees;
0.7 ms for one row where a single call into LightGBM or XGBoost took 27-54 ms on a loaded
machine); a row with NaN is routed by the library itself (``pred_leaf`` / ``apply``) and reported
in the first box of its leaf. The tests check both against the libraries' own predictions.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np

from invaudit.errors import UnsupportedModelError
from invaudit.models.base import TreeBoxes

__all__ = ["is_booster", "from_estimator", "has_categorical_splits"]

_CATEGORICAL = ("this {lib} model splits on categories ({how}); invaudit would move category "
                "codes as numbers, so it is refused (fit it on one-hot or ordinal-encoded columns)")

# LightGBM's kZeroThreshold (a float constant compared as a double)
_ZERO = float(np.float32(1e-35))


def is_booster(est) -> bool:
    """Whether ``est`` is a LightGBM or XGBoost scikit-learn classifier (without importing them)."""
    module = type(est).__module__
    return (module.startswith("lightgbm.") and type(est).__name__ == "LGBMClassifier") or \
        (module.startswith("xgboost.") and type(est).__name__ == "XGBClassifier")


# --- one split as runs over a feature's line ---------------------------------------------------

def _runs(breaks, decide):
    """``(uppers, children)``: the line cut at the sorted finite ``breaks`` into runs
    ``(uppers[r-1], uppers[r]]`` (the last one up to +inf), each with the child ``decide`` gives
    at its upper end; neighbouring runs with the same child are merged."""
    reps = sorted({float(v) for v in breaks if math.isfinite(v)}) + [math.inf]
    uppers, children = [], []
    for v in reps:
        c = decide(float(v))
        if children and children[-1] == c:
            uppers[-1] = v
        else:
            uppers.append(v)
            children.append(c)
    return np.asarray(uppers, dtype=np.float64), children


def _prev(v: float) -> float:
    return float(np.nextafter(v, -np.inf))


def _f32_below(c) -> float:
    """The largest double ``x`` with ``float32(x) < c`` (``c`` a float32)."""
    from invaudit.models.trees import float32_split_point

    below = np.nextafter(np.float32(c), np.float32(-np.inf))
    return float(float32_split_point(np.array([np.float64(below)]))[0])


def _boxes(root, n_features: int):
    """Leaf boxes of a tree given as nested ``(feature, uppers, children)`` / ``("leaf", id,
    value)`` tuples, and the tree *of runs* that leads to them.

    Returns ``(lower, upper, leaf ids, values, walk)``, one row per box. A leaf reached through
    several runs of one split gets one box per path, so the tree of runs (``walk``: per expanded
    node its feature and its non-empty runs ``(upper, next)``; ``next >= 0`` an expanded node,
    ``-(b + 1)`` box ``b``) routes every row without NaN to the one box that holds it.
    """
    lows, ups, ids, vals = [], [], [], []
    feat, rstart, rcount, rup, rnext = [], [], [], [], []
    root_ref = 0
    stack = [(root, np.full(n_features, -np.inf), np.full(n_features, np.inf), -1)]
    while stack:
        node, lo, hi, slot = stack.pop()
        if node[0] == "leaf":
            ref = -(len(ids) + 1)
            lows.append(lo)
            ups.append(hi)
            ids.append(node[1])
            vals.append(node[2])
        else:
            f, uppers, children = node
            ref = len(feat)
            feat.append(f)
            rstart.append(len(rup))
            below = -np.inf
            pushed, empty, n_runs = set(), {}, 0
            for up, child in zip(uppers, children):
                a, b = max(lo[f], below), min(hi[f], up)
                below = up
                if a < b:
                    pushed.add(id(child))
                    lo2, hi2 = lo.copy(), hi.copy()
                    lo2[f], hi2[f] = a, b
                    stack.append((child, lo2, hi2, len(rup)))
                    rup.append(b)
                    rnext.append(0)
                    n_runs += 1
                elif id(child) not in empty:
                    empty[id(child)] = (child, a, b)
            rcount.append(n_runs)
            # a child no value of this feature reaches (only NaN does, through the default
            # direction) still gets its leaves, with empty boxes (lower >= upper), as
            # HistGradientBoosting's NaN-only leaves do in invaudit.models.trees
            for key, (child, a, b) in empty.items():
                if key not in pushed:
                    lo2, hi2 = lo.copy(), hi.copy()
                    lo2[f], hi2[f] = a, b
                    stack.append((child, lo2, hi2, -2))
        if slot >= 0:
            rnext[slot] = ref
        elif slot == -1:
            root_ref = ref
    walk = (root_ref, np.asarray(feat, dtype=np.intp), np.asarray(rstart, dtype=np.intp),
            np.asarray(rcount, dtype=np.intp), np.asarray(rup, dtype=np.float64),
            np.asarray(rnext, dtype=np.intp))
    return np.array(lows), np.array(ups), np.array(ids, dtype=np.intp), np.array(vals), walk


def _walker(walks, d: int):
    """``X -> (n, T)`` box per tree for rows without NaN: all trees' run tables stacked and
    walked together, vectorised over (row, tree) pairs, one step per level."""
    roots, feats, starts, counts, ups, nexts = [], [], [], [], [], []
    node_off, run_off = 0, 0
    for root, feat, rstart, rcount, rup, rnext in walks:
        roots.append(root + node_off if root >= 0 else root)
        feats.append(feat)
        starts.append(rstart + run_off)
        counts.append(rcount)
        ups.append(rup)
        nexts.append(np.where(rnext >= 0, rnext + node_off, rnext))
        node_off += len(feat)
        run_off += len(rup)
    roots = np.asarray(roots, dtype=np.intp)
    feat = np.concatenate(feats) if feats else np.zeros(0, np.intp)
    start = np.concatenate(starts) if starts else np.zeros(0, np.intp)
    count = np.concatenate(counts) if counts else np.zeros(0, np.intp)
    up = np.concatenate(ups) if ups else np.zeros(0)
    nxt = np.concatenate(nexts) if nexts else np.zeros(0, np.intp)
    max_runs = int(count.max()) if count.size else 1
    T = len(roots)

    def walk(X):
        n = X.shape[0]
        cur = np.tile(roots, n)
        flat = X.ravel()
        for _ in range(len(feat) + 1):
            idx = np.flatnonzero(cur >= 0)
            if idx.size == 0:
                break
            e = cur[idx]
            x = flat[(idx // T) * d + feat[e]]
            s, c = start[e], count[e]
            choice = s + c - 1
            for r in range(max_runs - 2, -1, -1):  # the first run whose upper end is >= x
                hit = (r < c - 1) & (x <= up[s + np.minimum(r, c - 1)])
                choice = np.where(hit, s + r, choice)
            cur[idx] = nxt[choice]
        return (-cur - 1).reshape(n, T)

    return walk


# --- LightGBM --------------------------------------------------------------------------------------

def _lgb_decide_numeric(t: float, default_left: bool, missing: str):
    def decide(x):
        if abs(x) <= _ZERO:
            if missing == "Zero":
                return 0 if default_left else 1
            x = 0.0
        return 0 if x <= t else 1
    return decide


def _lgb_decide_categorical(cats: frozenset):
    def decide(x):
        if abs(x) <= _ZERO:
            x = 0.0
        if not -1.0 < x < 2.0 ** 31:
            return 1
        return 0 if int(x) in cats else 1
    return decide


class _NotBoxes(Exception):
    """The tree is not a union of boxes with constant values (LightGBM linear trees)."""


def _lgb_tree(root, categorical: bool):
    """The nested-tuple tree of a ``dump_model()`` tree structure (a single leaf included);
    a categorical split raises UnsupportedModelError unless ``categorical``."""
    order, stack = [], [root]
    while stack:  # iterative: a stack of pending nodes, then built children first
        nd = stack.pop()
        order.append(nd)
        if "split_feature" in nd:
            stack.append(nd["left_child"])
            stack.append(nd["right_child"])
    built = {}
    for nd in reversed(order):
        if "split_feature" not in nd:
            if nd.get("leaf_coeff"):
                raise _NotBoxes
            built[id(nd)] = ("leaf", int(nd.get("leaf_index", 0)), float(nd["leaf_value"]))
            continue
        kids = (built[id(nd["left_child"])], built[id(nd["right_child"])])
        if nd["decision_type"] == "==":
            if not categorical:
                raise UnsupportedModelError(_CATEGORICAL.format(lib="LightGBM", how="categorical_feature"))
            cats = frozenset(int(c) for c in str(nd["threshold"]).split("||"))
            breaks = [-1.0, _prev(-_ZERO), _ZERO]
            for c in cats:
                breaks += [_prev(float(c)) if c else -1.0, _prev(float(c + 1))]
            decide = _lgb_decide_categorical(cats)
        elif nd["decision_type"] == "<=":
            t = float(nd["threshold"])
            breaks = [t, _prev(-_ZERO), _ZERO]
            decide = _lgb_decide_numeric(t, bool(nd["default_left"]), str(nd["missing_type"]))
        else:
            raise _NotBoxes
        uppers, children = _runs(breaks, decide)
        built[id(nd)] = (int(nd["split_feature"]), uppers, [kids[c] for c in children])
    return built[id(root)]


def _lgb_link(objective: str):
    """``(link, scale)`` of a LightGBM objective string, or None."""
    name, *params = objective.split()
    opts = dict(p.split(":", 1) for p in params if ":" in p)
    if name == "binary":
        return "sigmoid", float(opts.get("sigmoid", 1.0))
    if name in ("cross_entropy", "xentropy"):
        return "sigmoid", 1.0
    if name in ("multiclass", "softmax"):
        return "softmax", 1.0
    return None


def _from_lightgbm(est, d: int, categorical: bool):
    booster = est.booster_
    if booster.pandas_categorical:  # the codes it splits on are not the values in the user's file
        raise UnsupportedModelError(_CATEGORICAL.format(lib="LightGBM", how="pandas category columns"))
    dump = booster.dump_model()  # num_iteration=None: the best iteration, as predict uses
    link = _lgb_link(str(dump.get("objective", "")))
    if link is None:
        return None
    M = int(dump["num_tree_per_iteration"])
    if (M == 1) != (link[0] == "sigmoid") or int(dump["max_feature_idx"]) + 1 != d:
        return None
    try:
        trees = [_lgb_tree(info["tree_structure"], categorical) for info in dump["tree_info"]]
    except _NotBoxes:
        return None
    scale = link[1]
    if dump.get("average_output"):
        scale /= max(len(trees) // M, 1)

    def library_leaves(X):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(est.predict(X, pred_leaf=True), dtype=np.intp).reshape(len(X), -1)

    classes_out = [t % M for t in range(len(trees))]
    return _assemble(est, trees, classes_out, M, d, np.zeros(M), scale, link[0], library_leaves)


# --- XGBoost ---------------------------------------------------------------------------------------

def _xgb_decide(cond, default_left: bool, missing):
    c32 = np.float32(cond)

    def decide(x):
        with np.errstate(over="ignore"):
            v = np.float32(x)
        if missing is not None and v == missing:
            return 0 if default_left else 1
        return 0 if v < c32 else 1
    return decide


def _xgb_decide_categorical(cats: frozenset, default_left: bool, missing):
    # XGBoost: a category in the split's set goes right; negative, too large (>= 2**24) and
    # unknown codes go left; the code is int(float32(x))
    def decide(x):
        with np.errstate(over="ignore"):
            v = np.float32(x)
        if missing is not None and v == missing:
            return 0 if default_left else 1
        if not 0.0 <= v < 2.0 ** 24:
            return 0
        return 1 if int(v) in cats else 0
    return decide


def _xgb_tree(tree, missing, weight: float, categorical: bool = False):
    left = np.asarray(tree["left_children"], dtype=np.int64)
    right = np.asarray(tree["right_children"], dtype=np.int64)
    feature = np.asarray(tree["split_indices"], dtype=np.int64)
    cond = np.asarray(tree["split_conditions"], dtype=np.float32)
    default_left = np.asarray(tree["default_left"], dtype=bool)
    split_type = np.asarray(tree.get("split_type", np.zeros(len(left))), dtype=np.int64)
    if np.any(split_type != 0) and not categorical:
        raise UnsupportedModelError(_CATEGORICAL.format(lib="XGBoost", how="enable_categorical"))
    cat_sets = {}
    cats = np.asarray(tree.get("categories", []), dtype=np.int64)
    for node, start, size in zip(tree.get("categories_nodes", []), tree.get("categories_segments", []),
                                 tree.get("categories_sizes", [])):
        cat_sets[int(node)] = frozenset(int(c) for c in cats[int(start):int(start) + int(size)])
    miss_breaks = []
    if missing is not None:
        m = np.float32(missing)
        miss_breaks = [_f32_below(m), _f32_below(np.nextafter(m, np.float32(np.inf)))]
    built = {}
    for i in range(len(left) - 1, -1, -1):  # children come after their parents
        if left[i] == -1:
            built[i] = ("leaf", i, float(cond[i]) * weight)
            continue
        m32 = None if missing is None else np.float32(missing)
        if split_type[i] != 0:
            chosen = cat_sets.get(i, frozenset())
            decide = _xgb_decide_categorical(chosen, bool(default_left[i]), m32)
            breaks = [_f32_below(np.float32(0.0)), _f32_below(np.float32(2.0 ** 24))]
            for c in chosen:
                breaks += [_f32_below(np.float32(c)), _f32_below(np.float32(c + 1))]
        else:
            decide = _xgb_decide(cond[i], bool(default_left[i]), m32)
            breaks = [_f32_below(cond[i])]
        uppers, children = _runs(breaks + miss_breaks, decide)
        kids = (built[int(left[i])], built[int(right[i])])
        built[i] = (int(feature[i]), uppers, [kids[c] for c in children])
    return built[0]


def _xgb_intercept(objective: str, base_score, M: int):
    bs = np.asarray(base_score, dtype=np.float64).reshape(-1)
    if bs.size == 1:
        bs = np.repeat(bs, M)
    if objective == "binary:logistic":
        with np.errstate(divide="ignore"):
            return np.log(bs / (1.0 - bs))[:1]
    return bs[:M]


def _from_xgboost(est, d: int, categorical: bool):
    booster = est.get_booster()
    doc = json.loads(bytes(booster.save_raw(raw_format="json")))
    learner = doc["learner"]
    objective = learner["objective"]["name"]
    if objective not in ("binary:logistic", "multi:softprob"):
        return None
    gb = learner["gradient_booster"]
    weights = None
    if gb["name"] == "dart":
        weights = np.asarray(gb["weight_drop"], dtype=np.float64)
        gb = gb["gbtree"]
    if gb["name"] != "gbtree":
        return None
    model = gb["model"]
    param = learner["learner_model_param"]
    if int(param["num_feature"]) != d or int(param.get("num_target", "1")) != 1:
        return None
    n_class = int(param["num_class"])
    M = 1 if objective == "binary:logistic" else n_class
    # the trees predict uses: best_iteration after early stopping, else all
    indptr = np.asarray(model.get("iteration_indptr", [0, len(model["trees"])]), dtype=np.intp)
    try:
        begin, end = est._get_iteration_range(None)
    except Exception:  # noqa: BLE001 - a private helper; all trees otherwise
        begin, end = 0, 0
    if begin != 0:
        return None
    n_used = int(indptr[end]) if 0 < end < len(indptr) else len(model["trees"])
    missing = getattr(est, "missing", np.nan)
    missing = None if missing is None or (isinstance(missing, float) and math.isnan(missing)) \
        else float(missing)
    info = np.asarray(model["tree_info"], dtype=np.intp)[:n_used]
    trees, owner = [], []
    for t in range(n_used):
        w = 1.0 if weights is None else float(weights[t])
        trees.append(_xgb_tree(model["trees"][t], missing, w, categorical))
        owner.append(int(info[t]))
    base = json.loads(param["base_score"]) if str(param["base_score"]).startswith("[") \
        else float(param["base_score"])
    init = _xgb_intercept(objective, base, M)

    def library_leaves(X):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(est.apply(X), dtype=np.intp).reshape(len(X), -1)

    link = "sigmoid" if M == 1 else "softmax"
    form = _assemble(est, trees, owner, M, d, init, 1.0, link, library_leaves)
    return form


# --- the form ------------------------------------------------------------------------------------

def _assemble(est, trees, owner, M: int, d: int, init, scale: float, link: str, library_leaves):
    """The trees form of parsed trees (``owner[t]``: the output tree ``t`` adds to)."""
    from invaudit.models.trees import _make_form, _Trees

    per_class = [[t for t in range(len(trees)) if owner[t] == k] for k in range(M)]
    if len({len(p) for p in per_class}) != 1:
        return None
    order = [per_class[k][j] for j in range(len(per_class[0])) for k in range(M)]
    boxes, maps, walks, first = [], [], [], []
    for t in order:
        lower, upper, ids, vals, walk = _boxes(trees[t], d)
        value = np.zeros((len(ids), M))
        value[:, owner[t]] = vals
        boxes.append(TreeBoxes(lower=lower, upper=upper, value=value))
        maps.append(np.arange(len(ids), dtype=np.intp))
        walks.append(walk)
        f = np.full(int(ids.max()) + 1, -1, dtype=np.intp)
        f[ids[::-1]] = np.arange(len(ids))[::-1]  # the first box of each leaf
        first.append(f)
    order_arr = np.asarray(order, dtype=np.intp)
    walk_rows = _walker(walks, d)

    def box_ids(X):
        X = np.asarray(X, dtype=np.float64)
        out = walk_rows(np.nan_to_num(X, nan=0.0, posinf=np.inf, neginf=-np.inf))
        missing = np.flatnonzero(np.isnan(X).any(axis=1))
        if missing.size:  # NaN: the libraries' own routing, reported in the leaf's first box
            lib = library_leaves(X[missing])[:, order_arr]
            for t in range(len(order)):  # a loop over trees; rows are vectorised
                f = first[t]
                leaf = lib[:, t]
                if np.any((leaf < 0) | (leaf >= len(f))) or np.any(f[leaf] < 0):
                    raise ValueError("a row reached a leaf the dump does not have")
                out[missing, t] = f[leaf]
        return out

    bundle = _Trees(boxes, maps, d, box_ids, "boosting", init=np.asarray(init, dtype=np.float64),
                    scale=scale, link=link)
    return _make_form(est, bundle, est.classes_, d)


def has_categorical_splits(est) -> bool:
    """Whether a LightGBM / XGBoost classifier (or the last step of a Pipeline) splits on
    categories (or, for LightGBM, was fitted on pandas category columns)."""
    while hasattr(est, "steps"):
        est = est.steps[-1][1]
    if not is_booster(est):
        return False
    try:
        if type(est).__module__.startswith("lightgbm."):
            booster = est.booster_
            return bool(booster.pandas_categorical) or '"decision_type":"=="' in \
                json.dumps(booster.dump_model(), separators=(",", ":"))
        doc = json.loads(bytes(est.get_booster().save_raw(raw_format="json")))
        gb = doc["learner"]["gradient_booster"]
        trees = (gb.get("gbtree", gb).get("model") or {}).get("trees", [])
        return any(any(t.get("split_type", [])) for t in trees)
    except Exception:  # noqa: BLE001 - not fitted, or an unexpected dump: no categorical claim
        return False


def from_estimator(est, *, categorical: bool = False):
    """The trees form of a fitted ``LGBMClassifier`` / ``XGBClassifier``, or None (module
    docstring).

    Categorical splits raise UnsupportedModelError (the answers' category codes would not stay
    whole numbers). ``categorical=True`` reads them as set membership anyway (exact boxes, tested
    against both libraries), for a solver that keeps those columns integral."""
    d = getattr(est, "n_features_in_", None)
    if d is None:
        return None
    d = int(d)
    if type(est).__module__.startswith("lightgbm."):
        if not getattr(est, "fitted_", False) and not hasattr(est, "_Booster"):
            return None
        return _from_lightgbm(est, d, categorical)
    return _from_xgboost(est, d, categorical)
