"""What the built-in MTA refuses, and with which reply: the policies of a receiving server.

One small world: `mx` receives mail for dest.test and carries the policy under test; `pc`
and `other` are clients that submit to `mx` directly (pc is also the operator, the address a
raw socket session comes from). Where a test makes `relay` pc's next hop, retries, TLS
upgrades and bounces happen as between real MTAs. The lab DNS holds the SPF records of a
few sender domains, one per SPF mechanism. Each test edits what it needs before the lab
comes up.
"""

from __future__ import annotations

import gc
import ssl
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from lab.errors import LabError
from lab.harness import Lab
from lab.runtime.events import Event
from lab.topology import load, load_text
from lab.topology.model import (
    Greylist,
    Policy,
    RecordSet,
    Retry,
    Service,
    Software,
    SpfCheck,
    StartTls,
    Topology,
)

if TYPE_CHECKING:
    from conftest import SmtpWire

WORLD = """
name: policies
networks:
  net: {subnet: 10.50.0.0/16}
dns:
  zones:
    dest.test:
      "@": {MX: "10 mx.dest.test"}
    send.test:
      "@": {MX: "10 relay.send.test"}
    ip4.test:
      "@": {TXT: "v=spf1 ip4:10.50.0.11 -all"}
    a.test:
      "@": {A: 10.50.0.11, TXT: "v=spf1 a -all"}
    mxmech.test:
      "@": {MX: "10 out.mxmech.test", TXT: "v=spf1 mx -all"}
      out: {A: 10.50.0.11}
    include.test:
      "@": {TXT: ["some other text", "v=spf1 include:ip4.test -all"]}
    soft.test:
      "@": {TXT: "v=spf1 ip4:10.50.0.11 ~all"}
    redirect.test:
      "@": {TXT: "v=spf1 redirect=ip4.test"}
    nospf.test:
      "@": {A: 10.50.9.9}
    broken.test:
      "@": {fault: servfail}
    0.50.10.in-addr.arpa:
      "12": {PTR: dyn-12.pool.isp.test}
nodes:
  dns: {role: dns, hostname: ns.dest.test, networks: {net: 10.50.0.53}}
  mx:
    role: mta
    hostname: mx.dest.test
    networks: {net: 10.50.0.25}
    local_domains: [dest.test]
    users: [bob, carol, postmaster]
    aliases: {team: [bob, carol]}
  relay:
    role: mta
    hostname: relay.send.test
    networks: {net: 10.50.0.10}
    local_domains: [send.test]
    users: [alice, postmaster]
    relay_from: [10.50.0.0/24]
  pc: {role: client, hostname: pc.send.test, networks: {net: 10.50.0.11}, submit_to: mx}
  other: {role: client, hostname: other.send.test, networks: {net: 10.50.0.12}, submit_to: mx}
operator: pc
"""

PC = "10.50.0.11"  # listed by the SPF records; its rDNS is pc.send.test
OTHER = "10.50.0.12"  # listed by none; its rDNS is dyn-12.pool.isp.test
RELAY = "10.50.0.10"
LG45 = Path(__file__).resolve().parents[3] / "topologies" / "lg45-envelope.yaml"
Wire = Callable[..., "SmtpWire"]


def world(**policy: Any) -> Topology:
    """The world with `mx` carrying these policy settings."""
    topology = load_text(WORLD, "policies.yaml").model
    topology.nodes["mx"].policy = Policy(**policy)
    return topology


@pytest.fixture
def up(lab_factory: Callable[..., Lab]) -> Callable[[Topology], Lab]:
    """up(topology) brings a lab up on the test's backend; stopped after the test."""
    return lab_factory


def events(lab: Lab, kind: str, node: str | None = None) -> list[Event]:
    return [e for e in lab.events if e.kind == kind and (node is None or e.node == node)]


def greeted(wire: Wire, lab: Lab, helo: str = "pc.send.test") -> SmtpWire:
    """A session to mx from the operator (pc), greeting read and EHLO accepted."""
    session = wire(lab, "mx")
    assert session.reply() == (220, ["220 mx.dest.test ESMTP maillab"])
    code, lines = session.cmd(f"EHLO {helo}")
    assert code == 250, lines
    return session


