"""The acceptance stories of the seed articles, end to end on each backend of
`--lab-backend` (the `lab_factory` fixture of tests/conftest.py; in-process by default).

- lg45: the envelope sender is not rewritten, a picky remote refuses it, and the bounce
  goes nowhere (a double bounce at the ISP postmaster); with the envelope rewritten the
  mail arrives; an ISP that checks the sender makes the hub bounce locally.
- nelug: the dial-up hub queues while the link is down and flushes when it comes up.
- lg45/pep: the hand-typed SMTP dialogue over a plain socket.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab.harness import Lab
from lab.topology import load
from lab.topology.model import Topology

ROOT = Path(__file__).resolve().parents[3]
LG45 = ROOT / "topologies" / "lg45-envelope.yaml"
HOME_DIALUP = ROOT / "topologies" / "home-dialup.yaml"


def lg45(**changes: Any) -> Topology:
    topology = load(LG45).model
    for key, value in changes.items():
        node, _, attr = key.partition("__")
        target: Any = topology.nodes[node]
        *parents, last = attr.split("__")
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, last, value)
    return topology


def delivery_status(raw: bytes | str) -> dict[str, str]:
    """The per-recipient fields of a DSN's message/delivery-status part (first recipient)."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    message = email.message_from_string(text, policy=email.policy.default)
    assert message.get_content_type() == "multipart/report", message.get_content_type()
    assert message.get_param("report-type") == "delivery-status"
    fields: dict[str, str] = {}
    for part in message.walk():
        if part.get_content_type() == "message/delivery-status":
            blocks = part.get_payload()
            assert len(blocks) >= 2, "expected a per-message block and a recipient block"
            for name, value in blocks[1].items():
                fields[name] = re.sub(r"\s+", " ", str(value)).strip()
    assert fields, "no message/delivery-status part"
    return fields


def received_chain(raw: str) -> list[str]:
    """The Received: fields, unfolded, from the oldest hop to the newest."""
    message = email.message_from_string(raw, policy=email.policy.compat32)
    values = [re.sub(r"\s+", " ", v) for v in message.get_all("Received", [])]
    return list(reversed(values))


# --- lg45: envelope-not-rewritten ---------------------------------------------------------


def test_lg45_unrewritten_envelope_is_refused_and_the_bounce_goes_nowhere(
    lab_factory: Callable[..., Lab],
) -> None:
    with lab_factory(LG45) as lab:
        at_isp = lab.capture_queued("isp")
        result = lab.send("pc", mail_from="joe@home", to=["friend@picky.org"], subject="hello")
        assert result.accepted, result.to_json()

        # picky verifies the sender's domain and refuses MAIL FROM:<joe@home>
        refusal = lab.wait_for("policy.reject", node="picky", stage="mail")
        assert refusal.get("reply").startswith("553 5.1.8"), refusal
        failed = lab.wait_for("delivery.result", node="isp", rcpt="friend@picky.org")
        assert failed.get("result") == "failed"
        assert failed.get("reply").startswith("553 5.1.8")
        assert failed.get("server") == "mx.picky.org"

        # the ISP bounces to the envelope sender, joe@home
        bounce = lab.assert_bounced(
            recipient="friend@picky.org", by="isp", to="joe@home", status="5.1.8"
        )
        fields = delivery_status(at_isp[bounce.get("id")])
        assert fields["Final-Recipient"] == "rfc822; friend@picky.org"
        assert fields["Action"] == "failed"
        assert fields["Status"] == "5.1.8"
        assert fields["Remote-MTA"] == "dns; mx.picky.org"
        assert fields["Diagnostic-Code"].startswith("smtp; 553 5.1.8")
        assert "<joe@home>" in fields["Diagnostic-Code"]

        # ... which nobody can route: `home` has no MX and no A. Double bounce.
        double = lab.wait_for("dsn.double_bounce", node="isp")
        assert double.get("original_id") == bounce.get("id")
        assert double.get("recipients") == ["joe@home"]
        unroutable = lab.wait_for("delivery.result", node="isp", rcpt="joe@home")
        assert unroutable.get("reply").startswith("550 5.1.2")

        notice = lab.assert_delivered("postmaster", node="isp", mailbox="postmaster")
        assert notice.envelope_from == ""
        assert notice["Subject"] == "Postmaster notify: undeliverable bounce"
        notice_fields = delivery_status(notice.raw)
        assert notice_fields["Final-Recipient"] == "rfc822; joe@home"
        assert notice_fields["Status"] == "5.1.2"
        # the returned headers are those of the bounce that could not be delivered
        assert "Subject: Undelivered Mail Returned to Sender" in notice.raw

        # joe is never told, and friend never gets it
        lab.assert_not_delivered("friend@picky.org")
        lab.assert_not_delivered("joe@home")
        assert lab.mailbox("heaven", "joe") == []
        assert lab.mailbox("picky", "friend") == []
        for node in ("heaven", "isp", "picky"):
            assert lab.queue(node) == [], node

        # the trace follows the message across hops and into both bounces
        kinds = [(e.node, e.kind) for e in lab.trace(result)]
        assert ("heaven", "queue.queued") in kinds
        assert ("isp", "queue.queued") in kinds
        assert ("isp", "dsn.sent") in kinds
        assert ("isp", "dsn.double_bounce") in kinds
        assert ("isp", "mailbox.delivered") in kinds


