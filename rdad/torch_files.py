"""Whether a file can be one that ``torch.save`` wrote, from its first bytes (no torch needed).

``torch.load`` on some other file fails with whatever its unpickler trips over first: a
``KeyError: 174812789`` or ``invalid load key`` that says nothing about the file. Checking the
header first gives a message that says what the file is not, and lets a command refuse a wrong
path before it spends seconds on imports and data.
"""

from __future__ import annotations

from pathlib import Path

ZIP_HEADER = b"PK\x03\x04"
"""``torch.save``'s format since torch 1.6: a zip archive."""
LEGACY_HEADER = b"\x80\x02\x8a\x0a"
"""The older format: a protocol-2 pickle whose first object is torch's 10-byte magic number."""
_SHOWN = 24


def _describe(head: bytes) -> str:
    """What the first bytes look like, for a message: a text line is quoted, anything else is
    shown in hex."""
    try:
        line = head.split(b"\n", 1)[0].decode("utf-8").rstrip("\r")
    except UnicodeDecodeError:
        line = ""
    if line and line.isprintable():
        return f"it is text: {line[:_SHOWN]!r}" + ("…" if len(line) > _SHOWN else "")
    return f"it starts with bytes {head[:8].hex(' ')}"


def torch_file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a file ``torch.save`` wrote (``None``: its header is one)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(64)
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"
    if not head:
        return "the file is empty"
    if head.startswith((ZIP_HEADER, LEGACY_HEADER)):
        return None
    return f"not a PyTorch file (torch.save writes a zip archive); {_describe(head)}"
