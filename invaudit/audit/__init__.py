"""The YAML audit suite: a registry of checks with thresholds, run by ``invaudit audit``."""

from . import checks  # noqa: F401  (registers every check kind)
from .config import Suite, load_suite
from .registry import REGISTRY, Check, CheckResult, register
from .runner import Context, TimeLimitExceeded, iter_suite, not_run, run_suite, summarize, to_junit
from .starter import starter_suite

__all__ = ["Suite", "load_suite", "REGISTRY", "Check", "CheckResult", "register", "Context", "run_suite",
           "iter_suite", "not_run", "TimeLimitExceeded", "summarize", "to_junit", "starter_suite"]
