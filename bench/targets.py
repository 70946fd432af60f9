"""The performance targets, compared with a run's figures.

The bench prints this comparison with every run (and keeps it in latest.json under
"targets"), so a "met" or "missed" in the docs is a command's output, not a reading of
the table by eye. It never changes the exit status: the machine's speed is not a bug.
"""

from __future__ import annotations

from bench.sampling import growing

MIB_PER_MB = 1e6 / 2**20
GROWTH_TOLERANCE = 0.10  # "not growing": the second half's peak within 10% of the first half's


def _short(value: float, target: float) -> str:
    """How far a rate is under its target, in %."""
    return f"{(target - value) / target:.0%} under"


def _rate(phase: dict, key: str) -> float:
    return phase[key] or 0.0


def _verdict(problems: list[str]) -> str:
    return "met" if not problems else "**missed**: " + "; ".join(problems)


def _trend(summary: dict | None, unit: str, digits: int = 0) -> str:
    if not summary:
        return "not sampled"
    fmt = f"{{:,.{digits}f}}"
    return (f"{fmt.format(summary['min'])}–{fmt.format(summary['max'])}{unit} "
            f"(peak {fmt.format(summary['first_half_max'] or 0)} in the first half of the load, "
            f"{fmt.format(summary['second_half_max'] or 0)} in the second)")


def judge(report: dict) -> list[dict]:
    """[{target, measured, verdict}] for each target the run's phases can speak to."""
    phases = {p["name"]: p for p in report["phases"]}
    batch, single, drain = phases.get("batch"), phases.get("single"), report.get("drain")
    rows = []

    if batch:
        problems = []
        if batch["accepted_per_s"] < 10_000:
            problems.append(f"throughput {_short(_rate(batch, 'accepted_per_s'), 10_000)}")
        if batch["p99_ms"] is None or batch["p99_ms"] > 50:
            problems.append(f"p99 {(batch['p99_ms'] or 0) - 50:+,.0f} ms")
        if batch["failures"]:
            problems.append(f"{batch['failures']:,} failures")
        rows.append({
            "target": "batch ingest through nginx: ≥ 10,000 logs/s accepted, p99 ≤ 50 ms, no failures",
            "measured": (f"{batch['accepted_per_s']:,.0f} logs/s, p99 {batch['p99_ms'] or 0:,.0f} ms, "
                         f"{batch['failures']:,} failures"),
            "verdict": _verdict(problems)})

        backlog = batch["during_load"].get("backlog")
        grows = growing(backlog, GROWTH_TOLERANCE)
        problems = []
        if batch["persisted_per_s"] < 10_000:
            problems.append(f"throughput {_short(_rate(batch, 'persisted_per_s'), 10_000)}")
        if grows is None:
            problems.append("backlog not sampled")
        elif grows:
            problems.append("backlog growing")
        rows.append({
            "target": (f"≥ 10,000 logs/s persisted for the whole load ({batch['duration_s']:g} s), "
                       "backlog not growing"),
            "measured": f"{batch['persisted_per_s']:,.0f} logs/s; backlog {_trend(backlog, '')}",
            "verdict": _verdict(problems)})

        memory = batch["during_load"].get("redis_mib")
        grows = growing(memory, GROWTH_TOLERANCE)
        rows.append({
            "target": "Redis memory flat under sustained load",
            "measured": (f"used memory {_trend(memory, ' MiB', 1)}, "
                         f"{batch['during_load']['samples']} samples during the batch load"),
            "verdict": ("not sampled" if grows is None else "**missed**: growing" if grows else "met")})

    if drain:
        rate = drain["drain_per_s"] or 0.0
        rows.append({
            "target": "drain from a 1,000,000 backlog: ≥ 30,000 logs/s",
            "measured": f"{rate:,.0f} logs/s from a {drain['backlog']:,} backlog",
            "verdict": _verdict([] if rate >= 30_000 else [f"{_short(rate, 30_000)}"])})

    if single:
        problems = []
        if single["p50_ms"] is None or single["p50_ms"] > 5:
            problems.append(f"p50 {(single['p50_ms'] or 0) - 5:+,.0f} ms")
        if single["p99_ms"] is None or single["p99_ms"] > 20:
            problems.append(f"p99 {(single['p99_ms'] or 0) - 20:+,.0f} ms")
        rows.append({
            "target": "single logs: p50 ≤ 5 ms, p99 ≤ 20 ms",
            "measured": f"p50 {single['p50_ms'] or 0:,.0f} ms, p99 {single['p99_ms'] or 0:,.0f} ms",
            "verdict": _verdict(problems)})

    largest = max((part["rss"].get("api_largest_mib", 0) for part in [*report["phases"], drain] if part),
                  default=0)
    if largest:
        limit = 100 * MIB_PER_MB
        rows.append({
            "target": "API worker RSS ≤ 100 MB each",
            "measured": f"largest API process {largest:,.1f} MiB ({largest / MIB_PER_MB:,.1f} MB), peak of the samples",
            "verdict": "met" if largest <= limit else f"**missed** by {(largest - limit) / MIB_PER_MB:,.1f} MB"})
    return rows
