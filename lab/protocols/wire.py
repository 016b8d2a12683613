"""The wire of maillab's two control channels: the harness socket of a running lab
(`maillab status`, `send`, `link`... -> lab.harness.control) and each Docker agent's
socket (the lab -> lab.backends.docker.agent).

Framing: one JSON object per line (orjson), each way.

    request  {"op": OP, "args": {...}, "id": N}        (id: only where replies may interleave)
    reply    {"id": N, "ok": true, "result": ...}  or  {"id": N, "ok": false, "error": "..."}
    event    {"event": {"seq", "time", "node", "kind", "data"}}        (agent -> lab only)
    capture  {"captured": {"id": QUEUE_ID, "content": BASE64}}          (agent -> lab only)

Op names are enums (`LabOp` for the harness, `AgentOp` for the agents); a server answers
with `answer(table, request)`, its table mapping each op to a coroutine that takes the
request's args as keywords. The values that are not plain JSON have one typed encoding
each: message content (base64), `SubmitResult`, `Event`, queue entries and mailbox
messages, and `LinkState`, the one vocabulary for a link's state on both sides (how a
link that is down behaves, refuse or blackhole, is the topology's `when_down`).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable, Mapping
from enum import StrEnum
from typing import Any, TypedDict

import orjson

from lab.errors import LabError
from lab.protocols.smtp import Reply, SubmitResult
from lab.runtime.events import Event

# beside an agent's spec (lab.json): the topology the lab validated, pickled; the agent
# loads it as objects without building the models' validators (its image has this code)
TOPOLOGY_FILE = "topology.pickle"
LINE_LIMIT = 2**26  # a reply may carry a mailbox: up to 64 MiB per line
_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE


class WireError(LabError):
    """A line that is not a request or reply of this wire."""


class LinkState(StrEnum):
    UP = "up"
    DOWN = "down"

    @classmethod
    def of(cls, up: bool) -> LinkState:
        return cls.UP if up else cls.DOWN


class LabOp(StrEnum):
    """What `maillab` asks a running lab (lab.harness.control)."""

    STATUS = "status"
    SEND = "send"
    LINK = "link"
    IMPAIR = "impair"
    FLUSH = "flush"
    FETCH = "fetch"
    QUEUE = "queue"
    MAILBOX = "mailbox"
    CLOCK = "clock"
    EVENTS = "events"
    TRACE = "trace"
    DNS = "dns"
    FAULT = "fault"
    SCHEDULE = "schedule"
    RESET = "reset"
    UI = "ui"
    DOWN = "down"


class AgentOp(StrEnum):
    """What the lab asks one Docker agent (lab.backends.docker.agent)."""

    START = "start"
    RUN_QUEUES = "queue.run"  # once every host listens: what was on disk goes out
    PING = "ping"
    SETTLE = "settle"
    CLOCK_NEXT = "clock.next"
    CLOCK_ADVANCE_TO = "clock.advance_to"
    CLOCK_TIME = "clock.time"
    SUBMIT = "submit"
    LINK = "link"
    LINK_CLOSING = "link.closing"  # a link of this host is about to drop: no new connection
    CUT_SERVED = "link.cut_served"  # another host's link drops: its served ends go first
    FLUSH = "flush"
    FETCH = "fetch"
    QUEUE = "queue"
    QUEUE_CONTENT = "queue.content"
    CAPTURE = "capture"
    MAILBOX = "mailbox"
    DNS_SET = "dns.set"
    DNS_FAULT = "dns.fault"
    DNS_FAULT_RULES = "dns.fault_rules"
    FAULT_ADD = "fault.add"
    FAULT_CLEAR = "fault.clear"
    DROPS = "link.drops"  # arm a link's hang-up (drop_after, drop_at)
    PACE = "link.pace"  # delay, jitter, loss of the host's own connections (no netem)
    RESET = "reset"
    STOP = "stop"


# framing ---------------------------------------------------------------------------------


def encode(message: Mapping[str, Any]) -> bytes:
    """One line of JSON (values orjson does not know are written as their str()). Text
    with lone surrogates (8-bit mail read as surrogateescape) goes as JSON escapes."""
    try:
        return orjson.dumps(message, default=str, option=_OPTIONS)
    except orjson.JSONEncodeError:
        return (json.dumps(message, default=str) + "\n").encode()


def decode(line: bytes | str) -> dict[str, Any]:
    """One line back into its object; WireError when it is not a JSON object."""
    try:
        message = orjson.loads(line)
    except orjson.JSONDecodeError:
        try:
            message = json.loads(line)  # escaped lone surrogates (see encode)
        except ValueError as exc:
            raise WireError(f"bad request: not JSON ({exc})") from None
    if not isinstance(message, dict):
        raise WireError(f"bad request: not a JSON object: {message!r}")
    return message


def request(op: str, args: Mapping[str, Any] | None = None, rid: int | None = None) -> bytes:
    """A request line: `op` one of `LabOp` or `AgentOp` (or its value)."""
    message: dict[str, Any] = {"op": str(op), "args": dict(args or {})}
    if rid is not None:
        message["id"] = rid
    return encode(message)


def ok(result: Any, rid: Any = None) -> dict[str, Any]:
    return {"id": rid, "ok": True, "result": result}


def error(text: str, rid: Any = None) -> dict[str, Any]:
    return {"id": rid, "ok": False, "error": text}


def result_of(reply: Mapping[str, Any], who: str = "") -> Any:
    """A reply's result; LabError with its error (prefixed with `who`) when it failed."""
    if reply.get("ok"):
        return reply.get("result")
    text = str(reply.get("error") or "the request was refused")
    raise LabError(f"{who}: {text}" if who else text)


