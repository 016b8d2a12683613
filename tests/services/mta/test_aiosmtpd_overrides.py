"""What the SMTP server relies on of aiosmtpd beyond its public API is still there.

`AiosmtpdOverrides` (lab/services/mta/smtpd.py) overrides and calls aiosmtpd's private
methods and reads its private attributes, and `LabSMTP` overrides some of its public
ones. Each aiosmtpd original is recorded here with its signature as of aiosmtpd 1.4.6;
a newer aiosmtpd that drops or changes one fails the test that names it, before
anything subtler breaks. When that happens: read the new aiosmtpd's code for that
method, adapt AiosmtpdOverrides, then record the new signature here (and move the pin
in pyproject.toml).
"""

from __future__ import annotations

import asyncio
import inspect
from importlib.metadata import version
from typing import Any

import aiosmtpd.smtp
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from lab.services.mta.smtpd import AiosmtpdOverrides, Handler, LabSMTP

PINNED = ("1.4.4", "1.5")  # pyproject.toml: aiosmtpd>=1.4.4,<1.5

# aiosmtpd.smtp.SMTP's methods that AiosmtpdOverrides or LabSMTP override or call, with
# their signatures in aiosmtpd 1.4.6.
RECORDED: dict[str, str] = {
    # called with keywords by make_smtp_factory; scans the server and handler for hooks
    "__init__": (
        "(self, handler: Any, *, data_size_limit: Optional[int] = 33554432,"
        " enable_SMTPUTF8: bool = False, decode_data: bool = False,"
        " hostname: Optional[str] = None, ident: Optional[str] = None,"
        " tls_context: Optional[ssl.SSLContext] = None, require_starttls: bool = False,"
        " timeout: float = 300, auth_required: bool = False, auth_require_tls: bool = True,"
        " auth_exclude_mechanism: Optional[Iterable[str]] = None,"
        " auth_callback: Optional[Callable[[str, bytes, bytes], bool]] = None,"
        " command_call_limit: Union[int, Dict[str, int], NoneType] = None,"
        " authenticator: Optional[Callable[[ForwardRef('SMTP'), ForwardRef('Session'),"
        " ForwardRef('Envelope'), str, Any], ForwardRef('AuthResult')]] = None,"
        " proxy_protocol_timeout: Union[int, float, NoneType] = None,"
        " loop: Optional[asyncio.events.AbstractEventLoop] = None)"
    ),
    # private, overridden
    "_getaddr": "(self, arg: str) -> Tuple[Optional[str], Optional[str]]",
    # private, called by AiosmtpdOverrides.smtp_DATA
    "_call_handler_hook": "(self, command: str, *args) -> Any",
    "_set_post_data_state": "(self)",
    # private, overridden (moves a deadline); called after every command and at connect
    "_reset_timeout": "(self, duration: Optional[float] = None) -> None",
    # private, called by AiosmtpdOverrides._idle_timer: closes the idle connection
    "_timeout_cb": "(self)",
    # private: sets `_reader` and `_writer`, which smtp_DATA and input_waiting read
    "_cb_client_connected": (
        "(self, reader: asyncio.streams.StreamReader, writer: asyncio.streams.StreamWriter)"
    ),
    # public, called by AiosmtpdOverrides.smtp_DATA
    "check_helo_needed": "(self, helo: str = 'HELO') -> bool",
    "check_auth_needed": "(self, caller_method: str) -> bool",
    # public, overridden
    "connection_made": "(self, transport: asyncio.transports.BaseTransport) -> None",
    "connection_lost": "(self, error: Optional[Exception]) -> None",
    "push": "(self, status: ~AnyStr)",
    "smtp_DATA": "(self, arg: str) -> None",
    "smtp_EHLO": "(self, hostname: str)",
    "smtp_EXPN": "(self, arg: str)",
    "smtp_HELO": "(self, hostname: str)",
    "smtp_HELP": "(self, arg: str) -> None",
    "smtp_MAIL": "(self, arg: Optional[str]) -> None",
    "smtp_QUIT": "(self, arg: str)",
    "smtp_RCPT": "(self, arg: Optional[str]) -> None",
    "smtp_RSET": "(self, arg: str)",
    "smtp_STARTTLS": "(self, arg: str)",
    "smtp_VRFY": "(self, arg: str) -> None",
}

# Private attributes of a connected aiosmtpd server that the lab reads or relies on.
ATTRIBUTES = (
    "_reader",
    "_writer",
    "_handle_hooks",
    "_smtp_methods",
    "_auth_methods",
    "_original_transport",  # the socket's transport under STARTTLS (LabSMTP._unsent)
    "_timeout_handle",  # the idle timer (AiosmtpdOverrides._reset_timeout), cancelled at the end
    "_timeout_duration",
)


def _where(name: str) -> str:
    return (
        f"aiosmtpd.smtp.SMTP.{name} (aiosmtpd {version('aiosmtpd')}), which"
        " lab/services/mta/smtpd.py (AiosmtpdOverrides, LabSMTP) overrides or calls"
    )


def test_the_installed_aiosmtpd_is_within_the_pin() -> None:
    installed = tuple(int(p) for p in version("aiosmtpd").split(".")[:3])
    low, high = (tuple(int(p) for p in v.split(".")) for v in PINNED)
    assert low <= installed < high, (
        f"aiosmtpd {version('aiosmtpd')} is outside {PINNED}: check AiosmtpdOverrides first"
    )


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_an_aiosmtpd_method_we_rely_on_is_unchanged(name: str) -> None:
    original = getattr(SMTP, name, None)
    if original is None or not callable(original):
        pytest.fail(f"{_where(name)}, no longer exists", pytrace=False)
    installed = str(inspect.signature(original))
    if installed != RECORDED[name]:
        pytest.fail(
            f"{_where(name)}, changed its signature:\n"
            f"  recorded:  {RECORDED[name]}\n  installed: {installed}",
            pytrace=False,
        )


