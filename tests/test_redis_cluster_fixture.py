"""The Redis Cluster fixture is a real cluster: keys spread over three processes, and
the one-slot rule for transactions and scripts is enforced as it is in production, so
tests of cluster-mode code can rely on it."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import redis

from collector.devtools.processes import port_in_use
from tests.redis_cluster import RedisClusterServers

# One device's keys share a hash tag, so they live in one slot (as the collector's would).
STREAM, COUNTS = "{device-7}:stream", "{device-7}:counts"


@pytest.fixture(scope="module")
def cluster():
    with RedisClusterServers() as servers:
        yield servers


def tags_by_master(cluster: RedisClusterServers) -> dict[int, str]:
    """A hash tag for each master, found by asking the cluster where each slot lives."""
    found: dict[int, str] = {}
    for i in itertools.count():
        tag = f"{{device-{i}}}"
        found.setdefault(cluster.node_of(tag), tag)
        if len(found) == len(cluster.ports):
            return found


def redis_servers_on(ports: list[int]) -> list[str]:
    """Command lines of live redis-server processes on any of `ports` (Redis retitles
    itself `redis-server 127.0.0.1:PORT [cluster]`; argv still names `--port PORT`)."""
    pattern = re.compile(r"(:|--port )(" + "|".join(map(str, ports)) + r")\b")
    found = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            cmdline = path.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process exited while we looked
            continue
        if "redis-server" in cmdline and pattern.search(cmdline):
            found.append(cmdline)
    return found


def test_hash_tags_land_on_different_masters(cluster: RedisClusterServers) -> None:
    client = cluster.client()
    tags = tags_by_master(cluster)
    assert sorted(tags) == sorted(cluster.ports)
    for port, tag in tags.items():
        key = f"{tag}:owner"
        client.set(key, port)
        assert client.get_node_from_key(key).port == port  # redis-py agrees with the cluster
        # The key lives in that process only: any other master redirects.
        with redis.Redis(port=port) as owner:
            assert owner.get(key) == str(port).encode()
        for other in set(cluster.ports) - {port}:
            with redis.Redis(port=other) as stranger, pytest.raises(redis.exceptions.MovedError):
                stranger.get(key)


def test_transaction_and_script_on_one_hash_tag(cluster: RedisClusterServers) -> None:
    client = cluster.client()
    client.delete(STREAM, COUNTS)
    pipe = client.pipeline(transaction=True)
    pipe.xadd(STREAM, {"line": "a"})
    pipe.hincrby(COUNTS, "accepted", 1)
    entry_id, accepted = pipe.execute()
    assert client.xrange(STREAM) == [(entry_id, {b"line": b"a"})] and accepted == 1

    # All or nothing (MULTI/EXEC): a command Redis refuses while queueing (wrong arity)
    # aborts the transaction, and the XADD queued before it never runs.
    pipe = client.pipeline(transaction=True)
    pipe.xadd(STREAM, {"line": "lost"})
    pipe.execute_command("HINCRBY", COUNTS, "accepted")
    with pytest.raises(redis.exceptions.ResponseError):
        pipe.execute(raise_on_error=False)
    assert client.xlen(STREAM) == 1 and client.hget(COUNTS, "accepted") == b"1"

    script = client.register_script(
        "redis.call('XADD', KEYS[1], '*', 'line', ARGV[1]) return redis.call('HINCRBY', KEYS[2], 'accepted', 1)")
    assert script(keys=[STREAM, COUNTS], args=["b"]) == 2
    client.script_flush()  # as after a node restart: register_script loads it again by itself
    assert script(keys=[STREAM, COUNTS], args=["c"]) == 3
    assert [fields[b"line"] for _, fields in client.xrange(STREAM)] == [b"a", b"b", b"c"]


def test_cross_slot_transaction_and_script_are_refused(cluster: RedisClusterServers) -> None:
    client = cluster.client()
    first, second = (f"{tag}:k" for tag in list(tags_by_master(cluster).values())[:2])
    client.delete(first, second)
    # Not a redis.RedisError: redis-py refuses before sending anything.
    with pytest.raises(redis.exceptions.CrossSlotTransactionError):
        pipe = client.pipeline(transaction=True)
        pipe.set(first, 1)
        pipe.set(second, 1)
        pipe.execute()
    with pytest.raises(redis.exceptions.RedisClusterException, match="same key slot"):
        client.register_script("return redis.call('SET', KEYS[2], 1)")(keys=[first, second])
    assert client.exists(first, second) == 0


def test_stop_leaves_nothing_behind() -> None:
    with RedisClusterServers() as servers:
        assert len(redis_servers_on(servers.ports)) == 3
        assert servers.client().ping()
    assert redis_servers_on(servers.ports) == []
    assert not any(port_in_use(port) for port in servers.ports)
    assert not any(directory.exists() for directory in servers.dirs)
    servers.stop()  # a second stop is harmless
