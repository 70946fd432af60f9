"""A real Redis Cluster of three masters on loopback, for tests of code that talks to
`redis.RedisCluster`: hash slots spread over several processes, MOVED replies and the
one-slot rule of transactions and scripts all behave as they do in production.

    with RedisClusterServers() as cluster:
        client = cluster.client()

No replicas: failover is not what these tests are about, and every node is a process
on a small, shared machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import redis
from redis.crc import key_slot

from collector.devtools.processes import Process, WaitTimeout, redis_server_binary, wait_until

MASTERS = 3  # redis-cli --cluster create refuses fewer
SLOTS = 16384
# Bounds on a broken setup, never a measure of speed: other work shares these 2 cores.
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0


class ClusterError(RuntimeError):
    """The cluster did not form; the message carries the servers' logs."""


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports on 127.0.0.1. Every socket stays bound until all are
    chosen, so the kernel cannot hand out the same port twice."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


class RedisClusterServers:
    """Three redis-server masters, formed into a cluster that covers every slot before
    the constructor returns; `stop()` (or leaving the `with` block) removes all trace."""

    def __init__(self) -> None:
        ports = free_ports(2 * MASTERS)
        # The cluster bus defaults to port + 10000, which may be taken or beyond 65535 for
        # an ephemeral port; a free port of its own (--cluster-port) avoids both.
        self.ports, self._bus_ports = ports[:MASTERS], ports[MASTERS:]
        self.url = f"redis://127.0.0.1:{self.ports[0]}/0"
        self.dirs: list[Path] = []  # kept after stop() so a test can check they are gone
        self._procs: list[Process] = []
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        for port, bus_port in zip(self.ports, self._bus_ports, strict=True):
            directory = Path(tempfile.mkdtemp(prefix=f"redis-cluster-{port}-"))
            self.dirs.append(directory)
            # Output to a file: a pipe nobody reads would block the server once full.
            self._procs.append(Process(f"redis-cluster-{port}", [
                redis_server_binary(), "--port", str(port), "--cluster-port", str(bus_port), "--dir", str(directory),
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000",
                "--appendonly", "no", "--save", "", "--maxmemory-policy", "noeviction", "--daemonize", "no",
                "--bind", "127.0.0.1", "--protected-mode", "no",
            ], os.environ.copy(), directory / "redis.log", cwd=directory).start())
        # redis-cli --cluster create gives up at once on a node that does not answer yet.
        for port in self.ports:
            self._wait(lambda port=port: self._ping(port), f"redis-server on 127.0.0.1:{port}")
        created = subprocess.run(
            [shutil.which("redis-cli") or "/usr/bin/redis-cli", "--cluster", "create",
             *(f"127.0.0.1:{port}" for port in self.ports), "--cluster-replicas", "0", "--cluster-yes"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=READY_TIMEOUT * 2)
        if created.returncode:
            raise ClusterError(f"redis-cli --cluster create failed:\n{created.stdout}{created.stderr}\n{self.logs()}")
        # redis-cli returns once the nodes agree on the slots; each node declares the cluster
        # ok a little later, and a client that connects before then gets CLUSTERDOWN.
        self._wait(self._formed, "cluster_state:ok with all slots assigned on every node")

    def _wait(self, predicate, what: str) -> None:
        try:
            wait_until(predicate, READY_TIMEOUT, what, interval=0.1, check=self._check_alive)
        except WaitTimeout as exc:
            raise ClusterError(f"{exc}\n{self.logs()}") from None

    def _check_alive(self) -> None:
        if dead := [proc.name for proc in self._procs if not proc.alive()]:
            raise ClusterError(f"{', '.join(dead)} exited\n{self.logs()}")

    @staticmethod
    def _node(port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, socket_connect_timeout=5)

    def _ping(self, port: int) -> bool:
        with self._node(port) as node:
            return node.ping()

    def _formed(self) -> bool:
        for port in self.ports:
            with self._node(port) as node:
                info = node.execute_command("CLUSTER INFO")  # redis-py parses it into a dict
            if (info["cluster_state"] != "ok" or int(info["cluster_slots_assigned"]) != SLOTS
                    or int(info["cluster_known_nodes"]) != MASTERS):
                return False
        return True

    def logs(self, lines: int = 30) -> str:
        """The end of every server's log, for error messages."""
        out = []
        for proc in self._procs:
            tail = proc.output().splitlines()[-lines:]
            out.append(f"--- {proc.log_path} ---\n" + "\n".join(tail))
        return "\n".join(out)

    def client(self, **kwargs) -> redis.RedisCluster:
        return redis.RedisCluster.from_url(self.url, **kwargs)

    def node_of(self, key: str | bytes) -> int:
        """The port of the master that owns `key`'s slot, asked of the cluster itself rather
        than of redis-py, so tests can check the client against it."""
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        with self._node(self.ports[0]) as node:
            for start, end, (_host, port, *_), *_replicas in node.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    return port
        raise LookupError(f"no master owns slot {slot}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; safe to call more than once."""
        for proc in self._procs:
            proc.signal(signal.SIGTERM)  # all at once, so the nodes shut down side by side
        for proc in self._procs:
            proc.stop(timeout=STOP_TIMEOUT)
        self._procs = []
        for directory in self.dirs:
            shutil.rmtree(directory, ignore_errors=True)

    def __enter__(self) -> RedisClusterServers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
