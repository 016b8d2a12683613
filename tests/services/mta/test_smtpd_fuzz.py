"""Property-based fuzzing of the built-in MTA's SMTP front, over real connections to a
running lab: arbitrary command lines, arbitrary message data, and the end-of-data
variants of SMTP smuggling.

For every example, on one lab that stays up across all of them:

- no reply is the mark of an exception in the server (aiosmtpd answers an unexpected
  exception with "500 Error: (ExceptionName) ..."), every reply is well formed, and the
  server still answers: on the same connection, or (after QUIT or a 421) on a new one;
- a valid transaction right after the noise gets 2xx/3xx replies all the way, never a 5xx;
- every message the server said 250 to is delivered, whole (nothing accepted is lost);
- data is taken as one message or refused as one: a bare CR or LF around a dot never ends
  it early, so text smuggled behind such a "dot" never becomes a second message.

Profiles (tests/services/mta/conftest.py): "ci" by default, "fuzz" with
MAILLAB_HYPOTHESIS_PROFILE=fuzz for a long run.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lab.harness import Lab

pytestmark = pytest.mark.fuzz

WORLD = """
name: fuzz
networks:
  lan: {subnet: 192.168.71.0/24}
nodes:
  mx:
    role: mta
    hostname: mx.example.org
    networks: {lan: 192.168.71.1}
    local_domains: [example.org]
    users: [bob, root]
    aliases: {team: [bob, root]}
    relay_from: [lan]
    policy: {max_size: 20000, max_recipients: 5}
  pc: {role: client, hostname: pc.example.org, networks: {lan: 192.168.71.10}, submit_to: mx}
"""

SmtpWire = Any  # conftest.SmtpWire
Wire = Callable[..., SmtpWire]
# One lab serves every example of a test: that the server stays usable across them is
# part of what is tested.
FUZZ_SETTINGS = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

_counter = itertools.count()
_ACCEPTED = re.compile(r"^250 2\.0\.0 (\S+) Message accepted for delivery$")
_CRASH = re.compile(r"Error: \(\w+\)|Cannot describe error")

VERBS = [
    "HELO", "EHLO", "MAIL FROM:", "RCPT TO:", "DATA", "RSET", "NOOP", "VRFY", "EXPN",
    "HELP", "QUIT", "BDAT", "AUTH", "XCLIENT", "TURN", "ETRN", "mail from:", "rcpt to:",
]  # fmt: skip
ADDRESSES = [
    "<bob@example.org>", "<>", "<team@example.org>", "<root@example.org> SIZE=10",
    "<bob@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.org",
    "<@mx.example.org:bob@example.org>", "<\"bob\"@example.org>", "bob@example.org",
    "<bob@example.org> BODY=8BITMIME", "<nobody@example.org>", "<x@[192.168.71.1]>",
]  # fmt: skip

# arguments: printable text, any byte but LF (a CR inside a line too), or an address
_arg = st.one_of(
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").decode("latin-1")),
    st.sampled_from(ADDRESSES),
    st.integers(0, 1200).map(lambda n: "x" * n),  # around the 512 and 1000 octet limits
)
_line = st.one_of(
    st.tuples(st.sampled_from(VERBS), _arg).map(lambda va: f"{va[0]} {va[1]}".encode("latin-1")),
    st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"")),
)
# the noise: command lines, each ended by CRLF or a bare LF
_noise = st.lists(st.tuples(_line, st.sampled_from([b"\r\n", b"\n"])), max_size=12).map(
    lambda lines: b"".join(line + end for line, end in lines)
)


@pytest.fixture
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    return lab_factory(WORLD)


def read_reply(s: SmtpWire, seen: list[str]) -> tuple[int, list[str]]:
    code, lines = s.reply()  # asserts CRLF line ends and one code per reply
    for line in lines:
        assert not _CRASH.search(line), f"the server hit an exception: {lines}"
        assert re.match(r"^[2-5]\d\d[ -]", line), f"malformed reply line: {line!r}"
    seen.extend(lines)
    return code, lines


def resync(lab: Lab, wire: Wire, s: SmtpWire, seen: list[str]) -> SmtpWire:
    """End whatever the noise left open (a command line, DATA) and start a transaction
    with a sender that names this round, reading every reply up to its 250. A closed
    session (QUIT, 421) is replaced by a new one."""
    tag = f"sync{next(_counter)}@example.org"
    for attempt in range(2):
        try:
            if attempt:
                s.close()
                s = wire(lab, "mx")
                assert read_reply(s, seen)[0] == 220
            s.send(f"\r\n.\r\nRSET\r\nEHLO fuzz.example.org\r\nMAIL FROM:<{tag}>\r\n".encode())
            while True:
                code, lines = read_reply(s, seen)
                if tag in lines[-1]:
                    assert code == 250, lines
                    return s
                if code == 421:
                    raise ConnectionError(lines)
        except (ConnectionError, OSError):
            if attempt:
                raise
    raise AssertionError("unreachable")


def valid_transaction(s: SmtpWire, seen: list[str], marker: str) -> str:
    """RCPT, DATA and a message after `resync`'s MAIL: never a 5xx. Returns the queue id."""
    code, lines = read_reply_to(s, seen, "RCPT TO:<bob@example.org>")
    assert code == 250, lines
    code, lines = read_reply_to(s, seen, "DATA")
    assert code == 354, lines
    s.send(f"Subject: {marker}\r\n\r\n{marker}\r\n.\r\n".encode())
    code, lines = read_reply(s, seen)
    match = _ACCEPTED.match(lines[0])
    assert code == 250 and match, lines
    return match.group(1)


