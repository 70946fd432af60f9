"""monitoring/: the Prometheus scrape configs, alerting rules and their unit tests, the
Alertmanager example and the Grafana dashboard, checked with the real tools (Debian's
`prometheus` package: promtool and prometheus; `prometheus-alertmanager`: amtool), and a
real Prometheus scraping a real stack.

Grafana itself is not installable here: the dashboard is checked for its structure and
for naming only metrics (and labels) that the running API and worker export.
docker-compose.yml's prometheus and grafana services are checked in tests/test_compose.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from collector.core.settings import load_settings
from collector.devtools.processes import ROOT, Process, free_port, wait_until
from tests.stack import Stack

MONITORING = ROOT / "monitoring"
PROMETHEUS_DIR = MONITORING / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
SCRAPE_COMPOSE = PROMETHEUS_DIR / "prometheus.yml"
SCRAPE_LOCAL = PROMETHEUS_DIR / "prometheus-local.yml"
ALERTMANAGER = MONITORING / "alertmanager" / "alertmanager.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "collector.json"
GRAFANA_PROVISIONING = MONITORING / "grafana" / "provisioning"
DOC = ROOT / "docs" / "monitoring.md"

# Where docker-compose.yml mounts METRICS_TOKEN for Prometheus (a compose secret).
COMPOSE_TOKEN_FILE = "/run/secrets/metrics_token"
# Labels Prometheus adds to every scraped series (prometheus.yml's relabelling adds service).
TARGET_LABELS = {"job", "instance", "service"}


def tool(name: str) -> str:
    """The binary, or a failure naming the package: these tests must not be skipped in CI."""
    path = shutil.which(name)
    if path is None:
        package = "prometheus-alertmanager" if name == "amtool" else "prometheus"
        pytest.fail(f"{name} is required: apt-get install -y {package} (make install does it as root on Debian)")
    return path


def run(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([tool(argv[0]), *argv[1:]], cwd=cwd, capture_output=True, text=True, timeout=120,
                          check=False)


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict]:
    return [rule for group in load(ALERTS)["groups"] for rule in group["rules"] if "alert" in rule]


def recorded_names() -> set[str]:
    return {rule["record"] for group in load(ALERTS)["groups"] for rule in group["rules"] if "record" in rule}


# --- scrape configs --------------------------------------------------------------------------

def checkable_copy(tmp_path: Path, config: Path) -> Path:
    """The config where promtool can check it whole. promtool stats every credentials_file,
    so the monitoring/ directory is copied into tmp_path with the token files it names
    created: var/metrics-token for the local config (a path relative to it, like its
    rule_files), and, for the compose config, the secret's path inside the container
    (/run/secrets/...) rewritten to a file in tmp_path. Nothing else changes."""
    copy = tmp_path / "monitoring"
    shutil.copytree(MONITORING, copy)
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "metrics-token").write_text("token\n")
    target = copy / "prometheus" / config.name
    text = target.read_text()
    if COMPOSE_TOKEN_FILE in text:
        secret = tmp_path / "metrics_token"
        secret.write_text("token\n")
        target.write_text(text.replace(COMPOSE_TOKEN_FILE, str(secret)))
    return target


@pytest.mark.parametrize("config", [SCRAPE_COMPOSE, SCRAPE_LOCAL], ids=lambda p: p.name)
def test_scrape_config_passes_promtool(tmp_path: Path, config: Path):
    result = run("promtool", "check", "config", str(checkable_copy(tmp_path, config)))
    assert result.returncode == 0, result.stdout + result.stderr
    rules = len(alert_rules()) + len(recorded_names())
    assert f"SUCCESS: {rules} rules found" in result.stdout, result.stdout  # alerts.yml found beside it


def test_promtool_check_config_can_fail(tmp_path: Path):
    # The check above must be able to fail: an unknown key, and a token file that is not there.
    bad = tmp_path / "bad.yml"
    bad.write_text("scrape_configs:\n  - job_name: x\n    scrape_intervall: 1s\n")
    assert run("promtool", "check", "config", str(bad)).returncode != 0
    assert run("promtool", "check", "config", str(SCRAPE_COMPOSE)).returncode != 0  # /run/secrets is not here


def scrape_jobs(config: Path) -> dict[str, dict]:
    return {job["job_name"]: job for job in load(config)["scrape_configs"]}


def test_compose_config_finds_every_replica_through_docker_dns():
    jobs = scrape_jobs(SCRAPE_COMPOSE)
    api, worker = jobs["collector-api"], jobs["collector-worker"]
    assert [(c["names"], c["type"], c["port"]) for c in api["dns_sd_configs"]] == [(["api1", "api2"], "A", 8000)]
    assert [(c["names"], c["type"], c["port"]) for c in worker["dns_sd_configs"]] == [(["worker"], "A", 9808)]
    assert api["authorization"] == {"type": "Bearer", "credentials_file": COMPOSE_TOKEN_FILE}
    assert "authorization" not in worker  # the worker's metrics server takes no credential
    for job in (api, worker):
        assert {"source_labels": ["__meta_dns_name"], "target_label": "service"} in job["relabel_configs"]


def test_local_config_scrapes_the_procfile_processes():
    jobs = scrape_jobs(SCRAPE_LOCAL)
    targets = {name: [(t, c["labels"]["service"]) for c in job["static_configs"] for t in c["targets"]]
               for name, job in jobs.items() if name.startswith("collector-")}
    assert targets == {"collector-api": [("127.0.0.1:8001", "api1"), ("127.0.0.1:8002", "api2")],
                       "collector-worker": [("127.0.0.1:9808", "worker")]}
    procfile = (ROOT / "Procfile").read_text()
    assert "API1_PORT:-8001" in procfile and "API2_PORT:-8002" in procfile
    assert load_settings({}).worker_metrics_port == 9808
    # ../../var/metrics-token from monitoring/prometheus/: the git-ignored var/ of the checkout
    assert jobs["collector-api"]["authorization"]["credentials_file"] == "../../var/metrics-token"
    assert (PROMETHEUS_DIR / "../../var").resolve() == ROOT / "var"


# --- rules --------------------------------------------------------------------------------------

def test_rules_pass_promtool_check():
    result = run("promtool", "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_pass():
    result = run("promtool", "test", "rules", ALERTS_TEST.name, cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_test_rules_can_fail(tmp_path: Path):
    # An expectation that contradicts the rules must fail the unit tests.
    shutil.copy(ALERTS, tmp_path / ALERTS.name)
    tests = load(ALERTS_TEST)
    case = next(t for t in tests["tests"] for c in t["alert_rule_test"] if c["exp_alerts"])
    for check in case["alert_rule_test"]:
        check["exp_alerts"] = [] if check["exp_alerts"] else [{"exp_labels": {"severity": "critical"}}]
    (tmp_path / ALERTS_TEST.name).write_text(yaml.safe_dump(tests))
    result = run("promtool", "test", "rules", ALERTS_TEST.name, cwd=tmp_path)
    assert result.returncode != 0, result.stdout


def test_every_alert_is_tested_firing_and_quiet():
    checks = [c for t in load(ALERTS_TEST)["tests"] for c in t["alert_rule_test"]]
    for rule in alert_rules():
        name = rule["alert"]
        assert any(c["alertname"] == name and c["exp_alerts"] for c in checks), f"{name} is never expected to fire"
        assert any(c["alertname"] == name and not c["exp_alerts"] for c in checks), f"{name} is never expected quiet"


def test_every_alert_has_a_severity_a_summary_and_a_runbook_section():
    headings = {re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
                for line in DOC.read_text().splitlines() if line.startswith("#")}
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["runbook"] == f"docs/monitoring.md#{name.lower()}", name
        assert name.lower() in headings, f"docs/monitoring.md has no section for {name}"


# --- Alertmanager ---------------------------------------------------------------------------------

def test_alertmanager_config_passes_amtool():
    result = run("amtool", "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr


def test_amtool_can_fail(tmp_path: Path):
    bad = tmp_path / "alertmanager.yml"
    bad.write_text("route:\n  receiver: nobody\nreceivers:\n  - name: someone\n")
    assert run("amtool", "check-config", str(bad)).returncode != 0


@pytest.mark.parametrize("severity", ["critical", "warning"])
def test_every_severity_reaches_a_receiver(severity: str):
    """amtool's `config routes test` walks the tree as Alertmanager does."""
    result = run("amtool", "config", "routes", "test", f"--config.file={ALERTMANAGER}",
                 f"severity={severity}", "alertname=CollectorX")
    assert result.returncode == 0, result.stdout + result.stderr
    receivers = set(result.stdout.split()[0].split(","))
    assert receivers == ({"oncall", "team-email"} if severity == "critical" else {"team-email"}), result.stdout