def transaction(session: SmtpWire, sender: str, rcpt: str, body: bytes) -> tuple[int, list[str]]:
    """MAIL, RCPT, DATA with these bytes; returns the reply to the final dot."""
    assert session.code(f"MAIL FROM:<{sender}>") == 250
    assert session.code(f"RCPT TO:<{rcpt}>") == 250
    assert session.code("DATA") == 354
    session.send(body + b".\r\n")
    return session.reply()


# --- HELO against the reverse DNS -----------------------------------------------------------


def test_helo_rdns_reject_refuses_a_wrong_name_and_passes_the_right_one(
    up: Callable[[Topology], Lab], wire: Wire
) -> None:
    lab = up(world(helo_rdns="reject"))
    session = wire(lab, "mx")
    assert session.reply()[0] == 220
    assert session.cmd("EHLO heaven.home") == (
        550,
        [
            "550 5.7.1 heaven.home: Helo command rejected: does not match your rDNS name"
            " pc.send.test"
        ],
    )
    assert session.cmd("HELO heaven.home")[0] == 550
    # still no greeting accepted: a transaction is out of sequence
    assert session.cmd("MAIL FROM:<alice@send.test>")[0] == 503
    code, lines = session.cmd("EHLO pc.send.test")
    assert code == 250
    assert lines[0] == "250-mx.dest.test Hello pc.send.test [10.50.0.11], pleased to meet you"
    code, lines = transaction(
        session, "alice@send.test", "bob@dest.test", b"Subject: right name\r\n\r\nhi\r\n"
    )
    assert code == 250, lines
    assert session.cmd("QUIT")[0] == 221

    mismatches = events(lab, "policy.helo_mismatch", "mx")
    assert [(e.get("helo"), e.get("rdns"), e.get("peer")) for e in mismatches] == [
        ("heaven.home", "pc.send.test", PC),
        ("heaven.home", "pc.send.test", PC),
    ]
    message = lab.assert_delivered("bob@dest.test", node="mx", mailbox="bob")
    assert message["Subject"] == "right name"
    assert "from pc.send.test (pc.send.test [10.50.0.11])" in message.raw


def test_helo_rdns_reject_turns_away_a_client_whose_rdns_differs(
    up: Callable[[Topology], Lab],
) -> None:
    lab = up(world(helo_rdns="reject"))
    result = lab.send("other", mail_from="alice@send.test", to="bob@dest.test")
    assert not result.accepted
    assert result.mail_reply is None  # refused at EHLO (and at the HELO fallback)
    assert "550" in result.error
    reject = lab.wait_for("policy.helo_mismatch", node="mx")
    assert reject.get("helo") == "other.send.test"
    assert reject.get("rdns") == "dyn-12.pool.isp.test"
    assert reject.get("peer") == OTHER
    lab.assert_not_delivered("bob@dest.test")
    assert lab.queue("mx") == []


def test_helo_rdns_warn_accepts_and_records_the_mismatch(
    up: Callable[[Topology], Lab],
) -> None:
    lab = up(world(helo_rdns="warn"))
    result = lab.send("other", mail_from="alice@send.test", to="bob@dest.test")
    assert result.accepted, result.to_json()
    mismatch = lab.wait_for("policy.helo_mismatch", node="mx")
    assert mismatch.data == {
        "helo": "other.send.test",
        "rdns": "dyn-12.pool.isp.test",
        "peer": OTHER,
    }
    message = lab.assert_delivered("bob@dest.test", node="mx", mailbox="bob")
    assert "from other.send.test (dyn-12.pool.isp.test [10.50.0.12])" in message.raw
    # a client whose HELO matches causes no event
    lab.send("pc", mail_from="alice@send.test", to="carol@dest.test")
    lab.assert_delivered("carol@dest.test", node="mx", mailbox="carol")
    # other's client says EHLO twice (before and after STARTTLS); pc's never mismatches
    assert {e.get("peer") for e in events(lab, "policy.helo_mismatch")} == {OTHER}
    assert events(lab, "policy.reject") == []


