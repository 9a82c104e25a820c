"""The ``invaudit`` console script: builds the Typer app and wires the commands together.

Start-up time matters for a CLI that CI runs many times: a command imports only its own module
(and what it needs), so ``invaudit info`` does not pay for the audit suite, the explainers or the
influence solvers. ``invaudit --version`` imports nothing but the version, and the top-level
``invaudit --help`` lists the commands from their docstrings, read from the command modules' source
without importing them (no numpy, no solvers); every other use registers every command.
``invaudit info`` in a plain form is read by cli/_fast.py without Typer's parser, whose pydantic
coercion cost ~0.3 s of its start; any other form of it goes through Typer as before.
"""

from __future__ import annotations

import importlib
import sys

from invaudit import __version__

#: Command name -> its module in this package, in the order ``--help`` lists them.
COMMANDS = {
    "info": "info", "counterfactual": "counterfactual", "margin": "margin", "influence": "influence",
    "mislabel": "mislabel", "explain": "explain", "audit": "audit",
}

_HELP = ("-h", "--help")


def _version(value: bool) -> None:
    if value:
        import typer

        typer.echo(f"invaudit {__version__}")
        raise typer.Exit(0)


def build_app(commands=None, *, listing: bool = False):
    """A Typer app with ``commands`` (default: all) registered, importing only their modules.

    ``listing``: every command is registered by its name and docstring only (its module's source
    is read, not imported), for the top-level help, which shows nothing more; such an app must
    never run a command (each placeholder refuses to)."""
    import typer

    application = typer.Typer(
        name="invaudit",
        help="Audit a trained scikit-learn classifier: exact counterfactuals, margins, influence, "
        "mislabel triage and explanations.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": list(_HELP)},
    )
    docs = _docstrings() if listing else None
    for name in COMMANDS if commands is None else commands:
        if docs is not None:
            application.command(name, help=docs[name])(_placeholder(name))
        else:
            importlib.import_module(f"{__package__}.{COMMANDS[name]}").register(application)

    @application.callback()
    def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                           help="Print the version and exit.")) -> None:
        """Audit a trained scikit-learn classifier from the terminal."""

    return application


def _docstrings() -> dict | None:
    """Each command function's docstring, parsed from its module's source (None when a source
    file cannot be read or the function is not found: then the commands are imported)."""
    import ast
    from pathlib import Path

    here = Path(__file__).resolve().parent
    docs = {}
    for name, module in COMMANDS.items():
        try:
            tree = ast.parse((here / f"{module}.py").read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError):
            return None
        found = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name]
        if len(found) != 1 or ast.get_docstring(found[0]) is None:
            return None
        docs[name] = ast.get_docstring(found[0])
    return docs


def _placeholder(name: str):
    def command() -> None:
        raise RuntimeError(f"the help listing's placeholder for '{name}' was run")

    command.__name__ = name
    return command


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
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["--version"]:  # eager, as the option's callback: nothing else is looked at
        sys.stdout.write(f"invaudit {__version__}\n")
        sys.exit(0)
    # Nothing but the top-level help can come of these (help is eager too): no command runs.
    listing = not args or args[0] in _HELP
    if not listing:
        from ._common import quiet_sklearn_warnings

        quiet_sklearn_warnings()
        from ._fast import direct

        call = direct(args)  # ``info`` in a plain form: read without Typer's pydantic coercion
        if call is not None:
            from ._errors import run_guarded

            sys.exit(run_guarded(call))
    import typer

    from ._errors import run_guarded

    command = typer.main.get_command(build_app(None if listing else _requested(args), listing=listing))
    code = run_guarded(lambda: command.main(args=args, prog_name="invaudit", standalone_mode=False))
    sys.exit(code)


if __name__ == "__main__":
    main()
