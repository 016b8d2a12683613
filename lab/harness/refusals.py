"""Refusals, as a check sees them: the reply that refused a submission (the first hop),
and a refusal at any node of the lab, read from its events (`rejected: {by: isp}`).

A node refuses in its events in one of two ways: a `policy.reject` event (stage and
reply: the built-in MTA emits it for its policy refusals, a real Postfix or Exim node
from its log) or an `smtp.reply` with a 4xx/5xx code (the built-in MTA's every reply,
e.g. a fault's 451), whose stage is the command it answers in that session. A 503
(bad sequence: the RCPT a client pipelined after its MAIL was refused) is not counted.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from lab.harness.lab import Lab, LabAssertionError
from lab.runtime.events import Event
from lab.services.client import SubmitResult
from lab.topology.checks import RejectedExpect

_CONNECT_REPLY = re.compile(r"\((\d{3}), ['\"](.*)['\"]\)\s*$", re.S)
_CODE = re.compile(r"^([2-5]\d\d)[ -]")
# the command a reply answers -> the stage of the refusal (Postfix says END-OF-MESSAGE
# for a refusal after the dot, Exim "after DATA"; both are the data stage here)
_STAGE_OF = {
    "helo": "helo",
    "ehlo": "helo",
    "mail": "mail",
    "rcpt": "rcpt",
    "data": "data",
    "end-of-message": "data",
    "bdat": "data",
}


def refusal(result: SubmitResult) -> tuple[int | None, str]:
    """The refusing reply of a submission that was not accepted: (code, reply text).

    A refusal in the greeting reaches the client as an error, not as a reply; its code is
    read from the error text. A submission that never got an answer has no code."""
    reply = result.rejected
    if reply is not None:
        return reply.code, str(reply)
    match = _CONNECT_REPLY.search(result.error)
    if match:
        return int(match.group(1)), f"{match.group(1)} {match.group(2)}"
    return None, result.error or "no reply"


def rejected_words(r: RejectedExpect) -> str:
    words = "a rejection" + (f" by {r.by}" if r.by else "")
    if r.code is not None:
        words += f" with {r.code}"
    if r.stage:
        words += f" at {r.stage}"
    return words


@dataclass(frozen=True)
class Refusal:
    """One refusal a node made, as its events tell it."""

    node: str
    stage: str | None  # None: not known (a reply with no command before it is `connect`)
    code: int | None  # None: the node's log does not say (Exim logs only the text)
    reply: str
    seq: int

    def __str__(self) -> str:
        return f"{self.node} refused at {self.stage or 'an unknown stage'}: {self.reply}"


def refusals(events: list[Event], node: str, since: int = 0) -> list[Refusal]:
    """Every refusal `node` made in `events` after event number `since`, in order."""
    found: list[Refusal] = []
    last_command: dict[object, str] = {}  # session -> the verb of its last command
    for e in events:
        if e.node != node:
            continue
        if e.kind == "smtp.connect":
            last_command[e.get("session")] = "connect"
        elif e.kind == "smtp.command":
            last_command[e.get("session")] = str(e.get("command") or "").lower()
        if e.seq <= since:
            continue
        if e.kind == "policy.reject":
            reply = str(e.get("reply") or "")
            stage = str(e.get("stage") or "").lower()
            found.append(Refusal(node, _STAGE_OF.get(stage, stage), _code(reply), reply, e.seq))
        elif e.kind == "smtp.reply":
            reply = str(e.get("reply") or "")
            code = _code(reply)
            if code is None or code < 400 or code == 503:
                continue  # a 503 (bad sequence) follows a refusal: it is not one of its own
            verb = last_command.get(e.get("session"), "connect")
            found.append(Refusal(node, _STAGE_OF.get(verb, verb), code, reply, e.seq))
    return found


def matcher(r: RejectedExpect) -> Callable[[Refusal], bool]:
    def matches(refused: Refusal) -> bool:
        return (r.code is None or refused.code == r.code) and (
            r.stage is None or refused.stage == r.stage
        )

    return matches


def _code(reply: str) -> int | None:
    match = _CODE.match(reply)
    return int(match.group(1)) if match else None


def await_refusal(
    lab: Lab, r: RejectedExpect, since: int, within: float
) -> tuple[Refusal | None, list[Refusal]]:
    """The first refusal by `r.by` after event `since` that matches `r`, waited for up to
    `within` seconds; with every refusal that node made meanwhile (to explain a miss)."""
    node = r.by or ""
    matches = matcher(r)
    deadline = time.monotonic() + within
    while True:
        events = lab.events
        found = refusals(events, node, since)
        hit = next((f for f in found if matches(f)), None)
        left = deadline - time.monotonic()
        if hit is not None or left <= 0:
            return hit, found
        with contextlib.suppress(LabAssertionError):  # the deadline: one more look
            lab.wait_for(
                predicate=lambda e: e.node == node and e.kind in ("policy.reject", "smtp.reply"),
                since=events[-1].seq if events else 0,
                timeout=left,
            )
