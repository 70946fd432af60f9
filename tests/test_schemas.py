"""What validation accepts must be storable; what it rejects must name the field."""

from __future__ import annotations

import datetime as dt

import orjson
import pytest
from marshmallow import ValidationError

from collector.web.logdata import AmbiguousNumber
from collector.web.schemas import batch_schema, log_schema
from collector.web.search_schemas import query_args_schema

LOG = log_schema(10_000, 16_384)
BATCH = batch_schema(1000, 10_000, 16_384)


def good(**changes):
    return {"device_id": "device_001", "log_level": "INFO", "message": "boot ok", **changes}


def errors_of(schema, payload) -> dict:
    with pytest.raises(ValidationError) as info:
        schema.load(payload)
    return info.value.messages


def test_minimal_log_loads_with_defaults():
    log = LOG.load(good())
    assert log == {"device_id": "device_001", "log_level": "INFO", "message": "boot ok",
                   "log_data": None, "timestamp": None}


def test_level_is_normalised_to_upper_case():
    assert LOG.load(good(log_level="warning"))["log_level"] == "WARNING"


@pytest.mark.parametrize("field", ["device_id", "log_level", "message"])
def test_required_fields_are_named(field):
    payload = good()
    del payload[field]
    assert field in errors_of(LOG, payload)


@pytest.mark.parametrize(
    "field, value",
    [
        ("device_id", ""),
        ("device_id", "a" * 101),
        ("device_id", "has space"),
        ("device_id", "../etc"),
        ("device_id", "a" * 100 + "\n"),
        ("device_id", "dev\n"),
        ("device_id", 42),
        ("log_level", "TRACE"),
        ("log_level", None),
        ("message", ""),
        ("message", "x" * 10_001),
        ("message", "nul\x00inside"),
        ("message", ["not", "a", "string"]),
        ("log_data", "not an object"),
        ("log_data", [1, 2]),
        ("log_data", {"k": "nul\x00"}),
        ("log_data", {"nul\x00key": 1}),
        ("log_data", {"blob": "x" * 20_000}),
        ("log_data", __import__("functools").reduce(lambda inner, _: {"k": inner}, range(600), {})),
        ("timestamp", "yesterday"),
        ("timestamp", "2024-13-01T00:00:00"),
        ("timestamp", 1700000000),
        ("timestamp", "0001-01-01T00:00:00+05:00"),
    ],
)
def test_bad_values_are_rejected_by_field(field, value):
    assert field in errors_of(LOG, good(**{field: value}))


def test_unknown_fields_are_rejected():
    assert "colour" in errors_of(LOG, good(colour="red"))


def test_log_data_becomes_compact_json_and_keeps_escaped_backslashes():
    log = LOG.load(good(log_data={"path": "C:\\u0000dir", "n": 1}))
    assert log["log_data"] == b'{"path":"C:\\\\u0000dir","n":1}'


def test_timestamps_are_normalised_to_utc():
    log = LOG.load(good(timestamp="2024-01-01T02:00:00+02:00"))
    assert log["timestamp"] == dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    naive = LOG.load(good(timestamp="2024-01-01T00:00:00"))
    assert naive["timestamp"].tzinfo == dt.UTC


def test_batch_error_names_index_and_field():
    messages = errors_of(BATCH, {"logs": [good(), good(log_level="LOUD"), good(message="")]})
    assert set(messages["logs"]) == {1, 2}
    assert "log_level" in messages["logs"][1]
    assert "message" in messages["logs"][2]


@pytest.mark.parametrize("payload", [{"logs": []}, {"logs": [good()] * 1001}, {}, {"logs": "x"}])
def test_batch_size_and_shape(payload):
    assert "logs" in errors_of(BATCH, payload)


@pytest.mark.parametrize("raw, ok", [({}, 100), ({"limit": "5"}, 5), ({"limit": "0"}, None),
                                     ({"limit": "1001"}, None), ({"limit": "x"}, None)])
