"""Exim's own output read into the lab's shapes: its queue listing (`exim4 -bp`) and
retry hints (`exim_dumpdb SPOOL retry`) as the built-in MTA's queue entries, its main log
as the lab's events (`EximLog`), with the fields the built-in MTA's events have, so trace,
assert_delivered/queued/bounced and checks read them unchanged.

The main log lines are those of the log_selector the lab sets (lab/software/exim.py,
LOG_SELECTOR): millisecond times, the process id, the recipients on `<=` lines, the
subject, the sender and return path on deliveries, the remote's confirmation.
"""

from __future__ import annotations

import calendar
import re
import time
from typing import Any

from lab.protocols.smtp import queued_as
from lab.software.adapter import Event

SPOOL = "/var/spool/exim4"
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# ---------------------------------------------------------------------------------------
# message ids, the queue listing, the retry hints

_ID = r"[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4}"


def received_time(queue_id: str) -> float:
    """When Exim received a message: its id starts with the time in base 62 (lab time:
    the receiving process runs under libfaketime)."""
    head = queue_id.split("-", 1)[0]
    value = 0
    for char in head:
        if char not in BASE62:
            return 0.0
        value = value * 62 + BASE62.index(char)
    return float(value)


_BP_HEAD = re.compile(
    rf"^\s*(?P<age>\d+[smhdw])\s+(?P<size>[\d.]+[KMG]?)\s+(?P<id>{_ID})\s+<(?P<sender>[^>]*)>"
    r"(?P<frozen>\s+\*\*\* frozen \*\*\*)?"
)
_BP_RCPT = re.compile(r"^\s+(?P<done>D\s+)?(?P<addr>\S+)\s*$")


def parse_bp(output: str) -> list[dict[str, Any]]:
    """`exim4 -bp`: id, envelope_from, recipients not yet delivered, frozen."""
    entries: list[dict[str, Any]] = []
    for line in output.splitlines():
        head = _BP_HEAD.match(line)
        if head:
            entries.append(
                {
                    "id": head["id"],
                    "envelope_from": head["sender"],
                    "recipients": [],
                    "frozen": bool(head["frozen"]),
                }
            )
            continue
        rcpt = _BP_RCPT.match(line)
        if rcpt and entries and not rcpt["done"]:
            entries[-1]["recipients"].append(rcpt["addr"])
    return entries


_DB_KEY = re.compile(r"^\s+(?P<key>[TR]:\S+)\s+(?P<errno>-?\d+)\s+(?P<more>-?\d+)\s*(?P<text>.*)$")
_DB_TIMES = re.compile(
    r"^(?P<first>\d\d-\w{3}-\d{4} \d\d:\d\d:\d\d)\s+(?P<last>\d\d-\w{3}-\d{4} \d\d:\d\d:\d\d)"
    r"\s+(?P<next>\d\d-\w{3}-\d{4} \d\d:\d\d:\d\d)\s*(?P<expired>\*)?"
)


def _dumpdb_time(text: str) -> float:
    """exim_dumpdb's times are the container's local time: UTC."""
    return float(calendar.timegm(time.strptime(text, "%d-%b-%Y %H:%M:%S")))


def parse_retry_db(output: str) -> list[dict[str, Any]]:
    """`exim_dumpdb SPOOL retry`: each retry record's key (T:host:ip[:port][:id] for a host,
    R:address for routing and local deliveries), error, and first, last and next try."""
    records: list[dict[str, Any]] = []
    key: dict[str, Any] | None = None
    for line in output.splitlines():
        head = _DB_KEY.match(line)
        if head:
            key = {"key": head["key"], "errno": int(head["errno"]), "text": head["text"]}
            continue
        times = _DB_TIMES.match(line.strip())
        if times and key is not None:
            key.update(
                first_failed=_dumpdb_time(times["first"]),
                last_try=_dumpdb_time(times["last"]),
                next_try=_dumpdb_time(times["next"]),
                expired=bool(times["expired"]),
            )
            records.append(key)
            key = None
    return records


RETRY_MARK = "--- retry ---"


