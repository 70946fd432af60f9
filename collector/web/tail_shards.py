"""Live tails over stream shards (STREAM_SHARDS, collector.pipeline.shards).

Each shard is a stream of its own: its own epoch, watermark, rows (stored under the
shard's stream identity) and, in each API process, its own poller. So a tail keeps one
position per shard it reads, in a Lane, and each lane catches up, joins its shard's
poller and takes its batches exactly as an unsharded tail does (docs/tail.md). A
device's logs all go to its shard: a tail of some devices reads only their shards (a
device's tail: one), a tail of a prefix or of the fleet reads every shard. A device's
logs come in order (one lane, in entry order); logs of different shards come in the
order they are read, as the pipeline has no order between shards either.

Event ids. Unsharded, an event's id is its log's position, "<ms>-<n>@<epoch>"
(collector.store.positions), exactly as before shards existed. Sharded (STREAM_SHARDS
above 1) it holds each of the tail's lanes' positions after that event:

    <count>.<base>.<tag>_<delta>[-<n>]@<epoch>[.<tag>_<delta>[-<n>]@<epoch> ...]

`count` is STREAM_SHARDS (decimal); then one part per lane, in shard order: the
shard's hash tag (shards.tags, "s0", "s43"), and its position <base + delta>-<n>@<epoch>.
`base` is the smallest ms of the parts; base, delta and n are in base 36 (0-9a-z),
and n is left out when 0. E.g.
"4.mimdudff.s2_0@5e4c4a11.s0_2s-3@a1b2c3d4" (a tail of two devices, of shards 0 and 2):
shard s2 at 1764547200123-0@5e4c4a11, shard s0 at 1764547200223-3@a1b2c3d4. That is
usually 14-20 characters per shard, at most 27 (when a shard has delivered nothing the
base is 0 and every delta long); STREAM_SHARDS is capped at 256, where a fleet tail's id is at
most about 7 KB, within the 8 KB nginx takes in a header or a request line
(large_client_header_buffers; gunicorn.conf.py); a device's tail names its one shard.

A resume reads each lane's shard after that shard's position in the id. A lane whose
shard the id does not name starts where a new tail would (at the watermark) when the id
was given for this STREAM_SHARDS (it came from a tail of other devices: nothing of
this tail's was in that shard's part); when the id was given under another
STREAM_SHARDS (an unsharded id included), the shard's stream is new since then, and the
lane starts at its current incarnation's start: nothing stored since the change is
missed. Shards are matched by tag, not index, so a stream that both layouts share
goes on from its position. With STREAM_SHARDS=1 only today's ids are taken.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from collector.core.settings import Settings
from collector.pipeline import shards
from collector.store.positions import MAX_STREAM_SEQ, Position, Stored
from collector.store.search import LogFilter
from collector.web.tail_poller import Poller, Subscriber

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_PART = r"([A-Za-z0-9]{1,16})_([0-9a-z]{1,13})(?:-([0-9a-z]{1,13}))?@([A-Za-z0-9]{1,64})"
_COMPOSITE = re.compile(rf"\A(\d{{1,4}})\.([0-9a-z]{{1,13}})((?:\.{_PART})+)\Z")
_PARTS = re.compile(rf"\.{_PART}")


@dataclass(eq=False)
class Lane:
    """A tail's part in one shard. `pos`: every matching row of the shard up to it has
    been sent; `target`: a watermark of the shard the catch-up reads up to."""

    index: int
    tag: str | None  # None: the unsharded stream
    shard: Settings
    poller: Poller
    subscriber: Subscriber
    pos: Position
    target: Position


def tag_of(settings: Settings, index: int) -> str | None:
    return shards.tags(settings.stream_shards)[index] if shards.tagged(settings) else None


def indexes(settings: Settings, filt: LogFilter) -> list[int]:
    """The shards a tail reads: its devices', or every one (a prefix may be any device)."""
    if filt.device_ids:
        return sorted({shards.index_of(settings, d) for d in filt.device_ids})
    return list(range(settings.stream_shards))


def devices_of(settings: Settings, filt: LogFilter, index: int) -> frozenset[str] | None:
    """The devices a lane can want (None: any), for its shard's poller."""
    if not filt.device_ids:
        return None
    return frozenset(d for d in filt.device_ids if shards.index_of(settings, d) == index)


