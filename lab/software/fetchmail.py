"""fetchmail as a node's fetch service (the Docker backend): its rcfiles, its command and
environment, and its output read into the built-in fetcher's events.

fetchmail is a client, not a daemon: the agent (lab/backends/docker/fetchrun.py) runs
`fetchmail -f RCFILE --nodetach` once per poll, as ip-up or cron would, and waits for it.
Each fetch job of the node gets its own rcfile (the lab's globals and one `poll` entry),
so every run is one job's: its events are that job's, and each job polls on its own
interval (fetchmail's daemon mode would have one interval for all). For seed nelug's
multidrop box:

    set postmaster "postmaster"
    set no bouncemail
    poll mail.uklinux.net with proto POP3 service 110 auth password
        aka shofar.uklinux.net no dns envelope "Delivered-To:"
      user "shofar" there with password "s3cret"
        to eddy nelug=eddy NELUG-admin nelug-approval=eddy NELUG-list root keith here
        options flush sslcertck sslcertfile "/etc/maillab/fetchmail/lab-ca.pem"
        smtphost 192.168.10.1/25 smtpaddress shofar.org.uk

What the lab sets, and why:

- `service 110`: slim images have no /etc/services to look "pop3" up in;
- `auth password`: USER/PASS, as the built-in fetcher logs in;
- `smtphost ADDRESS/25` (the node's own address not behind a link) and `smtpaddress
  DOMAIN` (the node's first local domain, else its host name): given an address as
  smtphost fetchmail would send RCPT TO:<user@ADDRESS>;
- `no dns` and `aka` (the job's, and its server name): multidrop names count in those
  domains only, as in the built-in fetcher; `envelope "Delivered-To:"`, the header the
  lab's ISPs write one per recipient;
- `sslcertck` and `sslcertfile` with the lab CA when the server offers STLS (a lab node
  with a POP3 service; any server with `stls: true`): fetchmail 6.4 upgrades whenever
  STLS is offered and checks the certificate; `sslcommonname` when the job names the
  server by an alias (a CNAME) and the certificate names its host;
- `set no bouncemail` (the built-in fetcher never bounces; refused mail stays on the
  server), the job's `postmaster` as `set postmaster`, `flush` (or `keep` and `uidl`);
- `settings: {fetch: {...}}`: more global `set` lines (`yes`: `set KEY`, `no`: `set no
  KEY`, otherwise `set KEY VALUE`), except what the lab owns (LAB_OWNED).

With `config: {fetch: .fetchmailrc}` the user's own rcfile runs instead, as one job, with
only the lab-owned globals (daemon, logfile, syslog, idfile, pidfile) taken out; the lab
CA is trusted through SSL_CERT_FILE.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.errors import LabError
from lab.software.adapter import FAKETIME_LIBRARY, Event
from lab.topology.addressing import hostname_of
from lab.topology.model import FetchJob, Node, Service, Topology
from lab.topology.records import RecordTable

RC_DIR = "/etc/maillab/fetchmail"  # the rendered rcfiles and the lab CA, in the container
CA_FILE = f"{RC_DIR}/lab-ca.pem"
POP3_PORT = 110
SMTP_PORT = 25
DEFAULT_POLL = 300.0  # a user's own rcfile polls every 5 minutes unless the jobs say

# Global options the lab owns: the run is one poll in the foreground, its log on stdout,
# its UID and lock files in the host's state directory.
LAB_OWNED = ("daemon", "logfile", "syslog", "idfile", "pidfile")

# fetchmail's exit codes (fetchmail(1), EXIT CODES) -> the built-in fetcher's stages.
EXIT_STAGES: dict[int, tuple[str, str]] = {
    2: ("connect", "socket error"),
    3: ("login", "authentication failed"),
    4: ("pop3", "protocol error"),
    5: ("config", "syntax error in the rcfile"),
    6: ("config", "bad permissions on the rcfile"),
    7: ("pop3", "the server reported an error"),
    8: ("lock", "another fetchmail is running"),
    9: ("login", "the server is locked"),
    10: ("smtp", "SMTP failure"),
    11: ("resolve", "DNS error"),
    12: ("smtp", "BSMTP error"),
    13: ("fetch", "fetch limit reached"),
    14: ("config", "server busy"),
}


@dataclass(frozen=True)
class FetchContext:
    """What the rcfiles are rendered from: the node, its topology and lab facts."""

    name: str
    node: Node
    topology: Topology
    hostname: str
    addresses: dict[str, str]  # network -> this host's address
    state_dir: str  # the host's state directory (UID and lock files go under fetch/)
    records: RecordTable | None = None  # the lab DNS, to follow a server's CNAME
    ca_file: str = CA_FILE
    config_text: str | None = None  # the user's rcfile as the lab read it (else read here)


@dataclass(frozen=True)
class FetchRun:
    """One fetchmail run: a job's rcfile (or the user's), as the agent starts it."""

    label: str  # the job: USER@SERVER, as the built-in fetcher names it
    server: str
    user: str
    mode: str  # single-drop, multi-drop, or rcfile (the user's own)
    keep: bool
    poll: float | None  # seconds between polls while the links are up; None: never
    rcfile: str
    idfile: str
    pidfile: str

    def start_data(self) -> dict[str, Any]:
        return {
            "job": self.label,
            "server": self.server,
            "user": self.user,
            "mode": self.mode,
            "keep": self.keep,
        }


@dataclass
class FetchmailPlan:
    files: dict[str, str] = field(default_factory=dict)  # path -> content (mode 0600)
    runs: list[FetchRun] = field(default_factory=list)


# ---------------------------------------------------------------------------------------
# rendering


def job_label(job: FetchJob) -> str:
    return f"{job.user}@{job.server}"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9@._+-]", "_", name)


_BARE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+@-]*$")


def quote(value: str) -> str:
    """A string for the rcfile: double-quoted, with backslash escapes."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def word(value: str) -> str:
    """A name in a `to` list: bare when fetchmail reads it so, quoted otherwise."""
    return value if _BARE.match(value) and value.lower() not in _KEYWORDS else quote(value)


