"""Exim 4 as a lab host's SMTP service (Docker backend): its adapter (lab.software.adapter).

exim4.conf is rendered from the node's fields (docs/real-mtas.md has the table):

- primary_hostname from the topology hostname, qualify_domain and local_domains from
  local_domains; the users get a Unix account each (one uid); aliases go to /etc/aliases,
  read by a redirect router;
- relay_from becomes the hostlist relay_from_hosts (network names become their subnets)
  that the RCPT ACL accepts relaying from; smarthost a manualroute router (a node name
  becomes its hostname);
- masquerade: rewrite rules (`begin rewrite`) with the flags the fields ask for (F for
  the envelope sender, f s r for From:, Sender:, Reply-To:, t c for To: and Cc:), applied
  on the remote_smtp transport (`headers_rewrite`, `return_path`) so that local mail
  keeps its addresses, as the built-in MTA's masquerade does;
- the retry schedule: a retry rule `* * F,T1,I1; F,T2,I2; ...` (each interval until the
  time it covers, the last until give_up_after), delay_warning from warn_after;
- STARTTLS with the lab CA's certificate (tls_certificate and tls_privatekey both name
  the key-and-chain PEM), vrfy/expn through their ACLs, the policy's limits;
- what the lab owns (also over a user's own exim4.conf, `lab_owned`): the host name,
  local deliveries into MAIL_ROOT/USER/ as Maildirs, the log (a FIFO the agent reads),
  libfaketime's variables (keep_environment), the lab CA's files, a short connect timeout.

The log lines become the lab's events (lab/software/exim_log.py), the queue listing
comes from `exim4 -bp` and the retry hints (`exim_dumpdb`), and lab time steps through
the retry hints' next tries (`due_command`, `run_queue_command`).
"""

from __future__ import annotations

import os
from typing import Any

from lab.software.adapter import RenderContext, faketime_environment, on_lab_time, programs_at_work
from lab.software.exim_log import RETRY_MARK, SPOOL, EximLog, parse_due, parse_queue
from lab.software.exim_userconf import apply_lab_part, user_config
from lab.topology.addressing import hostname_of
from lab.topology.model import Masquerade, Node, Service, Software, Topology

SOFTWARE = Software.exim
DESCRIPTION = "Exim 4, in a container (Docker backend)"
FAMILY = "exim"
CONFIG = "/etc/exim4/exim4.conf"
LOG_DIR = "/var/log/exim4"
MAINLOG = f"{LOG_DIR}/mainlog"  # a FIFO: the agent reads it (RealMta, log_path)
USERS_SCRIPT = "/etc/maillab/exim-users.sh"
# libfaketime preloaded by its bare name: Exim is setuid root, and glibc loads only a
# setuid library from the system directory then (images/exim/Dockerfile copies it there)
FAKETIME_LIBRARY = "libfaketime.so.1"
FAKETIME_VARIABLES = (
    "LD_PRELOAD",
    "FAKETIME_TIMESTAMP_FILE",
    "FAKETIME_NO_CACHE",
    "NO_FAKE_STAT",
    "FAKETIME_DONT_RESET",
)
LOG_SELECTOR = (
    "+millisec +pid +received_recipients +subject +sender_on_delivery"
    " +return_path_on_delivery +smtp_confirmation +tls_cipher +outgoing_port"
    " +delivery_size -host_lookup_failed"
)


# ---------------------------------------------------------------------------------------
# rendering (pure)


def seconds(value: float) -> str:
    """An Exim time value: whole seconds, at least 1."""
    return f"{max(1, round(value))}s"


def exim_list(items: list[str]) -> str:
    """A colon-separated Exim list (colons in items, IPv6, doubled)."""
    return " : ".join(item.replace(":", "::") for item in items)


def relay_hosts(node: Node, topology: Topology) -> list[str]:
    found = ["127.0.0.0/8"]
    for item in node.relay_from:
        if item in topology.networks:
            found.append(str(topology.networks[item].subnet))
        else:
            found.append(item)
    return list(dict.fromkeys(found))


def smarthost(node: Node, topology: Topology) -> tuple[str, int | None]:
    """The smarthost's name and port (None: 25); a node name becomes its hostname."""
    if not node.smarthost:
        return "", None
    host, _, port = node.smarthost.partition(":")
    if host in topology.nodes:
        host = hostname_of(topology, host)
    return host, int(port) if port else None


