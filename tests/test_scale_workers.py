"""Many workers on many hosts (issue 16, item 3): four Celery workers under four node
names, as on four hosts, drain one stream through one consumer group; a second beat
started by mistake doubles the ticks but not the drain (each tick claims its slot in
Redis: collector.pipeline.ticks); a worker killed with SIGKILL has its entries reclaimed
by the others once its consumer lease lapses. Every accepted log is stored exactly once.

Real processes (Gunicorn, four Celery workers, beat), the machine's Redis and
PostgreSQL under the test's own key prefix and database, as in tests/test_faults.py."""

from __future__ import annotations

import json
import shelve
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest
import redis
from celery import current_app

from collector.core.settings import Settings, load_settings
from collector.devtools.processes import wait_until
from collector.pipeline import shards
from tasks.celery_app import make_celery
from tests.stack import BIN, Stack
from tests.test_faults import assert_exactly_once, count

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Four node names on four (pretend) hosts: a worker's consumers are named after its node.
NODES = [f"w{i}@host{i}" for i in range(1, 5)]
# Half of the first test's logs come from one device. Sizes are kept moderate because
# tests.test_faults.assert_exactly_once takes time quadratic in the number of logs.
HALF = 8_000
RECLAIMED = "reclaimed the entries of a consumer whose lease lapsed"  # collector.pipeline.drain._reclaim


class Fleet(Stack):
    """A Stack whose workers take a node name of their own (Stack.start_worker gives every
    worker `test@%h`) and that can run more than one beat, each with its own schedule file
    (as on two hosts)."""

    def start_worker_on(self, node: str, concurrency: int = 1) -> None:
        self._start(node, [str(BIN / "celery"), "-A", "tasks.celery_app", "worker", "-n", node,
                           "--concurrency", str(concurrency), "--loglevel", "INFO"],
                    INSTANCE_NAME=f"worker-{node.partition('@')[2]}", WORKER_METRICS_PORT="0")

    def start_beat_on(self, host: str) -> Path:
        """A beat process named `beat@<host>`; returns its schedule file."""
        schedule = self.log_dir / f"beat-schedule-{host}"
        self._start(f"beat@{host}", [str(BIN / "celery"), "-A", "tasks.celery_app", "beat", "--loglevel", "INFO"],
                    INSTANCE_NAME=f"beat-{host}", BEAT_SCHEDULE_FILE=str(schedule))
        return schedule

    def stop(self) -> None:
        """Every process at once (each gets SIGTERM, then SIGKILL after its grace period):
        four workers' warm shutdowns one after the other would cost seconds."""
        threads = [threading.Thread(target=proc.stop) for proc in self._all]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


@pytest.fixture
def make_fleet(base_settings, tmp_path, request):
    fleets: list[Fleet] = []

    def make(**env: str) -> Fleet:
        env = {"REDIS_URL": base_settings.redis_url, "DATABASE_URL": base_settings.database_url,
               "KEY_PREFIX": f"{base_settings.key_prefix}{request.node.name}:", "DRAIN_INTERVAL": "0.5",
               "CONSUMER_LEASE_SECONDS": "3", **env}
        fleets.append(Fleet(env, tmp_path))
        return fleets[-1]

    yield make
    for fleet in fleets:
        fleet.stop()
        for node in NODES:  # shown by pytest only when the test failed
            if node in fleet.procs:
                sys.stderr.write(f"--- {node} (tail) ---\n{fleet.tail(node, 1500)}\n")


@pytest.fixture
def redis_of():
    clients: list[redis.Redis] = []

    def connect(settings: Settings) -> redis.Redis:
        clients.append(redis.Redis.from_url(settings.redis_url))
        return clients[-1]

    yield connect
    for client in clients:
        client.close()


def start_workers(fleet: Fleet, settings: Settings) -> None:
    """The four workers, answering `ping` by their node names before any load starts (so
    that none misses the start of the load because it was still importing)."""
    for node in NODES:
        fleet.start_worker_on(node)
    previous = current_app._get_current_object()
    app = make_celery(settings)
    try:
        def all_answer() -> bool:
            return set(NODES) <= {node for reply in app.control.ping(timeout=1.0) for node in reply}

        def still_running() -> None:
            if dead := [node for node in NODES if not fleet.procs[node].alive()]:
                raise AssertionError(f"{dead} exited: {fleet.tail(dead[0])}")

        wait_until(all_answer, 120, "the four workers to answer ping", interval=0.5, check=still_running)
    finally:
        app.close()
        previous.set_current()


