"""The sans-IO POP3 core (lab.protocols.pop3), server and client as a pair in memory: no
sockets, no loop. Every reply and state change of RFC 1939 (and STLS, CAPA, APOP) is
checked here, byte for byte.

The service that runs the core on a host (sockets, the Maildir store, delays and
timeouts, locks, TLS, events) is in tests/services/test_pop3_service.py.
"""

from __future__ import annotations

import pytest

from lab.protocols import pop3
from lab.protocols.pop3 import (
    NEED_DATA,
    PAUSED,
    Closed,
    CommandRefused,
    ConnectionLost,
    Err,
    Greeting,
    LoginRequest,
    MemoryMaildrop,
    MessageDeleted,
    MessageRetrieved,
    Ok,
    Pop3Client,
    Pop3Server,
    Pop3UsageError,
    Signal,
    StartTls,
    State,
    UpdateRequest,
)

TIMESTAMP = "<1896.697170952@mail.example>"
SECRET = "s3cret"
ONE = (
    b"From: paul@freeuk.com\r\nSubject: one\r\n\r\n"
    b"first line\r\n.leading dot\r\n..two dots\r\n.\r\nlast\r\n"
)
TWO = b"From: keith@example.org\nSubject: two\n\nstored with bare LF\nsecond line\n"
THREE = b"Subject: three\r\n\r\n" + b"".join(b"line %d\r\n" % i for i in range(1, 11))
MESSAGES = [ONE, TWO, THREE]
ERR_TOO_LONG = b"-ERR command line too long (more than 255 octets)\r\n"


class Pair:
    """A server and a client wired together; the application part answers logins with
    one mailbox ("shofar"/SECRET), records every server event, and removes on UPDATE."""

    def __init__(self, messages: list[bytes] | None = None, *, stls: bool = False):
        self.server = Pop3Server("mail.example", timestamp=TIMESTAMP, stls=stls)
        self.client = Pop3Client()
        self.drop = MemoryMaildrop(MESSAGES if messages is None else messages)
        self.events: list[object] = []
        self.removed: list[str] = []
        self.auto = True
        self.wire: list[bytes] = []  # what the server sent
        self.pump()
        greeting = self.client.next_event()
        assert isinstance(greeting, Greeting)
        self.greeting = greeting

    def pump(self, *, to_client: bool = True) -> None:
        while True:
            event = self.server.next_event()
            if isinstance(event, Signal):
                break
            self.events.append(event)
            if not self.auto:
                continue
            if isinstance(event, LoginRequest):
                if event.user == "shofar" and event.verify(SECRET):
                    self.server.accept_login(self.drop)
                else:
                    self.server.reject_login()
            elif isinstance(event, StartTls):
                self.server.tls_started()
            elif isinstance(event, UpdateRequest):
                self.removed += [m.uid for m in event.deleted]
                self.server.update_done(len(event.deleted))
        data = self.server.data_to_send()
        self.wire.append(data)
        if to_client:
            self.client.receive_data(data)

    def raw(self, data: bytes) -> bytes:
        """Send bytes as they are (the client core does not see them, nor the answer);
        return the server's answer as bytes."""
        self.server.receive_data(data)
        self.pump(to_client=False)
        return self.wire[-1]

    def cmd(self, *words: str | int) -> Ok | Err:
        self.server.receive_data(self.client.send(*words))
        self.pump()
        event = self.client.next_event()
        assert isinstance(event, Ok | Err), event
        return event

    def login(self) -> Ok | Err:
        self.cmd("USER", "shofar")
        return self.cmd("PASS", SECRET)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


def crlf_size(data: bytes) -> int:
    return len(pop3.to_crlf(data))


# greeting and authorization -----------------------------------------------------------


def test_greeting_carries_the_apop_timestamp():
    pair = Pair()
    assert pair.wire[0] == f"+OK {TIMESTAMP} maillab POP3 ready\r\n".encode()
    assert pair.greeting.timestamp == TIMESTAMP
    assert pair.server.state is State.AUTHORIZATION


