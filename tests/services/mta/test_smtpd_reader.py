"""How the built-in SMTP server reads a message's data (lab.services.mta.smtpd.read_data,
and the bare CR/LF check of lab.services.mta.policy), in memory, fed as a network would
feed it: in every possible split, a byte at a time, with pipelined commands behind the
end of data.

The reader takes whole buffered blocks instead of a line at a time; these tests hold it
to the line-at-a-time meaning of RFC 5321: the data ends at the first line that is a lone
dot, lines end with CRLF only, leading dots are unstuffed, and a too-long line or too
much data is answered only once the data has ended, with what followed left unread.

The server's replies to such input over a real connection are in
test_smtpd_hostile_input.py.
"""

from __future__ import annotations

import asyncio

import pytest

from lab.services.mta.smtpd import LINE_LENGTH_LIMIT, read_data

LINE_LIMIT = LINE_LENGTH_LIMIT  # RFC 5321 4.5.3.1.6: 1000 octets with the CRLF


def test_the_line_limit_is_rfc_5321s() -> None:
    assert LINE_LIMIT == 1000


def reference(wire: bytes, size_limit: int | None = None) -> tuple[bytes, str | None, bytes]:
    """The same reading done the plain way, one CRLF-ended line after the other."""
    lines, error, size, rest = [], None, 0, wire
    while True:
        line, sep, rest = rest.partition(b"\r\n")
        assert sep, "test data must hold an end of data"
        if line == b".":
            break
        size += len(line) + 2
        if len(line) + 2 > LINE_LIMIT:
            error = error or "500"
        if size_limit and size > size_limit:
            error = error or "552"
        lines.append(line[1:] if line.startswith(b".") else line)
    content = b"".join(line + b"\r\n" for line in lines)
    return (b"" if error else content), error, rest


async def feed_and_read(
    pieces: list[bytes], size_limit: int | None = None
) -> tuple[bytes, str | None, bytes]:
    """Feed the pieces one by one, letting the reader run between them; return what it
    read, its error code and what it left in the stream."""
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    task = asyncio.ensure_future(read_data(reader, size_limit=size_limit, line_limit=LINE_LIMIT))
    for piece in pieces:
        for _ in range(3):  # the reader wakes and takes what there is
            await asyncio.sleep(0)
        reader.feed_data(piece)
    reader.feed_eof()
    content, error = await task
    rest = await reader.read()
    return content, (error[:3] if error else None), rest


def run(pieces: list[bytes], size_limit: int | None = None) -> tuple[bytes, str | None, bytes]:
    return asyncio.run(feed_and_read(pieces, size_limit))


MESSAGES = {
    "plain": b"Subject: hi\r\n\r\nhello\r\n.\r\nQUIT\r\n",
    "empty": b".\r\nQUIT\r\n",
    "empty line": b"\r\n.\r\nNOOP\r\n",
    "dots": b"..leading\r\n...\r\n.x\r\nmid.dle\r\n..\r\n.\r\nMAIL FROM:<a@b>\r\n",
    "bare CR and LF stay data": b"a\nb\rc\r\r\n\n.\n\r.\r\nend\r\n.\r\nRSET\r\n",
    "dot line then more": b"x\r\n.\r\n.\r\nQUIT\r\n",
    "line of 998": b"v" * 998 + b"\r\n.\r\nQUIT\r\n",
    "line of 999": b"y" * 999 + b"\r\n.\r\nQUIT\r\n",
    "line of 1000": b"z" * 1000 + b"\r\nafter\r\n.\r\nQUIT\r\n",
    "long line then end": b"w" * 3000 + b"\r\n.\r\nQUIT\r\n",
}


@pytest.mark.parametrize("wire", MESSAGES.values(), ids=MESSAGES.keys())
def test_every_split_reads_as_line_by_line(wire: bytes) -> None:
    expected = reference(wire)
    assert run([wire]) == expected
    for cut in range(1, len(wire)):
        assert run([wire[:cut], wire[cut:]]) == expected, cut


@pytest.mark.parametrize("wire", MESSAGES.values(), ids=MESSAGES.keys())
def test_a_byte_at_a_time(wire: bytes) -> None:
    assert run([wire[i : i + 1] for i in range(len(wire))]) == reference(wire)


def test_dot_unstuffing() -> None:
    content, error, rest = run([b"..one\r\ntwo\r\n...\r\n.\r\nQUIT\r\n"])
    assert (content, error, rest) == (b".one\r\ntwo\r\n..\r\n", None, b"QUIT\r\n")


def test_a_line_of_1001_octets_with_its_crlf_is_over_the_limit() -> None:
    assert run([b"v" * 998 + b"\r\n.\r\n"]) == (b"v" * 998 + b"\r\n", None, b"")
    content, error, rest = run([b"y" * 999 + b"\r\n.\r\nQUIT\r\n"])
    assert (content, error, rest) == (b"", "500", b"QUIT\r\n")


def test_a_line_over_the_limit_is_500_after_the_end_of_data() -> None:
    content, error, rest = run([b"ok\r\n", b"x" * 1001, b"\r\nmore\r\n.\r\n", b"QUIT\r\n"])
    assert (content, error, rest) == (b"", "500", b"QUIT\r\n")


def test_too_much_data_is_552_after_the_end_of_data() -> None:
    wire = b"".join(b"line %04d\r\n" % i for i in range(100)) + b".\r\nQUIT\r\n"
    assert reference(wire, size_limit=500)[1] == "552"
    assert run([wire], size_limit=500) == reference(wire, size_limit=500)
    assert run([wire[i : i + 7] for i in range(0, len(wire), 7)], size_limit=500) == reference(
        wire, size_limit=500
    )
    assert run([wire], size_limit=1100) == reference(wire, size_limit=1100)
    assert run([wire], size_limit=1100)[1] is None


def test_the_client_closing_mid_data_keeps_nothing() -> None:
    content, error, _ = run([b"Subject: cut\r\n\r\nhalf a mess"])
    assert content == b""
    assert error is not None and error.startswith("421")


def test_bare_newline_check_agrees_with_the_plain_search() -> None:
    import itertools
    import re

    from lab.services.mta.policy import has_bare_newline

    bare = re.compile(rb"\r(?!\n)|(?<!\r)\n")
    for length in range(1, 6):
        for parts in itertools.product([b"\r", b"\n", b"a", b"\r\n"], repeat=length):
            text = b"".join(parts)
            assert has_bare_newline(text) == bool(bare.search(text)), text
