"""Markdown, for CI summaries and pull-request comments."""

from __future__ import annotations

from rich.console import Console

from .views import fmt_num, view_for


def _cell(v) -> str:
    return fmt_num(v).replace("|", "\\|")


#: Characters Markdown (CommonMark, GitHub's tables and strikethrough) would read as syntax in a cell.
_ACTIVE = str.maketrans({c: "\\" + c for c in "\\`*_<>[]|~"})


def _text(v) -> str:
    """Any value as literal text inside one table cell: one line, Markdown syntax escaped."""
    return " ".join(fmt_num(v).split()).translate(_ACTIVE)


_STATUS = {True: "✅ PASS", False: "❌ FAIL", None: "⏭️ not run"}


def _threshold(t) -> str:
    if isinstance(t, dict):
        return "; ".join(f"{k.replace('_', ' ')} {v}" for k, v in t.items())
    return "-" if t is None else str(t)


def _why(r: dict) -> str:
    """One line saying why a check failed or did not run (empty for a pass)."""
    if r["passed"] is True:
        return ""
    reason = r["details"].get("reason") if isinstance(r.get("details"), dict) else None
    if reason:
        return str(reason)
    if r["passed"] is None:
        return "not run"
    return f"value {fmt_num(r['value'])} does not meet {_threshold(r['threshold'])}"


def audit_markdown(report: dict) -> str:
    """An audit as a GitHub step summary: a verdict line, then one row per check with its value
    next to its threshold and, for a failure, one line saying why."""
    view = view_for(report)
    s = report.get("summary", {})
    verdict = ("✅ all {checks} checks passed".format(**s) if s.get("ok") else
               f"❌ {s.get('failed', 0)} of {s.get('checks', 0)} checks failed"
               + (f", {s['not_run']} not run" if s.get("not_run") else ""))
    lines = [f"### {_text(view.title(report))}", "", f"**{verdict}**"]
    if s.get("interrupted"):
        lines += ["", f"_Interrupted by {s['interrupted']}: a partial report; checks not run are marked._"]
    lines += ["", "| status | check | kind | model | value | threshold | why |",
              "|:---|:---|:---|:---|---:|:---|:---|"]
    for r in report.get("results", []):
        lines.append("| " + " | ".join([_STATUS[r["passed"]], _text(r["name"]), _text(r.get("kind")),
                                         _text(r.get("model")), _text(r["value"]), _text(_threshold(r["threshold"])),
                                         _text(_why(r))]) + " |")
    return "\n".join(lines) + "\n"


def to_markdown(report: dict) -> str:
    if report.get("command") == "audit":
        return audit_markdown(report)
    view = view_for(report)
    lines = [f"### {view.title(report)}", ""]
    for key, value in view.summary(report):
        lines.append(f"- **{key}**: {value}")
    shown, total = view.shown(report)
    if shown:
        lines += ["", "| " + " | ".join(c.header or " " for c in view.columns) + " |",
                  "|" + "|".join("---:" if c.justify == "right" else ":---" for c in view.columns) + "|"]
        lines += ["| " + " | ".join(_cell(c.get(r)) for c in view.columns) + " |" for r in shown]
        if len(shown) < total:
            lines += ["", f"_{total - len(shown)} more rows in the JSON report._"]
    for extra in view.extras:
        for heading, block in extra(report):
            lines += ["", f"**{heading}**", "", "```", str(block), "```"]
    return "\n".join(lines) + "\n"


def render_markdown(report: dict, console: Console) -> None:
    console.file.write(to_markdown(report))
