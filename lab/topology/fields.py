"""Small value types the topology's models share: the services a host runs, host names,
mail addresses, addresses on a network, fields that take one item or a list, and `Base`,
the model every part of the format derives from (unknown keys forbidden)."""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema


class Service(StrEnum):
    """What a host runs."""

    smtp = "smtp"
    pop3 = "pop3"
    dns = "dns"
    fetch = "fetch"
    client = "client"


_LABEL = r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)"
HOSTNAME_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$")
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
LOCAL_PART_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+$")


def check_hostname(value: str) -> str:
    if not isinstance(value, str) or not HOSTNAME_RE.match(value):
        raise ValueError(f"expected a host name such as mail.example.org, got {value!r}")
    return value.rstrip(".").lower()


def check_address(value: str) -> str:
    """A mail address: user@domain, or a bare local name (qualified by the MTA)."""
    if not isinstance(value, str):
        raise ValueError(f"expected a mail address such as user@example.org, got {value!r}")
    local, at, domain = value.rpartition("@")
    if not at:
        local, domain = value, ""
    if not local or not LOCAL_PART_RE.match(local) or (at and not HOSTNAME_RE.match(domain)):
        raise ValueError(f"expected a mail address such as user@example.org, got {value!r}")
    return value


def check_name(value: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValueError(
            f"expected a name of letters, digits, '-' and '_' starting with a letter, got {value!r}"
        )
    return value


HOSTNAME_PATTERN = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?$"
EXCHANGE_PATTERN = r"^(\.|[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?)$"

Hostname = Annotated[
    str,
    Field(
        pattern=HOSTNAME_PATTERN,
        description="a DNS host name such as mail.example.org",
    ),
]


def _address_or_auto(value: Any) -> str:
    if value is None or value == "auto":
        return "auto"
    try:
        return str(ipaddress.IPv4Address(value))
    except (ValueError, TypeError):
        raise ValueError(
            f"expected an IPv4 address on that network, or 'auto', got {value!r}"
        ) from None


AddressOrAuto = Annotated[
    str,
    BeforeValidator(_address_or_auto),
    WithJsonSchema(
        {
            "anyOf": [{"type": "string", "format": "ipv4"}, {"const": "auto"}, {"type": "null"}],
            "description": "an IPv4 address, or 'auto' (or empty) to allocate one",
        }
    ),
]

MailAddress = Annotated[
    str, Field(description="a mail address such as user@example.org, or a bare local name")
]


class Base(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=False, defer_build=True)


def one_or_many(item: dict[str, Any], description: str) -> Any:
    """JSON Schema for a field that takes one item or a list of them."""
    return WithJsonSchema(
        {"anyOf": [item, {"type": "array", "items": item}], "description": description}
    )


def listify(value: Any) -> Any:
    """A field given as one item becomes a list of it (None included)."""
    return [value] if isinstance(value, str | int | float | dict) or value is None else value
