"""sendmail 8 as a lab host's SMTP service (Docker backend): its adapter
(lab.software.adapter).

sendmail.mc is rendered from the node's fields (docs/real-mtas.md has the table), or is
the user's own (`config:`) with the lab's lines added; m4 makes sendmail.cf of it before
the daemon starts:

- confDOMAIN_NAME ($j) from the topology hostname; LOCAL_DOMAIN (class w) the hostname,
  localhost and local_domains; the users get a Unix account each (one uid) and mail.local
  delivers into their mbox, /var/mail/USER, which the lab's mailbox listing reads; aliases
  go to /etc/mail/aliases (newaliases);
- relay_from becomes /etc/mail/relay-domains (a network becomes its address prefix, a
  /8, /16 or /24); smarthost SMART_HOST (`smtp:[host]`, a node name becomes its hostname);
- masquerade: MASQUERADE_AS, MASQUERADE_DOMAIN each domain, FEATURE(masquerade_entire_
  domain), FEATURE(masquerade_envelope), FEATURE(allmasquerade) for the recipients;
- the retry schedule: confTO_QUEUEWARN (warn_after), confTO_QUEUERETURN (give_up_after);
  the lab runs the queue (`sendmail -q`) at each message's next try by the topology's
  intervals, counted from the try sendmail recorded in its qf file (K, N);
- STARTTLS with the lab CA's certificate (confSERVER_CERT/KEY, confCACERT);
- what the lab owns (also in a user's own .mc, `LAB_BLOCK`, put before its first
  MAILER line): the host name, the traps of a sendmail in a container (below), the queue
  directory, the alias file, a short connect timeout, the lab CA's files. A user's
  `include(.../cf.m4)` is pointed at Debian's cf.m4.

sendmail logs through syslog only: the agent listens on /dev/log (`syslog_path`) and the
lines become the lab's events (lab/software/sendmail_log.py). sendmail clears its
environment: lab time reaches it through /etc/faketimerc, a link to the agent's offset
file, read by the setuid libfaketime (images/sendmail/Dockerfile).
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Any

from lab.software.adapter import RenderContext, faketime_environment, on_lab_time, programs_at_work
from lab.software.sendmail_log import (
    QF_MARK,
    QUEUE_DIR,
    SendmailLog,
    due_times,
    mbox_messages,
    parse_queue,
)
from lab.topology.addressing import hostname_of
from lab.topology.model import Node, Service, Software, Topology

SOFTWARE = Software.sendmail
DESCRIPTION = "sendmail, in a container (Docker backend)"
FAMILY = "sendmail"
MC = "/etc/mail/sendmail.mc"
CF = "/etc/mail/sendmail.cf"
ALIASES = "/etc/mail/aliases"
RELAY_DOMAINS = "/etc/mail/relay-domains"
PREPARE_SCRIPT = "/etc/maillab/sendmail-prepare.sh"
CF_M4 = "/usr/share/sendmail/cf/m4/cf.m4"
SENDMAIL = "/usr/sbin/sendmail-mta"
MAIL_SPOOL = "/var/mail"
MAIL_LOCAL = "/usr/libexec/sendmail/mail.local"
FAKETIMERC = "/etc/faketimerc"
FAKETIME_LIBRARY = "libfaketime.so.1"  # by its bare name: sendmail is setuid/setgid


# ---------------------------------------------------------------------------------------
# rendering (pure)


def seconds(value: float) -> str:
    """A sendmail time value: whole seconds, at least 1."""
    return f"{max(1, round(value))}s"


def q(value: object) -> str:
    """An m4 quoted string."""
    return f"`{value}'"


def define(name: str, value: object) -> str:
    return f"define({q(name)}, {q(value)})dnl"


def relay_domains(node: Node, topology: Topology) -> tuple[list[str], list[str]]:
    """/etc/mail/relay-domains' lines (class R: a name matches it and its subdomains, an
    address prefix the addresses under it) and the entries it cannot hold."""
    found = ["127.0.0.1", "localhost"]
    bad: list[str] = []
    for item in node.relay_from:
        subnet = str(topology.networks[item].subnet) if item in topology.networks else item
        try:
            net = ipaddress.ip_network(subnet, strict=False)
        except ValueError:
            found.append(item)  # a domain name
            continue
        if net.version != 4 or net.prefixlen % 8:
            bad.append(item)
            continue
        octets = str(net.network_address).split(".")[: net.prefixlen // 8]
        found.append(".".join(octets) if octets else "")
    return list(dict.fromkeys(f for f in found if f)), bad


def smarthost(node: Node, topology: Topology) -> tuple[str, int | None]:
    """The smarthost's name and port (None: 25); a node name becomes its hostname."""
    if not node.smarthost:
        return "", None
    host, _, port = node.smarthost.partition(":")
    if host in topology.nodes:
        host = hostname_of(topology, host)
    return host, int(port) if port else None


