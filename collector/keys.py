"""Keys from the command line (what scripts rely on; the output is a contract).

    python -m collector.keys create --device ID | --prefix P | --role reader | --role admin [--name TEXT]
                                    [--rate LOGS_PER_S] [--burst LOGS]
        prints the key's id on standard error and the secret alone on the last line of
        standard output: it is shown once, never again (only its hash is stored)
    python -m collector.keys list      one key a line: id, name, role, scope, created, last used, revoked
    python -m collector.keys revoke KEY_ID

Keys are written to PostgreSQL and copied to Redis at once (the API checks them
there); if Redis is unreachable, beat's next key sync copies them (a warning says
so). `list` says "no keys" on standard error when there are none. PostgreSQL
unreachable or a bad setting is one line on standard error (collector.cli).
"""

from __future__ import annotations

import argparse
import math
import sys

import psycopg
import redis

from collector import cli
from collector.core.clients import make_redis
from collector.core.model import DEVICE_ID_RE
from collector.core.settings import load_settings
from collector.pipeline import keyring
from collector.store import keys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m collector.keys", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="make a key and print its secret once")
    scope = create.add_mutually_exclusive_group(required=True)
    scope.add_argument("--device", help="a device key for this one device id")
    scope.add_argument("--prefix", help="a fleet key for every device id starting with this")
    scope.add_argument("--role", choices=("reader", "admin"), help="a reader or admin key")
    create.add_argument("--name", default="", help="what the key is for")
    create.add_argument("--rate", type=float, help="logs per second per device (default: RATE_LIMIT_PER_DEVICE)")
    create.add_argument("--burst", type=int, help="logs at once per device (default: RATE_LIMIT_BURST)")
    sub.add_parser("list", help="every key, without secrets")
    revoke = sub.add_parser("revoke", help="revoke a key (every API process stops accepting it within a second)")
    revoke.add_argument("key_id")
    return parser


def _publish(settings, action) -> None:
    try:
        client = make_redis(settings, timeout=5.0)
        action(client)
    except redis.RedisError as exc:
        print(f"warning: Redis unreachable ({exc}); beat's key sync will copy the change within "
              f"{settings.keys_sync_interval:g} s", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = load_settings()
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        if args.command == "create":
            for value in (args.device, args.prefix):
                if value is not None and (not value or not DEVICE_ID_RE.match(value)):
                    print("error: --device and --prefix take 1-100 of A-Za-z0-9._:@- (starting with a letter or "
                          "digit)", file=sys.stderr)
                    return 2
            if args.rate is not None and not (math.isfinite(args.rate) and args.rate >= 0):
                print("error: --rate takes a number of logs per second >= 0 (0: no limit)", file=sys.stderr)
                return 2
            if args.burst is not None and args.burst < 1:
                print("error: --burst takes a number of logs >= 1", file=sys.stderr)
                return 2
            role = args.role or "device"
            key_id, secret, digest = keyring.new_secret()
            with conn.transaction():
                keys.lock(conn)
                row = keys.add(conn, key_id, args.name, role, args.device, args.prefix, digest, args.rate,
                               args.burst)
                _publish(settings, lambda client: keyring.publish(client, settings, row))
            print(f"created key {key_id} ({role}, scope {_scope(row)})", file=sys.stderr)
            print(secret)
            return 0
        if args.command == "list":
            rows = keys.every(conn)
            for row in rows:
                print("\t".join([row.id, row.name or "-", row.role, _scope(row), _time(row.created_at),
                                 _time(row.last_used_at), _time(row.revoked_at)]))
            print(f"{len(rows)} key(s)" if rows else "no keys", file=sys.stderr)
            return 0
        with conn.transaction():
            keys.lock(conn)
            if not keys.revoke(conn, args.key_id):
                print(f"error: no key {args.key_id}", file=sys.stderr)
                return 1
            _publish(settings, lambda client: keyring.forget(client, settings, args.key_id))
        print(f"revoked key {args.key_id}", file=sys.stderr)
        return 0


def _scope(row) -> str:
    if row.role != "device":
        return "*"
    return row.device_id if row.device_id is not None else f"{row.device_prefix}*"


def _time(value) -> str:
    return value.isoformat(timespec="seconds") if value is not None else "-"


if __name__ == "__main__":
    sys.exit(cli.run(main))
