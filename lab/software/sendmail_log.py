"""sendmail's own records read into the lab's shapes: its queue files (`qf*` in the queue
directory) as the built-in MTA's queue entries and due times, its syslog lines as the
lab's events (`SendmailLog`), with the fields the built-in MTA's events have, and the
mbox files mail.local writes as the lab's mailbox listing.

sendmail logs only through syslog(3): the agent listens on /dev/log (RealMta, the
adapter's `syslog_path`) and hands each datagram here as one line,
`<PRI>Mmm dd hh:mm:ss sm-mta[PID]: QUEUEID: text`.
"""

from __future__ import annotations

import email
import mailbox
import re
from typing import Any

from lab.software.adapter import Event

QUEUE_DIR = "/var/spool/mqueue"
QF_MARK = "=== qf "  # the queue command's separator before each qf file's text

# ---------------------------------------------------------------------------------------
# queue files


def parse_qf(text: str) -> dict[str, Any]:
    """One qf file: creation time (T), last try (K), tries (N), flags (F), the status
    message (M), the envelope sender (S), the recipients still to deliver (R)."""
    found: dict[str, Any] = {
        "created": 0.0,
        "last_try": 0.0,
        "tries": 0,
        "flags": "",
        "reply": "",
        "envelope_from": "",
        "recipients": [],
    }
    for line in text.splitlines():
        if not line or line[0] in " \t":
            continue
        kind, value = line[0], line[1:]
        if kind == "T" and value.isdigit():
            found["created"] = float(value)
        elif kind == "K" and value.isdigit():
            found["last_try"] = float(value)
        elif kind == "N" and value.isdigit():
            found["tries"] = int(value)
        elif kind == "F":
            found["flags"] += value
        elif kind == "M":
            found["reply"] = value
        elif kind == "S":
            found["envelope_from"] = value.strip("<>")
        elif kind == "R":
            _flags, _, address = value.partition(":")
            if not address:  # an old-style line: no flags
                address = value
            found["recipients"].append(address.strip("<>"))
        elif kind == ".":
            break
    return found


def split_qf(output: str) -> dict[str, str]:
    """The queue command's output: queue id -> the text of its qf file."""
    files: dict[str, str] = {}
    for part in output.split(QF_MARK)[1:]:
        name, _, text = part.partition("\n")
        qid = name.strip()
        if qid:
            files[qid] = text
    return files


def next_try(qf: dict[str, Any], intervals: list[float]) -> float:
    """When the lab tries a deferred message again: its last try plus the interval of
    the topology's schedule for that many tries (the last interval repeats)."""
    if not intervals:
        intervals = [1800.0]
    tries = max(1, int(qf["tries"]))
    last = qf["last_try"] or qf["created"]
    return float(last) + intervals[min(tries, len(intervals)) - 1]


def due_times(output: str, schedule: dict[str, Any]) -> list[float]:
    """The lab times queued mail needs a queue run: each message's next try, its delay
    warning when not sent yet (flag w), its return when it expires."""
    due: list[float] = []
    intervals = list(schedule.get("intervals") or [1800.0])
    warn = schedule.get("warn_after")
    give_up = schedule.get("give_up_after")
    for text in split_qf(output).values():
        qf = parse_qf(text)
        if not qf["recipients"]:
            continue
        due.append(next_try(qf, intervals))
        if warn and "w" not in qf["flags"]:
            due.append(qf["created"] + float(warn))
        if give_up:
            due.append(qf["created"] + float(give_up))
    return sorted(due)


def parse_queue(output: str, log: Any, schedule: dict[str, Any]) -> list[dict[str, Any]]:
    """The qf files in the built-in MTA's queue shape (lab.protocols.wire.QueueEntry)."""
    intervals = list(schedule.get("intervals") or [1800.0])
    entries = []
    for qid, text in sorted(split_qf(output).items()):
        qf = parse_qf(text)
        if not qf["recipients"]:
            continue
        reply = re.sub(r"^Deferred: ", "", qf["reply"])
        entries.append(
            {
                "id": qid,
                "envelope_from": qf["envelope_from"],
                "recipients": qf["recipients"],
                "attempts": max(qf["tries"], log.attempts(qid) if log is not None else 0),
                "received": qf["created"],
                "next_attempt": next_try(qf, intervals),
                "last_reply": reply or (log.last_reply(qid) if log is not None else ""),
                "queue_name": "deferred",
            }
        )
    return entries


