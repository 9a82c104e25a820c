"""The ``invaudit`` console script: builds the Typer app and wires the commands together.

Start-up time matters for a CLI that CI runs many times: a command imports only its own module
(and what it needs), so ``invaudit info`` does not pay for the audit suite, the explainers or the
influence solvers. ``invaudit --help`` (or no command) registers every command.
"""

from __future__ import annotations

import importlib
import sys

import typer

from invaudit import __version__

from ._errors import run_guarded

#: Command name -> its module in this package, in the order ``--help`` lists them.
COMMANDS = {
    "info": "info", "counterfactual": "counterfactual", "margin": "margin", "influence": "influence",
    "mislabel": "mislabel", "explain": "explain", "audit": "audit",
}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"invaudit {__version__}")
        raise typer.Exit(0)


def build_app(commands=None) -> typer.Typer:
    """A Typer app with ``commands`` (default: all) registered, importing only their modules."""
    application = typer.Typer(
        name="invaudit",
        help="Audit a trained scikit-learn classifier: exact counterfactuals, margins, influence, "
        "mislabel triage and explanations.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    for name in COMMANDS if commands is None else commands:
        importlib.import_module(f"{__package__}.{COMMANDS[name]}").register(application)

    @application.callback()
    def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                           help="Print the version and exit.")) -> None:
        """Audit a trained scikit-learn classifier from the terminal."""

    return application


def _requested(argv) -> list | None:
    """The one command ``argv`` names (its first argument that is not an option), or None when
    it names none or an unknown one (then every command is registered, for help and errors)."""
    for arg in argv:
        if arg == "--":
            return None
        if arg.startswith("-"):
            return None  # --help, --version, or an option before the command: the full app
        return [arg] if arg in COMMANDS else None
    return None


def __getattr__(name: str):
    # ``from invaudit.cli.app import app``: the full app, built on first use
    if name == "app":
        full = build_app()
        globals()["app"] = full
        return full
    raise AttributeError(name)


def main(argv=None) -> None:
    from ._common import quiet_sklearn_warnings

    quiet_sklearn_warnings()
    args = sys.argv[1:] if argv is None else list(argv)
    command = typer.main.get_command(build_app(_requested(args)))
    code = run_guarded(lambda: command.main(args=args, prog_name="invaudit", standalone_mode=False))
    sys.exit(code)


if __name__ == "__main__":
    main()
