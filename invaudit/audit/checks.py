"""The audit check kinds. Each declares its parameters and threshold and calls one solver."""

from __future__ import annotations

import numpy as np

from .config import choice, number
from .registry import Check, CheckResult, register


@register
class ExplainCheck(Check):
    """Share of rows with two or more disjoint sufficient explanations >= ``min_multiple``."""

    kind = "explain"
    params = ("rows", "confidence", "shape", "baseline", "min_multiple", "seed", "max_explanations")

    @classmethod
    def validate(cls, params, where):
        params = super().validate(params, where)
        number(params, "min_multiple", where, lo=0, hi=1, required=True)
        number(params, "rows", where, lo=1, integer=True)
        _probability(params, where, top=True)
        number(params, "seed", where, lo=0, integer=True)
        number(params, "max_explanations", where, lo=2, integer=True)
        _explain_shape(params.get("shape"), where)
        b = params.get("baseline")
        if b is not None:
            from ..errors import InputError
            from ..explain._multirex import baseline_syntax

            try:
                baseline_syntax(b)
            except ValueError as exc:
                raise InputError(f"{where}.baseline: {exc}, got {b!r}.") from None
        return params

    def run(self, ctx, spec):
        from ..explain import explain_rows, parse_shape, resolve_baseline

        _, form = ctx.model(spec.source)
        tm = ctx.tabular(spec.source)
        p = spec.params
        if tm is not None:  # typed rows: one feature per input column, as ``invaudit explain`` does
            from ._typed import explain_inputs

            form, X, baseline = explain_inputs(tm, ctx, spec, p)
            shape = None
        else:
            ds = ctx.data(spec.source, "test")
            X = np.asarray(ds.X[:min(int(p.get("rows", 20)), ds.n_rows)], dtype=np.float64)
            spec_b = p.get("baseline", "zero")
            word = str(spec_b).strip().lower()
            if word in ("mean", "contrast") and (word == "contrast" or spec.source.train is None):
                from ..errors import InputError

                raise InputError(f"{spec.where}.baseline: " + (
                    "contrast is for models that read typed rows; this model takes zero, mean or a number."
                    if word == "contrast" else "mean is the mean training row, so it needs a train file "
                    "(train: in the suite); or use baseline: zero."))
            X_train = ctx.data(spec.source, "train").X if word == "mean" else None
            baseline = resolve_baseline(spec_b, form.n_features, X_train=X_train)
            hw = _explain_shape(p.get("shape"), spec.where)
            if hw is not None and hw[0] * hw[1] != int(form.n_features):
                from ..errors import InputError

                raise InputError(f"{spec.where}.shape: {hw[0]}x{hw[1]} has {hw[0] * hw[1]} cells but the model "
                                 f"takes {form.n_features} features.")
            shape = parse_shape(hw, form.n_features)
        n = X.shape[0]
        # The check's time (its time_limit, or what is left of the suite's) is the search's run-wide
        # limit, as ``invaudit explain --run-time-limit``: rows still to do then get the quick
        # verified search and the check is judged on what was found (every explanation counted is
        # verified with the model, so the share never overstates the truth). The search keeps its
        # own clock, so no tick stops it: one could only come after its last row, and would throw
        # all of it away.
        ctx.tick()
        res = explain_rows(form, X, rows=np.arange(n), baseline=baseline,
                           shape=shape, confidence=p.get("confidence"),
                           max_explanations=int(p.get("max_explanations", 5)), seed=int(p.get("seed", 0)),
                           run_deadline=ctx.run_deadline())
        multiple = sum(sum(e.sufficient for e in r.explanations) >= 2 for r in res)
        cut = int(sum(r.time_limited for r in res))
        value = multiple / n
        passed = value >= p["min_multiple"]
        details = {"rows": n, "rows_with_multiple": int(multiple)}
        if cut:
            details["time_limited"] = cut
        if not passed:
            details["reason"] = (f"{multiple} of {n} rows ({value:.0%}) have two or more disjoint sufficient "
                                 f"explanations; needs >= {p['min_multiple']}"
                                 + (f" (the time limit cut the search short for {cut} of the {n} rows)" if cut else ""))
        return CheckResult(passed=bool(passed), value=round(value, 6), threshold=f">= {p['min_multiple']}",
                           details=details)


