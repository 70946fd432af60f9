"""A simulated device fleet for the log collector: one Locust user per device.

Each user is a device with its own id (``dev-00042``). On every tick it sends its
logs, either one at a time (POST /api/log) or as a batch (POST /api/logs/batch),
with a realistic mix: mostly INFO and DEBUG, some WARNING, few ERROR/CRITICAL;
short messages most of the time, a stack trace now and then; small metric
objects in ``log_data`` and the occasional bulky one. Now and then it reads its
own newest logs (GET /api/logs/<device_id>?limit=20) or the stats.

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
  --device-prefix P     device ids are P-00001, P-00002, ... (dev) [DEVICES_PREFIX]
  --max-fail-ratio F    headless runs exit 1 above this failure ratio (0.01)
                        [DEVICES_MAX_FAIL_RATIO]
  --max-p95-ms MS       headless runs exit 1 above this p95, all requests;
                        0 disables (1000) [DEVICES_MAX_P95_MS]
  --accepted-file PATH  at quit, write how many logs got a 2xx [DEVICES_ACCEPTED_FILE]

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

import datetime as dt
import itertools
import logging
import os
import random
import re
import string
import time

import gevent
from locust import FastHttpUser, constant, events, task
from locust.runners import MasterRunner, WorkerRunner
from locust.user.task import LOCUST_STATE_STOPPING

log = logging.getLogger("devices")

# Same rule as collector.schemas.DEVICE_ID_PATTERN (not imported: the locustfile must
# run from a machine that only has Locust installed).
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}$")

# Level mix of a healthy fleet: chatty INFO/DEBUG, rare trouble.
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LEVEL_WEIGHTS = (25, 60, 10, 4, 1)

# Share of reads that go to /api/stats rather than the device's own logs.
STATS_SHARE_OF_READS = 0.1

MESSAGES = {
    "DEBUG": (
        "poll cycle {n} finished in {ms} ms",
        "sensor {sensor} raw={value} filtered={value2}",
        "mqtt keepalive sent, rtt {ms} ms",
        "cache hit ratio {pct}% over {n} lookups",
    ),
    "INFO": (
        "temperature {value} °C, humidity {pct}%",
        "heartbeat ok, uptime {n} s",
        "uploaded {n} readings in {ms} ms",
        "firmware {fw} running, config rev {n}",
        "door sensor {sensor} state changed to {state}",
        "battery at {pct}%, charging={flag}",
    ),
    "WARNING": (
        "battery low: {pct}%",
        "wifi signal weak: {rssi} dBm, retrying in {n} s",
        "sensor {sensor} reading out of range: {value}",
        "clock drift of {ms} ms corrected by NTP",
    ),
    "ERROR": (
        "upload failed after {n} attempts: connection reset by peer",
        "sensor {sensor} not responding (i2c timeout after {ms} ms)",
        "config checksum mismatch, falling back to rev {n}",
    ),
    "CRITICAL": (
        "watchdog reset imminent: main loop stalled for {ms} ms",
        "storage full ({pct}%), dropping readings",
        "overheat: {value} °C, shutting down actuators",
    ),
}
SENSORS = ("temp0", "temp1", "hum0", "door", "accel", "press0", "lux")
FIRMWARE = ("1.4.2", "1.4.3", "1.5.0-rc1", "2.0.1")


def _stack_trace() -> str:
    """A multi-line trace, as devices attach to errors: the big messages in the mix."""
    frames = random.randint(8, 40)
    return "Traceback (most recent call last):\n" + "".join(
        f'  File "/opt/fw/{random.choice(SENSORS)}/driver_{i}.py", line {random.randint(1, 900)}, '
        f"in {random.choice(('read', 'poll', 'flush', 'send', 'retry'))}\n"
        f"    {''.join(random.choices(string.ascii_lowercase + ' ._()=', k=random.randint(20, 70)))}\n"
        for i in range(frames)
    ) + "TimeoutError: device did not answer"


def make_message(level: str) -> str:
    text = random.choice(MESSAGES[level]).format(
        n=random.randint(1, 100_000), ms=random.randint(1, 5000), sensor=random.choice(SENSORS),
        value=round(random.uniform(-20, 85), 2), value2=round(random.uniform(-20, 85), 2),
        pct=random.randint(0, 100), fw=random.choice(FIRMWARE), state=random.choice(("open", "closed")),
        flag=random.choice(("true", "false")), rssi=random.randint(-95, -60),
    )
    if level in ("ERROR", "CRITICAL") and random.random() < 0.5:
        text += "\n" + _stack_trace()  # 1-4 KB, well under MAX_MESSAGE_CHARS (10,000)
    elif random.random() < 0.02:
        text += " | " + " ".join(random.choices(SENSORS, k=random.randint(50, 200)))  # chatty dump
    return text


def make_log_data(level: str, seq: int) -> dict | None:
    """None for ~30% of logs; small metrics mostly; now and then a bulky reading set."""
    roll = random.random()
    if roll < 0.3:
        return None
    data: dict = {"seq": seq, "fw": random.choice(FIRMWARE), "uptime_s": random.randint(0, 10**7)}
    if level in ("ERROR", "CRITICAL"):
        data.update(error_code=f"E{random.randint(100, 999)}", trace_id=f"{random.getrandbits(64):016x}")
    if roll > 0.97:
        # A few KB of readings, under MAX_LOG_DATA_BYTES (16 KiB) as compact JSON.
        data["readings"] = [
            {"t": i, "sensor": random.choice(SENSORS), "v": round(random.uniform(0, 100), 3)}
            for i in range(random.randint(20, 120))
        ]
    else:
        data["metrics"] = {s: round(random.uniform(0, 100), 2) for s in random.sample(SENSORS, 3)}
    return data


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
    group.add_argument("--device-prefix", env_var="DEVICES_PREFIX", default="dev",
                       help="Device ids are <prefix>-00001, <prefix>-00002, ...; a test can use a unique "
                            "prefix to find its own rows (default dev).")
    group.add_argument("--max-fail-ratio", type=float, env_var="DEVICES_MAX_FAIL_RATIO", default=0.01,
                       help="Headless runs exit with 1 if the failure ratio of all requests exceeds this "
                            "(default 0.01).")
    group.add_argument("--max-p95-ms", type=float, env_var="DEVICES_MAX_P95_MS", default=1000.0,
                       help="Headless runs exit with 1 if the 95th percentile response time of all "
                            "requests exceeds this many ms; 0 disables the check (default 1000).")
    group.add_argument("--accepted-file", env_var="DEVICES_ACCEPTED_FILE", default="",
                       help="At quit, write the number of logs that got a 2xx response to this file "
                            "(one integer), so a test can check they all reached PostgreSQL.")


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
    if not DEVICE_ID_RE.match(f"{options.device_prefix}-w99-00001"):
        problems.append(f"--device-prefix {options.device_prefix!r} does not make valid device ids")
    if problems:
        raise SystemExit("devices.py: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------
# Accepted-log bookkeeping (per process; workers report to the master)
# ---------------------------------------------------------------------------------------

class Tally:
    """Logs that got a 2xx, and logs whose request is still out (their fate unknown)."""

    def __init__(self) -> None:
        self.accepted = 0          # total for this process (or, on a master, the fleet)
        self.unreported = 0        # on a worker: accepted since the last report to the master
        self.in_flight = 0

    def reset(self) -> None:
        self.accepted = self.unreported = self.in_flight = 0


tally = Tally()
_device_numbers = itertools.count(1)


@events.init.add_listener
def _on_init(environment, **kwargs) -> None:
    if environment.parsed_options is not None:
        _validate_options(environment.parsed_options)

    if isinstance(environment.runner, WorkerRunner):
        @environment.events.report_to_master.add_listener
        def _report(client_id, data, **kw) -> None:
            data["devices_accepted_logs"] = tally.unreported
            data["devices_in_flight_logs"] = tally.in_flight
            tally.unreported = 0

    if isinstance(environment.runner, MasterRunner):
        in_flight_by_worker: dict[str, int] = {}

        @environment.events.worker_report.add_listener
        def _collect(client_id, data, **kw) -> None:
            tally.accepted += data.get("devices_accepted_logs", 0)
            in_flight_by_worker[client_id] = data.get("devices_in_flight_logs", 0)
            tally.in_flight = sum(in_flight_by_worker.values())


@events.test_start.add_listener
def _on_test_start(environment, **kwargs) -> None:
    # A new test from the web UI starts counting from zero, like Locust's own stats.
    tally.reset()


@events.quitting.add_listener
def _on_quitting(environment, **kwargs) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return  # the master judges and writes, from the whole fleet's numbers
    options = environment.parsed_options
    if tally.in_flight:
        log.warning("%d log(s) were in flight when users were stopped: they may or may not be stored "
                    "(use --stop-timeout to let requests finish)", tally.in_flight)
    log.info("accepted logs (2xx): %d", tally.accepted)
    if options is None:
        return
    if options.accepted_file:
        tmp = f"{options.accepted_file}.tmp"
        with open(tmp, "w") as fh:
            fh.write(f"{tally.accepted}\n")
        os.replace(tmp, options.accepted_file)  # a reader never sees a half-written file
    if options.headless or options.autostart:
        _judge(environment, options)


def _judge(environment, options) -> None:
    """Set the exit code from the thresholds, replacing Locust's "any failure is 1" rule."""
    total = environment.stats.total
    missed = []
    if total.num_requests == 0:
        missed.append("no requests were made")
    if total.fail_ratio > options.max_fail_ratio:
        missed.append(f"failure ratio {total.fail_ratio:.2%} > {options.max_fail_ratio:.2%}")
    p95 = total.get_response_time_percentile(0.95) or 0
    if options.max_p95_ms and p95 > options.max_p95_ms:
        missed.append(f"p95 {p95:g} ms > {options.max_p95_ms:g} ms")
    if missed:
        log.error("thresholds missed: %s", "; ".join(missed))
        environment.process_exit_code = 1
    elif environment.runner is not None and environment.runner.exceptions:
        pass  # an exception in this file is a bug: keep Locust's own non-zero exit code
    else:
        log.info("thresholds met: failure ratio %.2f%%, p95 %.0f ms", total.fail_ratio * 100, p95)
        environment.process_exit_code = 0


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
        worker = f"w{runner.worker_index}-" if isinstance(runner, WorkerRunner) else ""
        self.device_id = f"{options.device_prefix}-{worker}{next(_device_numbers):05d}"
        self.seq = 0
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
        level = random.choices(LEVELS, LEVEL_WEIGHTS)[0]
        body = {"device_id": self.device_id, "log_level": level, "message": make_message(level)}
        data = make_log_data(level, self.seq)
        if data is not None:
            body["log_data"] = data
        if random.random() < 0.9:  # most devices stamp their logs; the rest let the server do it
            body["timestamp"] = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        return body

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
        tally.in_flight += n_logs
        with self.client.post(path, json=payload, name=path, catch_response=True) as resp:
            tally.in_flight -= n_logs
            if 200 <= resp.status_code < 300:
                tally.accepted += n_logs
                tally.unreported += n_logs
            problem = _queued_problem(resp, check)
            if problem:
                resp.failure(problem)
            else:
                resp.success()

    def send_one(self) -> None:
        self._post("/api/log", self._log(), 1, lambda body: bool(body.get("message_id")))

    def send_batch(self, size: int) -> None:
        def check(body: dict) -> bool:
            ids = body.get("message_ids")
            return body.get("count") == size and isinstance(ids, list) and len(ids) == size

        self._post("/api/logs/batch", {"logs": [self._log() for _ in range(size)]}, size, check)

    def read_own_logs(self) -> None:
        with self.client.get(f"/api/logs/{self.device_id}?limit=20", name="/api/logs/[device_id]",
                             catch_response=True) as resp:
            body = _json(resp)
            if resp.status_code != 200 or not isinstance(body, dict) or not isinstance(body.get("data"), list):
                resp.failure(_describe(resp, "expected 200 with a data list"))
            else:
                resp.success()

    def read_stats(self) -> None:
        with self.client.get("/api/stats", name="/api/stats", catch_response=True) as resp:
            body = _json(resp)
            if resp.status_code != 200 or not isinstance(body, dict) or "total_logs" not in body:
                resp.failure(_describe(resp, "expected 200 with total_logs"))
            else:
                resp.success()


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
