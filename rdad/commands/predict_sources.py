"""Where ``rdad predict`` gets its answers: a local ONNX file through the service's engine, or a
running service over HTTP. Both answer one batch of inputs with result dicts (the service's JSON
shape) or :class:`Failure` entries for files that could not be scored."""

from __future__ import annotations

import mimetypes
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rdad.commands.predict_io import Failure, Input, read_file
from rdad.errors import CommandError

Answer = dict[str, Any] | Failure
# Answers about one file, not about the request: the file is listed, the run goes on.
_PER_FILE_STATUSES = frozenset({400, 413, 415})


class LocalSource:
    """In-process scoring: the service's engine (its runtime choice, on this machine's CPU) and
    its scoring flow (:class:`rdad.service.scoring.Scorer`), with batches run in this thread."""

    def __init__(self, model: Path, batch_size: int, threads: int = 0) -> None:
        """``threads``: the CPU provider's threads (0: its default, one per physical core)."""
        from rdad.service.engine import load_engine
        from rdad.service.errors import ModelLoadError
        from rdad.service.local import DirectInference, InlineWorkers
        from rdad.service.plan import Layout
        from rdad.service.scoring import Scorer
        from rdad.service.scoring_types import ScoringModel
        from rdad.service.settings import Settings

        settings = Settings(device="cpu", intra_op_threads=threads)
        try:
            engine = load_engine(model.stem, model, settings)
        except ModelLoadError as exc:
            raise CommandError(exc.detail) from None
        meta = engine.metadata
        assert meta.calibration is not None  # every engine refuses uncalibrated models at load
        scoring = ScoringModel(
            name=engine.name,
            version=meta.model_version,
            layout=Layout(meta.image_size, meta.tiling),
            calibration=meta.calibration,
            max_pixels=settings.max_pixels,
        )
        self.engine = engine
        self.scorer = Scorer(scoring, DirectInference(engine.run, batch_size), InlineWorkers())
        self._settings = settings

    def score(self, chunk: list[Input], *, images: bool, threshold: float | None) -> list[Answer]:
        return self.score_data(
            [(item, read_file(item)) for item in chunk], images=images, threshold=threshold
        )

    def score_data(
        self,
        chunk: list[tuple[Input, bytes | Failure]],
        *,
        images: bool,
        threshold: float | None,
    ) -> list[Answer]:
        """Score files already read (or failed to read): the local path reads them here, a Ray
        actor (:mod:`rdad.commands.predict_ray`) where its batch runs."""
        from rdad.service.errors import ServiceError
        from rdad.service.local import score_now
        from rdad.service.render import OutputOptions
        from rdad.service.schemas import ModelRef, prediction_result

        answers: list[Answer | None] = []
        files: list[tuple[str, bytes]] = []
        positions: list[int] = []
        for item, data in chunk:
            if isinstance(data, Failure):
                answers.append(data)
                continue
            positions.append(len(answers))
            answers.append(None)
            files.append((item.path.name, data))
        options = OutputOptions(
            heatmap=images,
            overlay=images,
            mask=images,
            regions=True,
            original_size=images,
            overlay_max_side=self._settings.overlay_max_side,
            original_max_side=self._settings.original_max_side,
        )
        model = self.scorer.model
        ref = ModelRef(name=model.name, version=model.version)
        for position, result in zip(
            positions, score_now(self.scorer, files, options, threshold=threshold), strict=True
        ):
            item = chunk[position][0]
            if isinstance(result, ServiceError):
                answers[position] = Failure.of_file(item.path, result.code, result.detail)
            else:
                answer = prediction_result(result, ref)
                answers[position] = answer.model_dump(mode="json", exclude_none=True)
        return [a for a in answers if a is not None]

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class Refusal:
    """A service's answer that is not a result: its status, error code and detail."""

    status: int
    error: str
    detail: str


def score_in_groups(
    chunk: list[Input],
    send: Callable[[list[tuple[Input, bytes]]], list[Answer] | Refusal],
    url: str,
) -> list[Answer]:
    """Send the readable files of ``chunk`` as one request; when a request fails for one file's
    reason (a 400, 413 or 415 about a whole request of several files), send its files one by
    one to find which. Any other refusal stops the run."""
    answers: list[Answer | None] = [None] * len(chunk)
    readable: list[tuple[int, Input, bytes]] = []
    for index, item in enumerate(chunk):
        data = read_file(item)
        if isinstance(data, Failure):
            answers[index] = data
        else:
            readable.append((index, item, data))
    pending = [readable] if readable else []
    while pending:
        group = pending.pop()
        outcome = send([(item, data) for _, item, data in group])
        if not isinstance(outcome, Refusal):
            for (index, _, _), answer in zip(group, outcome, strict=True):
                answers[index] = answer
        elif outcome.status in _PER_FILE_STATUSES and len(group) == 1:
            answers[group[0][0]] = Failure.of_file(group[0][1].path, outcome.error, outcome.detail)
        elif outcome.status in _PER_FILE_STATUSES:
            pending.extend([entry] for entry in group)
        else:
            raise CommandError(
                f"HTTP {outcome.status} from {url}: {outcome.error}: {outcome.detail}"
            )
    return [a for a in answers if a is not None]


class RemoteSource:
    """``POST {url}/predict`` (or ``/models/{name}/predict``) with the files of one batch."""

    def __init__(self, url: str, name: str | None, timeout: float, api_key: str | None) -> None:
        import httpx

        self.url = f"{url}/models/{name}/predict" if name else f"{url}/predict"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout, headers=headers)

    def _post(self, items: list[tuple[Input, bytes]], params: dict[str, str]) -> Any:
        import httpx

        files = [
            (
                "files",
                (
                    item.path.name,
                    data,
                    mimetypes.guess_type(item.path.name)[0] or "application/octet-stream",
                ),
            )
            for item, data in items
        ]
        try:
            return self.client.post(self.url, files=files, params=params)
        except httpx.HTTPError as exc:
            raise CommandError(f"cannot reach {self.url}: {exc}") from None

    @staticmethod
    def _reason(response: Any) -> tuple[str, str]:
        try:
            body = response.json()
            return str(body.get("error")), str(body.get("detail"))
        except ValueError:
            return "http_error", response.text[:200]

    def score(self, chunk: list[Input], *, images: bool, threshold: float | None) -> list[Answer]:
        flag = str(images).lower()
        params = {"heatmap": flag, "overlay": flag, "mask": flag, "regions": "true"}
        if images:
            params["heatmap_size"] = "original"
        if threshold is not None:
            params["threshold"] = repr(threshold)

        def send(group: list[tuple[Input, bytes]]) -> list[Answer] | Refusal:
            response = self._post(group, params)
            if response.status_code != 200:
                return Refusal(response.status_code, *self._reason(response))
            answers: list[Answer] = []
            for (item, _), result in zip(group, response.json()["results"], strict=True):
                if "error" in result and "score" not in result:  # a per-file error entry
                    answers.append(
                        Failure.of_file(item.path, str(result["error"]), str(result.get("detail")))
                    )
                else:
                    answers.append(result)
            return answers

        return score_in_groups(chunk, send, self.url)

    def close(self) -> None:
        self.client.close()