Handler = Callable[..., Awaitable[Any]]


async def answer(
    table: Mapping[str, Handler],
    message: Mapping[str, Any],
    *,
    on_error: Callable[[str, Exception], None] | None = None,
) -> dict[str, Any]:
    """Run a request's handler from `table` and make its reply. A LabError is the
    request's error as it says; arguments the handler does not take are a bad request;
    any other exception is reported with its type (and given to `on_error`, to log it)."""
    rid = message.get("id")
    op = message.get("op")
    handler = table.get(op) if isinstance(op, str) else None
    if handler is None:
        return error(f"unknown operation {op!r}", rid)
    args = message.get("args") or {}
    if not isinstance(args, dict):
        return error(f"bad request: args must be an object, not {args!r}", rid)
    try:
        return ok(await handler(**args), rid)
    except LabError as exc:
        return error(str(exc), rid)
    except TypeError as exc:
        if _bad_arguments(exc):
            return error(f"bad request: {exc}", rid)
        return _failed(str(op), exc, rid, on_error)
    except Exception as exc:
        return _failed(str(op), exc, rid, on_error)


def _bad_arguments(exc: TypeError) -> bool:
    """Whether a TypeError is the call itself (an argument missing or unknown)."""
    text = str(exc)
    return "argument" in text and ("unexpected keyword" in text or "missing" in text)


def _failed(
    op: str, exc: Exception, rid: Any, on_error: Callable[[str, Exception], None] | None
) -> dict[str, Any]:
    if on_error is not None:
        on_error(op, exc)
    return error(f"{type(exc).__name__}: {exc}", rid)


# values ------------------------------------------------------------------------------------


def encode_bytes(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_bytes(text: str) -> bytes:
    return base64.b64decode(text)


def _reply(text: str | None) -> Reply | None:
    if text is None:
        return None
    code, _, rest = str(text).partition(" ")
    return Reply(int(code), rest)


def encode_submit(result: SubmitResult) -> dict[str, Any]:
    """A submission result on the wire: SubmitResult.to_json, which decode_submit reads."""
    return dict(result.to_json())


def decode_submit(data: Mapping[str, Any]) -> SubmitResult:
    rcpt = {str(k): _reply(v) for k, v in (data.get("rcpt") or {}).items()}
    return SubmitResult(
        server=str(data["server"]),
        greeting=_reply(data.get("greeting")),
        helo_reply=_reply(data.get("helo")),
        mail_reply=_reply(data.get("mail")),
        rcpt_replies={k: v for k, v in rcpt.items() if v is not None},
        data_reply=_reply(data.get("data")),
        error=str(data.get("error") or ""),
    )


def encode_event(event: Event) -> dict[str, Any]:
    return event.to_json()


def decode_event(data: Mapping[str, Any]) -> Event:
    return Event(
        seq=int(data.get("seq", 0)),
        time=float(data["time"]),
        node=str(data["node"]),
        kind=str(data["kind"]),
        data=dict(data.get("data") or {}),
    )


class QueueEntry(TypedDict):
    """One message in a node's queue, as `maillab queue` and `Lab.queue` show it."""

    id: str
    envelope_from: str
    recipients: list[str]
    attempts: int
    received: float
    next_attempt: float
    last_reply: str


class MailboxEntry(TypedDict):
    """One message in a mailbox: its key in the Maildir, envelope sender, raw text."""

    id: str
    envelope_from: str
    raw: str


def encode_queue(entries: list[dict[str, Any]]) -> list[QueueEntry]:
    return [
        QueueEntry(
            id=str(e["id"]),
            envelope_from=str(e["envelope_from"]),
            recipients=[str(r) for r in e["recipients"]],
            attempts=int(e["attempts"]),
            received=float(e["received"]),
            next_attempt=float(e["next_attempt"]),
            last_reply=str(e.get("last_reply") or ""),
        )
        for e in entries
    ]


decode_queue = encode_queue  # the same check both ways: a list of complete entries


def encode_mailbox(entries: list[dict[str, Any]]) -> list[MailboxEntry]:
    return [
        MailboxEntry(id=str(e["id"]), envelope_from=str(e["envelope_from"]), raw=str(e["raw"]))
        for e in entries
    ]


decode_mailbox = encode_mailbox