def test_user_pass_enters_the_transaction_state():
    pair = Pair()
    assert pair.cmd("USER", "shofar") == Ok("USER", "send PASS")
    reply = pair.cmd("PASS", SECRET)
    total = sum(crlf_size(m) for m in MESSAGES)
    assert reply == Ok("PASS", f"shofar's maildrop has 3 messages ({total} octets)")
    assert pair.server.state is State.TRANSACTION
    assert pair.client.state is State.TRANSACTION
    assert pair.of(LoginRequest) == [LoginRequest("shofar", password=SECRET)]


def test_password_may_contain_spaces():
    pair = Pair()
    pair.server.receive_data(b"USER shofar\r\nPASS two words \r\n")
    pair.pump()
    assert pair.of(LoginRequest)[0].password == "two words "


def test_wrong_password_is_refused_with_the_auth_code():
    pair = Pair()
    pair.cmd("USER", "shofar")
    reply = pair.cmd("PASS", "wrong")
    assert reply == Err("PASS", "invalid user name or password", "AUTH")
    assert pair.wire[-1] == b"-ERR [AUTH] invalid user name or password\r\n"
    assert pair.server.state is State.AUTHORIZATION
    # the USER is forgotten: PASS alone is not enough
    assert pair.cmd("PASS", SECRET) == Err("PASS", "give USER first")
    assert isinstance(pair.login(), Ok)
    assert pair.server.state is State.TRANSACTION


def test_unknown_user_gets_ok_to_user_and_fails_at_pass():
    pair = Pair()
    assert isinstance(pair.cmd("USER", "nobody"), Ok)
    assert pair.cmd("PASS", SECRET).code == "AUTH"


def test_pass_without_user_and_pass_without_argument():
    pair = Pair()
    assert pair.raw(b"PASS s3cret\r\n") == b"-ERR give USER first\r\n"
    pair.raw(b"USER shofar\r\n")
    assert pair.raw(b"PASS\r\n") == b"-ERR usage: PASS string\r\n"


def test_apop_digest_is_rfc1939s_example():
    # RFC 1939 section 7
    digest = pop3.apop_digest("<1896.697170952@dbc.mtview.ca.us>", "tanstaaf")
    assert digest == "c4c9334bac560ecc979e58001b3e22fb"


def test_apop_login():
    pair = Pair()
    pair.server.receive_data(pair.client.apop("shofar", SECRET))
    pair.pump()
    reply = pair.client.next_event()
    assert isinstance(reply, Ok) and "maildrop has 3 messages" in reply.text
    request = pair.of(LoginRequest)[0]
    assert request.mechanism == "APOP"
    assert request.digest == pop3.apop_digest(TIMESTAMP, SECRET)
    assert pair.server.state is State.TRANSACTION


def test_apop_with_a_wrong_secret_or_a_malformed_digest():
    pair = Pair()
    pair.server.receive_data(pair.client.apop("shofar", "wrong"))
    pair.pump()
    assert pair.client.next_event() == Err("APOP", "invalid user name or password", "AUTH")
    assert pair.cmd("APOP", "shofar", "not-a-digest") == Err(
        "APOP", "an APOP digest is 32 hexadecimal digits"
    )
    assert pair.cmd("APOP", "shofar") == Err("APOP", "usage: APOP name digest")
    assert len(pair.of(LoginRequest)) == 1  # the malformed ones never reached the application


def test_commands_wait_while_the_login_is_decided():
    pair = Pair()
    pair.auto = False
    pair.server.receive_data(b"USER shofar\r\nPASS s3cret\r\nSTAT\r\n")
    assert pair.server.next_event() == LoginRequest("shofar", password=SECRET)
    assert pair.server.next_event() is PAUSED
    assert pair.server.data_to_send() == b"+OK send PASS\r\n"
    pair.server.accept_login(pair.drop)
    assert pair.server.next_event() is NEED_DATA
    out = pair.server.data_to_send().split(b"\r\n")
    assert out[0].startswith(b"+OK shofar's maildrop has 3 messages")
    assert out[1].startswith(b"+OK 3 ")


def test_the_application_cannot_answer_out_of_turn():
    pair = Pair()
    with pytest.raises(Pop3UsageError):
        pair.server.accept_login(pair.drop)
    with pytest.raises(Pop3UsageError):
        pair.server.update_done(0)
    with pytest.raises(Pop3UsageError):
        pair.server.tls_started()


