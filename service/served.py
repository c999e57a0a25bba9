"""One loaded version of a model (engine, batcher, admission, leases) and the states a model file
goes through in the repository (service/repository.py)."""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator
from dataclasses import dataclass

from .admission import ModelAdmission
from .batcher import Batcher, Runner
from .engines import InferenceEngine


class ModelState(enum.StrEnum):
    LOADING = "loading"
    WARMING = "warming"
    READY = "ready"
    FAILED = "failed"
    DRAINING = "draining"

    @property
    def serves(self) -> bool:
        """Requests routed to a model in this state are answered (a draining version finishes
        what it was given)."""
        return self in (ModelState.READY, ModelState.DRAINING)


@dataclass(eq=False)
class ServedModel:
    """One loaded version of a model, with its batcher."""

    name: str
    engine: InferenceEngine
    runner: Runner
    batcher: Batcher
    admission: ModelAdmission
    state: ModelState = ModelState.WARMING
    error: str | None = None
    file: str = ""
    """The file it came from, relative to the model folder."""
    leases: int = 0
    """Requests routed to this version and not yet answered."""

    @property
    def version(self) -> str:
        return self.engine.metadata.model_version

    @contextlib.contextmanager
    def lease(self) -> Iterator[ServedModel]:
        self.leases += 1
        try:
            yield self
        finally:
            self.leases -= 1


@dataclass(eq=False)
class PendingModel:
    """A model file with no version of its own serving: being loaded, or failed."""

    name: str
    file: str
    state: ModelState
    error: str | None = None
