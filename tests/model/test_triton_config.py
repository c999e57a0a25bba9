"""Triton options and the protobuf text they become (parsed back with Triton's own schema)."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from rdad.model.triton_config import (
    TensorSpec,
    TritonOptionError,
    TritonOptions,
    build_config,
    render,
)

IMAGE = TensorSpec("images", "TYPE_UINT8", (64, 64, 3))
OUTPUTS = [TensorSpec("anomaly_map", "TYPE_FP32", (64, 64)), TensorSpec("score", "TYPE_FP32", ())]


def parsed(options: TritonOptions, parameters: dict[str, str] | None = None) -> mc.ModelConfig:
    text = render(build_config(options, [IMAGE], OUTPUTS, parameters or {}))
    return text_format.Parse(text, mc.ModelConfig())


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"name": "two words"}, "name"),
        ({"name": ".hidden"}, "name"),
        ({"name": "a/b"}, "name"),
        ({"version": 0}, "version"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_batch_size": 4, "preferred_batch_sizes": (2, 8)}, "preferred_batch_sizes"),
        ({"preferred_batch_sizes": (0,)}, "preferred_batch_sizes"),
        ({"queue_delay_us": -1}, "queue_delay_us"),
        ({"instance_count": 0}, "instance_count"),
        ({"instance_kind": "tpu"}, "instance_kind"),
        ({"instance_kind": "cpu", "tensorrt_fp16": True}, "tensorrt_fp16"),
    ],
)
def test_out_of_range_options_name_their_field(kwargs: dict[str, object], field: str) -> None:
    settings: dict[str, object] = {"name": "m", **kwargs}
    with pytest.raises(TritonOptionError) as exc:
        TritonOptions(**settings)  # type: ignore[arg-type]
    assert exc.value.field == field


@pytest.mark.parametrize(
    "max_batch, preferred",
    [(1, []), (4, [4]), (12, [4, 8]), (16, [4, 8, 16]), (64, [4, 8, 16, 32, 64])],
)
def test_default_preferred_sizes_are_powers_of_two_up_to_the_max(
    max_batch: int, preferred: list[int]
) -> None:
    config = parsed(TritonOptions("m", max_batch_size=max_batch))
    assert list(config.dynamic_batching.preferred_batch_size) == preferred
    assert config.max_batch_size == max_batch


def test_batch_only_outputs_are_declared_one_wide_and_reshaped_to_the_batch() -> None:
    """Triton refuses empty dims: ``score`` (B,) is [1] in the config, [] for the graph."""
    anomaly_map, score = parsed(TritonOptions("m")).output
    assert list(anomaly_map.dims) == [64, 64] and not anomaly_map.HasField("reshape")
    assert list(score.dims) == [1]
    assert score.HasField("reshape") and list(score.reshape.shape) == []


def test_parameter_text_survives_quotes_backslashes_newlines_and_unicode() -> None:
    tricky = {"json": '{"a": "b\\\\c"}', "lines": "one\ntwo\tthree", "unicode": "µs — 5 °C"}
    config = parsed(TritonOptions("m"), tricky)
    assert {k: v.string_value for k, v in config.parameters.items()} == tricky