# --- SPF on the envelope sender -------------------------------------------------------------

SPF_CASES = [
    # (sender domain, client node, SPF result)
    ("ip4.test", "pc", "pass"),
    ("ip4.test", "other", "fail"),
    ("a.test", "pc", "pass"),
    ("a.test", "other", "fail"),
    ("mxmech.test", "pc", "pass"),
    ("mxmech.test", "other", "fail"),
    ("include.test", "pc", "pass"),
    ("include.test", "other", "fail"),
    ("redirect.test", "pc", "pass"),
    ("redirect.test", "other", "fail"),
    ("soft.test", "other", "softfail"),
    ("nospf.test", "other", "none"),
]


@pytest.mark.parametrize(("domain", "client", "result"), SPF_CASES)
def test_spf_reject(up: Callable[[Topology], Lab], domain: str, client: str, result: str) -> None:
    lab = up(world(spf="reject"))
    sender = f"alice@{domain}"
    address = PC if client == "pc" else OTHER
    submitted = lab.send(client, mail_from=sender, to="bob@dest.test")

    spf = lab.wait_for("policy.spf", node="mx")
    assert (spf.get("sender"), spf.get("client"), spf.get("result")) == (sender, address, result)
    assert submitted.mail_reply is not None
    if result == "fail":
        assert str(submitted.mail_reply) == (
            f"550 5.7.23 SPF check failed for <{sender}>: {address} is not allowed to send"
            f" for {domain}"
        )
        assert not submitted.accepted
        assert submitted.rcpt_replies == {}
        reject = lab.wait_for("policy.reject", node="mx", stage="mail")
        assert reject.get("reply") == str(submitted.mail_reply)
        lab.assert_not_delivered("bob@dest.test")
        assert lab.mailbox("mx", "bob") == []
    else:
        assert str(submitted.mail_reply) == f"250 2.1.0 <{sender}>... Sender ok"
        assert submitted.accepted, submitted.to_json()
        message = lab.assert_delivered("bob@dest.test", node="mx", envelope_from=sender)
        assert message.envelope_from == sender
        assert events(lab, "policy.reject") == []


def test_spf_record_that_cannot_be_fetched_is_a_temporary_refusal(
    up: Callable[[Topology], Lab],
) -> None:
    lab = up(world(spf="reject"))
    submitted = lab.send("pc", mail_from="alice@broken.test", to="bob@dest.test")
    assert str(submitted.mail_reply) == (
        "451 4.7.24 SPF check for broken.test could not be completed"
    )
    assert not submitted.accepted
    spf = lab.wait_for("policy.spf", node="mx")
    assert spf.get("result") == "temperror"
    assert "SERVFAIL" in spf.get("reason")
    lab.assert_not_delivered("bob@dest.test")


def test_spf_tag_mode_accepts_a_failing_sender_and_records_the_result(
    up: Callable[[Topology], Lab],
) -> None:
    lab = up(world(spf="tag"))
    submitted = lab.send("other", mail_from="alice@ip4.test", to="bob@dest.test")
    assert submitted.accepted, submitted.to_json()
    spf = lab.wait_for("policy.spf", node="mx")
    assert spf.get("result") == "fail"
    assert spf.get("client") == OTHER
    assert spf.get("sender") == "alice@ip4.test"
    lab.assert_delivered("bob@dest.test", node="mx", envelope_from="alice@ip4.test")
    assert events(lab, "policy.reject") == []
    # a temporary error is not a refusal in tag mode either
    broken = lab.send("other", mail_from="alice@broken.test", to="carol@dest.test")
    assert broken.accepted, broken.to_json()
    lab.assert_delivered("carol@dest.test", node="mx", envelope_from="alice@broken.test")


