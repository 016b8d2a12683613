"""Queued mail in a running lab, on the lab clock (seed nelug): retried every 30 minutes,
a delay warning after 4 hours, returned after 5 days, custom schedules; flushed when the
link is back; still queued after the lab restarts; none lost or doubled.

The queue's files on their own (lab.services.mta.queue.Queue) are in test_queue.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest

from lab.harness import Lab
from lab.topology import load_text
from lab.topology.model import Topology

ROOT = Path(__file__).resolve().parents[3]
HOME_DIALUP = ROOT / "topologies" / "home-dialup.yaml"

WORLD = """
name: queueing
networks:
  net: {subnet: 10.50.0.0/16}
links:
  uplink: {node: out, network: net, state: down}
dns:
  zones:
    example.org:
      "@": {MX: "10 mx.example.org"}
nodes:
  dns: {role: dns, hostname: ns.queueing.test, networks: {net: 10.50.0.53}}
  out:
    role: mta
    hostname: out.sender.test
    networks: {net: 10.50.0.10}
    local_domains: [sender.test]
    users: [alice]
    relay_from: [10.50.0.0/24]
  mx:
    role: mta
    hostname: mx.example.org
    networks: {net: 10.50.1.1}
    local_domains: [example.org]
    users: [bob]
"""

MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0


def world() -> Topology:
    return load_text(WORLD, "queueing.yaml").model


def attempts(lab: Lab, queue_id: str) -> list[float]:
    """Lab times of the remote delivery attempts of one message on `out`."""
    return [
        e.time
        for e in lab.events
        if e.node == "out" and e.kind == "queue.deferred" and e.get("id") == queue_id
    ] + [
        e.time
        for e in lab.events
        if e.node == "out" and e.kind == "queue.expired" and e.get("id") == queue_id
    ]


def dsns(lab: Lab, action: str) -> list[str]:
    return [m.raw for m in lab.mailbox("out", "alice") if f"Action: {action}" in m.raw]


def test_default_schedule_retry_warn_and_give_up(lab_factory: Callable[..., Lab]) -> None:
    with lab_factory(world()) as lab:
        result = lab.send("out", mail_from="alice@sender.test", to="bob@example.org")
        queue_id = result.queue_id
        entry = lab.assert_queued(on="out", to="bob@example.org")
        assert entry["attempts"] == 1
        assert entry["next_attempt"] - entry["received"] == pytest.approx(30 * MINUTE, abs=2)

        # retried every 30 minutes
        lab.clock.advance("29m")
        assert lab.queue("out")[0]["attempts"] == 1
        lab.clock.advance("2m")
        assert lab.queue("out")[0]["attempts"] == 2
        lab.clock.advance("1h")
        assert lab.queue("out")[0]["attempts"] == 4

        # a delay warning after 4 hours, once
        assert dsns(lab, "delayed") == []
        lab.clock.advance("2h27m")
        assert dsns(lab, "delayed") == []
        lab.clock.advance("2m")
        lab.assert_delivered("alice@sender.test", node="out", mailbox="alice", envelope_from="")
        [warning] = dsns(lab, "delayed")
        assert "Final-Recipient: rfc822; bob@example.org" in warning
        assert "Status: 4.4.3" in warning  # the lookup fails while the link is down
        assert "Subject: Delayed Mail (still being retried)" in warning
        sent = lab.wait_for("dsn.sent", node="out", action="delayed")
        assert sent.get("original_id") == queue_id
        assert sent.time - entry["received"] == pytest.approx(4 * HOUR, abs=2)

        # still retried; returned after 5 days with 4.4.7
        lab.clock.advance("1d15m")  # off the 30-minute grid: no attempt is on the edge
        assert len(dsns(lab, "delayed")) == 1
        assert lab.queue("out")[0]["attempts"] == 2 * 28 + 1
        lab.clock.advance("4d")
        bounce = lab.assert_bounced(
            recipient="bob@example.org", to="alice@sender.test", status="4.4.7", by="out"
        )
        assert bounce.time - entry["received"] == pytest.approx(5 * DAY, abs=2)
        [returned] = dsns(lab, "failed")
        assert "Status: 4.4.7" in returned
        assert "delivery time expired" in returned
        assert lab.queue("out") == []
        times = attempts(lab, queue_id)
        assert len(times) == 5 * 48 + 1  # every 30 minutes for 5 days, and the last one
        gaps = {round(b - a) for a, b in itertools.pairwise(times)}
        assert gaps == {1800}

        # the link comes back: nothing is left to deliver
        lab.link("uplink").up()
        lab.clock.advance("1h")
        lab.assert_not_delivered("bob@example.org")


def test_custom_retry_intervals(lab_factory: Callable[..., Lab]) -> None:
    topology = world()
    topology.nodes["out"].retry = topology.nodes["out"].retry.model_validate(
        {"intervals": ["10m", "1h"], "warn_after": None, "give_up_after": "3h"}
    )
    with lab_factory(topology) as lab:
        result = lab.send("out", mail_from="alice@sender.test", to="bob@example.org")
        lab.assert_queued(on="out")
        lab.clock.advance("4h")
        lab.assert_bounced(recipient="bob@example.org", status="4.4.7", by="out")
        received = lab.wait_for("queue.queued", node="out", id=result.queue_id).time
        times = [round(t - received) for t in attempts(lab, result.queue_id)]
        assert times == [0, 600, 600 + 3600, 600 + 7200, 10800]
        assert dsns(lab, "delayed") == []  # warn_after: null
        assert len(dsns(lab, "failed")) == 1


def test_delivered_on_a_retry_once_the_link_is_back(lab_factory: Callable[..., Lab]) -> None:
    with lab_factory(world()) as lab:
        lab.send("out", mail_from="alice@sender.test", to="bob@example.org")
        lab.assert_queued(on="out")
        lab.link("uplink").up()  # no on_up hook: the queue waits for its timer
        lab.settle()
        assert lab.mailbox("mx", "bob") == []
        lab.clock.advance("30m")
        message = lab.assert_delivered("bob@example.org", node="mx", mailbox="bob")
        assert message.envelope_from == "alice@sender.test"
        assert lab.queue("out") == []
        assert dsns(lab, "delayed") == [] and dsns(lab, "failed") == []


def test_flush_delivers_what_is_queued_now(lab_factory: Callable[..., Lab]) -> None:
    with lab_factory(world()) as lab:
        ids = [
            lab.send(
                "out", mail_from="alice@sender.test", to="bob@example.org", subject=f"n{n}"
            ).queue_id
            for n in range(3)
        ]
        lab.settle()
        assert sorted(q["id"] for q in lab.queue("out")) == sorted(ids)
        lab.link("uplink").up()
        assert lab.flush("out") == 3
        assert len(lab.mailbox("mx", "bob")) == 3
        assert lab.queue("out") == []
        # the retry timers of the flushed messages do not send them again
        lab.clock.advance("2h")
        assert len(lab.mailbox("mx", "bob")) == 3
        assert lab.flush("out") == 0


def test_the_queue_survives_a_restart_of_the_lab(
    lab_factory: Callable[..., Lab], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    with lab_factory(world(), state_dir=state) as lab:
        result = lab.send("out", mail_from="alice@sender.test", to="bob@example.org")
        lab.assert_queued(on="out")
    with lab_factory(world(), state_dir=state) as lab:
        loaded = lab.wait_for("queue.loaded", node="out")
        assert loaded.get("id") == result.queue_id
        assert loaded.get("recipients") == ["bob@example.org"]
        [entry] = lab.queue("out")
        assert entry["id"] == result.queue_id
        assert entry["attempts"] == 1
        lab.link("uplink").up()
        lab.flush("out")
        message = lab.assert_delivered("bob@example.org", node="mx", mailbox="bob")
        assert message.envelope_from == "alice@sender.test"
        assert lab.queue("out") == []


def test_nothing_is_lost_fifty_messages_across_the_dialup_link(
    lab_factory: Callable[..., Lab],
) -> None:
    with lab_factory(HOME_DIALUP) as lab:
        subjects = [f"message {n:02d}" for n in range(50)]
        for subject in subjects:
            result = lab.send(
                "pc1", mail_from="eddy@shofar.org.uk", to="paulmidgley@freeuk.com", subject=subject
            )
            assert result.accepted, result.to_json()
        lab.settle()
        assert len(lab.queue("hub")) == 50
        assert lab.mailbox("freeuk", "paulmidgley") == []

        lab.link("dialup").up()  # on_up: flush
        lab.settle()
        delivered = lab.mailbox("freeuk", "paulmidgley")
        assert sorted(m["Subject"] for m in delivered) == subjects  # each exactly once
        assert {m.envelope_from for m in delivered} == {"eddy@shofar.uklinux.net"}
        assert lab.queue("hub") == []
        assert lab.queue("isp") == []
        # nothing more turns up later
        lab.clock.advance("1h")
        assert len(lab.mailbox("freeuk", "paulmidgley")) == 50