def test_reject_login_with_in_use():
    pair = Pair()
    pair.auto = False
    pair.raw(b"USER shofar\r\nPASS s3cret\r\n")
    pair.server.reject_login("maildrop already locked", code=pop3.IN_USE)
    pair.pump()
    assert pair.wire[-1] == b"-ERR [IN-USE] maildrop already locked\r\n"
    assert pair.server.state is State.AUTHORIZATION


# transaction ---------------------------------------------------------------------------


def test_stat_counts_crlf_line_ends():
    pair = Pair()
    pair.login()
    sizes = [crlf_size(m) for m in MESSAGES]
    assert sizes[1] == len(TWO) + TWO.count(b"\n")  # each bare LF becomes CRLF
    assert pair.cmd("STAT") == Ok("STAT", f"3 {sum(sizes)}")
    assert pop3.parse_stat(pair.cmd("STAT")) == (3, sum(sizes))


def test_list_all_and_one():
    pair = Pair()
    pair.login()
    reply = pair.cmd("LIST")
    assert isinstance(reply, Ok)
    sizes = [crlf_size(m) for m in MESSAGES]
    assert reply.text == f"3 messages ({sum(sizes)} octets)"
    assert pop3.parse_listing(reply) == {1: str(sizes[0]), 2: str(sizes[1]), 3: str(sizes[2])}
    assert pair.cmd("LIST", 2) == Ok("LIST", f"2 {sizes[1]}")


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"LIST x", b"-ERR invalid message number 'x'"),
        (b"LIST 0", b"-ERR no such message, only 3 messages in maildrop"),
        (b"LIST 4", b"-ERR no such message, only 3 messages in maildrop"),
        (b"LIST -1", b"-ERR invalid message number '-1'"),
        (b"LIST +1", b"-ERR invalid message number '+1'"),
        (b"LIST 99999999999999999999", b"-ERR no such message, only 3 messages in maildrop"),
        (b"LIST 1 2", b"-ERR usage: LIST [msg]"),
        (b"RETR", b"-ERR usage: RETR msg"),
        (b"RETR 1.5", b"-ERR invalid message number '1.5'"),
        (b"DELE", b"-ERR usage: DELE msg"),
        (b"DELE 7", b"-ERR no such message, only 3 messages in maildrop"),
        (b"TOP 1", b"-ERR usage: TOP msg n"),
        (b"TOP 1 x", b"-ERR invalid number of lines 'x'"),
        (b"TOP 1 -2", b"-ERR invalid number of lines '-2'"),
        (b"TOP 9 1", b"-ERR no such message, only 3 messages in maildrop"),
        (b"UIDL z", b"-ERR invalid message number 'z'"),
        (b"STAT 1", b"-ERR usage: STAT"),
        (b"NOOP now", b"-ERR usage: NOOP"),
        (b"RSET all", b"-ERR usage: RSET"),
        (b"QUIT now", b"-ERR usage: QUIT"),
        (b"RETR \xff\xfe", b"-ERR invalid message number '\xef\xbf\xbd\xef\xbf\xbd'"),
        (b"LIST " + b"1" * 41, b"-ERR argument too long (more than 40 octets)"),
    ],
)
def test_bad_arguments_are_refused(line: bytes, reply: bytes):
    pair = Pair()
    pair.login()
    assert pair.raw(line + b"\r\n") == reply + b"\r\n"
    assert pair.of(CommandRefused)[-1].reply == reply.decode("utf-8")
    assert pair.server.state is State.TRANSACTION
    assert pair.cmd("NOOP") == Ok("NOOP", "")  # and the session goes on


def test_uidl_all_and_one():
    pair = Pair()
    pair.login()
    reply = pair.cmd("UIDL")
    assert isinstance(reply, Ok)
    assert pop3.parse_listing(reply) == {1: "m1", 2: "m2", 3: "m3"}
    assert pair.cmd("UIDL", 3) == Ok("UIDL", "3 m3")


