"""The built-in SMTP server against hostile and broken clients, byte for byte over a real
connection: smuggling, bare CR or LF, over-long lines and commands, too much data or too
many recipients, clients that hang up mid-transaction, talking before the greeting, 8-bit
data, control characters in addresses, and the lab going down under open sessions.

For every case: the reply code, what was (not) queued or delivered, and that the server
still answers afterwards on the same connection or a new one. The data reader's own
splitting rules are in test_smtpd_reader.py; the limits and refusals a node's policy
sets are in test_mta_policies.py.
"""

from __future__ import annotations

import contextlib
import gc
import ssl
from collections.abc import Callable
from typing import Any

import pytest

from lab.harness import Lab
from lab.topology import load_text
from lab.topology.model import Topology

WORLD = """
name: badinput
networks:
  lan: {subnet: 192.168.70.0/24}
nodes:
  mx:
    role: mta
    hostname: mx.example.org
    networks: {lan: 192.168.70.1}
    local_domains: [example.org]
    users: [bob, root, evil]
    relay_from: [lan]
  pc: {role: client, hostname: pc.example.org, networks: {lan: 192.168.70.10}, submit_to: mx}
"""

SmtpWire = Any  # conftest.SmtpWire, opened by the `wire` fixture
Wire = Callable[..., SmtpWire]


def world(**policy: object) -> Topology:
    topology = load_text(WORLD, "badinput.yaml").model
    for key, value in policy.items():
        setattr(topology.nodes["mx"].policy, key, value)
    return topology


@pytest.fixture
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    return lab_factory(world())


def queued(lab: Lab) -> list[dict[str, object]]:
    lab.settle()
    return [e.data for e in lab.events if e.node == "mx" and e.kind == "queue.queued"]


def mails(lab: Lab, user: str) -> list[str]:
    lab.settle()
    return [m.raw for m in lab.mailbox("mx", user)]


def begin(
    s: SmtpWire,
    *,
    mail: str = "MAIL FROM:<root@example.org>",
    rcpts: tuple[str, ...] = ("RCPT TO:<bob@example.org>",),
    data: bool = True,
) -> None:
    """Greeting, EHLO, MAIL, RCPT(s) and (if `data`) DATA, each answered as it should be."""
    assert s.reply()[0] == 220
    assert s.code("EHLO client.example.org") == 250
    assert s.code(mail) == 250
    for rcpt in rcpts:
        assert s.code(rcpt) == 250
    if data:
        assert s.code("DATA") == 354


def still_answers(lab: Lab, s: SmtpWire | None, wire: Wire) -> None:
    """The same connection (if still open) and a new one both get sensible replies."""
    if s is not None:
        code, lines = s.cmd("HELP")  # 214: distinct from any reply a transaction gives
        assert code == 214, lines
        assert s.code("RSET") == 250
        assert s.code("MAIL FROM:<root@example.org>") == 250
        assert s.code("RSET") == 250
    with wire(lab, "mx") as fresh:
        assert fresh.reply()[0] == 220
        assert fresh.code("NOOP") == 250
        assert fresh.code("QUIT") == 221


# --- SMTP smuggling -------------------------------------------------------------------------

SMUGGLED = (
    b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<root@example.org>\r\nDATA\r\n"
    b"Subject: smuggled\r\n\r\nsmuggled\r\n.\r\n"
)