def test_lg45_envelope_rewritten_is_delivered(lab_factory: Callable[..., Lab]) -> None:
    topology = lg45(heaven__masquerade__envelope=True)
    with lab_factory(topology) as lab:
        result = lab.send("pc", mail_from="joe@home", to=["friend@picky.org"], subject="hello")
        assert result.accepted, result.to_json()
        message = lab.assert_delivered(
            "friend@picky.org", node="picky", mailbox="friend", envelope_from="joe.bloggs@isp.com"
        )
        assert message.envelope_from == "joe.bloggs@isp.com"
        assert message.raw.startswith("Return-Path: <joe.bloggs@isp.com>\r\n")
        assert message["From"] == "joe.bloggs@isp.com"
        assert message["Subject"] == "hello"
        attempt = lab.wait_for("delivery.attempt", node="isp", server="mx.picky.org")
        assert attempt.get("envelope_from") == "joe.bloggs@isp.com"
        assert not [e for e in lab.events if e.kind.startswith("dsn.")]
        assert not [e for e in lab.events if e.kind == "policy.reject"]
        assert lab.mailbox("isp", "postmaster") == []


def test_isp_checking_the_sender_makes_the_hub_bounce_locally(
    lab_factory: Callable[..., Lab],
) -> None:
    topology = lg45(isp__policy__verify_sender_domain=True)
    with lab_factory(topology) as lab:
        result = lab.send("pc", mail_from="joe@home", to=["friend@picky.org"], subject="hello")
        assert result.accepted, result.to_json()
        refusal = lab.wait_for("policy.reject", node="isp", stage="mail")
        assert refusal.get("reply") == (
            "553 5.1.8 Domain of sender address <joe@home> does not exist"
        )
        lab.assert_bounced(recipient="friend@picky.org", by="heaven", to="joe@home", status="5.1.8")
        dsn = lab.assert_delivered("joe@home", node="heaven", mailbox="joe", envelope_from="")
        assert dsn["From"] == "Mail Delivery System <MAILER-DAEMON@heaven.home>"
        fields = delivery_status(dsn.raw)
        assert fields["Status"] == "5.1.8"
        assert fields["Action"] == "failed"
        assert fields["Remote-MTA"] == "dns; smtp.isp.com"
        assert fields["Diagnostic-Code"].startswith("smtp; 553 5.1.8")
        # the mail never left for picky, and there was no double bounce anywhere
        assert not [e for e in lab.events if e.node == "picky" and e.kind == "smtp.connect"]
        assert not [e for e in lab.events if e.kind == "dsn.double_bounce"]
        assert lab.mailbox("isp", "postmaster") == []
        assert lab.queue("heaven") == []


def test_lg45_local_mail_with_fake_headers(lab_factory: Callable[..., Lab]) -> None:
    with lab_factory(LG45) as lab:
        lab.send(
            "pc",
            mail_from="joe@home",
            to=["emi@home"],
            headers={"To": "My Daughter", "From": "Your Dad"},
            body="Happy birthday!\n",
        )
        message = lab.assert_delivered(
            "emi@home", node="heaven", mailbox="emi", headers={"From": "Your Dad"}
        )
        assert "\r\nTo: My Daughter\r\nFrom: Your Dad\r\n\r\n" in message.raw
        assert message.envelope_from == "joe@home"
        assert message.body.splitlines() == ["Happy birthday!"]


# --- nelug: the dial-up hub ---------------------------------------------------------------