def test_query_limit(raw, ok):
    schema = query_args_schema(1000)
    if ok is None:
        assert "limit" in errors_of(schema, raw)
    else:
        assert schema.load(raw)["limit"] == ok


@pytest.mark.parametrize("log_data, path", [
    ({"x": 2**64}, "log_data.x"),
    ({"x": -(2**63) - 1}, "log_data.x"),
    ({"a": [0, {"b": 10**30}]}, "log_data.a[1].b"),
    ({"x": float("inf")}, "log_data.x"),
    ({"x": float("nan")}, "log_data.x"),
    ({"odd key": [float("-inf")]}, 'log_data["odd key"][0]'),
    ({"k": "lone \ud800"}, "log_data.k"),
    ({"\udfff": 1}, 'log_data["\\udfff"]'),
    ({"x": (1, 2)}, "log_data.x"),
    ({1: "non-string key"}, "log_data"),
    ({"deep": __import__("functools").reduce(lambda inner, _: [inner], range(64), [])}, "log_data.deep"),
])
def test_log_data_that_cannot_round_trip_is_refused_naming_the_path(log_data, path):
    [message] = errors_of(LOG, good(log_data=log_data))["log_data"]
    assert message.startswith(path + ": ") or message.startswith(path + "["), message


def test_log_data_edges_that_round_trip_are_accepted_as_compact_json():
    edges = {"max": 2**64 - 1, "min": -(2**63), "big": 1e20, "neg_zero": -0.0, "tiny": 5e-324,
             "deep": __import__("functools").reduce(lambda inner, _: [inner], range(62), [])}
    assert orjson.loads(LOG.load(good(log_data=edges))["log_data"]) == edges


def test_orjson_parsed_input_with_a_float_that_may_have_been_a_big_integer_is_ambiguous():
    # orjson reads 18446744073709551616 (an integer) as this float: only the body can tell.
    # This also holds orjson to writing such floats with an exponent, which the schema's
    # cheap scan relies on to find them.
    schema = log_schema(10_000, 16_384, orjson_parsed=True)
    for value in (float(2**64), 1e20, -1e300, float(-(2**63)), 1.7976931348623157e308):
        with pytest.raises(AmbiguousNumber):
            schema.load(good(log_data={"x": value}))
        with pytest.raises(AmbiguousNumber):
            schema.load(good(log_data={"deep": [[{"x": [value]}]]}))
    loaded = schema.load(good(log_data={"x": 1.8e19, "y": 2**64 - 1}))
    assert loaded["log_data"] == b'{"x":1.8e+19,"y":18446744073709551615}'


def test_text_fields_refuse_lone_surrogates_unless_orjson_read_them():
    assert "message" in errors_of(LOG, good(message="a\ud800"))
    assert "boot_id" in errors_of(LOG, good(boot_id="\udc00", seq=1))


@pytest.mark.parametrize("sent, meant", [
    ("2024-01-01T00:00:00.123456000Z", dt.datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=dt.UTC)),
    ("0001-01-01T00:00:00Z", dt.datetime(1, 1, 1, tzinfo=dt.UTC)),
    ("9999-12-31T23:59:59.999999+00:00", dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC)),
    ("2024-01-01T00:00:00+14:00", dt.datetime(2023, 12, 31, 10, tzinfo=dt.UTC)),
])
def test_timestamps_keep_their_instant(sent, meant):
    assert LOG.load(good(timestamp=sent))["timestamp"] == meant


@pytest.mark.parametrize("sent", ["2024-01-01T00:00:00.1234567Z", "2024-01-01T00:00:00,0000001Z",
                                  "2016-12-31T23:59:60Z", "9999-12-31T23:59:59-01:00"])
def test_timestamps_that_would_change_instant_are_refused(sent):
    assert "timestamp" in errors_of(LOG, good(timestamp=sent))
