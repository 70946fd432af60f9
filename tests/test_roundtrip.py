"""Accepted means readable: whatever ingest takes comes back from every read path with
the same meaning, through the real API, Redis and PostgreSQL.

"The same meaning" is what a JSON client sees: a number is the same number and the
same kind (an integer stays an integer, a float stays a float, -0.0 keeps its sign),
a string is the same code points, a timestamp is the same instant. Everything here
runs against a database whose own TimeZone is Pacific/Chatham (+12:45/+13:45, with an
odd local mean time before 1868), so an answer that depended on the server's time
zone would show. Each example is read twice: from PostgreSQL, then from the cache.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import math
import uuid

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, assume, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from psycopg import sql

from collector.core.model import LEVELS, MAX_SEQ
from collector.pipeline.drain import drain_batch
from collector.store import search
from collector.store.migrations import migrate
from collector.web.logdata import MAX_DEPTH, MAX_INT, MIN_INT
from tests.conftest import ADMIN_DATABASE_URL, database_url, truncate_all_tables

OTHER_TIME_ZONE = "Pacific/Chatham"
UTC = dt.UTC


# --- an isolated database whose server-side TimeZone is not UTC ---------------------

@pytest.fixture(scope="module")
def tz_database(run_id: str):
    """Its own database, so the ALTER DATABASE below never reaches another test."""
    name = f"collector_test_{run_id}_tz"
    url = database_url(name)
    migrate(url)
    with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} SET TimeZone = {}").format(
            sql.Identifier(name), sql.Literal(OTHER_TIME_ZONE)))
    yield url
    with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def tz_db(tz_database: str):
    """A plain connection (no TimeZone option: the server's Chatham applies), tables empty."""
    truncate_all_tables(tz_database)
    with psycopg.connect(tz_database, autocommit=True) as conn:
        assert conn.execute("SHOW TimeZone").fetchone()[0] == OTHER_TIME_ZONE
        yield conn


@pytest.fixture
def rt_settings(settings, tz_database):
    return dataclasses.replace(settings, database_url=tz_database)


@pytest.fixture
def rt_client(rt_settings, tz_db, make_app):
    return make_app(rt_settings).test_client()


# --- helpers ----------------------------------------------------------------------

def drain_all(redis_client, conn, settings) -> None:
    while drain_batch(redis_client, conn, settings, "c1").read:
        pass


def post_raw(client, path: str, text: str | bytes):
    return client.post(path, data=text, content_type="application/json")


def read_back(client, device_id: str) -> list[dict]:
    """The device's logs, oldest first, after checking the database and cache answers agree."""
    answers = []
    for source in ("database", "cache"):
        response = client.get(f"/api/logs/{device_id}?limit=1000")
        assert response.status_code == 200, response.data[:300]
        body = orjson.loads(response.data)
        assert body["source"] == source
        answers.append(body["data"])
    assert same(answers[0], answers[1])
    return sorted(answers[0], key=lambda row: row["id"])


def same(a, b) -> bool:
    """Equal as a JSON client sees it: Python's == says 1 == 1.0 == True and 0.0 == -0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def instant(text: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(text)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def nested(depth: int) -> dict:
    """A log_data object `depth` levels deep (the object itself is level 1)."""
    return functools.reduce(lambda inner, _: {"k": inner}, range(depth - 1), {})


# --- numbers ----------------------------------------------------------------------

# JSON number literals as a device may write them; each must come back as the value
# orjson (like any JSON client) reads from the literal: same number, same kind.
EDGE_NUMBERS = [
    "1e20", "1E20", "1e+20", "-1e20", "1e300", "1.7976931348623157e308", "-1.7976931348623157e308",
    "5e-324", "-5e-324", "2.2250738585072014e-308", "1e-7", "-0.0", "0.0", "1.0", "100000.0", "1e16",
    "18446744073709551616.0", "1.8446744073709552e19", "9223372036854775808.5",
    "0", "-0", "18446744073709551615", "-9223372036854775808", "9223372036854775807", "9007199254740993",
    "123456789012345678901234567890.0", "0.1", "1.0000000000000002", "1e-400",
]


def test_numbers_at_the_edges_of_json_come_back_unchanged(rt_client, redis_client, rt_settings, tz_db):
    data = "{" + ", ".join(f'"n{i}": {literal}' for i, literal in enumerate(EDGE_NUMBERS)) + "}"
    body = f'{{"device_id": "num-1", "log_level": "INFO", "message": "edges", "log_data": {data}}}'
    assert post_raw(rt_client, "/api/log", body).status_code == 200
    drain_all(redis_client, tz_db, rt_settings)
    [row] = read_back(rt_client, "num-1")
    expected = orjson.loads(data)
    for key, literal in zip(expected, EDGE_NUMBERS, strict=True):
        assert same(row["log_data"][key], expected[key]), (literal, row["log_data"][key])


@pytest.mark.parametrize("log_data, path", [
    ('{"x": 18446744073709551616}', "log_data.x"),                      # 2**64
    ('{"x": -9223372036854775809}', "log_data.x"),                      # -2**63 - 1
    ('{"a": {"b": [1, 100000000000000000000]}}', "log_data.a.b[1]"),   # 10**20 written as an integer
    ('{"odd key": 1' + "0" * 400 + "}", 'log_data["odd key"]'),         # past a double's range, too
    ('{"x": 1e400}', "log_data.x"),
    ('{"x": [-1e400]}', "log_data.x[0]"),
])
def test_numbers_that_cannot_round_trip_are_refused_naming_the_field(rt_client, redis_client, rt_settings,
                                                                     log_data, path):
    body = f'{{"device_id": "num-2", "log_level": "INFO", "message": "m", "log_data": {log_data}}}'
    for request_path, text in [("/api/log", body), ("/api/logs/batch", f'{{"logs": [{body}]}}')]:
        response = post_raw(rt_client, request_path, text)
        assert response.status_code == 422, response.data
        fields = response.get_json()["fields"]
        messages = fields["log_data"] if request_path == "/api/log" else fields["logs"]["0"]["log_data"]
        assert any(message.startswith(f"{path}: ") for message in messages), messages
    assert redis_client.xlen(rt_settings.stream) == 0


def test_a_big_integer_in_seq_is_refused(rt_client, redis_client, rt_settings):
    body = '{"device_id": "num-3", "log_level": "INFO", "message": "m", "boot_id": "b", "seq": 18446744073709551616}'
    response = post_raw(rt_client, "/api/log", body)
    assert response.status_code == 422 and "seq" in response.get_json()["fields"]
    assert redis_client.xlen(rt_settings.stream) == 0


def test_nesting_is_limited_so_every_read_path_can_write_it(rt_client, redis_client, rt_settings, tz_db):
    deepest = nested(MAX_DEPTH)
    ok = rt_client.post("/api/log", json={"device_id": "deep-1", "log_level": "INFO", "message": "m",
                                          "log_data": deepest})
    assert ok.status_code == 200
    for depth in (MAX_DEPTH + 1, 250):  # 250: orjson wrote it, but not the answer around it
        refused = rt_client.post("/api/log", json={"device_id": "deep-1", "log_level": "INFO", "message": "m",
                                                   "log_data": nested(depth)})
        assert refused.status_code == 422
        assert "Nested deeper than" in refused.get_json()["fields"]["log_data"][0]
    drain_all(redis_client, tz_db, rt_settings)
    [row] = read_back(rt_client, "deep-1")
    assert same(row["log_data"], deepest)


def _store_as_before_0006(conn, device_id: str, log_data: str) -> None:
    """A row as the code before migration 0006 left it: log_data printed by jsonb."""
    conn.execute("INSERT INTO log_streams (name) VALUES ('legacy') ON CONFLICT DO NOTHING")
    conn.execute(
        "INSERT INTO logs (received_at, created_at, entry_seq, log_level, stream, device_id, message, log_data)"
        " VALUES (now(), now(), %s, 'INFO', (SELECT id FROM log_streams WHERE name = 'legacy'), %s, 'm',"
        " %s::jsonb::json)",
        (uuid.uuid4().int % 2**31, device_id, log_data))


def test_rows_stored_as_jsonb_before_0006_stay_readable(rt_client, tz_db):
    _store_as_before_0006(tz_db, "legacy-1", '{"big": 1e20, "huge": -1e300, "small": 5e-324}')
    [row] = read_back(rt_client, "legacy-1")
    assert tz_db.execute("SELECT log_data::text FROM logs").fetchone()[0].startswith('{"big": 100000000000000000000')
    assert same(row["log_data"], {"big": 1e20, "huge": -1e300, "small": 5e-324})


def test_rows_nested_deeper_than_the_limit_before_it_existed_stay_readable(rt_settings, tz_db, make_app):
    # 253 levels: the old limit was orjson's (254); an answer adds 3 levels around log_data.
    # The cache is off: it writes values with orjson, which cannot write this one.
    client = make_app(dataclasses.replace(rt_settings, logs_cache_ttl=0)).test_client()
    _store_as_before_0006(tz_db, "legacy-2", orjson.dumps(nested(253)).decode())
    response = client.get("/api/logs/legacy-2")
    assert response.status_code == 200
    assert same(orjson.loads(response.data)["data"][0]["log_data"], nested(253))


# --- strings ----------------------------------------------------------------------

ODD_TEXT = [
    "😀 astral \U0010fffd", "\uffff\ufffe\ufdd0 noncharacters", "\ufeffbyte order mark", "\u202eright-to-left",
    "e\u0301 combining", "line\u2028separator\u2029", "\x01\x1f\x7f\x80\x9f controls", "tab\tnew\nline\r",
    'quote " backslash \\ slash /', "\\u0000 is six characters here", "日本語のログ", "\u00a0nbsp",
]


def test_odd_and_long_unicode_comes_back_unchanged(rt_client, redis_client, rt_settings, tz_db):
    logs = [{"device_id": "text-1", "log_level": "INFO", "message": text,
             "log_data": {text: text, "list": [text], "": ""}, "boot_id": text[:64], "seq": i}
            for i, text in enumerate(ODD_TEXT)]
    longest = "😀" * 10_000  # MAX_MESSAGE_CHARS characters, 40,000 bytes of UTF-8
    logs.append({"device_id": "text-1", "log_level": "INFO", "message": longest,
                 "log_data": {"k" * 4000: "v" * 12_000}})
    response = rt_client.post("/api/logs/batch", json={"logs": logs})
    assert response.status_code == 200, response.data
    drain_all(redis_client, tz_db, rt_settings)
    rows = read_back(rt_client, "text-1")
    assert [row["message"] for row in rows] == [log["message"] for log in logs]
    assert all(same(row["log_data"], log["log_data"]) for row, log in zip(rows, logs, strict=True))
    boots = rt_client.get("/api/devices/text-1/sequence").get_json()["boots"]
    assert sorted(boot["boot_id"] for boot in boots) == sorted(text[:64] for text in ODD_TEXT)


@pytest.mark.parametrize("change, status", [
    ({"message": "nul\x00"}, 422),
    ({"log_data": {"k": "nul\x00"}}, 422),
    ({"log_data": {"nul\x00": 1}}, 422),
    ({"log_data": {"a": [{"b": "\x00"}]}}, 422),
    ({"boot_id": "b\x00", "seq": 1}, 422),
])
def test_nul_characters_are_refused_at_ingest(rt_client, redis_client, rt_settings, change, status):
    response = rt_client.post("/api/log", json={"device_id": "text-2", "log_level": "INFO", "message": "m", **change})
    assert response.status_code == status
    assert set(response.get_json()["fields"]) == set(change) - {"seq"}
    assert redis_client.xlen(rt_settings.stream) == 0


@pytest.mark.parametrize("field", ['"message": "\\ud800"', '"message": "a\\udc00"',
                                  '"message": "m", "log_data": {"k": "\\ud83d"}',
                                  '"message": "m", "log_data": {"\\udfff": 1}',
                                  '"message": "m", "boot_id": "\\ud800", "seq": 1'])
def test_lone_surrogates_are_refused_at_ingest(rt_client, redis_client, rt_settings, field):
    body = f'{{"device_id": "text-3", "log_level": "INFO", {field}}}'
    response = post_raw(rt_client, "/api/log", body)
    assert response.status_code == 400 and response.get_json()["error"] == "malformed_json"
    assert redis_client.xlen(rt_settings.stream) == 0


# --- timestamps -------------------------------------------------------------------

# (as sent, the instant it means)
GOOD_TIMESTAMPS = [
    ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00+00:00"),
    ("0001-01-01T12:00:00+12:00", "0001-01-01T00:00:00+00:00"),
    ("9999-12-31T23:59:59.999999Z", "9999-12-31T23:59:59.999999+00:00"),
    ("9999-12-31T11:59:59.999999-12:00", "9999-12-31T23:59:59.999999+00:00"),
    ("2024-03-01T00:00:00+14:00", "2024-02-29T10:00:00+00:00"),
    ("2024-02-29T23:59:59-12:00", "2024-03-01T11:59:59+00:00"),
    ("2024-01-01T00:00:00+23:59:59.999999", "2023-12-31T00:00:00.000001+00:00"),
    ("2024-01-01T00:00:00-00:00", "2024-01-01T00:00:00+00:00"),
    ("2024-01-01T00:00:00", "2024-01-01T00:00:00+00:00"),                 # no offset: UTC
    ("2024-01-01 05:30:00.5+05:30", "2024-01-01T00:00:00.500000+00:00"),
    ("2024-01-01T00:00:00.123456000Z", "2024-01-01T00:00:00.123456+00:00"),  # zeros past microseconds
    ("2024-01-01T00:00:00,25Z", "2024-01-01T00:00:00.250000+00:00"),
    ("0099-06-30T23:59:59Z", "0099-06-30T23:59:59+00:00"),                # not 1999
    ("1883-11-18T12:00:00+12:15", "1883-11-17T23:45:00+00:00"),            # before time zones were standard
]

BAD_TIMESTAMPS = [
    "0001-01-01T00:00:00+00:01",        # 0000-12-31 in UTC: before year 1
    "9999-12-31T23:59:59-00:00:01",     # 10000-01-01 in UTC
    "2016-12-31T23:59:60Z",             # a leap second: neither Python nor the API counts them
    "2024-01-01T00:00:00.1234567Z",     # finer than a microsecond: would not be the same instant
    "2024-01-01T00:00:00.123456789Z",
    "2024-01-01T00:00:00+24:00",
    "2024-01-01T24:00:00Z",
    "10000-01-01T00:00:00Z",
    "0000-01-01T00:00:00Z",
]


def test_timestamps_at_the_edges_come_back_as_the_same_instant_in_utc(rt_client, redis_client, rt_settings, tz_db):
    logs = [{"device_id": "time-1", "log_level": "INFO", "message": sent, "timestamp": sent}
            for sent, _ in GOOD_TIMESTAMPS]
    response = rt_client.post("/api/logs/batch", json={"logs": logs})
    assert response.status_code == 200, response.data
    drain_all(redis_client, tz_db, rt_settings)
    rows = {row["message"]: row["created_at"] for row in read_back(rt_client, "time-1")}
    assert rows == dict(GOOD_TIMESTAMPS)


@pytest.mark.parametrize("sent", BAD_TIMESTAMPS)
def test_timestamps_that_cannot_be_kept_exactly_are_refused(rt_client, redis_client, rt_settings, sent):
    response = rt_client.post("/api/log", json={"device_id": "time-2", "log_level": "INFO", "message": "m",
                                                "timestamp": sent})
    assert response.status_code == 422 and "timestamp" in response.get_json()["fields"]
    assert redis_client.xlen(rt_settings.stream) == 0


def test_reads_do_not_depend_on_the_session_time_zone(rt_client, redis_client, rt_settings, tz_db):
    """The store answers in UTC on any connection, even one that kept the server's zone
    (a pooler that drops startup options, a connection opened by hand)."""
    rt_client.post("/api/logs/batch", json={"logs": [
        {"device_id": "time-3", "log_level": "INFO", "message": "first", "timestamp": "0001-01-01T00:00:00Z"},
        {"device_id": "time-3", "log_level": "INFO", "message": "last", "timestamp": "9999-12-31T23:59:59.999999Z"},
    ]})
    drain_all(redis_client, tz_db, rt_settings)
    rows = search.search(tz_db, search.LogFilter(device_ids=("time-3",)), limit=10).rows  # a Chatham session
    assert [row["created_at"] for row in rows] == [dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
                                                   dt.datetime(1, 1, 1, tzinfo=UTC)]
    assert all(row["created_at"].utcoffset() == dt.timedelta(0) for row in rows)


# --- the dead-letter listing ------------------------------------------------------

def test_dead_letters_with_odd_payloads_are_listed(rt_client, redis_client, rt_settings, tz_db):
    redis_client.xgroup_create(rt_settings.stream, rt_settings.consumer_group, id="0", mkstream=True)
    redis_client.xadd(rt_settings.stream, {b"d": b"dev\x00", b"\xff": b"\xfe\xed\x00", b"m": "😀".encode()})
    drain_all(redis_client, tz_db, rt_settings)
    response = rt_client.get("/api/dead-letters")
    assert response.status_code == 200
    [letter] = response.get_json()["data"]
    assert letter["payload"] == {"d": "dev\\u0000", "\\xff": "\\xfe\\xed\\u0000", "m": "😀"}
    assert letter["first_failed_at"].endswith("+00:00")


# --- the property: the schema's whole input space round-trips ---------------------

# Small limits, so generated logs reach them (and MAX_DEPTH is checked above).
PROPERTY_LIMITS = {"max_message_chars": 120, "max_log_data_bytes": 1024}

characters = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")  # all but what is refused
texts = st.text(characters, max_size=24)
json_scalars = (st.none() | st.booleans() | st.integers(MIN_INT, MAX_INT)
                | st.floats(allow_nan=False, allow_infinity=False) | texts)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(texts, inner, max_size=4), max_leaves=12)
levels = st.sampled_from(LEVELS).flatmap(lambda level: st.sampled_from([level, level.lower(), level.title()]))
device_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}", fullmatch=True)
FIRST, LAST = dt.datetime(1, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59, 999999)
offsets = st.timedeltas(min_value=-dt.timedelta(hours=24) + dt.timedelta(microseconds=1),
                        max_value=dt.timedelta(hours=24) - dt.timedelta(microseconds=1))


@st.composite
def timestamps(draw) -> tuple[str, dt.datetime]:
    """(text as a device may send it, the UTC instant it means), over the whole range."""
    moment = draw(st.datetimes(min_value=FIRST, max_value=LAST))  # the instant, in UTC
    style = draw(st.sampled_from(["naive", "Z", "offset"]))
    sep = draw(st.sampled_from("T "))
    if style == "offset":
        offset = draw(offsets)
        try:
            local = moment + offset
        except OverflowError:  # the local time would leave the calendar: the other side of UTC
            offset = -offset
            local = moment + offset
        text = local.replace(tzinfo=dt.timezone(offset)).isoformat(sep, timespec="microseconds")
    else:
        text = moment.isoformat(sep, timespec="microseconds") + ("Z" if style == "Z" else "")
    if draw(st.booleans()):  # nanosecond precision with nothing below the microsecond
        text = text[:26] + "000" + text[26:]
    return text, moment.replace(tzinfo=UTC)


@st.composite
def logs(draw) -> dict:
    log = {"device_id": draw(device_ids), "log_level": draw(levels),
           "message": draw(st.text(characters, min_size=1, max_size=PROPERTY_LIMITS["max_message_chars"]))}
    data = draw(st.none() | st.just(...) | st.dictionaries(texts, json_values, max_size=6))
    if data is not ...:  # ...: leave the field out
        log["log_data"] = data
    if draw(st.booleans()):
        log["timestamp"] = draw(timestamps())
    if draw(st.booleans()):
        log["seq"], log["boot_id"] = draw(st.integers(0, MAX_SEQ)), draw(st.text(characters, min_size=1, max_size=64))
    return log


def _identity(log: dict) -> object:
    # (device, boot, seq) is stored once: keep generated logs distinct so all are stored
    return (log["device_id"], log["boot_id"], log["seq"]) if "seq" in log else object()


@pytest.fixture
def property_client(rt_settings, tz_db, make_app):
    return make_app(dataclasses.replace(rt_settings, **PROPERTY_LIMITS)).test_client()


@hypothesis_settings(max_examples=150, deadline=None, derandomize=True, database=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                            HealthCheck.data_too_large])
@given(batch=st.lists(logs(), min_size=1, max_size=5, unique_by=_identity))
@example(batch=[{"device_id": "e", "log_level": "info", "message": "m", "log_data": {"x": 1e20, "y": 2**64 - 1},
                 "timestamp": ("0001-01-01T00:00:00.000001Z", dt.datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC))}])
def test_every_valid_log_round_trips(property_client, redis_client, rt_settings, tz_db, batch):
    for log in batch:
        encoded = orjson.dumps(log.get("log_data"))
        assume(len(encoded) <= PROPERTY_LIMITS["max_log_data_bytes"])
    devices = sorted({log["device_id"] for log in batch})
    tz_db.execute("DELETE FROM logs WHERE device_id = ANY(%s)", (devices,))
    tz_db.execute("DELETE FROM log_sequence_blocks WHERE device_id = ANY(%s)", (devices,))
    sent = [{**log, "timestamp": log["timestamp"][0]} if "timestamp" in log else log for log in batch]
    # Posted as orjson writes it: floats in their shortest form, 1e+20 and -0.0 included.
    if len(sent) == 1:
        response = post_raw(property_client, "/api/log", orjson.dumps(sent[0]))
    else:
        response = post_raw(property_client, "/api/logs/batch", orjson.dumps({"logs": sent}))
    assert response.status_code == 200, response.data
    drain_all(redis_client, tz_db, rt_settings)

    for device in devices:
        mine = [log for log in batch if log["device_id"] == device]
        rows = read_back(property_client, device)
        assert len(rows) == len(mine)
        for row, log in zip(rows, mine, strict=True):
            assert row["device_id"] == device and row["log_level"] == log["log_level"].upper()
            assert row["message"] == log["message"]
            assert same(row["log_data"], log.get("log_data")), (row["log_data"], log.get("log_data"))
            assert row["created_at"].endswith("+00:00")
            if "timestamp" in log:
                assert instant(row["created_at"]) == log["timestamp"][1]
        boots = property_client.get(f"/api/devices/{device}/sequence").get_json()["boots"]
        numbered = [log for log in mine if "seq" in log]
        sent_boots = {log["boot_id"] for log in numbered}
        assert sorted((b["boot_id"], b["received"]) for b in boots) == sorted(
            (boot, sum(1 for log in numbered if log["boot_id"] == boot)) for boot in sent_boots)
        for boot in boots:
            seqs = [log["seq"] for log in numbered if log["boot_id"] == boot["boot_id"]]
            assert (boot["first_seq"], boot["last_seq"]) == (min(seqs), max(seqs))

