"""What the watchers show: drain runs that say what they did (Flower's task list), and
Locust's web UI counting logs, not only requests, on 127.0.0.1 only."""

from __future__ import annotations

import dataclasses
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests
from celery import current_app

from collector.devtools.processes import ROOT, free_port, wait_until
from collector.pipeline.drain import DrainResult
from tasks import resources
from tasks.celery_app import make_celery
from tasks.drain import describe, drain_stream, drain_tick
from tests.stack import BIN, Stack
from tests.test_drain import count, enqueue

SAMPLE_SECONDS = 3.0  # locustfiles/logcharts.py: one sample of the figures every 3 s


@pytest.fixture
def celery_app(settings):
    previous = current_app._get_current_object()
    app = make_celery(settings)
    app.loader.import_default_modules()
    yield app
    resources.close_backends()
    previous.set_current()


def run(app, name: str, **kwargs) -> str:
    """The task body, run for real in this process (its connections: tasks.resources)."""
    return app.tasks[name].apply(kwargs=kwargs, throw=True).get()


def test_a_drain_run_says_what_it_stored_and_an_empty_one_says_idle(celery_app, settings, redis_client, db):
    assert run(celery_app, "tasks.drain.drain_stream") == "idle"
    enqueue(redis_client, settings, 30)
    assert run(celery_app, "tasks.drain.drain_stream") == "stored 30 of 30 (new)"
    assert count(db) == 30
    assert run(celery_app, "tasks.drain.drain_stream") == "idle"


def test_the_description_names_duplicates_dead_letters_and_more_waiting():
    assert describe([DrainResult(0, 0, 0, 0.01, full=False, source="reclaimed")]) == "idle"
    assert (describe([DrainResult(100, 97, 1, 0.2, full=True, source="own-pending")])
            == "stored 97 of 100 (own-pending), 2 duplicates, 1 dead-lettered, more waiting")
    runs = [DrainResult(100, 100, 0, 0.2, full=True, source="own-pending"),
            DrainResult(100, 99, 0, 0.2, full=True, source="new"), DrainResult(7, 7, 0, 0.01, full=False)]
    assert describe(runs) == "stored 206 of 207 (own-pending/new) in 3 runs, 1 duplicates"


def test_an_idle_tick_sends_no_drain_run_and_a_busy_one_does(celery_app, settings, redis_client, db):
    queue = f"{settings.key_prefix}{settings.celery_queue}"  # kombu's list, under the global prefix
    assert run(celery_app, "tasks.drain.drain_tick", tick=True) == "idle"
    assert redis_client.llen(queue) == 0
    enqueue(redis_client, settings, 5)
    # Within the interval another tick is a no-op (the tick token, by Redis's clock).
    assert run(celery_app, "tasks.drain.drain_tick", tick=True).startswith("skipped")
    redis_client.delete(settings.key("tick:drain"))
    assert run(celery_app, "tasks.drain.drain_tick", tick=True) == "sent drain_stream: 5 waiting"
    assert redis_client.llen(queue) == 1
    assert count(db) == 0  # the tick stores nothing itself: the drain run it sent does
    redis_client.delete(queue)


def test_the_tick_sends_no_worker_events_and_the_drain_run_does():
    assert drain_tick.send_events is False and drain_stream.send_events is True


# ---------------------------------------------------------------------------------------
# A real stack: API, worker, beat; Locust with its web UI; Flower's view of the events
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def api_stack(base_settings, tmp_path_factory):
    prefix = base_settings.key_prefix + "flower-locust:"
    stack = Stack({"REDIS_URL": base_settings.redis_url, "DATABASE_URL": base_settings.database_url,
                   "KEY_PREFIX": prefix, "DRAIN_INTERVAL": "0.5"}, tmp_path_factory.mktemp("stack"))
    try:
        url = stack.start_api(0)
        stack.start_worker()
        stack.start_beat()
        yield {"url": url, "stack": stack, "settings": dataclasses.replace(base_settings, key_prefix=prefix)}
    finally:
        stack.stop()
        sys.stderr.write(f"--- worker (tail) ---\n{stack.tail('worker')}\n")


