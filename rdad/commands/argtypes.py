"""Value types for the commands' options: each parses one option's text and says what it accepts.

A value outside its range is a usage error like a misspelt option: argparse reports it as
``rdad CMD: error: argument --OPTION: …`` and exits 2, before anything is loaded. Checking here
rather than in each command keeps that status (and the option's name in the message) the same for
every command.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _number(text: str, kind: type[int] | type[float]) -> float:
    try:
        value = kind(text)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An integer ≥ ``minimum``."""

    def parse(text: str) -> int:
        value = int(_number(text, int))
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is not allowed: must be ≥ {minimum}")
        return value

    return parse


def multiple_of(step: int, *, zero: bool = False) -> Callable[[str], int]:
    """A positive multiple of ``step`` (pixel sizes: the network halves them five times); with
    ``zero``, 0 too (meaning "off")."""

    def parse(text: str) -> int:
        value = int(_number(text, int))
        if (value == 0 and zero) or (value >= step and value % step == 0):
            return value
        also = " (or 0: off)" if zero else ""
        raise argparse.ArgumentTypeError(
            f"{value} is not allowed: must be a multiple of {step}, ≥ {step}{also}"
        )

    return parse


def number_in(
    low: float, high: float | None = None, *, low_open: bool = True, high_open: bool = False
) -> Callable[[str], float]:
    """A finite float in the interval from ``low`` to ``high`` (``None``: no upper bound); by
    default ``(low, high]``."""
    left = "(" if low_open else "["
    right = "∞)" if high is None else (f"{high:g})" if high_open else f"{high:g}]")
    interval = f"{left}{low:g}, {right}"

    def parse(text: str) -> float:
        value = float(_number(text, float))
        above = value > low if low_open else value >= low
        below = high is None or (value < high if high_open else value <= high)
        if not (above and below):
            raise argparse.ArgumentTypeError(f"{value:g} is not allowed: must be in {interval}")
        return value

    return parse


def int_list(minimum: int = 1) -> Callable[[str], list[int]]:
    """Comma-separated integers, each ≥ ``minimum`` (``1,8,32``)."""
    one = int_at_least(minimum)

    def parse(text: str) -> list[int]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"{text!r} holds no number")
        return [one(item) for item in items]

    return parse
