"""The checks of a topology: named lists of declarative steps (send, link, advance, flush,
fetch, expect) and what an `expect` step requires. lab.harness.checks runs them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from lab.topology.defaults import DEFAULT_BODY, DEFAULT_SUBJECT
from lab.topology.fields import Base, listify, one_or_many
from lab.topology.units import Duration, Size


class SendStep(Base):
    """Submit a message as a node would."""

    from_: str = Field(alias="from", description="the node that submits (a client or an MTA)")
    mail_from: str = Field(description="the envelope sender ('' for the null sender)")
    to: Annotated[list[str], one_or_many({"type": "string"}, "envelope recipients")]
    subject: str = DEFAULT_SUBJECT
    body: str = DEFAULT_BODY
    headers: dict[str, str] = Field(
        default_factory=dict, description="header fields (From: defaults to mail_from)"
    )
    via: str | None = Field(
        None, description="the MTA to submit to (default: the client's submit_to)"
    )
    attach: Size | None = Field(
        None,
        description="add this many bytes of base64 text to the body, as an attachment"
        " weighs (e.g. 100KB)",
    )

    @field_validator("to", mode="before")
    @classmethod
    def _to(cls, value: Any) -> Any:
        return listify(value)


class DsnExpect(Base):
    """The delivered message is a DSN (RFC 3464): a message/delivery-status part whose
    block for `recipient` says `action` (and `status`, when given, starts with it)."""

    action: Literal["failed", "delayed", "delivered", "relayed", "expanded"] = Field(
        description="the Action: of the recipient's block (failed: a bounce; delayed: a warning)"
    )
    recipient: str | None = Field(None, description="the recipient the block is about")
    status: str | None = Field(None, description="what its Status: starts with (4., 5.1.1)")


class DeliveredExpect(Base):
    to: str = Field(description="the recipient address the message reached")
    node: str | None = Field(None, description="the host whose mailbox holds it")
    mailbox: str | None = Field(None, description="the local user whose mailbox holds it")
    envelope_from: str | None = Field(None, description="Return-Path as delivered")
    headers: dict[str, str] = Field(default_factory=dict, description="header values expected")
    within: Duration | None = Field(
        None,
        description="delivered at most this long after the last send, in lab time (e.g. 20m)",
    )
    whole: bool = Field(
        False,
        description="its body is the body of the last message sent, every byte (after a"
        " link hung up mid-message: nothing partial, nothing lost)",
    )
    dsn: DsnExpect | None = Field(None, description="the message is a DSN saying this")


class QueuedExpect(Base):
    on: str = Field(description="the MTA whose queue holds it")
    to: str | None = None


class BouncedExpect(Base):
    recipient: str | None = Field(None, description="the original recipient that failed")
    to: str | None = Field(None, description="where the DSN went (the envelope sender)")
    status: str | None = Field(None, description="the DSN status, e.g. 5.1.8")
    by: str | None = Field(None, description="the MTA that generated the DSN")
    lands: DeliveredExpect | None = Field(None, description="where the DSN was finally delivered")


class RejectedExpect(Base):
    by: str | None = Field(
        None,
        description="the node that refused, at any hop (a later hop's refusal is waited"
        " for); without it, the submission of the last message sent must be refused",
    )
    code: int | None = Field(None, ge=200, le=599, description="the refusing reply's code")
    stage: Literal["connect", "helo", "mail", "rcpt", "data"] | None = Field(
        None, description="the SMTP stage that was refused"
    )


class Expect(Base):
    """What must have happened: exactly one of delivered, queued, bounced, rejected."""

    delivered: DeliveredExpect | None = None
    not_delivered: DeliveredExpect | None = None
    queued: QueuedExpect | None = None
    bounced: BouncedExpect | None = None
    rejected: RejectedExpect | None = None
    within: Duration = Field(10.0, description="how long to wait (real time)")

    @model_validator(mode="after")
    def _exactly_one(self) -> Expect:
        given = [
            k
            for k in ("delivered", "not_delivered", "queued", "bounced", "rejected")
            if getattr(self, k) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "expected exactly one of delivered, not_delivered, queued, bounced, rejected"
                + (f", got {', '.join(given)}" if given else "")
            )
        return self


class Step(Base):
    """One step of a check: exactly one action."""

    send: SendStep | None = None
    link: dict[str, Literal["up", "down"]] | None = Field(
        None, description="link name -> up or down"
    )
    advance: Duration | None = Field(None, description="move the lab clock forward")
    flush: str | None = Field(None, description="run the queue of this MTA now (sendmail -q)")
    fetch: str | None = Field(None, description="run this host's fetch jobs now")
    expect: Expect | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_action(cls, value: Any) -> Any:
        if isinstance(value, dict) and len(value) != 1:
            keys = ", ".join(map(str, value)) or "nothing"
            raise ValueError(
                "a step has exactly one action (send, link, advance, flush, fetch, expect),"
                f" got {keys}"
            )
        return value