def _probability(params, where: str, *, top: bool) -> None:
    """``confidence:`` as the commands take ``--confidence``: above 0 and below 1 (counterfactual,
    whose target probability 1 is never reached), or at most 1 (``top``: explain)."""
    v = number(params, "confidence", where)
    if v is not None and not (0 < v < 1 or (top and v == 1)):
        from ..errors import InputError

        span = "above 0 and at most 1" if top else "strictly between 0 and 1"
        raise InputError(f"{where}.confidence: expected a probability {span}, got {v}.")


def _explain_shape(value, where: str):
    """An explain check's ``shape:`` (``"8x8"``) as ``(H, W)``, or None; a malformed one is refused
    naming the suite key (the solver's own message names the command's --shape)."""
    if value is None:
        return None
    from ..errors import InputError
    from ..explain._multirex import shape_hw

    try:
        return shape_hw(value)
    except ValueError as exc:
        raise InputError(f"{where}.shape: {exc}, got {value!r}.") from None


def _num(v) -> str:
    """A value for a one-line reason (4 significant digits)."""
    return "none" if v is None else f"{v:.4g}"


def _rows(ds, n) -> np.ndarray:
    """The first ``n`` rows of a data set (all when ``n`` is None)."""
    return np.asarray(ds.X[: ds.n_rows if n is None else min(int(n), ds.n_rows)], dtype=np.float64)


def _constraints(form, X, ctx, spec, p):
    """The suite's constraint keys (scale, bounds, immutable, ...) as solver constraints."""
    from ..counterfactual import Constraints

    X_train = ctx.data(spec.source, "train").X if spec.source.train is not None else None
    return Constraints.from_options(
        X, feature_names=form.feature_names, X_train=X_train,
        **{k: p.get(k) for k in ("immutable", "increase_only", "decrease_only")},
        bounds=p.get("bounds", "none"), scale=p.get("scale", "none"),
        option_name=lambda key: f"{spec.where}.{key}", train_hint="a train file (train: in the suite)")


CONSTRAINT_KEYS = ("norm", "scale", "bounds", "immutable", "increase_only", "decrease_only")
#: Keys for models that read typed rows only (as the commands' --integer and --categorical-cost).
TYPED_KEYS = ("integer", "categorical_cost")


def _validate_constraints(params, where):
    choice(params, "norm", where, ("l2", "l1", "linf"), default="l2")
    choice(params, "scale", where, ("none", "std", "mad"), default="none")
    choice(params, "bounds", where, ("none", "data"), default="none")
    for k in ("immutable", "increase_only", "decrease_only"):
        if k in params and not isinstance(params[k], str):
            from ..errors import InputError

            raise InputError(f"{where}.{k}: expected feature names or indices separated by commas.")
    if "integer" in params and not isinstance(params["integer"], str):
        from ..errors import InputError

        raise InputError(f"{where}.integer: expected column names separated by commas.")
    number(params, "categorical_cost", where, lo=0)


def _numeric_only(p, spec) -> None:
    """Refuse the typed-row keys on a model that reads numeric arrays (as the commands do)."""
    for k in TYPED_KEYS:
        if k in p:
            from ..errors import InputError

            raise InputError(f"{spec.where}.{k}: applies to models that read typed rows (a ColumnTransformer "
                             "pipeline, a HistGradientBoosting with categorical features).")


