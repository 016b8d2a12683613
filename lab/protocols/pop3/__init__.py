"""POP3 as a sans-IO state machine: the server and the client, no sockets.

RFC 1939 (with CAPA and response codes from RFC 2449, the AUTH code from RFC 3206 and
STLS from RFC 2595), in the manner of h11: bytes in, events out, bytes to send.

The server core (`Pop3Server`) answers almost everything itself from the maildrop it is
given at login. It stops and hands an event to the application only for what it cannot
decide: a login (`LoginRequest` -> `accept_login` / `reject_login`), the switch to TLS
(`StartTls` -> `tls_started`) and the UPDATE state's deletions (`UpdateRequest` ->
`update_done`). It also reports what happened (`MessageRetrieved`, `MessageDeleted`,
`CommandRefused`, `Closed`, `ConnectionLost`) so the shell can log it. Its three states
and the commands each one accepts are the table `TRANSITIONS`.

The client core (`Pop3Client`) is the mirror image: commands in, bytes out; replies
(single-line, or multi-line for CAPA, LIST, UIDL, RETR and TOP) out as `Ok` / `Err`
events, multi-line data with the byte-stuffing undone.

Rules kept here, so every shell gets them:
- DELE only marks; marked messages are removed in the UPDATE state, after QUIT. A
  session that ends any other way (`receive_data(b"")`) removes nothing.
- A marked message is refused by RETR, TOP, LIST n, UIDL n and DELE.
- Sizes count CRLF line ends (messages are sent with CRLF whatever they are stored with).
- Lines starting with "." are byte-stuffed; a multi-line reply ends with ".".
- A command line longer than 255 octets is answered -ERR and skipped, whatever its
  length; so is an unknown command, a command in the wrong state, or a bad argument.

The package: `common` (limits, response codes, states, maildrops, byte helpers), `server`
(`Pop3Server`, its replies, state table and events), `client` (`Pop3Client`, its events
and reply parsers). Everything public is importable from `lab.protocols.pop3`.
"""

from lab.protocols.pop3.client import (
    ClientEvent,
    Err,
    Greeting,
    Ok,
    Pop3Client,
    parse_listing,
    parse_stat,
)
from lab.protocols.pop3.common import (
    AUTH,
    IN_USE,
    LOGIN_DELAY,
    MAX_ARGUMENT,
    MAX_COMMAND,
    MAX_UID,
    NEED_DATA,
    PAUSED,
    POP3_PORT,
    SYS_PERM,
    SYS_TEMP,
    ConnectionLost,
    Maildrop,
    MemoryMaildrop,
    MessageInfo,
    Pop3UsageError,
    Signal,
    State,
    apop_digest,
    stuff,
    to_crlf,
    top,
    uid_for_key,
    unstuff,
)
from lab.protocols.pop3.server import (
    ARITY,
    COMMANDS,
    DROPPED,
    ERR_ARG_TOO_LONG,
    ERR_BAD_DIGEST,
    ERR_BAD_LINES,
    ERR_BAD_NUMBER,
    ERR_DELETED,
    ERR_EMPTY,
    ERR_NO_MESSAGE,
    ERR_NO_STLS,
    ERR_NOT_REMOVED,
    ERR_PASS_FIRST,
    ERR_READ,
    ERR_STLS_AFTER_USER,
    ERR_TLS_ACTIVE,
    ERR_TOO_LONG,
    ERR_UNKNOWN,
    ERR_USAGE,
    ERR_WRONG_STATE,
    LOGIN_ACCEPTED,
    OK_BYE,
    OK_CAPA,
    OK_NOOP,
    OK_STLS,
    OK_TOP,
    OK_UIDL,
    OK_USER,
    TRANSITIONS,
    UPDATE_DONE,
    USAGE,
    Closed,
    CommandRefused,
    LoginRequest,
    MessageDeleted,
    MessageRetrieved,
    Pop3Server,
    ServerEvent,
    StartTls,
    UpdateRequest,
)

__all__ = [
    "ARITY",
    "AUTH",
    "COMMANDS",
    "DROPPED",
    "ERR_ARG_TOO_LONG",
    "ERR_BAD_DIGEST",
    "ERR_BAD_LINES",
    "ERR_BAD_NUMBER",
    "ERR_DELETED",
    "ERR_EMPTY",
    "ERR_NOT_REMOVED",
    "ERR_NO_MESSAGE",
    "ERR_NO_STLS",
    "ERR_PASS_FIRST",
    "ERR_READ",
    "ERR_STLS_AFTER_USER",
    "ERR_TLS_ACTIVE",
    "ERR_TOO_LONG",
    "ERR_UNKNOWN",
    "ERR_USAGE",
    "ERR_WRONG_STATE",
    "IN_USE",
    "LOGIN_ACCEPTED",
    "LOGIN_DELAY",
    "MAX_ARGUMENT",
    "MAX_COMMAND",
    "MAX_UID",
    "NEED_DATA",
    "OK_BYE",
    "OK_CAPA",
    "OK_NOOP",
    "OK_STLS",
    "OK_TOP",
    "OK_UIDL",
    "OK_USER",
    "PAUSED",
    "POP3_PORT",
    "SYS_PERM",
    "SYS_TEMP",
    "TRANSITIONS",
    "UPDATE_DONE",
    "USAGE",
    "ClientEvent",
    "Closed",
    "CommandRefused",
    "ConnectionLost",
    "Err",
    "Greeting",
    "LoginRequest",
    "Maildrop",
    "MemoryMaildrop",
    "MessageDeleted",
    "MessageInfo",
    "MessageRetrieved",
    "Ok",
    "Pop3Client",
    "Pop3Server",
    "Pop3UsageError",
    "ServerEvent",
    "Signal",
    "StartTls",
    "State",
    "UpdateRequest",
    "apop_digest",
    "parse_listing",
    "parse_stat",
    "stuff",
    "to_crlf",
    "top",
    "uid_for_key",
    "unstuff",
]
