"""Postfix as a lab host's SMTP service (Docker backend): its adapter (lab.software.adapter).

The configuration is rendered from the node's fields (docs/real-mtas.md has the table):

- myhostname from the topology hostname; mydomain, myorigin and mydestination from
  local_domains; local users get Unix accounts (one uid) and aliases /etc/aliases;
- mynetworks from relay_from (network names become their subnets), relayhost from
  smarthost (a node name becomes its hostname; `[host]`, no MX lookup, as the built-in
  MTA's smarthost); relay_domains from relay_domains (with a smarthost too, a transport
  entry `relay:DOMAIN` per domain, so their mail goes to their MX as on the built-in MTA);
- masquerade: masquerade_domains and masquerade_classes, and, when the masquerade domain
  is another one (shofar.org.uk as shofar.uklinux.net), smtp_generic_maps that map the
  domains (and with entire_domain their subdomains) to it on the way out (envelope and
  headers; with `envelope: false`, smtp_header_checks that replace the address in From:,
  Sender: and Reply-To: instead, so the envelope sender stays, as lg45's header filter);
- mailboxes (POP3 maildrops, which Dovecot serves on the same host): each multidrop
  domain goes to virtual(8) (virtual_mailbox_domains/maps: `@DOMAIN` into the box's
  Maildir), each mailbox whose name can be a Unix account gets one, for local(8);
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

import re
from pathlib import Path
from typing import Any

from lab.software.adapter import RenderContext, faketime_environment
from lab.software.postfix_log import (
    SPOOL,
    Maildrops,
    PostfixLog,
    parse_postqueue,
    queue_file_content,
)
from lab.topology.addressing import hostname_of
from lab.topology.model import Masquerade, Node, Service, Software, Topology

SOFTWARE = Software.postfix
DESCRIPTION = "Postfix, in a container (Docker backend)"
FAMILY = "postfix"
CONFIG_DIR = "/etc/postfix"

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
        # `as` may be a whole address (lg45's joe.bloggs@isp.com): every local part maps to it
        to = m.as_ if "@" in m.as_ else f"${{1}}@{m.as_}"
        lines.append(f"/^(.+)@{sub}{escaped}$/\t{to}")
    return "\n".join(lines) + ("\n" if lines else "")


def header_checks(m: Masquerade) -> str:
    """smtp_header_checks REPLACE rules rewriting the first masqueraded address in From:,
    Sender: and Reply-To: (a header-only masquerade: the envelope keeps its sender)."""
    lines = []
    for domain in m.domains:
        if str(domain).lower() == m.as_.lower():
            continue
        escaped = re.escape(str(domain))
        sub = r"(([^@<>[:space:]]+\.)*)" if m.entire_domain else "(())"
        to = m.as_ if "@" in m.as_ else f"${{3}}@{m.as_}"
        lines.append(
            rf"/^(From|Sender|Reply-To):(.*[<[:space:]])?([^<>@[:space:],]+)@{sub}{escaped}"
            rf"(>.*|[[:space:],].*)?$/ REPLACE ${{1}}:${{2}}{to}${{6}}"
        )
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


def lab_owned(ctx: RenderContext, connect_timeout: float = 3.0) -> dict[str, str]:
    """The parameters the lab owns, in a rendered main.cf and over a user's own: the
    host's name and addresses, where local mail goes (the lab's Maildirs), the log (the
    agent reads it), lab time (libfaketime's variables), a short connect timeout (a
    dropped link is refused at once), and the lab CA's certificate and CA file."""
    params = {
        "myhostname": ctx.hostname,
        "inet_interfaces": "all",
        "inet_protocols": "ipv4",
        "home_mailbox": "",
        "mail_spool_directory": ctx.mail_root.rstrip("/") + "/",
        "maillog_file": "/dev/stdout",
        "smtp_connect_timeout": seconds(connect_timeout),
        "import_environment": IMPORT_ENVIRONMENT,
    }
    if ctx.tls_chain:
        params["smtpd_tls_chain_files"] = ctx.tls_chain
        params["smtp_tls_CAfile"] = ctx.tls_ca
    return params


def unsupported(node: Node) -> list[str]:
    """The node's fields a rendered Postfix cannot honour, as 'field: why'."""
    policy = node.policy
    found = []
    if policy.expn == 250:
        found.append("policy.expn: 250: Postfix has no EXPN command (it answers 502)")
    if policy.helo_rdns.value != "off":
        found.append(
            f"policy.helo_rdns: {policy.helo_rdns.value}: Postfix has no HELO-against-rDNS"
            " check; set it with settings: (smtpd_helo_restrictions) instead"
        )
    if policy.spf.value != "off":
        found.append(
            f"policy.spf: {policy.spf.value}: Postfix checks SPF through a policy"
            " service, which the postfix image does not have"
        )
    if policy.greylist is not None and policy.greylist.enabled:
        found.append(
            "policy.greylist: Postfix greylists through a policy service (postgrey),"
            " which the postfix image does not have"
        )
    return found


