"""Running a suite: load each model and data file once, run each check, collect results.

:func:`iter_suite` yields one :class:`Outcome` per check as it finishes, so the caller (the CLI)
owns progress and can write a partial report when a run is interrupted. A check the model cannot
support and a check over its ``time_limit`` are failed checks with a reason in
``details["reason"]``; neither stops the suite.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional
from xml.etree import ElementTree as ET

from ..errors import InputError, InvauditError, RefusedModelError, UnsupportedModelError
from ..io import load_data
from .config import Source, Suite
from .registry import REGISTRY, CheckResult


class TimeLimitExceeded(BaseException):
    """Raised by :meth:`Context.tick` when the running check is past its time limit (a
    BaseException, so a solver's ``except Exception`` fallback cannot swallow it)."""


TRUST_HINT = ("If you vouch for this file, set 'trust: true' next to it in the suite "
              "(or pass --trust to audit to trust every model the suite names).")


@dataclass
class Context:
    """Caches what several checks share: loaded models (with their forms) and data files.

    ``trust_all`` is ``audit --trust``: every model file is loaded as if its ``trust:`` were true
    (``sha256:`` pins are still enforced, before anything is unpickled)."""

    warn: Callable[[str], None] = lambda msg: None
    trust_all: bool = False
    _models: dict = field(default_factory=dict)
    _data: dict = field(default_factory=dict)
    _tabular: dict = field(default_factory=dict)
    _deadline: Optional[float] = None  # perf_counter() by which the running check must stop

    def model(self, src: Source):
        from ..io.model_file import file_sha256, load_model
        from ..models import adapt
        from ..models.tabular import split_tabular

        trust = src.trust or self.trust_all
        key = (src.model, trust, src.sha256)
        if key not in self._models:
            if src.sha256 is not None:
                digest = file_sha256(src.model)
                if digest != src.sha256:
                    raise InputError(f"{src.model} has sha256 {digest}, but the suite pins sha256: {src.sha256} "
                                     "(update the pin if the model changed on purpose).")
            try:
                loaded = load_model(src.model, trust=trust, sha256=src.sha256)
            except RefusedModelError as exc:
                shown = ", ".join(f"{m}.{n}" for m, n in exc.names[:8])
                raise InputError(f"refused to load {src.model}: it names objects outside the allowlist ({shown}); "
                                 f"nothing was run. {TRUST_HINT}") from None
            for w in loaded.warnings:
                self.warn(w)
            self._models[key] = (loaded, adapt(loaded.estimator))
            self._tabular[key] = split_tabular(loaded.estimator)
        return self._models[key]

    def tabular(self, src: Source):
        """The typed-input view of ``src``'s model (a ColumnTransformer pipeline, a
        HistGradientBoosting with native categoricals: :func:`invaudit.models.tabular.split_tabular`),
        or None for a model that reads numeric arrays."""
        self.model(src)
        return self._tabular[(src.model, src.trust or self.trust_all, src.sha256)]

    def loaded_tabular(self, src: Source):
        """The typed-input view of the model already loaded for ``src`` (None otherwise)."""
        return self._tabular.get((src.model, src.trust or self.trust_all, src.sha256))

    def loaded_model(self, src: Source):
        """The model already loaded for ``src`` (None when no check got that far)."""
        return self._models.get((src.model, src.trust or self.trust_all, src.sha256))

    # --- time limits: checked between rows (solvers' progress callbacks) and between checks ----

    def tick(self, *_args) -> None:
        """Raise :class:`TimeLimitExceeded` when the running check is past its deadline. Takes
        any arguments so it can be passed to solvers as their ``progress`` callback."""
        if self._deadline is not None and time.perf_counter() >= self._deadline:
            raise TimeLimitExceeded

    def run_deadline(self) -> Optional[float]:
        """The running check's deadline as a wall-clock time (``time.time()``), for a solver that
        takes the run-wide limit of its command (explain's ``run_deadline``), or None."""
        if self._deadline is None:
            return None
        return time.time() + (self._deadline - time.perf_counter())

    def solver_time_limit(self, default: float) -> float:
        """Seconds a solver with its own limit (a MILP per row) may take: its default, or what is
        left of the check's time when that is less."""
        if self._deadline is None:
            return default
        return max(0.05, min(default, self._deadline - time.perf_counter()))

    def data(self, src: Source, which: str, *, require_labels: bool = False):
        path = getattr(src, which)
        if path is None:
            from ..errors import InputError

            raise InputError(f"this check needs a '{which}' file; name one in the suite or the check.")
        form = self.model(src)[1]
        tm = self.tabular(src)
        # The suite's label_column and id_column are for its CSV files; NPZ files carry their
        # labels as 'y'. A file without the id_column keeps its row numbers.
        csv = path.suffix.lower() == ".csv"
        label_column = src.label_column if csv else None
        id_column = src.id_column if csv else None
        key = (path, label_column, id_column, src.model)
        if key not in self._data:
            # a model that reads typed rows gets them typed (ds.frame, ds.X None), as the commands do
            schema = None if tm is None else [(c.name, c.kind, c.categories) for c in tm.columns]
            self._data[key] = load_data(path, n_features=None if schema is not None else form.n_features,
                                        feature_names=form.feature_names, classes=form.classes,
                                        label_column=label_column, id_column=id_column, schema=schema,
                                        id_column_optional=True)
            ds = self._data[key]
            if ds.column_match == "name" and ds.file_columns:
                known = set(form.feature_names or []) | {c[0] for c in schema or []}
                ignored = [c for c in ds.file_columns if c not in known]
                if ignored:
                    self.warn(f"{path}: column(s) the model does not read are left out: {', '.join(ignored[:6])}"
                              f"{', ...' if len(ignored) > 6 else ''} (set label_column / id_column in the suite "
                              "if one holds the labels or names the rows).")
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


def _failed(reason: str) -> CheckResult:
    return CheckResult(passed=False, value=None, threshold=None, details={"reason": reason})


def not_run(spec, reason: str) -> Outcome:
    """The outcome of a check an interrupted run never finished: ``passed: None`` with the reason."""
    return Outcome(spec.name, spec.kind, spec.source.model.name,
                   CheckResult(passed=None, value=None, threshold=None, details={"reason": reason}), 0.0)


def iter_suite(suite: Suite, ctx: Optional[Context] = None):
    """Run the checks in order, yielding each :class:`Outcome` as it finishes.

    A bad model or data file (refused, unreadable, mismatched) still aborts with its exit code:
    that is a broken suite, not a finding. A check the model cannot support and a check over its
    time limit (its own ``time_limit`` or what is left of the suite's) are failed checks."""
    ctx = ctx or Context()
    started = time.perf_counter()
    suite_deadline = None if suite.time_limit is None else started + suite.time_limit
    for spec in suite.checks:
        t0 = time.perf_counter()
        try:
            result = _run_one(ctx, spec, suite, t0, suite_deadline)
        except InvauditError as exc:  # say which check; keep the error's exit code
            msg = str(exc)
            key, _, rest = msg.partition(": ")
            if key.startswith(spec.where) and rest and " " not in key:  # it names the key: checks[2].target (name): ...
                wrapped = InvauditError(f"{suite.path}: {key} ({spec.name}): {rest}")
            else:
                wrapped = InvauditError(f"{suite.path}: {spec.where} ({spec.name}): {msg}")
            wrapped.exit_code = exc.exit_code
            raise wrapped from None
        finally:
            ctx._deadline = None
        yield Outcome(spec.name, spec.kind, spec.source.model.name, result, time.perf_counter() - t0)


def _run_one(ctx: Context, spec, suite: Suite, t0: float, suite_deadline: Optional[float]) -> CheckResult:
    if suite_deadline is not None and t0 >= suite_deadline:
        return _failed(f"time limit: the suite's time_limit of {suite.time_limit:g} s ran out before this check started")
    deadlines = [d for d in (suite_deadline, None if spec.time_limit is None else t0 + spec.time_limit) if d is not None]
    check = REGISTRY[spec.kind]()
    form = ctx.model(spec.source)[1]
    why = check.unsupported(form, ctx.tabular(spec.source))
    if why is not None:
        return _failed(why)
    ctx._deadline = min(deadlines) if deadlines else None
    try:
        return check.run(ctx, spec)
    except TimeLimitExceeded:
        own = spec.time_limit is not None and (suite_deadline is None or t0 + spec.time_limit <= suite_deadline)
        limit = f"its time_limit of {spec.time_limit:g} s" if own else f"the suite's time_limit of {suite.time_limit:g} s"
        return _failed(f"time limit: stopped after {time.perf_counter() - t0:.1f} s ({limit})")
    except UnsupportedModelError as exc:  # a solver's own refusal, for what capabilities() let through
        return _failed(str(exc))


def run_suite(suite: Suite, ctx: Optional[Context] = None, progress=None) -> list:
    """Every check's :class:`Outcome` (see :func:`iter_suite`); ``progress(done, total)`` after each."""
    out = []
    for o in iter_suite(suite, ctx):
        out.append(o)
        if progress:
            progress(len(out), len(suite.checks))
    return out


def summarize(outcomes: list, *, interrupted: Optional[str] = None) -> dict:
    """Counts of passed / failed / not-run checks; ``ok`` only when every check ran and passed.
    ``interrupted`` names the signal that stopped the run (the report is then partial)."""
    passed = sum(o.result.passed is True for o in outcomes)
    failed = sum(o.result.passed is False for o in outcomes)
    not_run = sum(o.result.passed is None for o in outcomes)
    out = {"checks": len(outcomes), "passed": passed, "failed": failed, "not_run": not_run,
           "ok": failed == 0 and not_run == 0 and interrupted is None}
    if interrupted is not None:
        out["interrupted"] = interrupted
    return out


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
