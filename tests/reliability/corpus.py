"""A generated corpus of bad and odd inputs, each with the status and error code it must get.

Every entry is built here from code (no binary fixtures): broken and hostile files, unusual but
valid images, and malformed requests. docs/reliability.md lists the same table for users.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
from PIL import Image

Send = Callable[[httpx.Client, dict[str, str]], httpx.Response]
"""(client, auth headers) → response."""


@dataclass(frozen=True)
class Case:
    name: str
    status: int
    error: str | None  # the JSON "error" code; None for 200 answers
    send: Send


def _rgb(width: int, height: int, seed: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = np.random.default_rng(seed).uniform(0, 6.28, 3)
    channels = [np.sin(xx / (5 + 2 * c) + yy / (9 + c) + phase[c]) for c in range(3)]
    return ((np.stack(channels, -1) * 0.5 + 0.5) * 255).astype(np.uint8)


def _save(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def _png(width: int = 96, height: int = 80) -> bytes:
    return _save(Image.fromarray(_rgb(width, height)), "PNG")


def _jpeg(width: int = 96, height: int = 80, **params: Any) -> bytes:
    return _save(Image.fromarray(_rgb(width, height)), "JPEG", quality=90, **params)


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _png_bomb(width: int, height: int) -> bytes:
    """A real, valid 1-bit greyscale PNG of zeros: a few KB on disk, ``width*height*3`` bytes once
    decoded to RGB."""
    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def _png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _jpeg_bomb(width: int, height: int) -> bytes:
    """A JPEG whose SOF0 header declares ``width``×``height`` (the scan is a 16×16 image's)."""
    data = bytearray(_jpeg(16, 16))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _bad_crc_png() -> bytes:
    data = bytearray(_png())
    idat = data.index(b"IDAT")
    length = struct.unpack(">I", data[idat - 4 : idat])[0]
    data[idat + 4 + length] ^= 0xFF  # first byte of the IDAT CRC
    return bytes(data)


def _corrupt_jpeg_scan() -> bytes:
    data = bytearray(_jpeg(256, 256))
    scan = data.index(b"\xff\xda") + 20
    for k in range(scan, len(data) - 200, 7):
        data[k] = 0xFF if data[k] != 0xFF else 0x00  # bit rot inside the entropy-coded data
    return bytes(data)


def _gif_animated() -> bytes:
    frames = [Image.fromarray(_rgb(64, 48, seed)).convert("P") for seed in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def _sixteen_bit() -> bytes:
    import cv2

    grey = (_rgb(90, 70)[..., 0].astype(np.uint16) << 8) | 0x7F
    return bytes(cv2.imencode(".png", grey)[1])


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _jpeg(90, 70, exif=exif.tobytes())


def _post(
    files: Any = None,
    *,
    path: str = "/predict",
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    auth: bool = True,
    **kwargs: Any,
) -> Send:
    def send(client: httpx.Client, key: dict[str, str]) -> httpx.Response:
        merged = {**(key if auth else {}), **(headers or {})}
        return client.post(path, files=files, params=params, headers=merged, **kwargs)

    return send


def _file(data: bytes, name: str = "part.png", media: str = "image/png") -> dict[str, Any]:
    return {"file": (name, data, media)}


def _stream_over_limit(limit_mb: int) -> Send:
    """A multipart upload far over the limit, sent chunked (no Content-Length)."""

    def body() -> Iterator[bytes]:
        yield b'--xx\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
        for _ in range(limit_mb * 64):  # 64 KiB chunks: 4x the limit in all, bounded
            yield b"\x00" * 65536 * 4

    def send(client: httpx.Client, key: dict[str, str]) -> httpx.Response:
        headers = {**key, "Content-Type": "multipart/form-data; boundary=xx"}
        return client.post("/predict", content=body(), headers=headers)

    return send


def build(max_files: int, max_upload_mb: int) -> list[Case]:
    """The corpus for a server started with these limits (and Pillow's/our default pixel limits)."""
    png = _png()
    rgb = _rgb(90, 70)
    cases = [
        # --- broken or hostile files ------------------------------------------------------------
        Case("empty file", 400, "bad_image", _post(_file(b""))),
        Case("text as png", 400, "bad_image", _post(_file(b"hello, this is text"))),
        Case("random bytes", 400, "bad_image", _post(_file(np.random.default_rng(1).bytes(4096)))),
        Case("truncated png", 400, "bad_image", _post(_file(png[: len(png) // 2]))),
        Case("png bad crc", 400, "bad_image", _post(_file(_bad_crc_png()))),
        Case(
            "truncated jpeg",
            400,
            "bad_image",
            _post(_file(_jpeg()[:300], "t.jpg", "image/jpeg")),
        ),
        # libjpeg conceals damaged scan data (grey blocks) instead of failing: scored, as a
        # camera's bit error would be; the anomaly score is the judge of such a picture.
        Case("jpeg corrupt scan", 200, None, _post(_file(_corrupt_jpeg_scan(), "c.jpg"))),
        Case("png bomb 20000x20000", 413, "image_too_large", _post(_file(_png_bomb(20000, 20000)))),
        Case("png bomb 8000x8000", 413, "image_too_large", _post(_file(_png_bomb(8000, 8000)))),
        Case(
            "png header 100000x100000",
            413,
            "image_too_large",
            _post(_file(_png_header_only(100_000, 100_000))),
        ),
        Case(
            "jpeg bomb 60000x60000", 413, "image_too_large", _post(_file(_jpeg_bomb(60000, 60000)))
        ),
        Case("zero-size png", 400, "bad_image", _post(_file(_png_header_only(0, 0)))),
        Case("svg", 400, "bad_image", _post(_file(b"<svg xmlns='http://www.w3.org/2000/svg'/>"))),
        Case("pdf", 400, "bad_image", _post(_file(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n"))),
        # --- odd but valid images ---------------------------------------------------------------
        Case("1x1 png", 200, None, _post(_file(_png(1, 1)))),
        Case("1x10000 png", 200, None, _post(_file(_png(1, 10_000)))),
        Case("10000x1 png", 200, None, _post(_file(_png(10_000, 1)))),
        Case("16-bit png", 200, None, _post(_file(_sixteen_bit()))),
        Case(
            "rgba png", 200, None, _post(_file(_save(Image.fromarray(rgb).convert("RGBA"), "PNG")))
        ),
        Case(
            "palette png", 200, None, _post(_file(_save(Image.fromarray(rgb).quantize(32), "PNG")))
        ),
        Case("grayscale png", 200, None, _post(_file(_save(Image.fromarray(rgb[..., 0]), "PNG")))),
        Case(
            "cmyk jpeg",
            200,
            None,
            _post(_file(_save(Image.fromarray(rgb).convert("CMYK"), "JPEG"), "c.jpg")),
        ),
        Case("exif-rotated jpeg", 200, None, _post(_file(_exif_rotated(), "r.jpg", "image/jpeg"))),
        Case("animated gif", 200, None, _post(_file(_gif_animated(), "a.gif", "image/gif"))),
        Case("tiff", 200, None, _post(_file(_save(Image.fromarray(rgb), "TIFF"), "t.tif"))),
        Case("webp", 200, None, _post(_file(_save(Image.fromarray(rgb), "WEBP"), "w.webp"))),
        Case("bmp", 200, None, _post(_file(_save(Image.fromarray(rgb), "BMP"), "b.bmp"))),
        Case("unicode filename", 200, None, _post(_file(png, "Prüfteil_検査_🔩.png"))),
        Case("very long filename", 200, None, _post(_file(png, "x" * 2000 + ".png"))),
        Case("path-like filename", 200, None, _post(_file(png, "../../etc/passwd"))),
        # --- malformed requests -----------------------------------------------------------------
        Case("wrong field", 422, "invalid_request", _post({"image": ("a.png", png, "image/png")})),
        Case(
            "too many files",
            422,
            "invalid_request",
            _post([("files", (f"{i}.png", png, "image/png")) for i in range(max_files + 1)]),
        ),
        Case(
            "file and files",
            422,
            "invalid_request",
            _post([("file", ("a.png", png, "image/png")), ("files", ("b.png", png, "image/png"))]),
        ),
        Case(
            "text part", 415, "unsupported_media_type", _post(_file(b"hi", "a.txt", "text/plain"))
        ),
        Case(
            "unknown model", 404, "model_not_found", _post(_file(png), path="/models/nope/predict")
        ),
        Case(  # the decoded %2F makes it another path: no route, the router's JSON 404
            "path-like model",
            404,
            "not_found",
            _post(_file(png), path="/models/..%2F..%2Fetc%2Fpasswd/predict"),
        ),
        Case(
            "wrong key",
            401,
            "unauthorized",
            _post(_file(png), headers={"Authorization": "Bearer x"}),
        ),
        Case("no key", 401, "unauthorized", _post(_file(png), auth=False)),
        Case("json body", 415, "unsupported_media_type", _post(json={"image": "aGk="})),
        Case(
            "raw image body",
            415,
            "unsupported_media_type",
            _post(content=png, headers={"Content-Type": "image/png"}),
        ),
        Case(
            "multipart without boundary",
            422,
            "invalid_request",
            _post(content=b"--x\r\n", headers={"Content-Type": "multipart/form-data"}),
        ),
        Case(
            "garbage multipart",
            422,
            "invalid_request",
            _post(
                content=b"\x00" * 1000, headers={"Content-Type": "multipart/form-data; boundary=b"}
            ),
        ),
        Case(
            "huge headers",
            431,
            "headers_too_large",
            _post(_file(_png()), headers={"X-Padding": "p" * 100_000}),
        ),
        Case(
            "bad query flag",
            422,
            "validation_error",
            _post(_file(png), params={"heatmap_size": "x"}),
        ),
        Case(
            "huge part headers",
            422,
            "invalid_request",
            _post(
                content=b'--b\r\nContent-Disposition: form-data; name="file"; filename="'
                + b"y" * 20000
                + b'"\r\n\r\nabc\r\n--b--\r\n',
                headers={"Content-Type": "multipart/form-data; boundary=b"},
            ),
        ),
        Case(
            "declared upload over the limit",
            413,
            "payload_too_large",
            _post(_file(b"\x00" * (max_upload_mb * 1024 * 1024 + 1))),
        ),
        Case(
            "upload over the limit as a stream",
            413,
            "payload_too_large",
            _stream_over_limit(max_upload_mb),
        ),
        Case(
            "multi-file with one bad file",
            200,
            None,
            _post(
                [("files", ("a.png", png, "image/png")), ("files", ("b.png", b"bad", "image/png"))]
            ),
        ),
    ]
    names = [case.name for case in cases]
    assert len(set(names)) == len(names)
    return cases