@pytest.mark.parametrize(
    "separator",
    [b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n"],
    ids=["LF.LF", "CR.CR", "CRLF.LF", "LF.CRLF", "CR.CRLF"],
)
def test_smuggling_does_not_end_data_early(lab: Lab, wire: Wire, separator: bytes) -> None:
    with wire(lab, "mx") as s:
        begin(s)
        s.send(b"Subject: first\r\n\r\nbody" + separator + SMUGGLED)
        code, lines = s.reply()
        # one reply for one DATA: the whole thing is refused for its bare CR or LF
        assert code == 550, lines
        assert lines[0].startswith("550 5.5.2")
        still_answers(lab, s, wire)  # the next reply is HELP's: nothing smuggled ran
    assert queued(lab) == []
    assert mails(lab, "root") == [] and mails(lab, "bob") == []
    assert not [
        e for e in lab.events if e.kind == "smtp.command" and "evil@example.org" in e.get("arg", "")
    ]


def test_smuggled_text_after_a_real_end_of_data_is_a_second_transaction(
    lab: Lab, wire: Wire
) -> None:
    """The control case: with a proper CRLF.CRLF the server does end DATA there."""
    with wire(lab, "mx") as s:
        begin(s)
        s.send(b"Subject: first\r\n\r\nbody\r\n.\r\n" + SMUGGLED)
        assert s.reply()[0] == 250
        assert s.reply()[0] == 250  # MAIL
        assert s.reply()[0] == 250  # RCPT
        assert s.reply()[0] == 354
        assert s.reply()[0] == 250
        assert s.code("QUIT") == 221
    senders = sorted(str(e["envelope_from"]) for e in queued(lab))
    assert senders == ["evil@example.org", "root@example.org"]


# --- line endings, line and command lengths ---------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"one\ntwo\r\n", b"one\rtwo\r\n", b"one\r\r\n", b"\n\r\n"],
    ids=["bare-LF", "bare-CR", "CR-CRLF", "LF-CRLF"],
)
def test_bare_cr_or_lf_in_data_is_refused(lab: Lab, wire: Wire, body: bytes) -> None:
    with wire(lab, "mx") as s:
        begin(s)
        s.send(b"Subject: bare\r\n\r\n" + body + b".\r\n")
        code, lines = s.reply()
        assert code == 550
        assert lines == ["550 5.5.2 Error: bare <CR> or <LF> received; use <CR><LF>"]
        still_answers(lab, s, wire)
    assert queued(lab) == []
    assert mails(lab, "bob") == []


def test_data_line_over_1000_octets_is_refused(lab: Lab, wire: Wire) -> None:
    with wire(lab, "mx") as s:
        begin(s)
        s.send(b"Subject: long\r\n\r\n" + b"x" * 1001 + b"\r\nshort line\r\n.\r\n")
        code, lines = s.reply()
        assert code == 500, lines
        still_answers(lab, s, wire)
    assert queued(lab) == []


def test_data_line_of_1001_octets_with_its_crlf_is_refused(lab: Lab, wire: Wire) -> None:
    """RFC 5321 4.5.3.1.6: 1000 octets with the CRLF at most; one more is too long."""
    with wire(lab, "mx") as s:
        begin(s)
        s.send(b"Subject: long\r\n\r\n" + b"x" * 999 + b"\r\nshort line\r\n.\r\n")
        code, lines = s.cmd("NOOP")  # the 500 comes once the data has ended, not before
        assert (code, lines) == (
            500,
            ["500 5.5.2 Line too long (see RFC 5321 section 4.5.3.1.6)"],
        )
        assert s.reply()[0] == 250  # NOOP's
        still_answers(lab, s, wire)
    assert queued(lab) == []
    assert mails(lab, "bob") == []


def test_data_line_of_exactly_998_octets_is_fine(lab: Lab, wire: Wire) -> None:
    with wire(lab, "mx") as s:
        begin(s)
        s.send(b"Subject: long\r\n\r\n" + b"y" * 998 + b"\r\n.\r\n")
        assert s.reply()[0] == 250
    [message] = mails(lab, "bob")
    assert "y" * 998 + "\r\n" in message


def test_command_over_512_octets_is_refused(lab: Lab, wire: Wire) -> None:
    with wire(lab, "mx") as s:
        assert s.reply()[0] == 220
        assert s.code("EHLO client.example.org") == 250
        code, lines = s.cmd("MAIL FROM:<" + "a" * 600 + "@example.org>")
        assert code == 500, lines
        code, lines = s.cmd("NOOP " + "z" * 600)
        assert code == 500, lines
        still_answers(lab, s, wire)
    assert queued(lab) == []


# --- size and recipient limits ----------------------------------------------------------------


