"""The Open Inference Protocol codec on its own: a message written by :func:`encode_message` reads
back to the same tensors, in JSON and in binary; malformed framing is a 400 that says what."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rdad.service.errors import InvalidRequestError, PayloadTooLargeError
from rdad.service.open_inference import Tensor, encode_message, parse_message


def _round_trip(tensors: list[tuple[Tensor, bool]]) -> list[Tensor]:
    body, length = encode_message({"id": "x"}, "outputs", tensors)
    header, parsed = parse_message(memoryview(body), length, key="outputs", max_json_bytes=1 << 20)
    assert header["id"] == "x"
    return parsed


@pytest.mark.parametrize("binary", [True, False])
def test_tensors_read_back_as_written(binary: bool) -> None:
    maps = np.random.default_rng(0).random((2, 3, 4), dtype=np.float32)
    verdicts = np.array([True, False])
    pngs = [b"\x89PNG\x00\xff", b""]
    written = [
        Tensor("anomaly_map", "FP32", maps.shape, array=maps),
        Tensor("verdict", "BOOL", (2,), array=verdicts),
        Tensor("heatmap_png", "BYTES", (2,), items=pngs),
    ]
    read = _round_trip([(t, binary) for t in written])
    assert [t.name for t in read] == ["anomaly_map", "verdict", "heatmap_png"]
    assert read[0].array is not None and read[0].array.dtype == np.float32
    np.testing.assert_array_equal(read[0].array, maps)
    assert read[1].array is not None and read[1].array.tolist() == [True, False]
    assert read[2].items is not None and [bytes(i) for i in read[2].items] == pngs


def _binary_body(size_field: int, data: bytes, datatype: str = "BYTES") -> tuple[bytes, int]:
    tensor = {
        "name": "t",
        "datatype": datatype,
        "shape": [1],
        "parameters": {"binary_data_size": size_field},
    }
    head = json.dumps({"outputs": [tensor]}).encode()
    return head + data, len(head)


@pytest.mark.parametrize(
    ("data", "size", "datatype", "words"),
    [
        (b"\x05\x00", 2, "BYTES", "length is cut off"),
        (b"\x09\x00\x00\x00abc", 7, "BYTES", "longer than its binary data"),
        (b"\x01\x00\x00\x00a\x01\x00\x00\x00b", 10, "BYTES", "2 BYTES elements for a shape of 1"),
        (b"\x00" * 3, 3, "FP32", "3 bytes for 1 FP32"),
        (b"\x00" * 4, 9, "FP32", "beyond the request's binary data"),
        (b"\x00" * 8, 4, "FP32", "4 bytes of binary data belong to no tensor"),
    ],
)
def test_malformed_binary_data_is_refused_with_the_reason(
    data: bytes, size: int, datatype: str, words: str
) -> None:
    body, length = _binary_body(size, data, datatype)
    with pytest.raises(InvalidRequestError) as refused:
        parse_message(memoryview(body), length, key="outputs", max_json_bytes=1 << 20)
    assert words in refused.value.detail


def test_header_length_and_json_size_are_checked_before_parsing() -> None:
    body = b'{"outputs": []}'
    with pytest.raises(InvalidRequestError, match="larger than the body"):
        parse_message(memoryview(body), len(body) + 1, key="outputs", max_json_bytes=1 << 20)
    with pytest.raises(PayloadTooLargeError):
        parse_message(memoryview(body), None, key="outputs", max_json_bytes=4)
