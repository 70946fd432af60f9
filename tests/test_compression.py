"""Compressed request bodies (collector/web/compression.py) against the real Redis and
PostgreSQL, in process and through a real nginx in front of two real Gunicorn APIs.

gzip and zstd bodies are stored exactly as their plain equivalents; a bomb is a 413
after inflating at most about the limit (measured with tracemalloc: a decoder that
inflated the whole 200 MB would allocate it); corrupt data is a 400, an unknown
encoding a 415, all in the API's JSON shape and counted as rejections.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import socket
import tracemalloc
import zlib

import orjson
import pytest
import redis
import requests
import zstandard
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from collector.devtools.processes import nginx_binary
from collector.pipeline.drain import drain_batch
from tests.stack import Stack

MAX_BODY = 1_048_576  # MAX_BODY_BYTES's default, nginx's client_max_body_size
BOMB_BYTES = 200 * 1024 * 1024


def log(i: int, device: str) -> dict:
    return {"device_id": device, "log_level": ["INFO", "ERROR", "DEBUG"][i % 3], "message": f"message {i} ü ✓",
            "log_data": {"i": i, "nested": {"list": [1, 2.5, "x"], "big": 2**62}},
            "timestamp": f"2026-01-01T00:00:{i % 60:02d}Z"}


def batch(device: str, n: int = 30) -> bytes:
    return orjson.dumps({"logs": [log(i, device) for i in range(n)]})


def zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(data)


def big_window_zstd(data: bytes) -> bytes:
    params = zstandard.ZstdCompressionParameters.from_level(19, window_log=25, write_content_size=False)
    compressor = zstandard.ZstdCompressor(compression_params=params).compressobj()
    return compressor.compress(data) + compressor.flush()


def gzip_bomb(size: int = BOMB_BYTES) -> bytes:
    """`size` zero bytes as gzip, compressed a MiB at a time (never `size` bytes in memory)."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1 << 20)
    return b"".join(deflate.compress(chunk) for _ in range(size >> 20)) + deflate.flush()


def zstd_bomb(size: int = BOMB_BYTES) -> bytes:
    """`size` zero bytes as a zstd frame that does not declare its size (streamed)."""
    compressor = zstandard.ZstdCompressor(level=3).compressobj()
    chunk = bytes(1 << 20)
    return b"".join(compressor.compress(chunk) for _ in range(size >> 20)) + compressor.flush()


def post(client, path: str, body: bytes, encoding: str | None, **headers: str):
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    return client.post(path, data=body, headers=headers, content_type="application/json")


