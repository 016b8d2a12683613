"""Postfix as a lab host's SMTP service (Docker backend): its adapter (lab.software.adapter).

The configuration is rendered from the node's fields (docs/real-mtas.md has the table):

- myhostname from the topology hostname; mydomain, myorigin and mydestination from
  local_domains; local users get Unix accounts (one uid) and aliases /etc/aliases;
- mynetworks from relay_from (network names become their subnets), relayhost from
  smarthost (a node name becomes its hostname; `[host]`, no MX lookup, as the built-in
  MTA's smarthost);
- masquerade: masquerade_domains and masquerade_classes, and, when the masquerade domain
  is another one (shofar.org.uk as shofar.uklinux.net), smtp_generic_maps that map the
  domains (and with entire_domain their subdomains) to it on the way out;
- the retry schedule: queue_run_delay and minimal_backoff_time from the first interval,
  maximal_backoff_time from the last, delay_warning_time from warn_after,
  maximal_queue_lifetime and bounce_queue_lifetime from give_up_after;
- what the lab owns: local deliveries into MAIL_ROOT/USER/ as Maildirs (the layout the
  lab's mailbox reader uses: mail_spool_directory with a trailing slash), the log on
  standard output (maillog_file, read by the agent), IPv4, every daemon unchrooted (they
  read the lab's resolv.conf), a short smtp_connect_timeout, libfaketime's variables
  passed to every daemon (import_environment);
- `settings:` of the node last, as raw main.cf parameters.

Its log lines become the lab's events (`PostfixLog`), with the fields the built-in MTA's
events have, so trace, assert_delivered/queued/bounced and checks read them unchanged.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lab.software.adapter import Event, RenderContext
from lab.topology.addressing import hostname_of
from lab.topology.model import Masquerade, Node, Service, Software, Topology

SOFTWARE = Software.postfix
DESCRIPTION = "Postfix, in a container (Docker backend)"
FAMILY = "postfix"
SPOOL = "/var/spool/postfix"

IMPORT_ENVIRONMENT = (
    "MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ XAUTHORITY DISPLAY LANG=C POSTLOG_SERVICE"
    " POSTLOG_HOSTNAME LD_PRELOAD FAKETIME_TIMESTAMP_FILE FAKETIME_NO_CACHE NO_FAKE_STAT"
    " FAKETIME_DONT_RESET"
)


# ---------------------------------------------------------------------------------------
# rendering (pure)


def seconds(value: float) -> str:
    """A Postfix time value: whole seconds, at least 1."""
    return f"{max(1, round(value))}s"


def domain_of(ctx: RenderContext) -> str:
    node = ctx.node
    if node.local_domains:
        return str(node.local_domains[0])
    return ctx.hostname.partition(".")[2] or ctx.hostname


def mynetworks(node: Node, topology: Topology) -> list[str]:
    found = ["127.0.0.0/8"]
    for item in node.relay_from:
        if item in topology.networks:
            found.append(str(topology.networks[item].subnet))
        else:
            found.append(item)
    return list(dict.fromkeys(found))


def relayhost(node: Node, topology: Topology) -> str:
    if not node.smarthost:
        return ""
    host, _, port = node.smarthost.partition(":")
    if host in topology.nodes:
        host = hostname_of(topology, host)
    return f"[{host}]" + (f":{port}" if port else "")


def masquerade_classes(m: Masquerade) -> list[str]:
    classes = []
    if m.envelope:
        classes.append("envelope_sender")
    if m.header:
        classes.append("header_sender")
    if m.recipients:
        classes.append("header_recipient")
    return classes


def generic_map(m: Masquerade) -> str:
    """A regexp table mapping the masqueraded domains to `as` (smtp_generic_maps)."""
    lines = []
    for domain in m.domains:
        if str(domain).lower() == m.as_.lower():
            continue
        escaped = re.escape(str(domain))
        sub = r"([^@.]+\.)*" if m.entire_domain else ""
        lines.append(f"/^(.+)@{sub}{escaped}$/\t${{1}}@{m.as_}")
    return "\n".join(lines) + ("\n" if lines else "")


SMTPD_TLS = {"off": "none", "offer": "may", "require": "encrypt"}
SMTP_TLS = {"off": "none", "opportunistic": "may", "require": "verify"}


def tls_params(ctx: RenderContext) -> dict[str, str]:
    """STARTTLS with a certificate of the lab CA: offered, required or off as the node's
    policy says (starttls), and used on the way out as tls_outbound says."""
    policy = ctx.node.policy
    if not ctx.tls_chain:
        return {"smtpd_tls_security_level": "none", "smtp_tls_security_level": "none"}
    params = {
        "smtpd_tls_security_level": SMTPD_TLS[policy.starttls.value],
        "smtpd_tls_chain_files": ctx.tls_chain,
        "smtpd_tls_received_header": "yes",
        "smtp_tls_security_level": SMTP_TLS[policy.tls_outbound],
        "smtp_tls_CAfile": ctx.tls_ca,
        "smtp_tls_verify_cert_match": "hostname",
        "smtp_tls_loglevel": "1",
    }
    if policy.starttls.value == "off":
        del params["smtpd_tls_chain_files"]
    return params


def main_cf(ctx: RenderContext, connect_timeout: float = 3.0) -> dict[str, str]:
    """main.cf's parameters, in order."""
    node, topology = ctx.node, ctx.topology
    mydestination = ["$myhostname", "localhost", *[str(d) for d in node.local_domains]]
    retry = node.retry
    first, last = retry.intervals[0], max(retry.intervals)
    params: dict[str, str] = {
        "compatibility_level": "3.6",
        "myhostname": ctx.hostname,
        "mydomain": domain_of(ctx),
        "myorigin": "$mydomain",
        "mydestination": ", ".join(dict.fromkeys(mydestination)),
        "mynetworks": ", ".join(mynetworks(node, topology)),
        "relayhost": relayhost(node, topology),
        "inet_interfaces": "all",
        "inet_protocols": "ipv4",
        "smtpd_banner": "$myhostname ESMTP $mail_name",
        "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
        "biff": "no",
        "append_dot_mydomain": "no",
        "readme_directory": "no",
        "alias_maps": "hash:/etc/aliases",
        "alias_database": "hash:/etc/aliases",
        "home_mailbox": "",
        "mail_spool_directory": ctx.mail_root.rstrip("/") + "/",
        "mailbox_size_limit": "0",
        "message_size_limit": str(node.policy.max_size),
        "smtpd_recipient_limit": str(node.policy.max_recipients),
        "disable_vrfy_command": "yes" if node.policy.vrfy == 502 else "no",
        "maillog_file": "/dev/stdout",
        "smtp_connect_timeout": seconds(connect_timeout),
        "queue_run_delay": seconds(first),
        "minimal_backoff_time": seconds(first),
        "maximal_backoff_time": seconds(max(first, last)),
        "delay_warning_time": seconds(retry.warn_after) if retry.warn_after else "0h",
        "maximal_queue_lifetime": seconds(retry.give_up_after),
        "bounce_queue_lifetime": seconds(retry.give_up_after),
        "import_environment": IMPORT_ENVIRONMENT,
    }
    params.update(tls_params(ctx))
    m = node.masquerade
    if m is not None:
        params["masquerade_domains"] = ", ".join(str(d) for d in m.domains)
        params["masquerade_classes"] = ", ".join(masquerade_classes(m))
        if generic_map(m):
            params["smtp_generic_maps"] = "regexp:/etc/postfix/generic"
    for key, value in node.settings_for(Service.smtp).items():
        params[str(key)] = str(value)
    return params


