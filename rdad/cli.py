"""The ``rdad`` command line: one entry point, one module per subcommand under :mod:`rdad.commands`.

Each command module exposes ``register(subparsers)`` and sets ``func`` on its parser. Modules are
imported lazily per subcommand so that ``rdad serve`` never imports torch and ``rdad --help`` is
fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from rdad import __version__
from rdad.errors import CommandError

__all__ = ["COMMANDS", "CommandError", "HelpFormatter", "Parser", "build_parser", "main"]

# name -> (module, one-line help). A plain dict registry; the order is the order in --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("rdad.commands.train", "train a Reverse Distillation model on good images"),
    "export": ("rdad.commands.export", "export a checkpoint to one ONNX graph (metadata inside)"),
    "eval": (
        "rdad.commands.evaluate",
        "score an ONNX model or checkpoint on an MVTec-layout folder",
    ),
    "serve": ("rdad.commands.serve", "run the HTTP inference service"),
    "predict": (
        "rdad.commands.predict",
        "score image files or folders (local model or a running service), write results",
    ),
    "bench": ("rdad.commands.bench", "measure models in torch, ONNX Runtime and OpenVINO"),
}


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit status 2), like every other
    rdad error; subcommand parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Examples kept as written, and every option's default shown after its description."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if not action.option_strings or "(default" in text:
            return text
        if action.required:
            return f"{text} (required)"
        if action.default is None:
            return f"{text} (default: none)"
        if isinstance(action.default, bool) and action.nargs == 0:
            return f"{text} (default: {'on' if action.default else 'off'})"
        return super()._get_help_string(action)


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = Parser(
        prog="rdad",
        description="Industrial visual anomaly detection: train → export → serve.",
        epilog="Run 'rdad COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"rdad {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if selected is None or name != selected:
            # Only the chosen command's module is imported: keeps torch out of `rdad serve`.
            subparsers.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        module.register(subparsers, name, help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in args_list if not a.startswith("-")), None)
    parser = build_parser(selected if selected in COMMANDS else None)
    args = parser.parse_args(args_list)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        print(f"rdad {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"rdad {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # A failure no command expected is still one line; RDAD_DEBUG=1 shows the traceback.
        if os.environ.get("RDAD_DEBUG"):
            raise
        reason = str(exc).splitlines()[0] if str(exc) else ""
        print(
            f"rdad {args.command}: error: {type(exc).__name__}: {reason} "
            "(RDAD_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