def read_reply_to(s: SmtpWire, seen: list[str], command: str) -> tuple[int, list[str]]:
    s.send(command.encode() + b"\r\n")
    return read_reply(s, seen)


def accepted_ids(seen: list[str]) -> set[str]:
    return {m.group(1) for line in seen if (m := _ACCEPTED.match(line))}


def assert_nothing_lost(lab: Lab, ids: set[str]) -> None:
    """Every message the server took (250) is in a mailbox or still queued there."""
    lab.settle()
    delivered = {str(e.get("id")) for e in lab.events if e.kind == "mailbox.delivered"}
    queued = {str(entry["id"]) for entry in lab.queue("mx")}
    assert ids <= delivered | queued, ids - delivered - queued


def test_arbitrary_command_lines_leave_the_server_usable(lab: Lab, wire: Wire) -> None:
    seen: list[str] = []

    @FUZZ_SETTINGS
    @given(noise=_noise)
    def session(noise: bytes) -> None:
        s = wire(lab, "mx")
        try:
            assert read_reply(s, seen)[0] == 220
            s.send(noise)
            s = resync(lab, wire, s, seen)
            marker = f"after-noise-{next(_counter)}"
            queue_id = valid_transaction(s, seen, marker)
        finally:
            s.close()
        lab.wait_for("queue.removed", node="mx", id=queue_id)

    session()
    ids = accepted_ids(seen)
    assert ids, "no transaction went through"
    assert_nothing_lost(lab, ids)
    with wire(lab, "mx") as fresh:  # and the server still answers a new client
        assert fresh.reply()[0] == 220
        assert fresh.code("NOOP") == 250


_data = st.lists(
    st.one_of(
        st.binary(max_size=80),
        st.sampled_from([b".", b"..", b"\r\n", b"\n", b"\r", b"\r\n.", b".\r\n", b"\x00"]),
        st.integers(990, 1010).map(lambda n: b"y" * n),
    ),
    max_size=10,
).map(b"".join)


def _no_end_of_data(data: bytes) -> bytes:
    """The data with no CRLF.CRLF in it (that would end it early: tested apart)."""
    while b"\r\n.\r\n" in data:
        data = data.replace(b"\r\n.\r\n", b"\r\n..\r\n")
    return data


