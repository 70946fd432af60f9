"""The stored-up-to watermark: the stream position up to which every log is stored.

The drain commits a batch's rows to PostgreSQL before it XACKs the batch's entries,
and a consumer group only moves past an entry by delivering it. So every entry of
the stream up to

    W = min(the group's last-delivered-id, the smallest pending id - 1)

is acknowledged, which means its row is committed (or it is a dead letter or a
duplicate, which have no row of their own). Concurrent drains commit out of entry
order, and a row that commits later than its neighbours keeps its entry pending
until then, holding W below it: reading rows only up to W never skips a row that is
still to come. Live tails (collector.web.tail) read stored logs only up to W.
"""

from __future__ import annotations

import redis

from collector.pipeline.group import epoch_key, group_info, parse_id
from collector.store.positions import Position


def stored_up_to(client: redis.Redis, stream: str, group: str) -> Position | None:
    """W (with the stream's current epoch), in one round trip; None while the stream has
    no epoch yet (nothing was ever queued or drained).

    XINFO GROUPS is read before XPENDING, in that order on one connection: an entry
    delivered between the two is pending in the second reading but beyond the
    last-delivered-id of the first, so W cannot pass it; the other order could. An
    entry acknowledged between the two only makes W more conservative than it could be.
    """
    pipe = client.pipeline(transaction=False)
    pipe.get(epoch_key(stream))
    pipe.xinfo_groups(stream)
    pipe.xpending(stream, group)
    epoch, groups, pending = pipe.execute(raise_on_error=False)
    if isinstance(epoch, Exception):
        raise epoch
    if epoch is None:
        return None
    epoch = epoch.decode()
    for reply in (groups, pending):
        # No stream or no group yet: nothing has been delivered, so nothing is stored.
        if isinstance(reply, redis.ResponseError) and ("no such key" in str(reply) or "NOGROUP" in str(reply)):
            return Position(epoch, 0, 0)
        if isinstance(reply, Exception):
            raise reply
    info = group_info(groups, group)
    if info is None:
        return Position(epoch, 0, 0)
    delivered = parse_id(info["last-delivered-id"])
    if pending["pending"]:
        first_pending = Position.before(epoch, parse_id(pending["min"]))
        return min(first_pending, Position(epoch, *delivered))
    return Position(epoch, *delivered)
