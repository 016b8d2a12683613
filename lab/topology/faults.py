"""Scripted misbehaviour: a hop's faults (a node's `faults:`) and the lab DNS's (`dns:
faults:`), each with a lab-time window (`from`/`until`), a chance drawn from the lab's
`seed:`, and for a hop a rate limit. lab.topology.model re-exports these, so code reads
them from there; lab.services.faultgate decides, at run time, whether one strikes."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from lab.topology.fields import Base
from lab.topology.units import DURATION_PATTERN, Duration, format_duration, parse_duration


class FaultStage(StrEnum):
    connect = "connect"
    helo = "helo"
    mail = "mail"
    rcpt = "rcpt"
    data = "data"
    dot = "dot"


class DnsFault(StrEnum):
    servfail = "servfail"
    timeout = "timeout"
    nxdomain = "nxdomain"
    refused = "refused"


# ---------------------------------------------------------------------------------------
# Lab times: a duration from lab start, or an absolute date and time


def parse_lab_time(value: Any) -> float | datetime:
    """A duration from lab start (seconds, "10m", "1h30m") as a float, or an absolute
    ISO 8601 date and time ("2026-12-05T03:00:00Z"; without a zone, UTC) as a datetime."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        return parse_duration(value)
    except ValueError:
        pass
    if isinstance(value, str):
        try:
            found = datetime.fromisoformat(value.strip())
        except ValueError:
            pass
        else:
            return found if found.tzinfo else found.replace(tzinfo=UTC)
    raise ValueError(
        "expected a lab time: a duration from lab start such as 10m or 1h30m, or a date and"
        f" time such as 2026-12-05T03:00:00Z, got {value!r}"
    )


def _show_lab_time(value: float | datetime) -> str:
    return value.isoformat() if isinstance(value, datetime) else format_duration(value)


LabTime = Annotated[
    float | datetime,
    BeforeValidator(parse_lab_time),
    PlainSerializer(_show_lab_time, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": DURATION_PATTERN},
                {"type": "number", "minimum": 0},
                {"type": "string", "format": "date-time"},
            ],
            "description": "a duration from lab start (10m, 1h30m) or a date and time"
            " (2026-12-05T03:00:00Z)",
        }
    ),
]


def resolve(value: float | datetime, epoch: float) -> float:
    """A lab time as a timestamp, for a lab that started at `epoch`."""
    return value.timestamp() if isinstance(value, datetime) else epoch + value


class Timed(Base):
    """When a fault may strike: a lab-time window and a chance."""

    from_: LabTime | None = Field(
        None, alias="from", description="strike only from this lab time on (e.g. 10m)"
    )
    until: LabTime | None = Field(None, description="strike only before this lab time (e.g. 1h)")
    chance: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="strike with this probability (0..1), drawn from the lab's seed",
    )

    @model_validator(mode="after")
    def _window(self) -> Timed:
        start, end = self.from_, self.until
        comparable = start is not None and end is not None and type(start) is type(end)
        if comparable and end <= start:  # type: ignore[operator]
            raise ValueError("a fault's window must end ('until') after it begins ('from')")
        return self


# ---------------------------------------------------------------------------------------
# A hop's faults

RATE_REPLY = "421 4.7.0 too many messages, slow down"


def _check_reply(value: str | None) -> str | None:
    if value is not None and not re.match(r"^[2-5]\d\d( |$)", value):
        raise ValueError(f"expected an SMTP reply such as '421 4.3.2 try later', got {value!r}")
    return value


class RateLimit(Base):
    """At most `messages` per `per` of lab time from one client address; more get `reply`."""

    messages: int = Field(ge=1, description="how many are let through per period")
    per: Duration = Field(description="the period, in lab time (e.g. 1m)")
    reply: str | None = Field(
        None, description=f"the reply past the limit (default: the fault's, or '{RATE_REPLY}')"
    )

    @field_validator("reply")
    @classmethod
    def _reply(cls, value: str | None) -> str | None:
        return _check_reply(value)

    @field_validator("per")
    @classmethod
    def _per(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("a rate limit's period must be longer than zero")
        return value


class Fault(Timed):
    """A scripted misbehaviour of one hop: '421 on the first two connections'."""

    on: FaultStage = Field(description="the point in the dialogue where it strikes")
    reply: str | None = Field(
        None, description="the reply to give instead, e.g. '421 4.3.2 try later'"
    )
    match: str | None = Field(
        None, description="only for this address (MAIL FROM or RCPT TO), case-insensitive"
    )
    times: int | None = Field(
        None, ge=1, description="strike only this many times (default: always)"
    )
    delay: Duration = Field(0.0, description="wait this long (real time) before answering")
    disconnect: bool = Field(False, description="drop the connection instead of answering")
    rate: RateLimit | None = Field(
        None, description="a rate limit per client address: strike only past it"
    )

    @field_validator("reply")
    @classmethod
    def _reply(cls, value: str | None) -> str | None:
        return _check_reply(value)

    @model_validator(mode="after")
    def _something(self) -> Fault:
        if self.reply is None and not self.disconnect and not self.delay and self.rate is None:
            raise ValueError("a fault needs a reply, disconnect: true, a delay or a rate")
        return self

    def answer(self) -> str | None:
        """The reply it gives when it strikes (None: it only delays or disconnects)."""
        if self.rate is not None:
            return self.rate.reply or self.reply or RATE_REPLY
        return self.reply


# ---------------------------------------------------------------------------------------
# The lab DNS's faults


class DnsFaultRule(Timed):
    """Answer queries for matching names with a failure instead: SERVFAIL, silence
    (timeout), NXDOMAIN or REFUSED."""

    name: str = Field(
        description="the name, or a glob of names (*.freeuk.com, *), case-insensitive"
    )
    fault: DnsFault = Field(description="servfail, timeout (no answer), nxdomain or refused")
    type: str | None = Field(None, description="only for this query type (MX, A, ...)")
    times: int | None = Field(
        None, ge=1, description="strike only this many times (default: always)"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        value = value.strip().rstrip(".").lower()
        if not value:
            raise ValueError("expected a name or a glob such as *.freeuk.com")
        return value

    @field_validator("type")
    @classmethod
    def _type(cls, value: str | None) -> str | None:
        return value.upper() if value else None
