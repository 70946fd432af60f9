"""Marshmallow schemas of the log queries and the device list: their query strings and answers."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson
from marshmallow import RAISE, Schema, ValidationError, fields, validate

from collector.core.model import DEVICE_ID_RE, LEVELS
from collector.store.search import MIN_Q_CHARS
from collector.web.schemas import Level, Text, UtcDateTime


class LevelList(fields.String):
    """`level=ERROR,CRITICAL` (also repeated: `level=ERROR&level=CRITICAL`): one or several levels."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> tuple[str, ...]:
        names = [name.strip().upper() for name in super()._deserialize(value, attr, data, **kwargs).split(",")]
        unknown = [name for name in names if name not in LEVELS]
        if unknown:
            raise ValidationError(f"Unknown level(s) {', '.join(map(repr, unknown))}; each must be one of: "
                                  f"{', '.join(LEVELS)}.")
        return tuple(dict.fromkeys(names))


class JsonObject(fields.String):
    """A JSON object given as text in the query string (`data={"fw":"1.2.3"}`)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ValidationError(f"Must be a JSON object, as in data={{\"fw\":\"1.2.3\"}} ({exc}).") from None
        if not isinstance(parsed, dict):
            raise ValidationError("Must be a JSON object, as in data={\"fw\":\"1.2.3\"}.")
        return parsed


@lru_cache(maxsize=8)
def query_args_schema(max_limit: int, fleet: bool = False) -> Schema:
    """Query string of GET /api/logs/<device_id> (fleet=False) and GET /api/logs (fleet=True).
    The view reads `level` and `device_id` with every repetition joined (see query.filter_args)."""

    class QueryArgs(Schema):
        class Meta:
            unknown = RAISE

        limit = fields.Integer(load_default=min(100, max_limit), validate=validate.Range(min=1, max=max_limit))
        level = LevelList(metadata={"description": "Only these levels, comma-separated: level=ERROR,CRITICAL."})
        min_level = Level(metadata={"description": "Only this level and above: min_level=WARNING."})
        since = UtcDateTime(metadata={"description": "Logs whose created_at is at or after this (ISO 8601)."})
        until = UtcDateTime(metadata={"description": "Logs whose created_at is before this (ISO 8601)."})
        q = Text(validate=validate.Length(min=MIN_Q_CHARS, max=200), metadata={
            "description": f"A substring of message, any case ({MIN_Q_CHARS} to 200 characters)."})
        data = JsonObject(metadata={"description": 'JSON that log_data contains: data={"fw":"1.2.3"}.'})
        order = fields.String(load_default="desc", validate=validate.OneOf(["desc", "asc"]),
                              metadata={"description": "desc: newest first (the default); asc: oldest first."})
        cursor = fields.String(validate=validate.Length(max=200), metadata={
            "description": "next_cursor of the previous page, with the same filters and order."})
        if fleet:
            device_id = fields.List(fields.String(validate=validate.Regexp(DEVICE_ID_RE)), metadata={
                "description": "Only these devices (repeat it: device_id=a&device_id=b)."})
            device_prefix = fields.String(validate=validate.Regexp(DEVICE_ID_RE), metadata={
                "description": "Only devices whose id starts with this."})

    return QueryArgs()


class DeviceOut(Schema):
    """A device as GET /api/devices lists it."""

    device_id = fields.String()
    last_seen = fields.DateTime(allow_none=True, metadata={
        "description": "When its newest stored log was received (UTC)."})
    total = fields.Integer(metadata={"description": "Its logs stored (and not yet expired)."})
    by_level = fields.Dict(keys=fields.String(), values=fields.Integer())


@lru_cache(maxsize=8)
def device_list_args_schema(max_limit: int) -> Schema:
    """Query string of GET /api/devices."""

    class DeviceListArgs(Schema):
        class Meta:
            unknown = RAISE

        limit = fields.Integer(load_default=max_limit, validate=validate.Range(min=1, max=max_limit))
        device_prefix = fields.String(validate=validate.Regexp(DEVICE_ID_RE), metadata={
            "description": "Only devices whose id starts with this."})

    return DeviceListArgs()


class DevicesPageOut(Schema):
    total = fields.Integer(metadata={"description": "Devices found (the list holds at most `limit`)."})
    source = fields.String(metadata={"enum": ["cache", "database"]})
    devices = fields.List(fields.Nested(DeviceOut))