def unsupported(node: Node) -> list[str]:
    """The node's fields a rendered sendmail cannot honour, as 'field: why'."""
    policy = node.policy
    found = []
    if policy.helo_rdns.value != "off":
        found.append(f"policy.helo_rdns: {policy.helo_rdns.value}: sendmail has no such check")
    if policy.spf.value != "off":
        found.append(f"policy.spf: {policy.spf.value}: sendmail has no SPF check without a milter")
    if policy.greylist is not None and policy.greylist.enabled:
        found.append("policy.greylist: sendmail has no greylisting without a milter")
    if policy.vrfy == 502:
        found.append("policy.vrfy: 502: sendmail's novrfy answers 252")
    if policy.starttls.value == "require":
        found.append("policy.starttls: require: the rendered sendmail.mc only offers STARTTLS")
    if policy.tls_outbound != "opportunistic":
        found.append(
            f"policy.tls_outbound: {policy.tls_outbound}: the rendered sendmail.mc uses"
            " STARTTLS when offered (an access map would be needed)"
        )
    m = node.masquerade
    if m is not None:
        if "@" in m.as_:
            found.append("masquerade.as: sendmail masquerades as a domain, not an address")
        if not m.header:
            found.append("masquerade.header: false: sendmail masquerades the headers always")
    bad = [item for item in node.relay_from if _unaligned(item)]
    if bad:
        found.append(
            f"relay_from: {', '.join(bad)}: relay-domains holds whole octets only"
            " (a /8, /16 or /24)"
        )
    return found


def _unaligned(item: str) -> bool:
    try:
        net = ipaddress.ip_network(item, strict=False)
    except ValueError:
        return False
    return net.version != 4 or net.prefixlen % 8 != 0


def lab_block(ctx: RenderContext, connect_timeout: float = 3.0) -> list[str]:
    """The lines the lab owns, in a rendered sendmail.mc and in a user's own: the host's
    name, the traps of sendmail in a container, the files the lab writes."""
    lines = [
        "dnl --- the lab's lines (lab/software/sendmail.py, lab_block) ---",
        define("confDOMAIN_NAME", ctx.hostname),
        # no probing of the container's interfaces for names (slow, and wrong names)
        define("confDONT_PROBE_INTERFACES", "true"),
        # a loaded lab machine must not make sendmail refuse connections or only queue
        define("confREFUSE_LA", "10000"),
        define("confQUEUE_LA", "10000"),
        define("confDELAY_LA", "10000"),
        # the host status cache made `sendmail -q` skip a link that has come up again
        "undefine(`confHOST_STATUS_DIRECTORY')dnl",
        define("QUEUE_DIR", QUEUE_DIR),
        define("ALIAS_FILE", ALIASES),
        define("confTO_CONNECT", seconds(connect_timeout)),
        define("confTO_ICONNECT", seconds(connect_timeout)),
        # the log lines the lab reads: alias expansions (> 10), `done` (queue.removed)
        define("confLOG_LEVEL", "14"),
        # local delivery: mail.local into /var/mail/USER (Debian names sensible-mda,
        # which the image does not have)
        define("LOCAL_MAILER_PATH", MAIL_LOCAL),
        define("LOCAL_MAILER_ARGS", "mail.local -d $u"),
    ]
    if ctx.tls_chain:
        lines += [
            define("confSERVER_CERT", ctx.tls_chain),
            define("confSERVER_KEY", ctx.tls_chain),
            define("confCLIENT_CERT", ctx.tls_chain),
            define("confCLIENT_KEY", ctx.tls_chain),
            define("confCACERT", ctx.tls_ca),
            define("confCACERT_PATH", os.path.dirname(ctx.tls_ca) or "/"),
        ]
    lines.append("dnl --- end of the lab's lines ---")
    return lines