def test_every_override_is_recorded() -> None:
    """An aiosmtpd method overridden without being recorded here would go unchecked."""
    overridden = {
        name
        for cls in (AiosmtpdOverrides, LabSMTP)
        for name, value in vars(cls).items()
        if callable(value) and callable(getattr(SMTP, name, None)) and name != "__dir__"
    }
    missing = sorted(overridden - set(RECORDED))
    assert not missing, f"overrides of aiosmtpd.smtp.SMTP not recorded in RECORDED: {missing}"


def test_aiosmtpd_still_has_what_the_handler_uses() -> None:
    assert hasattr(aiosmtpd.smtp, "MISSING"), "aiosmtpd.smtp.MISSING is gone"
    envelope = Envelope()
    envelope.dsn = {}  # type: ignore[attr-defined]  # the handler keeps DSN parameters here
    assert {"mail_from", "rcpt_tos", "mail_options", "original_content"} <= set(vars(envelope))
    assert {"peer", "host_name", "ssl", "extended_smtp"} <= set(vars(Session(None)))  # type: ignore[arg-type]


def test_hook_names_list_every_hook() -> None:
    """What `__dir__` answers is what aiosmtpd looks for: every smtp_*, auth_*, handle_*."""
    for cls in (LabSMTP, Handler):
        hooks = [n for n in dir(cls) if n.startswith(("smtp_", "auth_", "handle_"))]
        assert AiosmtpdOverrides.hook_names(cls) == hooks


class _Handler:
    def __init__(self) -> None:
        self.received: list[bytes] = []

    def __dir__(self) -> list[str]:
        return AiosmtpdOverrides.hook_names(type(self))

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.received.append(envelope.original_content or b"")
        return "250 2.0.0 taken"


class _Server(AiosmtpdOverrides):
    """AiosmtpdOverrides alone, noting whether input waited when each reply went out."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.waiting: list[tuple[str, bool]] = []

    async def push(self, status: Any) -> None:
        self.waiting.append((str(status)[:3], self.input_waiting()))
        await super().push(status)


def test_a_session_through_the_overrides() -> None:
    """A live session: aiosmtpd finds the hooks through `__dir__`, the private
    attributes are where AiosmtpdOverrides reads them, DATA goes through its reader and
    aiosmtpd's handler call, and pipelined input is seen as waiting."""
    handler = _Handler()
    servers: list[_Server] = []

    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()

        def factory() -> _Server:
            server = _Server(handler, hostname="probe.test", loop=loop)
            servers.append(server)
            return server

        listener = await loop.create_server(factory, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        lines = [await reader.readline()]
        server = servers[0]
        for name in ATTRIBUTES:
            assert hasattr(server, name), f"aiosmtpd's SMTP no longer sets {name}"
        assert isinstance(server._reader._buffer, bytearray), "StreamReader._buffer is gone"
        assert set(server._handle_hooks) == {"DATA"}
        assert {f"smtp_{m}" for m in server._smtp_methods} == {
            n for n in dir(_Server) if n.startswith("smtp_")
        }
        writer.write(b"HELO client.test\r\n")
        lines.append(await reader.readline())
        # pipelined: the MAIL reply is pushed while the RCPT line waits
        writer.write(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
        for _ in range(3):
            lines.append(await reader.readline())
        writer.write(b"Subject: hi\r\n\r\n..dot\r\nbody\r\n.\r\nQUIT\r\n")
        lines.append(await reader.readline())
        lines.append(await reader.readline())
        writer.close()
        await writer.wait_closed()
        listener.close()
        await listener.wait_closed()
        return lines

    lines = asyncio.run(main())
    assert [line[:3] for line in lines] == [b"220", b"250", b"250", b"250", b"354", b"250", b"221"]
    assert lines[5].startswith(b"250 2.0.0 taken")
    assert handler.received == [b"Subject: hi\r\n\r\n.dot\r\nbody\r\n"]
    assert ("250", True) in servers[0].waiting  # MAIL's reply, with RCPT buffered


def test_an_idle_connection_is_closed_once_its_deadline_passes() -> None:
    """The idle timer is set once and follows the deadline each command moves: a client
    that keeps talking stays connected past the first deadline, one that goes quiet is
    disconnected when its timeout has passed since its last command, not before."""
    handler = _Handler()

    async def main() -> tuple[list[float], bytes]:
        loop = asyncio.get_running_loop()
        servers: list[_Server] = []

        def factory() -> _Server:
            servers.append(_Server(handler, hostname="probe.test", loop=loop, timeout=0.3))
            return servers[-1]

        listener = await loop.create_server(factory, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.readline()
        start = loop.time()
        for _ in range(4):  # 0.4 s of NOOPs, each before the deadline
            await asyncio.sleep(0.1)
            writer.write(b"NOOP\r\n")
            await reader.readline()
        last = loop.time()
        closed = await asyncio.wait_for(reader.read(), 2)  # EOF: the server closed it
        times = [last - start, loop.time() - last]
        writer.close()
        listener.close()
        await listener.wait_closed()
        return times, closed

    (talking, quiet), rest = asyncio.run(main())
    assert talking > 0.35  # past the first deadline, still connected
    assert 0.28 < quiet < 1.0  # closed a timeout after the last command
    assert rest == b""
