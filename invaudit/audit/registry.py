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
    def unsupported(cls, form) -> Optional[str]:
        """Why this check cannot run on ``form``, or None when it can.

        The answer is ``info``'s (:func:`invaudit.models.capabilities.capabilities`), so a starter
        suite, the runner and ``info`` never disagree."""
        from ..models.capabilities import capabilities

        for cap in capabilities(form):
            if cap.command == cls.kind and cap.available != "yes":
                return f"{cls.kind} is not available for {form.describe()['estimator']} ({form.kind} form): {cap.method}"
        return None

    def run(self, ctx, spec) -> CheckResult:  # pragma: no cover - abstract
        raise NotImplementedError


def register(cls):
    if not cls.kind or cls.kind in REGISTRY:
        raise ValueError(f"bad or duplicate check kind {cls.kind!r}")
    REGISTRY[cls.kind] = cls
    return cls