def render_main_cf(params: dict[str, str]) -> str:
    lines = ["# rendered by maillab from the topology (lab/software/postfix.py)"]
    lines += [f"{key} = {value}".rstrip() for key, value in params.items()]
    return "\n".join(lines) + "\n"


def render_aliases(node: Node) -> str:
    lines = ["# rendered by maillab from the topology's aliases"]
    if not any(name.lower() == "postmaster" for name in node.aliases):
        lines.append("postmaster: root")
    for name, targets in node.aliases.items():
        lines.append(f"{name.lower()}: {', '.join(targets)}")
    return "\n".join(lines) + "\n"


def users_script(ctx: RenderContext) -> str:
    """A shell script giving each local user a Unix account (one uid for all of them):
    Postfix's local delivery looks users up in passwd and writes as them."""
    lines = [
        "set -e",
        f"getent group maillab >/dev/null || groupadd -g {ctx.gid} maillab",
        f"mkdir -p {ctx.mail_root}",
        f"chmod 1777 {ctx.mail_root}",
    ]
    for user in ctx.node.users:
        name = user.lower()
        lines.append(
            f"id -u {name} >/dev/null 2>&1 || useradd -M -N -o -u {ctx.uid} -g {ctx.gid}"
            f" -d {ctx.mail_root}/{name} -s /usr/sbin/nologin {name}"
        )
    return "\n".join(lines) + "\n"


