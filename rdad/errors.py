"""Errors shared by the command modules (kept apart from :mod:`rdad.cli` so that the class is the
same object whether the CLI runs as ``rdad`` or ``python -m rdad``)."""


class CommandError(Exception):
    """An expected failure: printed as one line on stderr, exit status 1, no traceback."""