def test_uids_come_from_maildir_keys():
    key = "1718000000.123456.M3P1234.moriah"
    assert pop3.uid_for_key(key) == key
    assert pop3.uid_for_key(key + ":2,S") == key  # the info suffix is not part of it
    long_key = "1718000000.123456.M3P1234." + "h" * 80
    uid = pop3.uid_for_key(long_key)
    assert len(uid) == 32 and uid == pop3.uid_for_key(long_key)
    assert pop3.uid_for_key("key with spaces") != "key with spaces"


def test_retr_byte_stuffs_and_counts_octets():
    pair = Pair()
    pair.login()
    reply = pair.cmd("RETR", 1)
    assert isinstance(reply, Ok)
    assert reply.text == f"{len(ONE)} octets"
    assert reply.data == ONE
    wire = pair.wire[-1]
    assert b"\r\n..leading dot\r\n...two dots\r\n..\r\nlast\r\n.\r\n" in wire
    assert pair.of(MessageRetrieved) == [MessageRetrieved(1, "m1", len(ONE))]


def test_retr_sends_crlf_for_a_message_stored_with_lf():
    pair = Pair()
    pair.login()
    reply = pair.cmd("RETR", 2)
    assert isinstance(reply, Ok)
    assert reply.data == TWO.replace(b"\n", b"\r\n")
    assert reply.text == f"{len(reply.data)} octets"
    assert pop3.parse_listing(pair.cmd("LIST", 2)) == {2: str(len(reply.data))}


def test_top():
    pair = Pair()
    pair.login()
    head = b"Subject: three\r\n\r\n"
    assert pair.cmd("TOP", 3, 0) == Ok("TOP", "top of message follows", head)
    assert pair.cmd("TOP", 3, 2) == Ok(
        "TOP", "top of message follows", head + b"line 1\r\nline 2\r\n"
    )
    assert pair.cmd("TOP", 3, 500) == Ok("TOP", "top of message follows", THREE)
    assert pair.cmd("TOP", 1, 2).data == ONE.split(b".leading")[0] + b".leading dot\r\n"
    assert pair.of(MessageRetrieved)[0] == MessageRetrieved(3, "m3", len(THREE), 0)


def test_top_of_a_message_without_a_body():
    assert pop3.top(b"Subject: x\r\n", 5) == b"Subject: x\r\n"
    assert pop3.top(b"Subject: x\r\n\r\n", 5) == b"Subject: x\r\n\r\n"


def test_dele_marks_and_refuses_the_marked_message_everywhere():
    pair = Pair()
    pair.login()
    assert pair.cmd("DELE", 1) == Ok("DELE", "message 1 deleted")
    assert pair.of(MessageDeleted) == [MessageDeleted(1, "m1")]
    refused = "message 1 already deleted"
    assert pair.cmd("RETR", 1) == Err("RETR", refused)
    assert pair.cmd("TOP", 1, 0) == Err("TOP", refused)
    assert pair.cmd("LIST", 1) == Err("LIST", refused)
    assert pair.cmd("UIDL", 1) == Err("UIDL", refused)
    assert pair.cmd("DELE", 1) == Err("DELE", refused)
    sizes = [crlf_size(m) for m in MESSAGES]
    assert pair.cmd("STAT") == Ok("STAT", f"2 {sizes[1] + sizes[2]}")
    assert set(pop3.parse_listing(pair.cmd("LIST"))) == {2, 3}
    assert set(pop3.parse_listing(pair.cmd("UIDL"))) == {2, 3}
    assert pair.removed == []  # only marked


def test_rset_unmarks():
    pair = Pair()
    pair.login()
    pair.cmd("DELE", 1)
    pair.cmd("DELE", 3)
    total = sum(crlf_size(m) for m in MESSAGES)
    assert pair.cmd("RSET") == Ok("RSET", f"maildrop has 3 messages ({total} octets)")
    assert isinstance(pair.cmd("RETR", 1), Ok)
    pair.cmd("QUIT")
    assert pair.removed == []


def test_noop():
    pair = Pair()
    pair.login()
    assert pair.raw(b"NOOP\r\n") == b"+OK\r\n"