def assert_json_error(response, status: int, error: str, *words: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.headers["Content-Type"] == "application/json"
    body = response.get_json()
    assert set(body) == {"error", "message"} and body["error"] == error, body
    for word in words:
        assert word in body["message"], body
    return body


def drain_all(redis_client, db, settings) -> None:
    while drain_batch(redis_client, db, settings, "c1").read:
        pass


def stored(db, device: str) -> list[tuple]:
    return db.execute("SELECT log_level, message, log_data, created_at FROM logs WHERE device_id = %s"
                      " ORDER BY created_at, id", (device,)).fetchall()


# --- accepted --------------------------------------------------------------------------------

ENCODINGS = {"plain": (None, lambda b: b), "identity": ("identity", lambda b: b), "gzip": ("gzip", gzip.compress),
             "x-gzip": ("X-GZIP", gzip.compress), "zstd": ("zstd", zstd),
             "gzip, two members": ("gzip", lambda b: gzip.compress(b[:100]) + gzip.compress(b[100:])),
             "zstd, two frames": ("zstd", lambda b: zstd(b[:100]) + zstd(b[100:]))}


def test_compressed_batches_and_logs_are_stored_as_the_plain_ones(client, redis_client, settings, db):
    ids = {}
    for name, (encoding, compress) in ENCODINGS.items():
        device = f"dev-{name.replace(' ', '').replace(',', '-')}"
        response = post(client, "/api/logs/batch", compress(batch(device)), encoding)
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.get_json()["count"] == 30
        single = post(client, "/api/log", compress(orjson.dumps(log(99, device))), encoding)
        assert single.status_code == 200, single.get_data(as_text=True)
        ids[name] = device
    drain_all(redis_client, db, settings)
    plain = stored(db, ids["plain"])
    assert len(plain) == 31
    for name, device in ids.items():
        assert stored(db, device) == plain, name


def test_the_view_sees_the_decompressed_length(client, redis_client, settings):
    """request.content_length (the appender's byte count) is the decompressed size: the
    compressed Content-Length is gone, and a body of exactly the limit once inflated passes."""
    body = batch("dev-len")
    padded = body + b" " * (MAX_BODY - len(body))  # JSON allows trailing whitespace
    compressed = gzip.compress(padded)
    assert len(compressed) < 10_000
    response = post(client, "/api/logs/batch", compressed, "gzip")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert redis_client.xlen(settings.stream) == 30


def test_the_limit_applies_exactly_to_the_decompressed_size(settings, db, make_app):
    app = make_app(dataclasses.replace(settings, max_body_bytes=5000))
    client = app.test_client()
    body = orjson.dumps(log(1, "dev-limit"))
    for encoding, compress in (("gzip", gzip.compress), ("zstd", zstd)):
        exact = body + b" " * (5000 - len(body))
        assert post(client, "/api/log", compress(exact), encoding).status_code == 200
        assert_json_error(post(client, "/api/log", compress(exact + b" "), encoding), 413,
                          "request_entity_too_large", "5000 bytes")
    # zstd frames that declare their size are refused before decoding
    declared = zstandard.ZstdCompressor(write_content_size=True).compress(b" " * 6000)
    assert_json_error(post(client, "/api/log", declared, "zstd"), 413, "request_entity_too_large", "declares 6000")
    # the compressed body is held to the limit too (incompressible bytes)
    noise = gzip.compress(os.urandom(6000))
    assert len(noise) > 5000
    assert_json_error(post(client, "/api/log", noise, "gzip"), 413, "request_entity_too_large", "compressed")


def test_an_empty_compressed_body_is_an_empty_body(client):
    assert_json_error(post(client, "/api/log", b"", "gzip"), 400, "empty_body")
    assert_json_error(post(client, "/api/log", gzip.compress(b""), "gzip"), 400, "empty_body")


# --- refused -------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding, make_bomb", [("gzip", gzip_bomb), ("zstd", zstd_bomb)])
def test_a_bomb_is_a_413_after_inflating_about_the_limit(client, redis_client, settings, encoding, make_bomb):
    bomb = make_bomb()
    assert len(bomb) < 300_000  # 200 MB of zeros
    tracemalloc.start()
    try:
        response = post(client, "/api/logs/batch", bomb, encoding)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_json_error(response, 413, "request_entity_too_large", "1048576 bytes once decompressed")
    # The whole request, bomb copies included, allocated a few MiB: the decoder stopped at
    # the limit (the same measurement sees a full inflate: see the next test).
    assert peak < 4 * MAX_BODY, peak
    assert redis_client.xlen(settings.stream) == 0


@pytest.mark.parametrize("make_bomb, inflate", [
    (gzip_bomb, lambda bomb: zlib.decompress(bomb, 16 + zlib.MAX_WBITS)),
    (zstd_bomb, lambda bomb: zstandard.ZstdDecompressor().decompressobj().decompress(bomb)),
])
def test_the_memory_measure_would_see_a_full_inflate(make_bomb, inflate):
    """What the bomb test's measure is worth: inflating a whole (32 MB) bomb shows in it."""
    bomb = make_bomb(32 * 1024 * 1024)
    tracemalloc.start()
    try:
        assert len(inflate(bomb)) == 32 * 1024 * 1024
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak > 32 * 1024 * 1024


CORRUPT = [
    ("gzip", b"this is not gzip", "incorrect header check"),
    ("gzip", gzip.compress(batch("d"))[:-6], "truncated"),
    ("gzip", gzip.compress(batch("d")) + b"trailing garbage", "header check"),
    ("gzip", (lambda g: g[:-8] + bytes([g[-8] ^ 1]) + g[-7:])(gzip.compress(batch("d"))), "incorrect data check"),
    ("zstd", b"this is not zstd", "bad magic"),
    ("zstd", zstd(batch("d"))[:-5], "truncated"),
    ("zstd", zstd(batch("d")) + b"trailing garbage", "trailing bytes"),
    ("zstd", (lambda z: z[:20] + bytes(b ^ 0x5A for b in z[20:40]) + z[40:])(zstd(batch("d"))), "zstd"),
    ("zstd", gzip.compress(batch("d")), "bad magic"),
    ("zstd", big_window_zstd(batch("d")), "too much memory"),  # a 32 MiB window: over RFC 8878's 8 MiB
]


@pytest.mark.parametrize("encoding, body, word", CORRUPT)
def test_corrupt_data_is_a_400(client, redis_client, settings, encoding, body, word):
    assert_json_error(post(client, "/api/logs/batch", body, encoding), 400, "malformed_body", encoding, word)
    assert redis_client.xlen(settings.stream) == 0


@pytest.mark.parametrize("encoding", ["br", "deflate", "compress", "gzip, zstd", "gzip, gzip", "bogus"])
def test_an_unsupported_encoding_is_a_415_naming_it(client, redis_client, settings, encoding):
    body = assert_json_error(post(client, "/api/log", gzip.compress(orjson.dumps(log(1, "d"))), encoding), 415,
                             "unsupported_content_encoding", repr(encoding), "gzip", "zstd")
    assert redis_client.xlen(settings.stream) == 0
    assert body["message"]


def test_refusals_are_counted_by_reason(client):
    post(client, "/api/log", b"x", "br")
    post(client, "/api/log", b"not gzip", "gzip")
    post(client, "/api/log", gzip_bomb(8 * MAX_BODY), "gzip")
    pipeline = client.get("/api/stats").get_json()["pipeline"]
    assert pipeline["rejected_by_reason"] == {"unsupported_content_encoding": 1, "malformed_body": 1,
                                              "request_entity_too_large": 1}


def test_the_key_check_comes_first(settings, db, make_app):
    """As for a plain body: a client without a key hears 401, whatever its body."""
    client = make_app(dataclasses.replace(settings, auth_enabled=True)).test_client()
    for body, encoding in ((gzip_bomb(8 * MAX_BODY), "gzip"), (b"not zstd", "zstd"), (b"x", "br")):
        assert_json_error(post(client, "/api/logs/batch", body, encoding), 401, "unauthorized")


def test_other_paths_and_methods_are_untouched(client):
    # not an ingest path: the header is not ours to judge
    assert client.get("/api/stats", headers={"Content-Encoding": "br"}).status_code == 200
    assert client.post("/api/stats", data=b"x", headers={"Content-Encoding": "br"}).status_code == 405
    # an ingest path, but not a POST: Flask's 405, not a 415
    assert client.get("/api/log", headers={"Content-Encoding": "br"}).get_json()["error"] == "method_not_allowed"


# --- OTLP/HTTP --------------------------------------------------------------------------------

def otlp_request(device: str, n: int = 3) -> bytes:
    export = ExportLogsServiceRequest()
    resource_logs = export.resource_logs.add()
    attribute = resource_logs.resource.attributes.add()
    attribute.key, attribute.value.string_value = "device.id", device
    records = resource_logs.scope_logs.add().log_records
    for i in range(n):
        record = records.add()
        record.severity_text, record.body.string_value = "INFO", f"otlp {i}"
        record.time_unix_nano = 1_767_225_600_000_000_000 + i  # 2026-01-01
    return export.SerializeToString()


def test_otlp_takes_compressed_protobuf_and_answers_refusals_as_status(client, redis_client, settings):
    protobuf = {"Content-Type": "application/x-protobuf"}
    for encoding, compress in (("gzip", gzip.compress), ("zstd", zstd)):
        response = client.post("/v1/logs", data=compress(otlp_request(f"otlp-{encoding}")),
                               headers={**protobuf, "Content-Encoding": encoding})
        assert response.status_code == 200, response.get_data()
    assert [e[1][b"m"] for e in redis_client.xrange(settings.stream)] == [b"otlp 0", b"otlp 1", b"otlp 2"] * 2

    # OTLP's errors are a google.rpc.Status in the request's encoding (collector.web.otlp):
    # the middleware's refusals are answered by the app, so they get it too.
    for body, encoding, status, words in ((b"not gzip", "gzip", 400, "not valid gzip"),
                                          (zstd_bomb(), "zstd", 413, "once decompressed"),
                                          (b"x", "br", 415, "'br' is not supported")):
        response = client.post("/v1/logs", data=body, headers={**protobuf, "Content-Encoding": encoding})
        assert response.status_code == status and response.mimetype == "application/x-protobuf"
        answer = status_pb2.Status.FromString(response.get_data())
        assert words in answer.message, answer
    assert redis_client.xlen(settings.stream) == 6


# --- through nginx and Gunicorn -----------------------------------------------------------------

@pytest.fixture(scope="module")
def front(base_settings, tmp_path_factory):
    if nginx_binary() is None:
        pytest.fail("nginx is required for the nginx tests: apt-get install -y nginx")
    settings = dataclasses.replace(base_settings, key_prefix=base_settings.key_prefix + "compression:")
    log_dir = tmp_path_factory.mktemp("compression-front")
    stack = Stack({"REDIS_URL": settings.redis_url, "DATABASE_URL": settings.database_url,
                   "KEY_PREFIX": settings.key_prefix}, log_dir)
    try:
        stack.start_api(0)
        stack.start_api(1)
        url = stack.start_nginx()
        client = redis.Redis.from_url(settings.redis_url)
        yield {"url": url, "api": f"http://127.0.0.1:{stack.api_ports[0]}", "settings": settings, "redis": client}
        client.close()
    finally:
        stack.stop()


def assert_http_error(response: requests.Response, status: int, error: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json", response.headers
    body = response.json()
    assert body["error"] == error and body["message"], body
    return body


@pytest.mark.e2e
@pytest.mark.slow
def test_compressed_batches_through_nginx_and_gunicorn(front):
    url, settings, client = front["url"], front["settings"], front["redis"]
    json_type = {"Content-Type": "application/json"}
    with requests.Session() as http:
        for encoding, compress in (("gzip", gzip.compress), ("zstd", zstd)):
            plain = batch(f"e2e-{encoding}")
            response = http.post(f"{url}/api/logs/batch", data=compress(plain), timeout=30,
                                 headers={**json_type, "Content-Encoding": encoding})
            assert response.status_code == 200, response.text
            ids = response.json()["message_ids"]
            entries = client.xrange(settings.stream, min=ids[0], max=ids[-1])
            assert [e[1][b"m"].decode() for e in entries] == [log(i, "d")["message"] for i in range(30)]

        # A bomb is small enough for nginx (client_max_body_size is on the compressed
        # size), and the API's 413 passes through nginx as it is.
        for encoding, make_bomb in (("gzip", gzip_bomb), ("zstd", zstd_bomb)):
            response = http.post(f"{url}/api/logs/batch", data=make_bomb(), timeout=30,
                                 headers={**json_type, "Content-Encoding": encoding})
            body = assert_http_error(response, 413, "request_entity_too_large")
            assert "once decompressed" in body["message"]

        assert_http_error(http.post(f"{url}/api/log", data=b"x", timeout=30,
                                    headers={**json_type, "Content-Encoding": "br"}), 415,
                          "unsupported_content_encoding")
        assert_http_error(http.post(f"{url}/api/log", data=b"not gzip at all", timeout=30,
                                    headers={**json_type, "Content-Encoding": "gzip"}), 400, "malformed_body")

    # Straight to Gunicorn with a chunked body (no Content-Length): read to its end.
    compressed = gzip.compress(batch("e2e-chunked"))
    response = requests.post(f"{front['api']}/api/logs/batch", timeout=30,
                             data=(compressed[i:i + 1000] for i in range(0, len(compressed), 1000)),
                             headers={**json_type, "Content-Encoding": "gzip"})
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert response.status_code == 200, response.text
    assert response.json()["count"] == 30

    # A malformed chunk, found while the middleware reads the body: JSON, not a 500.
    port = int(front["api"].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /api/log HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
                     b"Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nxx\r\n0\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and answer.rstrip().endswith(b"}"):
                break
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer
    assert b"content-type: application/json" in head.lower(), answer
    assert orjson.loads(body)["error"] == "bad_request", answer
    assert "could not be read" in orjson.loads(body)["message"], answer  # the middleware's answer
