"""What log_data may hold, so that it comes back from every read path unchanged.

One walk over the object finds what compact JSON and PostgreSQL's `json` column
would keep but JSON readers and writers would not give back: integers beyond 64
bits, non-finite numbers, nesting deeper than an answer can be written, NUL
characters (PostgreSQL's text refuses them) and lone surrogates. For input that
orjson read (the hot path), cheap scans of the encoded bytes say whether the walk
is needed at all.
"""

from __future__ import annotations

import json
import math
import re

import orjson

# Integers in log_data: signed and unsigned 64-bit, what orjson reads and writes as
# integers (it reads a longer one as a float, and refuses to write one, so 2**64 would
# come back rounded or not at all). Not +-(2**53-1), I-JSON's safe range: devices send
# 64-bit counters and nanosecond clocks, and the JSON we answer carries them exactly
# (a JavaScript client that reads them into doubles rounds them itself).
MIN_INT, MAX_INT = -(2**63), 2**64 - 1
# Floats orjson may have read from an integer literal beyond the range above.
_FLOAT_FROM_BIG_INT_HIGH, _FLOAT_FROM_BIG_INT_LOW = float(2**64), float(MIN_INT)
# log_data is nested at most this deep (the object itself is level 1). orjson writes at
# most 254 levels, and answers put log_data 3 levels down (the cache's copy 2); 64 is
# far from both and more than any log needs.
MAX_DEPTH = 64

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class AmbiguousNumber(Exception):
    """log_data read by orjson holds a float of 2**64 or more (or -2**63 or less): the device
    may have written it as an integer beyond 64 bits, which orjson silently reads as a float.
    Only an exact parse of the body can tell (collector.web.ingest does it)."""


def is_unicode(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


class Refused(Exception):
    """A log_data value that cannot round-trip; str() names its place (log_data.a.b[1]: ...)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.path: list[str | int] = []  # filled in on the way out, innermost first

    def __str__(self) -> str:
        return f"{_path_of(self.path)}: {self.message}"


def encode(value: dict, orjson_parsed: bool) -> bytes:
    """log_data's compact JSON, or Refused. `orjson_parsed`: the value comes from
    orjson.loads, and a float that may have been an integer beyond 64 bits raises
    AmbiguousNumber (see collector.web.ingest)."""
    if not orjson_parsed:  # Python objects, or the exact parse: anything may be there
        _check(value, 1, False)
    try:
        encoded = orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        _check(value, 1, orjson_parsed)  # names the place, when it is one we refuse
        raise Refused(f"Cannot be stored as JSON: {exc}.") from None
    if orjson_parsed and _may_be_refused(encoded):
        _check(value, 1, True)
    return encoded


def _check(container: dict | list, depth: int, orjson_parsed: bool) -> None:
    """One walk over log_data: raises Refused for what could not come back unchanged,
    AmbiguousNumber when only the exact body can tell. Scalars are checked inline and
    types compared with `is` (so bool is not taken for int): a few comparisons per value."""
    if depth > MAX_DEPTH:
        raise Refused(f"Nested deeper than {MAX_DEPTH} levels.")
    is_object = isinstance(container, dict)
    key: str | int = 0
    try:
        for key, value in container.items() if is_object else enumerate(container):
            if is_object and (type(key) is not str or "\x00" in key):
                raise Refused("Object keys must be strings without NUL characters.")
            kind = type(value)
            if kind is str:
                if "\x00" in value:
                    raise Refused("Must not contain NUL characters.")
            elif kind is int:
                if not MIN_INT <= value <= MAX_INT:
                    raise Refused("Integers must be between -2^63 and 2^64-1 "
                                  "(send a larger one as a float or a string).")
            elif kind is float:
                if not math.isfinite(value):
                    raise Refused("Numbers must be finite (at most 1.7976931348623157e308 in magnitude).")
                if orjson_parsed and (value >= _FLOAT_FROM_BIG_INT_HIGH or value <= _FLOAT_FROM_BIG_INT_LOW):
                    raise AmbiguousNumber
            elif kind is dict or kind is list:
                _check(value, depth + 1, orjson_parsed)
            elif value is not None and kind is not bool:
                raise Refused(f"Not a JSON value ({kind.__name__}).")
            if not orjson_parsed:  # orjson refuses lone surrogates; other input must be checked
                for text in (key, value) if kind is str else (key,):
                    if type(text) is str and not text.isascii() and not is_unicode(text):
                        raise Refused("Must be Unicode text (no lone surrogates).")
    except Refused as refused:
        refused.path.append(key)
        raise


def _path_of(parts: list[str | int]) -> str:
    """log_data.a.b[1], or log_data["odd key"] for keys that are not identifiers."""
    text = "log_data"
    for part in reversed(parts):  # collected innermost first
        if isinstance(part, int):
            text += f"[{part}]"
        elif _IDENTIFIER.match(part):
            text += f".{part}"
        else:
            shown = part if len(part) <= 40 else part[:40] + "\u2026"
            # escaped to ASCII only if it holds a lone surrogate, which no answer could carry
            text += f"[{json.dumps(shown, ensure_ascii=not is_unicode(shown))}]"
    return text


def _may_be_refused(encoded: bytes) -> bool:
    """Whether orjson-read log_data needs the walk: cheap scans of its compact JSON (in C)
    that no refused value escapes, so the walk runs only for the few logs that may hold
    one. What orjson read has no lone surrogates, infinities or integers beyond 64 bits
    (they became floats), so what is left: NUL (written \\u0000), nesting (at least one
    bracket per level), and floats of 2**63 or more in magnitude, which orjson always
    writes with an exponent ("e+18" and up; tests/test_schemas.py holds it to that)."""
    return (b"e+" in encoded or b"\\u0000" in encoded
            or encoded.count(b"{") + encoded.count(b"[") > MAX_DEPTH)
