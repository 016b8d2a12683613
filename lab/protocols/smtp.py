"""SMTP reply codes as named constants, and the address handling every MTA needs.

The texts follow what real MTAs say (Postfix and sendmail), with RFC 3463 enhanced
status codes, so the lab's transcripts look like the ones in the seed articles.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# 2xx
HELP = 214
READY = 220
CLOSING = 221
OK = 250
CANNOT_VRFY = 252
START_DATA = 354
# 4xx
SERVICE_UNAVAILABLE = 421
MAILBOX_BUSY = 450
LOCAL_ERROR = 451
INSUFFICIENT_STORAGE = 452
# 5xx
SYNTAX_ERROR = 500
BAD_ARGUMENTS = 501
NOT_IMPLEMENTED = 502
BAD_SEQUENCE = 503
TLS_REQUIRED = 530
MAILBOX_UNAVAILABLE = 550
EXCEEDED_STORAGE = 552
BAD_MAILBOX_NAME = 553
TRANSACTION_FAILED = 554
NO_MAIL_SERVICE = 556


@dataclass(frozen=True)
class Reply:
    code: int
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.text}"

    @property
    def status(self) -> str:
        """The enhanced status code (x.y.z) in the text, or one made from the basic code."""
        first = self.text.split(" ", 1)[0]
        if first.count(".") == 2 and first.replace(".", "").isdigit():
            return first
        return f"{self.code // 100}.0.0"

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    @classmethod
    def parse(cls, text: str) -> Reply:
        code, _, rest = text.strip().partition(" ")
        return cls(int(code[:3]), rest)


@dataclass
class SubmitResult:
    """What the receiving MTA said to one submission."""

    server: str
    greeting: Reply | None = None
    helo_reply: Reply | None = None
    mail_reply: Reply | None = None
    rcpt_replies: dict[str, Reply] = field(default_factory=dict)
    data_reply: Reply | None = None
    error: str = ""

    @property
    def accepted(self) -> bool:
        return self.data_reply is not None and self.data_reply.code == 250

    @property
    def queue_id(self) -> str:
        """The receiving MTA's queue id: '250 2.0.0 ID Message accepted...' (the built-in
        MTA, sendmail), '250 2.0.0 Ok: queued as ID' (Postfix), '250 OK id=ID' (Exim)."""
        if not self.accepted or self.data_reply is None:
            return ""
        named = re.search(r"queued as ([A-Za-z0-9]+)|\bid=([A-Za-z0-9-]+)", self.data_reply.text)
        if named:
            return named.group(1) or named.group(2)
        words = self.data_reply.text.split()
        return words[1] if len(words) > 1 and "." in words[0] else (words[0] if words else "")

    @property
    def rejected(self) -> Reply | None:
        """The first refusal, if the message was not accepted."""
        if self.accepted:
            return None
        replies = (
            self.greeting,
            self.helo_reply,
            self.mail_reply,
            *self.rcpt_replies.values(),
            self.data_reply,
        )
        for reply in replies:
            if reply is not None and reply.code >= 400:
                return reply
        return None

    def stage(self) -> str:
        """Where the submission ended: connect, helo, mail, rcpt or data."""
        if self.greeting is None or self.greeting.code >= 400:
            return "connect"
        if self.mail_reply is None:
            return (
                "helo" if self.helo_reply is not None and self.helo_reply.code >= 400 else "connect"
            )
        if self.mail_reply.code >= 400:
            return "mail"
        if not any(r.code < 400 for r in self.rcpt_replies.values()):
            return "rcpt"
        return "data"

    def to_json(self) -> dict[str, object]:
        """The replies as "CODE TEXT" strings, with what they add up to (accepted,
        queue_id): what `maillab send --json` prints and the control wire carries
        (lab.protocols.wire decodes it)."""

        def text(reply: Reply | None) -> str | None:
            return None if reply is None else str(reply)

        return {
            "server": self.server,
            "accepted": self.accepted,
            "queue_id": self.queue_id,
            "greeting": text(self.greeting),
            "helo": text(self.helo_reply),
            "mail": text(self.mail_reply),
            "rcpt": {k: str(v) for k, v in self.rcpt_replies.items()},
            "data": text(self.data_reply),
            "error": self.error,
        }


def reply(code: int, status: str, text: str) -> str:
    return f"{code} {status} {text}"


# The replies the built-in MTA gives, named for what they mean.
SENDER_OK = "250 2.1.0 Sender ok"
RECIPIENT_OK = "250 2.1.5 Recipient ok"
RELAY_DENIED = "550 5.7.1 Relaying denied"
UNKNOWN_USER = "550 5.1.1 User unknown"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
SENDER_DOMAIN_UNKNOWN = "553 5.1.8 Domain of sender address {addr} does not exist"
SENDER_DOMAIN_TEMPFAIL = "451 4.1.8 Domain of sender address {addr} does not resolve"
MESSAGE_TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
LOOP_DETECTED = "554 5.4.6 Too many hops: mail loop detected"
BARE_NEWLINE = "550 5.5.2 Error: bare <CR> or <LF> received; use <CR><LF>"
EIGHT_BIT_WITHOUT_8BITMIME = "554 5.6.1 8-bit data without BODY=8BITMIME"
VRFY_CANNOT = "252 2.5.2 Cannot VRFY user; try RCPT to attempt delivery"
VRFY_DISABLED = "502 5.5.1 VRFY command is disabled"
EXPN_DISABLED = "502 5.7.0 EXPN is not allowed"
GREYLISTED = "451 4.7.1 Greylisted: please try again later"
HELO_MISMATCH = "550 5.7.1 {helo}: Helo command rejected: does not match your rDNS name {rdns}"
SPF_FAIL = "550 5.7.23 SPF check failed for {addr}: {ip} is not allowed to send for {domain}"
SPF_TEMPFAIL = "451 4.7.24 SPF check for {domain} could not be completed"
TLS_FIRST = "530 5.7.0 Must issue a STARTTLS command first"


def split_address(address: str) -> tuple[str, str]:
    """(local part, domain) with the domain lower-cased; domain '' for a bare name."""
    local, at, domain = address.rpartition("@")
    if not at:
        return address, ""
    return local, domain.lower()


def has_line_break(text: str) -> bool:
    return "\r" in text or "\n" in text


# The queue id a server names in its 250 after the data: Postfix "queued as ID", Exim
# "OK id=ID", sendmail and the built-in MTA "2.0.0 ID Message accepted for delivery".
_QUEUED_AS = re.compile(
    r"queued as ([A-Za-z0-9]+)|\bid=([A-Za-z0-9-]+)"
    r"|^(?:\d{3}[ -])?(?:\d\.\d{1,3}\.\d{1,3} )?([A-Za-z0-9]+) Message accepted"
)


def queued_as(reply: str) -> str:
    """The next hop's queue id in its reply to the data ('' when it names none)."""
    match = _QUEUED_AS.search(reply)
    return next((g for g in match.groups() if g), "") if match else ""
