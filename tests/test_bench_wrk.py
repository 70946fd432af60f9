"""bench.wrk without a stack: reading wrk's output, the figures' arithmetic (bench.wrk_report),
which code a checkout can run and how bench.stack would start it, the drain phase's reading of
the worker's log, and the Lua scripts against a small HTTP server of the test's own."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from bench import wrk, wrk_report
from bench.common import BenchError
from bench.drain import batch_timings
from bench.options import Target
from bench.stack import Stack, read_procfile

# What `wrk -t2 -c100 -d60s --latency -s bench/wrk/batch5.lua ...` prints (figures made up, layout wrk 4.1's),
# common.lua's status lines at the end.
WRK_OUTPUT = """\
Running 1m test @ http://127.0.0.1:18723/api/logs/batch
  2 threads and 100 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    68.21ms   31.70ms   1.02s    88.12%
    Req/Sec   745.33    101.22     1.01k    71.50%
  Latency Distribution
     50%   65.03ms
     75%   80.11ms
     90%  101.40ms
     99%    1.20s
  89350 requests in 1.00m, 19.43MB read
  Socket errors: connect 0, read 2, write 0, timeout 7
  Non-2xx or 3xx responses: 41
Requests/sec:   1487.61
Transfer/sec:    331.21KB
wrk-status 200 89309
wrk-status 429 30
wrk-status 503 11
wrk-sample 429 {"error":"rate_limited","message":"Too many logs for device_007"}
wrk-sample 503 {"error":"unavailable"}
"""


def test_parse_wrk_reads_every_figure():
    out = wrk_report.parse_wrk(WRK_OUTPUT)
    assert out["requests"] == 89350
    assert out["duration_s"] == pytest.approx(89350 / 1487.61, abs=0.001)  # not "1.00m", rounded to 0.6 s
    assert out["requests_per_s"] == 1487.61
    assert (out["p50_ms"], out["p75_ms"], out["p90_ms"], out["p99_ms"]) == (65.03, 80.11, 101.4, 1200.0)
    assert out["socket_errors"] == {"connect": 0, "read": 2, "write": 0, "timeout": 7}
    assert out["non_2xx_3xx"] == 41
    assert out["statuses"] == {200: 89309, 429: 30, 503: 11}
    assert out["error_samples"][429].startswith('{"error":"rate_limited"')


def test_parse_wrk_without_common_lua_and_errors():
    """The shared scripts print no status lines, and wrk omits the error lines when there were none."""
    text = "\n".join(line for line in WRK_OUTPUT.splitlines()
                     if not line.startswith(("wrk-", "  Socket", "  Non-2xx")))
    out = wrk_report.parse_wrk(text)
    assert out["statuses"] == {} and out["non_2xx_3xx"] == 0 and sum(out["socket_errors"].values()) == 0
    assert wrk_report.ok_requests(out) == 89350


def test_parse_wrk_refuses_output_without_a_summary():
    with pytest.raises(BenchError, match="no summary"):
        wrk_report.parse_wrk("unable to connect to 127.0.0.1:18723 Connection refused\n")


def test_ok_requests_prefers_the_status_counts():
    out = wrk_report.parse_wrk(WRK_OUTPUT)
    assert wrk_report.ok_requests(out) == 89309
    assert wrk_report.ok_requests({**out, "statuses": {}}) == 89350 - 41


def test_load_figures_accepted_persisted_and_errors():
    out = wrk_report.parse_wrk(WRK_OUTPUT)
    accepted = 89309 * 5
    figures = wrk_report.load_figures(out, per_request=5, connections=100, stored=accepted + 120,
                                      distinct=accepted + 120, end_to_end_s=61.5)
    assert figures["accepted_logs"] == accepted
    assert figures["accepted_per_s"] == round(accepted / (89350 / 1487.61), 1)
    assert figures["persisted_per_s"] == round((accepted + 120) / 61.5, 1)
    assert figures["errors"] == 9 + 41
    # 120 more rows than answers: requests in flight at the end, not a problem; the 429s are.
    [throttled] = figures["problems"]
    assert throttled.startswith("THROTTLED: 30 answers were 429")
    unthrottled = {**out, "statuses": {200: 89309, 503: 11}}
    assert wrk_report.load_figures(unthrottled, 5, 100, accepted + 120, None, 61.5)["problems"] == []


def test_storage_problems_name_lost_extra_and_duplicate_rows():
    assert wrk_report.storage_problems(1000, 1000, 1000, 500) == []
    assert wrk_report.storage_problems(1000, 1500, None, 500) == []
    [lost] = wrk_report.storage_problems(1000, 990, None, 500)
    assert lost.startswith("LOST: 10 logs")
    [extra] = wrk_report.storage_problems(1000, 1501, None, 500)
    assert extra.startswith("EXTRA ROWS")
    [duplicates] = wrk_report.storage_problems(1000, 1000, 998, 500)
    assert duplicates.startswith("DUPLICATES: 2 rows")


def test_cpu_cost_counts_the_collector_only():
    cpu = {"api": 100.0, "worker": 50.0, "postgres": 25.0, "redis": 10.0, "nginx": 15.0, "other": 80.0}
    cost = wrk_report.cpu_cost(cpu, seconds=10.0, logs=100_000)
    assert cost["cpu_s"] == 20.0  # 2 cores' worth of the five parts for 10 s; "other" (wrk among it) not counted
    assert cost["cpu_s_per_million_logs"] == 200.0
    assert cost["cpu_s_per_million_by_part"] == {"api": 100.0, "worker": 50.0, "nginx": 15.0, "postgres": 25.0,
                                                 "redis": 10.0}
    assert wrk_report.cpu_cost(cpu, 10.0, 0)["cpu_s_per_million_logs"] is None


def fake_checkout(root: Path, schemas: str, keys: bool) -> Path:
    """A checkout as e326170 has it: its Procfile, its schema; keys.py only when `keys`."""
    (root / "collector").mkdir(parents=True)
    (root / "collector" / "schemas.py").write_text(schemas)
    if keys:
        (root / "collector" / "keys.py").write_text("")
    (root / "Procfile").write_text(
        "api1: INSTANCE_NAME=api1 PORT=8001 .venv/bin/gunicorn -c gunicorn.conf.py\n"
        "api2: INSTANCE_NAME=api2 PORT=8002 .venv/bin/gunicorn -c gunicorn.conf.py\n"
        "worker: INSTANCE_NAME=worker1 .venv/bin/celery -A tasks.celery_app worker -n worker1@%h --loglevel=INFO\n"
        "beat: INSTANCE_NAME=beat .venv/bin/celery -A tasks.celery_app beat --loglevel=INFO\n"
        "nginx: .venv/bin/python nginx/run_local.py\n")
    return root


def test_a_checkout_without_keys_runs_with_them_off(tmp_path):
    code = wrk.code_at(fake_checkout(tmp_path, "class LogIn: device_id = ...", keys=False))
    assert (code.has_keys, code.has_sequences) == (False, False)
    assert code.venv == wrk.ROOT / ".venv"  # it has none of its own
    assert wrk.choose_config(wrk.parse_args([]), code) == (False, False)
    with pytest.raises(SystemExit, match="--keys: the code in"):
        wrk.choose_config(wrk.parse_args(["--keys"]), code)
    with pytest.raises(SystemExit, match="--exactly-once: the code in"):
        wrk.choose_config(wrk.parse_args(["--no-keys", "--exactly-once"]), code)


def test_this_checkout_runs_with_keys_and_exactly_once_by_default():
    code = wrk.code_at(wrk.ROOT)
    assert wrk.choose_config(wrk.parse_args([]), code) == (True, True)
    assert wrk.choose_config(wrk.parse_args(["--no-keys"]), code) == (False, True)


def test_the_stack_of_another_checkout_runs_its_procfile_in_its_directory(tmp_path):
    code = wrk.code_at(fake_checkout(tmp_path / "old", "", keys=False))
    target = Target(started=True, base_url="http://127.0.0.1:18723", database_url="postgresql:///x", key_prefix="t:")
    stack = Stack(wrk.parse_args([]), target, tmp_path / "run", code, {"AUTH_ENABLED": "false"})
    worker = stack.services["worker"]
    assert worker.argv[0] == str(wrk.ROOT / ".venv" / "bin" / "celery")
    assert worker.argv[worker.argv.index("-n") + 1] == "bench-worker1@%h"
    assert worker.cwd == code.root and worker.env["PYTHONPATH"] == str(code.root)
    assert stack.base_env["PYTHONPATH"] == str(code.root)  # migrate and the key CLI import its code too
    assert worker.env["AUTH_ENABLED"] == stack.base_env["AUTH_ENABLED"] == "false"
    assert stack.services["api2"].env["PORT"] == "8002" and stack.services["api2"].env["INSTANCE_NAME"] == "bench-api2"
    assert stack.services["nginx"].argv == [str(wrk.ROOT / ".venv" / "bin" / "python"), "nginx/run_local.py"]


def test_this_checkouts_stack_expands_the_procfiles_variables(tmp_path, monkeypatch):
    """${VAR:-default} as honcho's shell has it, from the stack's environment: no literal
    `${WORKER_PIDFILE:-}` for Celery to write a file of that name, and not `make run`'s pidfile."""
    monkeypatch.setenv("WORKER_PIDFILE", str(tmp_path / "make-run-worker.pid"))
    target = Target(started=True, base_url="http://127.0.0.1:18723", database_url="postgresql:///x", key_prefix="t:")
    stack = Stack(wrk.parse_args(["--api1-port", "9001"]), target, tmp_path / "run")
    assert stack.checkout.root == wrk.ROOT and "PYTHONPATH" not in stack.checkout.env()
    for service in stack.services.values():
        assert not any("${" in word for word in service.argv), service.argv
        assert service.cwd == wrk.ROOT
    worker = stack.services["worker"].argv
    assert worker[0] == ".venv/bin/celery" and "--pidfile=" in worker  # empty: Celery writes none
    assert stack.services["nginx"].env["API1_ADDR"] == "127.0.0.1:9001"
    assert stack.services["api1"].env["PORT"] == "9001"