def test_spf_off_looks_nothing_up(up: Callable[[Topology], Lab]) -> None:
    lab = up(world())
    submitted = lab.send("other", mail_from="alice@ip4.test", to="bob@dest.test")
    assert submitted.accepted, submitted.to_json()
    lab.assert_delivered("bob@dest.test", node="mx")
    assert events(lab, "policy.spf") == []
    assert not [e for e in lab.events if e.kind == "dns.query" and e.get("type") == "TXT"]


# --- the spf-envelope story (seed lg45 with an SPF-checking remote) ---------------------------


def lg45_with_spf(*, envelope: bool) -> Topology:
    """lg45, where picky checks SPF instead of the sender's domain: isp.com's SPF lists its
    MX (the ISP's smarthost), `home`'s lists only the home LAN."""
    topology = load(LG45).model
    topology.dns.zones["isp.com"]["@"].TXT = ["v=spf1 mx -all"]
    topology.dns.zones["home"] = {"@": RecordSet(TXT=["v=spf1 ip4:192.168.1.0/24 -all"])}
    topology.nodes["picky"].policy = Policy(spf=SpfCheck.reject)
    masquerade = topology.nodes["heaven"].masquerade
    assert masquerade is not None
    masquerade.envelope = envelope
    return topology


def test_spf_envelope_masqueraded_passes_at_the_remote(up: Callable[[Topology], Lab]) -> None:
    lab = up(lg45_with_spf(envelope=True))
    result = lab.send("pc", mail_from="joe@home", to="friend@picky.org", subject="hello")
    assert result.accepted, result.to_json()
    message = lab.assert_delivered(
        "friend@picky.org", node="picky", mailbox="friend", envelope_from="joe.bloggs@isp.com"
    )
    assert message["Subject"] == "hello"
    spf = lab.wait_for("policy.spf", node="picky")
    assert spf.get("sender") == "joe.bloggs@isp.com"
    assert spf.get("client") == "10.30.0.25"
    assert spf.get("result") == "pass"
    assert [e for e in lab.events if e.kind.startswith("dsn.")] == []
    for node in ("heaven", "isp", "picky"):
        assert lab.queue(node) == [], node


def test_spf_envelope_not_masqueraded_is_refused_and_bounced(
    up: Callable[[Topology], Lab],
) -> None:
    lab = up(lg45_with_spf(envelope=False))
    result = lab.send("pc", mail_from="joe@home", to="friend@picky.org", subject="hello")
    assert result.accepted, result.to_json()
    refusal = lab.wait_for("policy.reject", node="picky", stage="mail")
    assert refusal.get("reply") == (
        "550 5.7.23 SPF check failed for <joe@home>: 10.30.0.25 is not allowed to send for home"
    )
    failed = lab.wait_for("delivery.result", node="isp", rcpt="friend@picky.org")
    assert failed.get("result") == "failed"
    assert failed.get("server") == "mx.picky.org"
    lab.assert_bounced(recipient="friend@picky.org", by="isp", to="joe@home", status="5.7.23")
    # joe@home cannot be routed from the internet: the bounce ends with the ISP postmaster
    lab.wait_for("dsn.double_bounce", node="isp")
    lab.assert_delivered("postmaster", node="isp", mailbox="postmaster", envelope_from="")
    lab.assert_not_delivered("friend@picky.org")
    assert lab.mailbox("picky", "friend") == []


# --- greylisting on the lab clock -----------------------------------------------------------


