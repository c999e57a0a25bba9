"""The Open Inference Protocol v2 routes in the OpenAPI schema: their answers and errors, and the
``infer`` body (read by the route itself, :mod:`service.open_inference`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class V2Error(BaseModel):
    error: str = Field(description="what went wrong (the protocol's error shape)")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 where the size varies")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata] = Field(description="a request sends one of them")
    outputs: list[TensorMetadata]


class ModelReady(BaseModel):
    name: str
    ready: bool


def _errors(codes: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": V2Error, "description": text} for code, text in codes.items()}


_KEY = {401: "API key missing or wrong"}
_UNKNOWN = {404: "unknown model, or a version it does not serve"}
_NOT_READY = {503: "the model is loading, warming up or failed"}

METADATA_RESPONSES = _errors({**_KEY, **_UNKNOWN, **_NOT_READY})
READY_RESPONSES = _errors({**_KEY, **_UNKNOWN, **_NOT_READY})
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            "application/json": {},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
            },
        },
        "description": "the outputs: JSON alone, or (binary tensor extension) the JSON header "
        "followed by the binary outputs, its length in Inference-Header-Content-Length",
    },
    **_errors(
        {
            400: "malformed request: JSON, tensors, their sizes, unknown input or output names, "
            "parameters; or an image that cannot be decoded",
            **_KEY,
            **_UNKNOWN,
            408: "the upload stalled or came slower than the minimum rate: cut off",
            413: "body over the upload limit, JSON header over RDAD_V2_MAX_JSON_MB, or an image "
            "over the pixel limit",
            415: "an input that is not an image",
            500: "inference failed for the batch this request was in",
            503: "refused before any work: queue full, overloaded, no memory, or not ready",
            504: "accepted, but timed out before it finished",
        }
    ),
}

INFER_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A JSON inference request; with the binary tensor extension, the JSON "
        "header (its length in Inference-Header-Content-Length) followed by the tensors' bytes.",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {
                            "type": "object",
                            "properties": {
                                "threshold": {
                                    "type": "number",
                                    "exclusiveMinimum": 0,
                                    "exclusiveMaximum": 1,
                                    "description": "verdict threshold, normalised units",
                                },
                                "binary_data_output": {"type": "boolean"},
                            },
                        },
                        "inputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "datatype", "shape"],
                                "properties": {
                                    "name": {"type": "string", "enum": ["images", "files"]},
                                    "datatype": {"type": "string", "enum": ["UINT8", "BYTES"]},
                                    "shape": {"type": "array", "items": {"type": "integer"}},
                                    "parameters": {"type": "object"},
                                    "data": {"type": "array"},
                                },
                            },
                        },
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "parameters": {"type": "object"},
                                },
                            },
                        },
                    },
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
