"""Finding logs: filters, cursors and the device list, against the real PostgreSQL
(rows stored as the drain stores them) and through the real app."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from collector.core.model import LEVELS
from collector.store import logs as storage
from collector.store import search
from collector.store.search import LogFilter, json_contains
from collector.web.app import create_app

STREAM = "logs:stream#5e4c4a11"
T0 = dt.datetime(2026, 11, 30, 9, 0, tzinfo=dt.UTC)


class Rows:
    """Stores rows with distinct stream entries (as the drain would) and given created_at."""

    def __init__(self, db) -> None:
        self.db = db
        self.n = 0

    def add(self, device="dev-1", level="INFO", message=None, data=None, created=T0, received=None):
        self.n += 1
        received = received or dt.datetime.now(dt.UTC)
        row = (STREAM, f"{int(received.timestamp() * 1000)}-{self.n}", device, level,
               message if message is not None else f"message {self.n}",
               json.dumps(data) if data is not None else None, created.isoformat(), None, None)
        assert sum(storage.insert_logs(self.db, [row], writer="t").values()) == 1
        return self.db.execute("SELECT max(id) FROM logs").fetchone()[0]


@pytest.fixture
def rows(db):
    return Rows(db)


def ids(page) -> list[int]:
    return [r["id"] for r in page.rows]


def find(db, limit=100, **filters) -> list[int]:
    order = filters.pop("order", "desc")
    return ids(search.search(db, LogFilter(**filters), order=order, limit=limit))


def test_each_filter_selects_what_it_names(db, rows):
    a = rows.add("dev-1", "DEBUG", "Boot complete", {"fw": "1.2.3", "temp": 21}, T0)
    b = rows.add("dev-1", "ERROR", "watchdog RESET at 0x1f", {"fw": "1.2.4", "tags": ["hw", "wd"]},
                 T0 + dt.timedelta(minutes=1))
    c = rows.add("dev-2", "WARNING", "battery 15% low", {"fw": "1.2.3", "nested": {"a": 1, "b": True}},
                 T0 + dt.timedelta(minutes=2))
    d = rows.add("other", "CRITICAL", "Watchdog reset again", None, T0 + dt.timedelta(minutes=3))
    assert find(db) == [d, c, b, a]
    assert find(db, order="asc") == [a, b, c, d]
    assert find(db, device_ids=("dev-1",)) == [b, a]
    assert find(db, device_ids=("dev-2", "other")) == [d, c]
    assert find(db, device_prefix="dev-") == [c, b, a]
    assert find(db, levels=("ERROR", "DEBUG")) == [b, a]
    assert find(db, min_level="WARNING") == [d, c, b]
    assert find(db, since=T0 + dt.timedelta(minutes=1), until=T0 + dt.timedelta(minutes=3)) == [c, b]
    assert find(db, q="watchdog reset") == [d, b]  # any case
    assert find(db, q="15%") == [c] and find(db, q="1_") == []  # LIKE's wildcards are plain characters
    assert find(db, data={"fw": "1.2.3"}) == [c, a]
    assert find(db, data={"tags": ["wd"]}) == [b]
    assert find(db, data={"nested": {"b": True}}) == [c] and find(db, data={"nested": {"b": 1}}) == []
    assert find(db, data={"temp": 21.0}) == [a]  # numbers by value, as jsonb
    assert find(db, device_ids=("dev-1",), min_level="ERROR", q="reset", data={"fw": "1.2.4"}) == [b]


# Filters drawn at random, checked against LogFilter.matches on every row: the live tail
# filters in Python, so both must select exactly the same logs.
FILTERS = st.builds(
    LogFilter,
    device_ids=st.sampled_from([(), ("dev-1",), ("dev-1", "dev-2")]),
    device_prefix=st.sampled_from([None, "dev", "oth"]),
    levels=st.sampled_from([(), ("INFO",), ("ERROR", "DEBUG")]),
    min_level=st.sampled_from([None, *LEVELS]),
    since=st.sampled_from([None, T0, T0 + dt.timedelta(seconds=30)]),
    until=st.sampled_from([None, T0 + dt.timedelta(seconds=45)]),
    q=st.sampled_from([None, "reset", "BOOT", "%x_"]),
    data=st.sampled_from([None, {"fw": "1"}, {"n": 1}, {"t": [2]}, {"t": 2}, {"o": {"k": None}}, {"b": False}]),
)
DATA = [None, {"fw": "1"}, {"fw": "2", "n": 1.0}, {"n": True}, {"t": [1, 2]}, {"o": {"k": None, "j": 0}},
        {"b": False}, {"b": 0}]
MESSAGES = ["Boot ok", "watchdog reset", "RESET: boot", "a %x_ b", "plain"]


def test_python_filter_selects_the_same_logs_as_sql(db, rows):
    rnd = random.Random(7)
    for i in range(60):
        rows.add(rnd.choice(["dev-1", "dev-2", "other"]), rnd.choice(LEVELS), rnd.choice(MESSAGES),
                 rnd.choice(DATA), T0 + dt.timedelta(seconds=i))
    everything = search.search(db, LogFilter(), limit=1000).rows

    @hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(filt=FILTERS)
    def check(filt):
        assert find(db, limit=1000, **dataclasses.asdict(filt)) == [r["id"] for r in everything if filt.matches(r)]

    check()


def test_json_contains_follows_jsonb():
    assert json_contains({"a": [1, 2, {"b": 3}]}, {"a": [{"b": 3}, 1]})
    assert not json_contains({"a": [1]}, {"a": 1})  # nested: an array does not contain a scalar
    assert json_contains([1, 2], 2, top=True)  # at the top it does (jsonb's special case)
    assert not json_contains({"a": 1}, {"a": True}) and not json_contains({"a": 0}, {"a": False})
    assert not json_contains({"a": None}, {"a": 0}) and json_contains({"a": None}, {"a": None})
    assert not json_contains({"a": "1"}, {"a": 1})


def pages(db, filt, limit, order="desc", between=None) -> list[int]:
    """Follows the cursors to the end; `between()` runs before each page after the first."""
    seen, after = [], None
    while True:
        page = search.search(db, filt, order=order, limit=limit, after=after)
        seen += ids(page)
        if page.next_key is None:
            return seen
        after = page.next_key
        if between:
            between()


def test_cursors_walk_every_row_once_in_order_with_ties(db, rows):
    created = [T0 + dt.timedelta(seconds=i // 3) for i in range(25)]  # three logs per instant
    stored = [rows.add(created=at, device=f"dev-{i % 2}") for i, at in enumerate(created)]
    assert pages(db, LogFilter(), 4) == sorted(stored, key=lambda i: (created[stored.index(i)], i), reverse=True)
    assert pages(db, LogFilter(), 7, "asc") == stored
    assert pages(db, LogFilter(device_ids=("dev-1",)), 2) == [i for i in reversed(stored) if stored.index(i) % 2]
    assert pages(db, LogFilter(), 100) == list(reversed(stored))  # one page: no cursor


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_pagination_returns_each_log_stored_before_it_began_once_despite_inserts(db, empty_tables, data):
    empty_tables()
    rows = Rows(db)
    minute = st.integers(0, 30).map(lambda m: T0 + dt.timedelta(minutes=m))
    before = [rows.add(device=data.draw(st.sampled_from(["a", "b"])), created=data.draw(minute))
              for _ in range(data.draw(st.integers(0, 25)))]
    filt = data.draw(st.sampled_from([LogFilter(), LogFilter(device_ids=("a",))]))
    order = data.draw(st.sampled_from(["desc", "asc"]))
    matching = set(before) if not filt.device_ids else {
        i for i in before if db.execute("SELECT device_id FROM logs WHERE id = %s", (i,)).fetchone()[0] == "a"}

    def insert_meanwhile():  # new logs land anywhere in the order, as concurrent drains commit them
        for _ in range(data.draw(st.integers(0, 4))):
            rows.add(device=data.draw(st.sampled_from(["a", "b"])), created=data.draw(minute))

    seen = pages(db, filt, data.draw(st.integers(1, 6)), order, insert_meanwhile)
    assert len(seen) == len(set(seen))  # nothing twice
    assert matching <= set(seen)  # nothing stored before the first page is missed


@pytest.fixture
def api(settings, db, make_app):
    return make_app(settings).test_client()


def test_the_api_pages_with_opaque_cursors(api, rows):
    stored = [rows.add("dev-1", "ERROR" if i % 2 else "INFO", created=T0 + dt.timedelta(seconds=i))
              for i in range(7)]
    seen, url = [], "/api/logs/dev-1?level=ERROR&limit=2"
    while url:
        body = api.get(url).get_json()
        assert body["total"] == len(body["data"]) and body["source"] == "database"
        seen += [log["id"] for log in body["data"]]
        url = f"/api/logs/dev-1?level=ERROR&limit=2&cursor={body['next_cursor']}" if body["next_cursor"] else None
    assert seen == [i for i in reversed(stored) if stored.index(i) % 2]
    # The fleet-wide form, with repeated parameters, takes the same filters.
    fleet = api.get("/api/logs?device_id=dev-1&device_id=dev-9&level=ERROR&level=INFO&order=asc").get_json()
    assert [log["id"] for log in fleet["data"]] == stored and fleet["next_cursor"] is None
    assert [log["id"] for log in api.get("/api/logs?device_prefix=dev&limit=1").get_json()["data"]] == [stored[-1]]


def test_the_plain_first_page_is_still_cached_and_invalidated(api, rows):
    rows.add("dev-1")
    assert api.get("/api/logs/dev-1").get_json()["source"] == "database"
    cached = api.get("/api/logs/dev-1").get_json()
    assert cached["source"] == "cache" and cached["next_cursor"] is None
    assert api.get("/api/logs/dev-1?min_level=DEBUG").get_json()["source"] == "database"


@pytest.mark.parametrize("query, field", [
    ("/api/logs/dev-1?level=LOUD", "level"),
    ("/api/logs/dev-1?level=INFO,", "level"),
    ("/api/logs/dev-1?min_level=2", "min_level"),
    ("/api/logs/dev-1?since=yesterday", "since"),
    ("/api/logs/dev-1?until=2026-13-01", "until"),
    ("/api/logs/dev-1?q=ab", "q"),
    ("/api/logs/dev-1?data=%7Bnope", "data"),
    ("/api/logs/dev-1?data=%5B1%5D", "data"),
    ("/api/logs/dev-1?order=newest", "order"),
    ("/api/logs/dev-1?cursor=garbage", "cursor"),
    ("/api/logs/dev-1?device_prefix=dev", "device_prefix"),  # the fleet form's parameter
    ("/api/logs/dev-1?limit=0", "limit"),
    ("/api/logs?device_id=bad%20id", "device_id"),
    ("/api/logs?sort=asc", "sort"),
])
def test_bad_parameters_are_a_422_naming_them(api, db, query, field):
    response = api.get(query)
    assert response.status_code == 422, response.get_json()
    assert field in response.get_json()["fields"]


def test_a_cursor_continues_only_its_own_query(api, rows):
    for i in range(3):
        rows.add(created=T0 + dt.timedelta(seconds=i))
    cursor = api.get("/api/logs/dev-1?limit=1").get_json()["next_cursor"]
    assert api.get(f"/api/logs/dev-1?limit=1&cursor={cursor}").status_code == 200
    for other in (f"/api/logs/dev-1?order=asc&cursor={cursor}", f"/api/logs/dev-1?q=mes&cursor={cursor}",
                  f"/api/logs?cursor={cursor}"):
        response = api.get(other)
        assert response.status_code == 422 and "same filters" in response.get_json()["fields"]["cursor"][0]


def test_the_device_list_has_last_seen_and_counts_per_level(api, rows, db):
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    for level, device, age in (("INFO", "dev-1", 30), ("ERROR", "dev-1", 10), ("ERROR", "dev-1", 20),
                               ("DEBUG", "dev-2", 5)):
        rows.add(device, level, received=now - dt.timedelta(seconds=age))
    body = api.get("/api/devices").get_json()
    assert [d["device_id"] for d in body["devices"]] == ["dev-2", "dev-1"]  # most recently seen first
    dev1 = body["devices"][1]
    assert dev1["total"] == 3 and dev1["by_level"] == {"DEBUG": 0, "INFO": 1, "WARNING": 0, "ERROR": 2,
                                                       "CRITICAL": 0}
    assert dt.datetime.fromisoformat(dev1["last_seen"]) == now - dt.timedelta(seconds=10)
    assert [d["device_id"] for d in api.get("/api/devices?device_prefix=dev-2").get_json()["devices"]] == ["dev-2"]
    assert api.get("/api/devices?limit=1").get_json()["total"] == 2
    # The per-device counters add up to the table (and to the stats' totals).
    assert db.execute("SELECT sum(n) FROM log_counts").fetchone()[0] == db.execute(
        "SELECT count(*) FROM logs").fetchone()[0]


def test_device_keys_read_only_their_devices(settings, db, rows, cli_key):
    app = create_app(dataclasses.replace(settings, auth_enabled=True))
    try:
        client = app.test_client()
        rows.add("device_001")
        rows.add("device_002")
        rows.add("sensor_9")
        mine = {"Authorization": f"Bearer {cli_key('--device', 'device_001')}"}
        fleet = {"Authorization": f"Bearer {cli_key('--prefix', 'device_')}"}
        reader = {"Authorization": f"Bearer {cli_key('--role', 'reader')}"}
        assert client.get("/api/logs/device_001", headers=mine).status_code == 200
        assert client.get("/api/logs/device_002", headers=mine).status_code == 403
        assert client.get("/api/logs", headers=mine).status_code == 403
        assert client.get("/api/logs?device_id=device_001&device_id=device_002", headers=mine).status_code == 403
        assert client.get("/api/logs?device_id=device_001", headers=mine).get_json()["total"] == 1
        assert client.get("/api/logs?device_prefix=device_", headers=fleet).get_json()["total"] == 2
        assert client.get("/api/logs?device_prefix=sens", headers=fleet).status_code == 403
        assert [d["device_id"] for d in client.get("/api/devices", headers=mine).get_json()["devices"]] == [
            "device_001"]
        assert len(client.get("/api/devices", headers=fleet).get_json()["devices"]) == 2
        assert client.get("/api/logs", headers=reader).get_json()["total"] == 3
        assert len(client.get("/api/devices", headers=reader).get_json()["devices"]) == 3
        assert client.get("/api/logs").status_code == 401
    finally:
        app.extensions["collector"].db.close()


@pytest.fixture
def cli_key(settings, monkeypatch, capsys):
    from collector import keys as keys_cli
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("KEY_PREFIX", settings.key_prefix)

    def create(*argv: str) -> str:
        assert keys_cli.main(["create", *argv]) == 0
        return capsys.readouterr().out.splitlines()[-1]

    return create


def plan(db, query: str, params) -> str:
    with db.transaction():
        db.execute("SET LOCAL enable_seqscan = off")  # tiny tables: ask which index can serve it
        return "\n".join(line for (line,) in db.execute("EXPLAIN " + query, params))


def test_indexes_serve_the_filters(db, rows):
    rows.add()
    newest = plan(db, "SELECT id FROM logs WHERE device_id = %s ORDER BY created_at DESC, id DESC LIMIT 10",
                  ("dev-1",))
    assert "device_id_created_at_idx" in newest and "Index Cond: ((device_id)::text" in newest, newest
    assert "_message_idx" in plan(db, "SELECT id FROM logs WHERE message ILIKE %s", ("%reset%",))
    fleet = plan(db, "SELECT id FROM logs ORDER BY created_at DESC, id DESC LIMIT 10", ())
    assert "_created_at_idx" in fleet and "Seq Scan" not in fleet, fleet
