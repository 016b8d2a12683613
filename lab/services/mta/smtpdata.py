"""How the built-in SMTP server reads a message's data after DATA (smtpd.py's
`smtp_DATA`): whole buffered blocks, not a line at a time."""

from __future__ import annotations

import asyncio

_DATA_END = b"\r\n.\r\n"
_DOT_LINE = b".\r\n"
_LINE_TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"


async def read_data(
    reader: asyncio.StreamReader, *, size_limit: int | None, line_limit: int
) -> tuple[bytes, str | None]:
    """The message up to the line holding a lone dot, dot-unstuffed (RFC 5321 4.5.2),
    or the error reply it earned: a line longer than `line_limit` with its CRLF (500) or
    more than `size_limit` octets (552), replied to only once the data has ended (4.2.5).
    Lines end with CRLF only: a bare CR or LF neither ends a line nor the data.

    It reads whole buffered blocks, not a line at a time. What the client sent after the
    end of data (pipelined commands) stays in the reader for the command loop."""
    blocks: list[bytes] = []
    size = 0
    error: str | None = None
    at_line_start = True
    while True:
        buffered: bytearray = reader._buffer  # type: ignore[attr-defined]  # a peek
        if at_line_start and buffered.startswith(_DOT_LINE):
            end = 0
        else:
            found = buffered.find(_DATA_END)
            end = found + 2 if found >= 0 else -1
        try:
            if end >= 0:  # the end of data is here: take exactly up to it
                block = (await reader.readexactly(end + 3))[:-3]
                last = True
            else:
                last = False
                cut = buffered.rfind(b"\r\n")
                if cut >= 0:  # the whole lines buffered
                    block = await reader.readexactly(cut + 2)
                else:  # no whole line here yet: wait for one
                    block = await reader.readuntil(b"\r\n")
                    if at_line_start and block == _DOT_LINE:
                        block, last = b"", True
        except asyncio.LimitOverrunError as exc:  # a line longer than the limit
            block = await reader.read(exc.consumed)
            error = error or _LINE_TOO_LONG
            blocks.clear()
            last = False
        except asyncio.IncompleteReadError:  # the client closed mid-data: nothing to keep
            return b"", "421 4.4.2 Connection closed during DATA"
        at_line_start = block.endswith(b"\r\n")
        size += len(block)
        if error is None and size_limit and size > size_limit:
            error = "552 Error: Too much mail data"
            blocks.clear()
        if error is None and block:
            if max(map(len, block.split(b"\r\n"))) + 2 > line_limit:
                error = _LINE_TOO_LONG
                blocks.clear()
            else:
                blocks.append(block)
        if last:
            break
    content = b"".join(blocks)
    if content[:1] == b".":
        content = content[1:]
    return content.replace(b"\r\n.", b"\r\n"), error
