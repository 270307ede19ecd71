"""An upload streamed to disk: a raw body or one multipart file field, never held whole in memory.

The size limit is checked as bytes arrive (and against ``Content-Length`` before any arrive), so an oversized
upload is refused having written at most the limit. Multipart bodies are parsed incrementally
(python-multipart); small form fields (``sampling``, ``webhook_url``) are kept, the ``file`` field goes to disk.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.multipart import MultipartParser, parse_options_header

FILE_FIELD = "file"
FORM_FIELDS = ("sampling", "webhook_url")
MAX_FIELD_BYTES = 4096


class UploadError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Upload:
    path: Path
    bytes: int = 0
    head: bytes = b""
    fields: dict[str, str] = field(default_factory=dict)


async def receive(chunks: AsyncIterator[bytes], content_type: str, content_length: str | None, path: Path,
                  limit: int) -> Upload:
    """Write the upload's file to ``path`` (mode 600); UploadError (4xx) for a body that cannot be a job."""
    if content_length and content_length.isdigit() and int(content_length) > limit + 64 * 1024:
        raise UploadError(413, "too_large", f"the upload has {content_length} bytes; the limit is {limit}")
    kind, options = parse_options_header(content_type or "")
    upload = Upload(path)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as sink:

        def write(data: bytes) -> None:
            upload.bytes += len(data)
            if upload.bytes > limit:
                raise UploadError(413, "too_large", f"the upload passed {limit} bytes, the limit")
            if len(upload.head) < 64:
                upload.head += data[: 64 - len(upload.head)]
            sink.write(data)

        if kind == b"multipart/form-data":
            await _multipart(chunks, options.get(b"boundary", b""), write, upload)
        else:
            async for chunk in chunks:
                write(chunk)
    if upload.bytes == 0:
        raise UploadError(400, "empty_body", "the upload is empty; send the video as the body (application/"
                          "octet-stream) or as a multipart field named 'file'")
    return upload


async def _multipart(chunks: AsyncIterator[bytes], boundary: bytes, write, upload: Upload) -> None:
    if not boundary:
        raise UploadError(400, "bad_multipart", "multipart/form-data without a boundary")
    state: dict[str, object] = {"name": None, "header": b"", "headers": {}, "value": bytearray(), "files": 0}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["header"] = bytes(state["header"]) + data[start:end]  # type: ignore[operator]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        headers = state["headers"]
        name = bytes(state["header"]).lower()  # type: ignore[arg-type]
        headers[name] = headers.get(name, b"") + data[start:end]  # type: ignore[index,union-attr,attr-defined]

    def on_header_end() -> None:
        state["header"] = b""

    def on_headers_finished() -> None:
        headers: dict[bytes, bytes] = state["headers"]  # type: ignore[assignment]
        _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        state["name"] = disposition.get(b"name", b"").decode("utf-8", "replace")
        if state["name"] not in (FILE_FIELD, *FORM_FIELDS):
            raise UploadError(400, "bad_multipart", f"unknown form field {str(state['name'])[:40]!r}; send 'file' "
                              f"and optionally {' and '.join(map(repr, FORM_FIELDS))}")
        if state["name"] in upload.fields:
            raise UploadError(400, "bad_multipart", f"the form field {state['name']!r} is sent twice")
        if state["name"] == FILE_FIELD:
            state["files"] = int(state["files"]) + 1  # type: ignore[arg-type]
            if state["files"] > 1:
                raise UploadError(400, "bad_multipart", "send one video per job (one 'file' field)")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["name"] == FILE_FIELD:
            write(data[start:end])
            return
        value: bytearray = state["value"]  # type: ignore[assignment]
        value.extend(data[start:end])
        if len(value) > MAX_FIELD_BYTES:
            raise UploadError(400, "bad_multipart", f"the form field {state['name']!r} is over {MAX_FIELD_BYTES} "
                              "bytes")

    def on_part_end() -> None:
        if state["name"] != FILE_FIELD and state["name"]:
            upload.fields[str(state["name"])] = bytes(state["value"]).decode("utf-8", "replace")  # type: ignore
        state.update(name=None, headers={}, value=bytearray())

    parser = MultipartParser(boundary, {"on_header_field": on_header_field, "on_header_value": on_header_value,
                                        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
                                        "on_part_data": on_part_data, "on_part_end": on_part_end})
    try:
        async for chunk in chunks:
            parser.write(chunk)
        parser.finalize()
    except UploadError:
        raise
    except Exception as error:  # python-multipart's parse errors
        raise UploadError(400, "bad_multipart", f"the multipart body could not be parsed: {error}") from error
    if not state["files"]:
        raise UploadError(400, "no_file", "the multipart body has no field named 'file'")
