"""Handing mail to the next host over SMTP (aiosmtplib), one session for many messages.

A session says EHLO (HELO if EHLO is refused), upgrades with STARTTLS when the server
offers it (verified against the lab CA), then runs one transaction per message:
MAIL FROM, RCPT TO for each recipient, DATA when at least one was accepted. Each
recipient gets its own result: accepted recipients are delivered, a 4xx is retried,
a 5xx bounced.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from dataclasses import dataclass, field

import aiosmtplib
from aiosmtplib import SMTPResponseException, SMTPServerDisconnected

from lab.protocols.smtp import Reply


@dataclass
class TransactionResult:
    """What the server said to one message: a reply per recipient."""

    mail_reply: Reply | None = None
    rcpt_replies: dict[str, Reply] = field(default_factory=dict)
    data_reply: Reply | None = None

    def final(self, rcpt: str) -> Reply:
        """The reply that decides this recipient's fate."""
        if self.mail_reply is not None and self.mail_reply.code >= 400:
            return self.mail_reply
        reply = self.rcpt_replies.get(rcpt)
        if reply is None:
            return Reply(451, "4.4.2 connection lost before RCPT")
        if reply.code >= 400:
            return reply
        return self.data_reply or Reply(451, "4.4.2 connection lost during DATA")


class SessionError(Exception):
    """The session failed as a whole (connect, greeting, EHLO, TLS, lost connection)."""

    def __init__(self, reply: Reply, *, stage: str):
        super().__init__(str(reply))
        self.reply = reply
        self.stage = stage


def _reply(exc: SMTPResponseException) -> Reply:
    return Reply(exc.code, exc.message)


class OutboundSession:
    def __init__(
        self,
        sock: socket.socket,
        *,
        server_name: str,
        local_name: str,
        tls_context: ssl.SSLContext | None,
        tls: str,
        timeout: float,
    ):
        self.client = aiosmtplib.SMTP(
            hostname=server_name,
            sock=sock,
            local_hostname=local_name,
            tls_context=tls_context,
            start_tls=False,
            timeout=timeout,
        )
        self.tls_mode = tls
        self.used_tls = False
        self.transcript: list[str] = []

    async def open(self) -> None:
        try:
            greeting = await self.client.connect()
            self.transcript.append(f"<<< {greeting.code} {greeting.message}")
            try:
                ehlo = await self.client.ehlo()
                self.transcript.append(f"<<< {ehlo.code} {ehlo.message.splitlines()[0]}")
            except SMTPResponseException as exc:
                if exc.code < 500:  # 421 and the like: the server is going away, not HELO-only
                    raise
                helo = await self.client.helo()
                self.transcript.append(f"<<< {helo.code} {helo.message}")
            if self.tls_mode != "off" and self.client.supports_extension("starttls"):
                await self.client.starttls()
                self.used_tls = True
                self.transcript.append("<<< 220 STARTTLS done")
                await self.client.ehlo()
            elif self.tls_mode == "require":
                raise SessionError(
                    Reply(530, "5.7.10 server does not offer STARTTLS"), stage="starttls"
                )
        except SMTPResponseException as exc:
            raise SessionError(_reply(exc), stage="greeting") from exc
        except SMTPServerDisconnected as exc:
            raise SessionError(
                Reply(421, f"4.4.2 connection lost: {exc}"), stage="greeting"
            ) from exc
        except (ssl.SSLError, aiosmtplib.SMTPException, OSError) as exc:
            raise SessionError(
                Reply(421, f"4.7.5 session failed: {exc}"), stage="greeting"
            ) from exc

    async def send(
        self,
        envelope_from: str,
        recipients: list[str],
        content: bytes,
        *,
        mail_options: list[str] | None = None,
    ) -> TransactionResult:
        result = TransactionResult()
        try:
            try:
                response = await self.client.mail(envelope_from, options=mail_options or [])
                result.mail_reply = Reply(response.code, response.message)
            except SMTPResponseException as exc:
                result.mail_reply = _reply(exc)
                await self._rset()
                return result
            for rcpt in recipients:
                try:
                    response = await self.client.rcpt(rcpt)
                    result.rcpt_replies[rcpt] = Reply(response.code, response.message)
                except SMTPResponseException as exc:
                    result.rcpt_replies[rcpt] = _reply(exc)
            if not any(r.code < 400 for r in result.rcpt_replies.values()):
                await self._rset()
                return result
            try:
                response = await self.client.data(content)
                result.data_reply = Reply(response.code, response.message)
            except SMTPResponseException as exc:
                result.data_reply = _reply(exc)
        except SMTPServerDisconnected as exc:
            raise SessionError(
                Reply(421, f"4.4.2 connection lost: {exc}"), stage="transaction"
            ) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise SessionError(Reply(451, f"4.4.2 {exc}"), stage="transaction") from exc
        return result

    async def _rset(self) -> None:
        with contextlib.suppress(SMTPResponseException, SMTPServerDisconnected, OSError):
            await self.client.rset()

    async def close(self) -> None:
        try:
            await self.client.quit()
        except Exception:  # the other end may have gone; closing is all that is left
            self.client.close()
