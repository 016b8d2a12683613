"""Impairments of a link or a network: a modem's speed, its latency, a noisy line, and a
modem that hangs up in the middle of a message.

`impair:` on a network applies to every connection on it; on a link (a host's
attachment to a network), to the connections that cross that attachment, and it may also
hang the link up once: after so many bytes have crossed it (`drop_after`) or at a lab
time (`drop_at`, counted from when the lab came up). docs/links.md describes each knob;
the backends apply them (in process in the virtual network, on the lab clock; in Docker
with tc netem on the lab's own segments).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from lab.topology.fields import Base
from lab.topology.units import Duration, Percent, Rate, Size

KNOBS = ("rate", "delay", "jitter", "loss")
DROPS = ("drop_after", "drop_at")


class Impairment(Base):
    """What a network does to the connections on it."""

    rate: Rate | None = Field(None, description="the line's speed, e.g. 33.6kbit")
    delay: Duration = Field(0.0, description="one-way latency added to every packet, e.g. 150ms")
    jitter: Duration = Field(0.0, description="random variation of the delay, e.g. 20ms")
    loss: Percent = Field(0.0, description="packets lost (TCP sends them again), e.g. 1%")

    @model_validator(mode="after")
    def _jitter(self) -> Impairment:
        if self.jitter and not self.delay:
            raise ValueError("jitter varies the delay: give a delay too (e.g. delay: 150ms)")
        return self

    def is_empty(self) -> bool:
        return not any(getattr(self, k) for k in (*KNOBS, *DROPS) if hasattr(self, k))


class LinkImpairment(Impairment):
    """What a link does to the connections across it, and when its modem hangs up."""

    drop_after: Size | None = Field(
        None,
        description="hang the link up once, after this many bytes crossed it (e.g. 50KB)",
    )
    drop_at: Duration | None = Field(
        None,
        description="hang the link up once, at this lab time after the lab came up (e.g. 90s)",
    )


def combine(parts: list[Impairment]) -> dict[str, float]:
    """The effect of several impairments on one path (a link and its network): the
    slowest rate, the delays and jitters added, the losses compounded."""
    rates = [p.rate for p in parts if p.rate]
    kept = 1.0
    for p in parts:
        kept *= 1 - p.loss
    return {
        "rate": min(rates) if rates else 0.0,
        "delay": sum(p.delay for p in parts),
        "jitter": sum(p.jitter for p in parts),
        "loss": 1 - kept,
    }


def impairment_of(data: dict[str, Any] | None, *, link: bool) -> Impairment | None:
    """An impairment from its JSON form (run-time edits, the Docker spec), validated."""
    if not data:
        return None
    model = LinkImpairment if link else Impairment
    return model.model_validate(data)