@register
class MarginCheck(Check):
    """Robust accuracy at ``eps`` >= ``min_robust_accuracy`` and/or every margin >= ``min_margin``.

    Where margins are not exact, the check is conservative: it uses the certified lower bounds
    (robust accuracy's lower end, the smallest lower bound)."""

    kind = "margin"
    params = ("eps", "min_robust_accuracy", "min_margin", "rows", "seed") + CONSTRAINT_KEYS + TYPED_KEYS

    @classmethod
    def validate(cls, params, where):
        params = super().validate(params, where)
        _validate_constraints(params, where)
        number(params, "eps", where, lo=0)
        number(params, "min_robust_accuracy", where, lo=0, hi=1)
        number(params, "min_margin", where, lo=0)
        number(params, "rows", where, lo=1, integer=True)
        number(params, "seed", where, lo=0, integer=True)
        if "min_robust_accuracy" in params and "eps" not in params:
            from ..errors import InputError

            raise InputError(f"{where}.eps: required with min_robust_accuracy.")
        if "min_robust_accuracy" not in params and "min_margin" not in params:
            from ..errors import InputError

            raise InputError(f"{where}: give min_robust_accuracy (with eps) or min_margin as the threshold.")
        return params

    def run(self, ctx, spec):
        from ..margins import margins, summarize

        _, form = ctx.model(spec.source)
        tm = ctx.tabular(spec.source)
        p = spec.params
        if tm is not None:  # typed rows: the same solver as ``invaudit margin`` on them
            from ._typed import margins as typed_margins

            batch, y = typed_margins(tm, ctx, spec, p)
        else:
            _numeric_only(p, spec)
            ds = ctx.data(spec.source, "test", require_labels="min_robust_accuracy" in p)
            X = _rows(ds, p.get("rows"))
            y = None if ds.y_index is None else ds.y_index[: X.shape[0]]
            X_train = np.asarray(ctx.data(spec.source, "train").X) if spec.source.train is not None else None
            batch = margins(form, X, y_index=y, norm=p.get("norm", "l2"), constraints=_constraints(form, X, ctx, spec, p),
                            X_train=X_train, seed=int(p.get("seed", 0)), progress=ctx.tick,
                            time_limit=ctx.solver_time_limit(10.0))
        ctx.tick()
        eps = [p["eps"]] if "eps" in p else []
        s = summarize(batch, y, eps)
        value, threshold, why = {}, {}, []
        if "min_robust_accuracy" in p:
            ra = s["robust_accuracy"][next(iter(s["robust_accuracy"]))]
            ra_low = ra["lower"] if isinstance(ra, dict) else ra
            value["robust_accuracy"], threshold["robust_accuracy"] = ra, f">= {p['min_robust_accuracy']} at eps {p['eps']}"
            if ra_low is None or ra_low < p["min_robust_accuracy"]:
                why.append(f"robust accuracy at eps {p['eps']} is {_num(ra_low)}"
                           f"{' (certified lower end)' if isinstance(ra, dict) else ''}, needs >= {p['min_robust_accuracy']}")
        if "min_margin" in p:
            certified = np.where(batch.exact, batch.margin, batch.lower_bound)
            low = float(np.nanmin(certified)) if np.any(~np.isnan(certified)) else None
            value["min_margin"], threshold["min_margin"] = low, f">= {p['min_margin']}"
            if low is None:
                why.append("no row has an exact margin or a certified lower bound")
            elif low < p["min_margin"]:
                why.append(f"row {int(np.nanargmin(certified))} is {_num(low)} from the boundary, needs >= {p['min_margin']}")
        details = {"rows": len(batch), "exact": int(np.sum(batch.exact)), "median_margin": s["median_margin"]}
        if why:
            details["reason"] = "; ".join(why)
        return CheckResult(passed=not why, value=value, threshold=threshold, details=details)