def retry_rule(node: Node) -> str:
    """`* * F,T1,I1; ...`: each interval until the time it covers (times since the
    host's first failure), the last one repeating until give_up_after."""
    retry = node.retry
    give_up = retry.give_up_after
    rules: list[str] = []
    covered = 0.0
    for interval in retry.intervals[:-1]:
        covered += interval
        if covered >= give_up:
            break
        rules.append(f"F,{seconds(covered)},{seconds(interval)}")
    rules.append(f"F,{seconds(give_up)},{seconds(retry.intervals[-1])}")
    return "* * " + "; ".join(rules)


def masquerade_rules(m: Masquerade) -> list[tuple[str, str]]:
    """(pattern, replacement) for each masqueraded domain (and its subdomains with
    entire_domain): `as` is a domain (user@as) or a whole address."""
    found = []
    for domain in m.domains:
        patterns = [f"*@{domain}"] + ([f"*@*.{domain}"] if m.entire_domain else [])
        target = m.as_ if "@" in m.as_ else f"$local_part@{m.as_}"
        found += [(p, target) for p in patterns if str(domain).lower() != m.as_.lower()]
    return found


def delay_warning(node: Node) -> str:
    """One warning after warn_after, as the built-in MTA sends (Exim's last time in the
    list repeats: the second one, past the give-up, never comes)."""
    retry = node.retry
    if not retry.warn_after:
        return "0s"
    return f"{seconds(retry.warn_after)} : {seconds(retry.warn_after + retry.give_up_after)}"


def header_flags(m: Masquerade) -> str:
    flags = "fsr" if m.header else ""
    return flags + ("tc" if m.recipients else "")


def unsupported(node: Node) -> list[str]:
    """The node's fields a rendered Exim cannot honour, as 'field: why'."""
    policy = node.policy
    found = []
    if policy.helo_rdns.value != "off":
        found.append(
            f"policy.helo_rdns: {policy.helo_rdns.value}: the rendered Exim has no"
            " HELO-against-rDNS check; write it in your own exim4.conf (config:)"
        )
    if policy.spf.value != "off":
        found.append(f"policy.spf: {policy.spf.value}: exim4-daemon-light has no SPF support")
    if policy.greylist is not None and policy.greylist.enabled:
        found.append("policy.greylist: Exim has no greylisting of its own")
    if node.relay_domains:
        found.append(
            "relay_domains: the rendered Exim has no relay_to_domains router yet; write it in"
            " your own exim4.conf (config:)"
        )
    return found


def settings(node: Node) -> dict[str, str]:
    """The node's `settings:` for its SMTP software: raw main-section options, last."""
    return {str(k): str(v) for k, v in node.settings_for(Service.smtp).items()}


def tls_options(ctx: RenderContext) -> dict[str, str]:
    """The lab CA's certificate for the host: one PEM holds the key and the chain."""
    if not ctx.tls_chain:
        return {"tls_advertise_hosts": ""}
    return {"tls_certificate": ctx.tls_chain, "tls_privatekey": ctx.tls_chain}


def lab_owned(ctx: RenderContext) -> dict[str, str]:
    """The main-section options the lab owns, in a rendered exim4.conf and over a user's
    own: the host's name, the log (the agent reads it), lab time (libfaketime's variables
    kept in the environment of every Exim process), the lab CA's certificate."""
    owned = {
        "primary_hostname": ctx.hostname,
        "log_file_path": f"{LOG_DIR}/%slog",
        "log_selector": LOG_SELECTOR,
        "keep_environment": " : ".join(FAKETIME_VARIABLES),
        "disable_ipv6": "true",
    }
    if ctx.tls_chain:
        owned.update(tls_options(ctx))
    return owned


