"""A file as an HTTP response, whole or one byte range, handed to the server's sendfile.

Werkzeug parses the Range, If-Range and If-None-Match headers; this module only picks the bytes. The body is
the server's wsgi.file_wrapper around a Span (the open file, positioned at the range's start, with the
range's length as Content-Length): gunicorn sends such a body with os.sendfile from the file's current
offset for Content-Length bytes, so a 300 MB video never passes through a Python loop. A server without
sendfile (the test client) iterates the Span, which stops at the range's end.
"""

from __future__ import annotations

import os
from typing import BinaryIO
from urllib.parse import quote

from flask import Request, Response
from werkzeug.http import http_date
from werkzeug.wsgi import wrap_file

MIME = {"mp4": "video/mp4", "jpg": "image/jpeg", "json": "application/json", "txt": "text/plain; charset=utf-8"}
BLOCK = 1 << 20


class Span:
    """Bytes [start, start + length) of an open file, read in blocks; fileno() lets the server sendfile it."""

    def __init__(self, handle: BinaryIO, start: int, length: int) -> None:
        handle.seek(start)
        self.handle, self.left = handle, length

    def fileno(self) -> int:
        return self.handle.fileno()

    def read(self, size: int = BLOCK) -> bytes:
        if self.left <= 0:
            return b""
        data = self.handle.read(min(size if size > 0 else BLOCK, self.left))
        self.left -= len(data)
        return data

    def close(self) -> None:
        self.handle.close()


def send(request: Request, handle: BinaryIO, name: str, *, download: bool = False) -> Response:
    """*handle* (a regular file, already opened safely) as the response to *request*."""
    st = os.fstat(handle.fileno())
    size = st.st_size
    etag = f"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"
    headers = {"Accept-Ranges": "bytes", "ETag": f'"{etag}"', "Last-Modified": http_date(st.st_mtime),
               "Cache-Control": "private, no-cache"}
    if download:
        headers["Content-Disposition"] = disposition(name)
    mimetype = MIME.get(name.rpartition(".")[2].lower(), "application/octet-stream")
    if request.if_none_match.contains(etag):
        handle.close()
        return Response(status=304, headers=headers)
    start, length, status = 0, size, 200
    wanted = request.range
    if wanted is not None and (not request.if_range.etag or request.if_range.etag == etag):
        span = wanted.range_for_length(size)
        if span is None and len(wanted.ranges) == 1:
            handle.close()
            return Response(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
        if span is not None:  # several ranges at once: the whole file (RFC 9110 allows ignoring Range)
            start, length, status = span[0], span[1] - span[0], 206
            headers["Content-Range"] = f"bytes {span[0]}-{span[1] - 1}/{size}"
    body = wrap_file(request.environ, Span(handle, start, length), BLOCK)  # the server's wsgi.file_wrapper
    response = Response(body, status=status, headers=headers, mimetype=mimetype, direct_passthrough=True)
    response.content_length = length
    return response


def disposition(name: str) -> str:
    """attachment with an ASCII fallback and the real (e.g. Chinese) name as filename*=UTF-8''... (RFC 6266)."""
    fallback = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\%' else "_" for ch in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