_KEYWORDS = {"here", "there", "is", "to", "options", "user", "username", "poll", "with"}


def local_address(ctx: FetchContext) -> str:
    """The host's own address for SMTP to itself: one not behind a link, if any."""
    linked = {link.network for link in ctx.topology.links.values() if link.node == ctx.name}
    for network, address in ctx.addresses.items():
        if network not in linked:
            return address
    return next(iter(ctx.addresses.values()), "127.0.0.1")


def smtp_domain(ctx: FetchContext) -> str:
    return ctx.node.local_domains[0] if ctx.node.local_domains else ctx.hostname


def poll_name(ctx: FetchContext, job: FetchJob) -> str:
    """The name fetchmail polls: a node's host name, or the job's DNS name."""
    if job.server in ctx.topology.nodes:
        return hostname_of(ctx.topology, job.server)
    return job.server


def _server_node(ctx: FetchContext, name: str) -> tuple[str | None, str]:
    """(the lab node serving `name`, the host name its certificate names): the name's
    CNAMEs followed in the lab DNS."""
    hosts = {hostname_of(ctx.topology, n).lower(): n for n in ctx.topology.nodes}
    canonical = name.lower().rstrip(".")
    if ctx.records is not None:
        for _owner, rtype, value in ctx.records.lookup(canonical, "A").records:
            if rtype == "CNAME":
                canonical = str(value).lower().rstrip(".")
    node = hosts.get(canonical)
    return node, canonical


def _offers_stls(ctx: FetchContext, node: str | None) -> bool:
    return node is not None and Service.pop3 in ctx.topology.nodes[node].service_set()


def _settings(ctx: FetchContext) -> list[str]:
    lines = []
    for key, value in ctx.node.settings_for(Service.fetch).items():
        bare = key.strip()
        name = bare[3:].strip() if bare.lower().startswith("no ") else bare
        if name.lower() in LAB_OWNED:
            raise LabError(
                f"node {ctx.name!r}: fetchmail setting {key!r} is the lab's (it runs one"
                f" poll in the foreground, its log on the container's output); lab-owned:"
                f" {', '.join(LAB_OWNED)}"
            )
        text = str(value)
        if text.lower() in ("yes", "true", "on"):
            lines.append(f"set {bare}")
        elif text.lower() in ("no", "false", "off"):
            lines.append(f"set no {name}")
        elif isinstance(value, int | float) or re.fullmatch(r"\d+", text):
            lines.append(f"set {bare} {text}")
        else:
            lines.append(f"set {bare} {quote(text)}")
    return lines


