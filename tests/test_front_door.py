"""Every answer of the front door is JSON in our shape, whatever the abuse of the request
line and headers (issue 11, item 2; the limits are in docs/limits.md).

Raw requests over a socket to a real nginx (nginx/collector.conf.template) in front of
two real Gunicorn APIs (gunicorn.conf.py, collector/web/gunicorn_worker.py), read with
the standard library's HTTP client: each answer must parse, say
Content-Type: application/json and carry {"error": "<code>", "message": "<text>"}.
Three kinds of request:
- refused by nginx (malformed, too long, too many headers...): its own JSON answers;
- refused by Gunicorn behind nginx (what nginx lets through but Gunicorn does not
  accept, such as a control character in a header value): the worker's JSON answers;
- at nginx's limits (200 or 990 headers, a header line or X-Forwarded-For just under
  nginx's limit, the longest request line nginx forwards): they reach the API, never
  refused by Gunicorn, whose limits are looser than anything nginx forwards.
Not here: what nginx answers with no answer at all (a request line, headers or body
not complete within client_header_timeout / client_body_timeout): see docs/limits.md.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import socket

import pytest

from collector.devtools.processes import nginx_binary
from tests.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# nginx's large_client_header_buffers: 8190 bytes for the request line or one header
# line, its line end included.
LINE_BUFFER = 8190


@pytest.fixture(scope="module")
def stack(base_settings, tmp_path_factory):
    if nginx_binary() is None:
        pytest.fail("nginx is required for the front door tests: apt-get install -y nginx")
    settings = dataclasses.replace(base_settings, key_prefix=base_settings.key_prefix + "front-door:")
    stack = Stack({"REDIS_URL": settings.redis_url, "DATABASE_URL": settings.database_url,
                   "KEY_PREFIX": settings.key_prefix}, tmp_path_factory.mktemp("front-door"))
    try:
        stack.start_api(0)
        stack.start_api(1)
        stack.start_nginx()
        yield stack
    finally:
        stack.stop()


@dataclasses.dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def exchange(port: int, data: bytes, method: str = "GET") -> Answer:
    """Send raw bytes on a new connection and read one HTTP answer with http.client."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before it read everything: the answer is there to read
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        return Answer(response.status, response.headers, response.read())


def request(line: bytes = b"GET /livez HTTP/1.1", headers: list[tuple[bytes, bytes]] | None = None,
            body: bytes = b"", host: bytes | None = b"collector", eol: bytes = b"\r\n") -> bytes:
    """A request of exactly these bytes, with a Host (unless None) and Connection: close."""
    fields = ([(b"Host", host)] if host is not None else []) + list(headers or []) + [(b"Connection", b"close")]
    return line + eol + b"".join(name + b": " + value + eol for name, value in fields) + eol + body


def post(*headers: tuple[bytes, bytes], body: bytes = b"{}", version: bytes = b"1.1") -> bytes:
    return request(b"POST /api/log HTTP/" + version, [(b"Content-Type", b"application/json"), *headers], body)


def many(count: int, value: bytes = b"v") -> list[tuple[bytes, bytes]]:
    return [(b"X-Header-%d" % i, value) for i in range(count)]


