"""The POP3 service (lab.services.pop3) over real sockets: the ISP of home-dialup, driven
with Python's poplib and with raw bytes, as a mail client (or a person with telnet) would.

What the asyncio shell adds to the protocol core: the Maildir store behind it, the lock
between sessions, the delay after a failed login, idle logout, STLS with the lab CA,
clients that drop, and the events; whole dialogues check the core's replies arrive
unchanged over TCP. Each reply and state of the protocol on its own is in
tests/protocols/test_pop3_protocol.py.
"""

from __future__ import annotations

import poplib
import re
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.harness.lab import Lab
from lab.protocols.pop3 import uid_for_key
from lab.services.maildir import MailStore

AUTH_DELAY = 0.3
USER, PASSWORD = "shofar", "s3cret"
ONE = (
    b"Return-Path: <paulmidgley@freeuk.com>\r\nDelivered-To: eddy@shofar.uklinux.net\r\n"
    b"From: paulmidgley@freeuk.com\r\nSubject: one\r\n\r\n"
    b"Internet access\r\n.leading dot\r\n.\r\nlast line\r\n"
)
TWO = b"From: keith@example.org\nSubject: two\n\nstored with bare LF\nsecond line\n"
THREE = b"Subject: three\r\n\r\n" + b"".join(b"line %d\r\n" % i for i in range(1, 11))
TOO_LONG = b"-ERR command line too long (more than 255 octets)\r\n"


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


# In process: they set the service's delays in place; on Docker no endpoint reaches isp's POP3.
pytestmark = [pytest.mark.topology("home-dialup"), pytest.mark.lab_backend("inprocess")]


@pytest.fixture
def lab(lab: Lab) -> Iterator[Lab]:
    """The plugin's lab, with a short delay after failed logins; no session may hit a bug."""
    lab.backend.services["isp"].pop3.auth_delay = AUTH_DELAY
    yield lab
    bugs = [e for e in lab.events if e.kind == "pop3.internal_error"]
    assert not bugs, bugs


def store(lab: Lab) -> MailStore:
    return MailStore(Path(lab.status()["state_dir"]) / "nodes" / "isp" / "mail", durable=False)


def put(lab: Lab, *contents: bytes) -> list[str]:
    """Messages straight into the ISP's maildrop (as its MTA would deliver them)."""
    return [store(lab).deliver(USER, c) for c in contents]


def endpoint(lab: Lab) -> tuple[str, int]:
    host, _, port = lab.status()["nodes"]["isp"]["endpoints"]["pop3"].rpartition(":")
    return host, int(port)


def connect(lab: Lab) -> poplib.POP3:
    return poplib.POP3(*endpoint(lab), timeout=10)


def login(lab: Lab) -> poplib.POP3:
    client = connect(lab)
    client.user(USER)
    client.pass_(PASSWORD)
    return client


