"""Helpers shared by the command modules."""

from __future__ import annotations

import argparse
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from rdad.cli import CommandError, HelpFormatter


def add_command(
    subparsers: argparse._SubParsersAction,
    name: str,
    help_text: str,
    *,
    description: str,
    examples: str,
) -> argparse.ArgumentParser:
    """A subcommand parser whose ``--help`` ends with worked examples."""
    return subparsers.add_parser(
        name,
        help=help_text,
        description=description,
        epilog="examples:\n" + examples,
        formatter_class=HelpFormatter,
    )


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Warnings (e.g. "random teacher") go through logging so they are printed once, visibly.
    warnings.showwarning = _log_warning
    warnings.simplefilter("default", UserWarning)


def _log_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """A warning as one log line: its text only. The file, line number and source line that
    Python adds are for whoever wrote the call, not for the user reading the command's output."""
    logging.getLogger("rdad").warning("%s", message)


@contextmanager
def expected_errors(*types: type[BaseException]) -> Iterator[None]:
    """Turn the domain errors a command expects into a one-line :class:`CommandError`."""
    try:
        yield
    except types as exc:
        raise CommandError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
