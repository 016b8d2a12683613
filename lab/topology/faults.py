"""A scripted misbehaviour of one hop (a node's `faults:`); lab.topology.model re-exports
these, so code reads them from there."""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import Field, field_validator, model_validator

from lab.topology.fields import Base
from lab.topology.units import Duration


class FaultStage(StrEnum):
    connect = "connect"
    helo = "helo"
    mail = "mail"
    rcpt = "rcpt"
    data = "data"
    dot = "dot"


class Fault(Base):
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

    @field_validator("reply")
    @classmethod
    def _reply(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[2-5]\d\d( |$)", value):
            raise ValueError(f"expected an SMTP reply such as '421 4.3.2 try later', got {value!r}")
        return value

    @model_validator(mode="after")
    def _something(self) -> Fault:
        if self.reply is None and not self.disconnect and not self.delay:
            raise ValueError("a fault needs a reply, disconnect: true or a delay")
        return self
