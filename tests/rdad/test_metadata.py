"""The ONNX metadata contract shared by model/ and service/."""

from __future__ import annotations

import json

import pytest

from rdad.metadata import Calibration, MetadataError, ModelMetadata


def sample() -> ModelMetadata:
    cal = Calibration(
        image_threshold=1.5,
        pixel_threshold=1.2,
        score_scale=0.1,
        threshold_percentile=99.0,
        pixel_threshold_percentile=99.9,
        score_percentiles={"p50": 1.3},
        num_images=21,
    )
    return ModelMetadata(
        backbone="resnet18",
        image_size=256,
        teacher_weights="imagenet",
        calibration=cal,
        training={"epochs": 10},
    )


def test_round_trip_through_json() -> None:
    meta = sample()
    assert ModelMetadata.from_json(meta.to_json()) == meta
    assert ModelMetadata.from_props({"rdad": meta.to_json(), "other": "x"}) == meta


def test_unknown_versions_and_garbage_are_refused_clearly() -> None:
    raw = json.loads(sample().to_json())
    raw["format_version"] = 99
    with pytest.raises(MetadataError, match="format_version 99"):
        ModelMetadata.from_json(json.dumps(raw))
    with pytest.raises(MetadataError, match="not valid JSON"):
        ModelMetadata.from_json("{nope")
    with pytest.raises(MetadataError, match="no 'rdad' entry"):
        ModelMetadata.from_props({})
    raw["format_version"] = 1
    raw["surprise"] = True
    with pytest.raises(MetadataError, match="unexpected fields"):
        ModelMetadata.from_json(json.dumps(raw))


def test_verdict_and_normalisation_agree_at_the_threshold() -> None:
    cal = sample().calibration
    assert cal is not None
    assert cal.normalize(1.5) == 0.5
    assert not cal.is_anomalous(1.5) and cal.is_anomalous(1.5001)
    assert cal.normalize(1.4) < 0.5 < cal.normalize(1.6)
