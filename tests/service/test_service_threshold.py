"""``threshold=`` on /predict: a per-request verdict threshold in normalised units."""

from __future__ import annotations

import pytest

from rdad.service.scoring_types import judge, raw_threshold


async def test_threshold_override_moves_the_verdict(
    make_client, images, metadata, synthetic_dir
) -> None:
    data = (synthetic_dir / "test" / "good" / "000.png").read_bytes()  # a part like the training
    cal = metadata.calibration
    async with make_client() as client:
        default = (await client.post("/predict", files=images.upload(data))).json()
        norm = default["normalized_score"]
        assert 0.0 < norm < 1.0
        below = max(norm / 2, 1e-6)  # a threshold under the score: anomalous
        above = (norm + 1) / 2  # over it: normal
        flagged = await client.post(
            "/predict", params={"threshold": below}, files=images.upload(data)
        )
        passed = await client.post(
            "/predict", params={"threshold": above}, files=images.upload(data)
        )
        calibrated = await client.post(
            "/predict", params={"threshold": 0.5}, files=images.upload(data)
        )
    assert default["normalized_threshold"] == 0.5
    assert default["threshold"] == pytest.approx(cal.image_threshold)
    assert flagged.status_code == passed.status_code == 200
    flagged_body, passed_body = flagged.json(), passed.json()
    assert flagged_body["is_anomalous"] is True and passed_body["is_anomalous"] is False
    assert flagged_body["normalized_threshold"] == pytest.approx(below)
    # The raw threshold reported is the one whose normalised score is the override.
    assert cal.normalize(flagged_body["threshold"]) == pytest.approx(below, rel=1e-6)
    assert flagged_body["score"] == passed_body["score"] == default["score"]
    assert calibrated.json()["is_anomalous"] is default["is_anomalous"]


@pytest.mark.parametrize("bad", ["0", "1", "-0.2", "1.5", "high"])
async def test_threshold_out_of_range_is_422(make_client, images, bad: str) -> None:
    async with make_client() as client:
        response = await client.post(
            "/predict", params={"threshold": bad}, files=images.upload(images.png())
        )
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "validation_error"
    assert any("threshold" in e["loc"] for e in body["detail"])


async def test_png_answer_headers_follow_the_override(make_client, images) -> None:
    data = images.png(64, 64, seed=5)
    async with make_client() as client:
        strict = await client.post(
            "/predict",
            params={"threshold": 1e-9},
            files=images.upload(data),
            headers={"Accept": "image/png"},
        )
    assert strict.status_code == 200 and strict.headers["content-type"] == "image/png"
    assert strict.headers["X-Anomaly-Verdict"] == "anomalous"


def test_judge_matches_normalised_comparison(metadata) -> None:
    cal = metadata.calibration
    for score in (cal.image_threshold * 0.5, cal.image_threshold, cal.image_threshold * 1.5):
        for t in (0.05, 0.3, 0.5, 0.7, 0.95):
            verdict = judge(cal, score, t)
            assert (
                verdict.is_anomalous is (cal.normalize(score) > t + 1e-12)
                or abs(cal.normalize(score) - t) < 1e-9
            )
            assert raw_threshold(cal, t) == pytest.approx(verdict.threshold)
    assert judge(cal, cal.image_threshold * 2, None).is_anomalous is cal.is_anomalous(
        cal.image_threshold * 2
    )
    with pytest.raises(ValueError):
        raw_threshold(cal, 1.0)