def split_listing(output: str) -> tuple[str, str]:
    """The queue command's output: the -bp listing, then the retry hints after a mark."""
    listing, _, hints = output.partition(RETRY_MARK)
    return listing, hints


def parse_queue(output: str, log: Any = None) -> list[dict[str, Any]]:
    """The queue listing and retry hints in the built-in MTA's queue shape: the next try
    of a message is the next try of the host it was last deferred on (Exim keeps retry
    times per host, not per message), or the earliest of all when that is unknown."""
    listing, hints = split_listing(output)
    records = parse_retry_db(hints)
    entries = []
    for item in parse_bp(listing):
        qid = item["id"]
        host = log.last_host(qid) if log is not None else ""
        mine = [r for r in records if host and f":{host}" in r["key"]] or records
        entries.append(
            {
                "id": qid,
                "envelope_from": item["envelope_from"],
                "recipients": item["recipients"],
                "attempts": log.attempts(qid) if log is not None else 0,
                "received": received_time(qid),
                "next_attempt": min((r["next_try"] for r in mine), default=0.0),
                "last_reply": log.last_reply(qid) if log is not None else "",
                "queue_name": "frozen" if item["frozen"] else "deferred",
            }
        )
    return entries


def parse_due(output: str) -> list[float]:
    """`exim4 -bpc` then the retry hints: the next tries of the hosts and addresses that
    failed, while messages wait (an empty queue is never due)."""
    count, _, hints = output.partition("\n")
    if not count.strip().isdigit() or int(count.strip()) == 0:
        return []
    return sorted(r["next_try"] for r in parse_retry_db(hints))


# ---------------------------------------------------------------------------------------
# log lines -> events

_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?(?: [-+]\d{4})? (?:\[(?P<pid>\d+)\] )?"
    r"(?P<msg>.*)$"
)
_MSG = re.compile(rf"^(?P<id>{_ID}) (?P<rest>.*)$")
_ARRIVAL = re.compile(r"^<= (?P<sender>\S+)(?P<rest>.*)$")
_DELIVERY = re.compile(
    r"^(?P<flag>=>|->|==|\*\*) (?P<addr>\S+)(?: <(?P<orig>[^>]*)>)?(?P<rest>.*)$"
)
_HOST = re.compile(r"\bH=(?P<name>\S+) \[(?P<addr>[^\]]+)\](?::(?P<port>\d+))?")
_CLIENT = re.compile(r"\bH=(?:\S+ )?(?:\([^)]*\) )?\[(?P<addr>[^\]]+)\]")
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_CONFIRM = re.compile(rf"\bC=(?P<c>{_QUOTED})")
_SUBJECT = re.compile(rf"\bT=(?P<t>{_QUOTED})")
_FIELD = re.compile(r"\b(?P<k>S|id\*?|R|U|P)=(?P<v>\S+)")
_FOR = re.compile(r" for (?P<rcpts>[^\"]+)$")
_STATUS = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
_REJECT = re.compile(
    r"rejected (?P<stage>MAIL|RCPT|EHLO or HELO|VRFY|EXPN|after DATA|DATA)\b"
    r"(?: (?P<what>[^:]*))?: (?P<reply>.*)$"
)
_STAGES = {"EHLO or HELO": "helo", "after DATA": "data"}


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text[1:-1])


def _reply(text: str) -> str:
    """The remote's reply in Exim's text: `SMTP error from remote mail server after RCPT
    TO:<x>: 550 ...` -> `550 ...`; other texts (Connection refused) as they are."""
    said = re.search(
        r"SMTP error from remote (?:mail )?server after [^:]*(?::<[^>]*>)?: (.*)$", text
    )
    return said.group(1) if said else text


