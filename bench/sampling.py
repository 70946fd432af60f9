"""Sampling a phase: rows stored, backlog and Redis memory over time, peak RSS, and
the wait until the pipeline has settled."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.probes import Probe, Processes


@dataclass
class Sample:
    t: float                # time.monotonic()
    persisted: int
    backlog: int | None
    redis_mib: float | None  # Redis used_memory (None: not known for this stack)


class Sampler:
    """Row count, backlog and Redis memory over time, plus peak RSS, for one phase.

    count(*) scans the table, so it is taken at most every `interval` seconds, and less
    often when it gets slow (it must not be what loads the database)."""

    def __init__(self, probe: Probe, procs: Processes, interval: float = 0.5) -> None:
        self.probe, self.procs, self.base_interval = probe, procs, interval
        self.interval = interval
        self.samples: list[Sample] = []
        self.peak: dict = {}
        self._next = 0.0

    def take(self) -> Sample:
        started = time.monotonic()
        persisted, backlog = self.probe.persisted(), self.probe.backlog()
        redis_mib = self.probe.redis_memory_mib()
        cost = time.monotonic() - started
        self.interval = max(self.base_interval, 10 * cost)  # stay under ~10% of one core
        sample = Sample(started, persisted, backlog, redis_mib)
        self.samples.append(sample)
        rss = self.procs.rss()
        for key, value in rss.items():
            self.peak[key] = max(self.peak.get(key, 0), value)
        self._next = started + self.interval
        return sample

    def due(self) -> bool:
        return time.monotonic() >= self._next

    def wait(self) -> None:
        """Sleep until the next sample is due."""
        time.sleep(max(0.0, self._next - time.monotonic()))

    def persisted_at(self, t: float) -> float:
        """Rows stored at time t, interpolated between the samples around it."""
        s = self.samples
        if not s:
            return 0.0
        if t <= s[0].t:
            return float(s[0].persisted)
        for a, b in itertools.pairwise(s):
            if a.t <= t <= b.t:
                return a.persisted + (b.persisted - a.persisted) * (t - a.t) / ((b.t - a.t) or 1)
        return float(s[-1].persisted)

    def backlog_at(self, t: float) -> int | None:
        """Backlog of the sample nearest to t."""
        if not self.samples:
            return None
        return min(self.samples, key=lambda x: abs(x.t - t)).backlog

    def series(self, origin: float) -> list[list]:
        """[seconds since `origin`, rows, backlog, Redis MiB] per sample."""
        return [[round(x.t - origin, 2), x.persisted, x.backlog, x.redis_mib] for x in self.samples]

    def during(self, start: float, end: float) -> dict:
        """Backlog and Redis memory over the samples taken in [start, end]: min, max, and the
        peak of each half of the window, so "flat" is a comparison of samples, not one reading."""
        inside = [x for x in self.samples if start <= x.t <= end]
        middle = (start + end) / 2
        out: dict = {"samples": len(inside)}
        for key in ("backlog", "redis_mib"):
            values = [(x.t, getattr(x, key)) for x in inside if getattr(x, key) is not None]
            first = [v for t, v in values if t < middle]
            second = [v for t, v in values if t >= middle]
            out[key] = {
                "min": min((v for _, v in values), default=None),
                "max": max((v for _, v in values), default=None),
                "first_half_max": max(first, default=None),
                "second_half_max": max(second, default=None),
            } if values else None
        return out


def growing(summary: dict | None, tolerance: float = 0.10) -> bool | None:
    """True when a sampled figure's peak in the second half of a window exceeds its peak in
    the first half by more than `tolerance` (None when there are too few samples to tell)."""
    if not summary or summary["first_half_max"] is None or summary["second_half_max"] is None:
        return None
    return summary["second_half_max"] > summary["first_half_max"] * (1 + tolerance)


def settle(sampler: Sampler, timeout: float, check: Callable[[], None] | None,
           stop_when: Callable[[Sample], bool] | None = None) -> float | None:
    """Sample until the backlog is 0 and the row count has stopped moving (or
    `stop_when`); returns when that happened, or None after `timeout`."""
    deadline = time.monotonic() + timeout
    previous = sampler.take()
    while time.monotonic() < deadline:
        if check:
            check()
        sampler.wait()
        current = sampler.take()
        if stop_when is not None and stop_when(current):
            return current.t
        if current.backlog == 0 and current.persisted == previous.persisted:
            return previous.t  # nothing moved since the previous sample: done by then
        previous = current
    return None

