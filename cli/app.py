"""The ``invaudit`` console script: builds the Typer app and wires the commands together."""

from __future__ import annotations

import sys

import typer

from invaudit import __version__

from . import audit, counterfactual, explain, influence, info, margin, mislabel
from ._common import quiet_sklearn_warnings
from ._errors import run_guarded

app = typer.Typer(
    name="invaudit",
    help="Audit a trained scikit-learn classifier: exact counterfactuals, margins, influence, "
    "mislabel triage and explanations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

for module in (info, counterfactual, margin, influence, mislabel, explain, audit):
    module.register(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"invaudit {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Audit a trained scikit-learn classifier from the terminal."""


def main(argv=None) -> None:
    quiet_sklearn_warnings()
    command = typer.main.get_command(app)
    code = run_guarded(lambda: command.main(args=argv, prog_name="invaudit", standalone_mode=False))
    sys.exit(code)


if __name__ == "__main__":
    main()