def main_section(ctx: RenderContext) -> dict[str, str]:
    node, topology = ctx.node, ctx.topology
    policy = node.policy
    domains = [str(d) for d in node.local_domains]
    qualify = domains[0] if domains else (ctx.hostname.partition(".")[2] or ctx.hostname)
    local = list(dict.fromkeys([*domains, ctx.hostname, "localhost"]))
    options: dict[str, str] = {
        "domainlist local_domains": exim_list(local),
        "hostlist relay_from_hosts": exim_list(relay_hosts(node, topology)),
        "qualify_domain": qualify,
        "smtp_banner": "$smtp_active_hostname ESMTP Exim $version_number $tod_full",
        "acl_smtp_mail": "acl_check_mail",
        "acl_smtp_rcpt": "acl_check_rcpt",
        "acl_smtp_vrfy": "acl_check_vrfy",
        "acl_smtp_expn": "acl_check_expn",
        "message_size_limit": str(policy.max_size),
        "recipients_max": str(policy.max_recipients),
        "received_headers_max": str(policy.max_received),
        "delay_warning": delay_warning(node),
        **lab_owned(ctx),
    }
    if ctx.tls_chain and policy.starttls.value != "off":
        options["tls_advertise_hosts"] = "*"
    else:
        options["tls_advertise_hosts"] = ""
        options.pop("tls_certificate", None)
        options.pop("tls_privatekey", None)
    options.update(settings(node))
    return options


def acl_section(node: Node) -> str:
    policy = node.policy
    # Exim answers VRFY itself once the ACL accepts it (250 for an address it can route)
    vrfy = "  deny message = 502 VRFY command disabled\n" if policy.vrfy == 502 else "  accept\n"
    expn = "  accept\n" if policy.expn == 250 else "  deny message = 502 EXPN command disabled\n"
    sender = ""
    if policy.verify_sender_domain:  # as the built-in MTA: 553 5.1.8 when the domain is unknown
        sender = (
            "  deny !sender_domains = +local_domains\n"
            "       !senders = :\n"
            "       condition = ${if eq{${lookup dnsdb{defer_never,mxh=$sender_address_domain}}"
            "${lookup dnsdb{defer_never,a=$sender_address_domain}}}{}}\n"
            "       message = 553 5.1.8 <$sender_address>: Sender address rejected:"
            " Domain not found\n"
        )
    starttls = ""
    if node.policy.starttls.value == "require":
        starttls = (
            "  deny !encrypted = *\n       !hosts = 127.0.0.1\n"
            "       message = 530 5.7.0 Must issue a STARTTLS command first\n"
        )
    return (
        "begin acl\n\n"
        "acl_check_mail:\n"
        f"{starttls}{sender}"
        "  accept\n\n"
        "acl_check_rcpt:\n"
        "  accept hosts = :\n"
        "  accept domains = +local_domains\n"
        "         verify = recipient\n"
        "  deny domains = +local_domains\n"
        "       message = 550 5.1.1 <$local_part@$domain>: Recipient address rejected:"
        " User unknown\n"
        "  accept hosts = +relay_from_hosts\n"
        "  deny message = 554 5.7.1 <$local_part@$domain>: Relay access denied\n\n"
        "acl_check_vrfy:\n"
        f"{vrfy}\n"
        "acl_check_expn:\n"
        f"{expn}\n"
    )


def routers_section(ctx: RenderContext) -> str:
    node = ctx.node
    host = smarthost(node, ctx.topology)[0]
    users = [u.lower() for u in node.users]
    out = ["begin routers\n"]
    if host:
        out.append(
            "smarthost:\n"
            "  driver = manualroute\n"
            "  domains = ! +local_domains\n"
            "  transport = remote_smtp\n"
            f"  route_list = * {host}\n"
            "  no_more\n"
        )
    else:
        out.append(
            "dnslookup:\n"
            "  driver = dnslookup\n"
            "  domains = ! +local_domains\n"
            "  transport = remote_smtp\n"
            "  ignore_target_hosts = 0.0.0.0 : 127.0.0.0/8\n"
            "  no_more\n"
        )
    out.append(
        "system_aliases:\n"
        "  driver = redirect\n"
        "  domains = +local_domains\n"
        "  allow_fail\n"
        "  allow_defer\n"
        "  data = ${lookup{$local_part}lsearch{/etc/aliases}}\n"
    )
    if users:
        out.append(
            "local_user:\n"
            "  driver = accept\n"
            "  domains = +local_domains\n"
            f"  local_parts = {exim_list(users)}\n"
            "  transport = local_maildir\n"
        )
    return "\n".join(out) + "\n"


