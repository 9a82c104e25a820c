"""Rendering reports for people: rich tables on a terminal, Markdown for CI summaries.

JSON is not rendered here: it is the report itself (``invaudit.io.report.encode``; ``jsonl``:
``encode_jsonl``). Each command has a
:class:`~invaudit.render.views.View`; table and Markdown output both come from it, so they cannot
drift apart.
"""

from __future__ import annotations

from enum import Enum

from rich.console import Console

from .views import VIEWS, View, view_for


class Format(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    markdown = "markdown"

    def to_renderer(self):
        """The function that renders a report in this format to a console."""
        from .markdown import render_markdown
        from .table import render_table

        if self in (Format.json, Format.jsonl):
            from ..io.report import encode, encode_jsonl

            pieces = encode if self is Format.json else encode_jsonl
            return lambda report, console: console.file.write(b"".join(pieces(report)).decode("utf-8"))
        return {Format.table: render_table, Format.markdown: render_markdown}[self]


def render(report: dict, fmt: Format, console: Console) -> None:
    Format(fmt).to_renderer()(report, console)


__all__ = ["Format", "render", "View", "VIEWS", "view_for"]
