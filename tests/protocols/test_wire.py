"""The wire of both control channels (lab.protocols.wire): framing, the dispatch of ops to
handlers, and the typed encodings, each one way there and back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lab.errors import LabError
from lab.protocols import wire
from lab.protocols.smtp import Reply, SubmitResult
from lab.protocols.wire import AgentOp, LabOp, LinkState, WireError
from lab.runtime.events import Event


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# framing ---------------------------------------------------------------------------------


def test_a_message_is_one_json_line_each_way() -> None:
    line = wire.request(AgentOp.CLOCK_NEXT, {"when": 1.5}, rid=7)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert wire.decode(line) == {"op": "clock.next", "args": {"when": 1.5}, "id": 7}
    assert wire.decode(wire.request(LabOp.STATUS)) == {"op": "status", "args": {}}
    assert wire.decode(wire.request("status")) == {"op": "status", "args": {}}


def test_text_that_is_not_utf8_survives_the_wire() -> None:
    raw = b"Subject: caf\xe9\r\n".decode("utf-8", "surrogateescape")
    line = wire.encode(wire.ok([{"id": "k", "envelope_from": "", "raw": raw}], rid=1))
    assert line.count(b"\n") == 1
    back = wire.decode(line)["result"][0]["raw"]
    assert back.encode("utf-8", "surrogateescape") == b"Subject: caf\xe9\r\n"


@pytest.mark.parametrize("line", [b"not json\n", b"[1, 2]\n", b'"status"\n'])
def test_a_line_that_is_no_message_is_a_wire_error(line: bytes) -> None:
    with pytest.raises(WireError, match="bad request"):
        wire.decode(line)


def test_a_reply_gives_its_result_or_raises_its_error() -> None:
    assert wire.result_of(wire.ok({"a": 1})) == {"a": 1}
    with pytest.raises(LabError, match=r"^hub: node 'hub' runs no MTA$"):
        wire.result_of(wire.error("node 'hub' runs no MTA"), "hub")
    with pytest.raises(LabError, match=r"^the request was refused$"):
        wire.result_of({"ok": False})


def test_op_names_are_their_wire_strings() -> None:
    assert [op.value for op in LabOp] == [
        "status",
        "send",
        "link",
        "impair",
        "flush",
        "fetch",
        "queue",
        "mailbox",
        "clock",
        "events",
        "trace",
        "dns",
        "fault",
        "schedule",
        "reset",
        "ui",
        "down",
    ]
    assert AgentOp("clock.advance_to") is AgentOp.CLOCK_ADVANCE_TO
    assert {AgentOp.FLUSH: 1}.get("flush") == 1  # a table keyed by ops answers plain names


# dispatch --------------------------------------------------------------------------------


class Handlers:
    def __init__(self) -> None:
        self.failures: list[tuple[str, Exception]] = []
        self.table = {
            AgentOp.FLUSH: self.flush,
            AgentOp.MAILBOX: self.mailbox,
            AgentOp.QUEUE: self.queue,
            AgentOp.STOP: self.stop,
        }

    async def flush(self) -> int:
        return 3

    async def mailbox(self, user: str) -> list[str]:
        return [user]

    async def queue(self) -> None:
        raise LabError("node 'pc1' runs no MTA (smtp service)")

    async def stop(self) -> None:
        raise RuntimeError("disk on fire")

    def failed(self, op: str, exc: Exception) -> None:
        self.failures.append((op, exc))


def answer(handlers: Handlers, message: dict[str, Any]) -> dict[str, Any]:
    return run(wire.answer(handlers.table, message, on_error=handlers.failed))  # type: ignore[no-any-return]


def test_a_request_is_dispatched_to_its_handler_with_its_args() -> None:
    h = Handlers()
    assert answer(h, {"id": 1, "op": "flush"}) == {"id": 1, "ok": True, "result": 3}
    assert answer(h, {"id": 2, "op": "mailbox", "args": {"user": "eddy"}}) == {
        "id": 2,
        "ok": True,
        "result": ["eddy"],
    }


def test_refusals_and_failures_are_replies() -> None:
    h = Handlers()
    assert answer(h, {"id": 1, "op": "queue"}) == wire.error(
        "node 'pc1' runs no MTA (smtp service)", 1
    )
    assert answer(h, {"op": "nothing"}) == wire.error("unknown operation 'nothing'")
    bad = answer(h, {"op": "mailbox", "args": {"who": "eddy"}})
    assert not bad["ok"] and bad["error"].startswith("bad request: ")
    assert not answer(h, {"op": "mailbox", "args": ["eddy"]})["ok"]
    assert h.failures == []
    failed = answer(h, {"id": 9, "op": "stop"})
    assert failed == wire.error("RuntimeError: disk on fire", 9)
    assert [op for op, _ in h.failures] == ["stop"]


# values ----------------------------------------------------------------------------------


def test_a_submission_goes_and_comes_back_whole() -> None:
    result = SubmitResult(
        "mail.uklinux.net",
        greeting=Reply(220, "mail.uklinux.net ESMTP"),
        helo_reply=Reply(250, "mail.uklinux.net"),
        mail_reply=Reply(250, "2.1.0 Sender ok"),
        rcpt_replies={
            "a@x.org": Reply(250, "2.1.5 Recipient ok"),
            "b@x.org": Reply(550, "5.1.1 User unknown"),
        },
        data_reply=Reply(250, "2.0.0 0123456789 Message accepted for delivery"),
    )
    data = wire.decode(wire.encode(wire.encode_submit(result)))
    assert data["accepted"] is True and data["queue_id"] == "0123456789"
    assert data["rcpt"]["b@x.org"] == "550 5.1.1 User unknown"
    assert wire.decode_submit(data) == result
    assert result.to_json() == wire.encode_submit(result)
    refused = SubmitResult("hub", greeting=Reply(554, ""), error="no")
    assert wire.decode_submit(wire.encode_submit(refused)) == refused


def test_an_event_goes_and_comes_back_whole() -> None:
    event = Event(4, 1700000000.5, "hub", "queue.queued", {"id": "AB", "recipients": ["x@y"]})
    assert wire.decode_event(wire.decode(wire.encode(wire.encode_event(event)))) == event


def test_queue_entries_and_mailbox_messages_are_checked_both_ways() -> None:
    entry = {
        "id": "0123456789",
        "envelope_from": "eddy@shofar.uklinux.net",
        "recipients": ["paulmidgley@freeuk.com"],
        "attempts": 2,
        "received": 1700000000,
        "next_attempt": 1700001800.0,
        "last_reply": "",
    }
    [back] = wire.decode_queue(wire.decode(wire.encode({"q": wire.encode_queue([entry])}))["q"])
    assert back == {**entry, "received": 1700000000.0}
    assert isinstance(back["received"], float)
    with pytest.raises(KeyError):
        wire.decode_queue([{"id": "x"}])
    message = {"id": "1.M1.host", "envelope_from": "", "raw": "Subject: x\r\n\r\nhi\r\n"}
    assert wire.decode_mailbox(wire.encode_mailbox([message])) == [message]


def test_one_link_state_vocabulary() -> None:
    assert [s.value for s in LinkState] == ["up", "down"]
    assert LinkState.of(True) is LinkState.UP and LinkState.of(False) is LinkState.DOWN
    assert LinkState("down") == "down"
    assert wire.decode(wire.encode({"state": LinkState.DOWN})) == {"state": "down"}
