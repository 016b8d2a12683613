"""The README's telnet message, typed without Message-ID or Date, traced by the queue id
the hub gave it: every hop is in the trace (hub -> ISP -> freeuk), linked by the next
hop's queue id, and the first MTA added the Message-ID and Date it lacked."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lab.harness import Lab

HOME_DIALUP = Path(__file__).resolve().parents[2] / "topologies" / "home-dialup.yaml"


def test_typed_message_traced_across_every_hop(lab_factory: Callable[..., Lab], wire: Any) -> None:
    with lab_factory(HOME_DIALUP) as lab:
        with wire(lab, "hub") as s:
            assert s.reply()[0] == 220
            assert s.cmd("EHLO heaven.home")[0] == 250
            assert s.cmd("MAIL FROM:<eddy@shofar.org.uk>")[0] == 250
            assert s.cmd("RCPT TO:<paulmidgley@freeuk.com>")[0] == 250
            assert s.cmd("DATA")[0] == 354
            s.send(b"Subject: hello from the LAN\r\n\r\nThe modem is down.\r\n.\r\n")
            code, lines = s.reply()
            assert code == 250
            queue_id = lines[0].split()[2]
            assert s.cmd("QUIT")[0] == 221
        lab.assert_queued(on="hub")
        lab.link("dialup").up()
        message = lab.assert_delivered("paulmidgley@freeuk.com", node="freeuk")

        parsed = email.message_from_string(message.raw, policy=email.policy.compat32)
        message_id = parsed["Message-ID"]
        assert message_id and message_id.endswith("@moriah.shofar.org.uk>"), message.raw
        assert queue_id in message_id
        assert email.utils.parsedate_to_datetime(parsed["Date"]) is not None
        assert len(parsed.get_all("Message-ID")) == 1 and len(parsed.get_all("Date")) == 1
        assert parsed.get_payload().splitlines() == ["The modem is down."]

        traced = lab.trace(queue_id)
        queued_on = [e.node for e in traced if e.kind == "queue.queued"]
        assert queued_on[:2] == ["hub", "isp"], lab.format_trace(queue_id)
        assert any(e.kind == "mailbox.delivered" and e.node == "freeuk" for e in traced), (
            lab.format_trace(queue_id)
        )
        hub_result = next(
            e
            for e in traced
            if e.kind == "delivery.result" and e.node == "hub" and e.get("result") == "delivered"
        )
        isp_queued = next(e for e in traced if e.kind == "queue.queued" and e.node == "isp")
        assert hub_result.get("remote_id") == isp_queued.get("id")


def test_trace_follows_queue_ids_without_message_id(lab_factory: Callable[..., Lab]) -> None:
    """Hops are linked by the next hop's queue id even when no Message-ID links them
    (a message whose Message-ID is empty in every queue.queued event)."""
    with lab_factory(HOME_DIALUP) as lab:
        result = lab.send("pc1", mail_from="eddy@shofar.org.uk", to=["paulmidgley@freeuk.com"])
        lab.link("dialup").up()
        lab.assert_delivered("paulmidgley@freeuk.com", node="freeuk")
        for e in lab.events:  # what the trace sees when no hop knows a Message-ID
            if e.kind in ("queue.queued", "mailbox.delivered", "delivery.result"):
                e.data.pop("message_id", None)
        nodes = {e.node for e in lab.trace(result.queue_id)}
        assert {"hub", "isp", "freeuk"} <= nodes, lab.format_trace(result.queue_id)


HOME_DIALUP_POSTFIX = HOME_DIALUP.with_name("home-dialup-postfix.yaml")


@pytest.mark.docker
@pytest.mark.lab_backend("docker")
def test_a_postfix_hub_is_followed_to_the_next_hop(
    lab_factory: Callable[..., Lab], wire: Any
) -> None:
    """A real Postfix hub adds no Message-ID for a LAN client (local_header_rewrite_clients),
    so only the queue id in the ISP's 250, read from Postfix's log, links the hops."""
    with lab_factory(HOME_DIALUP_POSTFIX) as lab:
        with wire(lab, "hub") as s:
            assert s.reply()[0] == 220
            assert s.cmd("EHLO heaven.home")[0] == 250
            assert s.cmd("MAIL FROM:<eddy@shofar.org.uk>")[0] == 250
            assert s.cmd("RCPT TO:<paulmidgley@freeuk.com>")[0] == 250
            assert s.cmd("DATA")[0] == 354
            s.send(b"Subject: hello from the LAN\r\n\r\nThe modem is down.\r\n.\r\n")
            code, lines = s.reply()
            assert code == 250
            queue_id = lines[0].split()[-1]  # "250 2.0.0 Ok: queued as 4F1C2A9B3D"
            assert s.cmd("QUIT")[0] == 221
        lab.assert_queued(on="hub")
        lab.link("dialup").up()
        lab.assert_delivered("paulmidgley@freeuk.com", node="freeuk", timeout=30)
        lab.settle()
        nodes = {e.node for e in lab.trace(queue_id)}
        assert {"hub", "isp", "freeuk"} <= nodes, lab.format_trace(queue_id)
