"""Live tails through the real front: two Gunicorn APIs behind nginx, a Celery worker and
beat, keys on. The issue's acceptance: connect, post, receive; drop, post more, reconnect
with Last-Event-ID and receive exactly the missed logs in order; plus filters, the cap per
key, scopes, and a graceful shutdown that ends the stream cleanly."""

from __future__ import annotations

import dataclasses
import json
import signal

import psycopg
import pytest
import redis
import requests

from collector.devtools.processes import nginx_binary, wait_until
from collector.pipeline import keyring
from collector.store import keys
from collector.store.positions import Position
from tests.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MAX_PER_KEY = 2


@pytest.fixture(scope="module")
def stack(base_settings, tmp_path_factory, empty_tables):
    if nginx_binary() is None:
        pytest.fail("nginx is required: apt-get install -y nginx")
    empty_tables()
    settings = dataclasses.replace(base_settings, key_prefix=base_settings.key_prefix + "tail-e2e:")
    stack = Stack({"REDIS_URL": settings.redis_url, "DATABASE_URL": settings.database_url,
                   "KEY_PREFIX": settings.key_prefix, "AUTH_ENABLED": "true", "DRAIN_INTERVAL": "0.2",
                   "TAIL_HEARTBEAT_SECONDS": "0.5", "TAIL_POLL_INTERVAL": "0.05",
                   "TAIL_MAX_PER_KEY": str(MAX_PER_KEY)},
                  tmp_path_factory.mktemp("tail-e2e"))
    try:
        stack.start_all()
        stack.settings = settings
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def front(stack) -> str:
    return f"http://127.0.0.1:{stack.front_port}"


@pytest.fixture(scope="module")
def make_key(stack):
    """A key, as `python -m collector.keys create` makes it (table and Redis copy)."""
    client = redis.Redis.from_url(stack.settings.redis_url)

    def make(role: str = "device", device_id: str | None = None, prefix: str | None = None) -> dict:
        key_id, secret, digest = keyring.new_secret()
        with psycopg.connect(stack.settings.database_url, autocommit=True) as conn:
            keyring.publish(client, stack.settings, keys.add(conn, key_id, "tail test", role, device_id, prefix,
                                                              digest))
        return {"Authorization": f"Bearer {secret}"}

    yield make
    client.close()


class Tail:
    """An SSE client: blocks of `field: value` lines, ended by a blank line."""

    def __init__(self, url: str, headers: dict, params: dict | None = None) -> None:
        # The read timeout only bounds a broken setup: heartbeats come twice a second.
        self.response = requests.get(url, headers=headers, params=params, stream=True, timeout=(5, 20))
        self.lines = self.response.iter_lines() if self.response.status_code == 200 else iter(())
        self.last_id: str | None = None
        self.comments: list[str] = []

    def block(self) -> dict | None:
        """The next block; None when the stream ended cleanly."""
        fields: dict = {}
        for raw in self.lines:
            line = raw.decode()
            if not line:
                if fields:
                    return fields
                continue
            name, _, value = line.partition(": ")
            if name == "":
                self.comments.append(value)
            else:
                fields[name] = value
                if name == "id":
                    self.last_id = value
        return fields or None

    def events(self, n: int, max_blocks: int = 120) -> list[dict]:
        found = []
        for _ in range(max_blocks):
            if len(found) == n:
                return found
            block = self.block()
            assert block is not None, f"the stream ended after {len(found)} of {n} events"
            if "data" in block:
                found.append({**json.loads(block["data"]), "event_id": block["id"]})
        raise AssertionError(f"{len(found)} of {n} events")

    def close(self) -> None:
        self.response.close()


def post(front: str, headers: dict, *messages: str, device: str = "tail-dev-1", level: str = "INFO") -> None:
    logs = [{"device_id": device, "log_level": level, "message": m} for m in messages]
    response = requests.post(f"{front}/api/logs/batch", json={"logs": logs}, headers=headers, timeout=10)
    assert response.status_code == 200, response.text