# --- Grafana -------------------------------------------------------------------------------------

def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel.get("targets", [])]


def test_dashboard_structure():
    board = dashboard()
    assert board["uid"] and board["title"]
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource"]
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
    titles = " | ".join(p["title"] for p in panels).lower()
    for wanted in ("ingest rate by instance", "backlog", "drain batch duration", "dead letters",
                   "latency", "rejected", "stored"):
        assert wanted in titles, wanted
    assert any("histogram_quantile" in e and "collector_http_request_duration_seconds_bucket" in e
               for e in dashboard_exprs())


def test_grafana_provisioning_points_at_the_compose_prometheus_and_dashboards():
    datasources = load(GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    assert [(d["type"], d["url"], d["uid"]) for d in datasources] == [
        ("prometheus", "http://prometheus:9090", "prometheus")]
    providers = load(GRAFANA_PROVISIONING / "dashboards" / "collector.yml")["providers"]
    assert [p["options"]["path"] for p in providers] == ["/etc/grafana/dashboards"]
    # the dashboard's datasource variable defaults to the provisioned datasource
    assert dashboard()["templating"]["list"][0]["current"]["value"] == "prometheus"


# --- metric names: what the rules and the dashboard use is what the code exports ------------------

SELECTOR = re.compile(r"\b(collector_[a-z0-9_]+|collector:[a-z0-9_:]+|up)\b(\{[^}]*\})?")
LABEL_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, {matchers}) of every selector in `expr`; the label names of by/without
    clauses are not selectors, even one named collector_instance."""
    return SELECTOR.findall(GROUPING.sub("", expr))


def unknown_references(expr: str, exported: dict[str, set[str]], recorded: set[str]) -> list[str]:
    """Metric names in `expr` that neither the code exports nor a recording rule defines, and
    label names matched on a metric that does not carry them; [] when all is known."""
    problems = []
    for name, matchers in selectors(expr):
        if name == "up" or name in recorded:
            continue
        if name not in exported:
            problems.append(name)
            continue
        for label in LABEL_MATCHER.findall(matchers or ""):
            if label not in exported[name] | TARGET_LABELS:
                problems.append(f"{name}{{{label}}}")
    all_labels = set().union(*exported.values()) | TARGET_LABELS | {"le"}
    for group in GROUPING.findall(expr):
        problems += [label for label in (x.strip() for x in group.split(",")) if label and label not in all_labels]
    return problems


def test_the_reference_check_can_fail():
    exported = {"collector_logs_accepted_total": set(), "collector_requests_rejected_total": {"reason"}}
    assert unknown_references("rate(collector_logs_acepted_total[5m])", exported, set()) == [
        "collector_logs_acepted_total"]
    assert unknown_references('collector_requests_rejected_total{raeson="x"}', exported, set()) == [
        "collector_requests_rejected_total{raeson}"]
    assert unknown_references("sum by (reason) (collector_requests_rejected_total)", exported, set()) == []
    assert unknown_references("sum by (device) (collector_logs_accepted_total)", exported, set()) == ["device"]
    assert unknown_references("sum by (collector_instance) (collector_logs_accepted_total)", exported, set()) == [
        "collector_instance"]  # a label name, checked as one (not exported here), not as a metric name


def sample_labels(text: str) -> dict[str, set[str]]:
    """Every sample name of a /metrics body with the label names it carries."""
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


# --- a real Prometheus scraping a real stack -----------------------------------------------------

TOKEN = "test-metrics-token"
GOOD_LOGS = 30


@pytest.fixture(scope="module")
def live(base_settings, tmp_path_factory):
    """api1 with keys off (the tests post to it), api2 with keys on and METRICS_TOKEN (its
    /metrics needs the bearer token), a worker and beat; Prometheus scrapes them with the
    shipped local config, its ports and token file pointed at this stack."""
    tool("prometheus")
    tmp = tmp_path_factory.mktemp("monitoring")
    stack = Stack({"REDIS_URL": base_settings.redis_url, "DATABASE_URL": base_settings.database_url,
                   "KEY_PREFIX": base_settings.key_prefix + "monitoring:", "DRAIN_INTERVAL": "0.5",
                   "METRICS_TOKEN": TOKEN}, tmp / "stack")
    prometheus = None
    try:
        api1 = stack.start_api(0)
        stack.env["AUTH_ENABLED"] = "true"
        api2 = stack.start_api(1)
        stack.env["AUTH_ENABLED"] = "false"
        stack.start_worker()
        stack.start_beat()
        port = free_port()
        config = live_config(tmp, {8001: stack.api_ports[0], 8002: stack.api_ports[1],
                                   9808: stack.worker_metrics_port, 9090: port})
        prometheus = Process("prometheus", [tool("prometheus"), f"--config.file={config}",
                                            f"--storage.tsdb.path={tmp / 'tsdb'}",
                                            f"--web.listen-address=127.0.0.1:{port}"],
                             {"PATH": "/usr/bin:/bin"}, tmp / "prometheus.log").start()
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: requests.get(f"{url}/-/ready", timeout=2).status_code == 200, 60, "Prometheus ready",
                   check=lambda: _alive(prometheus))
        yield {"prometheus": url, "api1": api1, "api2": api2, "stack": stack,
               "worker_metrics": f"http://127.0.0.1:{stack.worker_metrics_port}/metrics"}
    finally:
        if prometheus is not None:
            prometheus.stop()
        stack.stop()


def _alive(process: Process) -> None:
    if not process.alive():
        raise AssertionError(f"prometheus exited:\n{process.output()[-3000:]}")


def live_config(tmp: Path, ports: dict[int, int]) -> Path:
    """prometheus-local.yml as shipped, with 1 s intervals, this stack's ports, absolute
    paths, and one more job that scrapes api2 without the token (it must be refused)."""
    config = load(SCRAPE_LOCAL)
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROMETHEUS_DIR / f) for f in config["rule_files"]]
    token = tmp / "metrics-token"
    token.write_text(TOKEN + "\n")
    for job in config["scrape_configs"]:
        if "authorization" in job:
            job["authorization"]["credentials_file"] = str(token)
        for static in job["static_configs"]:
            static["targets"] = [re.sub(r":(\d+)$", lambda m: f":{ports.get(int(m[1]), m[1])}", t)
                                 for t in static["targets"]]
    config["scrape_configs"].append({"job_name": "no-credential", "static_configs": [
        {"targets": [f"127.0.0.1:{ports[8002]}"]}]})
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def query(base: str, promql: str) -> list[dict]:
    response = requests.get(f"{base}/api/v1/query", params={"query": promql}, timeout=5)
    response.raise_for_status()
    body = response.json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def scalar(base: str, promql: str) -> float | None:
    result = query(base, promql)
    return float(result[0]["value"][1]) if result else None


def post_logs(api: str, count: int, device: str) -> None:
    logs = [{"device_id": device, "log_level": "INFO", "message": f"monitored {i}"} for i in range(count)]
    response = requests.post(f"{api}/api/logs/batch", json={"logs": logs}, timeout=10)
    assert response.status_code == 200, response.text
    bad = requests.post(f"{api}/api/log", json={"device_id": device, "log_level": "LOUD", "message": "x"},
                        timeout=10)
    assert bad.status_code == 422, bad.text  # a rejection: collector_requests_rejected_total{reason}


@pytest.mark.e2e
@pytest.mark.slow
def test_prometheus_scrapes_every_process_and_sees_logs_move(live):
    prom = live["prometheus"]

    def targets_up() -> dict[tuple[str, str], float]:
        return {(r["metric"]["job"], r["metric"].get("service", "")): float(r["value"][1])
                for r in query(prom, "up")}

    expected = {("collector-api", "api1"): 1.0, ("collector-api", "api2"): 1.0, ("collector-worker", "worker"): 1.0,
                ("prometheus", ""): 1.0, ("no-credential", ""): 0.0}
    try:
        wait_until(lambda: targets_up() == expected, 60, f"targets {expected}", interval=0.5)
    except TimeoutError:
        raise AssertionError(f"up: {targets_up()}") from None
    # api2 has keys on: the token is what let Prometheus in (the job without it gets a 401)
    assert requests.get(f"{live['api2']}/metrics", timeout=5).status_code == 401
    assert requests.get(f"{live['api2']}/metrics", headers={"Authorization": f"Bearer {TOKEN}"},
                        timeout=5).status_code == 200

    accepted = 'sum(collector_logs_accepted_total{job="collector-api"})'
    before = wait_until(lambda: (v := scalar(prom, accepted)) is not None and (v,), 30, "the accepted counter")[0]
    post_logs(live["api1"], GOOD_LOGS, "monitored-1")
    wait_until(lambda: scalar(prom, accepted) >= before + GOOD_LOGS, 30,
               f"collector_logs_accepted_total to reach {before + GOOD_LOGS} in Prometheus", interval=0.5)
    persisted = 'sum(collector_logs_persisted_total{job="collector-worker"})'
    wait_until(lambda: (scalar(prom, persisted) or 0) >= GOOD_LOGS, 60,
               "the worker's collector_logs_persisted_total in Prometheus", interval=0.5)
    assert scalar(prom, 'sum(collector_requests_rejected_total{reason="validation_failed"})') >= 1
    # the stream gauges (read from Redis at scrape time) and the recording rule over them
    wait_until(lambda: scalar(prom, "collector:stream_backlog:max") == 0, 60, "the backlog to drain", interval=0.5)
    assert scalar(prom, 'max(collector_oldest_unstored_age_seconds{job="collector-api"})') is not None

    # alerts.yml is loaded and every rule evaluates without an error
    def rules() -> list[dict]:
        groups = requests.get(f"{prom}/api/v1/rules", timeout=5).json()["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    wait_until(lambda: all(r["health"] == "ok" for r in rules()), 30, "every rule evaluated", interval=0.5)
    loaded = {r["name"] for r in rules()}
    assert loaded == {r["alert"] for r in alert_rules()} | recorded_names()
    firing = [r["name"] for r in rules() if r["type"] == "alerting" and r["state"] == "firing"]
    assert firing == []  # a healthy stack (the `for:` durations keep even a blip pending)


API_FAMILIES = {"collector_logs_accepted", "collector_requests_rejected", "collector_http_request_duration_seconds",
                "collector_stream_length", "collector_stream_pending", "collector_stream_lag",
                "collector_oldest_unstored_age_seconds"}
WORKER_FAMILIES = {"collector_logs_persisted", "collector_logs_duplicates_skipped", "collector_logs_dead_lettered",
                   "collector_drain_batch_duration_seconds", "collector_drain_batch_entries",
                   "collector_partitions_dropped", "collector_logs_expired", "collector_dead_letters_expired"}


def families_by_instance(text: str) -> dict[str, set[str]]:
    """Every collector_* family of a /metrics body with the collector_instance values its samples carry."""
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith("collector_"):
            found.setdefault(family.name, set()).update(s.labels.get("collector_instance", "") for s in family.samples)
    return found


@pytest.mark.e2e
@pytest.mark.slow
def test_every_sample_names_the_process_that_exported_it(live):
    """collector_instance = INSTANCE_NAME (tests/stack.py: api1, api2, test-worker) on every
    sample; the API exports no drain family and the worker no API family, not even at 0."""
    prom = live["prometheus"]
    wait_until(lambda: requests.get(live["worker_metrics"], timeout=2).status_code == 200, 60,
               "the worker's metrics server", interval=0.5)
    post_logs(live["api1"], 3, "monitored-3")
    api1 = families_by_instance(requests.get(f"{live['api1']}/metrics", timeout=5).text)
    api2 = families_by_instance(requests.get(f"{live['api2']}/metrics", headers={"Authorization": f"Bearer {TOKEN}"},
                                             timeout=5).text)
    worker = families_by_instance(requests.get(live["worker_metrics"], timeout=5).text)
    assert set(api1) == API_FAMILIES  # api1 also answered a 422: collector_requests_rejected_total{reason}
    # a labelled counter has no series before its first value (api2 may have refused nothing yet)
    assert API_FAMILIES - {"collector_requests_rejected"} <= set(api2) <= API_FAMILIES
    assert set(worker) == WORKER_FAMILIES  # all of them from the start, retention's too
    assert set().union(*api1.values()) == {"api1"}
    assert set().union(*api2.values()) == {"api2"}
    assert set().union(*worker.values()) == {"test-worker"}
    # and as Prometheus stores them: one series per process, told apart by collector_instance
    wait_until(lambda: {r["metric"]["collector_instance"] for r in query(
        prom, "count by (collector_instance) (collector_logs_accepted_total)")} == {"api1", "api2"}, 30,
        "collector_logs_accepted_total from api1 and api2", interval=0.5)
    stored = query(prom, "count by (job, collector_instance) (collector_logs_persisted_total)")
    assert {(r["metric"]["job"], r["metric"]["collector_instance"]) for r in stored} == {
        ("collector-worker", "test-worker")}


@pytest.mark.e2e
@pytest.mark.slow
def test_rules_and_dashboard_use_only_exported_metrics(live):
    post_logs(live["api1"], 5, "monitored-2")
    wait_until(lambda: "collector_drain_batch_duration_seconds_bucket" in requests.get(
        live["worker_metrics"], timeout=5).text, 60, "a drain batch in the worker's metrics", interval=0.5)
    exported: dict[str, set[str]] = {}
    for text in (requests.get(f"{live['api1']}/metrics", timeout=5).text,
                 requests.get(live["worker_metrics"], timeout=5).text):
        for name, labels in sample_labels(text).items():
            exported.setdefault(name, set()).update(labels)
    recorded = recorded_names()
    rules = [rule["expr"] for group in load(ALERTS)["groups"] for rule in group["rules"]]
    problems = {expr: unknown_references(expr, exported, recorded) for expr in rules + dashboard_exprs()}
    assert {expr: p for expr, p in problems.items() if p} == {}
    # and every collector metric family the code exports is on the dashboard
    used = {name for expr in dashboard_exprs() for name, _ in selectors(expr)}
    families = {re.sub(r"_(bucket|count|sum)$", "", n) for n in exported if n.startswith("collector_")}
    assert families - {re.sub(r"_(bucket|count|sum)$", "", n) for n in used} == set()