def render_job(ctx: FetchContext, job: FetchJob) -> str:
    """The rcfile of one job: the globals and its poll entry."""
    name = poll_name(ctx, job)
    node, canonical = _server_node(ctx, name)
    lines = [
        f"# fetch job {job_label(job)} of node {ctx.name}, rendered by maillab"
        " (lab/software/fetchmail.py)",
        f"set postmaster {quote(job.postmaster)}",
        "set no bouncemail",
        *_settings(ctx),
        "",
    ]
    uidl = " uidl" if job.keep else ""  # remember what was fetched (a server option)
    server = [f"poll {quote(name)} with proto POP3 service {job.port} auth password{uidl}"]
    if job.multidrop is not None:
        aka = list(dict.fromkeys([*job.aka, *([job.server] if job.server != name else [])]))
        domains = " ".join(quote(a) for a in aka if "." in a)
        server.append(
            f"    {'aka ' + domains + ' ' if domains else ''}no dns envelope"
            f" {quote('Delivered-To:')}"
        )
    lines += server
    if job.multidrop is not None:
        names = [
            word(remote) if local is None or local == remote else f"{word(remote)}={word(local)}"
            for remote, local in job.multidrop.items()
        ]
        to = f"to {' '.join(names)} here"
    else:
        to = f"is {word(job.to or 'postmaster')} here"
    lines.append(f"  user {quote(job.user)} there with password {quote(job.password)}")
    lines.append(f"    {to}")
    options = ["keep"] if job.keep else ["flush"]
    if job.stls or _offers_stls(ctx, node):
        options += ["sslcertck", "sslcertfile", quote(ctx.ca_file)]
        if canonical != name.lower():
            options += ["sslcommonname", quote(canonical)]
    else:
        options += ["sslcertfile", quote(ctx.ca_file)]
    lines.append(f"    options {' '.join(options)}")
    lines.append(f"    smtphost {local_address(ctx)}/{SMTP_PORT} smtpaddress {smtp_domain(ctx)}")
    return "\n".join(lines) + "\n"


_LAB_OWNED_LINE = re.compile(
    r"^\s*set\s+(?:no\s+)?(?:" + "|".join(LAB_OWNED) + r")\b[^\n]*$", re.IGNORECASE | re.MULTILINE
)


def own_rcfile(text: str) -> str:
    """A user's .fetchmailrc with the lab-owned globals taken out."""
    return _LAB_OWNED_LINE.sub(lambda m: "# (maillab) " + m.group(0).strip(), text)


def plan(ctx: FetchContext) -> FetchmailPlan:
    """The files to write and the runs, from the node's fetch jobs or its own rcfile."""
    state = Path(ctx.state_dir) / "fetch"
    result = FetchmailPlan()
    config = ctx.node.config_for(Service.fetch)
    if config is not None:
        try:
            text = ctx.config_text or Path(config).read_text(encoding="utf-8")
        except OSError as exc:
            raise LabError(f"node {ctx.name!r}: reading its fetchmail rcfile: {exc}") from None
        rcfile = f"{RC_DIR}/fetchmailrc"
        result.files[rcfile] = own_rcfile(text)
        polls = [job.poll for job in ctx.node.fetch if job.poll is not None]
        result.runs.append(
            FetchRun(
                label=Path(config).name,
                server="",
                user="",
                mode="rcfile",
                keep=False,
                poll=min(polls) if polls else (None if ctx.node.fetch else DEFAULT_POLL),
                rcfile=rcfile,
                idfile=str(state / "fetchmailrc.fetchids"),
                pidfile=str(state / "fetchmail.pid"),
            )
        )
        return result
    for index, job in enumerate(ctx.node.fetch, 1):
        rcfile = f"{RC_DIR}/job-{index}.rc"
        result.files[rcfile] = render_job(ctx, job)
        result.runs.append(
            FetchRun(
                label=job_label(job),
                server=job.server,
                user=job.user,
                mode="multi-drop" if job.multidrop is not None else "single-drop",
                keep=job.keep,
                poll=job.poll,
                rcfile=rcfile,
                idfile=str(state / f"{_safe(job_label(job))}.fetchids"),
                pidfile=str(state / "fetchmail.pid"),
            )
        )
    return result


def command(run: FetchRun) -> list[str]:
    """One poll in the foreground, the whole dialogue on standard output."""
    return [
        "fetchmail",
        "-f",
        run.rcfile,
        "--nodetach",
        "--daemon",
        "0",
        "--nosyslog",
        "--verbose",
        "--idfile",
        run.idfile,
        "--pidfile",
        run.pidfile,
    ]


def environment(faketime_file: str, ca_file: str = CA_FILE) -> dict[str, str]:
    """fetchmail on the lab clock (libfaketime), trusting the lab CA."""
    return {
        "LD_PRELOAD": FAKETIME_LIBRARY,
        "FAKETIME_TIMESTAMP_FILE": faketime_file,
        "FAKETIME_NO_CACHE": "1",
        "NO_FAKE_STAT": "1",
        "FAKETIME_DONT_RESET": "1",
        "SSL_CERT_FILE": ca_file,
        "LC_ALL": "C",
    }