def settings(node: Node) -> dict[str, str]:
    """The node's `settings:` for its SMTP software: m4 defines (confX names), last."""
    return {str(k): str(v) for k, v in node.settings_for(Service.smtp).items()}


def render_mc(ctx: RenderContext, connect_timeout: float = 3.0) -> str:
    node, topology = ctx.node, ctx.topology
    policy, retry = node.policy, node.retry
    lines = [
        "divert(-1)dnl",
        "# rendered by maillab from the topology (lab/software/sendmail.py)",
        "divert(0)dnl",
        f"include({q(CF_M4)})dnl",
        "VERSIONID(`maillab')dnl",
        "OSTYPE(`debian')dnl",
        "DOMAIN(`debian-mta')dnl",
        *lab_block(ctx, connect_timeout),
    ]
    warn = retry.warn_after if retry.warn_after else retry.give_up_after + 86400
    lines += [
        define("confTO_QUEUEWARN", seconds(warn)),
        define("confTO_QUEUERETURN", seconds(retry.give_up_after)),
        define("confMAX_MESSAGE_SIZE", policy.max_size),
        define("confMAX_RCPTS_PER_MESSAGE", policy.max_recipients),
        define("confMAX_HOP", policy.max_received),
    ]
    privacy = ["authwarnings"]
    if policy.vrfy != 250:
        privacy.append("novrfy")
    if policy.expn != 250:
        privacy.append("noexpn")
    lines.append(define("confPRIVACY_FLAGS", ",".join(privacy)))
    # no name lookups to canonify addresses: a dial-up hub has no name server while its
    # link is down, and sendmail would queue even local mail (stat=queued, 4.4.3)
    lines.append("FEATURE(`nocanonify')dnl")
    if not policy.verify_sender_domain:
        lines.append("FEATURE(`accept_unresolvable_domains')dnl")
    host, port = smarthost(node, topology)
    if host:
        lines.append(define("SMART_HOST", f"smtp:[{host}]"))
        if port:
            lines.append(define("RELAY_MAILER_ARGS", f"TCP $h {port}"))
    m = node.masquerade
    if m is not None:
        lines.append(f"MASQUERADE_AS({q(m.as_.rpartition('@')[2])})dnl")
        for domain in m.domains or node.local_domains:
            lines.append(f"MASQUERADE_DOMAIN({q(domain)})dnl")
        if m.entire_domain:
            lines.append("FEATURE(`masquerade_entire_domain')dnl")
        if m.envelope:
            lines.append("FEATURE(`masquerade_envelope')dnl")
        if m.recipients:
            lines.append("FEATURE(`allmasquerade')dnl")
    local = list(dict.fromkeys([ctx.hostname, "localhost", *map(str, node.local_domains)]))
    lines.append(f"LOCAL_DOMAIN({q(' '.join(local))})dnl")
    for key, value in settings(node).items():
        lines.append(define(key, value))
    lines += ["MAILER(`local')dnl", "MAILER(`smtp')dnl"]
    return "\n".join(lines) + "\n"


_INCLUDE = re.compile(r"include\(\s*`?[^()']*cf\.m4'?\s*\)")
_MAILER = re.compile(r"^\s*MAILER\(", re.MULTILINE)