@pytest.mark.lab_backend("inprocess")  # Docker: retries drift some ms; +6m misses the advance
def test_greylisting_defers_until_the_sender_retries_after_the_delay(
    up: Callable[[Topology], Lab],
) -> None:
    topology = world(greylist=Greylist(delay=300))
    topology.nodes["pc"].submit_to = "relay"
    topology.nodes["relay"].retry = Retry(intervals=[120.0])
    lab = up(topology)
    result = lab.send("pc", mail_from="alice@send.test", to="bob@dest.test")
    assert result.accepted, result.to_json()

    first = lab.wait_for("delivery.result", node="relay", rcpt="bob@dest.test")
    assert first.get("result") == "deferred"
    assert first.get("reply") == "451 4.7.1 Greylisted: please try again later"
    grey = lab.wait_for("policy.greylisted", node="mx")
    assert grey.get("client") == RELAY
    assert grey.get("sender") == "alice@send.test"
    assert grey.get("rcpt") == "bob@dest.test"
    assert grey.get("retry_after") == pytest.approx(grey.time + 300, abs=1)
    entry = lab.assert_queued(on="relay", to="bob@dest.test")
    assert entry["id"] == result.queue_id

    # the retry two minutes later is still inside the delay
    lab.clock.advance("2m")
    results = events(lab, "delivery.result", "relay")
    assert [e.get("result") for e in results] == ["deferred", "deferred"]
    assert lab.mailbox("mx", "bob") == []
    assert len(lab.queue("relay")) == 1

    # retries at +4m (still refused) and +6m (past the delay): delivered
    lab.clock.advance("4m")
    message = lab.assert_delivered("bob@dest.test", node="mx", envelope_from="alice@send.test")
    lab.settle()  # the mailbox has it before the relay has read the 250
    results = events(lab, "delivery.result", "relay")
    assert [e.get("result") for e in results] == ["deferred", "deferred", "deferred", "delivered"]
    delivered = lab.wait_for("mailbox.delivered", node="mx")
    assert delivered.time - grey.time >= 300
    assert message["Subject"] == "maillab test"
    assert lab.queue("relay") == []
    assert len(events(lab, "policy.greylisted", "mx")) == 3


def test_greylisting_refuses_a_new_triplet_over_the_wire(
    up: Callable[[Topology], Lab], wire: Wire
) -> None:
    lab = up(world(greylist=Greylist(delay=300)))
    session = greeted(wire, lab)
    assert session.code("MAIL FROM:<alice@send.test>") == 250
    assert session.cmd("RCPT TO:<bob@dest.test>") == (
        451,
        ["451 4.7.1 Greylisted: please try again later"],
    )
    # an unknown user is refused as unknown, not greylisted
    assert session.cmd("RCPT TO:<nobody@dest.test>")[0] == 550
    lab.clock.advance("5m")
    assert session.cmd("RCPT TO:<bob@dest.test>") == (
        250,
        ["250 2.1.5 <bob@dest.test>... Recipient ok"],
    )


# --- size and recipient limits --------------------------------------------------------------

BIG_BODY = b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 40  # 2,896 bytes


def test_max_size_refuses_a_declared_size_and_oversized_data(
    up: Callable[[Topology], Lab], wire: Wire
) -> None:
    lab = up(world(max_size=2000))
    session = greeted(wire, lab)
    code, lines = session.cmd("EHLO pc.send.test")
    assert "250-SIZE 2000" in lines
    # declared too big in MAIL FROM
    code, lines = session.cmd("MAIL FROM:<alice@send.test> SIZE=5000")
    assert code == 552, lines
    assert "size exceeds fixed maximum message size" in lines[0]
    # declared small enough, but the data is bigger than max_size
    assert session.code("MAIL FROM:<alice@send.test> SIZE=500") == 250
    assert session.code("RCPT TO:<bob@dest.test>") == 250
    assert session.code("DATA") == 354
    session.send(BIG_BODY + b".\r\n")
    code, lines = session.reply()
    assert code == 552, lines
    # a small message in the same session still goes through
    code, lines = transaction(
        session, "alice@send.test", "bob@dest.test", b"Subject: s\r\n\r\nx\r\n"
    )
    assert code == 250, lines
    assert session.cmd("QUIT")[0] == 221
    message = lab.assert_delivered("bob@dest.test", node="mx", mailbox="bob")
    assert message["Subject"] == "s"
    assert len(lab.mailbox("mx", "bob")) == 1
    assert len(BIG_BODY) > 2000