def test_dialup_hub_queues_while_down_and_flushes_when_up(lab_factory: Callable[..., Lab]) -> None:
    with lab_factory(HOME_DIALUP) as lab:
        assert lab.link("dialup").state == "down"
        result = lab.send(
            "pc1",
            mail_from="eddy@shofar.org.uk",
            to=["paulmidgley@freeuk.com"],
            subject="NELUG meeting",
        )
        assert result.accepted, result.to_json()
        entry = lab.assert_queued(on="hub", to="paulmidgley@freeuk.com")
        assert entry["id"] == result.queue_id
        assert entry["envelope_from"] == "eddy@shofar.org.uk"
        assert entry["attempts"] >= 1
        # with the modem off even the smarthost's name cannot be looked up
        assert entry["last_reply"].startswith("451 4.4.3 Host name lookup failure")
        assert "mail.uklinux.net" in entry["last_reply"]
        assert "link to internet is down" in entry["last_reply"]
        assert entry["next_attempt"] > lab.clock.now()
        assert not [e for e in lab.events if e.node == "isp" and e.kind == "smtp.connect"]

        lab.link("dialup").up()
        hooks = [e.get("hook") for e in lab.events if e.kind == "link.hook"]
        assert hooks == ["flush", "fetch"]
        assert lab.wait_for("queue.flush", node="hub").get("count") == 1
        message = lab.assert_delivered(
            "paulmidgley@freeuk.com",
            node="freeuk",
            mailbox="paulmidgley",
            envelope_from="eddy@shofar.uklinux.net",
        )
        assert message["From"] == "eddy@shofar.uklinux.net"
        assert message["To"] == "paulmidgley@freeuk.com"
        assert message["Subject"] == "NELUG meeting"
        assert lab.queue("hub") == []
        assert lab.queue("isp") == []

        chain = received_chain(message.raw)
        assert len(chain) == 3, chain
        hub, isp, freeuk = chain
        assert "[192.168.10.11]" in hub and "by moriah.shofar.org.uk" in hub
        assert hub.startswith("from pc1.shofar.org.uk ")
        assert "[10.20.9.201]" in isp and "by mail.uklinux.net" in isp
        assert "[10.20.0.25]" in freeuk and "by scrabble.freeuk.net" in freeuk


# --- lg45 / pep: the telnet dialogue --------------------------------------------------------


def test_telnet_dialogue_with_the_hub(lab_factory: Callable[..., Lab], wire: Any) -> None:
    with lab_factory(LG45) as lab:
        operator = lab.status()["operator"]
        assert operator == {"node": "pc", "address": "192.168.1.10"}
        with wire(lab, "heaven") as s:
            code, lines = s.reply()
            assert code == 220
            assert lines[0].startswith("220 heaven.home ESMTP")

            code, lines = s.cmd("help")
            assert code == 214
            assert len(lines) >= 2
            assert all(line.startswith("214") for line in lines)
            assert "MAIL" in " ".join(lines) and "RCPT" in " ".join(lines)

            code, lines = s.cmd("EHLO heaven.home")
            assert code == 250
            assert lines[0] == (
                "250-heaven.home Hello heaven.home [192.168.1.10], pleased to meet you"
            )
            keywords = {line[4:].split(" ")[0].upper() for line in lines[1:]}
            assert {
                "SIZE",
                "8BITMIME",
                "ENHANCEDSTATUSCODES",
                "PIPELINING",
                "STARTTLS",
                "DSN",
            } <= keywords
            assert lines[-1].startswith("250 ")
            assert all(line.startswith("250-") for line in lines[:-1])

            assert s.cmd("VRFY joe")[0] == 252
            assert s.cmd("EXPN joe")[0] == 502

            # seed lg45 types the addresses without angle brackets
            code, lines = s.cmd("MAIL FROM: joe@home")
            assert code == 250 and "<joe@home>" in lines[0]
            code, lines = s.cmd("RCPT TO: emi@home")
            assert code == 250 and "<emi@home>" in lines[0]
            assert s.cmd("DATA")[0] == 354
            s.send(b"To: My Daughter\r\nFrom: Your Dad\r\n\r\nHappy birthday!\r\n.\r\n")
            code, lines = s.reply()
            assert code == 250
            queue_id = lines[0].split()[2]

            code, lines = s.cmd("QUIT")
            assert code == 221
            assert s.closed_by_peer()

        message = lab.assert_delivered(
            "emi@home", node="heaven", mailbox="emi", headers={"From": "Your Dad"}
        )
        # the headers as typed, then the Message-ID and Date heaven added (it had none)
        assert "\r\nTo: My Daughter\r\nFrom: Your Dad\r\nMessage-ID: <" in message.raw
        assert f".{queue_id}@heaven.home>\r\nDate: " in message.raw
        assert message.envelope_from == "joe@home"
        assert message.body.splitlines() == ["Happy birthday!"]
        received = received_chain(message.raw)
        assert len(received) == 1
        assert received[0].startswith("from heaven.home ")
        assert "[192.168.1.10]" in received[0]
        assert f"id {queue_id}" in received[0]
        # the envelope alone decided: no mailbox named after the fake headers got anything
        connect = lab.wait_for("smtp.connect", node="heaven")
        assert connect.get("peer") == "192.168.1.10"
        assert lab.mailbox("heaven", "joe") == []
        assert lab.queue("heaven") == []


# --- pep: the message typed without a blank line after its headers ---------------------------

TELNET = ROOT / "topologies" / "telnet-dialogue.yaml"


