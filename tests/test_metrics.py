"""What each process's /metrics carries: its own role's families only (the API no drain
series, the worker no ingest series), every sample labelled collector_instance=INSTANCE_NAME.

The API's /metrics is rendered through the app (no multiprocess directory: this process's
registry); the worker's through the functions its worker_init calls
(tasks.celery_app._use_multiprocess_metrics and _serve_metrics), in a subprocess with a
forked "pool child", as a real worker runs them. tests/test_monitoring.py reads both from a
real stack too.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

from prometheus_client.parser import text_string_to_metric_families

from collector.core import metrics
from collector.devtools.processes import ROOT, free_port

API_FAMILIES = {"collector_logs_accepted", "collector_requests_rejected", "collector_http_request_duration_seconds"}
STREAM_GAUGES = {"collector_stream_length", "collector_stream_pending", "collector_stream_lag",
                 "collector_oldest_unstored_age_seconds"}
WORKER_FAMILIES = {"collector_logs_persisted", "collector_logs_duplicates_skipped", "collector_logs_dead_lettered",
                   "collector_drain_batch_duration_seconds", "collector_drain_batch_entries",
                   "collector_partitions_dropped", "collector_logs_expired", "collector_dead_letters_expired"}


def families(text: str) -> dict[str, list]:
    """Family name -> its samples, of every collector_* family in a /metrics body. Without a
    multiprocess directory prometheus_client also writes each counter's and histogram's
    `_created` as a family of its own: counted with its metric."""
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith("collector_"):
            found.setdefault(family.name.removesuffix("_created"), []).extend(family.samples)
    return found


def instance_labels(found: dict[str, list]) -> set[str | None]:
    return {sample.labels.get("collector_instance") for samples in found.values() for sample in samples}


def test_the_role_lists_match_the_definitions():
    assert metrics.FAMILIES == {metrics.API: API_FAMILIES, metrics.WORKER: WORKER_FAMILIES}
    for name, role in metrics.ROLE_OF.items():
        metric = getattr(metrics, name)
        assert metric._name in metrics.FAMILIES[role], name  # prometheus_client's family name


def test_api_metrics_are_the_apis_only_and_name_the_instance(settings, db, make_app):
    app = make_app(dataclasses.replace(settings, instance_name="api-under-test"))
    client = app.test_client()
    # This process has drain metrics with values too (as pytest may well have): still not the API's.
    metrics.LOGS_PERSISTED.inc(0)
    response = client.post("/api/log", json={"device_id": "metrics-1", "log_level": "INFO", "message": "hello"})
    assert response.status_code in (200, 201, 202), response.get_data(as_text=True)
    assert client.post("/api/log", json={"device_id": "metrics-1", "log_level": "LOUD", "message": "x"}
                       ).status_code == 422

    response = client.get("/metrics")
    assert response.status_code == 200
    found = families(response.get_data(as_text=True))
    assert set(found) == API_FAMILIES | STREAM_GAUGES  # no drain-only family, nothing missing
    assert instance_labels(found) == {"api-under-test"}
    assert sum(s.value for s in found["collector_logs_accepted"] if s.name.endswith("_total")) >= 1
    rejected = {s.labels["reason"] for s in found["collector_requests_rejected"] if s.name.endswith("_total")}
    assert "validation_failed" in rejected
    # the exposition sorts label names: collector_instance comes first
    assert ('collector_http_request_duration_seconds_count{collector_instance="api-under-test",'
            'endpoint="api.ingest_log",method="POST",status="422"} ') in response.get_data(as_text=True)


def test_render_labels_extra_collectors_and_keeps_other_roles_out():
    metrics.LOGS_ACCEPTED.inc(0)
    metrics.BATCH_SIZE.observe(0)

    class Extra:
        def collect(self):
            from prometheus_client.core import GaugeMetricFamily

            yield GaugeMetricFamily("collector_extra", "An extra gauge.", value=1)

    api = families(metrics.render(metrics.API, "a1", [Extra()])[0].decode())
    worker = families(metrics.render(metrics.WORKER, "w1")[0].decode())
    assert set(api) == API_FAMILIES | {"collector_extra"}
    assert set(worker) == WORKER_FAMILIES
    assert instance_labels(api) == {"a1"} and instance_labels(worker) == {"w1"}


WORKER_SCRIPT = """
import json, os, sys, urllib.request

from collector.core import metrics
from tasks import celery_app

celery_app._use_multiprocess_metrics()  # what worker_init does first: a fresh directory, file-backed values
child = os.fork()
if child == 0:  # a pool process: drains a batch; a stray ingest counter must not be served
    metrics.LOGS_PERSISTED.inc(7)
    metrics.BATCH_SIZE.observe(7)
    metrics.LOGS_ACCEPTED.inc()
    os._exit(0)
os.waitpid(child, 0)
port = int(sys.argv[1])
celery_app._serve_metrics(port, "127.0.0.1", "worker-under-test")
body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
print(json.dumps({"dir": os.environ["PROMETHEUS_MULTIPROC_DIR"], "files": sorted(os.listdir(
    os.environ["PROMETHEUS_MULTIPROC_DIR"])), "body": body}))
"""


def test_worker_metrics_are_the_drains_only_and_name_the_instance(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", WORKER_SCRIPT, str(free_port())], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout)
    assert out["dir"].startswith(str(tmp_path))
    assert any(name.startswith("counter_") for name in out["files"])  # multiprocess mode for real
    found = families(out["body"])
    assert set(found) == WORKER_FAMILIES  # the stray collector_logs_accepted is not served
    assert instance_labels(found) == {"worker-under-test"}
    persisted = [s for s in found["collector_logs_persisted"] if s.name == "collector_logs_persisted_total"]
    assert [(s.labels, s.value) for s in persisted] == [({"collector_instance": "worker-under-test"}, 7.0)]
    # counters the pool has not touched yet read 0 rather than being absent
    assert [s.value for s in found["collector_logs_dead_lettered"]] == [0.0]
