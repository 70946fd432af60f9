"""Create the database if needed and apply new migrations: `python -m collector.migrate`.

Running it again changes nothing.
"""

from __future__ import annotations

import sys

from collector.core.settings import SettingsError, load_settings
from collector.store.migrations import migrate


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"invalid setting: {exc}", file=sys.stderr)
        return 2
    def progress(moved: int) -> None:
        print(f"moved {moved:,} rows of logs_legacy into the partitioned logs", flush=True)

    applied = migrate(settings.database_url, settings.partition_interval, settings.partitions_ahead, progress)
    print(f"applied {len(applied)} migration(s): {', '.join(applied)}" if applied else "database is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
