"""Faults with time and chance, DNS fault rules and dial schedules, end to end on both
backends (over real sockets: the SMTP sessions of pc1 and the hub, the lab DNS): a rate
limit counted in lab time, run-time edits through the Lab API and their undoing by
reset(), and a seeded chance that replays the same run and differs with another seed."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lab.harness import Lab
from lab.runtime.events import Event
from lab.topology import load, load_text

ROOT = Path(__file__).resolve().parents[2]
HOURLY = ROOT / "topologies" / "hourly-dialup.yaml"

TIMED = """
name: timed
seed: 5
networks:
  lan: {subnet: 192.168.10.0/24}
  internet: {subnet: 10.20.0.0/16}
links:
  dialup: {node: hub, network: internet, state: down, on_up: [flush]}
nodes:
  dns: {role: dns, hostname: ns.lab.test, networks: {internet: 10.20.0.53}}
  hub:
    role: mta
    hostname: hub.home.test
    networks: {lan: 192.168.10.1, internet: 10.20.9.201}
    local_domains: [home.test]
    users: [eddy]
    relay_from: [lan]
    smarthost: mail.isp.test
    retry: {intervals: [6h]}
    faults:
      - {on: rcpt, match: lucky@isp.test, reply: "451 4.3.0 the dice say later", chance: 0.5}
  isp:
    role: mta
    hostname: mail.isp.test
    networks: {internet: 10.20.0.25}
    local_domains: [isp.test]
    users: [paul, lucky]
  pc1: {role: client, networks: {lan: 192.168.10.11}, submit_to: hub}
"""

_ID = re.compile(r"\b[0-9A-F]{10}\b")
_KEPT = ("fault.triggered", "client.submitted", "queue.queued", "smtp.reply")
_VOLATILE = {"id", "queue_id", "key", "message_id", "session", "size", "next_attempt", "peer"}


def shape(events: list[Event]) -> dict[str, list[tuple[str, str]]]:
    """Each node's events of the kinds that tell the story, up to ids and timestamps."""
    found: dict[str, list[tuple[str, str]]] = {}
    for e in events:
        if e.kind not in _KEPT:
            continue
        data = {k: v for k, v in sorted(e.data.items()) if k not in _VOLATILE}
        found.setdefault(e.node, []).append((e.kind, _ID.sub("ID", repr(data))))
    return found


def dice(lab: Lab, throws: int = 12) -> list[bool]:
    """Send `throws` messages to lucky@: which were refused by the chance fault."""
    refused = []
    for n in range(throws):
        result = lab.send("pc1", mail_from="eddy@home.test", to="lucky@isp.test", subject=f"{n}")
        refused.append(not result.accepted)
    lab.settle()
    return refused


def test_the_same_seed_replays_the_same_run_and_another_seed_does_not(
    lab_factory: Callable[..., Lab], lab_backend: str
) -> None:
    first = lab_factory(TIMED)
    thrown = dice(first)
    assert first.seed == 5 and 2 <= sum(thrown) <= 10, thrown  # a coin, not a constant
    events = shape(first.events)
    # reset() starts the draws again: the same run once more on the same lab
    first.reset()
    assert dice(first) == thrown
    assert shape(first.events) == events
    if lab_backend == "inprocess":  # and on a new lab (on Docker, reset stands for it)
        again = lab_factory(TIMED)
        assert dice(again) == thrown
        assert shape(again.events) == events
    else:  # a Docker lab draws as an in-process lab of the same seed does
        with Lab.up(load_text(TIMED, "timed.yaml").model) as twin:
            assert dice(twin) == thrown
    other = lab_factory(TIMED, seed=6)
    assert other.seed == 6
    assert dice(other) != thrown


def test_a_rate_limit_counts_mail_per_client_in_lab_time(
    lab_factory: Callable[..., Lab], wire: Callable[..., Any]
) -> None:
    lab = lab_factory(TIMED)
    lab.add_fault(
        "hub", on="mail", rate={"messages": 2, "per": "1m", "reply": "421 4.7.0 slow down"}
    )
    session = wire(lab, "hub")
    assert session.reply()[0] == 220
    assert session.code("EHLO pc1.home.test") == 250
    codes = []
    for _ in range(3):
        codes.append(session.code("MAIL FROM:<eddy@home.test>"))
        session.code("RSET")
    assert codes == [250, 250, 421]
    triggered = [e for e in lab.events if e.kind == "fault.triggered"]
    assert [e.get("client") for e in triggered] == ["192.168.10.11"]
    lab.clock.advance("61s")
    again = wire(lab, "hub")
    assert again.reply()[0] == 220
    assert again.code("EHLO pc1.home.test") == 250
    assert again.code("MAIL FROM:<eddy@home.test>") == 250
    assert lab.clear_faults("hub") == 1
    assert again.code("RSET") == 250
    assert [again.code("MAIL FROM:<eddy@home.test>") for _ in range(3)] == [250, 503, 503]