def test_read_procfile_expands_as_the_shell_does(tmp_path):
    procfile = tmp_path / "Procfile"
    procfile.write_text("# a comment\n"
                        "web: PORT=${WEB_PORT:-8000} X=${UNSET} run --at=\"${WHERE:-here}\" ${WHO:-me}\n")
    assert read_procfile(procfile, {"WEB_PORT": "9000", "WHO": ""}) == {
        "web": ({"PORT": "9000", "X": ""}, ["run", "--at=here", "me"])}


def test_batch_timings_finds_the_runs_their_tasks_and_the_time_between(tmp_path):
    """A task carries several runs (DRAIN_TASK_SECONDS): Celery's cost shows between tasks."""
    def line(ms: int, seconds: float, task: str, process: int, read: int = 100) -> str:
        return json.dumps({"time": f"2026-12-01 11:10:10,{ms:03d}", "message": "drained batch", "read": read,
                           "seconds": seconds, "consumer": f"bench-worker1@vm-{process}", "task_id": task}) + "\n"

    log = tmp_path / "worker.log"
    log.write_text("celery banner\n" + line(1, 0.5, "before the offset", 1))
    offset = log.stat().st_size
    with open(log, "a") as fh:
        fh.writelines([
            line(20, 0.02, "a", 1), line(55, 0.03, "a", 1), line(66, 0.01, "a", 1),  # 0-66 ms, 6 ms between runs
            line(40, 0.04, "b", 2),                                                  # 0-40 ms, the other process
            line(80, 0.01, "c", 1),                                                  # 70-80 ms: 4 ms after a
            line(90, 0.001, "c", 1, read=0), 'not JSON, "drained batch"\n'])
    timings = batch_timings(log, offset, pool_processes=2, drain_s=0.1)
    assert (timings["runs"], timings["mean_entries"], timings["median_ms"], timings["mean_ms"]) == (5, 100, 20, 22)
    assert (timings["tasks"], timings["runs_per_task"], timings["task_median_ms"]) == (3, 1.7, 40)
    assert timings["between_runs_ms"] == 1.2  # (116 ms of tasks − 110 inside drain_batch) ÷ 5 runs
    assert (timings["handoff_median_ms"], timings["handoffs"]) == (4, 1)
    assert timings["pool_wall_ms_per_run"] == 40  # 2 processes × 100 ms over 5 runs
    assert timings["no_task_share"] == 0.42  # 1 − 116 ms of tasks ÷ 200 ms
    assert batch_timings(log, log.stat().st_size, 2, 0.1) is None