def test_arbitrary_data_is_one_message_or_one_refusal(lab: Lab, wire: Wire) -> None:
    seen: list[str] = []
    stored: dict[str, bytes] = {}  # queue id -> the content the server should have kept

    @FUZZ_SETTINGS
    @given(data=_data, eight_bit=st.booleans())
    def message(data: bytes, eight_bit: bool) -> None:
        head = f"Subject: data {next(_counter)}\r\n\r\n".encode()
        payload = _no_end_of_data(head + data + b"\r\n")  # then ".\r\n" ends it
        with wire(lab, "mx") as s:
            assert read_reply(s, seen)[0] == 220
            assert read_reply_to(s, seen, "EHLO fuzz.example.org")[0] == 250
            body = " BODY=8BITMIME" if eight_bit else ""
            assert read_reply_to(s, seen, f"MAIL FROM:<root@example.org>{body}")[0] == 250
            assert read_reply_to(s, seen, "RCPT TO:<bob@example.org>")[0] == 250
            assert read_reply_to(s, seen, "DATA")[0] == 354
            s.send(payload + b".\r\nHELP\r\n")
            code, lines = read_reply(s, seen)  # one reply for the whole data
            assert code == 250 or code in (500, 550, 552, 554), lines
            if code == 250:
                queue_id = _ACCEPTED.match(lines[0]).group(1)  # type: ignore[union-attr]
                # what follows the Subject: line (the server adds Message-ID and Date there)
                stored[queue_id] = payload.replace(b"\r\n.", b"\r\n")[len(head) - 2 :]
            assert read_reply(s, seen)[0] == 214  # HELP: the next command, nothing between

    message()
    lab.settle()
    assert_nothing_lost(lab, set(stored))
    kept = {m.raw.encode("utf-8", "surrogateescape") for m in lab.mailbox("mx", "bob")}
    for queue_id, content in stored.items():
        assert any(raw.endswith(content) for raw in kept), (queue_id, content[:200])
    assert len(lab.mailbox("mx", "bob")) == len(stored)


# an end of data with a bare CR or LF on either side of the dot (or other bytes beside
# it): never the end of the data
_SIDES = [b"\r", b"\n", b"\r\n", b"\r\r\n", b"\n\r\n", b"\r\n\r", b""]
_VECTORS = sorted(
    vector
    for vector in {
        before + b"." + dot_tail + after
        for before in _SIDES
        for after in _SIDES
        for dot_tail in (b"", b" ", b"\x00", b".")
    }
    if b"\r\n.\r\n" not in vector
)
SMUGGLED = (
    b"MAIL FROM:<smuggler@example.org>\r\nRCPT TO:<root@example.org>\r\nDATA\r\n"
    b"Subject: smuggled\r\n\r\nsmuggled\r\n"
)


def test_smuggling_vectors_never_split_a_message(lab: Lab, wire: Wire) -> None:
    seen: list[str] = []

    @FUZZ_SETTINGS
    @given(vector=st.sampled_from(_VECTORS), prefix=st.binary(max_size=20))
    def smuggle(vector: bytes, prefix: bytes) -> None:
        sent = b"Subject: one\r\n\r\nx" + prefix + vector + SMUGGLED
        assume(b"\r\n.\r\n" not in sent)  # the real end of data is the control case
        with wire(lab, "mx") as s:
            assert read_reply(s, seen)[0] == 220
            assert read_reply_to(s, seen, "EHLO fuzz.example.org")[0] == 250
            assert read_reply_to(s, seen, "MAIL FROM:<bob@example.org>")[0] == 250
            assert read_reply_to(s, seen, "RCPT TO:<bob@example.org>")[0] == 250
            assert read_reply_to(s, seen, "DATA")[0] == 354
            s.send(sent + b".\r\nHELP\r\n")
            code, lines = read_reply(s, seen)
            assert code != 354, lines  # the smuggled DATA never ran
            assert read_reply(s, seen)[0] == 214, "a smuggled command was answered"

    smuggle()
    lab.settle()
    assert not [
        e
        for e in lab.events
        if e.kind == "smtp.command" and "smuggler@example.org" in str(e.get("arg", ""))
    ]
    assert not [e for e in lab.events if e.kind == "queue.queued" and "smuggler" in str(e.data)]
    assert lab.mailbox("mx", "root") == []
    # what was taken is one message each, with the "smuggled" text inside it
    for message in lab.mailbox("mx", "bob"):
        assert "Subject: one" in message.raw and "smuggler@example.org" in message.raw