def test_max_size_bounce_from_a_relay(up: Callable[[Topology], Lab]) -> None:
    topology = world(max_size=2000)
    topology.nodes["pc"].submit_to = "relay"
    lab = up(topology)
    result = lab.send(
        "pc", mail_from="alice@send.test", to="bob@dest.test", body="0123456789\n" * 300
    )
    assert result.accepted, result.to_json()  # the relay has the default 10 MB limit
    failed = lab.wait_for("delivery.result", node="relay", rcpt="bob@dest.test")
    assert failed.get("result") == "failed"
    assert failed.get("reply").startswith("552 ")
    lab.assert_bounced(recipient="bob@dest.test", by="relay", to="alice@send.test")
    dsn = lab.assert_delivered("alice@send.test", node="relay", mailbox="alice", envelope_from="")
    assert "552" in dsn.raw
    assert lab.mailbox("mx", "bob") == []


@pytest.mark.lab_backend("inprocess")  # Docker: the data-stage reject event comes after the reply
def test_max_size_refusal_has_the_enhanced_status_code(
    up: Callable[[Topology], Lab], wire: Wire
) -> None:
    lab = up(world(max_size=2000))
    session = greeted(wire, lab)
    assert session.cmd("MAIL FROM:<alice@send.test> SIZE=5000") == (
        552,
        ["552 5.3.4 Message size exceeds fixed maximum message size"],
    )
    assert session.code("MAIL FROM:<alice@send.test>") == 250
    assert session.code("RCPT TO:<bob@dest.test>") == 250
    assert session.code("DATA") == 354
    session.send(BIG_BODY + b".\r\n")
    assert session.reply() == (552, ["552 5.3.4 Message size exceeds fixed maximum message size"])
    assert [e.get("stage") for e in events(lab, "policy.reject", "mx")] == ["mail", "data"]


def test_max_recipients(up: Callable[[Topology], Lab], wire: Wire) -> None:
    lab = up(world(max_recipients=2))
    session = greeted(wire, lab)
    assert session.code("MAIL FROM:<alice@send.test>") == 250
    assert session.code("RCPT TO:<bob@dest.test>") == 250
    assert session.code("RCPT TO:<carol@dest.test>") == 250
    assert session.cmd("RCPT TO:<postmaster@dest.test>") == (
        452,
        ["452 4.5.3 Too many recipients"],
    )
    assert session.code("DATA") == 354
    session.send(b"Subject: two\r\n\r\nhi\r\n.\r\n")
    assert session.reply()[0] == 250
    lab.assert_delivered("bob@dest.test", node="mx", mailbox="bob")
    lab.assert_delivered("carol@dest.test", node="mx", mailbox="carol")
    assert lab.mailbox("mx", "postmaster") == []


# --- STARTTLS -------------------------------------------------------------------------------


def test_starttls_require_refuses_mail_before_starttls(
    up: Callable[[Topology], Lab], wire: Wire
) -> None:
    lab = up(world(starttls=StartTls.require))
    session = greeted(wire, lab)
    assert session.cmd("MAIL FROM:<alice@send.test>") == (
        530,
        ["530 5.7.0 Must issue a STARTTLS command first"],
    )
    assert session.cmd("STARTTLS")[0] == 220
    context = ssl.create_default_context(cafile=lab.status()["ca"])
    session.sock = context.wrap_socket(session.sock, server_hostname="mx.dest.test")
    code, lines = session.cmd("EHLO pc.send.test")
    assert code == 250
    assert "250-STARTTLS" not in lines
    code, lines = transaction(
        session, "alice@send.test", "bob@dest.test", b"Subject: secret\r\n\r\nhi\r\n"
    )
    assert code == 250, lines
    session.cmd("QUIT")
    message = lab.assert_delivered("bob@dest.test", node="mx", mailbox="bob")
    assert "with ESMTPS id" in message.raw
    assert "(using TLSv1." in message.raw


