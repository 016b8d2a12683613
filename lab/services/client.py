"""A client host: submits mail over SMTP from its own address, as a nullclient or MUA does."""

from __future__ import annotations

import email.utils

import aiosmtplib
from aiosmtplib import SMTPResponseException, SMTPServerDisconnected

from lab.protocols.smtp import Reply, SubmitResult
from lab.services.host import Host

__all__ = ["SubmitResult", "build_message", "submit"]


def attachment_text(size: int) -> str:
    """`size` bytes of base64 lines (76 characters and a line end, as MIME writes them)
    of bytes that are the same for the same size: an attachment's weight in a body."""
    import base64
    import random

    raw = random.Random(size).randbytes(size * 3 // 4 + 3)
    text = base64.b64encode(raw).decode()[:size]
    return "".join(text[i : i + 76] + "\n" for i in range(0, len(text), 76))


def build_message(
    *,
    mail_from: str,
    to: list[str],
    subject: str,
    body: str,
    headers: dict[str, str] | None,
    hostname: str,
    date: float,
) -> bytes:
    """A plain RFC 5322 message with CRLF line ends."""
    fields: dict[str, str] = {
        "From": mail_from or f"MAILER-DAEMON@{hostname}",
        "To": ", ".join(to),
        "Subject": subject,
        "Date": email.utils.formatdate(date, localtime=False),
        "Message-ID": email.utils.make_msgid(domain=hostname),
    }
    for name, value in (headers or {}).items():
        existing = next((k for k in fields if k.lower() == name.lower()), None)
        if existing:
            del fields[existing]
        fields[name] = value
    head = "".join(
        f"{k}: {v.replace(chr(13), '').replace(chr(10), '')}\r\n" for k, v in fields.items()
    )
    text = body.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n")
    if not text.endswith("\r\n"):
        text += "\r\n"
    return (head + "\r\n" + text).encode("utf-8")


def _path(keyword: str, address: str) -> bytes:
    """`FROM:<address>` for a command line; an address with a line break is refused here."""
    if "\r" in address or "\n" in address:
        raise ValueError(f"an address may not contain a line break: {address!r}")
    inner = address[1:-1] if address.startswith("<") and address.endswith(">") else address
    return f"{keyword}:<{inner}>".encode("utf-8", "surrogateescape")


async def submit(
    host: Host,
    server_address: str,
    *,
    server_name: str,
    port: int,
    mail_from: str,
    recipients: list[str],
    content: bytes,
    timeout: float = 10.0,
    starttls: bool = True,
) -> SubmitResult:
    result = SubmitResult(server_name)
    try:
        sock = await host.net.connect(server_address, port, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        result.error = f"cannot connect to {server_name}[{server_address}]:{port}: {exc}"
        host.emit("client.failed", server=server_name, error=result.error)
        return result
    tls = host.tls.client_context() if host.tls is not None else None
    client = aiosmtplib.SMTP(
        hostname=server_name,
        sock=sock,
        local_hostname=host.hostname,
        tls_context=tls,
        start_tls=False,
        timeout=timeout,
    )
    try:
        try:
            greeting = await client.connect()
            result.greeting = Reply(greeting.code, greeting.message)
        except SMTPResponseException as exc:
            result.greeting = Reply(exc.code, exc.message)
            raise
        try:
            helo = await client.ehlo()
            result.helo_reply = Reply(helo.code, helo.message.splitlines()[0])
        except SMTPResponseException as exc:
            result.helo_reply = Reply(exc.code, exc.message)
            raise
        if starttls and client.supports_extension("starttls"):
            await client.starttls()
            await client.ehlo()
        options = [b"BODY=8BITMIME"] if not content.isascii() else []
        # MAIL and RCPT go out exactly as given (a source route, a quoted local part,
        # a percent hack): the receiving server, not the client, judges them.
        response = await client.execute_command(b"MAIL", _path("FROM", mail_from), *options)
        result.mail_reply = Reply(response.code, response.message)
        if result.mail_reply.code < 400:
            for rcpt in recipients:
                response = await client.execute_command(b"RCPT", _path("TO", rcpt))
                result.rcpt_replies[rcpt] = Reply(response.code, response.message)
            if any(r.code < 400 for r in result.rcpt_replies.values()):
                try:
                    response = await client.data(content)
                    result.data_reply = Reply(response.code, response.message)
                except SMTPResponseException as exc:
                    result.data_reply = Reply(exc.code, exc.message)
        try:
            await client.quit()
        except (SMTPResponseException, SMTPServerDisconnected):
            client.close()
    except (aiosmtplib.SMTPException, OSError, TimeoutError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        client.close()
    host.emit(
        "client.submitted",
        server=server_name,
        mail_from=mail_from,
        to=recipients,
        accepted=result.accepted,
        queue_id=result.queue_id,
        reply=str(result.data_reply or result.rejected or result.error),
    )
    return result
