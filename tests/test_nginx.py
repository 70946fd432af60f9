"""nginx/collector.conf.template through a real nginx in front of two real Gunicorn APIs
(tests/test_nginx_config.py runs `nginx -t` on it; here it has to work).

What devices rely on: requests are proxied to both instances; nginx's own errors
(413 before proxying, 429 from the rate limit, 502 with no instance left; the
malformed and oversized requests are in tests/test_front_door.py) are JSON in the
API's shape, with Retry-After where retrying later helps; a killed
instance costs no request (connections it refuses are retried on the other one,
POSTs included) and comes back once restarted; the access log is JSON lines with
the upstream timings.
"""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import requests

from collector.devtools.processes import nginx_binary, wait_until
from tests.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MAX_BODY = 1_048_576  # client_max_body_size 1m == the API's MAX_BODY_BYTES default


@pytest.fixture(scope="module")
def nginx_settings(base_settings):
    """The run's Redis and database, under a key prefix of our own."""
    if nginx_binary() is None:
        pytest.fail("nginx is required for the nginx tests: apt-get install -y nginx")
    return dataclasses.replace(base_settings, key_prefix=base_settings.key_prefix + "nginx:")


def stack_env(settings, **extra: str) -> dict:
    return {"REDIS_URL": settings.redis_url, "DATABASE_URL": settings.database_url,
            "KEY_PREFIX": settings.key_prefix, **extra}


@pytest.fixture(scope="module")
def front(nginx_settings, tmp_path_factory):
    """Two APIs behind nginx with the seed's limits, logging JSON lines to a file."""
    log_dir = tmp_path_factory.mktemp("nginx-front")
    access_log = log_dir / "access.log"
    stack = Stack(stack_env(nginx_settings, NGINX_ACCESS_LOG=str(access_log)), log_dir)
    try:
        stack.start_api(0)
        stack.start_api(1)
        url = stack.start_nginx()
        yield {"url": url, "stack": stack, "access_log": access_log}
    finally:
        stack.stop()


def access_log_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def logged(path: Path, predicate, what: str, at_least: int = 1) -> list[dict]:
    """The access log's lines that match, once there are `at_least`: nginx writes a line
    when it finishes a request, which can be a moment after the client has the answer."""
    def lines():
        found = [e for e in access_log_lines(path) if predicate(e)]
        return found if len(found) >= at_least else None

    return wait_until(lines, 10, f"{what} in the access log")


def in_stream(settings, entry_id: str) -> bool:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        return len(client.xrange(settings.stream, min=entry_id, max=entry_id)) == 1
    finally:
        client.close()


