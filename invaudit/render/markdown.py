"""Markdown, for CI summaries and pull-request comments."""

from __future__ import annotations

from rich.console import Console

from .views import fmt_num, view_for


def _cell(v) -> str:
    return fmt_num(v).replace("|", "\\|")


def to_markdown(report: dict) -> str:
    view = view_for(report)
    lines = [f"### {view.title(report)}", ""]
    for key, value in view.summary(report):
        lines.append(f"- **{key}**: {value}")
    rows = view.rows(report)
    if rows:
        lines += ["", "| " + " | ".join(c.header or " " for c in view.columns) + " |",
                  "|" + "|".join("---:" if c.justify == "right" else ":---" for c in view.columns) + "|"]
        shown = rows if view.max_rows is None else rows[: view.max_rows]
        lines += ["| " + " | ".join(_cell(c.get(r)) for c in view.columns) + " |" for r in shown]
        if len(shown) < len(rows):
            lines += ["", f"_{len(rows) - len(shown)} more rows in the JSON report._"]
    for extra in view.extras:
        for heading, block in extra(report):
            lines += ["", f"**{heading}**", "", "```", str(block), "```"]
    return "\n".join(lines) + "\n"


def render_markdown(report: dict, console: Console) -> None:
    console.file.write(to_markdown(report))
