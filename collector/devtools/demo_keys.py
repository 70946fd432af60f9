"""Demo keys for `make run`: a fleet key for every device id starting `device`
(the wrk scripts' device_000.. and the Locust fleet's device-00001..), a reader
and an admin key.

    python -m collector.devtools.demo_keys [--file var/demo-keys.env]

Idempotent: keys already in the file that are still live in the database are
kept (and copied to Redis again); any other is created. The file is git-ignored
and readable by its owner only. The Locust fleet reads COLLECTOR_KEY and
COLLECTOR_READER_KEY from the environment or this file (unless --api-key is
given); `make bench` against a stack already running uses DEVICES_API_KEY, else
the admin and reader keys of this file (its bench-* device ids are outside the
fleet key's scope); on a stack of its own it makes its own keys. It needs PostgreSQL
and Redis: either unreachable, or a bad setting, is one line on standard error
(collector.cli), before any key is made.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import psycopg

from collector import cli
from collector.core.clients import make_redis
from collector.core.settings import load_settings
from collector.devtools.processes import ROOT
from collector.pipeline import keyring
from collector.store import keys

DEFAULT_FILE = ROOT / "var" / "demo-keys.env"
# variable -> (role, device prefix, name)
DEMO = {
    "COLLECTOR_KEY": ("device", "device", "demo fleet key (device*)"),
    "COLLECTOR_READER_KEY": ("reader", None, "demo reader"),
    "COLLECTOR_ADMIN_KEY": ("admin", None, "demo admin"),
}


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep and not line.lstrip().startswith("#"):
                values[name.strip()] = value.strip()
    return values


def ensure(path: Path = DEFAULT_FILE) -> dict[str, str]:
    settings = load_settings()
    wanted = read_env_file(path)
    client = make_redis(settings, timeout=5.0)
    client.ping()  # fail before making keys that could not be published
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        live = {row.id: row for row in keys.every(conn) if row.revoked_at is None}
        out = {}
        for variable, (role, prefix, name) in DEMO.items():
            secret = wanted.get(variable, "")
            row = live.get(keyring.key_id_of(secret) or "")
            if (row is None or row.secret_sha256 != keyring.digest(secret) or row.role != role
                    or row.device_prefix != prefix):
                key_id, secret, digest = keyring.new_secret()
                row = keys.add(conn, key_id, name, role, None, prefix, digest)
            keyring.publish(client, settings, row)
            out[variable] = secret
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text("# Demo keys for `make run` (python -m collector.devtools.demo_keys). Not for production.\n"
                    + "".join(f"{k}={v}\n" for k, v in out.items()))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m collector.devtools.demo_keys", description=__doc__.split("\n")[0])
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE)
    args = parser.parse_args(argv)
    ensure(args.file)
    print(f"demo keys (fleet key for device_*, reader, admin) are in {args.file}: "
          f"export $(grep -v '^#' {args.file} | xargs) to use them with curl")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