def test_starttls_require_between_mtas_the_sender_upgrades(
    up: Callable[[Topology], Lab],
) -> None:
    topology = world(starttls=StartTls.require)
    topology.nodes["pc"].submit_to = "relay"
    lab = up(topology)
    result = lab.send("pc", mail_from="alice@send.test", to="bob@dest.test")
    assert result.accepted, result.to_json()
    message = lab.assert_delivered("bob@dest.test", node="mx", envelope_from="alice@send.test")
    done = lab.wait_for("delivery.result", node="relay", rcpt="bob@dest.test")
    assert done.get("result") == "delivered"
    assert done.get("tls") is True
    newest = message.raw.split("Received: ", 2)[1]
    assert newest.startswith("from relay.send.test (relay.send.test [10.50.0.10])")
    assert "by mx.dest.test (maillab) with ESMTPS" in newest
    assert events(lab, "policy.reject") == []


def test_starttls_require_refuses_a_sender_that_will_not_upgrade(
    up: Callable[[Topology], Lab],
) -> None:
    topology = world(starttls=StartTls.require)
    topology.nodes["pc"].submit_to = "relay"
    topology.nodes["relay"].policy.tls_outbound = "off"
    lab = up(topology)
    result = lab.send("pc", mail_from="alice@send.test", to="bob@dest.test")
    assert result.accepted, result.to_json()
    failed = lab.wait_for("delivery.result", node="relay", rcpt="bob@dest.test")
    assert failed.get("result") == "failed"
    assert failed.get("reply") == "530 5.7.0 Must issue a STARTTLS command first"
    lab.assert_bounced(recipient="bob@dest.test", by="relay", to="alice@send.test", status="5.7.0")
    lab.assert_not_delivered("bob@dest.test")


# --- VRFY and EXPN --------------------------------------------------------------------------


def test_vrfy_250_answers_for_known_and_unknown_users(
    up: Callable[[Topology], Lab], wire: Wire
) -> None:
    lab = up(world(vrfy=250))
    session = greeted(wire, lab)
    assert session.cmd("VRFY bob") == (250, ["250 2.1.5 <bob@dest.test>"])
    assert session.cmd("VRFY bob@dest.test") == (250, ["250 2.1.5 <bob@dest.test>"])
    assert session.cmd("VRFY nobody") == (550, ["550 5.1.1 <nobody>... User unknown"])
    assert session.cmd("VRFY nobody@dest.test")[0] == 550
    assert session.cmd("EXPN team") == (502, ["502 5.7.0 EXPN is not allowed"])


def test_vrfy_502_and_the_default_252(up: Callable[[Topology], Lab], wire: Wire) -> None:
    lab = up(world(vrfy=502))
    session = greeted(wire, lab)
    assert session.cmd("VRFY bob") == (502, ["502 5.5.1 VRFY command is disabled"])
    assert session.cmd("VRFY nobody") == (502, ["502 5.5.1 VRFY command is disabled"])
    other = up(world())
    session = greeted(wire, other)
    assert session.cmd("VRFY bob")[1] == [
        "252 2.5.2 Cannot VRFY user; try RCPT to attempt delivery"
    ]


def test_expn_250_lists_the_members_of_an_alias(up: Callable[[Topology], Lab], wire: Wire) -> None:
    lab = up(world(expn=250))
    session = greeted(wire, lab)
    assert session.cmd("EXPN team") == (
        250,
        ["250-2.1.5 <bob@dest.test>", "250 2.1.5 <carol@dest.test>"],
    )
    assert session.cmd("EXPN nosuchlist")[0] == 550
    # (on Docker a host's events reach the lab over its control socket, after the reply)
    lab.wait_for("smtp.command", node="mx", command="EXPN", arg="nosuchlist")
    commands = [
        e.get("arg") for e in events(lab, "smtp.command", "mx") if e.get("command") == "EXPN"
    ]
    assert commands == ["team", "nosuchlist"]


# --- faults added while the lab runs --------------------------------------------------------