class Raw:
    """A socket and bytes, as telnet would do it."""

    def __init__(self, address: tuple[str, int]):
        self.sock = socket.create_connection(address, timeout=10)
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()

    def line(self) -> bytes:
        return self.file.readline()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def cmd(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.line()

    def login(self) -> None:
        assert self.cmd(b"USER " + USER.encode()).startswith(b"+OK")
        assert self.cmd(b"PASS " + PASSWORD.encode()).startswith(b"+OK")

    def reset(self) -> None:
        """Close with a TCP RST, as a client that dies does."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.file.close()
        self.sock.close()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def kinds(lab: Lab, prefix: str = "pop3.") -> list[str]:
    return [e.kind for e in lab.events if e.kind.startswith(prefix)]


# the whole dialogue --------------------------------------------------------------------


def test_every_command_with_poplib(lab: Lab):
    put(lab, ONE, TWO, THREE)
    sizes = [len(crlf(m)) for m in (ONE, TWO, THREE)]
    client = connect(lab)
    assert re.fullmatch(
        rb"\+OK <[^<>@ ]+@mail\.uklinux\.net> maillab POP3 ready", client.getwelcome()
    )
    caps = client.capa()
    for cap in ("TOP", "UIDL", "USER", "PIPELINING", "RESP-CODES", "STLS"):
        assert cap in caps
    assert caps["IMPLEMENTATION"] == ["maillab"]
    assert client.user(USER) == b"+OK send PASS"
    assert client.pass_(PASSWORD) == (
        f"+OK shofar's maildrop has 3 messages ({sum(sizes)} octets)".encode()
    )
    assert client.stat() == (3, sum(sizes))
    response, listing, _ = client.list()
    assert response == f"+OK 3 messages ({sum(sizes)} octets)".encode()
    assert listing == [f"{n} {s}".encode() for n, s in enumerate(sizes, 1)]
    assert client.list(2) == f"+OK 2 {sizes[1]}".encode()
    _, uids, _ = client.uidl()
    keys = store(lab).keys(USER)
    assert uids == [f"{n} {uid_for_key(k)}".encode() for n, k in enumerate(keys, 1)]
    assert client.uidl(3) == f"+OK 3 {uid_for_key(keys[2])}".encode()
    response, lines, octets = client.retr(1)
    assert response == f"+OK {sizes[0]} octets".encode()
    assert b"\r\n".join(lines) + b"\r\n" == ONE  # un-stuffed by poplib
    assert octets == sizes[0]
    response, lines, _ = client.top(3, 2)
    assert lines == [b"Subject: three", b"", b"line 1", b"line 2"]
    assert client.noop() == b"+OK"
    assert client.dele(1) == b"+OK message 1 deleted"
    assert client.rset() == f"+OK maildrop has 3 messages ({sum(sizes)} octets)".encode()
    assert client.dele(2) == b"+OK message 2 deleted"
    assert client.stat() == (2, sizes[0] + sizes[2])
    assert client.quit() == b"+OK maillab POP3 server signing off (1 messages deleted)"
    assert store(lab).keys(USER) == [keys[0], keys[2]]
    assert kinds(lab) == [
        "pop3.connect",
        "pop3.login",
        "pop3.retr",
        "pop3.retr",
        "pop3.dele",
        "pop3.dele",
        "pop3.quit",
    ]
    quit_event = lab.wait_for("pop3.quit", node="isp")
    assert quit_event.get("deleted") == 1 and quit_event.get("user") == USER
    login_event = lab.wait_for("pop3.login", node="isp")
    assert login_event.get("ok") is True and login_event.get("messages") == 3


def test_apop_login(lab: Lab):
    put(lab, ONE)
    client = connect(lab)
    assert client.apop(USER, PASSWORD).startswith(b"+OK shofar's maildrop has 1 messages")
    assert client.stat()[0] == 1
    client.quit()
    assert lab.wait_for("pop3.login", node="isp").get("mechanism") == "APOP"


def test_apop_can_be_turned_off_per_mailbox(lab: Lab):
    lab.backend.hosts["isp"].node.mailboxes[USER].apop = False
    client = connect(lab)
    with pytest.raises(poplib.error_proto) as refused:
        client.apop(USER, PASSWORD)
    assert refused.value.args[0] == b"-ERR [AUTH] invalid user name or password"
    client.user(USER)
    assert client.pass_(PASSWORD).startswith(b"+OK")  # USER/PASS still works
    client.quit()


def test_an_empty_maildrop(lab: Lab):
    client = login(lab)
    assert client.stat() == (0, 0)
    assert client.list() == (b"+OK 0 messages (0 octets)", [], 0)
    assert client.uidl()[1] == []
    with pytest.raises(poplib.error_proto):
        client.retr(1)
    assert client.quit().endswith(b"(0 messages deleted)")


def test_pipelined_commands(lab: Lab):
    put(lab, ONE, TWO)
    raw = Raw(endpoint(lab))
    raw.send(b"USER shofar\r\nPASS s3cret\r\nSTAT\r\nLIST 2\r\nQUIT\r\n")
    replies = [raw.line() for _ in range(5)]
    assert [r[:3] for r in replies] == [b"+OK"] * 5
    assert replies[2].startswith(b"+OK 2 ")
    assert raw.line() == b""  # the server closed after QUIT
    raw.close()


# refusals --------------------------------------------------------------------------------


def test_wrong_password_is_refused_after_a_delay(lab: Lab):
    put(lab, ONE)
    client = connect(lab)
    client.user(USER)
    started = time.monotonic()
    with pytest.raises(poplib.error_proto) as refused:
        client.pass_("wrong")
    assert time.monotonic() - started >= AUTH_DELAY
    assert refused.value.args[0] == b"-ERR [AUTH] invalid user name or password"
    with pytest.raises(poplib.error_proto) as refused:
        client.apop(USER, "wrong")
    assert refused.value.args[0].startswith(b"-ERR [AUTH]")
    with pytest.raises(poplib.error_proto):
        client.user("nobody")  # +OK: no user enumeration ...
        client.pass_(PASSWORD)  # ... the pair is refused
    client.user(USER)
    assert client.pass_(PASSWORD).startswith(b"+OK")  # the session is still usable
    client.quit()
    failed = [e for e in lab.events if e.kind == "pop3.login" and not e.get("ok")]
    assert len(failed) == 3


def test_malformed_overlong_and_wrong_state_commands(lab: Lab):
    put(lab, ONE, TWO)
    raw = Raw(endpoint(lab))
    assert raw.greeting.startswith(b"+OK <")
    assert raw.cmd(b"STAT") == b"-ERR STAT is not valid in the AUTHORIZATION state\r\n"
    assert raw.cmd(b"RETR 1") == b"-ERR RETR is not valid in the AUTHORIZATION state\r\n"
    assert raw.cmd(b"FOO bar") == b"-ERR unknown command\r\n"
    assert raw.cmd(b"") == b"-ERR empty command line\r\n"
    assert raw.cmd(b"\x00\xff\xfe garbage") == b"-ERR unknown command\r\n"
    assert raw.cmd(b"PASS s3cret") == b"-ERR give USER first\r\n"
    assert raw.cmd(b"USER " + b"u" * 300) == TOO_LONG
    raw.send(b"x" * 200_000)  # a line that never ends ...
    assert raw.cmd(b"") == TOO_LONG  # ... is one error when it does
    raw.login()
    for line, reply in [
        (b"USER shofar", b"-ERR USER is not valid in the TRANSACTION state"),
        (b"STLS", b"-ERR STLS is not valid in the TRANSACTION state"),
        (b"LIST x", b"-ERR invalid message number 'x'"),
        (b"LIST 0", b"-ERR no such message, only 2 messages in maildrop"),
        (b"RETR 3", b"-ERR no such message, only 2 messages in maildrop"),
        (b"RETR -1", b"-ERR invalid message number '-1'"),
        (b"RETR 99999999999999999999999", b"-ERR no such message, only 2 messages in maildrop"),
        (b"RETR", b"-ERR usage: RETR msg"),
        (b"RETR 1 2", b"-ERR usage: RETR msg"),
        (b"TOP 1", b"-ERR usage: TOP msg n"),
        (b"TOP 1 many", b"-ERR invalid number of lines 'many'"),
        (b"DELE one", b"-ERR invalid message number 'one'"),
        (b"UIDL 5", b"-ERR no such message, only 2 messages in maildrop"),
        (b"STAT now", b"-ERR usage: STAT"),
        (b"LIST " + b"9" * 60, b"-ERR argument too long (more than 40 octets)"),
        (b"NOOP", b"+OK"),
    ]:
        assert raw.cmd(line) == reply + b"\r\n", line
    assert raw.cmd(b"STAT").startswith(b"+OK 2 ")
    assert raw.cmd(b"QUIT").startswith(b"+OK")
    raw.close()
    assert len(store(lab).keys(USER)) == 2
    errors = [e for e in lab.events if e.kind == "pop3.error"]
    assert len(errors) == 23
    # the service is still there
    client = login(lab)
    assert client.stat()[0] == 2
    client.quit()


def test_retr_of_a_deleted_message(lab: Lab):
    put(lab, ONE, TWO)
    client = login(lab)
    client.dele(1)
    for call in (
        lambda: client.retr(1),
        lambda: client.top(1, 0),
        lambda: client.list(1),
        lambda: client.uidl(1),
        lambda: client.dele(1),
    ):
        with pytest.raises(poplib.error_proto) as refused:
            call()
        assert refused.value.args[0] == b"-ERR message 1 already deleted"
    assert client.retr(2)[0].startswith(b"+OK")
    client.quit()
    assert len(store(lab).keys(USER)) == 1


def test_a_session_that_drops_after_dele_removes_nothing(lab: Lab):
    put(lab, ONE, TWO, THREE)
    raw = Raw(endpoint(lab))
    raw.login()
    assert raw.cmd(b"DELE 1") == b"+OK message 1 deleted\r\n"
    assert raw.cmd(b"DELE 2") == b"+OK message 2 deleted\r\n"
    raw.close()
    lost = lab.wait_for("pop3.disconnect", node="isp")
    assert lost.get("marked") == 2
    assert len(store(lab).keys(USER)) == 3
    client = login(lab)  # and the lock was released
    assert client.stat()[0] == 3
    client.quit()


def test_a_client_that_drops_mid_retr(lab: Lab):
    big = b"Subject: big\r\n\r\n" + (b"." + b"x" * 75 + b"\r\n") * 110_000  # 8.6 MB, all stuffed
    put(lab, big, ONE)
    raw = Raw(endpoint(lab))
    raw.login()
    assert raw.cmd(b"DELE 2") == b"+OK message 2 deleted\r\n"
    assert raw.cmd(b"RETR 1") == f"+OK {len(big)} octets\r\n".encode()
    assert raw.file.read(4096)
    raw.reset()
    lab.wait_for("pop3.disconnect", node="isp", timeout=20)
    assert len(store(lab).keys(USER)) == 2
    client = login(lab)
    _, lines, octets = client.retr(1)
    assert octets == len(big) and lines[2] == b"." + b"x" * 75
    assert client.stat()[0] == 2
    client.quit()


def test_a_second_session_gets_the_lock_error(lab: Lab):
    put(lab, ONE)
    # a lock refusal must not wait like a bad password
    lab.backend.services["isp"].pop3.auth_delay = 3.0
    first = login(lab)
    second = connect(lab)
    second.user(USER)
    started = time.monotonic()
    with pytest.raises(poplib.error_proto) as refused:
        second.pass_(PASSWORD)
    assert refused.value.args[0] == b"-ERR [IN-USE] maildrop already locked"
    assert time.monotonic() - started < 3.0
    assert first.stat()[0] == 1  # the first session is undisturbed
    first.quit()
    second.user(USER)
    assert second.pass_(PASSWORD).startswith(b"+OK")
    second.quit()


def test_idle_sessions_are_logged_out(lab: Lab):
    put(lab, ONE)
    lab.backend.services["isp"].pop3.idle_timeout = 0.3
    raw = Raw(endpoint(lab))
    raw.login()
    raw.cmd(b"DELE 1")
    assert raw.line() == b""  # closed by the server, without a word (RFC 1939 section 3)
    raw.close()
    assert lab.wait_for("pop3.timeout", node="isp").get("user") == USER
    assert len(store(lab).keys(USER)) == 1


def test_uids_are_stable_across_sessions(lab: Lab):
    put(lab, ONE, TWO, THREE)
    client = login(lab)
    first = dict(line.split() for line in client.uidl()[1])
    client.dele(1)
    client.quit()
    client = login(lab)
    second = dict(line.split() for line in client.uidl()[1])
    client.quit()
    assert list(second.values()) == [first[b"2"], first[b"3"]]


def test_a_message_that_came_over_smtp(lab: Lab):
    result = lab.send(
        "freeuk",
        mail_from="paulmidgley@freeuk.com",
        to=["eddy@shofar.uklinux.net"],
        via="isp",
        subject="Internet access",
        body="Hello Eddy\n.a line with a dot\n",
    )
    assert result.accepted, result.to_json()
    lab.assert_delivered(to="eddy@shofar.uklinux.net", node="isp", mailbox=USER)
    client = login(lab)
    _, lines, octets = client.retr(1)
    assert octets == client.stat()[1]
    assert lines[0] == b"Return-Path: <paulmidgley@freeuk.com>"
    assert lines[1] == b"Delivered-To: eddy@shofar.uklinux.net"
    assert b".a line with a dot" in lines
    client.quit()


# STLS --------------------------------------------------------------------------------------


def test_stls_with_the_lab_ca(lab: Lab):
    put(lab, ONE)
    context = ssl.create_default_context(cafile=lab.status()["ca"])
    client = connect(lab)
    client.host = "mail.uklinux.net"  # the name the certificate is checked against
    assert client.stls(context).startswith(b"+OK")
    assert isinstance(client.sock, ssl.SSLSocket)
    assert client.sock.version() is not None
    assert "STLS" not in client.capa()
    client.user(USER)
    client.pass_(PASSWORD)
    assert client.retr(1)[2] == len(ONE)
    client.quit()
    lab.wait_for("pop3.stls", node="isp")


def test_stls_refused_twice_and_a_client_that_distrusts_the_certificate(lab: Lab):
    raw = Raw(endpoint(lab))
    assert raw.cmd(b"STLS") == b"+OK Begin TLS negotiation now\r\n"
    context = ssl.create_default_context(cafile=lab.status()["ca"])
    tls = context.wrap_socket(raw.sock, server_hostname="mail.uklinux.net")
    tls.sendall(b"STLS\r\n")
    assert tls.recv(200) == b"-ERR command not permitted when TLS active\r\n"
    tls.close()
    raw.file.close()
    raw = Raw(endpoint(lab))
    assert raw.cmd(b"STLS").startswith(b"+OK")
    with pytest.raises(ssl.SSLError):  # the system CAs do not know the lab's
        ssl.create_default_context().wrap_socket(raw.sock, server_hostname="mail.uklinux.net")
    raw.close()
    lab.wait_for("pop3.disconnect", node="isp", timeout=10)
    client = connect(lab)  # still serving
    client.user(USER)
    assert client.pass_(PASSWORD).startswith(b"+OK")
    client.quit()
