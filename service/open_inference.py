"""The Open Inference Protocol v2 (KServe / Triton / MLServer) on the wire: an ``infer`` request
body into tensors, tensors into a response body. No web framework, no model.

A body is a JSON header, optionally followed by the raw bytes of the tensors that the header
marks with ``"parameters": {"binary_data_size": n}`` (the *binary tensor extension*: the header's
length travels in ``Inference-Header-Content-Length``). Binary tensors are taken as views of the
body, never copied. ``BYTES`` elements in binary form are each a 4-byte little-endian length and
the bytes; in JSON form rdad takes and gives them as base64 strings (an encoded image is not
text).

Numbers in JSON cost far more memory parsed than they take on the wire; the JSON header is
therefore bounded (``max_json_bytes``) and its parse charged to the request's body grant by the
caller (:data:`JSON_PARSE_FACTOR`).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InvalidRequestError, PayloadTooLargeError

JSON_PARSE_FACTOR = 16
"""Bytes of Python objects per byte of JSON, at worst (small nested lists of small numbers)."""

NUMERIC = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
"""The protocol's numeric datatypes (``BYTES`` is the one other)."""


@dataclass(frozen=True)
class Tensor:
    """One named tensor: ``array`` for numeric datatypes (shape ``shape``), ``items`` (flat, one
    per element) for ``BYTES``."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray | None = None
    items: Sequence[bytes | memoryview] | None = None


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None
    """``None`` when the request names none (the server's default outputs)."""
    binary_outputs: bool
    """``parameters.binary_data_output``: outputs not named are sent in binary."""
    parameters: dict[str, Any] = field(default_factory=dict)


def _bad(message: str) -> InvalidRequestError:
    return InvalidRequestError(message)


def _shape(raw: Any, name: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and d >= 0 for d in raw):
        raise _bad(f"tensor '{name}': 'shape' must be a list of non-negative integers")
    return tuple(raw)


def _bytes_items(data: memoryview, count: int, name: str) -> list[memoryview]:
    """Split length-prefixed ``BYTES`` elements (views of ``data``)."""
    items, offset = [], 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise _bad(f"tensor '{name}': a BYTES element's 4-byte length is cut off")
        size = int.from_bytes(data[offset : offset + 4], "little")
        offset += 4
        if offset + size > len(data):
            raise _bad(f"tensor '{name}': a BYTES element is longer than its binary data")
        items.append(data[offset : offset + size])
        offset += size
    if len(items) != count:
        raise _bad(f"tensor '{name}': {len(items)} BYTES elements for a shape of {count}")
    return items


def _json_items(data: Any, count: int, name: str) -> list[bytes]:
    values = np.asarray(data, dtype=object).ravel().tolist() if isinstance(data, list) else []
    if len(values) != count or not all(isinstance(v, str) for v in values):
        raise _bad(f"tensor '{name}': BYTES data must be {count} base64 strings")
    try:
        return [base64.b64decode(v, validate=True) for v in values]
    except (binascii.Error, ValueError):
        raise _bad(f"tensor '{name}': BYTES data in JSON must be base64") from None


def _numeric(raw: Any, dtype: np.dtype, shape: tuple[int, ...], name: str) -> np.ndarray:
    try:
        wide = np.asarray(raw, dtype=np.float64 if dtype.kind == "f" else np.int64)
    except (TypeError, ValueError, OverflowError):
        raise _bad(f"tensor '{name}': 'data' must hold numbers") from None
    if wide.size != math.prod(shape):
        raise _bad(f"tensor '{name}': {wide.size} values for shape {list(shape)}")
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        if wide.size and (wide.min() < info.min or wide.max() > info.max):
            raise _bad(f"tensor '{name}': values out of the range of {dtype.name}")
    return wide.astype(dtype).reshape(shape)


def _tensor(raw: Any, binary: memoryview, offset: int) -> tuple[Tensor, int]:
    """One input from its JSON object; binary data is taken from ``binary`` at ``offset``."""
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise _bad("every tensor needs a 'name'")
    name, datatype = raw["name"], raw.get("datatype")
    shape = _shape(raw.get("shape"), name)
    if datatype != "BYTES" and datatype not in NUMERIC:
        raise _bad(f"tensor '{name}': unknown datatype {str(datatype)[:16]!r}")
    count = math.prod(shape)
    params = raw.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise _bad(f"tensor '{name}': binary_data_size beyond the request's binary data")
        data = binary[offset : offset + size]
        if datatype == "BYTES":
            return Tensor(name, datatype, shape, items=_bytes_items(data, count, name)), size
        dtype = NUMERIC[datatype]
        if size != count * dtype.itemsize:
            raise _bad(f"tensor '{name}': {size} bytes for {count} {datatype} values")
        array = np.frombuffer(data, dtype=dtype.newbyteorder("<")).reshape(shape)
        return Tensor(name, datatype, shape, array=array), size
    if "data" not in raw:
        raise _bad(f"tensor '{name}': no 'data' and no binary_data_size")
    if datatype == "BYTES":
        return Tensor(name, datatype, shape, items=_json_items(raw["data"], count, name)), 0
    return Tensor(
        name, datatype, shape, array=_numeric(raw["data"], NUMERIC[datatype], shape, name)
    ), 0


def parse_message(
    body: memoryview, header_length: int | None, *, key: str, max_json_bytes: int
) -> tuple[dict[str, Any], list[Tensor]]:
    """A request (``key="inputs"``) or a response (``key="outputs"``) in ``body``: its JSON
    header and its tensors. ``header_length`` from ``Inference-Header-Content-Length``
    (``None``: the whole body is JSON). 400 for anything malformed, 413 for a JSON header over
    ``max_json_bytes``."""
    length = len(body) if header_length is None else header_length
    if not 0 <= length <= len(body):
        raise _bad("Inference-Header-Content-Length is larger than the body")
    if length > max_json_bytes:
        raise PayloadTooLargeError(
            f"the JSON header is {length:,} bytes, over {max_json_bytes:,}: send tensors with "
            "the binary tensor extension"
        )
    try:
        header = json.loads(bytes(body[:length]))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _bad("the JSON header is not valid JSON") from None
    if not isinstance(header, dict) or not isinstance(header.get(key), list):
        raise _bad(f"the JSON header needs an '{key}' list")
    binary = body[length:]
    tensors, offset = [], 0
    for raw in header[key]:
        tensor, used = _tensor(raw, binary, offset)
        tensors.append(tensor)
        offset += used
    if offset != len(binary):
        raise _bad(f"{len(binary) - offset} bytes of binary data belong to no tensor")
    return header, tensors


def parse_infer_request(
    body: memoryview, header_length: int | None, *, max_json_bytes: int
) -> InferRequest:
    """An ``infer`` request (see :func:`parse_message`)."""
    header, inputs = parse_message(body, header_length, key="inputs", max_json_bytes=max_json_bytes)
    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise _bad("'parameters' must be an object")
    outputs = None
    if header.get("outputs") is not None:
        if not isinstance(header["outputs"], list):
            raise _bad("'outputs' must be a list")
        outputs = [_requested(raw) for raw in header["outputs"]]
    request_id = header.get("id")
    return InferRequest(
        id=str(request_id) if request_id is not None else None,
        inputs=inputs,
        outputs=outputs,
        binary_outputs=bool(parameters.get("binary_data_output", False)),
        parameters=parameters,
    )


def _requested(raw: Any) -> RequestedOutput:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise _bad("every requested output needs a 'name'")
    params = raw.get("parameters") or {}
    return RequestedOutput(
        raw["name"], bool(isinstance(params, dict) and params.get("binary_data"))
    )


def _serialize_bytes(items: list[bytes]) -> bytes:
    return b"".join(len(item).to_bytes(4, "little") + item for item in items)


def encode_message(
    head: dict[str, Any], key: str, tensors: list[tuple[Tensor, bool]]
) -> tuple[bytes, int | None]:
    """A request (``key="inputs"``) or a response (``key="outputs"``): ``tensors`` (each with
    whether it goes in binary) after the fields of ``head`` (a response's ``model_name``,
    ``model_version``, ``id``; a request's ``parameters`` and ``outputs``). Returns the body and
    the JSON header's length when any tensor is binary (``Inference-Header-Content-Length``),
    else ``None``."""
    described, blobs = [], []
    for tensor, binary in tensors:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if tensor.items is not None:
            raw = [bytes(item) for item in tensor.items]
            if binary:
                blobs.append(_serialize_bytes(raw))
            else:
                entry["data"] = [base64.b64encode(item).decode("ascii") for item in raw]
        else:
            assert tensor.array is not None
            if binary:
                array = tensor.array.astype(tensor.array.dtype.newbyteorder("<"), copy=False)
                blobs.append(np.ascontiguousarray(array).tobytes())
            else:
                entry["data"] = tensor.array.ravel().tolist()
        if binary:
            entry["parameters"] = {"binary_data_size": len(blobs[-1])}
        described.append(entry)
    text = json.dumps({**head, key: described}, separators=(",", ":")).encode()
    if not blobs:
        return text, None
    return b"".join([text, *blobs]), len(text)
