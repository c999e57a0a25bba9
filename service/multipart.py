"""Streaming multipart reader for ``POST /predict``, so that admission happens before the body.

FastAPI parses a whole multipart body (into temporary files) before a route or a dependency runs,
so a route declaring ``UploadFile`` parameters cannot refuse work before the upload is read. The
predict routes therefore read ``request.stream()`` themselves through python-multipart's streaming
parser (the one Starlette uses) and call ``on_file`` as soon as a file part's headers have been
parsed — before its bytes are kept. The number of files is only known while parsing: admission
reserves one image before the body is touched and one more for each further file part as it
begins, and refuses (503, or 422 past ``max_files``) at that moment without reading the rest.
``on_bytes`` hears of every chunk before it is kept (the memory budget counts it).

A file's bytes are kept once, in its ``bytearray`` (which grows in place), and handed on as they
are: never copied into ``bytes``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from .errors import ClientDisconnectedError, InvalidRequestError, UnsupportedMediaTypeError

FILE_FIELDS = ("file", "files")
MAX_OTHER_PARTS = 16  # non-image form fields are ignored, but a flood of them is refused
MAX_FILENAME = 128


@dataclass
class FilePart:
    name: str
    """The form field: ``file`` or ``files``."""
    filename: str
    content_type: str
    data: bytearray = field(default_factory=bytearray)


@dataclass
class _State:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    current: FilePart | None = None
    files: list[FilePart] = field(default_factory=list)
    started: list[FilePart] = field(default_factory=list)  # begun since the last chunk
    other_parts: int = 0


def boundary_of(content_type: str) -> bytes:
    media, params = parse_options_header(content_type)
    if media != b"multipart/form-data":
        raise UnsupportedMediaTypeError(
            "expected multipart/form-data with the image in field 'file', "
            f"got '{media.decode('latin-1')[:64]}'"
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidRequestError("multipart/form-data without a boundary")
    return boundary


def _parser(boundary: bytes, state: _State) -> MultipartParser:
    def on_header_field(data: bytes, start: int, end: int) -> None:
        state.header_field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state.header_value += data[start:end]

    def on_header_end() -> None:
        state.headers[bytes(state.header_field).lower()] = bytes(state.header_value)
        state.header_field.clear()
        state.header_value.clear()

    def on_headers_finished() -> None:
        _, options = parse_options_header(state.headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        media, _ = parse_options_header(state.headers.get(b"content-type", b""))
        state.headers.clear()
        if name not in FILE_FIELDS:
            state.current = None
            state.other_parts += 1
            return
        filename = options.get(b"filename", b"").decode("utf-8", "replace")[:MAX_FILENAME]
        part = FilePart(name, filename, media.decode("latin-1").lower())
        state.current = part
        state.files.append(part)
        state.started.append(part)

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state.current is not None:
            state.current.data += data[start:end]

    def on_part_end() -> None:
        state.current = None

    return MultipartParser(
        boundary,
        {
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
        max_header_count=8,
        max_header_size=8192,
    )


async def body_chunks(request: Request) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive; a client hanging up mid-body is
    :class:`ClientDisconnectedError`."""
    try:
        async for chunk in request.stream():
            if chunk:
                yield chunk
    except ClientDisconnect:
        raise ClientDisconnectedError("the client closed the connection mid-upload") from None


async def read_files(
    request: Request,
    on_file: Callable[[FilePart], None],
    on_bytes: Callable[[int], None] | None = None,
) -> list[FilePart]:
    """Parse the body as it streams; ``on_file(part)`` runs when a file part begins and
    ``on_bytes(n)`` before a chunk of ``n`` bytes is kept (either may raise to refuse the request
    on the spot). Returns the file parts in request order."""
    boundary = boundary_of(request.headers.get("content-type", ""))
    state = _State()
    parser = _parser(boundary, state)
    try:
        async for chunk in body_chunks(request):
            if on_bytes is not None:
                on_bytes(len(chunk))
            parser.write(chunk)
            for part in state.started:
                on_file(part)
            state.started.clear()
            if state.other_parts > MAX_OTHER_PARTS:
                raise InvalidRequestError(
                    f"more than {MAX_OTHER_PARTS} form fields besides 'file'/'files'"
                )
        parser.finalize()
    except MultipartParseError as exc:
        raise InvalidRequestError(f"malformed multipart body: {str(exc)[:120]}") from None
    return state.files