def test_message_over_max_size_is_refused(lab_factory: Callable[..., Lab], wire: Wire) -> None:
    with lab_factory(world(max_size=2000)) as lab:
        with wire(lab, "mx") as s:
            begin(s)
            s.send(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 40 + b".\r\n")
            code, lines = s.reply()
            assert code == 552, lines
            # declared up front with SIZE, it is refused at MAIL
            code, lines = s.cmd("MAIL FROM:<root@example.org> SIZE=5000")
            assert code == 552, lines
            still_answers(lab, s, wire)
            # and a small one still goes through
            assert s.code("MAIL FROM:<root@example.org> SIZE=100") == 250
            assert s.code("RCPT TO:<bob@example.org>") == 250
            assert s.code("DATA") == 354
            s.send(b"Subject: small\r\n\r\nfits\r\n.\r\n")
            assert s.reply()[0] == 250
        [only] = queued(lab)
        assert only["recipients"] == ["bob@example.org"]
        [message] = mails(lab, "bob")
        assert "Subject: small" in message


def test_the_101st_recipient_gets_452(lab_factory: Callable[..., Lab], wire: Wire) -> None:
    topology = world()
    topology.nodes["mx"].users = [f"u{n}" for n in range(101)]
    with lab_factory(topology, durable=False) as lab:
        with wire(lab, "mx") as s:
            begin(s, rcpts=(), data=False)
            for n in range(100):
                assert s.code(f"RCPT TO:<u{n}@example.org>") == 250, n
            code, lines = s.cmd("RCPT TO:<u100@example.org>")
            assert (code, lines) == (452, ["452 4.5.3 Too many recipients"])
            assert s.code("DATA") == 354
            s.send(b"Subject: many\r\n\r\nhello all\r\n.\r\n")
            assert s.reply()[0] == 250
            still_answers(lab, s, wire)
        [message] = queued(lab)
        assert len(message["recipients"]) == 100  # type: ignore[arg-type]
        assert "u100@example.org" not in message["recipients"]  # type: ignore[operator]
        assert len(lab.mailbox("mx", "u99")) == 1
        assert lab.mailbox("mx", "u100") == []


# --- clients that go away ---------------------------------------------------------------------


def test_client_dropping_after_354_leaves_nothing(lab: Lab, wire: Wire) -> None:
    s = wire(lab, "mx")
    begin(s)
    s.send(b"Subject: half\r\n\r\nhalf a message\r\n")
    s.abort()
    lab.wait_for("smtp.command", node="mx", command="DATA")
    still_answers(lab, None, wire)
    assert queued(lab) == []
    assert mails(lab, "bob") == []


def test_client_closing_after_354_leaves_nothing(lab: Lab, wire: Wire) -> None:
    s = wire(lab, "mx")
    begin(s)
    s.send(b"Subject: half\r\n\r\nhalf a message\r\n.")  # the dot, but no CRLF after it
    s.close()
    still_answers(lab, None, wire)
    assert queued(lab) == []
    assert mails(lab, "bob") == []


def test_client_dropping_after_250_still_gets_its_message_delivered(lab: Lab, wire: Wire) -> None:
    s = wire(lab, "mx")
    begin(s)
    s.send(b"Subject: acked\r\n\r\nall there\r\n.\r\n")
    code, lines = s.reply()
    assert code == 250
    s.abort()  # no QUIT: the 250 is what counts
    queue_id = lines[0].split()[2]
    [message] = mails(lab, "bob")
    assert f"id {queue_id}" in message
    assert "all there" in message
    assert lab.queue("mx") == []
    still_answers(lab, None, wire)


def test_client_dropping_right_after_the_dot(lab: Lab, wire: Wire) -> None:
    s = wire(lab, "mx")
    begin(s)
    s.send(b"Subject: raced\r\n\r\nraced\r\n.\r\n")
    s.abort()  # before reading the reply: either it was taken whole, or not at all
    lab.wait_for("smtp.command", node="mx", command="DATA")
    still_answers(lab, None, wire)
    taken = queued(lab)
    delivered = mails(lab, "bob")
    assert len(taken) == len(delivered) <= 1
    if delivered:
        assert "raced" in delivered[0]
    assert lab.queue("mx") == []


