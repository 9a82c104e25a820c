"""``invaudit audit SUITE.yaml``: run a YAML suite of checks with thresholds (what a CI step calls)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from invaudit.audit import iter_suite, load_suite, not_run, starter_suite, summarize, to_junit
from invaudit.audit.runner import Context
from invaudit.errors import InputError
from invaudit.io import envelope, write_atomic
from invaudit.render import Format
from invaudit.render.markdown import to_markdown

from ._common import FormatOpt, JsonOut, Quiet, ReportSchemaOne, emit_report, progress, warn


def audit(
    suite: Annotated[Optional[Path], typer.Argument(metavar="SUITE", help="The suite (YAML).", show_default=False)] = None,
    junit: Annotated[Optional[Path], typer.Option("--junit", metavar="PATH", help="Also write JUnit XML.")] = None,
    markdown: Annotated[Optional[Path], typer.Option("--markdown", metavar="PATH", help="Also write a Markdown summary.")] = None,
    init: Annotated[Optional[Path], typer.Option("--init", metavar="MODEL", help="Print a commented starter suite for MODEL and exit.")] = None,
    trust: Annotated[bool, typer.Option("--trust", help="Load every model the suite names without the allowlist, as if "
                                        "each had 'trust: true' (a pickle can run code; sha256: pins still apply). "
                                        "With --init: load MODEL so and write 'trust: true'.")] = False,
    format: FormatOpt = Format.table,
    json: JsonOut = None,
    schema: ReportSchemaOne = None,
    quiet: Quiet = False,
) -> int:
    """Run a suite of checks; exit 0 when all pass, 1 when any fails.

    Interrupted (SIGTERM from a CI timeout, or Ctrl-C), it still writes every report for the checks
    finished so far, the rest marked not run, and exits 143 (SIGTERM) or 130 (SIGINT)."""
    if init is not None:
        # --init prints the suite; a SUITE path or a report path next to it would be silently
        # ignored (`audit --init model.joblib audit.yaml` does not write audit.yaml): refused
        ignored = [name for name, value in (("SUITE", suite), ("--junit", junit), ("--markdown", markdown),
                                            ("--json", json)) if value is not None]
        if ignored:
            from ._errors import click_exceptions

            raise click_exceptions.UsageError(
                f"--init prints a starter suite to stdout and runs nothing, so {' and '.join(ignored)} would be "
                f"ignored; save the suite with: invaudit audit --init {init} > audit.yaml")
        typer.echo(starter_suite(init, trust=trust), nl=False)
        return 0
    if suite is None:  # a missing argument: a usage error (exit 2), as for every other command
        from ._errors import click_exceptions

        raise click_exceptions.UsageError("Missing argument 'SUITE': name a suite file (invaudit audit SUITE.yaml), "
                                          "or use --init MODEL to print a starter suite.")
    started = time.perf_counter()
    spec = load_suite(suite)
    ctx = Context(warn=warn, trust_all=trust)
    outcomes: list = []
    interrupted = None
    try:
        with _interrupts_raise(), progress("checks", len(spec.checks)) as update:
            for outcome in iter_suite(spec, ctx):
                outcomes.append(outcome)
                update(len(outcomes), len(spec.checks))
    except _Interrupted as exc:
        interrupted = exc.name
    if interrupted is not None:
        warn(f"interrupted by {interrupted} after {len(outcomes)} of {len(spec.checks)} checks; "
             "writing the reports for the checks finished so far.")
        outcomes += [not_run(c, f"not run: the audit was interrupted by {interrupted}")
                     for c in spec.checks[len(outcomes):]]
        cached = ctx.loaded_model(spec.source)  # never load a model after an interrupt
    else:
        cached = ctx.model(spec.source)
    model = None if cached is None else {"path": str(spec.source.model), "sha256": cached[0].sha256,
                                         **cached[1].describe()}
    typed = None if cached is None else ctx.loaded_tabular(spec.source)
    if typed is not None:
        model.update(typed.describe())
    params = {"suite": str(suite)}
    if spec.time_limit is not None:
        params["time_limit"] = spec.time_limit
    report = envelope("audit", model=model, data=None, params=params,
                      results=[o.as_dict() for o in outcomes], summary=summarize(outcomes, interrupted=interrupted),
                      elapsed_s=time.perf_counter() - started)
    # Files first (atomically), then stdout.
    if junit is not None:
        _write(junit, to_junit(report))
    md = to_markdown(report)
    if markdown is not None:
        _write(markdown, md)
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        try:
            with open(step_summary, "a", encoding="utf-8") as fh:
                fh.write(md + "\n")
        except OSError as exc:
            warn(f"cannot append to $GITHUB_STEP_SUMMARY ({exc.strerror or exc}).")
    emit_report(report, format, json)
    if interrupted is not None:
        return 128 + _SIGNALS[interrupted]
    return 0 if report["summary"]["failed"] == 0 else 1


_SIGNALS = {"SIGINT": int(signal.SIGINT), "SIGTERM": int(signal.SIGTERM)}


class _Interrupted(BaseException):
    """SIGTERM or SIGINT arrived while the checks ran."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


@contextlib.contextmanager
def _interrupts_raise():
    """While the checks run, SIGTERM and SIGINT raise :class:`_Interrupted` (so the reports can
    still be written); the previous handlers are back before any report is written, so a second
    signal stops the process at once (write_atomic never leaves a truncated file)."""
    def handler(signum, frame):
        raise _Interrupted(signal.Signals(signum).name)

    previous = {}
    try:
        for name, num in _SIGNALS.items():
            previous[num] = signal.signal(num, handler)
    except ValueError:  # not the main thread: signals cannot be caught here
        pass
    try:
        yield
    finally:
        for num, old in previous.items():
            signal.signal(num, old)


def _write(path: Path, text: str) -> None:
    try:
        write_atomic(path, text)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}.") from None


def register(app) -> None:
    app.command("audit")(audit)
