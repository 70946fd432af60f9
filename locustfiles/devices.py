"""A simulated device fleet for the log collector: one Locust user per device.

Each user is a device with its own id (``device-00042``). On every tick it sends its
logs, either one at a time (POST /api/log) or as a batch (POST /api/logs/batch),
with a realistic mix: mostly INFO and DEBUG, some WARNING, few ERROR/CRITICAL;
short messages most of the time, a stack trace now and then; small metric
objects in ``log_data`` and the occasional bulky one. Now and then it reads its
own newest logs (GET /api/logs/<device_id>?limit=20) or the stats.

Devices send exactly once, as the README's retry loop does: each request carries
an ``Idempotency-Key``, and a 502/503/504 or a broken connection is retried with
the same key and the same body (honouring Retry-After, up to 2 s, at most 8
tries); each log carries ``seq`` and the device's ``boot_id``. A retried answer
is not a failure; giving up is. ``--no-exactly-once`` sends neither (to measure
what they cost).

The logs themselves come from ``collector.devtools.fleet`` (the bench's drain
backlog uses the same generators), device ids are checked against the service's
own rule (``collector.core.model.DEVICE_ID_RE``), and the accepted-log count and
the thresholds live in ``accounting.py`` beside this file; the web UI's "Collector logs" tab
(logs/s accepted and persisted, the backlog: Locust counts requests, the
collector logs) lives in ``logcharts.py``. So the fleet needs
the collector installed (``make install``: it is, editable, in .venv/).

Run it::

    locust -f locustfiles/devices.py                        # web UI, 100 devices, nginx on :18723
    locust -f locustfiles/devices.py --headless -t 60s --stop-timeout 10
    locust -f locustfiles/devices.py --headless -u 5 -r 5 -t 5s --host http://127.0.0.1:8001

Locust's own options give the fleet size and target (``--users``, default 100 from
``[tool.locust]`` in pyproject.toml when run from the repository root;
``--spawn-rate``; ``--host``, default http://127.0.0.1:18723). This file adds the
options below (each also settable by the environment variable in brackets, or by
a line in ``[tool.locust]``; the web UI shows
them under "Custom parameters"):

  --batch-size N        logs per POST /api/logs/batch (5) [DEVICES_BATCH_SIZE]
  --rate R              logs per second each device sends; 0 = as fast as it
                        can (1) [DEVICES_RATE]
  --batch-ratio F       share of sends that are batches, 0..1 (0.3) [DEVICES_BATCH_RATIO]
  --read-ratio F        reads per send, 0..1; a tenth of them read /api/stats (0.02)
                        [DEVICES_READ_RATIO]
  --device-prefix P     device ids are P-00001, P-00002, ... (device) [DEVICES_PREFIX]
  --no-exactly-once     no Idempotency-Key, seq or boot_id, no retries [DEVICES_EXACTLY_ONCE=0]
  --max-fail-ratio F    headless runs exit 1 above this failure ratio (0.01)
                        [DEVICES_MAX_FAIL_RATIO]
  --max-p95-ms MS       headless runs exit 1 above this p95, all requests;
                        0 disables (1000) [DEVICES_MAX_P95_MS]
  --accepted-file PATH  at quit, write how many logs got a 2xx [DEVICES_ACCEPTED_FILE]
  --api-key KEY         key every request carries (Authorization: Bearer): a fleet
                        key for the device ids (python -m collector.keys create
                        --prefix P) [DEVICES_API_KEY]
  --reader-key KEY      key for the /api/stats reads, which need a reader or admin
                        key (default: --api-key) [DEVICES_READER_KEY]

Without --api-key the fleet uses COLLECTOR_KEY and COLLECTOR_READER_KEY, from the
environment or from the demo keys `make run` writes (var/demo-keys.env); with no
key at all it sends none (a stack with AUTH_ENABLED=false).

Counting accepted logs: a log counts once its request got any 2xx, because the
collector then owes us a row in PostgreSQL (even if the body were odd, which is
marked as a failure separately). A test can compare the number in
``--accepted-file`` with the rows stored. Users stopped mid-request (Locust kills
them at the end unless ``--stop-timeout`` is given) may leave logs whose fate we
never learn; their number is logged at quit. Pass ``--stop-timeout 10`` when the
count must match the table exactly. In distributed runs (``--processes``,
``--master``/``--worker``) the workers report their counts to the master, which
writes the file and judges the thresholds; device ids then carry the worker's
index (``dev-w1-00042``) so they stay distinct across processes.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import time
import uuid

import gevent
import logcharts  # beside this file, like accounting: the web UI's "Collector logs" tab and chart
from accounting import tally  # beside this file: Locust puts its directory on sys.path
from locust import FastHttpUser, constant, events, task
from locust.runners import WorkerRunner
from locust.user.task import LOCUST_STATE_STOPPING

from collector.core.model import DEVICE_ID_RE
from collector.devtools.demo_keys import DEFAULT_FILE as DEMO_KEYS
from collector.devtools.demo_keys import read_env_file
from collector.devtools.fleet import device_id, make_log

# Share of reads that go to /api/stats rather than the device's own logs.
STATS_SHARE_OF_READS = 0.1
# Retrying a request that may not have been stored: statuses, tries, longest wait.
RETRY_STATUSES = (0, 502, 503, 504)  # 0: no response (connection refused, reset, timeout)
MAX_TRIES = 8
MAX_RETRY_WAIT = 2.0

_device_numbers = itertools.count(1)


# ---------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------

@events.init_command_line_parser.add_listener
def _add_options(parser) -> None:
    group = parser.add_argument_group("device fleet (locustfiles/devices.py)")
    group.add_argument("--batch-size", type=int, env_var="DEVICES_BATCH_SIZE", default=5,
                       help="Logs per POST /api/logs/batch (default 5).")
    group.add_argument("--rate", type=float, env_var="DEVICES_RATE", default=1.0,
                       help="Logs per second each device sends, paced like constant_throughput "
                            "(a batch of 5 counts as 5); 0 sends as fast as the API answers (default 1).")
    group.add_argument("--batch-ratio", type=float, env_var="DEVICES_BATCH_RATIO", default=0.3,
                       help="Share of sends that are batches rather than single logs, 0..1 (default 0.3).")
    group.add_argument("--read-ratio", type=float, env_var="DEVICES_READ_RATIO", default=0.02,
                       help="Reads per send, 0..1: the device reads its own newest 20 logs, "
                            f"or /api/stats for {STATS_SHARE_OF_READS:.0%} of reads (default 0.02).")
    group.add_argument("--device-prefix", env_var="DEVICES_PREFIX", default="device",
                       help="Device ids are <prefix>-00001, <prefix>-00002, ...; a test can use a unique "
                            "prefix to find its own rows (default device, which make run's demo fleet key covers).")
    group.add_argument("--exactly-once", action=argparse.BooleanOptionalAction, env_var="DEVICES_EXACTLY_ONCE",
                       default=True,
                       help="Send an Idempotency-Key with every request and retry 502/503/504 and connection "
                            "errors with it, and number logs with seq/boot_id (default on; --no-exactly-once "
                            "to measure what they cost).")
    group.add_argument("--max-fail-ratio", type=float, env_var="DEVICES_MAX_FAIL_RATIO", default=0.01,
                       help="Headless runs exit with 1 if the failure ratio of all requests exceeds this "
                            "(default 0.01).")
    group.add_argument("--max-p95-ms", type=float, env_var="DEVICES_MAX_P95_MS", default=1000.0,
                       help="Headless runs exit with 1 if the 95th percentile response time of all "
                            "requests exceeds this many ms; 0 disables the check (default 1000).")
    group.add_argument("--accepted-file", env_var="DEVICES_ACCEPTED_FILE", default="",
                       help="At quit, write the number of logs that got a 2xx response to this file "
                            "(one integer), so a test can check they all reached PostgreSQL.")
    # On the parser, not the group: only the parser knows is_secret (masked in the web UI).
    parser.add_argument("--api-key", env_var="DEVICES_API_KEY", default="", is_secret=True,
                        help="Key every request carries (Authorization: Bearer): a fleet key for the device ids, "
                             "from `python -m collector.keys create --prefix <device-prefix>` (default: "
                             "COLLECTOR_KEY, from the environment or var/demo-keys.env; none: no key).")
    parser.add_argument("--reader-key", env_var="DEVICES_READER_KEY", default="", is_secret=True,
                        help="Key for the /api/stats reads, which need a reader or admin key "
                             "(`python -m collector.keys create --role reader`); default: --api-key, or "
                             "COLLECTOR_READER_KEY when --api-key is not given.")


def _validate_options(options) -> None:
    problems = []
    if options.batch_size < 1:
        problems.append("--batch-size must be >= 1")
    if options.rate < 0:
        problems.append("--rate must be >= 0")
    for name in ("batch_ratio", "read_ratio", "max_fail_ratio"):
        if not 0 <= getattr(options, name) <= 1:
            problems.append(f"--{name.replace('_', '-')} must be between 0 and 1")
    if options.max_p95_ms < 0:
        problems.append("--max-p95-ms must be >= 0")
    if not DEVICE_ID_RE.match(device_id(options.device_prefix, 1, worker=99)):
        problems.append(f"--device-prefix {options.device_prefix!r} does not make valid device ids")
    if problems:
        raise SystemExit("devices.py: " + "; ".join(problems))


def _keys(options) -> tuple[str, str]:
    """(fleet key, reader key): the options; else COLLECTOR_KEY and COLLECTOR_READER_KEY from
    the environment or from `make run`'s demo keys file; "" where there is none."""
    if options.api_key:
        return options.api_key, options.reader_key or options.api_key
    demo = read_env_file(DEMO_KEYS)
    fleet = os.environ.get("COLLECTOR_KEY") or demo.get("COLLECTOR_KEY", "")
    reader = (options.reader_key or os.environ.get("COLLECTOR_READER_KEY") or demo.get("COLLECTOR_READER_KEY")
              or fleet)
    return fleet, reader


