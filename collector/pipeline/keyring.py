"""Keys as the API sees them: secrets, principals, and the copy of the keys table in Redis.

The API checks keys without PostgreSQL, so ingest goes on while the database is
down: the CLI (and a beat task, every KEYS_SYNC_INTERVAL, which also heals a
replaced Redis) copies each live key's hash, role and scope into one Redis hash.
Each API process caches what it looked up: a key's role and scope never change,
and revocation is seen within a second (reads re-check after REVALIDATE_SECONDS;
ingest re-checks inside its admission script, on every request).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

import orjson
import redis

from collector.core.settings import Settings
from collector.pipeline import shards

SCHEME = "dlc"  # secrets look like dlc.<key id>.<43 random characters>
REVALIDATE_SECONDS = 1.0
ROLES = ("device", "reader", "admin")


@dataclass(frozen=True)
class Principal:
    key_id: str | None  # None: no credential needed (AUTH_ENABLED=false) or the metrics token
    role: str
    device_id: str | None = None
    device_prefix: str | None = None
    rate_limit: float | None = None
    rate_burst: int | None = None
    digest: str = ""

    def may_send_for(self, device_id: str) -> bool:
        if self.role == "admin":
            return True
        if self.role != "device":
            return False
        if self.device_id is not None:
            return device_id == self.device_id
        return device_id.startswith(self.device_prefix or "\0")

    def may_read(self, device_id: str | None = None) -> bool:
        """Every read for readers and admins; a device key reads its own devices only."""
        return self.role in ("reader", "admin") or (device_id is not None and self.may_send_for(device_id))

    @property
    def scope(self) -> str:
        if self.role != "device":
            return "*"
        return self.device_id if self.device_id is not None else f"{self.device_prefix}*"


OPEN = Principal(key_id=None, role="admin")  # AUTH_ENABLED=false


def new_secret() -> tuple[str, str, str]:
    """(key id, secret, its digest): the secret is shown once; only the digest is kept."""
    key_id = secrets.token_hex(6)
    secret = f"{SCHEME}.{key_id}.{secrets.token_urlsafe(32)}"
    return key_id, secret, digest(secret)


def digest(secret: str) -> str:
    # The secrets are 256 random bits, so a fast hash suffices (nothing to brute-force).
    return hashlib.sha256(secret.encode()).hexdigest()


def key_id_of(secret: str) -> str | None:
    parts = secret.split(".")
    if len(parts) != 3 or parts[0] != SCHEME or not parts[1]:
        return None
    return parts[1]


def registry_key(settings: Settings) -> str:
    """The hash of live keys; each stream shard has its own copy, beside its stream, which
    its admission script checks (pipeline.shards)."""
    return settings.local_key("auth:keys")


def uses_key(settings: Settings) -> str:
    return settings.local_key("auth:used")


def _copies(settings: Settings) -> list[Settings]:
    """The deployment's settings and its shards': one per distinct registry (one when unsharded)."""
    return list({registry_key(s): s for s in (settings, *shards.shards(settings))}.values())


def _record(row) -> bytes:
    return orjson.dumps({"h": row.secret_sha256, "r": row.role, "d": row.device_id, "p": row.device_prefix,
                         "l": row.rate_limit, "b": row.rate_burst})


def publish(client: redis.Redis, settings: Settings, row) -> None:
    """Make one key (a store.keys.KeyRow) known to the API, or forget it if revoked."""
    if row.revoked_at is not None:
        forget(client, settings, row.id)
        return
    pipe = client.pipeline(transaction=False)  # one round trip (per node on a cluster)
    for copy in _copies(settings):
        pipe.hset(registry_key(copy), row.id, _record(row))
    pipe.execute()


def forget(client: redis.Redis, settings: Settings, key_id: str) -> None:
    """Make the API refuse a key: removed from every copy of the registry (each shard's
    admission script checks its own)."""
    pipe = client.pipeline(transaction=False)
    for copy in _copies(settings):
        pipe.hdel(registry_key(copy), key_id)
    pipe.execute()


def spread(client: redis.Redis, settings: Settings) -> None:
    """Give every shard's registry the deployment's keys (the copy the API looks keys up in):
    new shards (STREAM_SHARDS raised, a fresh cluster) know them at once rather than at the
    next sync_keys."""
    if not (known := client.hgetall(registry_key(settings))):
        return
    pipe = client.pipeline(transaction=False)
    for copy in _copies(settings):
        if registry_key(copy) != registry_key(settings):
            pipe.hset(registry_key(copy), mapping=known)
    pipe.execute()


def sync(client: redis.Redis, settings: Settings, rows: list) -> None:
    """Make the Redis copy exactly the live keys of `rows` (the whole table)."""
    live = {row.id: _record(row) for row in rows if row.revoked_at is None}
    for copy in _copies(settings):
        known = {k.decode() for k in client.hkeys(registry_key(copy))}
        pipe = client.pipeline(transaction=True)
        if live:
            pipe.hset(registry_key(copy), mapping=live)
        if gone := known - live.keys():
            pipe.hdel(registry_key(copy), *gone)
        if live or gone:
            pipe.execute()


def recent_uses(client: redis.Redis, settings: Settings) -> list[tuple[str, float]]:
    """(key id, unix time) of each key's latest use, as the admission scripts record them."""
    latest: dict[str, float] = {}
    for copy in _copies(settings):
        for k, v in client.hgetall(uses_key(copy)).items():
            latest[k.decode()] = max(latest.get(k.decode(), 0.0), float(v))
    return list(latest.items())


class Keyring:
    """One API process's view of the keys: lookups cached, revocations seen within a second."""

    def __init__(self, client: redis.Redis, settings: Settings, size: int = 10_000) -> None:
        self.client, self.settings, self.size = client, settings, size
        self._cache: OrderedDict[str, tuple[float, Principal | None]] = OrderedDict()

    def authenticate(self, secret: str, revalidate: bool = True) -> Principal | None:
        """The principal a secret stands for, or None. With `revalidate` (reads), a cached
        answer older than REVALIDATE_SECONDS is checked again; without (ingest, whose
        admission script checks the key itself), the cached role and scope are used."""
        key_id = key_id_of(secret)
        if key_id is None:
            return None
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is None or (now - cached[0] > REVALIDATE_SECONDS and (revalidate or cached[1] is None)):
            raw = self.client.hget(registry_key(self.settings), key_id)
            cached = (now, _principal(key_id, raw) if raw is not None else None)
            self._cache[key_id] = cached
            self._cache.move_to_end(key_id)
            if len(self._cache) > self.size:
                self._cache.popitem(last=False)
        principal = cached[1]
        if principal is None or not hmac.compare_digest(principal.digest, digest(secret)):
            return None
        return principal


def _principal(key_id: str, raw: bytes) -> Principal:
    record = orjson.loads(raw)
    return Principal(key_id=key_id, role=record["r"], device_id=record["d"], device_prefix=record["p"],
                     rate_limit=record["l"], rate_burst=record["b"], digest=record["h"])