def transports_section(ctx: RenderContext, connect_timeout: float) -> str:
    node = ctx.node
    port = smarthost(node, ctx.topology)[1]
    remote = [
        "remote_smtp:",
        "  driver = smtp",
        f"  connect_timeout = {seconds(connect_timeout)}",
    ]
    if port:
        remote.append(f"  port = {port}")
    tls = node.policy.tls_outbound
    if tls == "off" or not ctx.tls_chain:
        remote.append("  hosts_avoid_tls = *")
    else:
        remote.append(f"  tls_verify_certificates = {ctx.tls_ca}")
        if tls == "require":
            remote += ["  hosts_require_tls = *", "  tls_verify_hosts = *"]
        else:
            remote.append("  tls_try_verify_hosts = *")
    m = node.masquerade
    if m is not None:
        rules = masquerade_rules(m)
        flags = header_flags(m)
        if rules and flags:
            remote.append("  headers_rewrite = " + " : ".join(f"{p} {t} {flags}" for p, t in rules))
        if rules and m.envelope:
            remote.append("  return_path = " + return_path(rules))
    return "begin transports\n\n" + "\n".join(remote) + "\n\n" + local_transport(ctx) + "\n"


def return_path(rules: list[tuple[str, str]]) -> str:
    """The envelope sender of outgoing mail, rewritten as the masquerade says."""
    expr = "$return_path"
    for pattern, target in reversed(rules):
        domain = pattern.partition("@")[2]
        test = (
            f"match_domain{{$sender_address_domain}}{{{domain}}}"
            if domain.startswith("*.")
            else f"eqi{{$sender_address_domain}}{{{domain}}}"
        )
        value = target.replace("$local_part", "$sender_address_local_part")
        expr = f"${{if {test} {{{value}}}{{{expr}}}}}"
    return expr


def local_transport(ctx: RenderContext) -> str:
    """The lab's local delivery: MAIL_ROOT/USER/ as a Maildir, as one uid."""
    return (
        "local_maildir:\n"
        "  driver = appendfile\n"
        "  maildir_format\n"
        f"  directory = {ctx.mail_root}/$local_part_data\n"
        "  create_directory\n"
        "  directory_mode = 0700\n"
        f"  user = {ctx.uid}\n"
        f"  group = {ctx.gid}\n"
        "  mode = 0600\n"
        "  delivery_date_add\n"
        "  envelope_to_add\n"
        "  return_path_add\n"
    )


def render_main(options: dict[str, str]) -> str:
    return "\n".join(f"{key} = {value}".rstrip() for key, value in options.items()) + "\n"


def render_config(ctx: RenderContext, connect_timeout: float = 3.0) -> str:
    return (
        "# rendered by maillab from the topology (lab/software/exim.py)\n"
        + render_main(main_section(ctx))
        + "\n"
        + acl_section(ctx.node)
        + routers_section(ctx)
        + transports_section(ctx, connect_timeout)
        + "begin retry\n\n"
        + retry_rule(ctx.node)
        + "\n\nbegin rewrite\n\n"
    )


def render_aliases(node: Node) -> str:
    lines = ["# rendered by maillab from the topology's aliases"]
    names = {name.lower() for name in node.aliases}
    for name in ("postmaster", "mailer-daemon"):
        if name not in names:
            lines.append(f"{name}: root")
    for name, targets in node.aliases.items():
        lines.append(f"{name.lower()}: {', '.join(targets)}")
    return "\n".join(lines) + "\n"