def test_a_dns_fault_rule_defers_then_its_window_closes(lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory(TIMED)
    lab.add_dns_fault("*.isp.test", "servfail", until="40m")
    lab.send("pc1", mail_from="eddy@home.test", to="paul@isp.test")
    lab.clock.advance("30m")
    lab.link("dialup").up()  # the queue run meets the failing DNS: deferred, not bounced
    (entry,) = lab.queue("hub")
    assert "SERVFAIL" in str(entry), entry
    assert any(e.kind == "fault.triggered" and e.get("stage") == "dns" for e in lab.events)
    lab.clock.advance("11m")
    lab.flush("hub")
    lab.assert_delivered("paul@isp.test", node="isp")
    assert not [e for e in lab.events if e.kind == "dsn.sent"]
    # reset() forgets the rule and the fault added at run time
    lab.add_fault("hub", on="mail", reply="451 4.3.0 not now")
    lab.reset()
    lab.link("dialup").up()
    assert lab.send("pc1", mail_from="eddy@home.test", to="paul@isp.test").accepted
    lab.assert_delivered("paul@isp.test", node="isp")
    assert not [e for e in lab.events if e.kind == "fault.triggered"]


def test_a_schedule_set_at_run_time_dials_and_reset_brings_back_the_topologys(
    lab_factory: Callable[..., Lab],
) -> None:
    lab = lab_factory(HOURLY)
    lab.link("dialup").schedule(every="3h", **{"for": "10m"})
    lab.send("pc1", mail_from="eddy@home.test", to="paul@isp.test")
    lab.clock.advance("2h")
    lab.assert_not_delivered("paul@isp.test")  # the topology's hourly dial is replaced
    lab.clock.advance("71m")  # the dial at 3h, up for ten minutes
    lab.assert_delivered("paul@isp.test", node="isp")
    dials = [(e.kind, e.get("cause")) for e in lab.events if e.kind in ("link.up", "link.down")]
    assert dials == [("link.up", "schedule"), ("link.down", "schedule")]
    lab.link("dialup").unschedule()
    lab.clock.advance("6h")
    assert len([e for e in lab.events if e.kind == "link.up"]) == 1
    assert "schedule" not in lab.status()["links"]["dialup"]
    lab.reset()
    assert lab.status()["links"]["dialup"]["schedule"]["every"] == "1h"
    lab.clock.advance("1h")
    assert [e.get("cause") for e in lab.events if e.kind == "link.up"] == ["schedule"]


def test_a_day_of_hourly_dials_in_lab_time_order(lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory(HOURLY)
    for n in range(3):
        lab.send("pc1", mail_from="eddy@home.test", to="anna@isp.test", subject=f"{n}")
    lab.clock.advance("1d10m")  # the 24th dial hangs up at 24h5m
    links = [e for e in lab.events if e.kind in ("link.up", "link.down")]
    assert len(links) == 48 and all(e.get("cause") == "schedule" for e in links)
    # one lab-time order across hosts (up to the real time a host's event takes to arrive)
    times = [e.time for e in lab.events]
    assert all(later >= earlier - 0.5 for earlier, later in itertools.pairwise(times))
    epoch = links[0].time - 3600
    ups = [e.time for e in links if e.kind == "link.up"]
    assert [round((t - epoch) / 60) for t in ups] == [60 * k for k in range(1, 25)]
    assert len(lab.mailbox("isp", "anna")) == 3
    # every message landed during the first dial, none while the line was down
    landed = [e.time for e in lab.events if e.kind == "mailbox.delivered"]
    assert len(landed) == 3 and all(ups[0] <= t <= ups[0] + 300 for t in landed)


@pytest.mark.lab_backend("inprocess")
def test_a_first_dial_at_zero_dials_as_the_lab_comes_up(lab_factory: Callable[..., Lab]) -> None:
    topology = load(HOURLY).model
    link = topology.links["dialup"]
    assert link.schedule is not None
    first = link.schedule.model_copy(update={"first": 0.0})
    topology.links["dialup"] = link.model_copy(update={"schedule": first})
    lab = lab_factory(topology)
    lab.wait_for("link.up", timeout=5)
    assert lab.link("dialup").state == "up"
    lab.clock.advance("5m")
    assert lab.link("dialup").state == "down"
