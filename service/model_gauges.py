"""The repository's model states as gauges: ``rdad_model_info`` and ``rdad_model_ready``."""

from __future__ import annotations

from .metrics import Metrics
from .model_version import ModelState, PendingModel, ServedModel


class ModelStateGauges:
    """``rdad_model_info{model, version, provider, image_size, backbone, precision, state} = 1``
    for every version and file the repository knows (``precision``: what runs, e.g. bf16);
    ``rdad_model_ready`` per serving name."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._info: dict[int, tuple[str, ...]] = {}  # the labels set per entry

    def publish(self, entry: ServedModel | PendingModel, serving: ServedModel | None) -> None:
        """Show ``entry`` in its current state; ``serving`` is the name's serving version."""
        metrics = self._metrics
        if isinstance(entry, ServedModel):
            meta = entry.engine.metadata
            labels: tuple[str, ...] = (
                entry.name, meta.model_version, entry.engine.provider, str(meta.image_size),
                meta.backbone, entry.engine.compute_precision, str(entry.state),
            )  # fmt: skip
            if serving is entry:
                ready = 1 if entry.state is ModelState.READY else 0
                metrics.model_ready.labels(entry.name).set(ready)
        else:
            labels = (entry.name, "", "", "", "", "", str(entry.state))
            if serving is None:
                metrics.model_ready.labels(entry.name).set(0)
        self.unpublish(entry)
        self._info[id(entry)] = labels
        metrics.model_info.labels(*labels).set(1)

    def unpublish(self, entry: ServedModel | PendingModel) -> None:
        labels = self._info.pop(id(entry), None)
        if labels is not None and labels not in self._info.values():
            self._metrics.retire(self._metrics.model_info, *labels)

    def forget(self, name: str) -> None:
        """The name left the model folder: no ``rdad_model_ready`` for it any more."""
        self._metrics.retire(self._metrics.model_ready, name)
