"""Domain exceptions. The CLI maps each to one exit code, in one place (cli/_errors.py).

Exit codes (DESIGN.md): 0 done, 1 a check failed, 2 usage error, 3 bad input, 4 solver failed.
"""


class InvauditError(Exception):
    """Base class. ``str(err)`` is the one sentence the user sees."""

    exit_code = 4


class InputError(InvauditError):
    """Bad input: unreadable or refused model, malformed data, shape/feature mismatch, unknown class."""

    exit_code = 3


class RefusedModelError(InputError):
    """A model file named globals outside the allowlist; nothing in it was run."""

    def __init__(self, path, names):
        self.path = str(path)
        self.names = sorted(set(names))
        shown = ", ".join(f"{m}.{n}" for m, n in self.names[:8])
        more = f" and {len(self.names) - 8} more" if len(self.names) > 8 else ""
        super().__init__(
            f"refused to load {self.path}: it names objects outside the allowlist ({shown}{more}); "
            "nothing was run. Pass --trust if you vouch for this file."
        )


class UnsupportedModelError(InputError):
    """The model's form cannot answer the question asked (e.g. influence for a tree)."""


class SolverError(InvauditError):
    """A solver failed to produce an answer it can stand behind."""

    exit_code = 4
