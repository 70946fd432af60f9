"""Compressed request bodies on the ingest endpoints: `Content-Encoding: gzip` (or
`x-gzip`) and `zstd`, as a WSGI middleware around the Flask app (create_app installs it:
`install_decompression`).

For a POST to an ingest path with one of those encodings it reads the compressed body
(at most the body limit: MAX_BODY_BYTES), inflates it, never past the limit (at most
limit + 1 bytes are ever produced, so a 200 KB gzip bomb of 200 MB of zeros is a 413
after inflating 1 MiB), and hands the app the plain body: `wsgi.input` replaced,
`CONTENT_LENGTH` its length, `Content-Encoding` gone. So the views, Flask's own
MAX_CONTENT_LENGTH and `request.content_length` see the decompressed body (the
appender's byte count, collector.web.ingest, measures what goes into the stream,
which is the decompressed size). nginx passes the body and the header unchanged and
applies client_max_body_size to the compressed size (docs/limits.md, "Compressed bodies").

Its refusals are answered by the app, not here: the middleware empties the body and
leaves the refusal in the environ, and a before_request hook (after the key check)
raises it as an ApiError. So they get what every other ingest error gets: the central
handlers' JSON shape and rejection counts (collector.web.errors), the latency metric,
and on /v1/logs the google.rpc.Status body OTLP asks for (collector.web.otlp).
    400 malformed_body             the data is not valid gzip / zstd (bad header,
                                   truncated, trailing garbage, bad checksum)
    413 request_entity_too_large   over the limit compressed or once inflated
    415 unsupported_content_encoding  any other encoding, or stacked encodings
    400 bad_request                a chunked body Gunicorn could not decode

A request without Content-Encoding costs one dict lookup here and one in the hook.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Iterable

import zstandard
from flask import Flask, request
from gunicorn.http.errors import NoMoreData, ParseException

from collector.web.errors import ApiError

# POST paths whose bodies may be compressed: the two JSON ingest endpoints and OTLP/HTTP.
INGEST_PATHS = frozenset({"/api/log", "/api/logs/batch", "/v1/logs"})
SUPPORTED = ("gzip", "x-gzip", "zstd")
REFUSED = "collector.body_refused"  # the environ key the app's hook reads
READ_CHUNK = 64 * 1024
# The largest window a zstd frame may ask for: 8 MiB, what RFC 8878 asks decoders to
# support (or the body limit, if larger); a window is memory reserved for one request.
ZSTD_WINDOW_LIMIT = 8 * 1024 * 1024

_ZSTD_MAGIC = 0xFD2FB528
_ZSTD_SKIPPABLE = range(0x184D2A50, 0x184D2A60)


class _Refused(ApiError):
    pass


def _too_large(limit: int, what: str) -> _Refused:
    return _Refused(413, "request_entity_too_large", f"The request body exceeds {limit} bytes {what}.")


def _malformed(encoding: str, detail: str) -> _Refused:
    return _Refused(400, "malformed_body", f"The request body is not valid {encoding} data: {detail}."[:300])


def _gunzip(data: bytes, limit: int) -> bytes:
    """gzip members one after another (RFC 1952 allows several), inflating at most
    limit + 1 bytes, 64 KiB at a time."""
    out = bytearray()
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # the header and the trailer (CRC-32, size) are checked
    while True:
        room = min(READ_CHUNK, limit + 1 - len(out))
        try:
            chunk = inflater.decompress(data, room)
        except zlib.error as exc:
            raise _malformed("gzip", str(exc)) from None
        out += chunk
        if len(out) > limit:
            raise _too_large(limit, "once decompressed")
        if inflater.eof:
            data = inflater.unused_data
            if not data:
                return bytes(out)
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # another member, or garbage its header check refuses
        elif len(chunk) == room:
            data = inflater.unconsumed_tail  # the output was full: go on (with no input left, zlib may hold output)
        else:
            raise _malformed("gzip", "the stream is truncated")


def _zstd_frames(data: bytes) -> None:
    """Walk the frames (RFC 8878) without decoding them: the data must be whole frames,
    nothing truncated and nothing after the last. The decoder itself would read a
    truncated frame as a shorter body without complaint."""
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 4:
            raise _malformed("zstd", "trailing bytes after the last frame")
        magic = int.from_bytes(data[pos:pos + 4], "little")
        if magic in _ZSTD_SKIPPABLE:
            if end - pos < 8:
                raise _malformed("zstd", "the stream is truncated")
            pos += 8 + int.from_bytes(data[pos + 4:pos + 8], "little")
        elif magic == _ZSTD_MAGIC:
            try:
                header = zstandard.frame_header_size(data[pos:pos + 18])
                has_checksum = zstandard.get_frame_parameters(data[pos:pos + header]).has_checksum
            except zstandard.ZstdError as exc:
                raise _malformed("zstd", str(exc)) from None
            pos += header
            last = False
            while not last:
                if end - pos < 3:
                    raise _malformed("zstd", "the stream is truncated")
                block = int.from_bytes(data[pos:pos + 3], "little")
                last, kind, size = bool(block & 1), (block >> 1) & 3, block >> 3
                if kind == 3:
                    raise _malformed("zstd", "a reserved block type")
                pos += 3 + (1 if kind == 1 else size)  # an RLE block holds one byte, repeated `size` times
            pos += 4 if has_checksum else 0
        elif pos == 0:
            raise _malformed("zstd", "no zstd frame (bad magic number)")
        else:
            raise _malformed("zstd", "trailing bytes after the last frame")
        if pos > end:
            raise _malformed("zstd", "the stream is truncated")


def _unzstd(data: bytes, limit: int) -> bytes:
    _zstd_frames(data)
    try:
        declared = zstandard.frame_content_size(data[:18])
    except zstandard.ZstdError:
        declared = -1  # a skippable frame first: no declared size to check
    if declared > limit:
        raise _too_large(limit, f"once decompressed (the frame declares {declared})")
    out = bytearray()
    window = max(ZSTD_WINDOW_LIMIT, 1 << max(limit, 1).bit_length())
    reader = zstandard.ZstdDecompressor(max_window_size=window).stream_reader(
        io.BytesIO(data), read_across_frames=True)
    try:
        while chunk := reader.read(min(READ_CHUNK, limit + 1 - len(out))):
            out += chunk
            if len(out) > limit:
                raise _too_large(limit, "once decompressed")
    except zstandard.ZstdError as exc:
        raise _malformed("zstd", str(exc)) from None
    return bytes(out)


_DECODERS: dict[str, Callable[[bytes, int], bytes]] = {"gzip": _gunzip, "x-gzip": _gunzip, "zstd": _unzstd}


def _read_body(environ: dict, limit: int) -> bytes:
    """The compressed body, read in chunks: at most `limit` bytes, else a 413."""
    stream = environ["wsgi.input"]
    length_header = environ.get("CONTENT_LENGTH")
    if length_header:
        try:
            length = int(length_header)
        except ValueError:
            raise _Refused(400, "bad_request", "The Content-Length header is not a number.") from None
        if length > limit:
            raise _too_large(limit, "compressed")
    elif environ.get("wsgi.input_terminated"):
        length = None  # chunked: read to the end (Gunicorn decodes the chunks)
    else:
        return b""
    body = bytearray()
    try:
        while length is None or len(body) < length:
            chunk = stream.read(READ_CHUNK if length is None else min(READ_CHUNK, length - len(body)))
            if not chunk:
                break
            body += chunk
            if len(body) > limit:
                raise _too_large(limit, "compressed")
    except (ParseException, NoMoreData) as exc:  # a malformed chunk, or the client closed early
        raise _Refused(400, "bad_request", f"The request body could not be read: {exc}"[:300]) from None
    if length is not None and len(body) < length:
        raise _Refused(400, "bad_request", "The request body is shorter than its Content-Length.")
    return bytes(body)


class Decompress:
    """WSGI middleware: inflate compressed bodies of POSTs to `paths`, within `limit` bytes.
    Install it with `install_decompression`, which also registers the hook that answers its refusals."""

    def __init__(self, app, limit: int, paths: Iterable[str] = INGEST_PATHS) -> None:
        self.app, self.limit, self.paths = app, limit, frozenset(paths)

    def __call__(self, environ: dict, start_response) -> Iterable[bytes]:
        encoding = environ.get("HTTP_CONTENT_ENCODING")
        if encoding is None or environ.get("PATH_INFO") not in self.paths or environ.get("REQUEST_METHOD") != "POST":
            return self.app(environ, start_response)
        try:
            body = self._decode(environ, encoding)
        except _Refused as refused:
            environ[REFUSED] = refused
            body = b""
        if body is not None:
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        del environ["HTTP_CONTENT_ENCODING"]
        return self.app(environ, start_response)

    def _decode(self, environ: dict, header: str) -> bytes | None:
        """The decompressed body; None for `identity` (the body stays as it is)."""
        codings = [c for c in (c.strip().lower() for c in header.split(",")) if c and c != "identity"]
        if not codings:
            return None
        if len(codings) > 1 or codings[0] not in _DECODERS:
            raise _Refused(415, "unsupported_content_encoding",
                           f"Content-Encoding {header.strip()!r} is not supported; send one of "
                           f"{', '.join(SUPPORTED)}, identity, or no Content-Encoding (one encoding, not several).")
        compressed = _read_body(environ, self.limit)
        return _DECODERS[codings[0]](compressed, self.limit) if compressed else b""


def _answer_refusal() -> None:
    refused = request.environ.get(REFUSED)
    if refused is not None:
        raise refused


def install_decompression(app: Flask) -> None:
    """Wrap the app's WSGI callable, with MAX_CONTENT_LENGTH as the limit, and have the app
    answer the refusals. Call it after the other before_request hooks are registered
    (the key check): a client without a valid key gets its 401 first, as for a plain body."""
    app.wsgi_app = Decompress(app.wsgi_app, app.config["MAX_CONTENT_LENGTH"])
    app.before_request(_answer_refusal)
