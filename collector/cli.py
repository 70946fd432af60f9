"""What every command-line tool shares: how it fails.

A tool's module ends with `sys.exit(cli.run(main))`. `run` calls `main` and turns
the failures an operator causes (a bad setting, PostgreSQL or Redis unreachable, a
database without its tables) into one line on standard error that names the
problem and the setting to check, never a traceback:

    cannot reach PostgreSQL at postgresql://postgres@127.0.0.1:5999/logs (DATABASE_URL): connection refused

Exit status: 2 for a bad setting (as for bad arguments), 1 for a server that cannot
be used. `main` itself still raises, so code that calls it in-process (`make run`,
the tests) sees the exception.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import fields
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis

from collector.core.settings import Settings, SettingsError

USAGE = 2  # argparse's status for bad arguments; a bad setting is the same kind of mistake
UNAVAILABLE = 1


def fail(message: str, status: int = UNAVAILABLE) -> int:
    print(message, file=sys.stderr, flush=True)
    return status


def run(main: Callable[[], int]) -> int:
    """Call a tool's `main`; its exit status, or one line on stderr and 1 or 2."""
    try:
        return main()
    except SettingsError as exc:
        return fail(f"invalid setting: {exc}", USAGE)
    except psycopg.ProgrammingError as exc:
        raw, env = setting("database_url")
        if isinstance(exc, psycopg.errors.UndefinedTable):
            return fail(f"PostgreSQL at {hide_password(raw)} ({env}) lacks a table ({first_line(exc)}): "
                        "apply the migrations (make migrate)")
        if parses(raw):
            raise
        reason = first_line(exc).split(" in URI: ")[0]  # libpq quotes the URL, password and all
        return fail(f"invalid setting: {env}={hide_password(raw)!r} is not valid: {reason}", USAGE)
    except psycopg.OperationalError as exc:
        url, env = configured("database_url")
        reason = postgres_reason(exc)
        if "does not exist" in reason and "database" in reason:
            reason += " (make migrate creates it)"
        return fail(f"cannot reach PostgreSQL at {url} ({env}): {reason}")
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        url, env = configured("redis_url")
        return fail(f"cannot reach Redis at {url} ({env}): {lower_first(first_line(exc))}")
    except KeyboardInterrupt:
        return fail("interrupted", 130)


def configured(name: str) -> tuple[str, str]:
    """The value a tool used for this setting (password hidden) and its variable's name."""
    raw, env = setting(name)
    return hide_password(raw), env


def setting(name: str) -> tuple[str, str]:
    """The value a tool used for this setting (from the environment, as load_settings reads
    it) and its variable's name."""
    found = next(f for f in fields(Settings) if f.name == name)
    env = found.metadata["env"]
    return os.environ.get(env, found.default).strip(), env


def parses(conninfo: str) -> bool:
    try:
        psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return False
    return True


def hide_password(url: str) -> str:
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:  # not a URL we can take apart: say nothing of what it holds
        return url.split("://", 1)[0] + "://..."
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0].strip()


def postgres_reason(exc: psycopg.Error) -> str:
    """libpq's reason without its preamble: 'connection failed: connection to server at "h", port 1
    failed: FATAL:  database "x" does not exist' -> 'database "x" does not exist'."""
    reason = first_line(exc).rsplit(" failed: ", 1)[-1].removeprefix("connection failed: ")
    return lower_first(reason.removeprefix("FATAL:").strip())


def lower_first(text: str) -> str:
    """'Connection refused' -> 'connection refused'; leaves 'FATAL' or 'SSL ...' alone."""
    return text[:1].lower() + text[1:] if text[1:2].islower() else text