# ---------------------------------------------------------------------------------------
# mbox files (mail.local)

_RECEIVED_ID = re.compile(r"\bid (?P<id>[0-9A-Za-z]{8,20})\b")


def mbox_messages(path: str) -> list[dict[str, Any]]:
    """The messages of an mbox in the lab's mailbox shape: id (the hub's queue id, from
    the newest Received: line, as the delivery event's key), envelope sender (Return-Path,
    which the local mailer adds) and the raw message without its `From ` line."""
    out: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    box = mailbox.mbox(path, create=False)
    try:
        for message in box:
            raw = message.as_bytes()
            parsed = email.message_from_bytes(raw)
            received = parsed.get_all("Received") or [""]
            found = _RECEIVED_ID.search(" ".join(str(received[0]).split()))
            key = found["id"] if found else f"mbox{len(out) + 1}"
            seen[key] = seen.get(key, 0) + 1
            if seen[key] > 1:
                key = f"{key}-{seen[key]}"
            sender = str(parsed.get("Return-Path", "")).strip().strip("<>")
            out.append(
                {
                    "id": key,
                    "envelope_from": sender,
                    "raw": raw.decode("utf-8", "surrogateescape"),
                }
            )
    finally:
        box.close()
    return out


# ---------------------------------------------------------------------------------------
# syslog lines -> events

_SYSLOG = re.compile(
    r"^(?:<\d+>)?(?:\w{3} [ \d]\d \d\d:\d\d:\d\d )?(?:\S+ )?(?P<ident>[\w.-]+)\[(?P<pid>\d+)\]: "
    r"(?P<msg>.*)$"
)
_QID = re.compile(r"^(?P<id>[0-9A-Za-z]{14}): (?P<rest>.*)$")
_FIELDS = re.compile(r"(?:^|, )(?P<k>[a-z_]+)=(?P<v>(?:<[^>]*>|\([^)]*\)|[^,])*)")
_RELAY = re.compile(r"^(?P<name>[^\s\[]*?)\.?\s*(?:\[(?P<addr>[^\]]+)\])?(?:\s*\(.*\))?$")
_STATUS = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
_REMOTE_ID = (
    re.compile(r"queued as (\S+?)\)?$"),  # Postfix, the built-in MTA
    re.compile(r"^(\S+) Message accepted for delivery"),  # sendmail
    re.compile(r"\bid=(\S+?)\)?$"),  # Exim
)
# `ORIG: DSNID: sender notify: Warning: could not send message for past 30 minutes`,
# `ORIG: DSNID: DSN: User unknown` (the copy for the postmaster makes no event)
_DSN = re.compile(
    r"^(?P<dsn>[0-9A-Za-z]{14}): (?P<kind>DSN|return to sender|sender notify|postmaster notify):"
    r" (?P<text>.*)$"
)
_REJECT = re.compile(
    r"^(?:(?P<id>[0-9A-Za-z]{14}): )?(?:ruleset=check_(?P<ruleset>\w+), arg1=(?P<arg><[^>]*>|\S+),"
    r".*?reject=(?P<reply>.*))$"
)
_UNKNOWN = re.compile(r"^(?:[0-9A-Za-z]{14}: )?<(?P<addr>[^>]*)>\.\.\. User unknown$")
_ALIAS = re.compile(r"^alias (?P<name>\S+) => (?P<to>.*)$")
_STAGE = {"mail": "mail", "rcpt": "rcpt", "relay": "rcpt", "compat": "rcpt"}


def _at(user: str, rcpt: str) -> str:
    """A bare local name as an address in the domain of the address it came from."""
    domain = rcpt.partition("@")[2]
    return f"{user}@{domain}" if domain else user


def fields(text: str) -> dict[str, str]:
    return {m["k"]: m["v"].strip() for m in _FIELDS.finditer(text)}


def _addresses(value: str) -> list[str]:
    return [a.strip().strip("<>") for a in value.split(",") if a.strip()]


