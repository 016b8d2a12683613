"""Durations ("30m", "4h", "5d", "1h30m") and sizes ("10MB") as people write them.

Both parse to plain numbers (seconds, bytes) so the rest of maillab never sees strings.
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
