"""Running a suite: load each model and data file once, run each check, collect results."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional
from xml.etree import ElementTree as ET

from ..errors import InvauditError
from ..io import load_data
from .config import Source, Suite
from .registry import REGISTRY, CheckResult


@dataclass
class Context:
    """Caches what several checks share: loaded models (with their forms) and data files."""

    warn: Callable[[str], None] = lambda msg: None
    _models: dict = field(default_factory=dict)
    _data: dict = field(default_factory=dict)

    def model(self, src: Source):
        from ..io.model_file import load_model
        from ..models import adapt

        key = (src.model, src.trust, src.sha256)
        if key not in self._models:
            loaded = load_model(src.model, trust=src.trust, sha256=src.sha256)
            for w in loaded.warnings:
                self.warn(w)
            self._models[key] = (loaded, adapt(loaded.estimator))
        return self._models[key]

    def data(self, src: Source, which: str, *, require_labels: bool = False):
        path = getattr(src, which)
        if path is None:
            from ..errors import InputError

            raise InputError(f"this check needs a '{which}' file; name one in the suite or the check.")
        form = self.model(src)[1]
        # The suite's label_column is for its CSV files; NPZ files carry their labels as 'y'.
        label_column = src.label_column if path.suffix.lower() == ".csv" else None
        key = (path, label_column, src.model)
        if key not in self._data:
            self._data[key] = load_data(path, n_features=form.n_features, feature_names=form.feature_names,
                                        classes=form.classes, label_column=label_column)
        ds = self._data[key]
        if require_labels and ds.y_index is None:
            from ..errors import InputError

            raise InputError(f"data file {path} has no labels; set label_column in the suite.")
        return ds


@dataclass(frozen=True)
class Outcome:
    name: str
    kind: str
    model: str
    result: CheckResult
    elapsed_s: float

    def as_dict(self) -> dict:
        r = self.result
        return {"name": self.name, "kind": self.kind, "model": self.model, "passed": r.passed, "value": r.value,
                "threshold": r.threshold, "details": r.details, "elapsed_s": round(self.elapsed_s, 4)}


def run_suite(suite: Suite, ctx: Optional[Context] = None, progress=None) -> list:
    ctx = ctx or Context()
    out = []
    for i, spec in enumerate(suite.checks):
        t0 = time.perf_counter()
        try:
            result = REGISTRY[spec.kind]().run(ctx, spec)
        except InvauditError as exc:  # say which check; keep the error's exit code
            wrapped = InvauditError(f"{suite.path}: {spec.where} ({spec.name}): {exc}")
            wrapped.exit_code = exc.exit_code
            raise wrapped from None
        out.append(Outcome(spec.name, spec.kind, spec.source.model.name, result, time.perf_counter() - t0))
        if progress:
            progress(i + 1, len(suite.checks))
    return out


def summarize(outcomes: list) -> dict:
    passed = sum(o.result.passed is True for o in outcomes)
    failed = sum(o.result.passed is False for o in outcomes)
    not_run = sum(o.result.passed is None for o in outcomes)
    return {"checks": len(outcomes), "passed": passed, "failed": failed, "not_run": not_run,
            "ok": failed == 0}


def to_junit(report: dict) -> str:
    """JUnit XML: one testcase per check; a failure element with the reason; 'not run' is skipped."""
    results = report["results"]
    suite = ET.Element("testsuite", name=f"invaudit audit {report['params'].get('suite', '')}".strip(),
                       tests=str(len(results)),
                       failures=str(sum(r["passed"] is False for r in results)),
                       skipped=str(sum(r["passed"] is None for r in results)),
                       time=f"{report['elapsed_s']:.3f}")
    for r in results:
        case = ET.SubElement(suite, "testcase", classname=f"invaudit.{r.get('kind', '')}", name=r["name"],
                             time=f"{r.get('elapsed_s', 0.0):.3f}")
        reason = r["details"].get("reason") if isinstance(r.get("details"), dict) else None
        if r["passed"] is False:
            msg = reason or f"value {r['value']} does not meet threshold {r['threshold']}"
            ET.SubElement(case, "failure", message=msg).text = msg
        elif r["passed"] is None:
            ET.SubElement(case, "skipped", message=reason or "not run")
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
