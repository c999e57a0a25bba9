"""Helpers shared by the command modules."""

from __future__ import annotations

import argparse
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

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
    logging.captureWarnings(True)
    warnings.simplefilter("default", UserWarning)


@contextmanager
def expected_errors(*types: type[BaseException]) -> Iterator[None]:
    """Turn the domain errors a command expects into a one-line :class:`CommandError`."""
    try:
        yield
    except types as exc:
        raise CommandError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
