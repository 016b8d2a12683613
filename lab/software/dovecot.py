"""Dovecot as a lab host's POP3 server (Docker backend): its adapter (lab.software.server).

dovecot.conf is rendered from the node (docs/real-mtas.md has the table):

- the node's `mailboxes:` become a passwd-file passdb (the plain passwords; the login
  name is matched without regard to case, as the built-in server does, and mapped back
  to the mailbox's own name, which names its Maildir); mailboxes that allow APOP are in
  one passwd-file, the others in a second one restricted to plain logins, so APOP is
  refused for them as the built-in server refuses it; a static userdb gives every
  mailbox the lab's one mail uid/gid (5000, as Postfix's local deliveries use);
- `mail_location = maildir:MAIL_ROOT/%u`: the Maildirs the node's MTA delivers into,
  where `maillab mailbox` reads them; UIDLs are the Maildir keys (`pop3_uidl_format =
  %f`), as the built-in server's are;
- `auth_mechanisms = plain apop` when some mailbox allows APOP (the greeting then carries
  the APOP timestamp), `disable_plaintext_auth = no`;
- STLS with a certificate of the lab CA for the host's names and addresses (`ssl = yes`)
  when the lab has a CA, `ssl = no` otherwise;
- the log on standard error (the agent reads it), with the mail_log plugin logging each
  expunged message, and the logout line's counters in a format the reader knows.

A user's own dovecot.conf (`config: {pop3: FILE}`) is included as it is, between the
lab's mailboxes (consulted first) and the settings the lab owns (applied after it, so
they win); the node's `settings:` come last, as raw `key = value` lines.

Its log lines become the built-in POP3 server's events where Dovecot logs the same
thing (`DovecotLog`): pop3.login (ok or not), pop3.dele (one per message removed, at the
end of the session), pop3.quit (with counters), pop3.disconnect, pop3.stls.
"""

from __future__ import annotations

import re
from typing import Any

from lab.software.adapter import Event, RenderContext
from lab.topology.model import Service, Software

SOFTWARE = Software.dovecot
DESCRIPTION = "Dovecot's POP3 server, in a container (Docker backend)"
FAMILY = "dovecot"
PORT = 110

CONF_DIR = "/etc/maillab/dovecot"
CONF = f"{CONF_DIR}/dovecot.conf"
USERS_APOP = f"{CONF_DIR}/users-apop"
USERS_PLAIN = f"{CONF_DIR}/users-plain"
MAILDIRS = f"{CONF_DIR}/maildirs.sh"
# A user's own file goes beside Debian's, so that its `!include conf.d/*.conf` finds them.
USER_CONF = "/etc/dovecot/maillab-user.conf"

LOGOUT_FORMAT = "top=%t/%p, retr=%r/%b, del=%d/%m, size=%s"


# ---------------------------------------------------------------------------------------
# rendering (pure)


def _password_field(password: str) -> str:
    """A passwd-file password: {PLAIN} when it fits the file's syntax, base64 otherwise
    (Dovecot decodes it for APOP's digest all the same)."""
    if password and re.fullmatch(r"[!-9;-~]+", password):  # printable, no ':' or space
        return "{PLAIN}" + password
    import base64

    return "{PLAIN.b64}" + base64.b64encode(password.encode("utf-8")).decode("ascii")


def passwd_files(ctx: RenderContext) -> tuple[str, str]:
    """(the mailboxes that allow APOP, the others) as passwd-file lines: the login name in
    lower case, the password, and `user=NAME` so that %u is the mailbox's own name."""
    apop: list[str] = []
    plain: list[str] = []
    seen: set[str] = set()
    for name, box in ctx.node.mailboxes.items():
        login = name.lower()
        if login in seen or ":" in name or "\n" in name:
            continue
        seen.add(login)
        line = f"{login}:{_password_field(box.password)}::::::user={name}"
        (apop if box.apop else plain).append(line)
    return "".join(f"{x}\n" for x in apop), "".join(f"{x}\n" for x in plain)


def listen_addresses(ctx: RenderContext) -> list[str]:
    """The host's addresses, and loopback (where the agent waits for the greeting)."""
    return list(dict.fromkeys([*ctx.addresses.values(), "127.0.0.1"]))