def node_of(consumer: str) -> str:
    """The worker node a consumer belongs to: consumer names are `<node>-<pool index>`,
    plus `~n` for a spare name (tasks.drain.consumer_name, pipeline.consumers)."""
    return next(node for node in NODES if consumer.startswith(f"{node}-"))


def stored_by_node(database_url: str, device: str | None = None) -> Counter[str]:
    """Logs inserted per worker node, from the counters each drain transaction moves under
    its consumer's name (log_counts.writer; device_counts per device): a row is counted by
    the consumer whose transaction inserted it, and by no other."""
    with psycopg.connect(database_url) as conn:
        if device is None:
            rows = conn.execute("SELECT writer, sum(n) FROM log_counts GROUP BY writer").fetchall()
        else:
            rows = conn.execute("SELECT writer, sum(debug + info + warning + error + critical) FROM device_counts"
                                " WHERE device_id = %s GROUP BY writer", (device,)).fetchall()
    by_node: Counter[str] = Counter()
    for writer, n in rows:
        by_node[node_of(writer)] += n
    return +by_node


def consumer_names(client: redis.Redis, settings: Settings) -> list[str]:
    return [c["name"].decode() for c in client.xinfo_consumers(settings.stream, settings.consumer_group)]


# Drain ticks to see claimed before the beats stop: with n per beat the bound
# max(sent) * 1.25 + 5 < sum(sent) needs n above 20.
MIN_CLAIMS = 30


class TickClaims:
    """Counts the drain tick's claims in Redis (collector.pipeline.ticks: SET NX PX of
    0.9 × DRAIN_INTERVAL) by polling the token's TTL: a new claim shows as the TTL going up
    (or the token appearing). A missed sample can only miss a claim, never add one."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client, self.key = client, settings.key("tick:drain")
        self.claims = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> TickClaims:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(10)
        return self.claims

    def _run(self) -> None:
        last = -2
        while not self._stop.wait(0.02):
            ttl = self.client.pttl(self.key)
            if ttl > 0 and (last <= 0 or ttl > last):
                self.claims += 1
            last = ttl


@pytest.fixture
def watch_claims(redis_of):
    """TickClaims(...).start(), stopped at the end of the test even when it fails half-way
    (before its Redis client is closed)."""
    watches: list[TickClaims] = []

    def start(settings: Settings) -> TickClaims:
        watches.append(TickClaims(redis_of(settings), settings).start())
        return watches[-1]

    yield start
    for watch in watches:
        watch.stop()


def ticks_sent(schedule: Path) -> int:
    """How many drain ticks a beat sent: the run count beat keeps for its entry in its
    schedule file (written when it stops on SIGTERM)."""
    with shelve.open(str(schedule), flag="r") as store:
        return store["entries"]["drain-stream"].total_run_count


def test_four_workers_on_four_hosts_and_two_beats_store_a_skewed_load_exactly_once(
        make_fleet, fresh_db, start_load, redis_of, watch_claims):
    """A task per run (DRAIN_TASK_SECONDS=0): every full run sends the next one as its own
    message, so the drain's 160-odd runs go through the broker one by one and every
    worker takes part; with the default one task can carry a short load's runs alone."""
    fleet = make_fleet(DRAIN_TASK_SECONDS="0")
    settings = load_settings(fleet.env)
    client = redis_of(settings)
    api = fleet.start_api(0)
    claims = watch_claims(settings)
    schedules = [fleet.start_beat_on("host1"), fleet.start_beat_on("host2")]  # the second by mistake
    start_workers(fleet, settings)

    # 16 devices share half the logs; one device sends the other half, in batches of 100.
    fleet_load = start_load(api, target=HALF, threads=16, tag="fleet")
    hot_load = start_load(api, target=HALF, threads=1, batch=100, tag="hot")
    fleet_load.wait()
    hot_load.wait()
    assert_exactly_once([fleet_load, hot_load], fresh_db, api)

    accepted = len(fleet_load.accepted) + len(hot_load.accepted)  # threads overshoot the target a little
    by_node = stored_by_node(fresh_db)
    assert sum(by_node.values()) == count(fresh_db) == accepted
    assert set(by_node) == set(NODES), f"a worker stored nothing: {dict(by_node)}"
    hot_by_node = stored_by_node(fresh_db, "hot-00")
    assert sum(hot_by_node.values()) == len(hot_load.accepted) == HALF  # one thread: exact
    assert len(hot_by_node) > 1, f"one worker stored the busy device alone: {dict(hot_by_node)}"
    names = consumer_names(client, settings)
    assert sorted(names) == sorted(f"{node}-1" for node in NODES), names  # one consumer per node, no spares

    # Both beats sent ticks all along; the claims in Redis stayed those of one beat. Enough
    # ticks for the bound below to tell one beat from two, however fast the load went.
    wait_until(lambda: claims.claims >= MIN_CLAIMS, 120, f"{MIN_CLAIMS} drain ticks claimed", interval=0.5)
    for beat in ("beat@host2", "beat@host1"):
        fleet.procs[beat].stop()
        assert fleet.procs[beat].returncode == 0, fleet.tail(beat)
    claimed = claims.stop()
    sent = [ticks_sent(schedule) for schedule in schedules]
    assert min(sent) >= MIN_CLAIMS // 2, f"a beat did not tick: {sent}"
    # Claims are at least 0.9 × DRAIN_INTERVAL apart (the token's lifetime), so while one
    # beat sends n ticks at most about n / 0.9 are claimed, whatever a second one sends;
    # without the claim every tick of both would count (sum(sent)).
    assert 0 < claimed <= max(sent) * 1.25 + 5 < sum(sent), f"{claimed} ticks claimed of {sent} sent"
    sys.stderr.write(f"stored by node {dict(by_node)}; hot device by node {dict(hot_by_node)}; "
                     f"ticks sent {sent}, claimed {claimed}\n")


