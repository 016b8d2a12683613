"""The POP3 service: a small asyncio shell around the sans-IO core in lab.protocols.pop3.

It listens on port 110 of every address of the host (through `host.net`, so the same
code runs in-process and in a container) and, for each connection, feeds bytes to a
`Pop3Server` and answers the events only it can answer:

- a login: the user must be one of the node's `mailboxes`, with its password (USER/PASS)
  or, when the mailbox allows it, the APOP digest of the banner's timestamp. A failed
  login is answered `-ERR [AUTH] ...` after `auth_delay` seconds (1 s by default, as
  real servers slow down password guessing).
- the maildrop lock: one session per maildrop; a second one is told
  `-ERR [IN-USE] maildrop already locked` (RFC 1939 section 4, RFC 2449 section 8.1).
- STLS (RFC 2595): the connection is upgraded with the lab CA's certificate for the
  host's name.
- the UPDATE state: the messages marked with DELE are removed from the Maildir only
  after QUIT. A session that ends any other way (a drop, the idle timeout) removes
  nothing.

The maildrop of mailbox NAME is the Maildir STATE/mail/NAME that the host's MTA delivers
into (lab.services.maildir.MailStore); each message's UIDL is its Maildir key, so it is the
same in every session. Events: pop3.connect, pop3.login, pop3.stls, pop3.retr, pop3.dele,
pop3.quit, pop3.error (a command refused), pop3.timeout, pop3.disconnect (ended without
QUIT) and pop3.internal_error (a bug: the session ends, the service goes on).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import ssl
from collections.abc import Sequence
from typing import Any

from lab.protocols.pop3 import (
    IN_USE,
    POP3_PORT,
    Closed,
    CommandRefused,
    ConnectionLost,
    LoginRequest,
    MessageDeleted,
    MessageInfo,
    MessageRetrieved,
    Pop3Server,
    Signal,
    StartTls,
    State,
    UpdateRequest,
    to_crlf,
    uid_for_key,
)
from lab.services.host import Host
from lab.services.maildir import MailStore
from lab.topology.model import Mailbox

DEFAULT_AUTH_DELAY = 1.0  # seconds (real time) before a failed login is answered
DEFAULT_IDLE_TIMEOUT = 600.0  # RFC 1939 section 3: an autologout timer of at least 10 minutes
READ_SIZE = 65536


class StoreMaildrop:
    """One mailbox of a MailStore as a POP3 maildrop; the listing is fixed at login."""

    def __init__(self, store: MailStore, name: str):
        self.store = store
        self.name = name
        self._infos: list[MessageInfo] = []
        for key in store.keys(name):
            try:
                size = len(to_crlf(store.read(name, key)))
            except (OSError, KeyError):
                continue  # removed while we listed
            self._infos.append(MessageInfo(uid_for_key(key), size, key))

    def messages(self) -> Sequence[MessageInfo]:
        return list(self._infos)

    def read(self, message: MessageInfo) -> bytes:
        return self.store.read(self.name, message.key)


class Pop3Service:
    def __init__(
        self,
        host: Host,
        mta: Any = None,
        *,
        auth_delay: float | None = None,
        idle_timeout: float | None = None,
    ):
        self.host = host
        store = getattr(mta, "store", None)
        self.store: MailStore = store if store is not None else MailStore(host.state_dir / "mail")
        settings = host.settings
        self.auth_delay = float(
            auth_delay
            if auth_delay is not None
            else settings.get("pop3_auth_delay", DEFAULT_AUTH_DELAY)
        )
        self.idle_timeout = float(
            idle_timeout
            if idle_timeout is not None
            else settings.get("pop3_idle_timeout", DEFAULT_IDLE_TIMEOUT)
        )
        self.locks: set[str] = set()
        self.sessions: set[asyncio.Task[None]] = set()
        self._serial = itertools.count(1)

    # lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        await self.host.net.listen(POP3_PORT, self._protocol)

    async def stop(self) -> None:
        """End every open session (nothing is removed: they never reached QUIT)."""
        for task in list(self.sessions):
            task.cancel()
        if self.sessions:
            await asyncio.wait(list(self.sessions), timeout=2.0)

    async def reset(self) -> None:
        """End every session and forget the locks (`Lab.reset()`); the maildrops are the
        mail store's, emptied with it."""
        await self.stop()
        self.locks.clear()

    def _protocol(self) -> asyncio.Protocol:
        reader = asyncio.StreamReader()
        return asyncio.StreamReaderProtocol(reader, self._connected)

    def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(
            self._session(reader, writer), name=f"{self.host.name}:pop3-session"
        )
        self.sessions.add(task)
        task.add_done_callback(self.sessions.discard)

    # mailboxes ------------------------------------------------------------------------

    def mailbox(self, user: str) -> tuple[str, Mailbox] | None:
        boxes = self.host.node.mailboxes
        if user in boxes:
            return user, boxes[user]
        for name, box in boxes.items():
            if name.lower() == user.lower():
                return name, box
        return None

    def _timestamp(self) -> str:
        when = int(self.host.clock.time())
        return f"<{os.getpid()}.{next(self._serial)}.{when}@{self.host.hostname}>"

    # one session ----------------------------------------------------------------------

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer, _, local = self.host.net.accepted(writer.transport)
        if writer.transport.is_closing():  # refused by the lab's network: no session
            return
        conn = Pop3Server(
            self.host.hostname, timestamp=self._timestamp(), stls=self.host.tls is not None
        )
        session = _Session(peer)
        self.host.emit("pop3.connect", peer=peer, local=local)
        try:
            while True:
                await _send(writer, conn)
                event = conn.next_event()
                if isinstance(event, Signal):
                    if conn.state is State.CLOSED:
                        break
                    await _send(writer, conn)
                    try:
                        data = await asyncio.wait_for(reader.read(READ_SIZE), self.idle_timeout)
                    except TimeoutError:
                        # RFC 1939 section 3: close without removing anything, and silently
                        self.host.emit(
                            "pop3.timeout",
                            peer=peer,
                            user=session.user or "",
                            idle=self.idle_timeout,
                        )
                        break
                    conn.receive_data(data)
                    continue
                if await self._handle(event, conn, session, writer):
                    await _send(writer, conn)
                    break
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            self.host.emit(
                "pop3.disconnect",
                peer=peer,
                user=session.user or "",
                error=f"{type(exc).__name__}: {exc}",
                state=conn.state.value,
                marked=len(conn.marked),
            )
        except Exception as exc:  # a bug here must not take the service down with it
            self.host.emit(
                "pop3.internal_error",
                peer=peer,
                user=session.user or "",
                error=f"{type(exc).__name__}: {exc}",
            )
        finally:
            self._unlock(session)
            # No await here: a session still open when the lab's loop stops is closed by
            # the garbage collector, and must not try to run again (RuntimeError: the loop
            # is already closed).
            with contextlib.suppress(RuntimeError):
                writer.close()

    async def _handle(
        self, event: Any, conn: Pop3Server, session: _Session, writer: asyncio.StreamWriter
    ) -> bool:
        """Act on one event of the core; True when the session is over."""
        host, user = self.host, session.user or ""
        if isinstance(event, LoginRequest):
            await self._login(event, conn, session)
        elif isinstance(event, StartTls):
            await _send(writer, conn)
            assert host.tls is not None
            await writer.start_tls(host.tls.server_context(host.hostname))
            conn.tls_started()
            host.emit("pop3.stls", peer=session.peer)
        elif isinstance(event, MessageRetrieved):
            host.emit(
                "pop3.retr",
                user=user,
                number=event.number,
                uid=event.uid,
                size=event.size,
                **({} if event.lines is None else {"top": event.lines}),
            )
        elif isinstance(event, MessageDeleted):
            host.emit("pop3.dele", user=user, number=event.number, uid=event.uid)
        elif isinstance(event, UpdateRequest):
            removed, failed = self._remove(session.user or "", event.deleted)
            conn.update_done(removed, failed)
        elif isinstance(event, CommandRefused):
            host.emit(
                "pop3.error",
                peer=session.peer,
                user=user,
                command=event.command,
                reply=event.reply,
                state=conn.state.value,
            )
        elif isinstance(event, Closed):
            self._unlock(session)  # before the +OK goes out: the next session may log in
            host.emit("pop3.quit", peer=session.peer, user=user, deleted=event.deleted)
            return True
        elif isinstance(event, ConnectionLost):
            self._unlock(session)
            host.emit(
                "pop3.disconnect",
                peer=session.peer,
                user=user,
                state=event.state.value,
                marked=event.marked,
            )
            return True
        return False

    def _unlock(self, session: _Session) -> None:
        if session.locked is not None:
            self.locks.discard(session.locked)
            session.locked = None

    async def _login(self, request: LoginRequest, conn: Pop3Server, session: _Session) -> None:
        found = self.mailbox(request.user)
        ok = found is not None and (request.digest is None or found[1].apop)
        ok = ok and found is not None and request.verify(found[1].password)
        if not ok or found is None:
            await asyncio.sleep(self.auth_delay)
            conn.reject_login("invalid user name or password")
            self.host.emit(
                "pop3.login",
                peer=session.peer,
                user=request.user,
                ok=False,
                mechanism=request.mechanism,
                reason="authentication failed",
            )
            return
        name = found[0]
        if name in self.locks:
            conn.reject_login("maildrop already locked", code=IN_USE)
            self.host.emit(
                "pop3.login",
                peer=session.peer,
                user=name,
                ok=False,
                mechanism=request.mechanism,
                reason="maildrop locked",
            )
            return
        self.locks.add(name)
        session.locked, session.user = name, name
        try:
            maildrop = StoreMaildrop(self.store, name)
        except OSError as exc:
            self.locks.discard(name)
            session.locked = session.user = None
            conn.reject_login(f"cannot open the maildrop: {exc}", code="SYS/TEMP")
            return
        conn.accept_login(maildrop)
        self.host.emit(
            "pop3.login",
            peer=session.peer,
            user=name,
            ok=True,
            mechanism=request.mechanism,
            messages=len(maildrop.messages()),
        )

    def _remove(self, name: str, messages: Sequence[MessageInfo]) -> tuple[int, int]:
        removed = failed = 0
        for info in messages:
            try:
                self.store.remove(name, info.key)
                removed += 1
            except KeyError:
                removed += 1  # already gone
            except OSError as exc:
                failed += 1
                self.host.emit(
                    "pop3.error",
                    user=name,
                    command="QUIT",
                    uid=info.uid,
                    reply=f"cannot remove: {exc}",
                )
        return removed, failed


class _Session:
    def __init__(self, peer: str):
        self.peer = peer
        self.user: str | None = None
        self.locked: str | None = None


async def _send(writer: asyncio.StreamWriter, conn: Pop3Server) -> None:
    data = conn.data_to_send()
    if data:
        writer.write(data)
        await writer.drain()


__all__ = ["POP3_PORT", "Pop3Service", "StoreMaildrop"]