def owned_settings(ctx: RenderContext) -> dict[str, str]:
    """The top-level settings the lab owns, whatever a user's configuration says."""
    node = ctx.node
    mechanisms = ["plain"]
    if any(box.apop for box in node.mailboxes.values()):
        mechanisms.append("apop")
    params = {
        "protocols": "pop3",
        "listen": ", ".join(listen_addresses(ctx)),
        "mail_location": f"maildir:{ctx.mail_root.rstrip('/')}/%u",
        "auth_username_format": "%Lu",
        "auth_mechanisms": " ".join(mechanisms),
        "disable_plaintext_auth": "no",
        "log_path": "/dev/stderr",
        "info_log_path": "/dev/stderr",
        "debug_log_path": "/dev/stderr",
    }
    if ctx.tls_chain:
        params["ssl"] = "yes"
        params["ssl_cert"] = f"<{ctx.tls_chain}"
        params["ssl_key"] = f"<{ctx.tls_chain}"
    else:
        params["ssl"] = "no"
    return params


def default_settings(ctx: RenderContext) -> dict[str, str]:
    """Settings the lab chooses that a user's configuration may change."""
    return {
        "hostname": ctx.hostname,  # the APOP timestamp's @host
        "auth_verbose": "yes",
        "pop3_uidl_format": "%f",
        "first_valid_uid": str(ctx.uid),
    }


def _has_mail_log(user_config: str) -> bool:
    return bool(re.search(r"^\s*mail_plugins\s*=.*\bmail_log\b", user_config, re.MULTILINE))