# ---------------------------------------------------------------------------------------
# reading its output

_PREFIX = re.compile(r"^fetchmail: ")
_QUERYING = re.compile(r"querying (\S+) \(protocol")
_COUNT = re.compile(r"(\d+) messages? (?:\((\d+) seen\) )?for (\S+) at (\S+)")
_READING = re.compile(r"reading message (\S+)@(\S+?):(\d+) of (\d+) \((\d+)(?: header)? octets\)")
_MAIL_FROM = re.compile(r"^SMTP> MAIL FROM:<([^>]*)>")
_RCPT_TO = re.compile(r"^SMTP> RCPT TO:<([^>]*)>")
_SMTP_REPLY = re.compile(r"^SMTP< (\d{3})([ -]?)(.*)$")
_POP_CMD = re.compile(r"^(?:POP3|IMAP)> (\S+)(?: (\S+))?")
_POP_REPLY = re.compile(r"^(?:POP3|IMAP)< (.*)$")
_QUEUED_AS = re.compile(r"queued as ([A-Za-z0-9]+)|\bid=([A-Za-z0-9-]+)")

# error lines fetchmail prints outside the dialogue -> stage
_ERRORS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"connection to \S+ .*failed|Connection refused|No route to host"), "connect"),
    (re.compile(r"getaddrinfo|couldn't find|Name or service not known|name resolution"), "resolve"),
    (
        re.compile(
            r"(?i)\b(ssl|tls|certificate|commonname)\b.*\b(fail\w*|mismatch|error|unable)\b"
            r"|server name not specified|verify error"
        ),
        "stls",
    ),
    (re.compile(r"SMTP connect to .* failed|SMTP listener|SMTP server"), "smtp"),
    (re.compile(r"Authorization failure|[Aa]uthentication failed"), "login"),
)
# The POP3 commands whose -ERR is an error of the run (LAST, CAPA, TOP, UIDL and AUTH
# are probes fetchmail gets by without) -> stage.
_POP_STAGES = {
    "USER": "login",
    "PASS": "login",
    "APOP": "login",
    "STLS": "stls",
    "RETR": "retr",
    "DELE": "dele",
    "LIST": "list",
    "STAT": "list",
    "QUIT": "quit",
}


@dataclass
class _Message:
    number: int
    size: int
    envelope_from: str = ""
    rcpt: str | None = None  # a RCPT TO awaiting its reply
    accepted: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    in_data: bool = False
    queue_id: str = ""
    delivered: bool = False  # the local MTA said 250 to the end of data


