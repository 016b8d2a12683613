"""The backend contract, on every backend of --lab-backend: the same calls, the same answers.

Both backends run the same common code (lab.backends.base.LabBackend) over a handle per
host; these tests hold them to it where they used to differ: which fetch jobs hear of a
link change, what an unknown node or a missing service says, and the shapes of what
the contract returns.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.backends.base import Backend, LabBackend, backend_class
from lab.harness import Lab
from lab.topology import load
from lab.topology.model import FetchJob, Topology

ROOT = Path(__file__).resolve().parents[2]
HOME_DIALUP = ROOT / "topologies" / "home-dialup.yaml"
POLL = 600.0  # seconds between two polls of every fetch job here
OTHER = "lug"  # a host with a fetch job and no link of its own


def two_fetching_hosts() -> Topology:
    """home-dialup, with the Freeserve box fetched by lug (always online) instead of by
    the hub (behind the dial-up link), every job polling each POLL seconds."""
    topology = load(HOME_DIALUP).model
    hub = topology.nodes["hub"]
    freeserve = next(job for job in hub.fetch if job.server == "pop.freeserve.net")
    hub.fetch = [job.model_copy(update={"poll": POLL}) for job in hub.fetch if job is not freeserve]
    topology.nodes[OTHER].fetch = [
        FetchJob.model_validate(
            {**freeserve.model_dump(), "to": "owner-nelug", "poll": POLL, "multidrop": None}
        )
    ]
    return topology


@pytest.fixture
def lab(lab_backend: str, tmp_path: Path) -> Iterator[Lab]:
    with Lab.up(two_fetching_hosts(), backend=lab_backend, state_dir=tmp_path / "lab") as lab:
        yield lab


def polls(lab: Lab, node: str, since: int = 0) -> list[float]:
    """Lab times of the fetch polls `node` started after event `since`."""
    return [
        e.time for e in lab.events if e.seq > since and e.kind == "fetch.start" and e.node == node
    ]


def test_a_link_change_is_heard_by_the_fetch_jobs_of_its_host_only(lab: Lab) -> None:
    start = lab.clock.now()
    lab.clock.advance(POLL / 2)
    assert polls(lab, "hub") == []  # its link is down: it does not poll
    assert polls(lab, OTHER) == []

    mark = lab.events[-1].seq
    lab.link("dialup").up()
    after_up = [e for e in lab.events if e.seq > mark]
    # the on_up hooks ran, in order, on the link's host
    hooks = [e.get("hook") for e in after_up if e.kind == "link.hook"]
    assert hooks == ["flush", "fetch"]
    assert [e.node for e in after_up if e.kind == "fetch.start"] == ["hub"]
    up_at = next(e.time for e in after_up if e.kind == "link.up")

    # the other host's schedule is its own: it polls POLL after the lab started, not
    # POLL after somebody else's link came up
    lab.clock.advance(POLL / 2 + 5)
    other = polls(lab, OTHER)
    assert len(other) == 1 and start + POLL - 5 <= other[0] <= start + POLL + 5, other
    # the hub heard that its link is up: it polls POLL after that
    assert polls(lab, "hub", since=mark) == [
        next(e.time for e in after_up if e.kind == "fetch.start")
    ]
    lab.clock.advance(POLL / 2)
    hub = polls(lab, "hub", since=mark)[1:]
    assert len(hub) == 1 and up_at + POLL - 5 <= hub[0] <= up_at + POLL + 5, (hub, up_at)

    # down: the hub stops polling; the other host goes on
    mark = lab.events[-1].seq
    lab.link("dialup").down()
    lab.clock.advance(2 * POLL + 5)
    assert polls(lab, "hub", since=mark) == []
    assert len(polls(lab, OTHER, since=mark)) == 2


def test_a_link_set_to_its_state_is_unchanged_and_runs_no_hook(lab: Lab) -> None:
    mark = lab.events[-1].seq
    lab.link("dialup").down()
    after = [e for e in lab.events if e.seq > mark]
    assert [e.kind for e in after] == ["link.unchanged"]
    assert after[0].get("state") == "down"
    assert lab.link("dialup").state == "down"
    lab.link("dialup").up()
    assert lab.link("dialup").state == "up"
    assert lab.status()["links"]["dialup"] == {
        "state": "up",
        "node": "hub",
        "network": "internet",
        "impair": {},
    }


def test_what_a_node_does_not_run_is_refused_alike(lab: Lab) -> None:
    from lab.errors import LabError

    with pytest.raises(LabError, match=r"node 'pc1' runs no MTA \(smtp service\)"):
        lab.flush("pc1")
    with pytest.raises(LabError, match=r"node 'pc1' runs no MTA \(smtp service\)"):
        lab.queue("pc1", settle=False)
    with pytest.raises(LabError, match=r"node 'freeuk' has no fetch jobs"):
        lab.fetch("freeuk")
    with pytest.raises(LabError, match=r"unknown node 'nowhere'; expected one of: dns, hub"):
        lab.mailbox("nowhere", "eddy")
    with pytest.raises(LabError, match=r"node 'pc1' runs no MTA"):
        lab.add_fault("pc1", on="rcpt", reply="451 4.3.0 try later")


def test_the_answers_have_one_shape(lab: Lab) -> None:
    sent = lab.send("pc1", mail_from="eddy@shofar.org.uk", to=["paulmidgley@freeuk.com"])
    assert sent.accepted and sent.helo_reply is not None and sent.greeting is not None
    assert sent.to_json()["greeting"].startswith("220 ")
    entry = lab.assert_queued(on="hub")
    assert set(entry) == {
        "id",
        "envelope_from",
        "recipients",
        "attempts",
        "received",
        "next_attempt",
        "last_reply",
    }
    assert entry["id"] == sent.queue_id and entry["recipients"] == ["paulmidgley@freeuk.com"]
    captured = lab.capture_queued("freeuk")
    lab.link("dialup").up()
    message = lab.assert_delivered("paulmidgley@freeuk.com", node="freeuk")
    assert message.envelope_from == "eddy@shofar.uklinux.net"
    assert isinstance(captured, dict)
    status = lab.status()
    assert status["backend"] == lab.backend.name
    assert set(status) >= {"name", "nodes", "links", "operator", "clock", "state_dir", "ca"}
    assert set(status["nodes"]["hub"]) >= {"hostname", "services", "addresses", "endpoints"}
    assert status["nodes"]["hub"]["services"] == ["fetch", "smtp"]
    assert status["operator"]["node"] == "pc1"
    assert status["clock"]["offset"] == 0.0
    lab.set_dns("freeuk.com", "MX", [(10, "lug.org.uk")])
    assert [e.get("values") for e in lab.events if e.kind == "dns.changed"] == [
        ["(10, 'lug.org.uk')"]
    ]


def test_every_contract_method_is_a_coroutine_on_every_backend(lab_backend: str) -> None:
    cls = backend_class(lab_backend)
    assert issubclass(cls, LabBackend)
    contract = [
        name
        for name, member in vars(Backend).items()
        if callable(member) and not name.startswith("_")
    ]
    assert len(contract) >= 19
    for name in contract:
        assert inspect.iscoroutinefunction(getattr(cls, name)), f"{cls.__name__}.{name}"