def settings(node: Node) -> dict[str, str]:
    """The node's `settings:` for its SMTP software: raw main.cf parameters, applied last."""
    return {str(k): str(v) for k, v in node.settings_for(Service.smtp).items()}


# a mailbox name that can be a Unix account (local(8) delivers to accounts)
_ACCOUNT = re.compile(r"^[a-z0-9_][a-z0-9_.-]*$")


def maildrop_domains(node: Node) -> dict[str, str]:
    """The multidrop boxes' domains: domain -> the mailbox (its Maildir's name) that
    takes all its mail."""
    return {
        str(d).lower(): name.replace("/", "_")
        for name, box in node.mailboxes.items()
        for d in box.domains
    }


def mailbox_accounts(node: Node) -> list[str]:
    """The mailboxes that get a Unix account, so that NAME@a-local-domain goes into
    them as it does on the built-in MTA (a single drop): those whose name is one."""
    return [n for n in node.mailboxes if _ACCOUNT.match(n) and not n.isdigit()]


def maildrop_params(ctx: RenderContext) -> dict[str, str]:
    """virtual(8) delivers each multidrop domain's mail, whatever the local part, into
    the mailbox's Maildir, the one Dovecot serves (MAIL_ROOT/NAME/), as the lab's uid,
    with a Delivered-To: of the recipient (what fetchmail's multidrop reads)."""
    domains = maildrop_domains(ctx.node)
    if not domains:
        return {}
    entries = ", ".join(f"@{d}={name}/" for d, name in domains.items())
    return {
        "virtual_mailbox_domains": ", ".join(domains),
        "virtual_mailbox_maps": f"inline:{{ {entries} }}",
        "virtual_mailbox_base": ctx.mail_root.rstrip("/"),
        "virtual_uid_maps": f"static:{ctx.uid}",
        "virtual_gid_maps": f"static:{ctx.gid}",
    }


def main_cf(ctx: RenderContext, connect_timeout: float = 3.0) -> dict[str, str]:
    """main.cf's parameters, in order."""
    node, topology = ctx.node, ctx.topology
    drops = maildrop_domains(node)  # virtual(8)'s: Postfix wants them out of mydestination
    local = [str(d) for d in node.local_domains if str(d).lower() not in drops]
    mydestination = ["$myhostname", "localhost", *local]
    retry = node.retry
    first, last = retry.intervals[0], max(retry.intervals)
    owned = lab_owned(ctx, connect_timeout)
    params: dict[str, str] = {
        "compatibility_level": "3.6",
        "myhostname": ctx.hostname,
        "mydomain": domain_of(ctx),
        "myorigin": "$mydomain",
        "mydestination": ", ".join(dict.fromkeys(mydestination)),
        "mynetworks": ", ".join(mynetworks(node, topology)),
        "relayhost": relayhost(node, topology),
        "smtpd_banner": "$myhostname ESMTP $mail_name",
        "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
        "biff": "no",
        "append_dot_mydomain": "no",
        "readme_directory": "no",
        "alias_maps": "hash:/etc/aliases",
        "alias_database": "hash:/etc/aliases",
        "mailbox_size_limit": "0",
        "message_size_limit": str(node.policy.max_size),
        "smtpd_recipient_limit": str(node.policy.max_recipients),
        "disable_vrfy_command": "yes" if node.policy.vrfy == 502 else "no",
        "hopcount_limit": str(node.policy.max_received),
        "queue_run_delay": seconds(first),
        "minimal_backoff_time": seconds(first),
        "maximal_backoff_time": seconds(max(first, last)),
        "delay_warning_time": seconds(retry.warn_after) if retry.warn_after else "0h",
        "maximal_queue_lifetime": seconds(retry.give_up_after),
        "bounce_queue_lifetime": seconds(retry.give_up_after),
        **owned,
    }
    params.update(tls_params(ctx))
    params.update(maildrop_params(ctx))
    if node.relay_domains:
        params["relay_domains"] = ", ".join(str(d) for d in node.relay_domains)
        if node.smarthost:  # relayhost would take them too: their MX, as built in
            entries = ", ".join(f"{d}=relay:{d}" for d in node.relay_domains)
            params["transport_maps"] = f"inline:{{ {entries} }}"
    if node.policy.verify_sender_domain:  # as the built-in MTA: 553 5.1.8, 450 on DNS failure
        params["smtpd_sender_restrictions"] = "reject_unknown_sender_domain"
        params["unknown_address_reject_code"] = "553"
    m = node.masquerade
    if m is not None:
        params["masquerade_domains"] = ", ".join(str(d) for d in m.domains)
        params["masquerade_classes"] = ", ".join(masquerade_classes(m))
        if generic_map(m) and m.envelope:
            params["smtp_generic_maps"] = "regexp:/etc/postfix/generic"
        elif generic_map(m) and m.header:
            # headers only (lg45's filter): smtp_generic_maps would rewrite the envelope
            # sender too, so the sender headers are rewritten on the way out by
            # smtp_header_checks (local mail keeps them, as with the generic map)
            params["smtp_header_checks"] = "regexp:/etc/postfix/header_checks"
    params.update(settings(node))
    return params


