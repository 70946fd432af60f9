"""The bench's report: markdown for people (stdout and latest.md), every figure as JSON
(latest.json), and, on request, a small record of the run for the docs to quote."""

from __future__ import annotations

from pathlib import Path

from bench.common import dumps
from bench.probes import cpu_seconds_per_million

# The table's "backlog left" and "s to store it", defined once for the report and the docs.
BACKLOG_COLUMNS = ("backlog left: stream lag + pending when the load stopped (drain: the pre-filled backlog); "
                   "s to store it: from then (drain: from the worker's start) until every log was in PostgreSQL.")


def _fmt(value, digits: int = 0, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and digits == 0:
        value = round(value)
    return f"{value:,.{digits}f}{unit}" if isinstance(value, float) else f"{value:,}{unit}"


def _cpu_text(cpu: dict, cores: int) -> str:
    parts = ", ".join(f"{name} {value:.0f}%" for name, value in sorted(cpu.items(), key=lambda kv: -(kv[1] or 0))
                      if value is not None)
    return f"{parts} (of one core; {cores} cores = {cores * 100}%; other: the rest of the host)"


def _per_million(cpu: dict, seconds: float | None, logs: int | None) -> str:
    figure = cpu_seconds_per_million(cpu, seconds, logs)
    return (f"**{_fmt(figure, 1)} CPU s per million logs** (APIs, worker, nginx, PostgreSQL and Redis; "
            "not the load generator, not the rest of the host)")


def _range(summary: dict | None, unit: str = "", digits: int = 0) -> str | None:
    if not summary or summary["min"] is None:
        return None
    return f"{_fmt(float(summary['min']), digits)}–{_fmt(float(summary['max']), digits)}{unit}"


def _header(report: dict) -> list[str]:
    m, cfg, stack = report["machine"], report["config"], report["stack"]
    lines = [
        f"# Collector benchmark, {report['started_at']}",
        "",
        (f"Machine: {m['cores']} cores ({m['usable_cores']} usable), {m['ram_gib']} GiB RAM, {m['cpu_model']}; "
         f"{m['kernel']}, Python {m['python']}. Revision {report['revision']}."),
        (f"Stack: {stack['description']}. Load: Locust on the same machine, {cfg['users']} devices, "
         f"{cfg['duration']:g} s per phase. Persisted rows from `{stack['persisted_source']}`."),
    ]
    if stack.get("settings"):
        lines.append("Collector settings: " + ", ".join(f"{k}={v}" for k, v in stack["settings"].items()) + ".")
    return lines


def _table(report: dict) -> list[str]:
    lines = [
        ("| phase | accepted logs/s | persisted logs/s | p50 ms | p95 ms | p99 ms | failures "
         "| backlog left | s to store it | RSS API MiB | RSS worker MiB |"),
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for p in report["phases"]:
        failures = f"{p['failures']:,} ({p['fail_ratio']:.2%})"
        lines.append(
            f"| {p['label']} | {_fmt(p['accepted_per_s'])} | {_fmt(p['persisted_per_s'])} "
            f"| {_fmt(p['p50_ms'])} | {_fmt(p['p95_ms'])} | {_fmt(p['p99_ms'])} | {failures} "
            f"| {_fmt(p['backlog_at_load_end'])} | {_fmt(p['catch_up_s'], 1)} "
            f"| {_fmt(p['rss'].get('api_mib'))} | {_fmt(p['rss'].get('worker_mib'))} |"
        )
    d = report.get("drain")
    if d:
        lines.append(
            f"| drain ({d['backlog']:,} backlog, no load) | — | {_fmt(d['drain_per_s'])} | — | — | — | — "
            f"| {_fmt(d['backlog'])} | {_fmt(d['total_s'], 1)} "
            f"| {_fmt(d['rss'].get('api_mib'))} | {_fmt(d['rss'].get('worker_mib'))} |"
        )
    return lines


def _phase_notes(p: dict, cores: int) -> list[str]:
    verdict = "thresholds met" if p["thresholds_met"] else "**thresholds missed**"
    lost = p["lost_logs"]
    stored = ("every accepted log stored" if lost == 0 else
              f"**{lost:,} accepted logs not stored**" if lost and lost > 0 else
              f"**{-lost:,} more rows than accepted logs**" if lost else "stored count not checked")
    notes = [f"- {p['name']}: {p['accepted_logs']:,} logs accepted in {p['requests']:,} requests "
             f"({_fmt(p['requests_per_s'])} req/s); latency of {p['ingest_endpoint']}; {verdict}; {stored}."]
    notes += [f"  - {f['count']:,} × {f['error']}" for f in p["failure_kinds"][:5]]
    if p["cpu"]:
        notes.append(f"  - CPU during the load: {_cpu_text(p['cpu'], cores)}; "
                     f"{_per_million(p['cpu'], p['duration_s'], p['accepted_logs'])}.")
    during = p.get("during_load") or {}
    sampled = [f"backlog {text}" for text in [_range(during.get("backlog"))] if text]
    sampled += [f"Redis used memory {text}" for text in [_range(during.get("redis_mib"), " MiB", 1)] if text]
    if sampled:
        notes.append(f"  - sampled during the load ({during['samples']} samples, min–max): {'; '.join(sampled)}.")
    return notes


def _drain_notes(d: dict, cores: int) -> list[str]:
    note = (f"- drain: {d['backlog']:,} entries pre-filled in {d['prefill_s']:.1f} s "
            f"({_fmt(d['prefill_per_s'])} XADD/s); worker start to first row {_fmt(d['startup_s'], 1)} s, "
            f"then {_fmt(d['drain_s'], 1)} s to store them: **{_fmt(d['drain_per_s'])} logs/s**")
    notes = [note + ("." if d["complete"] else f" (**incomplete**: {d['stored']:,} stored).")]
    b = d.get("batches")
    if b:
        text = (f"  - drain runs (the worker's \"drained batch\" log lines, one per drain_batch call): {b['runs']:,} "
                f"runs of {b['mean_entries']:g} entries on average; inside drain_batch median {b['median_ms']:.1f} ms, "
                f"p95 {b['p95_ms']:.1f} ms, mean {b['mean_ms']:.1f} ms")
        if b.get("tasks"):
            # A drain_stream task carries many runs (DRAIN_TASK_SECONDS): what Celery costs is per task,
            # seen in the gaps between tasks, not in the time per run.
            text += (f". They came in {b['tasks']:,} drain_stream tasks of {b['runs_per_task']:g} runs "
                     f"(median {_fmt(b['task_median_ms'], 0)} ms each), with {b['between_runs_ms']:.2f} ms per run "
                     "between runs inside a task")
            if b["handoff_median_ms"] is not None:
                text += (f"; from a task's end to the next one's start on the same pool process (Celery's "
                         f"hand-off) {b['handoff_median_ms']:.1f} ms median over {b['handoffs']:,}")
        if b["pool_wall_ms_per_run"]:
            text += (f"; the pool's {b['pool_processes']} processes had {b['pool_wall_ms_per_run']:.1f} ms of wall "
                     "time per run from the first row to the last")
            if b.get("no_task_share") is not None:
                text += (f", {b['no_task_share']:.0%} of it in no drain task (processes waiting for one, and the "
                         "hand-offs)")
        notes.append(text + ".")
    if d["cpu"]:
        notes.append(f"  - CPU while draining: {_cpu_text(d['cpu'], cores)}; "
                     f"{_per_million(d['cpu'], d['total_s'], d['stored'])}.")
    return notes


def _targets(report: dict) -> list[str]:
    rows = report.get("targets") or []
    if not rows:
        return []
    lines = ["", "Against the targets (bench/targets.py):", "",
             "| target | measured | verdict |", "|---|---|---|"]
    lines += [f"| {r['target']} | {r['measured']} | {r['verdict']} |" for r in rows]
    return lines


def render_markdown(report: dict) -> str:
    cores = report["machine"]["usable_cores"]
    lines = [*_header(report), "", *_table(report), ""]
    notes = []
    for p in report["phases"]:
        notes += _phase_notes(p, cores)
    d = report.get("drain")
    if d:
        notes += _drain_notes(d, cores)
    elif report.get("drain_skipped"):
        notes.append(f"- drain: skipped ({report['drain_skipped']}).")
    end = report["end"]
    notes.append(f"- at the end: backlog (stream lag + pending) {_fmt(end.get('backlog'))}"
                 + (f"; stream length {_fmt(end.get('stream_length'))}" if end.get("stream_length") is not None else "")
                 + (f"; Redis used memory {end['redis_used_memory_mib']} MiB" if "redis_used_memory_mib" in end else "")
                 + (f"; logs table {end['postgres_table_mib']} MiB" if "postgres_table_mib" in end else "") + ".")
    notes.append(f"- {BACKLOG_COLUMNS}")
    largest = max((part["rss"].get("api_largest_mib", 0) for part in [*report["phases"], d] if part), default=0)
    notes.append("- RSS: peak VmRSS summed over the process trees (API: both Gunicorn instances; worker: the "
                 "Celery worker and its pool), so memory shared after fork is counted once per process"
                 + (f"; largest single API process {largest:,.1f} MiB." if largest else "."))
    notes += [f"- {n}" for n in report["stack"]["notes"]]
    if report.get("error"):
        notes.append(f"- **the run did not finish: {report['error']}**")
    return "\n".join(lines + notes + _targets(report)) + "\n"


def without_samples(report: dict) -> dict:
    """The report without its raw sample series: the small record the docs quote."""
    record = dict(report)
    record["phases"] = [{k: v for k, v in p.items() if k != "samples"} for p in report["phases"]]
    if report.get("drain"):
        record["drain"] = {k: v for k, v in report["drain"].items() if k != "samples"}
    return record


def write_results(out_dir: Path, report: dict, record: Path | None = None) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(report)
    (out_dir / "latest.md").write_text(markdown)
    (out_dir / "latest.json").write_text(dumps(report))
    if record is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(dumps({**without_samples(report), "markdown": markdown.splitlines()}))
    return markdown
