"""``rdad predict --url … --protocol v2``: score against any Open Inference Protocol v2 server —
``rdad serve`` itself, or Triton serving the very file ``rdad export --triton`` wrote.

The model's metadata says which it is. A model with a ``files`` BYTES input (rdad) is sent the
encoded files and answers scores and verdicts itself. A model with only the graph's ``images``
UINT8 input (Triton) is sent pixels decoded and resized here exactly as ``rdad eval`` does, and
its raw ``score`` is judged against the calibration that ``rdad export --triton`` wrote into the
model's configuration (``GET /v2/models/NAME/config``, Triton's configuration extension).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from rdad.commands.predict_io import Input
from rdad.commands.predict_sources import Answer, Refusal, score_in_groups
from rdad.errors import CommandError

HEADER = "Inference-Header-Content-Length"
RENDERS = ("heatmap_png", "overlay_png", "mask_png")
_MAX_RESPONSE_JSON = 64 * 1024 * 1024


class OpenInferenceSource:
    """``POST {url}/v2/models/{name}/infer`` with the files of one batch."""

    def __init__(self, url: str, name: str | None, timeout: float, api_key: str | None) -> None:
        import httpx

        if not name:
            raise CommandError("--protocol v2 needs --name: the protocol has no default model")
        self.base = f"{url}/v2/models/{name}"
        self.url = f"{self.base}/infer"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout, headers=headers)
        meta = self._get(self.base)
        inputs = {t.get("name"): t for t in meta.get("inputs", [])}
        self.pixels_side: int | None = None
        self.calibration: Any = None
        if inputs.get("files", {}).get("datatype") != "BYTES":
            self.pixels_side = _pixels_side(inputs.get("images"))
            self.calibration = _calibration(self._get(f"{self.base}/config"))

    def _get(self, url: str) -> dict[str, Any]:
        import httpx

        try:
            response = self.client.get(url)
        except httpx.HTTPError as exc:
            raise CommandError(f"cannot reach {url}: {exc}") from None
        if response.status_code != 200:
            raise CommandError(f"HTTP {response.status_code} from {url}: {_reason(response)[1]}")
        body = response.json()
        if not isinstance(body, dict):
            raise CommandError(f"{url}: not an Open Inference Protocol answer")
        return body

    def score(self, chunk: list[Input], *, images: bool, threshold: float | None) -> list[Answer]:
        from rdad.service.open_inference import Tensor, encode_message

        rdad = self.pixels_side is None
        wanted = ["score", "normalized_score", "verdict"] if rdad else ["score"]
        if images and rdad:
            wanted += RENDERS
        binary = {"binary_data": True}
        head: dict[str, Any] = {"outputs": [{"name": n, "parameters": binary} for n in wanted]}
        if threshold is not None and self.pixels_side is None:
            head["parameters"] = {"threshold": threshold}

        def send(group: list[tuple[Input, bytes]]) -> list[Answer] | Refusal:
            if self.pixels_side is None:
                tensor = Tensor("files", "BYTES", (len(group),), items=[data for _, data in group])
            else:
                try:
                    pixels = np.stack([self._pixels(data) for _, data in group])
                except ValueError as exc:  # rdad.imaging.ImageDecodeError
                    return Refusal(400, "bad_image", str(exc))
                tensor = Tensor("images", "UINT8", pixels.shape, array=pixels)
            body, length = encode_message(head, "inputs", [(tensor, True)])
            headers = {"Content-Type": "application/octet-stream", HEADER: str(length)}
            response = self._post(body, headers)
            if response.status_code != 200:
                return Refusal(response.status_code, *_reason(response))
            return self._answers(response, len(group), threshold)

        return score_in_groups(chunk, send, self.url)

    def _post(self, body: bytes, headers: dict[str, str]) -> Any:
        import httpx

        try:
            return self.client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise CommandError(f"cannot reach {self.url}: {exc}") from None

    def _pixels(self, data: bytes) -> np.ndarray:
        from rdad.imaging import decode_image, resize_rgb

        assert self.pixels_side is not None
        return resize_rgb(decode_image(data, min_side=self.pixels_side), self.pixels_side)

    def _answers(self, response: Any, count: int, threshold: float | None) -> list[Answer]:
        from rdad.service.errors import ServiceError
        from rdad.service.open_inference import parse_message

        length = response.headers.get(HEADER)
        try:
            _, tensors = parse_message(
                memoryview(response.content),
                int(length) if length is not None else None,
                key="outputs",
                max_json_bytes=_MAX_RESPONSE_JSON,
            )
        except (ServiceError, ValueError) as exc:
            raise CommandError(f"{self.url}: unreadable answer: {exc}") from None
        by_name = {t.name: t for t in tensors}
        scores = _values(by_name, "score", count)
        answers: list[Answer] = []
        for i in range(count):
            result: dict[str, Any] = {"score": float(scores[i])}
            if self.calibration is None:
                result["normalized_score"] = float(_values(by_name, "normalized_score", count)[i])
                result["is_anomalous"] = bool(_values(by_name, "verdict", count)[i])
                for name in RENDERS:
                    items = by_name[name].items if name in by_name else None
                    if items:
                        result[name] = base64.b64encode(bytes(items[i])).decode("ascii")
            else:
                result.update(_judge(self.calibration, result["score"], threshold))
            answers.append(result)
        return answers

    def close(self) -> None:
        self.client.close()


def _values(tensors: dict[str, Any], name: str, count: int) -> np.ndarray:
    """``(count,)`` values of output ``name`` (Triton answers a graph's ``score`` as ``[N, 1]``)."""
    tensor = tensors.get(name)
    if tensor is None or tensor.array is None or tensor.array.size != count:
        raise CommandError(f"the server's answer has no '{name}' for {count} images")
    return tensor.array.reshape(count)


def _reason(response: Any) -> tuple[str, str]:
    try:
        return "error", str(response.json().get("error"))
    except ValueError:
        return "http_error", response.text[:200]


def _pixels_side(spec: dict[str, Any] | None) -> int:
    shape = (spec or {}).get("shape", [])
    square = len(shape) == 4 and shape[1] == shape[2] and shape[1] >= 1
    if (spec or {}).get("datatype") != "UINT8" or not square:
        raise CommandError(
            "the model takes neither 'files' (BYTES) nor 'images' (UINT8 [N, S, S, 3]): not an "
            "rdad model (a tiled model is scored through rdad serve, not tile by tile here)"
        )
    return int(shape[1])


def _calibration(config: dict[str, Any]) -> Any:
    """The calibration ``rdad export --triton`` put in the model's parameters."""
    from rdad.metadata import Calibration

    params = {k: v.get("string_value") for k, v in (config.get("parameters") or {}).items()}
    if params.get("rdad_tile_size"):
        raise CommandError(
            "a tiled model: its graph scores tiles, and its threshold judges stitched maps; "
            "score it through rdad serve"
        )
    try:
        return Calibration(
            image_threshold=float(params["rdad_image_threshold"]),
            pixel_threshold=float(params["rdad_pixel_threshold"]),
            score_scale=float(params["rdad_score_scale"]),
            threshold_percentile=float(params["rdad_threshold_percentile"]),
            pixel_threshold_percentile=float(params["rdad_pixel_threshold_percentile"]),
        )
    except (KeyError, TypeError, ValueError):
        raise CommandError(
            "the model's configuration has no rdad calibration (rdad_image_threshold, …): "
            "write its repository with rdad export --triton"
        ) from None


def _judge(calibration: Any, score: float, threshold: float | None) -> dict[str, Any]:
    from rdad.service.scoring_types import judge

    verdict = judge(calibration, score, threshold)
    return {
        "normalized_score": verdict.normalized_score,
        "is_anomalous": verdict.is_anomalous,
        "threshold": verdict.threshold,
        "normalized_threshold": verdict.normalized_threshold,
    }
