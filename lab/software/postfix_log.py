"""Postfix's own output read into the lab's shapes: its queue listing (`postqueue -j`)
as the built-in MTA's queue entries, its log lines as the lab's events (`PostfixLog`),
with the fields the built-in MTA's events have, so trace, assert_delivered/queued/bounced
and checks read them unchanged.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.protocols.smtp import queued_as
from lab.software.adapter import Event

SPOOL = "/var/spool/postfix"
# ---------------------------------------------------------------------------------------
# the queue listing (postqueue -j)


def _next_attempt(spool: Path, queue_name: str, queue_id: str) -> float:
    """A deferred message's next try: Postfix keeps it as its queue file's mtime."""
    if queue_name != "deferred":
        return 0.0
    for path in (spool / "deferred").glob(f"*/{queue_id}"):
        try:
            return path.stat().st_mtime
        except OSError:
            return 0.0
    return 0.0


def parse_postqueue(
    output: str, log: Any = None, spool: Path = Path(SPOOL)
) -> list[dict[str, Any]]:
    """`postqueue -j` (one JSON object a line) in the built-in MTA's queue shape."""
    entries = []
    for line in output.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        item = json.loads(line)
        qid = str(item.get("queue_id", ""))
        recipients = item.get("recipients") or []
        reasons = [str(r.get("delay_reason") or "") for r in recipients]
        entries.append(
            {
                "id": qid,
                "envelope_from": str(item.get("sender") or ""),
                "recipients": [str(r.get("address", "")) for r in recipients],
                "attempts": log.attempts(qid) if log is not None else 0,
                "received": float(item.get("arrival_time") or 0),
                "next_attempt": _next_attempt(spool, str(item.get("queue_name")), qid),
                "last_reply": next((r for r in reasons if r), ""),
                "queue_name": str(item.get("queue_name") or ""),
            }
        )
    return entries


# ---------------------------------------------------------------------------------------
# a queue file's recipients (Postfix logs them only as it delivers)

_QUEUES = ("incoming", "active", "hold", "deferred/*")


def _records(data: bytes) -> list[tuple[str, bytes]]:
    """A queue file's records: a type byte, the length (7 bits a byte, low first, the
    high bit set while more follow), the data (Postfix's rec_get); a record cut short
    (a file still being written) ends the list."""
    records: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(data):
        kind = chr(data[pos])
        pos += 1
        length = shift = 0
        while True:
            if pos >= len(data) or shift > 28:
                return records
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if pos + length > len(data):
            return records
        records.append((kind, data[pos : pos + length]))
        pos += length
    return records


def _queue_file(spool: Path, queue_id: str) -> bytes | None:
    """A message's queue file, wherever it is (incoming, active, hold, deferred)."""
    if not re.fullmatch(r"[0-9A-Za-z]+", queue_id):
        return None
    for queue in _QUEUES:
        for path in spool.glob(f"{queue}/{queue_id}"):
            try:
                return path.read_bytes()
            except OSError:
                continue
    return None


def queue_file_recipients(spool: Path, queue_id: str) -> tuple[list[str], list[str]] | None:
    """(recipients, original recipients) of a message in Postfix's queue, read from its
    queue file: the envelope's recipient records (`R`, and `D` for one already delivered)
    with the original recipient record (`O`) before each, those after the content (`X`,
    extracted from its headers) too; None when the file is gone."""
    data = _queue_file(spool, queue_id)
    if data is None:
        return None
    recipients: list[str] = []
    original: list[str] = []
    orig = ""
    content = False  # the message's own records, between M and X, are not envelope
    for kind, value in _records(data):
        if kind in "MX":
            content = kind == "M"
        elif content:
            continue
        elif kind == "O":
            orig = value.decode("utf-8", "replace")
        elif kind in "RD":
            address = value.decode("utf-8", "replace")
            recipients.append(address)
            original.append(orig or address)
            orig = ""
    return recipients, original


