"""aiosmtpd's own replies as the lab's SMTP server sends them: with the RFC 3463 enhanced
status codes it advertises (ENHANCEDSTATUSCODES)."""

from __future__ import annotations

import re

from lab.protocols import smtp as codes

# aiosmtpd's own replies, given the RFC 3463 enhanced status codes that the server
# advertises with ENHANCEDSTATUSCODES; the second item names the stage of a refusal
# that a policy of ours would otherwise have reported.
_AIOSMTPD_REPLIES: dict[str, tuple[str, str | None]] = {
    "552 Error: message size exceeds fixed maximum message size": (codes.MESSAGE_TOO_BIG, "mail"),
    "552 Error: Too much mail data": (codes.MESSAGE_TOO_BIG, "data"),
    "500 Line too long (see RFC5321 4.5.3.1.6)": (
        "500 5.5.2 Line too long (see RFC 5321 section 4.5.3.1.6)",
        "data",
    ),
    "500 Command line too long": ("500 5.5.2 Command line too long", None),
    "221 Bye": ("221 2.0.0 Bye", None),
    "250 OK": ("250 2.0.0 OK", None),
    "220 Ready to start TLS": ("220 2.0.0 Ready to start TLS", None),
}
_ERROR_REPLY = re.compile(r"^(5\d\d) ((?:Error|Syntax)\b.*)$")
_ERROR_STATUS = {"500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1", "555": "5.5.4"}


def enhance(text: str) -> tuple[str, str | None]:
    """An aiosmtpd reply with its enhanced status code, and the refusal's stage if any."""
    if text in _AIOSMTPD_REPLIES:
        return _AIOSMTPD_REPLIES[text]
    match = _ERROR_REPLY.match(text)
    if match:
        status = _ERROR_STATUS.get(match.group(1), "5.5.0")
        return f"{match.group(1)} {status} {match.group(2)}", None
    return text, None