class PostfixAdapter:
    software = SOFTWARE
    family = FAMILY

    def __init__(self, connect_timeout: float = 3.0):
        self.connect_timeout = connect_timeout

    def render(self, ctx: RenderContext) -> dict[str, str]:
        files = {
            "/etc/postfix/main.cf": render_main_cf(main_cf(ctx, self.connect_timeout)),
            "/etc/aliases": render_aliases(ctx.node),
            "/etc/mailname": ctx.hostname + "\n",
            "/etc/maillab/postfix-users.sh": users_script(ctx),
        }
        if ctx.node.masquerade is not None and generic_map(ctx.node.masquerade):
            files["/etc/postfix/generic"] = generic_map(ctx.node.masquerade)
        return files

    def prepare_commands(self, ctx: RenderContext) -> list[list[str]]:
        return [
            ["sh", "/etc/maillab/postfix-users.sh"],
            ["postconf", "-F", "*/*/chroot = n"],
            ["postalias", "/etc/aliases"],
        ]

    def start_command(self) -> list[str]:
        return ["postfix", "start-fg"]

    def stop_command(self) -> list[str] | None:
        return ["postfix", "stop"]

    def environment(self, faketime_file: str) -> dict[str, str]:
        from lab.software.adapter import FAKETIME_LIBRARY

        return {
            "LD_PRELOAD": FAKETIME_LIBRARY,
            "FAKETIME_TIMESTAMP_FILE": faketime_file,
            "FAKETIME_NO_CACHE": "1",
            "NO_FAKE_STAT": "1",
            "FAKETIME_DONT_RESET": "1",
        }

    def flush_command(self) -> list[str]:
        return ["postqueue", "-f"]

    def retry_command(self, queue_id: str) -> list[str]:
        return ["postqueue", "-i", queue_id]

    def deferred_path(self) -> str:
        return f"{SPOOL}/deferred"

    def queue_command(self) -> list[str]:
        return ["postqueue", "-j"]

    def parse_queue(self, output: str, log: Any) -> list[dict[str, Any]]:
        return parse_postqueue(output, log, Path(SPOOL))

    def content_command(self, queue_id: str) -> list[str]:
        return ["postcat", "-bh", "-q", queue_id]

    def busy_paths(self) -> list[str]:
        return [f"{SPOOL}/maildrop", f"{SPOOL}/incoming", f"{SPOOL}/active"]

    def log_reader(self) -> PostfixLog:
        return PostfixLog()


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
# log lines -> events

_LINE = re.compile(r"postfix(?:/[\w.-]+)*/(?P<prog>[\w.-]+)\[\d+\]: (?P<msg>.*)$")
_QID = re.compile(r"^(?P<qid>[0-9A-Za-z]{6,}): (?P<rest>.*)$")
_FIELD = re.compile(r"(\w+)=(<[^>]*>|[^,]*)")
_STATUS = re.compile(r"status=(?P<status>\w+) \((?P<text>.*)\)\s*$")
_RELAY = re.compile(r"^(?P<name>[^\[]+)(?:\[(?P<addr>[^\]]*)\](?::(?P<port>\d+))?)?$")
_DSN_NOTE = re.compile(
    r"^sender (?P<what>non-delivery|delay|delivery status) notification: (?P<new>\w+)"
)
_QUEUED_AS = re.compile(r"queued as (\S+?)\)?$")
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


class PostfixLog:
    """Postfix's log lines, in order, as the lab's events (the built-in MTA's kinds and
    fields). Keeps what it learnt of each queue id (client, Message-ID, sender, bounced
    recipients, attempts) to fill the events of later lines."""

    def __init__(self) -> None:
        self.messages: dict[str, dict[str, Any]] = {}

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
            return self._qmgr(qid, m, rest, now)
        if prog == "bounce":
            return self._bounce(qid, m, rest)
        if "status=" in rest and "to=" in rest:
            return self._delivery(qid, m, prog, rest, now)
        return []

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
            return [
                Event(
                    "queue.queued",
                    {
                        "id": qid,
                        "envelope_from": fields["from"],
                        "recipients": [],
                        "nrcpt": int(fields.get("nrcpt", "0").split()[0] or 0),
                        "client": m["client"],
                        "size": int(fields.get("size", "0") or 0),
                        "message_id": m["message_id"],
                    },
                )
            ]
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
            user = to.partition("@")[0].lower()
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
                        "maildrop": False,
                        "reply": text,
                    },
                )
            )
            return events
        reply = _reply(text)
        if state == "sent":
            queued = _QUEUED_AS.search(reply)
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
                        "remote_id": queued.group(1) if queued else "",
                        "tls": False,
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
