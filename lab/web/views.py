"""What the API answers, shaped from the lab: the topology to draw, a mailbox message
read (headers, body, Received chain), a message's trace hop by hop with each hop's SMTP
dialogue, the pending timers, the DNS table, and the events a wait is for. Pure
functions over the Lab, its backend and its events; lab.web.api serves them."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from lab.runtime.events import Event

if TYPE_CHECKING:
    from lab.harness.lab import Lab

DIALOGUE = ("smtp.connect", "smtp.command", "smtp.reply")


def event_json(event: Event) -> dict[str, Any]:
    return event.to_json()


# the topology ------------------------------------------------------------------------------


def topology_view(lab: Lab, status: dict[str, Any]) -> dict[str, Any]:
    """Networks, hosts (role, hostname, addresses, services and their software, users,
    endpoints) and links with their state: what the page draws."""
    topology = lab.topology
    nodes = {}
    for name, node in topology.nodes.items():
        services = sorted(node.service_set(), key=str)
        running = status["nodes"].get(name, {})
        nodes[name] = {
            "role": node.role or "",
            "hostname": running.get("hostname", ""),
            "addresses": running.get("addresses", {}),
            "endpoints": {k: v for k, v in running.get("endpoints", {}).items() if "@" not in k},
            "inside_lab": running.get("inside_lab", []),
            "services": [str(s) for s in services],
            "software": {str(s): str(node.software_for(s)) for s in services},
            "mailboxes": mailbox_names(lab, name),
            "description": getattr(node, "description", None) or "",
        }
    return {
        "name": status["name"],
        "topology": status.get("topology", topology.name),
        "description": topology.description or "",
        "backend": status["backend"],
        "networks": {
            name: {"subnet": str(net.subnet), "description": net.description or ""}
            for name, net in topology.networks.items()
        },
        "nodes": nodes,
        "links": {
            name: {
                "node": link.node,
                "network": link.network,
                "state": status["links"].get(name, {}).get("state", link.state),
                "when_down": str(link.when_down),
                "on_up": [str(h) for h in link.on_up],
            }
            for name, link in topology.links.items()
        },
        "operator": status.get("operator") or {},
        "clock": status.get("clock") or {},
    }


def mailbox_names(lab: Lab, node: str) -> list[str]:
    """A node's local users and POP maildrops, in the topology's order."""
    spec = lab.topology.nodes[node]
    return list(dict.fromkeys([*spec.users, *spec.mailboxes]))


# mailboxes ----------------------------------------------------------------------------------


def message_view(entry: dict[str, Any], events: Iterable[Event] = ()) -> dict[str, Any]:
    """A mailbox message read: its headers in order, the Received chain (newest first, as
    in the message), the text body, the raw message, and the queue id that delivered it
    (with the original's id when it is a DSN)."""
    raw = str(entry["raw"])
    msg = email.message_from_string(raw, policy=email.policy.default)
    body_part = msg.get_body(("plain",)) if msg.is_multipart() else msg
    body = ""
    if body_part is not None:
        payload = body_part.get_payload(decode=True)
        body = (
            payload.decode("utf-8", "replace")
            if isinstance(payload, bytes)
            else str(body_part.get_payload())
        )
    headers = [[k, str(v)] for k, v in msg.raw_items()]
    delivered = next(
        (e for e in events if e.kind == "mailbox.delivered" and e.get("key") == entry["id"]),
        None,
    )
    queue_id = delivered.get("id") if delivered else None
    dsn_of = None
    if queue_id:
        dsn_of = next(
            (
                e.get("original_id")
                for e in events
                if e.kind == "dsn.sent" and e.get("id") == queue_id
            ),
            None,
        )
    return {
        "id": entry["id"],
        "envelope_from": entry["envelope_from"],
        "subject": str(msg["Subject"] or ""),
        "from": str(msg["From"] or ""),
        "to": str(msg["To"] or ""),
        "date": str(msg["Date"] or ""),
        "message_id": str(msg["Message-ID"] or ""),
        "headers": headers,
        "received": [" ".join(str(v).split()) for v in msg.get_all("Received") or []],
        "body": body,
        "raw": raw,
        "queue_id": queue_id,
        "dsn_of": dsn_of,
    }


# traces -----------------------------------------------------------------------------------


def trace_view(lab: Lab, ref: str) -> dict[str, Any]:
    """One message hop by hop: every host that queued it (or delivered it to a mailbox)
    with that hop's events and the SMTP dialogue of the session that brought it there
    (the smtp.* events of that connection, told apart by their `session`), and the DSNs
    it caused, each with the message it reports on."""
    events = lab.events
    traced = lab.trace(ref)
    hops: list[dict[str, Any]] = []
    for queued in (e for e in traced if e.kind == "queue.queued"):
        qid = queued.get("id")
        session = _session_of(events, queued.node, qid, queued.seq)
        dialogue = (
            [
                event_json(e)
                for e in events
                if e.node == queued.node and e.kind in DIALOGUE and e.get("session") == session
            ]
            if session is not None
            else []
        )
        hops.append(
            {
                "node": queued.node,
                "id": qid,
                "envelope_from": queued.get("envelope_from", queued.get("mail_from")),
                "recipients": queued.get("recipients", []),
                "session": session,
                "dialogue": dialogue,
                "events": [
                    event_json(e)
                    for e in traced
                    if e.node == queued.node and (e.get("id") == qid or e.get("original_id") == qid)
                ],
            }
        )
    dsns = [
        {
            "id": e.get("id"),
            "node": e.node,
            "original_id": e.get("original_id"),
            "action": e.get("action"),
            "to": e.get("to"),
            "recipients": e.get("recipients", []),
            "status": e.get("status", []),
            "seq": e.seq,
        }
        for e in traced
        if e.kind in ("dsn.sent", "dsn.double_bounce")
    ]
    return {
        "ref": ref,
        "hops": hops,
        "dsns": dsns,
        "events": [event_json(e) for e in traced],
    }


def _session_of(events: list[Event], node: str, qid: str | None, after: int) -> int | None:
    """The SMTP session on `node` whose reply gave out queue id `qid` (the 250 after DATA)."""
    if not qid:
        return None
    for e in events:
        if (
            e.seq >= after
            and e.node == node
            and e.kind == "smtp.reply"
            and qid in str(e.get("reply", ""))
        ):
            session = e.get("session")
            return int(session) if session is not None else None
    return None


# timers and DNS -----------------------------------------------------------------------------


async def pending_timers(lab: Lab) -> list[dict[str, Any]]:
    """The lab's pending timers, soonest first. In process the lab clock lists them by
    name; on Docker each host keeps its own, and the queues' next attempts stand for them
    (the retries: what advancing the clock will run), beside the lab's own (dials)."""
    backend = lab.backend
    clock = getattr(backend, "clock", None)
    if clock is not None and hasattr(clock, "pending"):
        return [{"when": t.when, "name": t.name} for t in clock.pending() if not t.cancelled]
    timers = []
    own = getattr(backend, "own_clock", None)  # the lab's own timers: scheduled dials
    if own is not None:
        timers += [{"when": t.when, "name": t.name} for t in own.pending() if not t.cancelled]
    for node, spec in lab.topology.nodes.items():
        if "smtp" not in {str(s) for s in spec.service_set()}:
            continue
        for entry in await backend.queue(node):
            timers.append({"when": entry["next_attempt"], "name": f"{node} retry {entry['id']}"})
    return sorted(timers, key=lambda t: t["when"])


def dns_view(lab: Lab) -> list[dict[str, Any]]:
    """The lab DNS's records, one row per name and type (and a row for a name's fault)."""
    table = lab.backend.records  # type: ignore[attr-defined]
    rows: list[dict[str, Any]] = []
    for name in sorted(table.names):
        rec = table.names[name]
        for rtype in ("A", "MX", "CNAME", "TXT", "NS", "PTR"):
            values = rec.of(rtype)
            if values:
                shown = [f"{v[0]} {v[1]}" if rtype == "MX" else str(v) for v in values]
                rows.append({"name": name, "type": rtype, "values": shown})
        if rec.fault:
            rows.append({"name": name, "type": "fault", "values": [rec.fault]})
    return rows


# waits ------------------------------------------------------------------------------------

UNTIL = ("delivered", "bounced", "queued", "event")


def _mentions(event: Event, address: str) -> bool:
    address = address.lower()
    for key in ("rcpt", "address", "to", "mail_from", "envelope_from"):
        if str(event.get(key) or "").lower() == address:
            return True
    for key in ("recipients", "to"):
        value = event.get(key)
        if isinstance(value, list) and address in [str(v).lower() for v in value]:
            return True
    return False


def wait_matcher(
    until: str, to: str | None, node: str | None, kind: str | None
) -> Callable[[Event], bool]:
    """What `GET /api/wait` waits for: a delivery to `to` (mailbox.delivered), a bounce
    for recipient `to` (dsn.sent, failed), a message for `to` queued on `node`
    (queue.deferred), or any event of `kind` (on `node`, mentioning `to`)."""

    def match(e: Event) -> bool:
        if node and e.node != node:
            return False
        if until == "delivered":
            return e.kind == "mailbox.delivered" and (not to or _mentions(e, to))
        if until == "bounced":
            if e.kind != "dsn.sent" or e.get("action") != "failed":
                return False
            return not to or to.lower() in [str(r).lower() for r in e.get("recipients", [])]
        if until == "queued":
            return e.kind == "queue.deferred" and (not to or _mentions(e, to))
        if kind and not (e.kind == kind or (kind.endswith(".*") and e.kind.startswith(kind[:-1]))):
            return False
        return not to or _mentions(e, to)

    return match


def what_happened(
    events: Sequence[Event], to: str | None, node: str | None
) -> list[dict[str, Any]]:
    """The events a failed wait shows instead: those about `to` (or on `node`) of the
    kinds that tell a message's fate, the last 40."""
    fates = ("queue.", "delivery.result", "dsn.", "mailbox.", "policy.", "link.", "client.")
    shown = [
        e
        for e in events
        if e.kind.startswith(fates)
        and (to is None or _mentions(e, to) or e.kind.startswith("link."))
        and (node is None or e.node == node or e.kind.startswith("link."))
    ]
    return [event_json(e) for e in shown[-40:]]


def filter_events(
    events: Iterable[Event],
    *,
    since: int = 0,
    node: str | None = None,
    kind: str | None = None,
    message: str | None = None,
    lab: Lab | None = None,
) -> list[Event]:
    """Events after `since`, on `node`, of `kind` (a prefix ending in .* for a family),
    about `message` (a queue id or Message-ID: its trace)."""
    ids: set[int] | None = None
    if message and lab is not None:
        ids = {e.seq for e in lab.trace(message)}
    return [
        e
        for e in events
        if e.seq > since
        and (node is None or e.node == node)
        and (
            kind is None or e.kind == kind or (kind.endswith(".*") and e.kind.startswith(kind[:-1]))
        )
        and (ids is None or e.seq in ids)
    ]