def assert_json_error(response: requests.Response, status: int, error: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json", response.headers
    body = response.json()
    assert body["error"] == error and body["message"], body
    return body


# --- proxying --------------------------------------------------------------------------------

def test_requests_are_proxied_to_both_instances(front, nginx_settings):
    url = front["url"]
    with requests.Session() as http:
        instances = set()
        for _ in range(20):
            response = http.get(f"{url}/health", timeout=10)
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "healthy"
            instances.add(response.json()["instance"])
        assert instances == {"api1", "api2"}  # least_conn spreads sequential requests over both

        response = http.post(f"{url}/api/log", json={"device_id": "nginx-proxy", "log_level": "INFO",
                                                     "message": "through nginx"}, timeout=10)
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"] == "application/json"
        body = response.json()
        assert body["status"] == "queued"
    assert in_stream(nginx_settings, body["message_id"])  # it reached the API and Redis


def test_access_log_is_json_lines_with_upstream_timings(front):
    url, stack = front["url"], front["stack"]
    probe = uuid.uuid4().hex
    assert requests.get(f"{url}/health?probe={probe}", timeout=10).status_code == 200
    apis = {f"127.0.0.1:{port}" for port in stack.api_ports}

    [line] = logged(front["access_log"], lambda e: e["uri"] == f"/health?probe={probe}", "the request's line")
    assert line["method"] == "GET" and line["status"] == 200 and line["upstream_status"] == "200"
    assert line["upstream_addr"] in apis
    assert re.fullmatch(r"[0-9a-f]{32}", line["request_id"])
    assert float(line["upstream_response_time"]) <= line["request_time"] + 0.001
    assert float(line["upstream_connect_time"]) >= 0
    assert line["remote_addr"] == "127.0.0.1" and line["user_agent"].startswith("python-requests/")
    assert line["limit_req"] == "PASSED"


def test_the_seed_rate_limit_lets_more_than_a_burst_through(front):
    # The seed's 10,000 r/s with a burst of 2000 (run_local.py's defaults, as in
    # docker-compose.yml): more requests than the burst, as fast as 20 clients go,
    # in two waves with a pause between them. The pause (at least 0.2 s: 2000 requests'
    # worth at 10,000 r/s) makes room for the second wave however fast the machine
    # sends the first, so the test does not depend on the machine being slow enough.
    conf = (front["stack"].log_dir / "nginx" / "collector.conf").read_text()
    assert "rate=10000r/s;" in conf and "burst=2000 nodelay;" in conf
    url = front["url"]

    def get(n: int):
        with requests.Session() as http:
            return [http.get(f"{url}/health", timeout=30).status_code for _ in range(n)]

    statuses = []
    with ThreadPoolExecutor(max_workers=20) as pool:
        for per_client in (95, 30):  # 1900 (inside the burst), then 600: 2500 in all
            statuses += [s for part in pool.map(get, [per_client] * 20) for s in part]
            time.sleep(0.2)
    assert statuses.count(200) == 2500, {s: statuses.count(s) for s in set(statuses)}


# --- 413 -------------------------------------------------------------------------------------

def json_body_of_size(size: int) -> bytes:
    """A valid JSON batch request of exactly `size` bytes (padded with whitespace)."""
    body = b'{"logs": []}'
    return body[:-1] + b" " * (size - len(body)) + body[-1:]


def assert_nginx_413(response: requests.Response) -> None:
    # The API's error code (a device sees one code for one condition), nginx's message.
    body = assert_json_error(response, 413, "request_entity_too_large")
    assert "1048576 bytes" in body["message"], body
    assert "Retry-After" not in response.headers  # the same body will never fit


def test_body_over_the_limit_gets_nginx_json_413_before_reaching_the_api(front):
    url = front["url"]
    headers = {"Content-Type": "application/json"}
    # 1 byte over: nginx refuses on the Content-Length alone
    assert_nginx_413(requests.post(f"{url}/api/logs/batch", data=json_body_of_size(MAX_BODY + 1), headers=headers,
                                   timeout=30))
    # far over
    assert_nginx_413(requests.post(f"{url}/api/log", data=b"x" * (3 * MAX_BODY), headers=headers, timeout=30))
    rejected = logged(front["access_log"], lambda e: e["status"] == 413, "the 413s", at_least=2)
    assert all(e["upstream_addr"] == "" and e["upstream_status"] == "" for e in rejected)  # never proxied


def test_body_of_exactly_the_limit_passes_nginx_and_the_api(front):
    # The same limit on both sides: exactly 1 MiB is parsed by the API, which
    # rejects the empty batch as invalid (422), not as too large.
    response = requests.post(f"{front['url']}/api/logs/batch", data=json_body_of_size(MAX_BODY),
                             headers={"Content-Type": "application/json"}, timeout=30)
    body = assert_json_error(response, 422, "validation_failed")
    assert "logs" in body["fields"]


def test_chunked_body_over_the_limit_gets_json_413(front):
    # No Content-Length: nginx counts while it reads the body.
    def chunks():
        for _ in range(4):
            yield b" " * (MAX_BODY // 2)

    response = requests.post(f"{front['url']}/api/logs/batch", data=chunks(),
                             headers={"Content-Type": "application/json"}, timeout=30)
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert_nginx_413(response)


def test_headers_too_large_get_json_431(front):
    # nginx's own 494, answered as the standard 431 (tests/test_front_door.py: the rest of the class)
    response = requests.get(f"{front['url']}/health", headers={"X-Big": "b" * 9000}, timeout=10)
    assert_json_error(response, 431, "headers_too_large")


# --- 429 -------------------------------------------------------------------------------------

@pytest.fixture
def limited_front(front, nginx_settings, tmp_path):
    """A second nginx before the same two APIs, with a rate limit a test can exceed."""
    stack = Stack(stack_env(nginx_settings, RATE_LIMIT="1r/s", RATE_BURST="1",
                            NGINX_ACCESS_LOG=str(tmp_path / "access.log")), tmp_path)
    stack.api_ports = list(front["stack"].api_ports)
    try:
        yield {"url": stack.start_nginx(), "access_log": tmp_path / "access.log"}
    finally:
        stack.stop()


def test_over_the_rate_limit_gets_json_429_with_retry_after(limited_front):
    url = limited_front["url"]
    # At 1 r/s with a burst of 1, an idle client may send two requests at once. Idle
    # means 2 s here (the start-up probe's request drains out of the bucket in 1 s).
    time.sleep(2.1)
    with requests.Session() as http:
        responses = [http.get(f"{url}/health", timeout=10) for _ in range(2)]
        # Then requests within a second of the last one that passed are refused: send
        # until one is (however slow the machine, it gets there within a few requests).
        for _ in range(50):
            responses.append(http.get(f"{url}/health", timeout=10))
            if responses[-1].status_code == 429:
                break
        statuses = [r.status_code for r in responses]
        assert statuses[:2] == [200, 200], statuses
        assert set(statuses) == {200, 429} and statuses[-1] == 429, statuses
        for response in responses:
            if response.status_code == 429:
                assert_json_error(response, 429, "rate_limited")
                assert response.headers["Retry-After"] == "1"
        # A POST is limited the same way, and never reaches the API.
        for _ in range(50):
            response = http.post(f"{url}/api/log", json={"device_id": "nginx-429", "log_level": "INFO",
                                                         "message": "refused"}, timeout=10)
            if response.status_code != 200:
                break
            # let through: a second had passed since the last request that was; again
        assert_json_error(response, 429, "rate_limited")
        assert response.headers["Retry-After"] == "1"

        time.sleep(1.2)  # what Retry-After asks for: then it passes again
        assert http.get(f"{url}/health", timeout=10).status_code == 200

    refused = statuses.count(429) + 1  # and the POST
    rejected = logged(limited_front["access_log"], lambda e: e["status"] == 429, "the 429s", at_least=refused)
    assert len(rejected) == refused
    assert all(e["limit_req"] == "REJECTED" and e["upstream_addr"] == "" for e in rejected)
    assert [e["method"] for e in rejected].count("POST") == 1


# --- failover --------------------------------------------------------------------------------

def post_log(url: str, n: int) -> requests.Response:
    return requests.post(f"{url}/api/log", json={"device_id": "nginx-failover", "log_level": "WARNING",
                                                 "message": f"failover {n}"}, timeout=30)


def kill_instance(stack: Stack, name: str, port: int) -> None:
    """SIGKILL an API's process group (master and worker: no goodbye), and wait until
    its port refuses connections: the listening socket is shared by both processes,
    so by then neither holds a socket any more, and the kernel has closed (FIN) the
    idle keep-alive connections nginx keeps to it."""
    stack.kill(name)

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False

    wait_until(refused, 10, f"{name}'s port to refuse connections")


def test_a_killed_instance_costs_no_request_and_comes_back_when_restarted(nginx_settings, tmp_path):
    access_log = tmp_path / "access.log"
    stack = Stack(stack_env(nginx_settings, NGINX_ACCESS_LOG=str(access_log)), tmp_path)
    try:
        stack.start_api(0)
        stack.start_api(1)
        url = stack.start_nginx()
        api1, api2 = (f"127.0.0.1:{port}" for port in stack.api_ports)
        with ThreadPoolExecutor(max_workers=10) as pool:  # open keep-alive connections to both
            assert [r.status_code for r in pool.map(lambda n: post_log(url, n), range(20))] == [200] * 20

        # Killed, not dying: a POST nginx sends to api1 while it is being killed fails
        # after it was sent, and is deliberately not resent (it may have been stored;
        # see proxy_next_upstream in the template). Once api1 is dead, every request
        # it refuses is resent to api2, POSTs included, and the device never notices.
        kill_instance(stack, "api1", stack.api_ports[0])
        with ThreadPoolExecutor(max_workers=10) as pool:
            responses = list(pool.map(lambda n: post_log(url, n), range(50)))
        assert [r.status_code for r in responses] == [200] * 50, [r.text for r in responses if r.status_code != 200]
        assert all(in_stream(nginx_settings, r.json()["message_id"]) for r in responses)
        with requests.Session() as http:
            assert {http.get(f"{url}/health", timeout=10).json()["instance"] for _ in range(10)} == {"api2"}
        # Some POSTs were refused by api1 and retried on api2: both in one log line.
        retried = logged(access_log, lambda e: e["method"] == "POST" and e["upstream_addr"] == f"{api1}, {api2}",
                         "a POST retried on api2")
        assert all(e["status"] == 200 and e["upstream_status"] == "502, 200" for e in retried), retried

        # Restarted on its port, api1 is back in rotation once fail_timeout (10 s) has passed.
        stack.start_api(0, port=stack.api_ports[0])
        wait_until(lambda: requests.get(f"{url}/health", timeout=5).json()["instance"] == "api1", 30,
                   "api1 back behind nginx", interval=0.2)

        # With no instance left, nginx's own 502 is JSON with Retry-After.
        stack.kill("api1")
        stack.kill("api2")
        response = post_log(url, -1)
        assert_json_error(response, 502, "bad_gateway")
        assert response.headers["Retry-After"] == "5"
        response = requests.get(f"{url}/api/stats", timeout=10)
        assert_json_error(response, 502, "bad_gateway")
    finally:
        stack.stop()
