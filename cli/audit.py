"""``invaudit audit``: not available yet (issue 9)."""

from __future__ import annotations

import typer

from ._common import not_yet


def audit(ctx: typer.Context) -> None:
    """Not available in this version yet (issue 9); exits 4."""
    not_yet("audit", "issue 9")


def register(app) -> None:
    app.command("audit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(audit)
