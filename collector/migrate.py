"""Create the database if needed and apply new migrations: `python -m collector.migrate`.

Running it again changes nothing. A bad setting or PostgreSQL unreachable is one
line on standard error (collector.cli).
"""

from __future__ import annotations

import sys

from collector import cli
from collector.core.settings import load_settings
from collector.store.migrations import migrate


def main() -> int:
    settings = load_settings()

    def progress(moved: int) -> None:
        print(f"moved {moved:,} rows of logs_legacy into the partitioned logs", flush=True)

    applied = migrate(settings.database_url, settings.partition_interval, settings.partitions_ahead, progress)
    print(f"applied {len(applied)} migration(s): {', '.join(applied)}" if applied else "database is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