# --- pipelining and talking first ---------------------------------------------------------------


def test_commands_sent_before_the_greeting_are_answered_in_order(lab: Lab, wire: Wire) -> None:
    with wire(lab, "mx") as s:
        s.send(
            b"EHLO early.example.org\r\nMAIL FROM:<root@example.org>\r\n"
            b"RCPT TO:<bob@example.org>\r\nRCPT TO:<nobody@example.org>\r\nDATA\r\n"
        )
        assert s.reply()[0] == 220
        code, lines = s.reply()
        assert code == 250 and "250-PIPELINING" in lines
        assert s.reply()[0] == 250
        assert s.reply()[0] == 250
        assert s.reply() == (550, ["550 5.1.1 <nobody@example.org>... User unknown"])
        assert s.reply()[0] == 354
        s.send(b"Subject: piped\r\n\r\nin one go\r\n.\r\nNOOP\r\nQUIT\r\n")
        assert s.reply()[0] == 250
        assert s.reply()[0] == 250
        assert s.reply()[0] == 221
    [message] = queued(lab)
    assert message["recipients"] == ["bob@example.org"]
    assert len(mails(lab, "bob")) == 1
    still_answers(lab, None, wire)


# --- 8-bit data -----------------------------------------------------------------------------------


def test_8bit_data_needs_body_8bitmime(lab: Lab, wire: Wire) -> None:
    body = "Subject: caf\u00e9\r\n\r\nd\u00e9j\u00e0 vu\r\n".encode()
    with wire(lab, "mx") as s:
        begin(s)
        s.send(body + b".\r\n")
        assert s.reply() == (554, ["554 5.6.1 8-bit data without BODY=8BITMIME"])
        assert queued(lab) == []
        assert s.code("MAIL FROM:<root@example.org> BODY=8BITMIME") == 250
        assert s.code("RCPT TO:<bob@example.org>") == 250
        assert s.code("DATA") == 354
        s.send(body + b".\r\n")
        assert s.reply()[0] == 250
        still_answers(lab, s, wire)
    message = lab.assert_delivered("bob@example.org", node="mx", mailbox="bob")
    assert len(lab.mailbox("mx", "bob")) == 1
    assert "d\u00e9j\u00e0 vu" in message.raw
    assert len(queued(lab)) == 1


# --- control characters in addresses --------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        b"MAIL FROM:<a\r@example.org>",
        b"MAIL FROM:<root@example.org\r>",
        b"MAIL FROM:<ro\x00ot@example.org>",
        b"MAIL FROM:<root\x1b@example.org>",
        b"MAIL FROM:<root@exa\x7fmple.org>",
    ],
    ids=["CR-local", "CR-end", "NUL", "ESC", "DEL"],
)
def test_control_characters_in_the_sender_are_refused(lab: Lab, wire: Wire, command: bytes) -> None:
    with wire(lab, "mx") as s:
        assert s.reply()[0] == 220
        assert s.code("EHLO client.example.org") == 250
        code, lines = s.cmd(command)
        assert code == 501, lines
        # no transaction was opened: RCPT needs MAIL first
        assert s.code("RCPT TO:<bob@example.org>") == 503
        still_answers(lab, s, wire)
    assert queued(lab) == []


@pytest.mark.parametrize(
    "command",
    [
        b"RCPT TO:<b\rob@example.org>",
        b"RCPT TO:<bob@example.org\r>",
        b"RCPT TO:<bob\x00@example.org>",
        b"RCPT TO:<bob@example.org\x08>",
    ],
    ids=["CR-local", "CR-end", "NUL", "BS"],
)
def test_control_characters_in_a_recipient_are_refused(
    lab: Lab, wire: Wire, command: bytes
) -> None:
    with wire(lab, "mx") as s:
        begin(s, rcpts=(), data=False)
        code, lines = s.cmd(command)
        assert code == 501, lines
        assert s.code("DATA") == 503  # no valid recipient
        still_answers(lab, s, wire)
    assert queued(lab) == []
    assert mails(lab, "bob") == []