@register
class CounterfactualCheck(Check):
    """Share of rows with a feasible counterfactual >= ``min_feasible``; median distance <= ``max_median_distance``."""

    kind = "counterfactual"
    params = ("target", "confidence", "rows", "min_feasible", "max_median_distance", "seed") + CONSTRAINT_KEYS + TYPED_KEYS

    @classmethod
    def validate(cls, params, where):
        params = super().validate(params, where)
        _validate_constraints(params, where)
        _probability(params, where, top=False)
        number(params, "rows", where, lo=1, integer=True)
        number(params, "min_feasible", where, lo=0, hi=1)
        number(params, "max_median_distance", where, lo=0)
        number(params, "seed", where, lo=0, integer=True)
        if "min_feasible" not in params and "max_median_distance" not in params:
            from ..errors import InputError

            raise InputError(f"{where}: give min_feasible or max_median_distance as the threshold.")
        return params

    def run(self, ctx, spec):
        from ..counterfactual import counterfactuals
        from ..models.base import class_indices

        _, form = ctx.model(spec.source)
        tm = ctx.tabular(spec.source)
        p = spec.params
        target = p.get("target", "other")
        if target != "other":
            try:
                k = int(class_indices(form.classes, np.array([target]))[0])
            except KeyError:
                # YAML read the label as another type than the model's classes (1 vs "1").
                same = [i for i, c in enumerate(np.asarray(form.classes)) if str(c) == str(target)]
                if len(same) != 1:
                    from ..errors import InputError

                    shown = ", ".join(str(c) for c in list(form.classes)[:12])
                    raise InputError(f"{spec.where}.target: {target!r} is not a class of the model "
                                     f"(classes: {shown}).") from None
                k = same[0]
            target = k
        if tm is not None:  # typed rows: the same solver as ``invaudit counterfactual`` on them
            from ._typed import counterfactuals as typed_counterfactuals

            batch = typed_counterfactuals(tm, ctx, spec, p, target)
        else:
            _numeric_only(p, spec)
            ds = ctx.data(spec.source, "test")
            X = _rows(ds, p.get("rows"))
            if target != "other":
                target = np.full(X.shape[0], target, dtype=np.intp)
            batch = counterfactuals(form, X, target=target, confidence=p.get("confidence"), norm=p.get("norm", "l2"),
                                    constraints=_constraints(form, X, ctx, spec, p), progress=ctx.tick,
                                    time_limit=ctx.solver_time_limit(10.0),
                                    **({"seed": int(p["seed"])} if "seed" in p else {}))
        ctx.tick()
        status = np.asarray(batch.status)
        feasible = np.isin(status, ("found", "already-target"))
        share = float(feasible.mean())
        dist = np.asarray(batch.distance)[status == "found"]
        median = float(np.median(dist)) if dist.size else 0.0
        value, threshold, why = {}, {}, []
        if "min_feasible" in p:
            value["feasible"], threshold["feasible"] = round(share, 6), f">= {p['min_feasible']}"
            if share < p["min_feasible"]:
                why.append(f"{int(feasible.sum())} of {feasible.size} rows ({share:.0%}) have a feasible counterfactual, "
                           f"needs >= {p['min_feasible']}")
        if "max_median_distance" in p:
            value["median_distance"], threshold["median_distance"] = median, f"<= {p['max_median_distance']}"
            if median > p["max_median_distance"]:
                why.append(f"median distance {_num(median)}, needs <= {p['max_median_distance']}")
        details = {"rows": int(status.size), "found": int(np.sum(status == "found")),
                   "infeasible": int(np.sum(status == "infeasible")), "failed": int(np.sum(status == "failed")),
                   "exact": int(np.sum(np.asarray(batch.exact) & (status == "found")))}
        if why:
            details["reason"] = "; ".join(why)
        return CheckResult(passed=not why, value=value, threshold=threshold, details=details)


@register
class InfluenceCheck(Check):
    """No single training row carries more than ``max_share`` of a test row's total absolute influence."""

    kind = "influence"
    params = ("max_share", "test_rows")

    @classmethod
    def validate(cls, params, where):
        params = super().validate(params, where)
        number(params, "max_share", where, lo=0, hi=1, required=True)
        number(params, "test_rows", where, lo=1, integer=True)
        return params

    def run(self, ctx, spec):
        # every family ``invaudit influence`` covers: Koh & Liang for logistic regression, networks and
        # SVMs; leaf refits for tree models; exact leave-one-out for KNN and GaussianNB / QDA
        from ..influence import build_influence_objective, influence_family, predicted_loss_changes

        _, form = ctx.model(spec.source)
        tm = ctx.tabular(spec.source)
        p = spec.params
        n_test = p.get("test_rows", 20)
        if tm is not None and tm.preprocessor is not None and tm.final_form is not None and \
                influence_family(tm.final_form) in ("trees", "neighbors", "quadratic"):
            # typed rows, a final estimator without a loss gradient: its own estimate on the
            # ColumnTransformer's output (fixed), as ``invaudit influence`` does
            from ._typed import rows_frame

            tr = ctx.data(spec.source, "train", require_labels=True)
            te = ctx.data(spec.source, "test")
            frame = rows_frame(te, n_test)
            form, X_train, y_train = tm.final_form, tm.encoded(tr.frame), tr.y_index
            X, y = tm.encoded(frame), None if te.y_index is None else te.y_index[: len(frame)]
        elif tm is not None:  # typed rows: the final estimator's parameters, the ColumnTransformer fixed
            from ._typed import influence_inputs

            form, X_train, y_train, X, y = influence_inputs(tm, ctx, spec, n_test)
        else:
            tr = ctx.data(spec.source, "train", require_labels=True)
            te = ctx.data(spec.source, "test")
            X = _rows(te, n_test)
            y = None if te.y_index is None else te.y_index[: X.shape[0]]
            X_train, y_train = np.asarray(tr.X, dtype=np.float64), tr.y_index
        obj = build_influence_objective(form, X_train, y_train)
        ctx.tick()
        parts = []
        for lo in range(0, X.shape[0], 8):  # in chunks, so a time limit is checked between them
            parts.append(np.abs(predicted_loss_changes(obj, X[lo:lo + 8], None if y is None else y[lo:lo + 8])))
            ctx.tick()
        changes = np.concatenate(parts)  # (T, m)
        totals = changes.sum(axis=1)
        share = np.divide(changes.max(axis=1), totals, out=np.zeros_like(totals), where=totals > 0)
        worst = int(np.argmax(share))
        worst_train = int(np.argmax(changes[worst]))
        passed = bool(share.max() <= p["max_share"])
        details = {"test_rows": int(X.shape[0]), "worst_test_row": worst, "worst_train_row": worst_train,
                   "method": obj.method, "exact": bool(obj.exact)}
        if not passed:
            details["reason"] = (f"training row {worst_train} carries {share.max():.0%} of test row {worst}'s total "
                                 f"absolute influence, allowed <= {p['max_share']}")
        return CheckResult(passed=passed, value=round(float(share.max()), 6), threshold=f"<= {p['max_share']}",
                           details=details)


