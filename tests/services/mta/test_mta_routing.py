"""Where the built-in MTA sends mail, and what it refuses (seeds ch7, nelug, pep).

One small world: a sending MTA `out`, two MX hosts for example.org, a domain with only an
A record, a domain whose MX host is named elsewhere, and clients inside and outside the
sender's relay network. Each test edits what it needs before the lab comes up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from lab.harness import Lab
from lab.topology import load_text
from lab.topology.model import Fault, StartTls, Topology

WORLD = """
name: routing
networks:
  net: {subnet: 10.40.0.0/16}
links:
  uplink: {node: out, network: net, state: up}
dns:
  zones:
    example.org:
      "@": {MX: ["20 mx2.example.org", "10 mx1.example.org"]}
    nomx.test:
      "@": {A: 10.40.3.3}
    elsewhere.test:
      "@": {MX: "10 mail.provider.test"}
    provider.test: {}
    nullmx.test:
      "@": {MX: "0 ."}
    loop.test:
      "@": {MX: "10 out.sender.test"}
nodes:
  dns: {role: dns, hostname: ns.routing.test, networks: {net: 10.40.0.53}}
  out:
    role: mta
    hostname: out.sender.test
    networks: {net: 10.40.0.10}
    local_domains: [sender.test]
    users: [alice, root]
    aliases:
      team: [alice, root, bob@example.org]
      ring: [bell]
      bell: [ring]
    relay_from: [10.40.0.0/24]
  mx1:
    role: mta
    hostname: mx1.example.org
    networks: {net: 10.40.1.1}
    local_domains: [example.org]
    users: [bob, busy]
  mx2:
    role: mta
    hostname: mx2.example.org
    networks: {net: 10.40.1.2}
    local_domains: [example.org]
    users: [bob, busy]
  plain: {role: mta, hostname: nomx.test, networks: {net: 10.40.3.3},
          local_domains: [nomx.test], users: [carol]}
  provider: {role: mta, hostname: mail.provider.test, networks: {net: 10.40.4.4},
             local_domains: [elsewhere.test], users: [dave]}
  customer: {role: client, hostname: pc.sender.test, networks: {net: 10.40.0.11},
             submit_to: out}
  stranger: {role: client, hostname: pc.stranger.test, networks: {net: 10.40.9.9},
             submit_to: out}