# --- a path that is only its opening bracket ------------------------------------------------


def test_an_unclosed_angle_bracket_is_a_syntax_error(lab: Lab, wire: Wire) -> None:
    """`MAIL FROM:<` made the address parser raise (500 Error: (IndexError) ...); it is a
    malformed address like any other."""
    with wire(lab, "mx") as s:
        assert s.reply()[0] == 220
        assert s.code("EHLO client.example.org") == 250
        for command in ("MAIL FROM:<", "MAIL FROM: <", "MAIL FROM:<  "):
            assert s.cmd(command) == (553, ["553 5.1.3 Error: malformed address"])
        assert s.code("MAIL FROM:<root@example.org>") == 250
        for command in ("RCPT TO:<", "RCPT TO: <"):
            assert s.cmd(command) == (553, ["553 5.1.3 Error: malformed address"])
        assert s.code("RCPT TO:<bob@example.org>") == 250
        still_answers(lab, s, wire)


# --- control characters in HELO and EHLO ----------------------------------------------------------


@pytest.mark.parametrize("verb", ["HELO", "EHLO"])
@pytest.mark.parametrize(
    "name",
    [b"evil\x00host\x01x", b"evil\x1bhost", b"evil\x7fhost", b"evil\x08host.example.org"],
    ids=["NUL-SOH", "ESC", "DEL", "BS"],
)
def test_control_characters_in_helo_are_refused(
    lab: Lab, wire: Wire, verb: str, name: bytes
) -> None:
    """Refused with 501 and kept out of Received:; the session goes on."""
    with wire(lab, "mx") as s:
        assert s.reply()[0] == 220
        code, lines = s.cmd(verb.encode() + b" " + name)
        assert (code, lines) == (501, ["501 5.5.2 Helo command rejected: invalid host name"])
        assert s.code("MAIL FROM:<root@example.org>") == 503  # still no HELO
        assert s.code(f"{verb} client.example.org") == 250
        assert s.code("MAIL FROM:<root@example.org>") == 250
        assert s.code("RCPT TO:<bob@example.org>") == 250
        assert s.code("DATA") == 354
        s.send(b"Subject: after a bad HELO\r\n\r\nhello\r\n.\r\n")
        assert s.reply()[0] == 250
        still_answers(lab, s, wire)
    [message] = mails(lab, "bob")
    assert "Received: from client.example.org (" in message
    assert "evil" not in message


# --- the lab going down under open sessions -------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "starttls"])
def test_lab_down_ends_sessions_still_open(
    lab_factory: Callable[..., Lab], wire: Wire, tls: bool
) -> None:
    lab = lab_factory(world())
    try:
        idle = wire(lab, "mx")
        assert idle.reply()[0] == 220
        busy = wire(lab, "mx")
        assert busy.reply()[0] == 220
        assert busy.code("EHLO client.example.org") == 250
        if tls:
            assert busy.code("STARTTLS") == 220
            context = ssl.create_default_context(cafile=lab.status()["ca"])
            busy.sock = context.wrap_socket(busy.sock, server_hostname="mx.example.org")
            assert busy.code("EHLO client.example.org") == 250
        begin_transaction = ("MAIL FROM:<root@example.org>", "RCPT TO:<bob@example.org>")
        assert [busy.code(c) for c in begin_transaction] == [250, 250]
        assert busy.code("DATA") == 354
        busy.send(b"Subject: cut short\r\n\r\nhalf")
    finally:
        lab.down()
    # both clients see the end at once instead of hanging, and nothing is left open
    # (an unclosed transport would surface here as an unraisable ResourceWarning)
    for s in (idle, busy):
        s.sock.settimeout(2)
        # a TLS session cut without close_notify raises SSLError: ended all the same
        with contextlib.suppress(ssl.SSLError):
            assert s.closed_by_peer()
    gc.collect()