class Recorder(http.server.BaseHTTPRequestHandler):
    """Keeps every POST (client port, headers, JSON body) and answers 202, or 429 to every 10th."""

    protocol_version = "HTTP/1.1"  # keep-alive, as nginx
    disable_nagle_algorithm = True  # else each answer waits ~40 ms for a delayed ACK
    received: list[tuple[int, dict, dict]] = []
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            self.received.append((self.client_address[1], dict(self.headers), body))
            status = 429 if len(self.received) % 10 == 0 else 202
        answer = b'{"status":"queued"}' if status == 202 else b'{"error":"rate_limited"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args) -> None:
        pass


class QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # wrk drops its connections mid-request when its time is up: not a failure


@pytest.fixture
def server():
    Recorder.received = []
    httpd = QuietServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def run_script(url: str, script: str, env: dict[str, str]) -> dict:
    out = subprocess.run(["wrk", "-t2", "-c4", "-d1s", "--latency", "-s", str(wrk.SCRIPTS / script), url],
                         capture_output=True, text=True, timeout=30, env={**os.environ, **env}, check=True)
    return wrk_report.parse_wrk(out.stdout)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
@pytest.mark.parametrize("script,path,per_request", [("batch5.lua", "/api/logs/batch", 5),
                                                      ("single.lua", "/api/log", 1)])