class SendmailLog:
    """sendmail's syslog lines, in order, as the lab's events (the built-in MTA's kinds
    and fields). Keeps what it learnt of each message (sender, Message-ID, deferred and
    bounced recipients, tries) for the later lines."""

    def __init__(self) -> None:
        self.messages: dict[str, dict[str, Any]] = {}

    def _msg(self, qid: str) -> dict[str, Any]:
        return self.messages.setdefault(
            qid,
            {
                "envelope_from": "",
                "message_id": "",
                "bounced": [],
                "deferred": {},
                "tries": 0,
                "reply": "",
                "expired": False,
                "aliases": {},  # local name -> the address it was an expansion of
                "domain": "",  # the domain of the last alias expanded
            },
        )

    def attempts(self, queue_id: str) -> int:
        found = self.messages.get(queue_id)
        return int(found["tries"]) if found else 0

    def last_reply(self, queue_id: str) -> str:
        found = self.messages.get(queue_id)
        return str(found["reply"]) if found else ""

    def feed(self, line: str, now: float) -> list[Event]:
        match = _SYSLOG.match(line.strip())
        if match is None:
            return []
        msg = match["msg"]
        reject = _REJECT.match(msg)
        if reject:
            return [self._reject(reject)]
        unknown = _UNKNOWN.match(msg)
        if unknown:  # `<x@y>... User unknown`: refused at RCPT
            reply = f"550 5.1.1 <{unknown['addr']}>... User unknown"
            return [
                Event(
                    "policy.reject", {"stage": "rcpt", "reply": reply, "address": unknown["addr"]}
                )
            ]
        qm = _QID.match(msg)
        if qm is None:
            return []
        qid, rest = qm["id"], qm["rest"]
        dsn = _DSN.match(rest)
        if dsn:
            if dsn["kind"] == "postmaster notify":
                return []
            return [self._dsn(dsn["dsn"], qid, dsn["text"])]
        if rest.startswith("from="):
            return self._arrival(qid, fields(rest))
        if rest.startswith("to="):
            return self._delivery(qid, fields(rest))
        if rest == "done" or rest.startswith("done;"):
            self.messages.pop(qid, None)
            return [Event("queue.removed", {"id": qid})]
        alias = _ALIAS.match(rest)
        if alias:
            self._alias(qid, alias["name"], alias["to"])
        return []

    def _alias(self, qid: str, name: str, targets: str) -> None:
        """`alias NAME => A, B`: the local deliveries to A and B were for NAME (or for
        what NAME itself was an expansion of)."""
        m = self._msg(qid)
        name = name.strip().strip("<>")
        top = m["aliases"].get(name.lower().partition("@")[0], name)
        if "@" not in top:
            top = f"{top}@{m['domain']}" if m["domain"] else top
        else:
            m["domain"] = top.partition("@")[2]
        for target in _addresses(targets):
            m["aliases"][target.lower().partition("@")[0]] = top

    def _reject(self, match: re.Match[str]) -> Event:
        stage = _STAGE.get(match["ruleset"], match["ruleset"])
        data: dict[str, Any] = {"stage": stage, "reply": match["reply"].strip()}
        arg = match["arg"]
        if arg.startswith("<"):
            data["address"] = arg.strip("<>")
        return Event("policy.reject", data)

    def _arrival(self, qid: str, f: dict[str, str]) -> list[Event]:
        sender = f.get("from", "").strip("<>")
        m = self._msg(qid)
        m["envelope_from"] = sender
        m["message_id"] = f.get("msgid", "")
        relay = f.get("relay", "")
        addr = re.search(r"\[([^\]]+)\]", relay)
        nrcpt = int(f.get("nrcpts", "0") or 0)
        if nrcpt == 0:  # a transaction that ended before DATA (every RCPT refused): no message
            self.messages.pop(qid, None)
            return []
        return [
            Event(
                "queue.queued",
                {
                    "id": qid,
                    "envelope_from": sender,
                    "recipients": [],  # sendmail names them only on its to= lines
                    "nrcpt": nrcpt,
                    "client": addr.group(1) if addr else "localhost",
                    "size": int(f.get("size", "0") or 0),
                    "message_id": m["message_id"],
                },
            )
        ]

    def _dsn(self, dsn_id: str, original: str, text: str) -> Event:
        """`ORIG: DSNID: DSN: text`: sendmail queued a DSN about ORIG (a warning or a
        return)."""
        about = self._msg(original)
        delayed = text.lower().startswith("warning")
        if delayed:
            pairs = [(rcpt, status) for rcpt, (status, _) in about["deferred"].items()]
        else:
            pairs = [(rcpt, status) for rcpt, status, _ in about["bounced"]]
            if not pairs:  # returned when the queue time ran out: what was deferred
                pairs = [(rcpt, "4.4.7") for rcpt in about["deferred"]]
                for rcpt in list(about["deferred"]):
                    about["deferred"].pop(rcpt)
            about["bounced"] = []
        return Event(
            "dsn.sent",
            {
                "id": dsn_id,
                "original_id": original,
                "to": about["envelope_from"],
                "action": "delayed" if delayed else "failed",
                "recipients": [rcpt for rcpt, _ in pairs],
                "status": [status for _, status in pairs],
                "reply": text,
            },
        )

    def _delivery(self, qid: str, f: dict[str, str]) -> list[Event]:
        m = self._msg(qid)
        stat = f.get("stat", "")
        dsn = f.get("dsn", "")
        mailer = f.get("mailer", "")
        to = _addresses(f.get("to", ""))
        relay = f.get("relay", "")
        rm = _RELAY.match(relay) if relay else None
        server = (rm["name"] or "").rstrip(".") if rm else ""
        relay_text = f"{server}[{rm['addr']}]:25" if rm and rm["addr"] else ""
        if stat.startswith("Sent") and mailer in ("local", "prog", "*file*"):
            events = []
            for user in to:
                name = user.partition("@")[0].lower()
                rcpt = m["aliases"].get(name, user)
                events.append(
                    Event(
                        "mailbox.delivered",
                        {
                            "id": qid,
                            "user": name,
                            "rcpt": rcpt,
                            "address": user if "@" in user else _at(user, rcpt),
                            "envelope_from": m["envelope_from"],
                            "key": qid,  # the mbox message's id (its Received: line)
                            "message_id": m["message_id"],
                            "maildrop": False,
                            "reply": "delivered to mbox",
                        },
                    )
                )
            return events
        m["tries"] += 1
        if stat.startswith("Sent"):
            reply = stat[len("Sent") :].strip().strip("()")
            remote = next((r.search(reply) for r in _REMOTE_ID if r.search(reply)), None)
            events = []
            for rcpt in to:
                m["deferred"].pop(rcpt, None)
                events.append(
                    Event(
                        "delivery.result",
                        {
                            "id": qid,
                            "rcpt": rcpt,
                            "result": "delivered",
                            "reply": reply,
                            "server": server,
                            "relay": relay_text,
                            "status": dsn or "2.0.0",
                            "remote_id": remote.group(1) if remote else "",
                            "tls": False,
                        },
                    )
                )
            return events
        if stat.startswith("Deferred") or stat == "queued":
            # `queued`: not tried now (the smarthost's name did not resolve: link down)
            reply = stat.partition(":")[2].strip() or stat
            code = dsn or "4.0.0"
            m["reply"] = reply
            events = []
            for rcpt in to:
                m["deferred"][rcpt] = (code, reply)
                base = {"id": qid, "rcpt": rcpt, "result": "deferred", "reply": reply}
                events.append(
                    Event(
                        "delivery.result",
                        {**base, "server": server, "relay": relay_text, "status": code},
                    )
                )
            events.append(
                Event(
                    "queue.deferred",
                    {
                        "id": qid,
                        "recipients": to,
                        "reply": reply,
                        "status": code,
                        "next_attempt": 0.0,
                    },
                )
            )
            return events
        # a failure: the remote refused, or the queue time ran out (dsn 4.4.7)
        reply = stat
        found = _STATUS.search(stat)
        code = dsn or (found.group(1) if found else "5.0.0")
        events = []
        expired = code == "4.4.7" or stat.startswith("Cannot send message for")
        if expired and not m["expired"]:
            m["expired"] = True
            events.append(Event("queue.expired", {"id": qid}))
        for rcpt in to:
            m["deferred"].pop(rcpt, None)
            m["bounced"].append((rcpt, code, reply))
            if not expired:
                events.append(
                    Event(
                        "delivery.result",
                        {
                            "id": qid,
                            "rcpt": rcpt,
                            "result": "failed",
                            "reply": reply,
                            "server": server,
                            "relay": relay_text,
                            "status": code,
                        },
                    )
                )
            events.append(
                Event(
                    "queue.bounced",
                    {
                        "id": qid,
                        "rcpt": rcpt,
                        "status": code,
                        "reply": reply,
                        "envelope_from": m["envelope_from"],
                    },
                )
            )
        return events
