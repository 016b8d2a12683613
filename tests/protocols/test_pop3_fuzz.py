"""Property-based fuzzing of the sans-IO POP3 server core (lab.protocols.pop3): arbitrary
command lines (known verbs with arbitrary arguments, and arbitrary bytes), fed in
arbitrary pieces, with a login that succeeds whenever the right password comes by.

For every input: the core never raises; it answers every command line it reads with
exactly one status line (+OK or -ERR, then a multi-line body for some), all ended by
CRLF (what is pipelined behind an accepted STLS is dropped unread); a session that
did not end with QUIT removes nothing (RFC 1939 section 6); and unless the input
closed it, the session still answers CAPA afterwards.

Profiles (tests/protocols/conftest.py): "ci" by default, "fuzz" with
MAILLAB_HYPOTHESIS_PROFILE=fuzz for a long run.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lab.protocols.pop3 import (
    OK_STLS,
    LoginRequest,
    MemoryMaildrop,
    Pop3Server,
    Signal,
    StartTls,
    State,
    UpdateRequest,
)

pytestmark = pytest.mark.fuzz

SECRET = "s3cret"
# message lines never start with "+" or "-", so status lines can be told from the rest
MESSAGES = [
    b"Subject: one\r\n\r\nfirst\r\n.leading dot\r\n",
    b"Subject: two\n\nbare LF\n",
    b"Subject: three\r\n\r\n" + b"x" * 300 + b"\r\n",
]
VERBS = [
    "USER", "PASS", "APOP", "STLS", "CAPA", "QUIT", "STAT", "LIST", "UIDL", "RETR", "TOP",
    "DELE", "NOOP", "RSET", "AUTH", "XTND", "user", "list",
]  # fmt: skip
_arg = st.one_of(
    st.sampled_from(["shofar", SECRET, "1", "2", "3", "0", "-1", "4", "99999999999999999999"]),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20),
    st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"").decode("latin-1")),
    st.integers(200, 300).map(lambda n: "a" * n),  # around the 255-octet limits
)
_line = st.one_of(
    st.tuples(st.sampled_from(VERBS), st.lists(_arg, max_size=3)).map(
        lambda va: " ".join([va[0], *va[1]]).encode("latin-1")
    ),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
)
_input = st.lists(st.tuples(_line, st.sampled_from([b"\r\n", b"\n"])), max_size=20).map(
    lambda lines: b"".join(line + end for line, end in lines)
)


def run(server: Pop3Server, drop: MemoryMaildrop, removed: list[str]) -> None:
    """The application's part: a login as shofar/SECRET, STLS, and the UPDATE state."""
    while True:
        event = server.next_event()
        if isinstance(event, Signal):
            return
        if isinstance(event, LoginRequest):
            if event.user == "shofar" and event.verify(SECRET):
                server.accept_login(drop)
            else:
                server.reject_login()
        elif isinstance(event, StartTls):
            server.tls_started()
        elif isinstance(event, UpdateRequest):
            removed += [m.uid for m in event.deleted]
            server.update_done(len(event.deleted))


def status_lines(out: bytes) -> int:
    assert out == b"" or out.endswith(b"\r\n"), out[-40:]
    lines = out[:-2].split(b"\r\n") if out else []
    assert all(b"\n" not in line and b"\r" not in line for line in lines)
    return sum(1 for line in lines if line.startswith((b"+OK", b"-ERR")))


@given(data=_input, cuts=st.lists(st.integers(0, 4000), max_size=6), eof=st.booleans())
def test_arbitrary_commands(data: bytes, cuts: list[int], eof: bool) -> None:
    server = Pop3Server("mail.example", timestamp="<1.2@mail.example>", stls=True)
    drop = MemoryMaildrop(MESSAGES)
    removed: list[str] = []
    out = server.data_to_send()
    assert out.startswith(b"+OK ")
    edges = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    for start, end in itertools.pairwise(edges):
        server.receive_data(data[start:end])
        run(server, drop, removed)
        out += server.data_to_send()
    quit_ran = bool(removed) or server.state is State.CLOSED
    # one status line for the greeting and one for each command line read; what was
    # pipelined behind an accepted STLS came in clear text and is dropped unread
    answered = status_lines(out) - 1
    if server.state is not State.CLOSED and OK_STLS.encode() not in out:
        assert answered == data.count(b"\n")
    else:
        assert answered <= data.count(b"\n")
    if not quit_ran:
        assert removed == []
    if eof:
        server.receive_data(b"")
        run(server, drop, removed)
        assert server.state is State.CLOSED
        if not quit_ran:
            assert removed == []  # a dropped session removes nothing
        return
    if server.state is not State.CLOSED:
        server.receive_data(b"\r\nCAPA\r\n")  # end any partial line, then ask
        run(server, drop, removed)
        reply = server.data_to_send()
        assert reply.endswith(b"\r\n.\r\n"), reply
        assert reply.split(b"\r\n")[-(len(server.capabilities()) + 3)].startswith(b"+OK")