def suite_default_method(form) -> str:
    """The ranking of a mislabel check that names no ``method``: the one ``mislabel``'s default was
    when such checks were written (pruned-loo-loss; confidence without a twice-differentiable loss;
    knn without predict_proba). ``min_score`` is a threshold on that method's scores, so a suite
    keeps its meaning when the command's default changes (``mislabel`` now defaults to ``combined``,
    whose scores are ``-log`` of the probability that the label is right); ``invaudit audit --init``
    writes ``method:`` explicitly."""
    from ..triage import available_methods

    if "pruned-loo-loss" in available_methods(form):
        return "pruned-loo-loss"
    return "confidence" if getattr(form, "has_proba", True) else "knn"


@register
class MislabelCheck(Check):
    """At most ``max_suspects`` training rows score above ``min_score``."""

    kind = "mislabel"
    params = ("max_suspects", "min_score", "method", "seed")

    @classmethod
    def validate(cls, params, where):
        params = super().validate(params, where)
        number(params, "max_suspects", where, lo=0, integer=True, required=True)
        number(params, "min_score", where, required=True)
        number(params, "seed", where, lo=0, integer=True)
        if "method" in params and not isinstance(params["method"], str):
            from ..errors import InputError

            raise InputError(f"{where}.method: expected a method name.")
        return params

    def run(self, ctx, spec):
        from ..triage import rank_mislabels

        _, form = ctx.model(spec.source)
        p = spec.params
        tr = ctx.data(spec.source, "train", require_labels=True)
        tm = ctx.tabular(spec.source)
        if tm is not None:  # typed rows: the final estimator on the ColumnTransformer's output
            form, X = tm.final_form, tm.encoded(tr.frame)
        else:
            X = np.asarray(tr.X, dtype=np.float64)
        ranking = rank_mislabels(form, X, tr.y_index,
                                 method=p.get("method") or suite_default_method(form), seed=int(p.get("seed", 0)),
                                 progress=ctx.tick)
        ctx.tick()
        above = ranking.order[ranking.score[ranking.order] > p["min_score"]]
        passed = bool(above.size <= p["max_suspects"])
        details = {"method": ranking.method, "suspects": [int(i) for i in above[:20]]}
        if not passed:
            shown = ", ".join(str(int(i)) for i in above[:5])
            details["reason"] = (f"{above.size} training rows score above {p['min_score']} ({ranking.method}; "
                                 f"most suspect: rows {shown}), allowed <= {p['max_suspects']}")
        return CheckResult(passed=passed, value=int(above.size),
                           threshold=f"<= {p['max_suspects']} rows scoring above {p['min_score']}", details=details)