def test_tail_receives_then_resumes_exactly_where_it_dropped(front, make_key):
    device = make_key(device_id="tail-dev-1")
    tail = Tail(f"{front}/api/logs/tail-dev-1/tail", device)
    assert tail.response.headers["Content-Type"].startswith("text/event-stream")
    assert tail.response.headers["Cache-Control"] == "no-cache"
    post(front, device, "a1", "a2", "a3")
    received = tail.events(3)
    assert [e["message"] for e in received] == ["a1", "a2", "a3"]
    tail.close()  # the connection drops
    post(front, device, "b1", "b2")
    post(front, device, "b3", "b4")
    again = Tail(f"{front}/api/logs/tail-dev-1/tail", {**device, "Last-Event-ID": received[-1]["event_id"]})
    missed = again.events(4)
    assert [e["message"] for e in missed] == ["b1", "b2", "b3", "b4"]
    post(front, device, "c1")
    [live] = again.events(1)
    assert live["message"] == "c1"
    ids = [Position.parse(e["event_id"]).entry for e in received + missed + [live]]
    assert ids == sorted(set(ids))  # in order, none twice
    again.close()


def test_filters_apply_and_the_key_in_the_url_works(front, make_key):
    fleet = make_key(prefix="tail-f")
    params = {"device_prefix": "tail-f", "min_level": "ERROR", "access_token": fleet["Authorization"].split()[1]}
    tail = Tail(f"{front}/api/logs/tail", {}, params)
    post(front, fleet, "ignored", device="tail-f1", level="INFO")
    post(front, fleet, "kept", device="tail-f2", level="CRITICAL")
    [event] = tail.events(1)
    assert (event["device_id"], event["message"]) == ("tail-f2", "kept")
    tail.close()


def test_a_device_key_tails_only_its_devices_and_at_most_the_cap(front, make_key):
    device = make_key(device_id="tail-dev-2")
    other = requests.get(f"{front}/api/logs/tail-dev-3/tail", headers=device, timeout=10)
    assert other.status_code == 403 and other.json()["error"] == "forbidden"
    fleet = requests.get(f"{front}/api/logs/tail", headers=device, timeout=10)
    assert fleet.status_code == 403
    open_tails = [Tail(f"{front}/api/logs/tail-dev-2/tail", device) for _ in range(MAX_PER_KEY)]
    for tail in open_tails:
        assert tail.response.status_code == 200 and tail.block() is not None
    refused = requests.get(f"{front}/api/logs/tail-dev-2/tail", headers=device, timeout=10)
    assert refused.status_code == 429 and refused.json()["error"] == "too_many_tails"
    assert int(refused.headers["Retry-After"]) >= 1
    open_tails.pop().close()

    def reopened():  # the slot is given back once the API sees the client gone (at its next write)
        tail = Tail(f"{front}/api/logs/tail-dev-2/tail", device)
        if tail.response.status_code == 200:
            return tail
        tail.close()
        return None

    open_tails.append(wait_until(reopened, 30, "a slot to be given back", interval=0.5))
    for tail in open_tails:
        tail.close()


def test_graceful_shutdown_ends_the_stream_and_the_client_resumes_elsewhere(stack, front, make_key):
    reader, device = make_key(role="reader"), make_key(device_id="tail-dev-4")
    # An instance of its own, outside nginx, so that no idle connection of nginx's keeps its
    # worker waiting (Gunicorn waits for every open connection until graceful_timeout).
    api3 = stack.start_api(2)
    tail = Tail(f"{api3}/api/logs/tail-dev-4/tail", {**reader, "Connection": "close"})
    post(front, device, "before", device="tail-dev-4")
    [before] = tail.events(1)
    stack.procs["api3"].signal(signal.SIGTERM)
    while tail.block() is not None:  # ends, not cut: iter_lines raises on a truncated chunked body
        pass
    assert "shutting down: reconnect with Last-Event-ID to go on" in tail.comments, tail.comments
    assert stack.procs["api3"].wait(60) == 0
    post(front, device, "while away", device="tail-dev-4")
    assert Position.parse(tail.last_id).entry >= Position.parse(before["event_id"]).entry
    again = Tail(f"{front}/api/logs/tail-dev-4/tail", {**reader, "Last-Event-ID": tail.last_id})
    assert [e["message"] for e in again.events(1)] == ["while away"]
    again.close()