class EximLog:
    """Exim's main log lines, in order, as the lab's events (the built-in MTA's kinds and
    fields). Keeps what it learnt of each message (sender, Message-ID, deferred and
    bounced recipients, attempts: distinct delivery processes) for the later lines."""

    def __init__(self) -> None:
        self.messages: dict[str, dict[str, Any]] = {}

    def _msg(self, qid: str) -> dict[str, Any]:
        return self.messages.setdefault(
            qid,
            {
                "envelope_from": "",
                "message_id": "",
                "bounced": [],
                "deferred": {},  # recipient -> (status, reply) of its last deferral
                "pids": set(),  # delivery processes that tried it: its attempts
                "host": "",
                "reply": "",
                "expired": False,
            },
        )

    def attempts(self, queue_id: str) -> int:
        found = self.messages.get(queue_id)
        return len(found["pids"]) if found else 0

    def last_host(self, queue_id: str) -> str:
        found = self.messages.get(queue_id)
        return str(found["host"]) if found else ""

    def last_reply(self, queue_id: str) -> str:
        found = self.messages.get(queue_id)
        return str(found["reply"]) if found else ""

    def feed(self, line: str, now: float) -> list[Event]:
        match = _LINE.match(line)
        if match is None:
            return []
        pid, msg = match["pid"] or "", match["msg"]
        qm = _MSG.match(msg)
        if qm is None:
            reject = _REJECT.search(msg)
            if reject:
                return [self._reject(reject)]
            return []
        qid, rest = qm["id"], qm["rest"]
        if rest.startswith("<= "):
            return self._arrival(qid, rest)
        delivery = _DELIVERY.match(rest)
        if delivery:
            return self._delivery(qid, pid, delivery)
        if rest.startswith("Completed"):
            self.messages.pop(qid, None)
            return [Event("queue.removed", {"id": qid})]
        host = _HOST.match(rest)
        if host and qid in self.messages:  # `ID H=host [addr]: Connection refused`
            self.messages[qid]["host"] = host["addr"]
        reject = _REJECT.search(rest)
        if reject:
            return [self._reject(reject)]
        return []

    def _reject(self, match: re.Match[str]) -> Event:
        stage = _STAGES.get(match["stage"], match["stage"].lower())
        data: dict[str, Any] = {"stage": stage, "reply": match["reply"]}
        what = (match["what"] or "").strip()
        if what.startswith("<") and what.endswith(">"):
            data["address"] = what[1:-1]
        return Event("policy.reject", data)

    def _arrival(self, qid: str, rest: str) -> list[Event]:
        arrival = _ARRIVAL.match(rest)
        assert arrival is not None
        sender = arrival["sender"]
        sender = "" if sender == "<>" else sender
        fields = {m["k"]: m["v"] for m in _FIELD.finditer(arrival["rest"])}
        subject = _SUBJECT.search(arrival["rest"])
        tail = arrival["rest"][subject.end() :] if subject else arrival["rest"]
        found = _FOR.search(tail)
        recipients = found["rcpts"].split() if found else []
        client = _CLIENT.search(arrival["rest"])
        m = self._msg(qid)
        m["envelope_from"] = sender
        message_id = fields.get("id*") or fields.get("id") or ""
        m["message_id"] = f"<{message_id}>" if message_id else ""
        events = [
            Event(
                "queue.queued",
                {
                    "id": qid,
                    "envelope_from": sender,
                    "recipients": recipients,
                    "nrcpt": len(recipients),
                    "client": client["addr"] if client else "localhost",
                    "size": int(fields.get("S", "0") or 0),
                    "message_id": m["message_id"],
                },
            )
        ]
        original = fields.get("R", "")
        if sender == "" and original and fields.get("P") == "local":
            # a DSN Exim wrote about `original`: a bounce or a delay warning
            title = _unquote(subject["t"]) if subject else ""
            events.append(self._dsn(qid, original, recipients, title))
        return events

    def _dsn(self, qid: str, original: str, to: list[str], title: str) -> Event:
        about = self.messages.get(original) or self._msg(original)
        delayed = "delayed" in title.lower() or title.lower().startswith("warning")
        if delayed:
            pairs = [(rcpt, status) for rcpt, (status, _) in about["deferred"].items()]
        else:
            pairs = [(rcpt, status) for rcpt, status, _ in about["bounced"]]
            about["bounced"] = []
        return Event(
            "dsn.sent",
            {
                "id": qid,
                "original_id": original,
                "to": to[0] if to else about["envelope_from"],
                "action": "delayed" if delayed else "failed",
                "recipients": [rcpt for rcpt, _ in pairs],
                "status": [status for _, status in pairs],
            },
        )

    def _delivery(self, qid: str, pid: str, match: re.Match[str]) -> list[Event]:
        flag, addr, rest = match["flag"], match["addr"].rstrip(":"), match["rest"]
        orig = match["orig"] or addr
        m = self._msg(qid)
        if "retry time not reached" in rest:  # not tried: its host is not due yet
            return []
        if pid:
            m["pids"].add(pid)
        else:
            m["pids"].add(f"line{len(m['pids'])}")
        host = _HOST.search(rest)
        server = host["name"] if host else ""
        relay = f"{host['name']}[{host['addr']}]:{host['port'] or 25}" if host else ""
        if host:
            m["host"] = host["addr"]
        if flag in ("=>", "->"):
            m["deferred"].pop(orig, None)
            if host is None:  # a local delivery: into the user's Maildir
                user = addr.partition("@")[0].lower()
                domain = orig.partition("@")[2]
                return [
                    Event(
                        "mailbox.delivered",
                        {
                            "id": qid,
                            "user": user,
                            "rcpt": orig,
                            "address": addr if "@" in addr else f"{addr}@{domain}",
                            "envelope_from": m["envelope_from"],
                            "key": "",  # filled by the agent, which finds the file
                            "message_id": m["message_id"],
                            "maildrop": False,
                            "reply": "delivered to maildir",
                        },
                    )
                ]
            confirm = _CONFIRM.search(rest)
            reply = _unquote(confirm["c"]) if confirm else ""
            status = _STATUS.search(reply)
            return [
                Event(
                    "delivery.result",
                    {
                        "id": qid,
                        "rcpt": orig,
                        "result": "delivered",
                        "reply": reply,
                        "server": server,
                        "relay": relay,
                        "status": status.group(1) if status else "2.0.0",
                        "remote_id": queued_as(reply),
                        "tls": " X=" in rest,
                    },
                )
            ]
        text = rest.split(": ", 1)[1] if ": " in rest else rest.strip()
        text = re.sub(r" DT=\S+$", "", text)
        reply = _reply(text)
        status = _STATUS.search(reply)
        if flag == "==":
            code = status.group(1) if status else "4.0.0"
            m["deferred"][orig] = (code, reply)
            m["reply"] = reply
            base = {"id": qid, "rcpt": orig, "result": "deferred", "reply": reply}
            return [
                Event(
                    "delivery.result",
                    {**base, "server": server, "relay": relay, "status": code},
                ),
                Event(
                    "queue.deferred",
                    {
                        "id": qid,
                        "recipients": [orig],
                        "reply": reply,
                        "status": code,
                        "next_attempt": 0.0,
                    },
                ),
            ]
        # ** a failure: refused by the remote, or the retry time is over
        m["deferred"].pop(orig, None)
        expired = "retry timeout exceeded" in text or "failing for a long time" in text
        events: list[Event] = []
        if expired:
            # what Exim's bounce says for it (Action: failed, Status: 5.0.0), not the
            # built-in MTA's 4.4.7: the event carries the DSN's status as sent
            code = "5.0.0"
            reply = f"delivery time expired; last error: {m['reply'] or text}"
            if not m["expired"]:
                m["expired"] = True
                events.append(Event("queue.expired", {"id": qid}))
        else:
            code = status.group(1) if status else "5.0.0"
            events.append(
                Event(
                    "delivery.result",
                    {
                        "id": qid,
                        "rcpt": orig,
                        "result": "failed",
                        "reply": reply,
                        "server": server,
                        "relay": relay,
                        "status": code,
                    },
                )
            )
        m["bounced"].append((orig, code, reply))
        events.append(
            Event(
                "queue.bounced",
                {
                    "id": qid,
                    "rcpt": orig,
                    "status": code,
                    "reply": reply,
                    "envelope_from": m["envelope_from"],
                },
            )
        )
        return events