def freeze_a_worker_holding_entries(fleet: Fleet, client: redis.Redis, settings: Settings) -> tuple[str, str]:
    """SIGSTOP (the whole process group) a worker whose consumer has entries delivered but
    not acknowledged, in any stream shard, and return (node, consumer). A stopped process
    sends nothing more; the short pause lets a reply it had already sent (an XACK) reach
    Redis first."""
    group = settings.consumer_group

    def attempt() -> tuple[str, str] | None:
        for stream in (shard.stream for shard in shards.shards(settings)):
            for consumer in client.xinfo_consumers(stream, group):
                name = consumer["name"].decode()
                if consumer["pending"] == 0:
                    continue
                node = node_of(name)
                fleet.procs[node].signal(signal.SIGSTOP)
                try:
                    time.sleep(0.05)
                    if client.xpending_range(stream, group, "-", "+", 1, consumername=name):
                        return node, name
                except BaseException:
                    fleet.procs[node].signal(signal.SIGCONT)
                    raise
                fleet.procs[node].signal(signal.SIGCONT)
        return None

    return wait_until(attempt, 120, "a worker holding entries in flight", interval=0.02)


def reclaimed_from(fleet: Fleet, consumer: str) -> int:
    """Entries the live workers' logs say they reclaimed from `consumer` (JSON lines)."""
    total = 0
    for node in NODES:
        for line in fleet.procs[node].output().splitlines():
            if RECLAIMED not in line:
                continue
            record = json.loads(line)
            if record.get("message") == RECLAIMED and record.get("from") == consumer:
                total += record["entries"]
    return total


def test_a_worker_killed_with_sigkill_under_load_has_its_entries_reclaimed_by_the_others(
        make_fleet, fresh_db, start_load, redis_of):
    """The default DRAIN_TASK_SECONDS (runs carried by one task for up to 1 s); leases of
    3 s, so the dead worker's name lapses quickly."""
    fleet = make_fleet()
    settings = load_settings(fleet.env)
    client = redis_of(settings)
    api = fleet.start_api(0)
    fleet.start_beat_on("host1")
    start_workers(fleet, settings)

    load = start_load(api, target=6_000, threads=16, tag="kill9")
    node, consumer = freeze_a_worker_holding_entries(fleet, client, settings)
    fleet.kill(node, signal.SIGKILL)  # the worker and its pool child, mid-batch
    held = client.xpending_range(settings.stream, settings.consumer_group, "-", "+", 100_000, consumername=consumer)
    assert held, "the killed worker held no entries"
    # Accepted after the kill: the three others drain under load whatever the machine's speed.
    after = start_load(api, target=6_000, threads=16, tag="kill9-after")
    load.wait()
    after.wait()
    assert_exactly_once([load, after], fresh_db, api)

    # What it held went to the others, once each (an entry reclaimed twice would be counted twice).
    assert reclaimed_from(fleet, consumer) == len(held)
    # With nothing pending and no lease, its name leaves the group at the next reclaim.
    wait_until(lambda: consumer not in consumer_names(client, settings), 60, f"{consumer} to leave the group")
    sys.stderr.write(f"killed {node} holding {len(held)} entries; stored by node {dict(stored_by_node(fresh_db))}\n")