def queue_file_content(spool: Path, queue_id: str) -> bytes | None:
    """A queued message's content (headers and body, CRLF line ends), from the data
    records of its queue file between `M` and `X`: `N` ends a line, `L` is a piece of a
    long one; None when the file is gone."""
    data = _queue_file(spool, queue_id)
    if data is None:
        return None
    lines: list[bytes] = []
    piece = b""
    inside = False
    for kind, value in _records(data):
        if kind == "M":
            inside = True
        elif not inside:
            continue
        elif kind in "XE":
            break
        elif kind == "L":
            piece += value
        elif kind == "N":
            lines.append(piece + value + b"\r\n")
            piece = b""
    return b"".join(lines)


# ---------------------------------------------------------------------------------------
# log lines -> events

_LINE = re.compile(r"postfix(?:/[\w.-]+)*/(?P<prog>[\w.-]+)\[(?P<pid>\d+)\]: (?P<msg>.*)$")
_TLS = re.compile(r"^\w+ TLS connection established to (?P<relay>\S+?):? ")
_QID = re.compile(r"^(?P<qid>[0-9A-Za-z]{6,}): (?P<rest>.*)$")
_FIELD = re.compile(r"(\w+)=(<[^>]*>|[^,]*)")
_STATUS = re.compile(r"status=(?P<status>\w+) \((?P<text>.*)\)\s*$")
_RELAY = re.compile(r"^(?P<name>[^\[]+)(?:\[(?P<addr>[^\]]*)\](?::(?P<port>\d+))?)?$")
_DSN_NOTE = re.compile(
    r"^sender (?P<what>non-delivery|delay|delivery status) notification: (?P<new>\w+)"
)
_CLIENT = re.compile(r"^(?P<name>[^\[]*)\[(?P<addr>[^\]]*)\]")
_REJECT = re.compile(r"^NOQUEUE: reject: (?P<stage>\w+) from (?P<client>\S+): (?P<reply>.*?);")


def _fields(rest: str) -> dict[str, str]:
    head = rest.split(" status=", 1)[0]
    return {k: v.strip().strip("<>") for k, v in _FIELD.findall(head)}


def _reply(text: str) -> str:
    """The remote reply inside Postfix's parentheses: `host X said: 550 ... (in reply to
    RCPT TO command)` -> `550 ...`; other texts as they are."""
    said = re.search(r"said: (.*?)(?: \(in reply to .*\))?$", text)
    return said.group(1) if said else text


@dataclass
class Maildrops:
    """The node's POP3 maildrops, as its Postfix delivers into them: the multidrop
    domains (domain -> mailbox) and the mailboxes' names."""

    domains: dict[str, str] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)