def test_the_scripts_send_numbered_logs_with_a_key(server, script, path, per_request):
    figures = run_script(server + path, script,
                         {"COLLECTOR_KEY": "secret-1", "WRK_EXACTLY_ONCE": "1", "WRK_RUN_ID": "t-0a1b"})
    received = list(Recorder.received)
    assert len(received) >= figures["requests"] > 20
    # common.lua counted what wrk counted: every answer, the 429s as wrk's Non-2xx.
    assert sum(figures["statuses"].values()) == figures["requests"]
    assert figures["statuses"].get(429, 0) == figures["non_2xx_3xx"] > 0
    assert wrk_report.ok_requests(figures) == figures["statuses"][202]

    keys = [headers["Idempotency-Key"] for _, headers, _ in received]
    assert len(set(keys)) == len(keys)
    last_seq: dict = {}
    numbered = set()
    for port, headers, body in received:
        assert headers["Authorization"] == "Bearer secret-1"
        assert headers["Content-Type"] == "application/json"
        logs = body["logs"] if per_request > 1 else [body]
        assert len(logs) == per_request
        if per_request == 5:
            assert [log["log_level"] for log in logs] == ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
            assert len({log["device_id"] for log in logs}) == 1
        for log in logs:
            assert set(log) == {"device_id", "log_level", "message", "log_data", "boot_id", "seq"}
            assert log["device_id"].startswith("device_") and 0 <= int(log["device_id"][7:]) <= 99
            assert log["boot_id"] in ("wrk-t-0a1b-t1", "wrk-t-0a1b-t2")  # one per wrk thread
            # One connection sends one request at a time: its seqs per (device, boot) go up.
            stream = (port, log["device_id"], log["boot_id"])
            assert log["seq"] > last_seq.get(stream, 0)
            last_seq[stream] = log["seq"]
            numbered.add((log["device_id"], log["boot_id"], log["seq"]))
    assert len(numbered) == len(received) * per_request  # never the same (device_id, boot_id, seq) twice


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
@pytest.mark.parametrize("script,path", [("batch5.lua", "/api/logs/batch"), ("single.lua", "/api/log")])
def test_the_scripts_send_plain_logs_by_default(server, script, path):
    """As ../shared/bench's scripts: what a checkout without keys or numbering accepts."""
    run_script(server + path, script, {"COLLECTOR_KEY": "", "WRK_EXACTLY_ONCE": "0"})
    assert Recorder.received
    for _, headers, body in Recorder.received:
        assert "Authorization" not in headers and "Idempotency-Key" not in headers
        for log in body.get("logs", [body]):
            assert set(log) == {"device_id", "log_level", "message", "log_data"}


def test_comparison_takes_medians_per_checkout_and_their_ratio(tmp_path):
    new = wrk.Code(tmp_path / "new", tmp_path, "bbb", True, True)
    old = wrk.Code(tmp_path / "old", tmp_path, "aaa", False, False)

    def run(code, accepted, cpu):
        return {"code": str(code.root), "keys": code.has_keys, "exactly_once": code.has_sequences,
                "phases": {"batch": {"accepted_per_s": accepted, "cpu_s_per_million_logs": cpu, "p99_ms": None}}}

    runs = [run(new, 100, 10), run(old, 50, 8), run(new, 300, 30), run(old, 70, 9), run(new, 200, 12), run(old, 60, 12)]
    data, table = wrk_report.comparison(runs, [new, old])
    assert data["medians"][str(new.root)]["batch"] == {"accepted_per_s": 200, "cpu_s_per_million_logs": 12}
    assert data["ratios_new_over_old"]["batch"] == {"accepted_per_s": 3.333, "cpu_s_per_million_logs": 1.333}
    assert "| batch | accepted_per_s | 200.0 | 60.0 | 3.33× |" in table
    assert "- aaa (" in table and "keys off, exactly-once off" in table
