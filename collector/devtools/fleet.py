"""What a simulated device sends: its id, and logs with a realistic mix of levels and sizes.

The Locust fleet (locustfiles/devices.py) and the bench's drain backlog
(bench/drain.py) both build their logs here, so a drain figure is measured on the
same kind of logs as the ingest figures. The mix: mostly INFO and DEBUG, some
WARNING, few ERROR/CRITICAL; short messages most of the time, a stack trace (1-4 KB)
on half the errors, a chatty dump now and then; small metric objects in
``log_data`` for most logs and, rarely, a bulky reading set of a few KB.

Every function takes the random generator to draw from (``rng``): the fleet uses
a shared one, the bench a seeded one, so its backlog is the same on every run.
Nothing here knows Locust or the network.
"""

from __future__ import annotations

import datetime as dt
import random
import string

from collector.core.model import LEVELS

# Level mix of a healthy fleet: chatty INFO/DEBUG, rare trouble (weights in LEVELS order).
LEVEL_WEIGHTS = (25, 60, 10, 4, 1)

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

# Share of logs a device stamps itself; the server stamps the rest on receipt.
STAMPED_SHARE = 0.9

# The generator used when the caller passes none (the fleet's devices share it).
_shared = random.Random()


def device_id(prefix: str, number: int, worker: int | None = None) -> str:
    """``dev-00042``; with a Locust worker index, ``dev-w1-00042``, so ids stay distinct
    across load-generating processes."""
    return f"{prefix}-{'' if worker is None else f'w{worker}-'}{number:05d}"


def pick_level(rng: random.Random = _shared) -> str:
    return rng.choices(LEVELS, LEVEL_WEIGHTS)[0]


def stack_trace(rng: random.Random = _shared) -> str:
    """A multi-line trace, as devices attach to errors: the big messages in the mix."""
    frames = rng.randint(8, 40)
    return "Traceback (most recent call last):\n" + "".join(
        f'  File "/opt/fw/{rng.choice(SENSORS)}/driver_{i}.py", line {rng.randint(1, 900)}, '
        f"in {rng.choice(('read', 'poll', 'flush', 'send', 'retry'))}\n"
        f"    {''.join(rng.choices(string.ascii_lowercase + ' ._()=', k=rng.randint(20, 70)))}\n"
        for i in range(frames)
    ) + "TimeoutError: device did not answer"


def make_message(level: str, rng: random.Random = _shared) -> str:
    text = rng.choice(MESSAGES[level]).format(
        n=rng.randint(1, 100_000), ms=rng.randint(1, 5000), sensor=rng.choice(SENSORS),
        value=round(rng.uniform(-20, 85), 2), value2=round(rng.uniform(-20, 85), 2),
        pct=rng.randint(0, 100), fw=rng.choice(FIRMWARE), state=rng.choice(("open", "closed")),
        flag=rng.choice(("true", "false")), rssi=rng.randint(-95, -60),
    )
    if level in ("ERROR", "CRITICAL") and rng.random() < 0.5:
        text += "\n" + stack_trace(rng)  # 1-4 KB, well under MAX_MESSAGE_CHARS (10,000)
    elif rng.random() < 0.02:
        text += " | " + " ".join(rng.choices(SENSORS, k=rng.randint(50, 200)))  # chatty dump
    return text


def make_log_data(level: str, seq: int, rng: random.Random = _shared) -> dict | None:
    """None for ~30% of logs; small metrics mostly; now and then a bulky reading set."""
    roll = rng.random()
    if roll < 0.3:
        return None
    data: dict = {"seq": seq, "fw": rng.choice(FIRMWARE), "uptime_s": rng.randint(0, 10**7)}
    if level in ("ERROR", "CRITICAL"):
        data.update(error_code=f"E{rng.randint(100, 999)}", trace_id=f"{rng.getrandbits(64):016x}")
    if roll > 0.97:
        # A few KB of readings, under MAX_LOG_DATA_BYTES (16 KiB) as compact JSON.
        data["readings"] = [
            {"t": i, "sensor": rng.choice(SENSORS), "v": round(rng.uniform(0, 100), 3)}
            for i in range(rng.randint(20, 120))
        ]
    else:
        data["metrics"] = {s: round(rng.uniform(0, 100), 2) for s in rng.sample(SENSORS, 3)}
    return data


def make_log(device: str, seq: int, rng: random.Random = _shared) -> dict:
    """One log as a device POSTs it (the JSON body of /api/log, or one entry of a batch)."""
    level = pick_level(rng)
    body = {"device_id": device, "log_level": level, "message": make_message(level, rng)}
    data = make_log_data(level, seq, rng)
    if data is not None:
        body["log_data"] = data
    if rng.random() < STAMPED_SHARE:
        body["timestamp"] = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
    return body