class PostfixLog:
    """Postfix's log lines, in order, as the lab's events (the built-in MTA's kinds and
    fields). Keeps what it learnt of each queue id (client, Message-ID, sender, bounced
    recipients, attempts) to fill the events of later lines."""

    def __init__(self, maildrops: Maildrops | None = None, spool: Path | None = None) -> None:
        self.maildrops = maildrops or Maildrops()
        self.spool = spool  # where the queue files are read for queue.queued's recipients
        self.messages: dict[str, dict[str, Any]] = {}
        self.tls: dict[str, str] = {}  # smtp process id -> the relay it speaks TLS with

    def _msg(self, qid: str) -> dict[str, Any]:
        return self.messages.setdefault(
            qid,
            {
                "client": "",
                "message_id": "",
                "envelope_from": None,
                "queued": False,
                "bounced": [],
                "attempts": 0,
                "deferred": {},  # recipient -> (dsn, reply) of its last deferral
            },
        )

    def attempts(self, queue_id: str) -> int:
        found = self.messages.get(queue_id)
        return int(found["attempts"]) if found else 0

    def feed(self, line: str, now: float) -> list[Event]:
        match = _LINE.search(line)
        if match is None:
            return []
        prog, msg = match["prog"], match["msg"]
        tls = _TLS.match(msg)
        if tls and prog == "smtp":  # this smtp process's connection to relay is encrypted
            self.tls[match["pid"]] = tls["relay"]
            return []
        reject = _REJECT.match(msg)
        if reject:
            stage = reject["stage"].lower()
            return [Event("policy.reject", {"stage": stage, "reply": reject["reply"]})]
        qm = _QID.match(msg)
        if qm is None:
            return []
        qid, rest = qm["qid"], qm["rest"]
        m = self._msg(qid)
        if prog == "smtpd" and rest.startswith("client="):
            client = _CLIENT.match(rest[len("client=") :])
            m["client"] = client["addr"] if client else rest[len("client=") :]
            return []
        if prog in ("cleanup", "pickup") and rest.startswith("message-id="):
            m["message_id"] = rest[len("message-id=") :].strip()
            return []
        if prog == "pickup" and rest.startswith("uid="):
            m["client"] = "localhost"
            return []
        if prog == "qmgr":
            done = rest == "removed" or "status=expired" in rest
            return self._release(m, self._qmgr(qid, m, rest, now), done=done)
        if prog == "bounce":
            return self._release(m, self._bounce(qid, m, rest))
        if "status=" in rest and "to=" in rest:
            fields = _fields(rest)
            m["tls"] = self.tls.get(match["pid"]) == fields.get("relay") != ""
            events = self._delivery(qid, m, prog, rest, now)
            if "held" in m and fields.get("to"):
                to = fields["to"]
                if to not in m["held_to"]:
                    m["held_to"].append(to)
                    m["held_orig"].append(fields.get("orig_to") or to)
            return self._release(m, events)
        return []

    def _release(self, m: dict[str, Any], events: list[Event], done: bool = False) -> list[Event]:
        """events of a message whose queue.queued is held (its queue file was gone when
        qmgr logged it, so its recipients are learnt from its delivery lines): kept
        until every recipient has an outcome or the message leaves the queue, then sent
        after the queue.queued they complete."""
        held = m.get("held")
        if held is None:
            return events
        m["held_events"].extend(events)
        if not done and len(m["held_to"]) < held.data["nrcpt"]:
            return []
        held.data["recipients"] = list(m["held_to"])
        held.data["original_recipients"] = list(m["held_orig"])
        out = [held, *m["held_events"]]
        for key in ("held", "held_events", "held_to", "held_orig"):
            m.pop(key, None)
        return out

    def _qmgr(self, qid: str, m: dict[str, Any], rest: str, now: float) -> list[Event]:
        if rest == "removed":
            self.messages.pop(qid, None)
            return [Event("queue.removed", {"id": qid})]
        fields = _fields(rest)
        if "from" in fields and "status=expired" in rest:
            events = [Event("queue.expired", {"id": qid})]
            for to, (dsn, reply) in m["deferred"].items():
                status = "4.4.7" if not dsn.startswith(("4", "5")) else dsn
                text = f"delivery time expired; last error: {reply}"
                m["bounced"].append((to, status, text))
                events.append(
                    Event(
                        "queue.bounced",
                        {
                            "id": qid,
                            "rcpt": to,
                            "status": status,
                            "reply": text,
                            "envelope_from": fields["from"],
                        },
                    )
                )
            m["deferred"] = {}
            return events
        if "from" in fields and not m["queued"]:
            m["queued"] = True
            m["envelope_from"] = fields["from"]
            found = queue_file_recipients(self.spool, qid) if self.spool is not None else None
            recipients, original = found or ([], [])
            queued = Event(
                "queue.queued",
                {
                    "id": qid,
                    "envelope_from": fields["from"],
                    "recipients": recipients,
                    "original_recipients": original,
                    "nrcpt": int(fields.get("nrcpt", "0").split()[0] or 0),
                    "client": m["client"],
                    "size": int(fields.get("size", "0") or 0),
                    "message_id": m["message_id"],
                },
            )
            if found is None and self.spool is not None:  # delivered before it was read
                m.update(held=queued, held_events=[], held_to=[], held_orig=[])
                return []
            return [queued]
        return []

    def _delivery(
        self, qid: str, m: dict[str, Any], prog: str, rest: str, now: float
    ) -> list[Event]:
        fields = _fields(rest)
        status = _STATUS.search(rest)
        if status is None:
            return []
        state, text = status["status"], status["text"]
        to = fields.get("to", "")
        orig = fields.get("orig_to") or to
        relay = fields.get("relay", "")
        relay_match = _RELAY.match(relay)
        server = (relay_match["name"] if relay_match else relay) or relay
        dsn = fields.get("dsn", "")
        envelope_from = m["envelope_from"] or ""
        first = m.setdefault("first_rcpt", to)
        if to == first:  # one attempt of the message: counted at its first recipient
            m["attempts"] += 1
        events: list[Event] = []
        if state != "deferred":
            m["deferred"].pop(to, None)
        if state == "sent" and prog in ("local", "virtual"):
            local, _, domain = to.partition("@")
            user = local.lower()
            if prog == "virtual":  # a multidrop domain's mail: into its mailbox
                user = self.maildrops.domains.get(domain.lower(), user)
            maildrop = prog == "virtual" or user in self.maildrops.names
            events.append(
                Event(
                    "mailbox.delivered",
                    {
                        "id": qid,
                        "user": user,
                        "rcpt": orig,
                        "address": to,
                        "envelope_from": envelope_from,
                        "key": "",  # filled by the agent, which finds the file
                        "message_id": m["message_id"],
                        "maildrop": maildrop,
                        "reply": text,
                    },
                )
            )
            return events
        reply = _reply(text)
        if state == "sent":
            events.append(
                Event(
                    "delivery.result",
                    {
                        "id": qid,
                        "rcpt": to,
                        "result": "delivered",
                        "reply": reply,
                        "server": server,
                        "relay": relay,
                        "status": dsn,
                        "remote_id": queued_as(reply),
                        "tls": bool(m.get("tls")),
                    },
                )
            )
        elif state == "deferred":
            m["deferred"][to] = (dsn, reply)
            events.append(
                Event(
                    "delivery.result",
                    {
                        "id": qid,
                        "rcpt": to,
                        "result": "deferred",
                        "reply": reply,
                        "server": server,
                        "relay": relay,
                        "status": dsn,
                    },
                )
            )
            events.append(
                Event(
                    "queue.deferred",
                    {
                        "id": qid,
                        "recipients": [to],
                        "reply": reply,
                        "status": dsn,
                        "next_attempt": 0.0,
                    },
                )
            )
        elif state in ("bounced", "expired"):
            m["bounced"].append((to, dsn, reply))
            if state == "bounced":
                events.append(
                    Event(
                        "delivery.result",
                        {
                            "id": qid,
                            "rcpt": to,
                            "result": "failed",
                            "reply": reply,
                            "server": server,
                            "relay": relay,
                            "status": dsn,
                        },
                    )
                )
            events.append(
                Event(
                    "queue.bounced",
                    {
                        "id": qid,
                        "rcpt": to,
                        "status": dsn,
                        "reply": reply,
                        "envelope_from": envelope_from,
                    },
                )
            )
        return events

    def _bounce(self, qid: str, m: dict[str, Any], rest: str) -> list[Event]:
        note = _DSN_NOTE.match(rest)
        if note is None:
            return []
        action = {"non-delivery": "failed", "delay": "delayed"}.get(note["what"], "delivered")
        if action == "failed":
            about = [(to, status) for to, status, _ in m["bounced"]]
        else:  # a delay warning is about the recipients still deferred
            about = [(to, dsn) for to, (dsn, _) in m["deferred"].items()]
        data = {
            "id": note["new"],
            "original_id": qid,
            "to": m["envelope_from"] or "",
            "action": action,
            "recipients": [to for to, _ in about],
            "status": [status for _, status in about],
        }
        if action == "failed":
            m["bounced"] = []
        return [Event("dsn.sent", data)]
