"""Bad input never gives a 500: size and pixel limits, corrupt data, content types, file counts,
unknown models; and unusual but valid images (grey, alpha, palette, 16-bit, CMYK, EXIF) score
exactly like their plain RGB equivalents."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.service.conftest import post_scope

BOUNDARY = b"rdadboundary"
PART_HEAD = (
    b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
    b"Content-Type: image/png\r\n\r\n"
)


async def _call_streaming(app: Any, headers: list[tuple[bytes, bytes]]) -> tuple[int, int, dict]:
    """POST an endless multipart body chunk by chunk; return status, chunks read, JSON body."""
    import json

    reads = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        if reads > 10_000:  # bounded: a limiter that never triggers fails the test, not CI
            return {"type": "http.request", "body": b"", "more_body": False}
        body = PART_HEAD if reads == 1 else b"\x00" * 65536
        return {"type": "http.request", "body": body, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(post_scope(headers=headers), receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], reads, json.loads(body)


async def test_declared_oversize_upload_is_refused_before_reading(make_client) -> None:
    content_type = (b"content-type", b"multipart/form-data; boundary=" + BOUNDARY)
    async with make_client(max_upload_mb=1) as client:
        status, reads, body = await _call_streaming(
            client.app, [content_type, (b"content-length", b"500000000")]
        )
    assert (status, reads) == (413, 0)
    assert body["error"] == "payload_too_large"


async def test_streamed_oversize_upload_is_cut_off_at_the_limit(make_client) -> None:
    content_type = (b"content-type", b"multipart/form-data; boundary=" + BOUNDARY)
    async with make_client(max_upload_mb=1) as client:
        status, reads, body = await _call_streaming(client.app, [content_type])
    assert status == 413 and body["error"] == "payload_too_large"
    assert reads <= 1 + 2**20 // 65536 + 1  # stopped right after passing 1 MiB


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


async def test_bad_images_and_requests(make_client, images) -> None:
    png = images.png(80, 60)
    jpeg = images.encode(Image.fromarray(images.rgb(80, 60)), "JPEG", quality=90)
    cases = {
        "garbage": (images.upload(b"definitely not an image"), 400, "bad_image"),
        "empty": (images.upload(b""), 400, "bad_image"),
        "truncated png": (images.upload(png[: len(png) // 2]), 400, "bad_image"),
        "truncated jpeg": (
            images.upload(jpeg[: len(jpeg) // 2], "a.jpg", "image/jpeg"),
            400,
            "bad_image",
        ),
        "pixel bomb": (images.upload(_png_header_only(30000, 30000)), 413, "image_too_large"),
        "text part": (
            images.upload(b"hello", "a.txt", "text/plain"),
            415,
            "unsupported_media_type",
        ),
        "wrong field": ({"image": ("a.png", png, "image/png")}, 422, "invalid_request"),
        "too many": (
            [("files", (f"{i}.png", png, "image/png")) for i in range(4)],
            422,
            "invalid_request",
        ),
        "both fields": (
            [("file", ("a.png", png, "image/png")), ("files", ("b.png", png, "image/png"))],
            422,
            "invalid_request",
        ),
    }
    async with make_client(max_files=3) as client:
        for name, (files, status, error) in cases.items():
            response = await client.post("/predict", files=files)
            assert response.status_code == status, (name, response.text)
            body = response.json()
            assert body["error"] == error, name
            assert (
                body["detail"] and "Traceback" not in response.text and "/work" not in response.text
            )
        json_body = await client.post("/predict", json={"image": "base64..."})
        raw_image = await client.post(
            "/predict", content=png, headers={"content-type": "image/png"}
        )
        unknown = await client.post("/models/nope/predict", files=images.upload(png))
        bad_flag = await client.post(
            "/predict", params={"heatmap_size": "huge"}, files=images.upload(png)
        )
        still_fine = await client.post("/predict", files=images.upload(png))
    assert json_body.status_code == 415 and json_body.json()["error"] == "unsupported_media_type"
    assert raw_image.status_code == 415
    assert unknown.status_code == 404 and unknown.json()["error"] == "model_not_found"
    assert bad_flag.status_code == 422 and bad_flag.json()["error"] == "validation_error"
    assert still_fine.status_code == 200


async def test_pixel_limit_is_configurable(make_client, images) -> None:
    async with make_client(max_pixels=100 * 100) as client:
        small = await client.post("/predict", files=images.upload(images.png(100, 100)))
        large = await client.post("/predict", files=images.upload(images.png(101, 100)))
    assert small.status_code == 200
    assert large.status_code == 413 and "MP" in large.json()["detail"]


def _variants(images: Any) -> dict[str, tuple[bytes, bytes, tuple[int, int]]]:
    """name → (unusual encoding, equivalent plain RGB PNG, expected (width, height))."""
    rgb = images.rgb(90, 70)
    grey = rgb[..., 1]
    plain = images.encode
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 77, np.uint8)])
    palette = Image.fromarray(rgb).quantize(64)
    deep = (grey.astype(np.uint16) << 8) | 0xAB  # 16-bit: the low byte must be dropped
    cmyk_jpeg = plain(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    rotated_jpeg = plain(Image.fromarray(rgb), "JPEG", quality=95, exif=exif.tobytes())
    import cv2

    from rdad.imaging import decode_image

    return {
        "grey": (
            plain(Image.fromarray(grey)),
            plain(Image.fromarray(np.dstack([grey] * 3))),
            (90, 70),
        ),
        "rgba": (plain(Image.fromarray(rgba)), plain(Image.fromarray(rgb)), (90, 70)),
        "palette": (plain(palette), plain(palette.convert("RGB")), (90, 70)),
        "16-bit": (
            cv2.imencode(".png", deep.astype(np.uint16))[1].tobytes(),
            plain(Image.fromarray(np.dstack([grey] * 3))),
            (90, 70),
        ),
        # CMYK: the codec's conversion; the equivalent is the same JPEG decoded as evaluation does.
        "cmyk": (cmyk_jpeg, plain(Image.fromarray(decode_image(cmyk_jpeg))), (90, 70)),
        # EXIF orientation 6: served as the upright (portrait) picture.
        "exif": (
            rotated_jpeg,
            plain(
                Image.fromarray(
                    np.ascontiguousarray(np.rot90(decode_image_no_exif(rotated_jpeg), -1))
                )
            ),
            (70, 90),
        ),
    }


def decode_image_no_exif(data: bytes) -> np.ndarray:
    import cv2

    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), flags), cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize("variant", ["grey", "rgba", "palette", "16-bit", "cmyk", "exif"])
async def test_unusual_images_score_like_their_rgb_equivalent(make_client, images, variant) -> None:
    unusual, equivalent, size = _variants(images)[variant]
    with Image.open(io.BytesIO(unusual)) as im:
        assert im.mode != "RGB" or variant == "exif"  # really the unusual encoding
    async with make_client() as client:
        got = await client.post("/predict", files=images.upload(unusual, "u", "image/png"))
        want = await client.post("/predict", files=images.upload(equivalent))
    assert got.status_code == 200, got.text
    assert (got.json()["width"], got.json()["height"]) == size
    assert got.json()["score"] == pytest.approx(want.json()["score"], abs=1e-5)


async def test_unauthenticated_upload_is_refused_before_reading_the_body(make_client) -> None:
    content_type = (b"content-type", b"multipart/form-data; boundary=" + BOUNDARY)
    async with make_client(api_key="s3cret") as client:
        status, reads, body = await _call_streaming(client.app, [content_type])
        wrong = (b"authorization", b"Bearer guess")
        status_wrong, reads_wrong, _ = await _call_streaming(client.app, [content_type, wrong])
    assert (status, reads, body["error"]) == (401, 0, "unauthorized")
    assert (status_wrong, reads_wrong) == (401, 0)
