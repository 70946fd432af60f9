"""A small device-fleet load for the fault tests: threads post batches until a
target number of logs has been accepted, retrying (like a device honouring
Retry-After, but faster) on 503 and connection errors, and remember the
stream id of every log that got a 2xx."""

from __future__ import annotations

import itertools
import threading
import time

import requests

# A device gives up on one batch after this many refused attempts (0.05 s apart, plus
# the request itself: minutes), so an outage that never ends fails the test instead of
# leaving threads posting for the rest of the run.
MAX_ATTEMPTS = 4000


class Load:
    def __init__(self, url: str, target: int, batch: int = 20, threads: int = 8, tag: str = "load") -> None:
        self.url, self.target, self.batch, self.tag = url, target, batch, tag
        self.accepted: list[str] = []
        # (device id, message id): with STREAM_SHARDS > 1 an id is unique within its device's shard only.
        self.accepted_pairs: list[tuple[str, str]] = []
        self.refused: dict[int | str, int] = {}
        self.retry_after_seen: set[str] = set()
        # Refusals (HTTP errors) that came without Retry-After, by status and error code.
        self.refused_without_retry_after: dict[tuple[int, str], int] = {}
        # Messages of requests refused because Redis failed mid-request: Redis may have
        # queued them before the connection broke (a lost reply), so they may be stored
        # although their request got a 503, and again when the device retries.
        self.in_doubt: set[str] = set()
        # The threads that were refused, by error code (or exception name).
        self.threads_refused_with: dict[str, set[int]] = {}
        self.gave_up: list[str] = []
        self.n_threads = threads
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def start(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def wait(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
        self._stop.set()
        if self.gave_up or any(t.is_alive() for t in self._threads):
            raise AssertionError(f"load did not finish: {len(self.accepted)}/{self.target} accepted, "
                                 f"refusals {self.refused}, gave up: {self.gave_up}")

    def stop(self) -> None:
        """Stop every thread at its next step (and wait for them, briefly)."""
        self._stop.set()
        for t in self._threads:
            if t.ident is not None:
                t.join(15)

    def _done(self) -> bool:
        return self._stop.is_set() or len(self.accepted) >= self.target

    def _run(self, worker: int) -> None:
        device = f"{self.tag}-{worker:02d}"
        with requests.Session() as http:
            # Every round but the last gets a batch accepted, so `target` rounds are always enough.
            for _ in range(self.target):
                if self._done():
                    return
                with self._lock:
                    room = self.target - len(self.accepted)
                    seqs = [next(self._seq) for _ in range(min(self.batch, max(room, 0)))]
                if not seqs:
                    return
                logs = [{"device_id": device, "log_level": "INFO", "message": f"{self.tag} {s}",
                         "log_data": {"seq": s}} for s in seqs]
                if not self._post_until_accepted(http, worker, logs):
                    return

    def _post_until_accepted(self, http: requests.Session, worker: int, logs: list[dict]) -> bool:
        """Post one batch until it is accepted; False when stopped or out of attempts."""
        for _ in range(MAX_ATTEMPTS):
            if self._stop.is_set():
                return False
            try:
                response = http.post(f"{self.url}/api/logs/batch", json={"logs": logs}, timeout=10)
            except requests.RequestException as exc:
                self._refuse(worker, type(exc).__name__, type(exc).__name__)
                time.sleep(0.05)
                continue
            if response.status_code == 200:
                with self._lock:
                    self.accepted += response.json()["message_ids"]
                    self.accepted_pairs += [(logs[0]["device_id"], i) for i in response.json()["message_ids"]]
                return True
            error = response.json().get("error", "?") if response.status_code >= 400 else "?"
            self._refuse(worker, response.status_code, error)
            with self._lock:
                if "Retry-After" in response.headers:
                    self.retry_after_seen.add(error)
                else:
                    key = (response.status_code, error)
                    self.refused_without_retry_after[key] = self.refused_without_retry_after.get(key, 0) + 1
                if error == "redis_unavailable":
                    self.in_doubt.update(log["message"] for log in logs)
            time.sleep(0.05)
        with self._lock:
            self.gave_up.append(f"{self.tag}-{worker:02d} after {MAX_ATTEMPTS} attempts")
        return False

    def _refuse(self, worker: int, why: int | str, error: str) -> None:
        with self._lock:
            self.refused[why] = self.refused.get(why, 0) + 1
            self.threads_refused_with.setdefault(error, set()).add(worker)
