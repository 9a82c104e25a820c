"""``invaudit counterfactual``: not available yet (issue 3)."""

from __future__ import annotations

import typer

from ._common import not_yet


def counterfactual(ctx: typer.Context) -> None:
    """Not available in this version yet (issue 3); exits 4."""
    not_yet("counterfactual", "issue 3")


def register(app) -> None:
    app.command("counterfactual", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(counterfactual)