def test_runtime_fault_strikes_its_number_of_times_then_clears(
    up: Callable[[Topology], Lab],
) -> None:
    topology = world()
    topology.nodes["pc"].submit_to = "relay"
    lab = up(topology)
    lab.add_fault("mx", on="rcpt", reply="451 4.3.0 later", times=2)
    assert lab.wait_for("fault.added", node="mx").get("reply") == "451 4.3.0 later"

    result = lab.send("pc", mail_from="alice@send.test", to="bob@dest.test")
    assert result.accepted, result.to_json()
    first = lab.wait_for("delivery.result", node="relay", rcpt="bob@dest.test")
    assert (first.get("result"), first.get("reply")) == ("deferred", "451 4.3.0 later")
    assert lab.assert_queued(on="relay")["recipients"] == ["bob@dest.test"]

    lab.clock.advance("30m")
    assert [e.get("result") for e in events(lab, "delivery.result", "relay")] == [
        "deferred",
        "deferred",
    ]
    assert lab.mailbox("mx", "bob") == []

    lab.clock.advance("30m")
    lab.assert_delivered("bob@dest.test", node="mx", envelope_from="alice@send.test")
    triggered = events(lab, "fault.triggered", "mx")
    assert [(e.get("stage"), e.get("address")) for e in triggered] == [
        ("rcpt", "bob@dest.test"),
        ("rcpt", "bob@dest.test"),
    ]
    assert lab.queue("relay") == []
    # used up: a new message goes straight through
    lab.send("pc", mail_from="alice@send.test", to="carol@dest.test")
    lab.assert_delivered("carol@dest.test", node="mx", mailbox="carol")
    assert len(events(lab, "fault.triggered", "mx")) == 2


def test_queue_shows_the_reply_that_deferred_a_message_at_rcpt(
    up: Callable[[Topology], Lab],
) -> None:
    topology = world()
    topology.nodes["pc"].submit_to = "relay"
    lab = up(topology)
    lab.add_fault("mx", on="rcpt", reply="451 4.3.0 later")
    lab.send("pc", mail_from="alice@send.test", to="bob@dest.test")
    entry = lab.assert_queued(on="relay", to="bob@dest.test")
    assert entry["last_reply"] == "451 4.3.0 later"


# --- node software --------------------------------------------------------------------------


def real_mta_world(software: Software = Software.postfix) -> Topology:
    """The world with mx on a real MTA."""
    text = WORLD.replace(
        "    hostname: mx.dest.test\n",
        f"    hostname: mx.dest.test\n    software: {software.value}\n",
    )
    topology = load_text(text, "policies.yaml").model
    assert topology.nodes["mx"].software_for(Service.smtp) is software
    return topology


def failed_up(
    up: Callable[..., Lab], topology: Topology
) -> tuple[str, list[warnings.WarningMessage]]:
    """An up that must fail, with the backend's own temporary state directory: (the
    LabError's text, the ResourceWarnings of what it left)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(LabError) as error:
            up(topology, state_dir=None)
        message = str(error.value)
        del error
        gc.collect()
    return message, [w for w in caught if issubclass(w.category, ResourceWarning)]


@pytest.mark.lab_backend("inprocess")  # the refusal under test is the in-process backend's
def test_postfix_on_the_inprocess_backend_is_a_clear_error(
    lab_factory: Callable[..., Lab], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    message, _ = failed_up(lab_factory, real_mta_world())
    assert message == (
        "node 'mx': smtp software 'postfix' (Postfix, in a container (Docker backend)) does not"
        " run on the inprocess backend, which runs the built-in software only; use --backend"
        " docker (or --backend auto)"
    )
    # nothing was left listening: the builtin world comes up at once
    with lab_factory(world()) as fine:
        assert fine.status()["nodes"]["mx"]["endpoints"]["smtp"]


def test_a_failed_up_leaves_nothing_behind(
    lab_factory: Callable[..., Lab], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    # postfix asked for EXPN 250: refused on both backends (in process: no real MTAs; on
    # Docker: a field Postfix cannot honour)
    topology = real_mta_world(Software.postfix)
    topology.nodes["mx"].policy.expn = 250
    _, leaked = failed_up(lab_factory, topology)
    assert [str(w.message) for w in leaked] == []
    assert list(tmp_path.glob("maillab-*")) == []