def request_line(length: int) -> bytes:
    """A GET request line of exactly `length` bytes (without its line end)."""
    return b"GET /" + b"a" * (length - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"


def header_line(length: int) -> tuple[bytes, bytes]:
    """A header whose line is exactly `length` bytes (without its line end) as request() writes it."""
    return b"X-Big", b"b" * (length - len(b"X-Big: "))


def tight_header(length: int, eol: bytes = b"\r\n") -> bytes:
    """A request with a header line of exactly `length` bytes written "X-Big:value": nginx
    forwards it as "X-Big: value", one byte longer."""
    line = b"X-Big:" + b"b" * (length - len(b"X-Big:"))
    return b"GET /livez HTTP/1.1" + eol + b"Host: collector" + eol + line + eol + b"Connection: close" + eol + eol


def assert_our_error(answer: Answer, status: int, error: str) -> dict:
    assert answer.status == status, (answer.status, answer.body[:300])
    assert answer.headers["Content-Type"] == "application/json", (answer.headers.items(), answer.body[:300])
    body = json.loads(answer.body)
    assert isinstance(body, dict) and set(body) <= {"error", "message", "fields"}, body
    assert body["error"] == error and isinstance(body["message"], str) and body["message"], body
    # Retry-After only where retrying later helps
    assert ("Retry-After" in answer.headers) == (status in (429, 502, 503, 504)), answer.headers.items()
    return body


def assert_reached_the_api(answer: Answer) -> None:
    assert answer.status == 200, (answer.status, answer.body[:300])
    assert answer.headers["Content-Type"] == "application/json"
    assert json.loads(answer.body)["status"] == "up"  # /livez


# --- refused by nginx --------------------------------------------------------------------------

NGINX_REFUSES = [
    # headers: nginx counts their bytes (and, where it has max_headers, their number)
    pytest.param(request(headers=many(5000)), 431, "headers_too_large", id="5000 headers"),
    pytest.param(request(headers=[(b"X-Big", b"b" * 8192)]), 431, "headers_too_large", id="one header of 8 KiB"),
    pytest.param(request(headers=[(b"X-Big", b"b" * 16384)]), 431, "headers_too_large", id="one header of 16 KiB"),
    pytest.param(request(headers=[(b"X-Big", b"b" * 65536)]), 431, "headers_too_large", id="one header of 64 KiB"),
    pytest.param(request(headers=many(6, b"b" * 7000)), 431, "headers_too_large", id="42 KB of headers"),
    pytest.param(request(headers=[header_line(LINE_BUFFER - 1)]), 431, "headers_too_large",
                 id="a header line one byte over"),
    pytest.param(request(headers=[(b"X-Forwarded-For", b"1" * 9000)]), 431, "headers_too_large",
                 id="X-Forwarded-For of 9000 bytes"),
    # the request line
    pytest.param(request(request_line(LINE_BUFFER - 1)), 414, "uri_too_long", id="request line one byte over"),
    pytest.param(request(request_line(LINE_BUFFER), eol=b"\n"), 414, "uri_too_long",
                 id="request line one byte over, LF line ends"),
    # nginx with 8 KiB buffers forwarded it, and Gunicorn (8190 at most) refused it
    pytest.param(request(request_line(8191), eol=b"\n"), 414, "uri_too_long", id="request line of 8191 bytes, LF"),
    pytest.param(request(request_line(9000)), 414, "uri_too_long", id="request line of 9000 bytes"),
    pytest.param(request(request_line(70000)), 414, "uri_too_long", id="request line of 70000 bytes"),
    pytest.param(request(b"GARBAGE"), 400, "bad_request", id="no method, URI or version"),
    pytest.param(request(b"GET /livez HTTP/1.1 extra"), 400, "bad_request", id="a fourth word"),
    pytest.param(request(b"get /livez HTTP/1.1"), 400, "bad_request", id="lower-case method"),
    pytest.param(request(b"G@T /livez HTTP/1.1"), 400, "bad_request", id="method with a symbol"),
    pytest.param(request(b"CONNECT collector:443 HTTP/1.1"), 400, "bad_request", id="CONNECT"),
    pytest.param(request(b"OPTIONS * HTTP/1.1"), 400, "bad_request", id="asterisk target"),
    pytest.param(request(b"TRACE /livez HTTP/1.1"), 405, "method_not_allowed", id="TRACE"),
    pytest.param(request(b"GET livez HTTP/1.1"), 400, "bad_request", id="URI without a slash"),
    pytest.param(request(b"GET /../../etc/passwd HTTP/1.1"), 400, "bad_request", id="URI above the root"),
    pytest.param(request(b"GET /livez%00 HTTP/1.1"), 400, "bad_request", id="URI with %00"),
    pytest.param(request(b"GET /%zz HTTP/1.1"), 400, "bad_request", id="URI with a bad escape"),
    pytest.param(request(b"GET /livez\x01 HTTP/1.1"), 400, "bad_request", id="URI with a control byte"),
    pytest.param(request(b"GET /livez HTTP/9.9"), 505, "http_version_not_supported", id="HTTP/9.9"),
    pytest.param(request(b"GET /livez HTTP/2.0"), 505, "http_version_not_supported", id="HTTP/2.0 as text"),
    pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "bad_request", id="HTTP/2 preface"),
    pytest.param(bytes.fromhex("16030100a5010000a10303") + b"\x00" * 64, 400, "bad_request",
                 id="TLS ClientHello"),
    pytest.param(b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n" + request(), 400, "bad_request", id="PROXY protocol"),
    # Host
    pytest.param(request(host=None), 400, "bad_request", id="HTTP/1.1 without Host"),
    pytest.param(request(host=b"a/b"), 400, "bad_request", id="Host with a slash"),
    pytest.param(request(host=b".."), 400, "bad_request", id="Host of dots"),
    pytest.param(request(host=b"a\x01b"), 400, "bad_request", id="Host with a control byte"),
    pytest.param(request(headers=[(b"Host", b"other")]), 400, "bad_request", id="two Hosts"),
    # other headers
    pytest.param(request(headers=[(b"X Bad", b"v")]), 400, "bad_request", id="a space in a header name"),
    pytest.param(request(headers=[(b"X-A", b"a\x00b")]), 400, "bad_request", id="NUL in a header value"),
    pytest.param(request(headers=[(b"X-A", b"a\rb")]), 400, "bad_request", id="bare CR in a header value"),
    pytest.param(request(headers=[(b"X-A", b"a\r\n b")]), 400, "bad_request", id="folded header"),
    pytest.param(request(headers=[(b"Authorization", b"Bearer a"), (b"Authorization", b"Bearer b")]), 400,
                 "bad_request", id="two Authorizations"),
    # the body's framing
    pytest.param(post((b"Content-Length", b"2"), (b"Transfer-Encoding", b"chunked"), body=b"0\r\n\r\n"), 400,
                 "bad_request", id="Content-Length with Transfer-Encoding"),
    pytest.param(post((b"Content-Length", b"2"), (b"Content-Length", b"3")), 400, "bad_request",
                 id="two Content-Lengths"),
    pytest.param(post((b"Content-Length", b"abc")), 400, "bad_request", id="Content-Length not a number"),
    pytest.param(post((b"Content-Length", b"-1")), 400, "bad_request", id="negative Content-Length"),
    pytest.param(post((b"Content-Length", b"9" * 25)), 400, "bad_request", id="Content-Length of 25 digits"),
    pytest.param(post((b"Transfer-Encoding", b"gzip")), 501, "not_implemented", id="Transfer-Encoding gzip"),
    pytest.param(post((b"Transfer-Encoding", b"gzip, chunked"), body=b"0\r\n\r\n"), 501, "not_implemented",
                 id="Transfer-Encoding gzip, chunked"),
    pytest.param(post((b"Transfer-Encoding", b"chunked"), body=b"0\r\n\r\n", version=b"1.0"), 400, "bad_request",
                 id="Transfer-Encoding in HTTP/1.0"),
    pytest.param(post((b"Transfer-Encoding", b"chunked"), body=b"zz\r\n{}\r\n0\r\n\r\n"), 400, "bad_request",
                 id="malformed chunk size"),
    pytest.param(post((b"Content-Length", b"2000000"), body=b""), 413, "request_entity_too_large",
                 id="Content-Length over 1 MiB"),
    # the error pages' own URI, asked for from outside
    pytest.param(request(b"GET /_errors/json HTTP/1.1"), 404, "not_found", id="the error page's URI"),
]


@pytest.mark.parametrize(("data", "status", "error"), NGINX_REFUSES)
def test_nginx_refuses_with_json(stack, data, status, error):
    answer = exchange(stack.front_port, data)
    assert_our_error(answer, status, error)
    assert answer.headers["Server"].startswith("nginx")


def test_http_0_9_is_refused_with_a_json_body_alone(stack):
    # HTTP/0.9 has no status line and no headers: the JSON body is the whole answer.
    with socket.create_connection(("127.0.0.1", stack.front_port), timeout=30) as sock:
        sock.sendall(b"GET /livez\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert json.loads(answer)["error"] == "http_version_not_supported"


# --- refused by Gunicorn, behind nginx ---------------------------------------------------------

GUNICORN_REFUSES = [
    pytest.param(request(b"AB /livez HTTP/1.1"), 400, "bad_request", id="2-letter method"),
    pytest.param(request(b"ABCDEFGHIJKLMNOPQRSTU /livez HTTP/1.1"), 400, "bad_request", id="21-letter method"),
    pytest.param(request(b"GET /livez\x80 HTTP/1.1"), 400, "bad_request", id="URI with a byte over 0x7f"),
    pytest.param(request(b"GET /livez?a=\xff HTTP/1.1"), 400, "bad_request", id="query with a byte over 0x7f"),
    pytest.param(request(headers=[(b"X-A", b"a\x01b")]), 400, "bad_request", id="header value with 0x01"),
    pytest.param(request(headers=[(b"X-A", b"a\x0bb")]), 400, "bad_request", id="header value with 0x0b"),
    pytest.param(request(headers=[(b"X-A", b"a\x7fb")]), 400, "bad_request", id="header value with DEL"),
    pytest.param(post((b"Content-Type", b"application/json"), (b"Content-Length", b"2")), 400, "bad_request",
                 id="two Content-Types"),
]


@pytest.mark.parametrize(("data", "status", "error"), GUNICORN_REFUSES)
def test_gunicorn_refusals_behind_nginx_are_json(stack, data, status, error):
    body = assert_our_error(exchange(stack.front_port, data), status, error)
    assert body["message"].startswith("Bad Request: ")  # the worker's, with Gunicorn's reason


# --- at nginx's limits: they reach the API -----------------------------------------------------

REACH_THE_API = [
    pytest.param(request(headers=many(200)), id="200 headers"),
    pytest.param(request(headers=many(990)), id="990 headers"),
    pytest.param(tight_header(LINE_BUFFER - 2), id="the longest header line"),
    pytest.param(tight_header(LINE_BUFFER - 1, eol=b"\n"), id="the longest header line, LF"),
    # nginx sends the client's address alone: appended to this, it was over Gunicorn's limit
    pytest.param(request(headers=[(b"X-Forwarded-For", b"1" * (LINE_BUFFER - 2 - len(b"X-Forwarded-For: ")))]),
                 id="X-Forwarded-For just under nginx's limit"),
    pytest.param(request(headers=[(b"X-Forwarded-For", b"10.0.0.%d" % (i % 250)) for i in range(500)]),
                 id="500 X-Forwarded-For headers"),
    pytest.param(request(headers=[(b"X-Forwarded-Ssl", b"on")]), id="X-Forwarded-Ssl"),
    pytest.param(request(headers=[(b"X-Forwarded-Protocol", b"ssl")]), id="X-Forwarded-Protocol"),
    pytest.param(request(headers=[(b"X_Underscore", b"v"), (b"X@y", b"v")]), id="invalid header names, dropped"),
]


@pytest.mark.parametrize("data", REACH_THE_API)
def test_requests_within_nginx_limits_reach_the_api(stack, data):
    assert_reached_the_api(exchange(stack.front_port, data))


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"], ids=["CRLF", "LF"])
def test_the_longest_request_line_nginx_forwards_reaches_the_api(stack, eol):
    # 8190 bytes with its line end: the API answers (a JSON 404 for the made-up path)
    answer = exchange(stack.front_port, request(request_line(LINE_BUFFER - len(eol)), eol=eol))
    assert_our_error(answer, 404, "not_found")


# --- Gunicorn hit directly (loopback only, but JSON there too) ----------------------------------

GUNICORN_DIRECT = [
    pytest.param(request(b"GARBAGE"), 400, "bad_request", id="malformed request line"),
    pytest.param(request(b"GET /livez HTTP/2.0"), 400, "bad_request", id="HTTP/2.0 as text"),
    pytest.param(request(b"AB /livez HTTP/1.1"), 400, "bad_request", id="2-letter method"),
    pytest.param(request(headers=[(b"X-A", b"a\x01b")]), 400, "bad_request", id="header value with 0x01"),
    pytest.param(post((b"Expect", b"bogus"), (b"Content-Length", b"2")), 417, "expectation_failed",
                 id="unknown Expect"),
    pytest.param(post((b"Transfer-Encoding", b"gzip")), 400, "bad_request", id="Transfer-Encoding gzip"),
    pytest.param(post((b"Transfer-Encoding", b"chunked"), body=b"zz\r\n{}\r\n0\r\n\r\n"), 400, "bad_request",
                 id="malformed chunk size"),
]


@pytest.mark.parametrize(("data", "status", "error"), GUNICORN_DIRECT)
def test_gunicorn_hit_directly_answers_json(stack, data, status, error):
    answer = exchange(stack.api_ports[0], data)
    assert_our_error(answer, status, error)