def user_mc(ctx: RenderContext, connect_timeout: float = 3.0) -> str:
    """The user's own sendmail.mc (the one file of `config:`) with the lab's lines: its
    include of cf.m4 pointed at Debian's, `lab_block` and the node's settings before its
    first MAILER line (at the end when it has none)."""
    if len(ctx.config_files) != 1:
        names = ", ".join(sorted(ctx.config_files))
        raise ValueError(f"sendmail takes one .mc file as its own configuration, not {names}")
    text = next(iter(ctx.config_files.values()))
    text = _INCLUDE.sub(f"include({q(CF_M4)})", text, count=1)
    block = lab_block(ctx, connect_timeout)
    block += [define(key, value) for key, value in settings(ctx.node).items()]
    added = "\n".join(block) + "\n"
    found = _MAILER.search(text)
    if found is None:
        return text.rstrip("\n") + "\n" + added
    return text[: found.start()] + added + text[found.start() :]


def render_aliases(node: Node) -> str:
    lines = ["# rendered by maillab from the topology's aliases"]
    names = {name.lower() for name in node.aliases}
    for name in ("postmaster", "mailer-daemon"):
        if name not in names:
            lines.append(f"{name}: root")
    for name, targets in node.aliases.items():
        lines.append(f"{name.lower()}: {', '.join(targets)}")
    return "\n".join(lines) + "\n"


def prepare_script(ctx: RenderContext) -> str:
    """Unix accounts for the users (one uid), the spool directories, sendmail.cf made
    from the .mc by m4, the alias database."""
    lines = [
        "set -e",
        f"getent group maillab >/dev/null || groupadd -g {ctx.gid} maillab",
        f"mkdir -p {QUEUE_DIR} {MAIL_SPOOL}",
        # mail.local locks the mbox as its user: the spool stays writable by all (sticky)
        f"chown root:mail {MAIL_SPOOL} && chmod 3777 {MAIL_SPOOL}",
        "mkdir -p /var/lib/sendmail && touch /var/lib/sendmail/sendmail.st",
        "touch /etc/mail/access /etc/mail/local-host-names",
        "makemap hash /etc/mail/access < /etc/mail/access",
    ]
    if ctx.tls_chain:  # sendmail refuses a key others can read
        lines += [f"chmod 0600 {ctx.tls_chain}"]
    for user in ctx.node.users:
        name = user.lower()
        lines.append(
            f"id -u {name} >/dev/null 2>&1 || useradd -M -N -o -u {ctx.uid} -g {ctx.gid}"
            f" -d {MAIL_SPOOL} -s /usr/sbin/nologin {name}"
        )
    lines += [f"m4 {MC} > {CF}.new", f"mv {CF}.new {CF}"]
    # a nullclient (seed nelug's LAN PCs) has no local mailer: it expands no aliases, and
    # `newaliases` refuses every line ("cannot alias non-local names")
    if not nullclient(ctx):
        lines.append(f"{SENDMAIL} -bi")
    return "\n".join(lines) + "\n"


_NULLCLIENT = re.compile(r"^\s*FEATURE\(\s*`?nullclient\b", re.MULTILINE)


def nullclient(ctx: RenderContext) -> bool:
    """The user's own .mc makes a nullclient (FEATURE(nullclient, HUB))."""
    return any(_NULLCLIENT.search(text) for text in ctx.config_files.values())


_CONTENT = r"""
import sys
qid = sys.argv[1]
lines = open('QUEUE/qf' + qid, encoding='utf-8', errors='surrogateescape').read().split('\n')
out, header = [], False
for line in lines:
    if line.startswith('H'):
        text = line[1:]
        while text.startswith('?'):
            text = text[text.index('?', 1) + 1:]
        out.append(text)
        header = True
    elif header and line[:1] in (' ', '\t'):
        out.append(line)
    else:
        header = False
sys.stdout.write('\n'.join(out) + '\n\n')
sys.stdout.write(open('QUEUE/df' + qid, encoding='utf-8', errors='surrogateescape').read())
""".replace("QUEUE", QUEUE_DIR)


# ---------------------------------------------------------------------------------------
# the adapter


