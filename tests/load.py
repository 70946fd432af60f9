"""A small device-fleet load for the fault tests: threads post batches until a
target number of logs has been accepted, retrying (like a device honouring
Retry-After, but faster) on 503 and connection errors, and remember the
stream id of every log that got a 2xx."""

from __future__ import annotations

import itertools
import threading
import time

import requests


class Load:
    def __init__(self, url: str, target: int, batch: int = 20, threads: int = 8, tag: str = "load") -> None:
        self.url, self.target, self.batch, self.tag = url, target, batch, tag
        self.accepted: list[str] = []
        self.refused: dict[int | str, int] = {}
        self.retry_after_seen: set[str] = set()
        # Messages of requests refused because Redis failed mid-request: Redis may have
        # queued them before the connection broke (a lost reply), so they may be stored
        # although their request got a 503, and again when the device retries.
        self.in_doubt: set[str] = set()
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
        if any(t.is_alive() for t in self._threads):
            raise AssertionError(f"load did not finish: {len(self.accepted)}/{self.target} accepted, "
                                 f"refusals {self.refused}")

    def stop(self) -> None:
        self._stop.set()

    def _done(self) -> bool:
        return self._stop.is_set() or len(self.accepted) >= self.target

    def _run(self, worker: int) -> None:
        device = f"{self.tag}-{worker:02d}"
        with requests.Session() as http:
            while not self._done():
                with self._lock:
                    room = self.target - len(self.accepted)
                    seqs = [next(self._seq) for _ in range(min(self.batch, max(room, 0)))]
                if not seqs:
                    return
                logs = [{"device_id": device, "log_level": "INFO", "message": f"{self.tag} {s}",
                         "log_data": {"seq": s}} for s in seqs]
                while not self._stop.is_set():
                    try:
                        response = http.post(f"{self.url}/api/logs/batch", json={"logs": logs}, timeout=10)
                    except requests.RequestException as exc:
                        self._refuse(type(exc).__name__)
                        time.sleep(0.05)
                        continue
                    if response.status_code == 200:
                        with self._lock:
                            self.accepted += response.json()["message_ids"]
                        break
                    self._refuse(response.status_code)
                    error = response.json().get("error", "?") if response.status_code >= 400 else "?"
                    if "Retry-After" in response.headers:
                        self.retry_after_seen.add(error)
                    if error == "redis_unavailable":
                        with self._lock:
                            self.in_doubt.update(log["message"] for log in logs)
                    time.sleep(0.05)

    def _refuse(self, why: int | str) -> None:
        with self._lock:
            self.refused[why] = self.refused.get(why, 0) + 1
