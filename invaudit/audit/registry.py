"""The registry of audit checks: one class per kind, declaring its name and validating its parameters.

Modelled on cleanlab's issue-manager factory: a dict of classes and a ``register`` decorator.
A check whose solver is not available reports ``passed: None`` ("not run"), never a pass.
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

    def run(self, ctx, spec) -> CheckResult:  # pragma: no cover - abstract
        raise NotImplementedError


def register(cls):
    if not cls.kind or cls.kind in REGISTRY:
        raise ValueError(f"bad or duplicate check kind {cls.kind!r}")
    REGISTRY[cls.kind] = cls
    return cls
