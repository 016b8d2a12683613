"""The MTA's outbound SMTP client (lab.services.mta.outbound) against a scripted server.

The lab's own MTAs are tested end to end elsewhere; here a small server written in the
test shows what goes over the wire: pipelined commands in one write when PIPELINING is
offered, one at a time when it is not, per-recipient results, RSET after a transaction
with nobody to deliver to, and a lost connection as a session failure.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

from lab.services.mta.outbound import OutboundSession, SessionError, dot_stuff


class Scripted:
    """An SMTP server that answers by rule and keeps every chunk it read."""

    def __init__(self, *, pipelining: bool, refuse: tuple[str, ...] = (), drop_at: str = ""):
        self.pipelining = pipelining
        self.refuse = refuse  # recipients answered 550
        self.drop_at = drop_at  # a command after which the server hangs up
        self.chunks: list[bytes] = []
        self.commands: list[str] = []
        self.messages: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mx.test ESMTP\r\n")
        buffer, in_data, rcpts = b"", False, 0
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            self.chunks.append(chunk)
            buffer += chunk
            while True:
                if in_data:
                    end = buffer.find(b"\r\n.\r\n")
                    if end < 0:
                        break
                    self.messages.append(buffer[: end + 2])
                    buffer, in_data = buffer[end + 5 :], False
                    writer.write(b"250 2.0.0 Ok: queued as ABC123\r\n")
                    continue
                line, sep, rest = buffer.partition(b"\r\n")
                if not sep:
                    break
                buffer = rest
                command = line.decode()
                self.commands.append(command)
                verb = command.split(" ", 1)[0].upper()
                if self.drop_at and command.startswith(self.drop_at):
                    writer.close()
                    return
                if verb == "EHLO":
                    extra = b"250-PIPELINING\r\n" if self.pipelining else b""
                    writer.write(b"250-mx.test\r\n" + extra + b"250 8BITMIME\r\n")
                elif verb == "MAIL":
                    rcpts = 0
                    writer.write(b"250 2.1.0 Ok\r\n")
                elif verb == "RCPT":
                    if any(r in command for r in self.refuse):
                        writer.write(b"550 5.1.1 User unknown\r\n")
                    else:
                        rcpts += 1
                        writer.write(b"250 2.1.5 Ok\r\n")
                elif verb == "DATA":
                    if rcpts:
                        in_data = True
                        writer.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    else:
                        writer.write(b"554 5.5.1 Error: no valid recipients\r\n")
                elif verb == "QUIT":
                    writer.write(b"221 2.0.0 Bye\r\n")
                    writer.close()
                    return
                else:  # RSET, NOOP
                    writer.write(b"250 2.0.0 Ok\r\n")


async def session_with(server: Scripted) -> tuple[OutboundSession, asyncio.AbstractServer]:
    listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    session = OutboundSession(
        sock,
        server_name="mx.test",
        local_name="hub.test",
        tls_context=None,
        tls="off",
        timeout=5,
    )
    await session.open()
    return session, listening


def converse(server: Scripted, body: Callable[[OutboundSession], Awaitable[None]]) -> None:
    """Open a session with `server`, run `body` on it, then QUIT and stop the server."""

    async def run() -> None:
        session, listening = await session_with(server)
        try:
            await body(session)
        finally:
            await session.close()
            listening.close()

    asyncio.run(run())


def test_with_pipelining_the_envelope_goes_in_one_write_and_each_recipient_gets_its_reply() -> None:
    server = Scripted(pipelining=True, refuse=("nobody@",))

    async def body(session: OutboundSession) -> None:
        before = len(server.chunks)
        result = await session.send(
            "joe@home.test", ["bob@mx.test", "nobody@mx.test"], b"Subject: hi\r\n\r\n.dot\r\n"
        )
        first = server.chunks[before]
        assert first == (
            b"MAIL FROM:<joe@home.test>\r\nRCPT TO:<bob@mx.test>\r\n"
            b"RCPT TO:<nobody@mx.test>\r\nDATA\r\n"
        )
        assert result.final("bob@mx.test").code == 250
        assert "ABC123" in result.final("bob@mx.test").text
        assert result.final("nobody@mx.test").code == 550
        assert server.messages == [b"Subject: hi\r\n\r\n..dot\r\n"]

    converse(server, body)
    assert server.commands[-1] == "QUIT"


def test_nobody_accepted_means_no_message_and_a_reset_before_the_next() -> None:
    server = Scripted(pipelining=True, refuse=("nobody@",))

    async def body(session: OutboundSession) -> None:
        first = await session.send("joe@home.test", ["nobody@mx.test"], b"Subject: 1\r\n\r\nx\r\n")
        assert first.final("nobody@mx.test").code == 550
        second = await session.send("joe@home.test", ["bob@mx.test"], b"Subject: 2\r\n\r\ny\r\n")
        assert second.final("bob@mx.test").code == 250

    converse(server, body)
    verbs = [c.split(" ", 1)[0] for c in server.commands]
    assert verbs == ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA", "QUIT"]
    assert len(server.messages) == 1 and b"Subject: 2" in server.messages[0]


def test_without_pipelining_each_command_waits_for_its_reply() -> None:
    server = Scripted(pipelining=False, refuse=("nobody@",))

    async def body(session: OutboundSession) -> None:
        before = len(server.chunks)
        result = await session.send(
            "joe@home.test", ["bob@mx.test", "nobody@mx.test"], b"Subject: hi\r\n\r\nx\r\n"
        )
        assert result.final("bob@mx.test").code == 250
        assert result.final("nobody@mx.test").code == 550
        envelope = server.chunks[before : before + 4]
        assert [c.split(b" ", 1)[0] for c in envelope] == [b"MAIL", b"RCPT", b"RCPT", b"DATA\r\n"]

    converse(server, body)


def test_a_server_that_hangs_up_mid_transaction_fails_the_session() -> None:
    server = Scripted(pipelining=True, drop_at="RCPT")

    async def body(session: OutboundSession) -> None:
        with pytest.raises(SessionError) as failed:
            await session.send("joe@home.test", ["bob@mx.test"], b"Subject: hi\r\n\r\nx\r\n")
        assert failed.value.reply.code == 421
        assert "4.4.2" in str(failed.value.reply)

    converse(server, body)


def test_control_characters_in_addresses_never_reach_the_wire() -> None:
    server = Scripted(pipelining=True)

    async def body(session: OutboundSession) -> None:
        result = await session.send(
            "joe@home.test", ["bob@mx.test\r\nRCPT TO:<x@evil.test>"], b"Subject: hi\r\n\r\nx\r\n"
        )
        assert result.final("bob@mx.test\r\nRCPT TO:<x@evil.test>").code == 553

    converse(server, body)
    assert not any("evil" in c for c in server.commands)


@pytest.mark.parametrize(
    ("content", "wire"),
    [
        (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"a\nb", b"a\r\nb\r\n.\r\n"),
        (b".start\r\n", b"..start\r\n.\r\n"),
        (b"bare\rcr\r\n", b"bare\r\ncr\r\n.\r\n"),
    ],
)
def test_dot_stuffing(content: bytes, wire: bytes) -> None:
    assert dot_stuff(content) == wire