class SendmailAdapter:
    software = SOFTWARE
    family = FAMILY

    def __init__(self, connect_timeout: float = 3.0):
        self.connect_timeout = connect_timeout
        self.env: dict[str, str] = {}
        self.schedule: dict[str, Any] = {}

    def render(self, ctx: RenderContext) -> dict[str, str]:
        retry = ctx.node.retry
        self.schedule = {
            "intervals": list(retry.intervals),
            "warn_after": retry.warn_after,
            "give_up_after": retry.give_up_after,
        }
        relay, _bad = relay_domains(ctx.node, ctx.topology)
        mc = user_mc(ctx, self.connect_timeout) if ctx.config_files else None
        return {
            MC: mc if mc is not None else render_mc(ctx, self.connect_timeout),
            ALIASES: render_aliases(ctx.node),
            RELAY_DOMAINS: "\n".join(relay) + "\n",
            "/etc/mailname": ctx.hostname + "\n",
            PREPARE_SCRIPT: prepare_script(ctx),
        }

    def prepare_commands(self, ctx: RenderContext) -> list[list[str]]:
        return [["sh", PREPARE_SCRIPT]]

    def start_command(self) -> list[str]:
        # sendmail clears its environment: libfaketime finds the offset through
        # /etc/faketimerc. Queue runs every 30 minutes on real time, as a hub's would;
        # lab time drives the retries through run_queue_command at each due time.
        return [
            "sh",
            "-c",
            f'ln -sf "$FAKETIME_TIMESTAMP_FILE" {FAKETIMERC}; exec {SENDMAIL} -bD -q30m',
        ]

    def stop_command(self) -> list[str] | None:
        return None

    def environment(self, faketime_file: str) -> dict[str, str]:
        self.env = faketime_environment(faketime_file, FAKETIME_LIBRARY)
        return dict(self.env)

    def _lab_time(self, command: list[str]) -> list[str]:
        """A command that delivers runs on lab time, as the daemon does."""
        return on_lab_time(self.env, command)

    def flush_command(self) -> list[str]:
        return self._lab_time([SENDMAIL, "-q"])

    def retry_command(self, queue_id: str) -> list[str]:
        return self._lab_time([SENDMAIL, f"-qI{queue_id}"])

    def run_queue_command(self) -> list[str]:
        """One queue run on lab time: sendmail tries every queued message (it returns
        when each was tried), warns and returns what is due."""
        return self._lab_time([SENDMAIL, "-q"])

    def due_command(self) -> list[str]:
        return self.queue_command()

    def parse_due(self, output: str) -> list[float]:
        return due_times(output, self.schedule)

    def reset_paths(self) -> list[str]:
        """The queue (qf, df files) and the mboxes: emptied (daemon stopped) by
        `Lab.reset()`."""
        return [QUEUE_DIR, MAIL_SPOOL]

    def deferred_path(self) -> str:
        return QUEUE_DIR

    def syslog_path(self) -> str:
        return "/dev/log"

    def read_mailbox(self, user: str) -> list[dict[str, Any]]:
        path = f"{MAIL_SPOOL}/{user.lower()}"
        if not os.path.exists(path):
            return []
        return mbox_messages(path)

    def queue_command(self) -> list[str]:
        return [
            "sh",
            "-c",
            f'cd {QUEUE_DIR} || exit 0; for f in qf*; do [ -f "$f" ] || continue;'
            f' echo "{QF_MARK}${{f#qf}}"; cat "$f"; done; true',
        ]

    def parse_queue(self, output: str, log: Any) -> list[dict[str, Any]]:
        return parse_queue(output, log, self.schedule)

    def content_command(self, queue_id: str) -> list[str]:
        return ["python3", "-c", _CONTENT, queue_id]

    def busy_paths(self) -> list[str]:
        return []

    def busy(self, daemon_pid: int | None) -> bool:
        """sendmail processes at work besides the listening daemon (receiving,
        delivering, running the queue), or mail.local delivering."""
        return programs_at_work(("sendmail-mta", "sendmail", "mail.local"), daemon_pid)

    def log_reader(self) -> SendmailLog:
        return SendmailLog()