def render_conf(ctx: RenderContext, user_config: str | None = None) -> str:
    """dovecot.conf: the lab's defaults and mailboxes, the user's file, what the lab owns,
    the node's raw settings."""
    apop, plain = passwd_files(ctx)
    lines = [
        "# rendered by maillab from the topology (lab/software/dovecot.py)",
        "",
        "# defaults (a user's own configuration, included below, may change them)",
    ]
    lines += [f"{key} = {value}" for key, value in default_settings(ctx).items()]
    lines += ["", "# the topology's mailboxes, consulted before any of a user's configuration"]
    if apop:
        lines += [
            "passdb {",
            "  driver = passwd-file",
            f"  args = scheme=PLAIN {USERS_APOP}",
            "}",
        ]
    if plain:
        lines += [
            "passdb {",
            "  driver = passwd-file",
            "  mechanisms = plain login",
            f"  args = scheme=PLAIN {USERS_PLAIN}",
            "}",
        ]
    lines += [
        "userdb {",
        "  driver = static",
        f"  args = uid={ctx.uid} gid={ctx.gid}",
        "}",
    ]
    if user_config is not None:
        lines += [
            "",
            "# the node's own configuration (config: {pop3: ...})",
            f"!include {USER_CONF}",
        ]
    lines += ["", "# what the lab owns"]
    lines += [f"{key} = {value}" for key, value in owned_settings(ctx).items()]
    plugins = (
        "$mail_plugins"
        if user_config and _has_mail_log(user_config)
        else ("$mail_plugins notify mail_log")
    )
    lines += [
        "service pop3-login {",
        "  inet_listener pop3 {",
        f"    port = {PORT}",
        "  }",
        "  inet_listener pop3s {",
        "    port = 0",
        "  }",
        "}",
        "protocol pop3 {",
        f"  mail_plugins = {plugins}",
        f"  pop3_logout_format = {LOGOUT_FORMAT}",
        "}",
        "plugin {",
        "  mail_log_events = expunge",
        "  mail_log_fields = uid box msgid size",
        "}",
    ]
    settings = ctx.node.settings_for(Service.pop3)
    if settings:
        lines += ["", "# the node's settings: {pop3: ...}"]
        lines += [f"{key} = {value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def maildirs_script(ctx: RenderContext) -> str:
    """Each mailbox's Maildir, made before the MTA delivers into it and owned by the mail
    uid Dovecot reads it as."""
    root = ctx.mail_root.rstrip("/")
    lines = ["set -e", f"mkdir -p {root}"]
    for name in ctx.node.mailboxes:
        box = f"{root}/{name.replace('/', '_')}"
        lines.append(f"mkdir -p '{box}/tmp' '{box}/new' '{box}/cur'")
        lines.append(f"chown -R {ctx.uid}:{ctx.gid} '{box}'")
    return "\n".join(lines) + "\n"


class DovecotAdapter:
    software = SOFTWARE
    family = FAMILY
    service = Service.pop3
    port = PORT
    greeting = b"+OK"

    def __init__(self, user_config: str | None = None):
        self.user_config = user_config

    def render(self, ctx: RenderContext) -> dict[str, str]:
        apop, plain = passwd_files(ctx)
        files = {
            CONF: render_conf(ctx, self.user_config),
            USERS_APOP: apop,
            USERS_PLAIN: plain,
            MAILDIRS: maildirs_script(ctx),
        }
        if self.user_config is not None:
            files[USER_CONF] = self.user_config
        return files

    def prepare_commands(self, ctx: RenderContext) -> list[list[str]]:
        return [["sh", MAILDIRS]]  # the passwd-files stay readable: auth runs as dovecot

    def start_command(self) -> list[str]:
        return ["dovecot", "-F", "-c", CONF]

    def stop_command(self) -> list[str] | None:
        return None  # SIGTERM: the master stops its processes and exits

    def log_reader(self) -> DovecotLog:
        return DovecotLog()


# ---------------------------------------------------------------------------------------
# the log


_LOGIN = re.compile(
    r"pop3-login: Info: Login: user=<(?P<user>[^>]*)>, method=(?P<method>[\w-]+),"
    r" rip=(?P<rip>[^,]+), lip=(?P<lip>[^,]+)(?P<rest>.*)$"
)
_AUTH_FAILED = re.compile(
    r"pop3-login: Info: (?P<what>[^()]*?)\s*\(auth failed, (?P<attempts>\d+) attempts?"
    r"[^)]*\): user=<(?P<user>[^>]*)>, method=(?P<method>[\w-]+), rip=(?P<rip>[^,]+),"
    r" lip=(?P<lip>[^,]+)(?P<rest>.*)$"
)
_SESSION = re.compile(r"pop3\((?P<user>[^)]*)\)(?:<[^>]*>)*: (?P<level>\w+): (?P<text>.*)$")
_EXPUNGE = re.compile(
    r"expunge: box=(?P<box>[^,]*), uid=(?P<uid>\d+), msgid=(?P<msgid>[^,]*), size=(?P<size>\d+)"
)
_LOGOUT = re.compile(
    r"Disconnected: (?P<reason>.*?)\s*top=(?P<top>\d+)/(?P<top_bytes>\d+),"
    r" retr=(?P<retr>\d+)/(?P<retr_bytes>\d+), del=(?P<deleted>\d+)/(?P<messages>\d+),"
    r" size=(?P<size>\d+)"
)
_PROBLEM = re.compile(
    r"(?P<process>[\w-]+(?:\([^)]*\))?)(?:<[^>]*>)*: (?P<level>Error|Fatal|Panic): (?P<text>.*)$"
)


def _mechanism(method: str) -> str:
    """The built-in server's names: USER (USER/PASS, logged by Dovecot as PLAIN), APOP."""
    return "APOP" if method.upper() == "APOP" else "USER" if method.upper() == "PLAIN" else method


class DovecotLog:
    """Dovecot's log lines -> the built-in POP3 server's events, where they say the same."""

    def feed(self, line: str, now: float) -> list[Event]:
        match = _LOGIN.search(line)
        if match:
            tls = bool(re.search(r",\s*TLS\b", match["rest"]))
            events = []
            if tls:
                events.append(Event("pop3.stls", {"peer": match["rip"]}))
            events.append(
                Event(
                    "pop3.login",
                    {
                        "peer": match["rip"],
                        "local": match["lip"],
                        "user": match["user"],
                        "ok": True,
                        "mechanism": _mechanism(match["method"]),
                        "tls": tls,
                    },
                )
            )
            return events
        match = _AUTH_FAILED.search(line)
        if match:
            return [
                Event(
                    "pop3.login",
                    {
                        "peer": match["rip"],
                        "local": match["lip"],
                        "user": match["user"],
                        "ok": False,
                        "mechanism": _mechanism(match["method"]),
                        "reason": "authentication failed",
                        "attempts": int(match["attempts"]),
                    },
                )
            ]
        match = _SESSION.search(line)
        if match and match["level"] == "Info":
            return self._session(match["user"], match["text"])
        match = _PROBLEM.search(line)
        if match:
            return [
                Event(
                    "daemon.error",
                    {
                        "software": SOFTWARE.value,
                        "process": match["process"],
                        "level": match["level"].lower(),
                        "error": match["text"],
                    },
                )
            ]
        return []

    def _session(self, user: str, text: str) -> list[Event]:
        match = _EXPUNGE.match(text)
        if match:
            data: dict[str, Any] = {
                "user": user,
                "imap_uid": int(match["uid"]),
                "message_id": match["msgid"],
                "size": int(match["size"]),
            }
            return [Event("pop3.dele", data)]
        match = _LOGOUT.match(text)
        if match:
            counters = {
                "deleted": int(match["deleted"]),
                "retrieved": int(match["retr"]),
                "retrieved_bytes": int(match["retr_bytes"]),
                "top": int(match["top"]),
                "messages": int(match["messages"]),
            }
            reason = match["reason"]
            if reason.startswith("Logged out"):
                return [Event("pop3.quit", {"user": user, **counters})]
            return [Event("pop3.disconnect", {"user": user, "reason": reason, **counters})]
        if text.startswith("Disconnected"):
            return [Event("pop3.disconnect", {"user": user, "reason": text})]
        return []
