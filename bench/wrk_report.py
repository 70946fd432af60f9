"""What `python -m bench.wrk` makes of its runs: wrk's output as numbers, the figures of a phase
(logs accepted and stored per second, errors, CPU seconds per million logs, the storage checks),
and its tables: one per run, and the medians per checkout with their ratio new/old."""

from __future__ import annotations

import re
import statistics

from bench.common import BenchError
from bench.probes import SERVICE_GROUPS, cpu_seconds_per_million
from bench.stack import Checkout

# The figures medians and ratios are taken of, per phase.
FIGURES = ("accepted_per_s", "persisted_per_s", "p50_ms", "p99_ms", "cpu_s_per_million_logs", "drain_per_s")


# --- wrk's output --------------------------------------------------------------------------

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_TIME = r"([\d.]+)(us|ms|s|m|h)"


def parse_wrk(text: str) -> dict:
    """wrk's summary (with --latency) and common.lua's status lines, as numbers."""
    def find(pattern: str) -> re.Match | None:
        return re.search(pattern, text, re.MULTILINE)

    total = find(rf"^\s*(\d+) requests in {_TIME}")
    rate = find(r"^Requests/sec:\s+([\d.]+)")
    if total is None or rate is None:
        raise BenchError(f"wrk printed no summary:\n{text[-2000:]}")
    requests, rps = int(total.group(1)), float(rate.group(1))
    sockets = find(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
    non_2xx = find(r"Non-2xx or 3xx responses: (\d+)")
    latency = {f"p{float(m.group(1)):g}_ms": round(float(m.group(2)) * _UNITS[m.group(3)] * 1000, 2)
               for m in re.finditer(rf"^\s+([\d.]+)%\s+{_TIME}\s*$", text, re.MULTILINE)}
    return {
        "requests": requests,
        # requests ÷ Requests/sec is wrk's own runtime to the ms; "in 1.00m" is rounded to 0.6 s.
        "duration_s": round(requests / rps, 3) if rps else float(total.group(2)) * _UNITS[total.group(3)],
        "requests_per_s": rps,
        **latency,
        "socket_errors": dict(zip(("connect", "read", "write", "timeout"), map(int, sockets.groups()), strict=True))
        if sockets else {"connect": 0, "read": 0, "write": 0, "timeout": 0},
        "non_2xx_3xx": int(non_2xx.group(1)) if non_2xx else 0,
        "statuses": {int(m.group(1)): int(m.group(2)) for m in re.finditer(r"^wrk-status (\d+) (\d+)$", text, re.M)},
        "error_samples": {int(m.group(1)): m.group(2) for m in re.finditer(r"^wrk-sample (\d+) (.*)$", text, re.M)},
    }


def ok_requests(wrk: dict) -> int:
    """Requests answered 2xx: common.lua's count, or else wrk's total less its "Non-2xx or 3xx"."""
    if wrk["statuses"]:
        return sum(n for status, n in wrk["statuses"].items() if 200 <= status < 300)
    return wrk["requests"] - wrk["non_2xx_3xx"]


# --- the figures ---------------------------------------------------------------------------

def cpu_cost(cpu: dict, seconds: float, logs: int) -> dict:
    """bench.probes' CPU seconds per million logs (the collector's parts: SERVICE_GROUPS), in all
    and by part, from cpu_percent's % of one core over `seconds`; and the CPU seconds in all."""
    return {"cpu_s": round(sum(cpu.get(g) or 0.0 for g in SERVICE_GROUPS) / 100 * seconds, 2),
            "cpu_s_per_million_logs": cpu_seconds_per_million(cpu, seconds, logs),
            "cpu_s_per_million_by_part": {g: cpu_seconds_per_million({g: cpu.get(g) or 0.0}, seconds, logs)
                                          for g in SERVICE_GROUPS}}


def storage_problems(accepted: int, stored: int, distinct: int | None, in_flight: int) -> list[str]:
    """Every log answered 2xx stored once. wrk counts only the answers it read before stopping;
    up to `in_flight` more logs (its open requests) may have been accepted and stored too."""
    problems = []
    if stored < accepted:
        problems.append(f"LOST: {accepted - stored:,} logs answered 2xx are not stored ({stored:,} of {accepted:,})")
    elif stored > accepted + in_flight:
        problems.append(f"EXTRA ROWS: {stored:,} stored for {accepted:,} accepted, more than the {in_flight:,} "
                        "that may have been in flight")
    if distinct is not None and distinct != stored:
        problems.append(f"DUPLICATES: {stored - distinct:,} rows repeat a (device_id, boot_id, seq)")
    return problems


def load_figures(wrk: dict, per_request: int, connections: int, stored: int, distinct: int | None,
                 end_to_end_s: float) -> dict:
    """A load phase's figures from wrk's and the rows stored from wrk's start until the count
    stopped growing (`end_to_end_s`), as ../shared/bench/README.md defines them."""
    accepted = ok_requests(wrk) * per_request
    socket_errors = sum(wrk["socket_errors"].values())
    return {
        "accepted_logs": accepted, "accepted_per_s": round(accepted / wrk["duration_s"], 1),
        "stored_logs": stored, "distinct_logs": distinct,
        "persisted_per_s": round(stored / end_to_end_s, 1), "end_to_end_s": round(end_to_end_s, 2),
        "errors": socket_errors + wrk["requests"] - ok_requests(wrk),
        # Requests open when wrk stopped (one per connection), and those it gave up on, may be stored too.
        "problems": storage_problems(accepted, stored, distinct, (connections + socket_errors) * per_request) + (
            [f"THROTTLED: {wrk['statuses'][429]:,} answers were 429: the figures are of a throttled load (raise "
             "--rate-limit, or nginx's RATE_LIMIT)"] if wrk["statuses"].get(429) else []),
    }


def collector_cpu(cpu: dict) -> dict:
    """cpu_percent's figures without Processes' Locust group (no Locust here: wrk is in "other")."""
    return {part: pct for part, pct in cpu.items() if part != "locust"}


# --- the tables ----------------------------------------------------------------------------

TABLE = ("| phase | accepted logs/s | persisted logs/s | p50 ms | p99 ms | errors | backlog 0 after s | "
         "CPU s per million logs | checks |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|")


def phase_row(phase: dict) -> str:
    def num(key: str, fmt: str = ",.0f") -> str:
        return "—" if phase.get(key) is None else format(phase[key], fmt)

    empty = num("backlog_empty_after_s", ".2f") + ("" if phase.get("kept_up", True) else " (over 1 s)")
    persisted = num("drain_per_s" if phase["name"] == "drain" else "persisted_per_s")
    return (f"| {phase['name']} | {num('accepted_per_s')} | {persisted} | {num('p50_ms', '.1f')} | "
            f"{num('p99_ms', '.1f')} | {num('errors')} | {empty} | {num('cpu_s_per_million_logs', ',.1f')} | "
            f"{'ok' if not phase['problems'] else '**FAILED**'} |")


def phase_notes(p: dict) -> list[str]:
    """What the table leaves out: the CPU by part, the counts behind the rates, the problems."""
    parts = ", ".join(f"{g} {v:,.1f}" for g, v in p["cpu_s_per_million_by_part"].items() if v)
    cores = ", ".join(f"{g} {v:g}%" for g, v in sorted(p["cpu_percent"].items(), key=lambda kv: -kv[1]))
    lines = [f"- {p['name']}: CPU s per million logs by part: {parts}; % of one core: {cores}"
             + (f"; wrk {p['wrk_cpu_percent']:g}% (in other)" if "wrk_cpu_percent" in p else "")]
    if p["name"] == "drain":
        lines.append(f"  {p['backlog']:,} pre-filled in {p['prefill_s']} s; {p['stored']:,} stored, "
                     f"{p['total_s']} s from the worker's start")
    else:
        distinct = "" if p["distinct_logs"] is None else f" ({p['distinct_logs']:,} distinct)"
        answers = ", ".join(f"{status} × {n:,}" for status, n in sorted(p["statuses"].items())) or "not counted"
        errors = ", ".join(f"{kind} {n:,}" for kind, n in p["socket_errors"].items() if n) or "none"
        lines.append(f"  {p['requests']:,} requests ({p['requests_per_s']:,.0f}/s), answers {answers}, socket "
                     f"errors {errors}; {p['accepted_logs']:,} logs accepted, {p['stored_logs']:,} stored{distinct}")
        lines += [f"  answered {status}: {body}" for status, body in p["error_samples"].items()]
    return lines + [f"  **{problem}**" for problem in p["problems"]]


def describe(result: dict) -> str:
    config = f"keys {'on' if result['keys'] else 'off'}, exactly-once {'on' if result['exactly_once'] else 'off'}"
    lines = [f"\n## {result['revision']}, round {result['round']} ({result['code']}): {config}",
             *[f"- {note}" for note in result["notes"]], "", TABLE]
    lines += [phase_row(p) for p in result["phases"].values()]
    for phase in result["phases"].values():
        lines += phase_notes(phase)
    return "\n".join(lines)


def medians(runs: list[dict], code: str) -> dict:
    """The median of each figure per phase over the runs of the checkout at `code`."""
    out: dict = {}
    for run in (r for r in runs if r["code"] == code):
        for name, phase in run["phases"].items():
            for key in FIGURES:
                if phase.get(key) is not None:
                    out.setdefault(name, {}).setdefault(key, []).append(phase[key])
    return {name: {k: round(statistics.median(v), 2) for k, v in figures.items()} for name, figures in out.items()}


def comparison(runs: list[dict], codes: list[Checkout]) -> tuple[dict, str]:
    """Medians per checkout and, with two, the ratio new/old (first/second) per figure: as data and as a table."""
    table = {str(c.root): medians(runs, str(c.root)) for c in codes}
    new, old = str(codes[0].root), str(codes[1].root) if len(codes) > 1 else None
    names = " | ".join(f"{c.revision} ({'new' if i == 0 else 'old'})" if old else c.revision
                       for i, c in enumerate(codes))
    configs = {r["code"]: f"keys {'on' if r['keys'] else 'off'}, exactly-once {'on' if r['exactly_once'] else 'off'}"
               for r in runs}
    lines = [f"\n## Medians of {len(runs) // len(codes)} runs each", "",
             *[f"- {c.revision} ({c.root}): {configs.get(str(c.root), 'no run')}" for c in codes], "",
             f"| phase | figure | {names} |" + (" new/old |" if old else ""),
             "|---|---|" + "--:|" * (len(codes) + (1 if old else 0))]
    ratios: dict = {}
    for name, figures in table[new].items():
        for key, value in figures.items():
            cells = [format(table[c][name][key], ",.1f") if key in table[c].get(name, {}) else "—" for c in table]
            if old and (before := table[old].get(name, {}).get(key)):
                ratios.setdefault(name, {})[key] = round(value / before, 3)
                cells.append(f"{value / before:.2f}×")
            lines.append(f"| {name} | {key} | " + " | ".join(cells) + " |")
    return {"medians": table, "ratios_new_over_old": ratios}, "\n".join(lines)