def test_quit_removes_the_marked_messages_in_the_update_state():
    pair = Pair()
    pair.login()
    pair.cmd("DELE", 2)
    pair.cmd("DELE", 3)
    pair.auto = False
    pair.server.receive_data(pair.client.send("QUIT"))
    event = pair.server.next_event()
    assert isinstance(event, UpdateRequest)
    assert [m.uid for m in event.deleted] == ["m2", "m3"]
    assert pair.server.state is State.UPDATE
    assert pair.server.next_event() is PAUSED
    pair.server.update_done(2)
    assert pair.server.next_event() == Closed(2)
    assert pair.server.state is State.CLOSED
    assert (
        pair.server.data_to_send()
        == b"+OK maillab POP3 server signing off (2 messages deleted)\r\n"
    )


def test_update_that_fails_says_so():
    pair = Pair()
    pair.login()
    pair.cmd("DELE", 1)
    pair.auto = False
    pair.raw(b"QUIT\r\n")
    pair.server.update_done(0, failed=1)
    pair.pump()
    assert pair.wire[-1] == b"-ERR [SYS/TEMP] some deleted messages were not removed\r\n"
    assert pair.server.state is State.CLOSED


def test_a_session_that_drops_before_quit_removes_nothing():
    pair = Pair()
    pair.login()
    pair.cmd("DELE", 1)
    pair.cmd("DELE", 2)
    pair.server.receive_data(b"")
    pair.pump()
    assert pair.of(ConnectionLost) == [ConnectionLost(State.TRANSACTION, 2)]
    assert pair.of(UpdateRequest) == []
    assert pair.removed == []
    assert pair.server.state is State.CLOSED


def test_a_drop_in_the_middle_of_a_command_line_removes_nothing():
    pair = Pair()
    pair.login()
    pair.cmd("DELE", 1)
    pair.server.receive_data(b"QU")  # QUIT never finished
    pair.server.receive_data(b"")
    pair.pump()
    assert pair.of(UpdateRequest) == []
    assert pair.of(ConnectionLost)[0].marked == 1


def test_quit_in_the_authorization_state_closes_without_update():
    pair = Pair()
    assert pair.cmd("QUIT") == Ok("QUIT", "maillab POP3 server signing off")
    assert pair.of(Closed) == [Closed(0)]
    assert pair.of(UpdateRequest) == []
    assert pair.server.state is State.CLOSED
    pair.server.receive_data(b"STAT\r\n")  # ignored once closed
    assert pair.server.next_event() is NEED_DATA
    assert pair.server.data_to_send() == b""


def test_a_failed_read_is_answered_sys_temp():
    class Broken(MemoryMaildrop):
        def read(self, message: pop3.MessageInfo) -> bytes:
            raise OSError("gone")

    pair = Pair()
    pair.drop = Broken([ONE])
    pair.login()
    assert pair.cmd("RETR", 1) == Err("RETR", "cannot read message 1", "SYS/TEMP")


# wrong state, unknown, malformed -------------------------------------------------------


@pytest.mark.parametrize(
    "line", ["STAT", "LIST", "LIST 1", "RETR 1", "DELE 1", "NOOP", "RSET", "TOP 1 1", "UIDL"]
)
def test_transaction_commands_are_refused_before_login(line: str):
    pair = Pair()
    verb = line.split()[0]
    assert pair.raw(line.encode() + b"\r\n") == (
        f"-ERR {verb} is not valid in the AUTHORIZATION state\r\n".encode()
    )
    assert pair.server.state is State.AUTHORIZATION


@pytest.mark.parametrize("line", ["USER shofar", "PASS s3cret", "APOP shofar " + "0" * 32, "STLS"])
def test_authorization_commands_are_refused_after_login(line: str):
    pair = Pair(stls=True)
    pair.login()
    verb = line.split()[0]
    assert pair.raw(line.encode() + b"\r\n") == (
        f"-ERR {verb} is not valid in the TRANSACTION state\r\n".encode()
    )
    assert pair.server.state is State.TRANSACTION


