"""A check's steps in words: 'send eddy@shofar.org.uk -> paulmidgley@freeuk.com from pc1',
'expect delivered to ... within 20m of lab time'. lab.harness.checks reports with them."""

from __future__ import annotations

from collections.abc import Iterable

from lab.harness.refusals import rejected_words
from lab.harness.reports import dsn_words
from lab.topology.checks import BouncedExpect, DeliveredExpect, Expect, Step
from lab.topology.units import format_duration

__all__ = ["bounced_words", "delivered_words", "describe", "join_addresses", "within_words"]


def join_addresses(addresses: Iterable[str]) -> str:
    return ", ".join(a or "<>" for a in addresses)


def within_words(seconds: float) -> str:
    """' (within 30s)' when the wait differs from the default."""
    default = Expect.model_fields["within"].default
    return "" if seconds == default else f" (within {format_duration(seconds)})"


def delivered_words(d: DeliveredExpect) -> str:
    words = f"to {d.to}"
    if d.node:
        words += f" on {d.node}"
    if d.mailbox:
        words += f" in mailbox {d.mailbox}"
    if d.within is not None:
        words += f" within {format_duration(d.within)} of lab time"
    if d.envelope_from is not None:
        words += f" with envelope sender {d.envelope_from or '<>'}"
    if d.headers:
        words += " and " + ", ".join(f"{k}: {v}" for k, v in d.headers.items())
    if d.dsn:
        words += f", {dsn_words(d.dsn)}"
    return words


def bounced_words(b: BouncedExpect) -> str:
    words = "a bounce"
    if b.recipient:
        words += f" for {b.recipient}"
    if b.by:
        words += f" from {b.by}"
    if b.to:
        words += f" to {b.to}"
    if b.status:
        words += f" with status {b.status}"
    if b.lands:
        words += f", delivered {delivered_words(b.lands)}"
    return words


def describe(step: Step) -> str:
    """A step in words: 'send eddy@shofar.org.uk -> paulmidgley@freeuk.com from pc1'."""
    if step.send is not None:
        s = step.send
        words = f"send {s.mail_from or '<>'} -> {join_addresses(s.to)} from {s.from_}"
        return words + (f" via {s.via}" if s.via else "")
    if step.link is not None:
        return "link " + ", ".join(f"{name} {state}" for name, state in step.link.items())
    if step.advance is not None:
        return f"advance the clock {format_duration(step.advance)}"
    if step.flush is not None:
        return f"flush the queue of {step.flush}"
    if step.fetch is not None:
        return f"fetch mail on {step.fetch}"
    if step.expect is not None:
        e = step.expect
        if e.delivered is not None:
            return f"expect delivered {delivered_words(e.delivered)}" + within_words(e.within)
        if e.not_delivered is not None:
            return f"expect not delivered {delivered_words(e.not_delivered)}"
        if e.queued is not None:
            q = e.queued
            return (
                f"expect queued on {q.on}"
                + (f" for {q.to}" if q.to else "")
                + within_words(e.within)
            )
        if e.bounced is not None:
            return f"expect {bounced_words(e.bounced)}" + within_words(e.within)
        if e.rejected is not None:
            return f"expect {rejected_words(e.rejected)}"
    return "empty step"
