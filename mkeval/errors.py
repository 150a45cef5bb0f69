"""Exceptions. A `UsageError` is bad input: the CLI prints it and exits with code 2."""


class MkevalError(Exception):
    """Base class for every error mkeval raises on purpose."""


class UsageError(MkevalError, ValueError):
    """Bad input from the user: a name, a value, a file. Says what, where and how to fix."""


class PluginError(MkevalError):
    """A plugin broke its contract or two plugins clash."""


class CellFailed(MkevalError):
    """A matrix cell could not produce a result (the run records it and goes on)."""


def did_you_mean(name: str, known: list[str]) -> str:
    """``"; did you mean 'x', 'y'?"`` for the close matches of ``name`` in ``known``, else ``""``."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=3, cutoff=0.5)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
