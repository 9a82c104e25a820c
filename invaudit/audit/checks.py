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
        number(params, "confidence", where, lo=0, hi=1)
        number(params, "seed", where, integer=True)
        number(params, "max_explanations", where, lo=2, integer=True)
        return params

    def run(self, ctx, spec):
        from ..explain import explain_rows, parse_shape, resolve_baseline

        _, form = ctx.model(spec.source)
        ds = ctx.data(spec.source, "test")
        p = spec.params
        n = min(int(p.get("rows", 20)), ds.n_rows)
        X = np.asarray(ds.X[:n], dtype=np.float64)
        res = explain_rows(form, X, rows=np.arange(n), baseline=resolve_baseline(p.get("baseline", "zero"), form.n_features),
                           shape=parse_shape(p.get("shape"), form.n_features), confidence=p.get("confidence"),
                           max_explanations=int(p.get("max_explanations", 5)), seed=int(p.get("seed", 0)))
        multiple = sum(sum(e.sufficient for e in r.explanations) >= 2 for r in res)
        value = multiple / n
        return CheckResult(passed=value >= p["min_multiple"], value=round(value, 6),
                           threshold=f">= {p['min_multiple']}",
                           details={"rows": n, "rows_with_multiple": int(multiple)})
