"""Durations ("30m", "4h", "5d", "1h30m"), sizes ("10MB"), rates ("33.6kbit") and
percentages ("1%") as people write them.

All parse to plain numbers (seconds, bytes, bits per second, a fraction) so the rest of
maillab never sees strings.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_DURATION_RE = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+$")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([a-z]*)$")

_RATE_UNITS = {
    "bit": 1,
    "bps": 1,
    "kbit": 1000,
    "kbps": 1000,
    "mbit": 1000**2,
    "mbps": 1000**2,
    "gbit": 1000**3,
    "gbps": 1000**3,
}
_RATE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([a-z]+)$")
_PERCENT_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*%$")

RATE_PATTERN = r"^\d+(\.\d+)?\s*([kKmMgG]?([bB][iI][tT]|[bB][pP][sS]))$"
PERCENT_PATTERN = r"^\d+(\.\d+)?\s*%$"
DURATION_PATTERN = r"^(\d+(\.\d+)?(ms|s|m|h|d|w))+$"
SIZE_PATTERN = r"^\d+(\.\d+)?\s*([kKmMgG]i?[bB]?|[bB])?$"


def parse_duration(value: Any) -> float:
    """Seconds from a number of seconds or a string such as "30m", "4h", "5d", "1h30m"."""
    if isinstance(value, bool):
        raise ValueError(
            f"expected a duration such as 90s, 30m, 4h, 5d or 1h30m, got {str(value).lower()}"
        )
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"expected a duration of zero or more, got {value!r}")
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if _DURATION_RE.match(text):
            return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
    raise ValueError(
        f"expected a duration such as 90s, 30m, 4h, 5d or 1h30m (units ms s m h d w), got {value!r}"
    )


def format_duration(seconds: float) -> str:
    """The shortest exact form: 1800 -> "30m", 5400 -> "1h30m"."""
    if seconds == 0:
        return "0s"
    parts = []
    rest = seconds
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            count = int(rest // size)
            parts.append(f"{count}{unit}")
            rest -= count * size
    if rest > 1e-9:
        parts.append(f"{round(rest * 1000)}ms")
    return "".join(parts)


def parse_size(value: Any) -> int:
    """Bytes from a number or a string such as "10MB", "512k", "1MiB"."""
    if isinstance(value, bool):
        raise ValueError(
            f"expected a size in bytes or such as 512KB, 10MB, 1MiB, got {str(value).lower()}"
        )
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"expected a size of zero or more, got {value!r}")
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value.strip().lower())
        if match and match.group(2) in _SIZE_UNITS:
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
    raise ValueError(f"expected a size in bytes or such as 512KB, 10MB, 1MiB, got {value!r}")


def parse_rate(value: Any) -> float:
    """Bits per second from a string such as "33.6kbit", "56kbps", "2mbit" (tc's units:
    k = 1000; bytes are not accepted, a modem's speed is in bits)."""
    if isinstance(value, str):
        match = _RATE_RE.match(value.strip().lower())
        if match and match.group(2) in _RATE_UNITS:
            rate = float(match.group(1)) * _RATE_UNITS[match.group(2)]
            if rate > 0:
                return rate
            raise ValueError(f"expected a rate above zero, got {value!r}")
    raise ValueError(
        f"expected a rate such as 33.6kbit, 56kbps or 2mbit (units bit kbit mbit gbit),"
        f" got {value!r}"
    )


def format_rate(bits: float) -> str:
    """The form tc and people write: 33600 -> "33.6kbit"."""
    for unit, size in (("gbit", 1000**3), ("mbit", 1000**2), ("kbit", 1000)):
        if bits >= size:
            return f"{bits / size:g}{unit}"
    return f"{bits:g}bit"


def parse_percent(value: Any) -> float:
    """A fraction from "1%", "0.5%" or a number between 0 and 1."""
    fraction: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        fraction = float(value)
    elif isinstance(value, str) and (match := _PERCENT_RE.match(value.strip())):
        fraction = float(match.group(1)) / 100
    if fraction is None or not 0 <= fraction <= 1:
        raise ValueError(
            f"expected a percentage such as 1% or 0.5% (or a fraction from 0 to 1), got {value!r}"
        )
    return fraction


def format_percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"


Rate = Annotated[
    float,
    BeforeValidator(parse_rate),
    PlainSerializer(format_rate, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": RATE_PATTERN,
            "description": "bits per second, such as 33.6kbit, 56kbps, 2mbit",
        }
    ),
]

Percent = Annotated[
    float,
    BeforeValidator(parse_percent),
    PlainSerializer(format_percent, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": PERCENT_PATTERN},
                {"type": "number", "minimum": 0, "maximum": 1},
            ],
            "description": "a percentage such as 1% or 0.5%, or a fraction from 0 to 1",
        }
    ),
]

Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": DURATION_PATTERN},
                {"type": "number", "minimum": 0},
            ],
            "description": "seconds, or a duration such as 90s, 30m, 4h, 5d, 1h30m",
        }
    ),
]

Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": SIZE_PATTERN},
                {"type": "integer", "minimum": 0},
            ],
            "description": "bytes, or a size such as 512KB, 10MB, 1MiB",
        }
    ),
]
