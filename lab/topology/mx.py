"""An MX record as a topology file writes it: 'PREFERENCE HOST' (or a mapping)."""

from __future__ import annotations

import re
from typing import Any

from lab.topology.fields import HOSTNAME_RE

_MX_RE = re.compile(r"^\s*(\d+)\s+(\S+)\s*$")


def parse_mx(value: Any) -> Any:
    if isinstance(value, str):
        match = _MX_RE.match(value)
        if not match:
            raise ValueError(
                "expected an MX record as 'PREFERENCE HOST' such as '10 mx.example.org',"
                f" got {value!r}"
            )
        if int(match.group(1)) > 65535:
            raise ValueError(
                f"MX preference {match.group(1)} is out of range; expected 0 to 65535,"
                f" got {value!r}"
            )
        exchange = match.group(2)
        if exchange != "." and not HOSTNAME_RE.match(exchange):
            raise ValueError(f"MX exchange {exchange!r} is not a host name (or '.' for null MX)")
        return {"preference": int(match.group(1)), "exchange": exchange.rstrip(".") or "."}
    return value
