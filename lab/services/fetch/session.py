"""The POP3 client over asyncio streams: lab.protocols.pop3's Pop3Client, one command,
one reply."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl

from lab.protocols.pop3 import ConnectionLost, Err, Greeting, Ok, Pop3Client, Signal

READ_SIZE = 65536


class PopError(Exception):
    """The POP3 session failed at `stage`."""

    def __init__(self, stage: str, text: str):
        super().__init__(f"{stage}: {text}")
        self.stage, self.text = stage, text


class PopSession:
    """An asyncio shell around lab.protocols.pop3.Pop3Client: one command, one reply."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, timeout: float
    ):
        self.reader, self.writer, self.timeout = reader, writer, timeout
        self.core = Pop3Client()

    @classmethod
    async def open(cls, sock: socket.socket, *, timeout: float) -> tuple[PopSession, Greeting]:
        reader, writer = await asyncio.open_connection(sock=sock)
        session = cls(reader, writer, timeout=timeout)
        event = await session._event("greeting")
        if not isinstance(event, Greeting):
            await session.close()
            raise PopError("greeting", getattr(event, "text", "the server said no"))
        return session, event

    async def _event(self, stage: str) -> Greeting | Ok | Err:
        while True:
            event = self.core.next_event()
            if isinstance(event, Signal):  # NEED_DATA
                data = await asyncio.wait_for(self.reader.read(READ_SIZE), self.timeout)
                self.core.receive_data(data)
                continue
            if isinstance(event, ConnectionLost):
                raise PopError(stage, "the server closed the connection")
            return event

    async def call(self, command: str, *args: str | int) -> Ok | Err:
        self.writer.write(self.core.send(command, *args))
        await self.writer.drain()
        event = await self._event(command)
        assert not isinstance(event, Greeting)
        return event

    async def starttls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        await self.writer.start_tls(context, server_hostname=server_hostname)

    async def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # the lab's loop is closing
            self.writer.close()
