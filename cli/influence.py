"""``invaudit influence``: not available yet (issue 6)."""

from __future__ import annotations

import typer

from ._common import not_yet


def influence(ctx: typer.Context) -> None:
    """Not available in this version yet (issue 6); exits 4."""
    not_yet("influence", "issue 6")


def register(app) -> None:
    app.command("influence", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(influence)
