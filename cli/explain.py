"""``invaudit explain``: not available yet (issue 8)."""

from __future__ import annotations

import typer

from ._common import not_yet


def explain(ctx: typer.Context) -> None:
    """Not available in this version yet (issue 8); exits 4."""
    not_yet("explain", "issue 8")


def register(app) -> None:
    app.command("explain", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(explain)
