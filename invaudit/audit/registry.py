"""The registry of audit checks: one class per kind, declaring its name and validating its parameters.

Modelled on cleanlab's issue-manager factory: a dict of classes and a ``register`` decorator.
A check the model cannot support (influence for a tree) is *failed* with the reason, never a pass
and never an abort of the whole suite: a CI gate must not turn green on a check it could not run.
``passed: None`` ("not run") is only for checks an interrupted run never reached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

REGISTRY: dict = {}


@dataclass(frozen=True)
class CheckResult:
    passed: Optional[bool]  # None: not run
    value: Any
    threshold: Any
    details: dict = field(default_factory=dict)


class Check:
    """Base class. Subclasses set ``kind``, ``params`` (known keys) and implement ``run``."""

    kind: ClassVar[str] = ""
    params: ClassVar[tuple] = ()
    description: ClassVar[str] = ""

    @classmethod
    def validate(cls, params: dict, where: str) -> dict:
        """Check and normalise the check's parameters; raise InputError naming the YAML path."""
        from .config import reject_unknown

        reject_unknown(params, cls.params, where)
        return dict(params)

    @classmethod
    def unsupported(cls, form, tabular=None) -> Optional[str]:
        """Why this check cannot run on ``form``, or None when it can.

        The answer is ``info``'s (:func:`invaudit.models.capabilities.capabilities`, or
        :func:`~invaudit.models.capabilities.tabular_capabilities` for a model that reads typed
        rows, ``tabular`` being its :func:`~invaudit.models.tabular.split_tabular` view), so a
        starter suite, the runner and ``info`` never disagree."""
        from ..models.capabilities import capabilities, tabular_capabilities

        if tabular is not None:
            for cap in tabular_capabilities(tabular):
                if cap.command == cls.kind and cap.available != "yes":
                    return (f"{cls.kind} is not available for {tabular.describe()['estimator']} "
                            f"(a model that reads typed rows): {cap.method}")
            return None
        for cap in capabilities(form):
            if cap.command == cls.kind and cap.available != "yes":
                return f"{cls.kind} is not available for {form.describe()['estimator']} ({form.kind} form): {cap.method}"
        if cls.kind in ("counterfactual", "margin", "explain") and _categorical_splits(form):
            return (f"{cls.kind} is not available for {form.describe()['estimator']}: it splits on categories "
                    "behind preprocessing invaudit cannot read as typed columns, so its answers would move "
                    "category codes as numbers")
        return None

    def run(self, ctx, spec) -> CheckResult:  # pragma: no cover - abstract
        raise NotImplementedError


def _categorical_splits(form) -> bool:
    """A HistGradientBoosting with native categorical splits that ``split_tabular`` could not read
    (the commands refuse it for answers that are points, and so does the suite)."""
    from ..models.tabular import has_categorical_splits

    est = getattr(form, "estimator", None)
    return est is not None and has_categorical_splits(est)


def register(cls):
    if not cls.kind or cls.kind in REGISTRY:
        raise ValueError(f"bad or duplicate check kind {cls.kind!r}")
    REGISTRY[cls.kind] = cls
    return cls