def test_every_command_is_in_the_transition_table():
    table = pop3.TRANSITIONS
    commands = {c for row in table.values() for c in row if c.isupper()}
    assert commands == set(pop3.COMMANDS)
    assert table[State.AUTHORIZATION]["QUIT"] is State.CLOSED
    assert table[State.TRANSACTION]["QUIT"] is State.UPDATE
    assert table[State.AUTHORIZATION][pop3.LOGIN_ACCEPTED] is State.TRANSACTION
    assert table[State.UPDATE][pop3.UPDATE_DONE] is State.CLOSED
    assert not [c for c in table[State.UPDATE] if c.isupper()]


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"FOO", b"-ERR unknown command"),
        (b"LAST", b"-ERR unknown command"),
        (b"", b"-ERR empty command line"),
        (b"   ", b"-ERR empty command line"),
        (b"\x00\x01\x02", b"-ERR unknown command"),
    ],
)
def test_unknown_and_empty_commands(line: bytes, reply: bytes):
    pair = Pair()
    assert pair.raw(line + b"\r\n") == reply + b"\r\n"
    pair.login()
    assert pair.raw(line + b"\r\n") == reply + b"\r\n"


def test_commands_are_case_insensitive_and_lf_alone_ends_a_line():
    pair = Pair()
    pair.raw(b"user shofar\n")
    assert pair.raw(b"pass s3cret\n").startswith(b"+OK")
    assert pair.raw(b"stat\r\n").startswith(b"+OK 3 ")
    assert pair.raw(b"List 1\r\n").startswith(b"+OK 1 ")


def test_a_command_of_255_octets_is_accepted_and_256_refused():
    pair = Pair()
    line = b"USER " + b"u" * (255 - 7) + b"\r\n"
    assert len(line) == 255
    # accepted as a line, refused for its argument (over 40 octets)
    assert pair.raw(line) == b"-ERR argument too long (more than 40 octets)\r\n"
    longer = b"USER " + b"u" * (256 - 7) + b"\r\n"
    assert pair.raw(longer) == b"-ERR command line too long (more than 255 octets)\r\n"
    assert isinstance(pair.login(), Ok)


def test_an_overlong_line_in_many_pieces_gets_one_error_and_the_session_goes_on():
    pair = Pair()
    pair.login()
    replies = b""
    for _ in range(100):
        replies += pair.raw(b"x" * 1000)
    assert replies == b""
    assert len(pair.server._buffer) <= pop3.MAX_COMMAND  # nothing piles up
    assert pair.raw(b"yyy\r\nNOOP\r\n") == ERR_TOO_LONG + b"+OK\r\n"
    assert pair.of(CommandRefused)[-1] == CommandRefused("", ERR_TOO_LONG.decode().strip())


def test_pipelined_commands_are_answered_in_order():
    pair = Pair()
    out = pair.raw(b"USER shofar\r\nPASS s3cret\r\nSTAT\r\nLIST 1\r\nNOOP\r\nFOO\r\n")
    lines = out.split(b"\r\n")
    assert lines[0] == b"+OK send PASS"
    assert lines[1].startswith(b"+OK shofar's maildrop")
    assert lines[2].startswith(b"+OK 3 ")
    assert lines[3].startswith(b"+OK 1 ")
    assert lines[4] == b"+OK"
    assert lines[5] == b"-ERR unknown command"


# CAPA and STLS -------------------------------------------------------------------------


def test_capa_before_and_after_login():
    pair = Pair(stls=True)
    reply = pair.cmd("CAPA")
    assert isinstance(reply, Ok)
    caps = [line.decode() for line in reply.lines]
    assert caps == [
        "TOP",
        "UIDL",
        "USER",
        "PIPELINING",
        "RESP-CODES",
        "AUTH-RESP-CODE",
        "STLS",
        "IMPLEMENTATION maillab",
    ]
    pair.login()
    reply = pair.cmd("CAPA")
    assert isinstance(reply, Ok)
    assert b"STLS" not in reply.lines and b"IMPLEMENTATION maillab" in reply.lines


def test_capa_without_stls_when_unavailable():
    pair = Pair(stls=False)
    reply = pair.cmd("CAPA")
    assert isinstance(reply, Ok) and b"STLS" not in reply.lines


def test_stls_discards_pipelined_clear_text_and_is_not_offered_again():
    pair = Pair(stls=True)
    pair.auto = False
    pair.server.receive_data(b"STLS\r\nUSER injected\r\n")
    assert pair.server.next_event() == StartTls()
    assert pair.server.next_event() is PAUSED
    assert pair.server.data_to_send() == b"+OK Begin TLS negotiation now\r\n"
    pair.server.tls_started()
    assert pair.server.next_event() is NEED_DATA  # "USER injected" was dropped
    assert pair.server.data_to_send() == b""
    assert pair.server.tls_active
    assert "STLS" not in pair.server.capabilities()
    pair.auto = True
    assert pair.raw(b"STLS\r\n") == b"-ERR command not permitted when TLS active\r\n"