def users_script(ctx: RenderContext) -> str:
    """Unix accounts for the users (one uid, home MAIL_ROOT/USER: a user's own
    exim4.conf can use check_local_user and $home), the mail root writable by that uid,
    and the log directory with the main log as a FIFO (made by the agent)."""
    lines = [
        "set -e",
        f"getent group maillab >/dev/null || groupadd -g {ctx.gid} maillab",
        f"mkdir -p {ctx.mail_root}",
        f"chmod 1777 {ctx.mail_root}",
        f"mkdir -p {LOG_DIR}",
        f"chown Debian-exim:adm {LOG_DIR} 2>/dev/null || chown Debian-exim {LOG_DIR}",
        f"chmod 0775 {LOG_DIR}",
    ]
    if ctx.tls_chain:  # Exim reads its key as its own user, after dropping root
        lines += [
            f"chmod 0755 {os.path.dirname(ctx.tls_chain)}",
            f"chgrp Debian-exim {ctx.tls_chain}",
            f"chmod 0640 {ctx.tls_chain}",
        ]
    for user in ctx.node.users:
        name = user.lower()
        lines.append(
            f"id -u {name} >/dev/null 2>&1 || useradd -M -N -o -u {ctx.uid} -g {ctx.gid}"
            f" -d {ctx.mail_root}/{name} -s /usr/sbin/nologin {name}"
        )
        # a router's check_local_user sets $home: transports start in it
        lines.append(f"mkdir -p {ctx.mail_root}/{name}")
        lines.append(f"chown {ctx.uid}:{ctx.gid} {ctx.mail_root}/{name}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# the adapter


class EximAdapter:
    software = SOFTWARE
    family = FAMILY

    def __init__(self, connect_timeout: float = 3.0):
        self.connect_timeout = connect_timeout
        self.env: dict[str, str] = {}

    def render(self, ctx: RenderContext) -> dict[str, str]:
        files = {
            "/etc/aliases": render_aliases(ctx.node),
            "/etc/mailname": ctx.hostname + "\n",
            USERS_SCRIPT: users_script(ctx),
        }
        if ctx.config_files:
            text = user_config(ctx.config_files)
            owned = {**lab_owned(ctx), **settings(ctx.node)}
            files[CONFIG] = apply_lab_part(text, ctx, owned, self.connect_timeout)
        else:
            files[CONFIG] = render_config(ctx, self.connect_timeout)
        return files

    def prepare_commands(self, ctx: RenderContext) -> list[list[str]]:
        # the configuration is checked before the daemon starts: a bad one fails `up`
        return [["sh", USERS_SCRIPT], ["exim4", "-C", CONFIG, "-bV"]]

    def start_command(self) -> list[str]:
        # queue runs on real time every 30 minutes, as a hub would; lab time drives the
        # retries through run_queue_command at each due time
        return ["exim4", "-bdf", "-q30m"]

    def stop_command(self) -> list[str] | None:
        return None

    def environment(self, faketime_file: str) -> dict[str, str]:
        self.env = faketime_environment(faketime_file, FAKETIME_LIBRARY)
        return dict(self.env)

    def _lab_time(self, command: list[str]) -> list[str]:
        """A command that delivers runs on lab time, as the daemon does."""
        return on_lab_time(self.env, command)

    def flush_command(self) -> list[str]:
        return self._lab_time(["exim4", "-qff"])

    def retry_command(self, queue_id: str) -> list[str]:
        return self._lab_time(["exim4", "-M", queue_id])

    def run_queue_command(self) -> list[str]:
        """A queue run on lab time: each message whose host's retry time has come is
        tried (it returns when each was)."""
        return self._lab_time(["exim4", "-q"])

    def due_command(self) -> list[str]:
        return ["sh", "-c", f"exim4 -bpc; exim_dumpdb {SPOOL} retry 2>/dev/null; true"]

    def parse_due(self, output: str) -> list[float]:
        return parse_due(output)

    def deferred_path(self) -> str:
        return f"{SPOOL}/input"

    def log_path(self) -> str:
        return MAINLOG

    def queue_command(self) -> list[str]:
        return [
            "sh",
            "-c",
            f"exim4 -bp; echo '{RETRY_MARK}'; exim_dumpdb {SPOOL} retry 2>/dev/null; true",
        ]

    def parse_queue(self, output: str, log: Any) -> list[dict[str, Any]]:
        return parse_queue(output, log)

    def content_command(self, queue_id: str) -> list[str]:
        return ["sh", "-c", 'exim4 -Mvh "$1" && echo && exim4 -Mvb "$1"', "sh", queue_id]

    def busy_paths(self) -> list[str]:
        return []

    def reset_paths(self) -> list[str]:
        """The queue, its message logs and the retry hints: emptied (daemon stopped) by
        `Lab.reset()`."""
        return [f"{SPOOL}/input", f"{SPOOL}/msglog", f"{SPOOL}/db"]

    def busy(self, daemon_pid: int | None) -> bool:
        """Exim processes at work besides the listening daemon: receiving, delivering,
        running the queue."""
        return programs_at_work(("exim4",), daemon_pid)

    def log_reader(self) -> EximLog:
        return EximLog()
