"""How many logs the fleet got accepted, and whether the run met its thresholds.

Imported by devices.py (Locust puts the locustfile's directory on sys.path), whose
options (--accepted-file, --max-fail-ratio, --max-p95-ms) this module reads.

A log counts once its request got any 2xx, because the collector then owes us a
row in PostgreSQL. Users stopped mid-request leave logs whose fate we never
learn; their number is logged at quit. In distributed runs (``--processes``,
``--master``/``--worker``) each worker reports its count to the master, which
writes the file and judges the thresholds from the whole fleet's numbers.
"""

from __future__ import annotations

import logging
import os

from locust import events
from locust.runners import MasterRunner, WorkerRunner

log = logging.getLogger("devices")


class Tally:
    """Logs that got a 2xx, and logs whose request is still out (their fate unknown)."""

    def __init__(self) -> None:
        self.accepted = 0          # total for this process (or, on a master, the fleet)
        self.unreported = 0        # on a worker: accepted since the last report to the master
        self.in_flight = 0
        self.retried = 0           # requests sent again with the same Idempotency-Key

    def reset(self) -> None:
        self.accepted = self.unreported = self.in_flight = self.retried = 0

    def sending(self, n_logs: int) -> None:
        self.in_flight += n_logs

    def answered(self, n_logs: int, accepted: bool) -> None:
        self.in_flight -= n_logs
        if accepted:
            self.accepted += n_logs
            self.unreported += n_logs


tally = Tally()


@events.init.add_listener
def _on_init(environment, **kwargs) -> None:
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
        judge(environment, options)


def judge(environment, options) -> None:
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
        pass  # an exception in the locustfile is a bug: keep Locust's own non-zero exit code
    else:
        log.info("thresholds met: failure ratio %.2f%%, p95 %.0f ms", total.fail_ratio * 100, p95)
        environment.process_exit_code = 0