def test_stls_refused_when_unavailable_or_after_user():
    assert Pair(stls=False).raw(b"STLS\r\n") == b"-ERR STLS not available\r\n"
    pair = Pair(stls=True)
    pair.raw(b"USER shofar\r\n")
    assert pair.raw(b"STLS\r\n") == b"-ERR STLS is not permitted after USER\r\n"


def test_client_discards_what_follows_the_stls_ok():
    client = Pop3Client()
    client.receive_data(b"+OK <1@x> ready\r\n")
    assert isinstance(client.next_event(), Greeting)
    client.send("STLS")
    client.send("NOOP")
    client.receive_data(b"+OK Begin TLS\r\n+OK injected\r\n")
    assert client.next_event() == Ok("STLS", "Begin TLS")
    assert client.next_event() is NEED_DATA


# the client on its own -----------------------------------------------------------------


def test_client_reads_a_multiline_reply_fed_byte_by_byte():
    pair = Pair()
    pair.login()
    pair.server.receive_data(pair.client.send("RETR", 1))
    pair.server.next_event()
    wire = pair.server.data_to_send()
    client = pair.client
    for i in range(len(wire)):
        assert client.next_event() is NEED_DATA
        client.receive_data(wire[i : i + 1])
    assert client.next_event() == Ok("RETR", f"{len(ONE)} octets", ONE)


def test_client_reads_an_empty_listing_and_pipelined_replies():
    client = Pop3Client()
    client.receive_data(b"+OK hi\r\n")
    client.next_event()
    client.send("LIST")
    client.send("UIDL")
    client.send("STAT")
    client.receive_data(b"+OK 0 messages\r\n.\r\n+OK\r\n.\r\n+OK 0 0\r\n")
    assert client.next_event() == Ok("LIST", "0 messages", b"")
    assert client.next_event() == Ok("UIDL", "", b"")
    assert client.next_event() == Ok("STAT", "0 0")
    assert client.next_event() is NEED_DATA


def test_client_error_codes_and_a_refused_greeting():
    client = Pop3Client()
    client.receive_data(b"-ERR [SYS/TEMP] go away\r\n")
    assert client.next_event() == Err("GREETING", "go away", "SYS/TEMP")
    client = Pop3Client()
    client.receive_data(b"+OK ready\r\n")
    assert client.next_event() == Greeting("ready", None)
    with pytest.raises(Pop3UsageError):
        client.apop("shofar", SECRET)  # no timestamp, no APOP
    client.send("PASS", "x")
    client.receive_data(b"-ERR [IN-USE] maildrop already locked\r\n")
    assert client.next_event() == Err("PASS", "maildrop already locked", "IN-USE")


def test_client_sees_the_connection_drop_mid_reply():
    client = Pop3Client()
    client.receive_data(b"+OK hi\r\n")
    client.next_event()
    client.send("RETR", 1)
    client.receive_data(b"+OK 100 octets\r\npart of it\r\n")
    assert client.next_event() is NEED_DATA
    client.receive_data(b"")
    assert client.next_event() == ConnectionLost(State.AUTHORIZATION, 0)


def test_client_refuses_to_send_line_breaks_or_overlong_commands():
    client = Pop3Client()
    with pytest.raises(Pop3UsageError):
        client.send("USER", "a\r\nDELE 1")
    with pytest.raises(Pop3UsageError):
        client.send("USER", "a" * 300)


def test_stuffing_round_trip():
    data = b".\r\n..\r\n.a\r\nb.\r\n"
    stuffed = pop3.stuff(data)
    assert stuffed == b"..\r\n...\r\n..a\r\nb.\r\n.\r\n"
    assert pop3.unstuff(stuffed[:-3]) == data
    assert pop3.to_crlf(b"a\nb\r\nc\rd") == b"a\r\nb\r\nc\r\nd\r\n"
    assert pop3.to_crlf(b"") == b""
