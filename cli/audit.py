"""``invaudit audit SUITE.yaml``: run a YAML suite of checks with thresholds (what a CI step calls)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from invaudit.audit import load_suite, run_suite, starter_suite, summarize, to_junit
from invaudit.audit.runner import Context
from invaudit.errors import InputError
from invaudit.io import envelope, write_atomic
from invaudit.render import Format
from invaudit.render.markdown import to_markdown

from ._common import FormatOpt, JsonOut, emit_report, progress, warn


def audit(
    suite: Annotated[Optional[Path], typer.Argument(metavar="SUITE", help="The suite (YAML).", show_default=False)] = None,
    junit: Annotated[Optional[Path], typer.Option("--junit", metavar="PATH", help="Also write JUnit XML.")] = None,
    markdown: Annotated[Optional[Path], typer.Option("--markdown", metavar="PATH", help="Also write a Markdown summary.")] = None,
    init: Annotated[Optional[Path], typer.Option("--init", metavar="MODEL", help="Print a commented starter suite for MODEL and exit.")] = None,
    trust: Annotated[bool, typer.Option("--trust", help="With --init: load MODEL without the allowlist.")] = False,
    format: FormatOpt = Format.table,
    json: JsonOut = None,
) -> int:
    """Run a suite of checks; exit 0 when all pass, 1 when any fails."""
    if init is not None:
        typer.echo(starter_suite(init, trust=trust), nl=False)
        return 0
    if suite is None:
        raise InputError("name a suite file (invaudit audit SUITE.yaml) or use --init MODEL.")
    started = time.perf_counter()
    spec = load_suite(suite)
    ctx = Context(warn=warn)
    with progress("checks", len(spec.checks)) as update:
        outcomes = run_suite(spec, ctx, progress=update)
    loaded, form = ctx.model(spec.source)
    model = {"path": str(spec.source.model), "sha256": loaded.sha256, **form.describe()}
    report = envelope("audit", model=model, data=None, params={"suite": str(suite)},
                      results=[o.as_dict() for o in outcomes], summary=summarize(outcomes),
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
    return 0 if report["summary"]["failed"] == 0 else 1


def _write(path: Path, text: str) -> None:
    try:
        write_atomic(path, text)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}.") from None


def register(app) -> None:
    app.command("audit")(audit)