# the indexed tables a user's main.cf names among its files: postmap builds them
_TABLE = re.compile(r"\b(hash|btree|lmdb|cdb|dbm|sdbm):(/etc/postfix/([^\s,]+))")


def user_tables(files: dict[str, str]) -> list[str]:
    """`type:/etc/postfix/NAME` for each indexed table main.cf or master.cf names whose
    source NAME is one of the user's files, in order."""
    found: list[str] = []
    for name in ("main.cf", "master.cf"):
        for match in _TABLE.finditer(files.get(name, "")):
            if match[3] in files:
                found.append(f"{match[1]}:{match[2]}")
    return list(dict.fromkeys(found))


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
    for name in dict.fromkeys([u.lower() for u in ctx.node.users] + mailbox_accounts(ctx.node)):
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
        # the node's mailboxes, for the log readers this adapter made (filled by render:
        # a virtual(8) delivery's log line names the recipient, not the mailbox)
        self.maildrops = Maildrops()

    def render(self, ctx: RenderContext) -> dict[str, str]:
        self.maildrops.domains.clear()
        self.maildrops.domains.update(maildrop_domains(ctx.node))
        self.maildrops.names.clear()
        self.maildrops.names.update(n.lower() for n in ctx.node.mailboxes)
        files = {
            "/etc/aliases": render_aliases(ctx.node),
            "/etc/mailname": ctx.hostname + "\n",
            "/etc/maillab/postfix-users.sh": users_script(ctx),
        }
        if ctx.config_files:  # the user's own: as they are; postconf applies the lab's part
            for name, text in ctx.config_files.items():
                files[f"{CONFIG_DIR}/{name}"] = text
            return files
        files["/etc/postfix/main.cf"] = render_main_cf(main_cf(ctx, self.connect_timeout))
        if ctx.node.masquerade is not None and generic_map(ctx.node.masquerade):
            files["/etc/postfix/generic"] = generic_map(ctx.node.masquerade)
            if not ctx.node.masquerade.envelope:
                files["/etc/postfix/header_checks"] = header_checks(ctx.node.masquerade)
        return files

    def prepare_commands(self, ctx: RenderContext) -> list[list[str]]:
        commands = [["sh", "/etc/maillab/postfix-users.sh"]]
        if ctx.config_files:
            owned = {**lab_owned(ctx, self.connect_timeout), **settings(ctx.node)}
            commands.append(["postconf", "-e", *(f"{k}={v}" for k, v in owned.items())])
            commands += [["postmap", table] for table in user_tables(ctx.config_files)]
        commands += [["postconf", "-F", "*/*/chroot = n"], ["postalias", "/etc/aliases"]]
        return commands

    def start_command(self) -> list[str]:
        return ["postfix", "start-fg"]

    def stop_command(self) -> list[str] | None:
        return ["postfix", "stop"]

    def environment(self, faketime_file: str) -> dict[str, str]:
        return faketime_environment(faketime_file)

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

    def queued_content(self, queue_id: str) -> bytes | None:
        """A queued message's content read at once from its queue file (capture_queued:
        sent before its queue.queued event); None when the file is gone already."""
        return queue_file_content(Path(SPOOL), queue_id)

    def content_command(self, queue_id: str) -> list[str]:
        return ["postcat", "-bh", "-q", queue_id]

    def busy_paths(self) -> list[str]:
        return [f"{SPOOL}/maildrop", f"{SPOOL}/incoming", f"{SPOOL}/active"]

    def reset_paths(self) -> list[str]:
        """Every queue and its logs: emptied (daemon stopped) by `Lab.reset()`."""
        queues = ("maildrop", "incoming", "active", "deferred", "hold", "corrupt")
        logs = ("defer", "bounce", "trace", "flush", "saved")
        return [f"{SPOOL}/{name}" for name in (*queues, *logs)]

    def log_reader(self) -> PostfixLog:
        return PostfixLog(self.maildrops, Path(SPOOL))