def test_pep_session_without_a_blank_line_keeps_hi_there_in_the_body(
    lab_factory: Callable[..., Lab], wire: Any
) -> None:
    """pep types `Subject: Loony Toons!` and then `Hi there!` with no blank line between.
    As Postfix's cleanup does, the first line that is not a header field starts the body,
    and the stored message has the blank line there; well-formed messages are untouched."""
    typed = {
        "pep": b"From: Bugs Bunny\r\nTo: Daffy Duck\r\nSubject: Loony Toons!\r\nHi there!\r\n",
        "folded": b"Subject: a long\r\n\tsubject\r\nX-Name : spaced\r\nbody: text\r\n"
        b"not a header\r\n",
        "no headers": b"Hi there!\r\nSubject: not a header now\r\n",
        "continuation first": b" indented\r\nSubject: x\r\n",
        "well formed": b"Subject: fine\r\n\r\nbody\r\n",
        "headers only": b"Subject: only\r\n",
    }
    stored = {
        "pep": b"From: Bugs Bunny\r\nTo: Daffy Duck\r\nSubject: Loony Toons!\r\n\r\nHi there!\r\n",
        "folded": b"Subject: a long\r\n\tsubject\r\nX-Name : spaced\r\nbody: text\r\n"
        b"\r\nnot a header\r\n",
        "no headers": b"\r\nHi there!\r\nSubject: not a header now\r\n",
        "continuation first": b"\r\n indented\r\nSubject: x\r\n",
        "well formed": b"Subject: fine\r\n\r\nbody\r\n",
        "headers only": b"Subject: only\r\n",
    }
    with lab_factory(TELNET) as lab:
        with wire(lab, "christian") as s:
            assert s.reply()[0] == 220
            assert s.code("helo x") == 250
            for text in typed.values():
                assert s.code("mail from:<you@christian.net>") == 250
                assert s.code("rcpt to:<you@christian.net>") == 250
                assert s.code("data") == 354
                s.send(text + b".\r\n")
                assert s.reply()[0] == 250
            assert s.code("quit") == 221
        lab.settle()
        boxes = lab.mailbox("christian", "you")
        assert len(boxes) == len(typed)
        # only the delivery's fields and the Received: line came before what was typed, and
        # the server added a Message-ID and a Date at the end of the header block (none typed)
        added = re.compile(
            r"Message-ID: <\d{14}\.[0-9A-F]+@mail\.christian\.net>\r\nDate: [^\r\n]+\r\n"
        )
        kept = {}
        for m in boxes:
            assert "\r\nReceived: from x (pc.home [10.40.5.10])\r\n" in m.raw
            after = m.raw.split("\r\n\tfor <you@christian.net>; ", 1)[1].split("\r\n", 1)[1]
            assert len(added.findall(after)) == 1, after
            kept[added.sub("", after)] = after
        for name, want in stored.items():
            assert want.decode() in kept, (name, list(kept))
        [pep] = [m for m in boxes if "Loony" in m.raw]
        message = email.message_from_string(pep.raw, policy=email.policy.compat32)
        assert message["Subject"] == "Loony Toons!"
        assert message.get_payload() == "Hi there!\r\n"
        assert "Hi there!" not in str(message.keys())


# --- nelug: mail for the hub's own address literal -------------------------------------------


def test_mail_for_the_hubs_own_address_literal_is_delivered_locally(
    lab_factory: Callable[..., Lab], wire: Any
) -> None:
    """`eddy@[192.168.10.1]` names the hub itself: delivered to eddy there, as sendmail and
    Postfix deliver mail for their own address literal, not relayed to the smarthost. A
    literal that is not the hub's is still somebody else's."""
    with lab_factory(HOME_DIALUP) as lab:
        with wire(lab, "hub") as s:
            assert s.reply()[0] == 220
            assert s.code("EHLO heaven.home") == 250
            assert s.code("MAIL FROM:<root@shofar.org.uk>") == 250
            assert s.code("RCPT TO:<eddy@[192.168.10.1]>") == 250
            assert s.code("RCPT TO:<KEITH@[10.20.9.201]>") == 250  # its other interface
            code, lines = s.cmd("RCPT TO:<nobody@[192.168.10.1]>")
            assert (code, lines) == (550, ["550 5.1.1 <nobody@[192.168.10.1]>... User unknown"])
            assert s.code("DATA") == 354
            s.send(b"Subject: to my own address\r\n\r\nliteral\r\n.\r\n")
            assert s.reply()[0] == 250
            assert s.code("QUIT") == 221
        lab.settle()
        eddy = lab.assert_delivered("eddy@shofar.org.uk", node="hub", mailbox="eddy")
        assert "literal" in eddy.raw
        assert len(lab.mailbox("hub", "keith")) == 1
        assert lab.queue("hub") == []
        assert not [e for e in lab.events if e.node == "hub" and e.kind.startswith("delivery.")]