@dataclass(frozen=True)
class Resume:
    """A Last-Event-ID: positions by shard tag, and the STREAM_SHARDS that gave it."""

    count: int
    positions: dict[str | None, Position]

    def start(self, settings: Settings, tag: str | None, watermark: Position) -> Position:
        """Where a lane of that shard starts (the module's docstring says why)."""
        found = self.positions.get(tag)
        if found is not None:
            return found
        if self.count == settings.stream_shards:
            return watermark
        return Position(watermark.epoch, 0, 0)


def open_lanes(settings: Settings, filt: LogFilter, requested: Resume | None, pollers: Sequence[Poller],
               watermark: Callable[[int, bool], Position]) -> list[Lane]:
    """A new tail's lanes, each starting where `requested` asks, else at its shard's
    watermark (`watermark(index, fresh)`: tail.TailHub.watermark)."""
    lanes = []
    for index in indexes(settings, filt):
        tag = tag_of(settings, index)
        found = watermark(index, False)
        asked = requested.positions.get(tag) if requested is not None else None
        if asked is not None and asked.epoch != found.epoch:
            # An older stream incarnation, or a newer one this process's poller has not seen yet.
            found = watermark(index, True)
        start = requested.start(settings, tag, found) if requested is not None else found
        subscriber = Subscriber(devices_of(settings, filt, index))
        lanes.append(Lane(index, tag, shards.shard(settings, index), pollers[index], subscriber, start, found))
    return lanes


def parse(settings: Settings, text: str) -> Resume:
    """Raises ValueError for anything that is not an id these settings' tails could
    have given, or tails of another STREAM_SHARDS (above 1)."""
    text = text.strip()
    match = _COMPOSITE.match(text) if settings.stream_shards > 1 else None
    if match is None:
        # Unsharded, the one stream's: on a cluster even one shard is tagged (shards.tagged).
        return Resume(1, {shards.tags(1)[0] if settings.redis_cluster else None: Position.parse(text)})
    count, base = int(match[1]), int(match[2], 36)
    found: dict[str | None, Position] = {}
    for tag, delta, seq, epoch in _PARTS.findall(match[3]):
        ms, n = base + int(delta, 36), int(seq, 36) if seq else 0
        if tag in found or ms > MAX_STREAM_SEQ or n > MAX_STREAM_SEQ:
            raise ValueError(f"not a position: {text!r}")
        found[tag] = Position(epoch, ms, n)
    if not 2 <= count <= 1024 or len(found) > count:
        raise ValueError(f"not a position: {text!r}")
    return Resume(count, found)


def _b36(n: int) -> str:
    out = _DIGITS[n % 36]
    while n >= 36:
        n //= 36
        out = _DIGITS[n % 36] + out
    return out


def _part(tag: str | None, position: Position, base: int) -> str:
    n = f"-{_b36(position.seq)}" if position.seq else ""
    return f".{tag}_{_b36(position.ms - base)}{n}@{position.epoch}"


class Ids:
    """Writes a tail's ids: its one lane's position unsharded, else the composite."""

    def __init__(self, settings: Settings, lanes: Sequence[Lane]) -> None:
        self.sharded = settings.stream_shards > 1
        self.head = f"{settings.stream_shards}."
        self.tags = [lane.tag for lane in lanes]

    def text(self, positions: Sequence[Position]) -> str:
        if not self.sharded:
            return positions[0].text()
        base = min(p.ms for p in positions)
        return self.head + _b36(base) + "".join(_part(t, p, base) for t, p in zip(self.tags, positions, strict=True))

    def of_rows(self, positions: Sequence[Position], lane: int, epoch: str) -> Callable[[Stored], bytes] | None:
        """The id of each of a batch of one lane's rows: that row's position for the lane,
        the others' `positions` (the same for the whole batch, so only the parts around
        the lane's are written per base, not per row); None unsharded (tail.encode's own)."""
        if not self.sharded:
            return None
        others = [p.ms for i, p in enumerate(positions) if i != lane]
        low = min(others, default=None)
        tag = self.tags[lane]
        around: dict[int, tuple[bytes, bytes]] = {}

        def row_id(row: Stored) -> bytes:
            ms, seq = row.entry
            base = ms if low is None or ms < low else low
            if base not in around:
                parts = [_part(t, p, base) if i != lane else ""
                         for i, (t, p) in enumerate(zip(self.tags, positions, strict=True))]
                around[base] = ((self.head + _b36(base) + "".join(parts[:lane])).encode(),
                                "".join(parts[lane + 1:]).encode())
            head, tail = around[base]
            return head + _part(tag, Position(epoch, ms, seq), base).encode() + tail

        return row_id