_auth: dict[str, dict[str, str] | None] = {"fleet": None, "reader": None}


@events.init.add_listener
def _on_init(environment, **kwargs) -> None:
    if environment.parsed_options is not None:
        _validate_options(environment.parsed_options)
        fleet, reader = _keys(environment.parsed_options)
        _auth.update(fleet=_bearer(fleet), reader=_bearer(reader))
    logcharts.install(environment, _auth["reader"])


# ---------------------------------------------------------------------------------------
# The device
# ---------------------------------------------------------------------------------------

class Device(FastHttpUser):
    """One device of the fleet: sends its logs at --rate, reads now and then."""

    host = "http://127.0.0.1:18723"
    # Fail a request rather than wait a minute: nginx gives up on the API after 10 s anyway.
    connection_timeout = 5.0
    network_timeout = 15.0

    def on_start(self) -> None:
        options = self.environment.parsed_options
        runner = self.environment.runner
        # Each process numbers its own devices; workers add their index so ids stay distinct.
        worker = runner.worker_index if isinstance(runner, WorkerRunner) else None
        self.device_id = device_id(options.device_prefix, next(_device_numbers), worker)
        self.seq = 0
        self.boot_id = uuid.uuid4().hex[:12]  # a new counter run each time the device starts
        self.exactly_once = options.exactly_once
        self.auth, self.reader_auth = _auth["fleet"], _auth["reader"]
        # Devices boot at random moments, not in lockstep: the first send comes within one
        # pacing interval.
        mean_logs = 1 + options.batch_ratio * (options.batch_size - 1)
        delay = random.uniform(0, mean_logs / options.rate) if options.rate > 0 else 0.0
        self._next_send = time.monotonic() + delay

    # Pacing is done inside the task, not by wait_time. Locust kills a user that is in
    # wait_time's sleep at once, even with --stop-timeout, and if that sleep ends in the
    # same loop iteration the kill lands in the *next* task, in the middle of a request
    # whose logs are then neither counted nor known lost. A user sleeping inside its task
    # is instead asked to stop (STOPPING) and finishes its request; a kill that raced a
    # wake-up lands in _pace's sleep, before anything is sent.
    wait_time = constant(0)

    def _pace(self, logs: int) -> bool:
        """Sleep until this tick's turn, like constant_throughput counted in logs (a tick of
        n logs is followed by n / rate seconds, no catching up after a slow one); False when
        the user is being stopped meanwhile."""
        gevent.sleep(max(0.0, self._next_send - time.monotonic()))  # always a switch point
        if self._state == LOCUST_STATE_STOPPING:
            return False
        rate = self.environment.parsed_options.rate
        self._next_send = time.monotonic() + (logs / rate if rate > 0 else 0.0)
        return True

    def _log(self) -> dict:
        self.seq += 1
        log = make_log(self.device_id, self.seq)
        if self.exactly_once:
            log.update(seq=self.seq, boot_id=self.boot_id)
        return log

    @task
    def tick(self) -> None:
        options = self.environment.parsed_options
        batch = random.random() < options.batch_ratio
        if not self._pace(options.batch_size if batch else 1):
            return
        if batch:
            self.send_batch(options.batch_size)
        else:
            self.send_one()
        if random.random() < options.read_ratio:
            if random.random() < STATS_SHARE_OF_READS:
                self.read_stats()
            else:
                self.read_own_logs()

    def _post(self, path: str, payload: dict, n_logs: int, check) -> None:
        """POST, count the logs if 2xx, and fail the request unless `check(body)` passes."""
        # If the user is killed during the request (GreenletExit at the end of a run without
        # --stop-timeout), the logs stay counted as in flight and the quit message reports them.
        tally.sending(n_logs)
        headers = dict(self.auth or {})
        if self.exactly_once:
            headers["Idempotency-Key"] = str(uuid.uuid4())
        for attempt in range(1, MAX_TRIES + 1):
            with self.client.post(path, json=payload, name=path, headers=headers, catch_response=True) as resp:
                retry = (self.exactly_once and attempt < MAX_TRIES and resp.status_code in RETRY_STATUSES)
                if retry:
                    # Not a failure: the same key and body again is how a device finds out.
                    resp.success()
                    tally.retried += 1
                    wait = resp.headers.get("Retry-After") if resp.headers else None
                else:
                    tally.answered(n_logs, accepted=200 <= resp.status_code < 300)
                    problem = _queued_problem(resp, check)
                    if problem:
                        resp.failure(problem)
                    else:
                        resp.success()
                    return
            gevent.sleep(min(MAX_RETRY_WAIT, float(wait)) if wait and wait.isdigit() else 0.2)

    def send_one(self) -> None:
        self._post("/api/log", self._log(), 1, lambda body: bool(body.get("message_id")))

    def send_batch(self, size: int) -> None:
        def check(body: dict) -> bool:
            ids = body.get("message_ids")
            return body.get("count") == size and isinstance(ids, list) and len(ids) == size

        self._post("/api/logs/batch", {"logs": [self._log() for _ in range(size)]}, size, check)

    def read_own_logs(self) -> None:
        self._read(f"/api/logs/{self.device_id}?limit=20", "/api/logs/[device_id]", self.auth, "data",
                   "expected 200 with a data list")

    def read_stats(self) -> None:
        self._read("/api/stats", "/api/stats", self.reader_auth, "total_logs", "expected 200 with total_logs")

    def _read(self, path: str, name: str, headers, field: str, expected: str) -> None:
        """GET, retrying 502/503/504 and broken connections as _post does (Retry-After)."""
        for attempt in range(1, MAX_TRIES + 1):
            with self.client.get(path, name=name, headers=headers, catch_response=True) as resp:
                if self.exactly_once and attempt < MAX_TRIES and resp.status_code in RETRY_STATUSES:
                    resp.success()
                    wait = resp.headers.get("Retry-After") if resp.headers else None
                else:
                    body = _json(resp)
                    if resp.status_code != 200 or not isinstance(body, dict) or field not in body:
                        resp.failure(_describe(resp, expected))
                    else:
                        resp.success()
                    return
            gevent.sleep(min(MAX_RETRY_WAIT, float(wait)) if wait and wait.isdigit() else 0.2)


def _bearer(key: str) -> dict[str, str] | None:
    return {"Authorization": f"Bearer {key}"} if key else None


def _json(resp):
    try:
        return resp.json()
    except (ValueError, TypeError):  # not JSON, or no body at all (connection failed)
        return None


def _describe(resp, expected: str) -> str:
    """A short failure text; Locust groups failures by it, so keep it free of per-request ids."""
    if not resp.status_code:
        return f"no response: {type(resp.error).__name__ if resp.error else 'connection failed'}"
    body = _json(resp)
    if isinstance(body, dict) and "error" in body:
        return f"HTTP {resp.status_code} {body['error']}"
    return f"HTTP {resp.status_code}: {expected}"


def _queued_problem(resp, check) -> str | None:
    """Why this ingest response is not {"status": "queued", ...} (None when it is)."""
    body = _json(resp)
    if resp.status_code != 200 or not isinstance(body, dict):
        return _describe(resp, 'expected 200 with {"status": "queued"}')
    if body.get("status") != "queued" or not check(body):
        return f'HTTP 200 but not queued as expected: status={body.get("status")!r}'
    return None