"""


def world() -> Topology:
    return load_text(WORLD, "routing.yaml").model


def connects(lab: Lab, node: str = "out") -> list[str]:
    return [e.get("host") for e in lab.events if e.node == node and e.kind == "delivery.connect"]


# --- MX routing -----------------------------------------------------------------------------


def test_mx_preference_order(lab_factory: Callable[..., Lab]) -> None:
    with lab_factory(world()) as lab:
        lab.send("out", mail_from="alice@sender.test", to="bob@example.org")
        message = lab.assert_delivered("bob@example.org", node="mx1", mailbox="bob")
        assert message.envelope_from == "alice@sender.test"
        assert connects(lab) == ["mx1.example.org"]
        assert lab.mailbox("mx2", "bob") == []


@pytest.mark.parametrize(
    ("fault", "why"),
    [
        ({"on": "connect", "reply": "421 4.3.2 busy"}, "421 4.3.2 busy"),
        ({"on": "connect", "disconnect": True}, "421 4."),
        ({"on": "helo", "reply": "421 4.7.0 go away"}, "421 4.7.0 go away"),
    ],
    ids=["421-greeting", "disconnect", "421-ehlo"],
)
def test_fallback_to_the_next_mx_when_the_first_fails(
    lab_factory: Callable[..., Lab], fault: dict[str, Any], why: str
) -> None:
    topology = world()
    topology.nodes["mx1"].faults = [Fault.model_validate(fault)]
    with lab_factory(topology) as lab:
        lab.send("out", mail_from="alice@sender.test", to="bob@example.org")
        lab.assert_delivered("bob@example.org", node="mx2", mailbox="bob")
        assert connects(lab) == ["mx1.example.org", "mx2.example.org"]
        failed = lab.wait_for("delivery.session_failed", node="out", host="mx1.example.org")
        assert why in failed.get("reply")
        assert lab.mailbox("mx1", "bob") == []
        assert lab.queue("out") == []


@pytest.mark.lab_backend("inprocess")  # Docker: a host-less address may time out, not refuse
def test_fallback_to_the_next_mx_when_the_first_refuses_connections(
    lab_factory: Callable[..., Lab],
) -> None:
    with lab_factory(world()) as lab:
        lab.set_dns("mx1.example.org", "A", ["10.40.7.7"])  # nobody lives there
        lab.send("out", mail_from="alice@sender.test", to="bob@example.org")
        lab.assert_delivered("bob@example.org", node="mx2", mailbox="bob")
        refused = lab.wait_for("delivery.connect_failed", node="out", host="mx1.example.org")
        assert refused.get("address") == "10.40.7.7"
        assert refused.get("reason").startswith("4.4.1 connect to mx1.example.org[10.40.7.7]")
        assert "refused" in refused.get("reason")
        assert connects(lab) == ["mx1.example.org", "mx2.example.org"]


def test_all_mx_hosts_failing_defers(lab_factory: Callable[..., Lab]) -> None:
    topology = world()
    for node in ("mx1", "mx2"):
        topology.nodes[node].faults = [Fault(on="connect", reply="421 4.3.2 busy")]
    with lab_factory(topology) as lab:
        result = lab.send("out", mail_from="alice@sender.test", to="bob@example.org")
        entry = lab.assert_queued(on="out", to="bob@example.org")
        assert entry["id"] == result.queue_id
        assert entry["last_reply"] == "421 4.3.2 busy"
        assert connects(lab) == ["mx1.example.org", "mx2.example.org"]
        lab.assert_not_delivered("bob@example.org")
        assert not [e for e in lab.events if e.kind == "dsn.sent"]


def test_implicit_mx_from_the_a_record(lab_factory: Callable[..., Lab]) -> None:
    with lab_factory(world()) as lab:
        lab.send("out", mail_from="alice@sender.test", to="carol@nomx.test")
        lab.assert_delivered("carol@nomx.test", node="plain", mailbox="carol")
        connect = lab.wait_for("delivery.connect", node="out")
        assert (connect.get("host"), connect.get("address")) == ("nomx.test", "10.40.3.3")


def test_mx_host_name_differs_from_the_domain(lab_factory: Callable[..., Lab]) -> None:
    with lab_factory(world()) as lab:
        lab.send("out", mail_from="alice@sender.test", to="dave@elsewhere.test")
        lab.assert_delivered("dave@elsewhere.test", node="provider", mailbox="dave")
        connect = lab.wait_for("delivery.connect", node="out")
        assert (connect.get("host"), connect.get("address")) == ("mail.provider.test", "10.40.4.4")


def test_nxdomain_bounces_with_5_1_2(lab_factory: Callable[..., Lab]) -> None:
    with lab_factory(world()) as lab:
        result = lab.send("out", mail_from="alice@sender.test", to="nobody@nowhere.invalid")
        assert result.accepted
        lab.assert_bounced(
            recipient="nobody@nowhere.invalid", to="alice@sender.test", status="5.1.2", by="out"
        )
        dsn = lab.assert_delivered(
            "alice@sender.test", node="out", mailbox="alice", envelope_from=""
        )
        assert "Status: 5.1.2" in dsn.raw
        assert "Action: failed" in dsn.raw
        assert connects(lab) == []
        assert lab.queue("out") == []


def test_servfail_defers_and_delivers_once_dns_answers(lab_factory: Callable[..., Lab]) -> None:
    with lab_factory(world()) as lab:
        lab.set_dns_fault("example.org", "servfail")
        result = lab.send("out", mail_from="alice@sender.test", to="bob@example.org")
        entry = lab.assert_queued(on="out", to="bob@example.org")
        assert entry["id"] == result.queue_id
        assert entry["last_reply"].startswith("451 4.4.3 Host name lookup failure")
        assert "SERVFAIL" in entry["last_reply"]
        assert not [e for e in lab.events if e.kind == "dsn.sent"]

        lab.clock.advance("30m")  # the fault still stands: deferred again
        assert lab.queue("out")[0]["attempts"] == 2
        lab.assert_not_delivered("bob@example.org")

        lab.set_dns_fault("example.org", None)
        lab.clock.advance("30m")
        lab.assert_delivered("bob@example.org", node="mx1", mailbox="bob")
        assert lab.queue("out") == []
        assert not [e for e in lab.events if e.kind == "dsn.sent"]


def test_null_mx_bounces_with_5_1_10(lab_factory: Callable[..., Lab]) -> None:
    with lab_factory(world()) as lab:
        lab.send("out", mail_from="alice@sender.test", to="user@nullmx.test")
        bounce = lab.assert_bounced(
            recipient="user@nullmx.test", to="alice@sender.test", status="5.1.10"
        )
        assert bounce.node == "out"
        result = lab.wait_for("delivery.result", node="out", rcpt="user@nullmx.test")
        assert result.get("reply").startswith("556 5.1.10")
        assert connects(lab) == []


def test_mx_pointing_back_to_the_sender_is_a_loop(lab_factory: Callable[..., Lab]) -> None:
    with lab_factory(world()) as lab:
        lab.send("out", mail_from="alice@sender.test", to="user@loop.test")
        lab.assert_bounced(recipient="user@loop.test", to="alice@sender.test", status="5.4.6")
        result = lab.wait_for("delivery.result", node="out", rcpt="user@loop.test")
        assert result.get("reply").startswith("554 5.4.6")
        assert "loops back to myself" in result.get("reply")
        assert connects(lab) == []
        lab.assert_delivered("alice@sender.test", node="out", mailbox="alice", envelope_from="")


# --- loops by Received count ----------------------------------------------------------------


def _with_received(count: int) -> bytes:
    hops = "".join(
        f"Received: from hop{i}.test ([10.9.9.{i}]) by hop{i + 1}.test with SMTP id H{i};"
        " Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        for i in range(count)
    )
    return (
        hops + "From: alice@sender.test\r\nTo: bob@example.org\r\nSubject: hops\r\n"
        "\r\nround and round\r\n"
    ).encode()


def test_too_many_received_headers_is_refused_as_a_loop(lab_factory: Callable[..., Lab]) -> None:
    topology = world()
    topology.nodes["mx1"].policy.max_received = 5
    with lab_factory(topology) as lab:
        refused = lab.send(
            "out",
            mail_from="alice@sender.test",
            to="bob@example.org",
            via="mx1",
            raw=_with_received(6),
        )
        assert not refused.accepted
        assert refused.data_reply is not None
        assert refused.data_reply.code == 554
        assert refused.data_reply.status == "5.4.6"
        assert lab.queue("mx1") == []

        accepted = lab.send(
            "out",
            mail_from="alice@sender.test",
            to="bob@example.org",
            via="mx1",
            raw=_with_received(3),
        )
        assert accepted.accepted, accepted.to_json()
        lab.assert_delivered("bob@example.org", node="mx1", mailbox="bob")
        assert len(lab.mailbox("mx1", "bob")) == 1


def test_two_relays_pointing_at_each_other_stop_at_max_received(
    lab_factory: Callable[..., Lab],
) -> None:
    topology = world()
    for me, other in (("mx1", "mx2"), ("mx2", "mx1")):
        node = topology.nodes[me]
        node.smarthost = other
        node.relay_from = ["10.40.0.0/16"]
        node.policy.max_received = 6
    with lab_factory(topology) as lab:
        lab.send("out", mail_from="alice@sender.test", to="someone@nomx.test", via="mx1")
        refusal = lab.wait_for("policy.reject", stage="data")
        assert refusal.get("reply").startswith("554 5.4.6")
        bounce = lab.assert_bounced(recipient="someone@nomx.test", status="5.4.6")
        assert bounce.get("to") == "alice@sender.test"
        hops = [
            e
            for e in lab.events
            if e.kind == "queue.queued" and e.get("envelope_from") == "alice@sender.test"
        ]
        assert 5 <= len(hops) <= 7, [str(e) for e in hops]
        lab.assert_not_delivered("someone@nomx.test")


# --- local delivery: users and aliases --------------------------------------------------------


def test_alias_expands_to_several_users(lab_factory: Callable[..., Lab]) -> None:
    with lab_factory(world()) as lab:
        result = lab.send("customer", mail_from="alice@sender.test", to="team@sender.test")
        assert result.accepted
        lab.assert_delivered("team@sender.test", node="out", mailbox="alice")
        lab.assert_delivered("team@sender.test", node="out", mailbox="root")
        lab.assert_delivered("bob@example.org", node="mx1", mailbox="bob")
        alice = lab.mailbox("out", "alice")
        assert len(alice) == 1
        assert "Delivered-To: alice@sender.test" in alice[0].raw
        queued = lab.wait_for("queue.queued", node="out", id=result.queue_id)
        assert sorted(queued.get("recipients")) == [
            "alice@sender.test",
            "bob@example.org",
            "root@sender.test",
        ]


def test_alias_loop_bounces_with_5_4_6(lab_factory: Callable[..., Lab]) -> None:
    with lab_factory(world()) as lab:
        result = lab.send("customer", mail_from="alice@sender.test", to="ring@sender.test")
        assert result.accepted, result.to_json()
        lab.assert_bounced(
            recipient="ring@sender.test", to="alice@sender.test", status="5.4.6", by="out"
        )
        dsn = lab.assert_delivered(
            "alice@sender.test", node="out", mailbox="alice", envelope_from=""
        )
        assert "alias loop" in dsn.raw
        assert lab.queue("out") == []


def test_unknown_local_user_is_refused_at_rcpt(lab_factory: Callable[..., Lab]) -> None:
    with lab_factory(world()) as lab:
        result = lab.send(
            "customer",
            mail_from="alice@sender.test",
            to=["nobody@sender.test", "alice@sender.test"],
        )
        reply = result.rcpt_replies["nobody@sender.test"]
        assert (reply.code, reply.status) == (550, "5.1.1")
        assert result.rcpt_replies["alice@sender.test"].code == 250
        assert result.accepted
        lab.assert_delivered("alice@sender.test", node="out", mailbox="alice")
        assert not [e for e in lab.events if e.kind == "dsn.sent"]


def test_relay_denied_to_a_stranger_and_allowed_to_a_customer(
    lab_factory: Callable[..., Lab],
) -> None:
    with lab_factory(world()) as lab:
        denied = lab.send("stranger", mail_from="x@stranger.test", to="bob@example.org")
        assert not denied.accepted
        reply = denied.rcpt_replies["bob@example.org"]
        assert (reply.code, reply.status) == (550, "5.7.1")
        assert "Relaying denied" in reply.text
        assert denied.data_reply is None
        # a stranger may still send to the relay's own users
        local = lab.send("stranger", mail_from="x@stranger.test", to="alice@sender.test")
        assert local.accepted
        allowed = lab.send("customer", mail_from="alice@sender.test", to="bob@example.org")
        assert allowed.accepted
        message = lab.assert_delivered("bob@example.org", node="mx1", mailbox="bob")
        assert message.envelope_from == "alice@sender.test"
        assert len(lab.mailbox("mx1", "bob")) == 1
        assert lab.queue("out") == []


# --- a relay-only backup MX ----------------------------------------------------------------


def backup_world() -> Topology:
    """mx2 (MX 20 for example.org) turned into a relay-only backup: no local example.org."""
    topology = world()
    mx2 = topology.nodes["mx2"]
    mx2.local_domains, mx2.users, mx2.relay_domains = [], ["postmaster"], ["example.org"]
    return topology


def test_a_backup_mx_takes_its_relay_domain_from_anyone_and_nothing_else(
    lab_factory: Callable[..., Lab],
) -> None:
    with lab_factory(backup_world()) as lab:
        taken = lab.send("stranger", via="mx2", mail_from="x@stranger.test", to="bob@example.org")
        assert taken.accepted
        for address, status in [
            ("bob@elsewhere.test", "5.7.1"),  # another domain: not for strangers
            ("bob%elsewhere.test@example.org", "5.7.1"),  # routing through the relay domain
            ("elsewhere.test!bob@example.org", "5.7.1"),
            ("bob@sub.example.org", "5.7.1"),  # the domain itself, not its subdomains
        ]:
            refused = lab.send("stranger", via="mx2", mail_from="x@stranger.test", to=address)
            reply = refused.rcpt_replies[address]
            assert (reply.code, reply.status) == (550, status), address
        lab.assert_delivered("bob@example.org", node="mx1", mailbox="bob")
        assert connects(lab, "mx2") == ["mx1.example.org"]
        assert lab.mailbox("mx2", "postmaster") == []


def test_a_backup_mx_defers_while_the_primary_is_down_and_never_sends_to_itself(
    lab_factory: Callable[..., Lab],
) -> None:
    """RFC 5321 5.1: a host among a domain's MX hosts tries only those preferred over it.
    With the primary failing, the backup keeps the mail (4.x.x) instead of finding itself
    next in the list and bouncing it as a loop; once the primary answers, it delivers."""
    topology = backup_world()
    topology.nodes["mx1"].faults = [
        Fault.model_validate({"on": "connect", "reply": "421 4.3.2 busy", "times": 2})
    ]
    with lab_factory(topology) as lab:
        lab.send("out", mail_from="alice@sender.test", to="bob@example.org")
        deferred = lab.wait_for("queue.deferred", node="mx2")
        lab.settle()
        assert connects(lab) == ["mx1.example.org", "mx2.example.org"]  # the sender falls back
        assert deferred.get("reply") == "421 4.3.2 busy"
        assert connects(lab, "mx2") == ["mx1.example.org"]
        [entry] = lab.queue("mx2")
        assert entry["recipients"] == ["bob@example.org"]
        assert not [e for e in lab.events if e.kind == "dsn.sent"]
        lab.flush("mx2")  # the busy primary's second refusal: still deferred, still here
        assert connects(lab, "mx2") == ["mx1.example.org"] * 2
        lab.flush("mx2")
        message = lab.assert_delivered("bob@example.org", node="mx1", mailbox="bob")
        assert message.envelope_from == "alice@sender.test"
        assert lab.queue("mx2") == []
        assert not [e for e in lab.events if e.kind == "dsn.sent"]


def test_the_most_preferred_mx_finding_itself_is_a_loop_even_with_a_backup(
    lab_factory: Callable[..., Lab],
) -> None:
    """mx1 (MX 10) relaying example.org finds itself first: it may not send to the backup
    (MX 20), which would only send it back."""
    topology = world()
    mx1 = topology.nodes["mx1"]
    mx1.local_domains, mx1.users, mx1.relay_domains = [], ["postmaster"], ["example.org"]
    with lab_factory(topology) as lab:
        lab.send("customer", via="mx1", mail_from="alice@sender.test", to="bob@example.org")
        result = lab.wait_for("delivery.result", node="mx1", rcpt="bob@example.org")
        assert result.get("reply") == "554 5.4.6 mail for example.org loops back to myself"
        assert connects(lab, "mx1") == []
        assert lab.mailbox("mx2", "bob") == []


# --- several recipients and several messages ----------------------------------------------


def test_mixed_recipient_results_in_one_transaction(lab_factory: Callable[..., Lab]) -> None:
    topology = world()
    topology.nodes["mx1"].faults = [
        Fault(on="rcpt", match="busy@example.org", reply="450 4.2.1 mailbox busy", times=1)
    ]
    with lab_factory(topology) as lab:
        result = lab.send(
            "out",
            mail_from="alice@sender.test",
            to=["bob@example.org", "busy@example.org", "ghost@example.org"],
        )
        assert result.accepted
        lab.assert_delivered("bob@example.org", node="mx1", mailbox="bob")
        lab.assert_bounced(
            recipient="ghost@example.org", to="alice@sender.test", status="5.1.1", by="out"
        )
        entry = lab.assert_queued(on="out", to="busy@example.org")
        assert entry["recipients"] == ["busy@example.org"]
        assert connects(lab) == ["mx1.example.org"]  # one session for all three
        outcome = {
            e.get("rcpt"): e.get("result") for e in lab.events if e.kind == "delivery.result"
        }
        assert outcome == {
            "bob@example.org": "delivered",
            "busy@example.org": "deferred",
            "ghost@example.org": "failed",
        }
        dsn = lab.assert_delivered("alice@sender.test", node="out", mailbox="alice")
        assert "Final-Recipient: rfc822; ghost@example.org" in dsn.raw
        assert "bob@example.org" not in dsn.raw.split("Content-Type: text/rfc822-headers")[0]

        lab.clock.advance("30m")
        lab.assert_delivered("busy@example.org", node="mx1", mailbox="busy")
        assert lab.queue("out") == []
        assert len(lab.mailbox("mx1", "bob")) == 1  # not sent again
        assert len(lab.mailbox("out", "alice")) == 1  # one bounce, for ghost only


def test_several_messages_share_one_connection_on_flush(lab_factory: Callable[..., Lab]) -> None:
    with lab_factory(world()) as lab:
        lab.link("uplink").down()
        ids = []
        for n in range(3):
            result = lab.send(
                "out", mail_from="alice@sender.test", to="bob@example.org", subject=f"message {n}"
            )
            assert result.accepted
            ids.append(result.queue_id)
        lab.settle()
        assert sorted(q["id"] for q in lab.queue("out")) == sorted(ids)
        assert connects(lab) == []

        lab.link("uplink").up()
        since = lab.events[-1].seq
        assert lab.flush("out") == 3
        assert len(lab.mailbox("mx1", "bob")) == 3
        new = [e for e in lab.events if e.seq > since and e.node == "out"]
        assert [e.kind for e in new].count("delivery.connect") == 1
        assert [e.kind for e in new].count("delivery.attempt") == 3
        assert len([e for e in lab.events if e.node == "mx1" and e.kind == "smtp.connect"]) == 1
        subjects = sorted(m["Subject"] for m in lab.mailbox("mx1", "bob"))
        assert subjects == ["message 0", "message 1", "message 2"]
        assert lab.queue("out") == []


@pytest.mark.lab_backend("inprocess")  # Docker: the readiness probe's QUIT is in mx1's events
def test_starttls_between_mtas(lab_factory: Callable[..., Lab]) -> None:
    with lab_factory(world()) as lab:
        lab.send("out", mail_from="alice@sender.test", to="bob@example.org")
        message = lab.assert_delivered("bob@example.org", node="mx1", mailbox="bob")
        result = lab.wait_for("delivery.result", node="out", rcpt="bob@example.org")
        assert result.get("tls") is True
        received = message.raw.split("\r\n\r\n")[0]
        top = received[received.index("Received:") :].split("\r\nReceived:")[0]
        assert "by mx1.example.org" in top
        assert "with ESMTPS" in top
        assert "using TLS" in top
        commands = [
            e.get("command") for e in lab.events if e.node == "mx1" and e.kind == "smtp.command"
        ]
        assert commands[:3] == ["EHLO", "STARTTLS", "EHLO"]


def test_no_starttls_when_the_server_does_not_offer_it(lab_factory: Callable[..., Lab]) -> None:
    topology = world()
    topology.nodes["mx1"].policy.starttls = StartTls.off
    with lab_factory(topology) as lab:
        lab.send("out", mail_from="alice@sender.test", to="bob@example.org")
        message = lab.assert_delivered("bob@example.org", node="mx1", mailbox="bob")
        result = lab.wait_for("delivery.result", node="out", rcpt="bob@example.org")
        assert result.get("tls") is False
        assert "with ESMTP id" in message.raw
        assert "using TLS" not in message.raw.split("by mx1.example.org")[1].split(";")[0]


def test_a_bounce_travels_to_a_remote_sender_from_the_null_sender(
    lab_factory: Callable[..., Lab],
) -> None:
    with lab_factory(world()) as lab:
        result = lab.send("out", mail_from="carol@nomx.test", to="ghost@example.org")
        assert result.accepted
        lab.assert_bounced(
            recipient="ghost@example.org", to="carol@nomx.test", status="5.1.1", by="out"
        )
        dsn = lab.assert_delivered(
            "carol@nomx.test", node="plain", mailbox="carol", envelope_from=""
        )
        assert dsn.raw.startswith("Return-Path: <>\r\n")
        assert dsn["From"] == "Mail Delivery System <MAILER-DAEMON@out.sender.test>"
        mail = [
            e.get("arg")
            for e in lab.events
            if e.node == "plain" and e.kind == "smtp.command" and e.get("command") == "MAIL"
        ]
        assert mail == ["FROM:<>"]
        lab.settle()  # the sender lets go of the DSN once the session's results are in
        assert lab.queue("out") == [] and lab.queue("plain") == []


@pytest.mark.lab_backend("inprocess")  # Docker: set_dns MX fails, the pairs are sent as strings
def test_answers_are_cached_for_their_ttl_and_edits_show_at_once(
    lab_factory: Callable[..., Lab],
) -> None:
    """The MTA's resolver keeps an MX answer for its TTL on the lab clock (300 s here),
    as the caching resolver beside a real MTA does; an edit of the lab DNS empties it."""

    def mx_queries(since: int) -> int:
        return len(
            [
                e
                for e in lab.events
                if e.seq > since
                and e.kind == "dns.query"
                and e.get("name") == "example.org"
                and e.get("type") == "MX"
            ]
        )

    with lab_factory(world()) as lab:
        since = lab.events[-1].seq
        lab.send("out", mail_from="alice@sender.test", to="bob@example.org", subject="one")
        lab.assert_delivered("bob@example.org", node="mx1", mailbox="bob")
        assert mx_queries(since) == 1

        since = lab.events[-1].seq
        lab.send("out", mail_from="alice@sender.test", to="bob@example.org", subject="two")
        lab.settle()
        assert len(lab.mailbox("mx1", "bob")) == 2
        assert mx_queries(since) == 0  # answered from the cache

        lab.clock.advance("301s")  # past the TTL: asked again
        since = lab.events[-1].seq
        lab.send("out", mail_from="alice@sender.test", to="bob@example.org", subject="three")
        lab.settle()
        assert len(lab.mailbox("mx1", "bob")) == 3
        assert mx_queries(since) == 1

        # an edit within the TTL is seen by the very next lookup
        lab.set_dns("example.org", "MX", [[10, "mx2.example.org"]])
        lab.send("out", mail_from="alice@sender.test", to="bob@example.org", subject="four")
        lab.assert_delivered("bob@example.org", node="mx2", mailbox="bob")
        lab.set_dns_fault("example.org", "servfail")
        lab.send("out", mail_from="alice@sender.test", to="bob@example.org", subject="five")
        entry = lab.assert_queued(on="out", to="bob@example.org")
        assert "SERVFAIL" in entry["last_reply"]


def test_a_session_left_open_is_used_by_the_next_run_and_replaced_when_cut(
    lab_factory: Callable[..., Lab],
) -> None:
    with lab_factory(world()) as lab:
        lab.send("out", mail_from="alice@sender.test", to="bob@example.org", subject="one")
        lab.assert_delivered("bob@example.org", node="mx1", mailbox="bob")
        lab.settle()
        since = lab.events[-1].seq
        lab.send("out", mail_from="alice@sender.test", to="bob@example.org", subject="two")
        lab.settle()
        assert len(lab.mailbox("mx1", "bob")) == 2
        kinds = [e.kind for e in lab.events if e.seq > since and e.node == "out"]
        assert "delivery.reuse" in kinds and "delivery.connect" not in kinds
        connects_mx1 = [e for e in lab.events if e.seq > since and e.kind == "smtp.connect"]
        assert [e.node for e in connects_mx1] == ["out"]  # the submission only

        # the link goes down and up: the waiting session is cut, and the next message
        # goes over a new connection, not deferred
        lab.link("uplink").down()
        lab.link("uplink").up()
        since = lab.events[-1].seq
        lab.send("out", mail_from="alice@sender.test", to="bob@example.org", subject="three")
        lab.settle()
        assert len(lab.mailbox("mx1", "bob")) == 3
        new = [e for e in lab.events if e.seq > since and e.node == "out"]
        assert [e.kind for e in new].count("delivery.connect") == 1
        assert not [e for e in new if e.kind == "queue.deferred"]

        # past the idle limit in lab time, a session is not used again
        lab.clock.advance("10s")
        since = lab.events[-1].seq
        lab.send("out", mail_from="alice@sender.test", to="bob@example.org", subject="four")
        lab.settle()
        new = [e for e in lab.events if e.seq > since and e.node == "out"]
        assert [e.kind for e in new].count("delivery.connect") == 1
