"""Hot reload across worker processes: ``POST /models/{name}/reload`` reaches one worker (the one
whose event loop accepted the connection); that worker leaves a request for the others here.

A request is the file ``reload/NAME`` in the workers' shared folder (:mod:`service.run_dir`),
holding a token that is new for every request (written to a temporary name, then renamed, so a
reader never sees half a token). Every worker watches the folder and reloads NAME when its token
differs from the last one it saw; the worker that wrote it has seen it already. Tokens present
when a worker starts are taken as seen: that worker has just loaded the current files.

Model-folder polling needs none of this: every worker polls the folder itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from .errors import ServiceError
from .run_dir import reload_dir
from .settings import Settings

log = logging.getLogger("rdad.service.repository")

WATCH_S = 0.25
"""How often a worker looks for requests: one directory listing, small against a model load."""


class ReloadRequests:
    """The reload requests of one worker's siblings (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._seen = self._read()

    @classmethod
    def for_settings(cls, settings: Settings) -> ReloadRequests | None:
        """A worker's requests under ``rdad serve --workers N`` (``None``: a single process).
        Made with the repository, before its first load: a request that comes while this worker
        is loading is acted on, not taken as seen."""
        if settings.workers < 2 or settings.run_dir is None:
            return None
        return cls(reload_dir(settings.run_dir))

    def announce(self, name: str) -> None:
        """Ask every other worker to reload ``name`` (a valid model name: no path in it)."""
        token = uuid.uuid4().hex
        tmp = self.folder / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(token)
        os.replace(tmp, self.folder / name)
        self._seen[name] = token

    def pending(self) -> list[str]:
        """Names with a request this worker has not acted on; from now on they count as seen."""
        current = self._read()
        changed = sorted(name for name, token in current.items() if self._seen.get(name) != token)
        self._seen.update(current)
        return changed

    async def follow(self, reload: Callable[[str], Awaitable[object]]) -> None:
        """Run ``reload(name)`` for every new request, until cancelled."""
        while True:
            await asyncio.sleep(WATCH_S)
            for name in self.pending():
                log.info("model %s: reload requested through another worker", name)
                try:
                    await reload(name)
                except ServiceError as exc:  # the worker that was asked answered it already
                    log.warning("model %s: reload failed here too: %s", name, exc.detail)
                except Exception:  # a failed reload must never end the watch
                    log.exception("model %s: reload requested by another worker failed", name)

    def _read(self) -> dict[str, str]:
        tokens: dict[str, str] = {}
        try:
            entries = list(self.folder.iterdir())
        except OSError:
            return tokens
        for path in entries:
            if path.name.startswith("."):
                continue  # a request being written
            try:
                tokens[path.name] = path.read_text()
            except OSError:
                continue
        return tokens