class FetchmailLog:
    """One run's output, line by line, into the built-in fetcher's events: fetch.message,
    fetch.deleted, fetch.kept, fetch.error (fetch.start and fetch.done are the runner's)."""

    def __init__(self, run: FetchRun):
        self.run = run
        self.fetched = 0
        self.errors: list[str] = []
        self.last_error_line = ""
        self.server = ""
        self.message: _Message | None = None
        self.uids: dict[int, str] = {}
        self.pop_command = ""
        self.pop_arg = ""
        self.lines: list[str] = []

    def _error(self, stage: str, error: str, **data: Any) -> Event:
        self.errors.append(f"{stage}: {error}")
        return Event("fetch.error", {"job": self.run.label, "stage": stage, "error": error, **data})

    def feed(self, line: str) -> list[Event]:
        text = _PREFIX.sub("", line.rstrip("\r\n"))
        self.lines.append(text)
        stripped = text.strip()
        if match := _QUERYING.search(text):
            self.server = match.group(1)
            return []
        if match := _READING.search(text):
            self.message = _Message(number=int(match.group(3)), size=int(match.group(5)))
            done = self._ended(text)
            return done
        if self.message is not None:
            events = self._smtp(text)
            if events is not None:
                return events
        if match := _POP_CMD.match(text):
            self.pop_command, self.pop_arg = match.group(1).upper(), match.group(2) or ""
            return []
        if match := _POP_REPLY.match(text):
            return self._pop_reply(match.group(1))
        if stripped in ("flushed", "not flushed") or stripped.endswith(" flushed"):
            return self._ended(text)
        if stripped.startswith(("WARNING: Running as root", "normal termination")):
            return []
        if self.pop_command == "UIDL" and re.fullmatch(r"\d+ \S+", stripped):
            return []
        for pattern, stage in _ERRORS:
            if pattern.search(text):
                self.last_error_line = stripped
                if stage in ("connect", "resolve", "stls") and not self._said(stage):
                    return [self._error(stage, stripped)]
                return []
        return []

    def _said(self, stage: str) -> bool:
        return any(e.startswith(f"{stage}:") for e in self.errors)

    def _smtp(self, text: str) -> list[Event] | None:
        message = self.message
        assert message is not None
        if match := _MAIL_FROM.match(text):
            message.envelope_from = match.group(1)
            return []
        if match := _RCPT_TO.match(text):
            message.rcpt = match.group(1)
            return []
        if text.startswith("SMTP> DATA"):
            message.in_data = True
            return []
        if text.startswith("SMTP>. (EOM)") or text.startswith("SMTP> . (EOM)"):
            message.in_data = True
            return []
        if match := _SMTP_REPLY.match(text):
            code, said = int(match.group(1)), match.group(3)
            reply = f"{code} {said}"
            if match.group(2) == "-":  # a multi-line reply goes on
                return []
            if message.rcpt is not None:
                (message.accepted if code < 400 else message.refused).append(message.rcpt)
                if code >= 400:
                    message.refusals.append(reply)
                message.rcpt = None
            elif message.in_data and code == 250:
                found = _QUEUED_AS.search(said)
                if found:
                    message.queue_id = found.group(1) or found.group(2)
                else:
                    words = said.split()
                    message.queue_id = words[1] if len(words) > 1 and "." in words[0] else ""
                message.delivered = True
                message.in_data = False
            elif code >= 400:
                message.refusals.append(reply)
            return []
        return None

    def _ended(self, text: str) -> list[Event]:
        """' flushed' / ' not flushed' (the end of a 'reading message' line, or its own
        line in verbose output): the message was handed over, or left on the server."""
        stripped = text.strip()
        if not stripped.endswith("flushed") or self.message is None:
            return []
        message, self.message = self.message, None
        uid = self.uids.get(message.number, "")
        if not message.delivered:
            error = "; ".join(message.refusals) or "not accepted by the local MTA"
            return [
                self._error(
                    "smtp",
                    error,
                    uid=uid,
                    number=message.number,
                    recipients=message.refused or message.accepted,
                    left_on_server=True,
                )
            ]
        self.fetched += 1
        events = [
            Event(
                "fetch.message",
                {
                    "job": self.run.label,
                    "number": message.number,
                    "uid": uid,
                    "recipients": message.accepted,
                    "envelope_from": message.envelope_from,
                    "queue_id": message.queue_id,
                    "size": message.size,
                    "refused": message.refused,
                },
            )
        ]
        if self.run.keep or stripped.endswith("not flushed"):
            events.append(
                Event("fetch.kept", {"job": self.run.label, "uid": uid, "number": message.number})
            )
        return events

    def _pop_reply(self, said: str) -> list[Event]:
        command, arg = self.pop_command, self.pop_arg
        if command == "UIDL" and (match := re.fullmatch(r"(\d+) (\S+)", said.strip())):
            self.uids[int(match.group(1))] = match.group(2)
            return []
        if said.startswith("+OK") and command == "DELE" and arg.isdigit():
            number = int(arg)
            self.pop_command = ""
            return [
                Event(
                    "fetch.deleted",
                    {"job": self.run.label, "uid": self.uids.get(number, ""), "number": number},
                )
            ]
        if said.startswith("-ERR") and command in _POP_STAGES:
            self.pop_command = ""
            stage = _POP_STAGES[command]
            error = f"{command}: {said}" if stage == "login" else said
            data: dict[str, Any] = {}
            if arg.isdigit() and stage in ("retr", "dele"):
                data = {"number": int(arg), "uid": self.uids.get(int(arg), "")}
            return [self._error(stage, error, **data)]
        return []

    def finish(self, code: int) -> list[Event]:
        """The exit code: an error event when the run failed and none was read."""
        if code in (0, 1) or self.errors:
            return []
        stage, what = EXIT_STAGES.get(code, ("fetch", f"fetchmail exited {code}"))
        detail = self.last_error_line or next(
            (line.strip() for line in reversed(self.lines) if line.strip()), ""
        )
        return [self._error(stage, f"{what} (exit {code}){': ' + detail if detail else ''}")]


__all__ = [
    "CA_FILE",
    "FetchContext",
    "FetchRun",
    "FetchmailLog",
    "FetchmailPlan",
    "command",
    "environment",
    "own_rcfile",
    "plan",
    "render_job",
]