def listening(port: int) -> set[str]:
    """Local addresses (hex, as the kernel shows them) with a LISTEN socket on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, _, hexport = local.partition(":")
                if state == "0A" and int(hexport, 16) == port:
                    found.add(address)
    return found


class EventWatch:
    """The task events the workers send, as Flower receives them (one Receiver, in a thread)."""

    def __init__(self, settings) -> None:
        self.app = make_celery(settings)
        self.events: list[dict] = []
        self.receiver = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.app.connection_for_read() as conn:
            self.receiver = self.app.events.Receiver(conn, handlers={"*": self.events.append})
            # Returns once should_stop is set and the next event (a heartbeat at most 2 s away) arrives.
            self.receiver.capture(limit=None, timeout=None, wakeup=True)

    def start(self) -> EventWatch:
        self.thread.start()
        wait_until(lambda: any(e["type"] == "worker-heartbeat" for e in self.events), 30, "a worker heartbeat")
        return self

    def stop(self) -> list[dict]:
        self.receiver.should_stop = True
        self.thread.join(timeout=15)
        return list(self.events)


@pytest.mark.e2e
@pytest.mark.slow
def test_locust_web_ui_shows_logs_per_second_and_flower_sees_what_drains_did(api_stack, tmp_path):
    url = api_stack["url"]
    baseline = requests.get(f"{url}/api/stats", timeout=10).json()["pipeline"]["persisted"]
    watch = EventWatch(api_stack["settings"]).start()  # bound before the fleet sends anything

    port = free_port()
    accepted_file = tmp_path / "accepted"
    web = f"http://127.0.0.1:{port}"
    locust = subprocess.Popen(
        [str(BIN / "locust"), "-f", "locustfiles/devices.py", "--autostart", "--run-time", "8s", "-u", "5",
         "-r", "5", "--host", url, "--web-port", str(port), "--rate", "20", "--batch-ratio", "0.5",
         "--device-prefix", "flocust", "--stop-timeout", "5", "--max-p95-ms", "0",
         "--accepted-file", str(accepted_file)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: requests.get(f"{web}/logs/figures", timeout=2).status_code == 200, 30, "Locust's web UI")
        # Bound to 127.0.0.1 ([tool.locust] web-host), not to every interface.
        assert listening(port) == {"0100007F"}

        def figures() -> dict:
            return requests.get(f"{web}/logs/figures", timeout=5).json()

        wait_until(lambda: (figures()["latest"] or {}).get("accepted", 0) > 0, 30, "accepted logs in the figures")
        body = figures()
        assert body["unit"] == "logs" and body["history"]
        latest = body["latest"]
        assert set(latest) >= {"time", "accepted", "accepted_per_second", "persisted", "persisted_per_second",
                               "backlog"}
        assert isinstance(latest["persisted"], int) and isinstance(latest["backlog"], int), body["stats_error"]

        # The tab: declared in the page's template args, its rows added to /stats/requests.
        page = requests.get(f"{web}/", timeout=5).text
        assert '"extended_tabs": [{"key": "logs", "title": "Collector logs"}]' in page
        stats = requests.get(f"{web}/stats/requests", timeout=5).json()
        [tab] = stats["extended_stats"]
        assert tab["key"] == "logs"
        assert [row["name"] for row in tab["data"]] == [
            "accepted (2xx, this fleet)", "persisted (PostgreSQL)", "backlog (not yet stored)"]
        chart = requests.get(f"{web}/logs/chart", timeout=5)
        assert chart.status_code == 200 and chart.headers["Content-Type"].startswith("text/html")
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", chart.text), "the chart loads nothing from elsewhere"
        csv = requests.get(f"{web}/logs/csv", timeout=5)
        assert csv.status_code == 200 and csv.text.startswith("time,accepted,accepted_per_second")

        # The run ends (8 s); the sampler goes on, so persisted catches up with accepted.
        wait_until(lambda: locust.poll() is None and requests.get(f"{web}/stats/requests", timeout=5).json()
                   ["state"] == "stopped", 40, "the Locust run to end")
        accepted = figures()["latest"]["accepted"]
        assert accepted > 0
        assert any((s["accepted_per_second"] or 0) > 0 for s in figures()["history"])
        # The figures are sampled: an answer that came in just after the first reading counts in
        # the next sample, so read again once a sample later.
        time.sleep(SAMPLE_SECONDS + 0.5)
        accepted = figures()["latest"]["accepted"]
        wait_until(lambda: (figures()["latest"]["persisted"] or 0) - baseline >= accepted, 60,
                   f"{accepted} logs persisted, as the Locust figures show")
        assert figures()["latest"]["backlog"] == 0
        assert any((s["persisted_per_second"] or 0) > 0 for s in figures()["history"])
    finally:
        locust.send_signal(signal.SIGTERM)
        out, _ = locust.communicate(timeout=30)
    assert int(accepted_file.read_text()) == accepted, out[-3000:]

    # Flower's task list: drain runs carry what they did in their result; ticks send no events.
    captured = watch.stop()
    names = {e["uuid"]: e["name"] for e in captured if e["type"] == "task-received"}
    assert "tasks.drain.drain_tick" not in names.values()
    results = [e["result"] for e in captured
               if e["type"] == "task-succeeded" and names.get(e["uuid"]) == "tasks.drain.drain_stream"]
    stored = [r for r in results if re.fullmatch(r"'stored \d+ of \d+ \([a-z/-]+\).*'", r)]
    assert stored, (len(captured), {e["type"] for e in captured}, results[:5])
    # Idle runs are rare now: the tick only sends one when entries wait.
    assert len(stored) >= len(results) - len(stored), results
