"""Lab.reset() and reused labs: what a test leaves behind, the next one never sees (on
every --lab-backend backend)."""

from __future__ import annotations

from typing import Any

import pytest

from lab.harness import Lab
from lab.harness.pool import LabPool

TOPOLOGY = "topologies/home-dialup.yaml"
EDDY = "eddy@shofar.org.uk"
PAUL = "paulmidgley@freeuk.com"


def leave_a_mess(lab: Lab) -> None:
    """Mail delivered, mail queued, the link raised, the clock pushed, the DNS edited."""
    lab.link("dialup").up()
    lab.send("pc1", mail_from=EDDY, to=[PAUL])
    lab.assert_delivered(to=PAUL)
    lab.link("dialup").down()
    lab.send("pc1", mail_from=EDDY, to=[PAUL], subject="left behind")
    lab.assert_queued(on="hub", to=PAUL)
    lab.clock.advance("2h")
    lab.set_dns("freeuk.com", "MX", [[10, "elsewhere.example"]])


def assert_initial(lab: Lab, *, reset: bool = True) -> None:
    """None of `leave_a_mess` is left: no mail queued or delivered, the link down, the
    clock at real time, the DNS as declared, no event of it (and, when the lab was
    reset rather than brought up, the reset's event)."""
    assert lab.queue("hub") == []
    assert lab.mailbox("freeuk", "paulmidgley") == []
    assert lab.link("dialup").state == "down"
    assert abs(lab.status()["clock"]["offset"]) < 5
    answer = lab.backend.records.lookup("freeuk.com", "MX").values("MX")
    assert all("elsewhere" not in str(v) for v in answer) and answer
    kinds = [e.kind for e in lab.events]
    assert "mailbox.delivered" not in kinds and "queue.queued" not in kinds
    assert ("lab.reset" in kinds) == reset


# Two pairs of tests, one through the `lab` fixture, one through `lab_factory`: the first
# of each leaves a mess, the second sees none of it. Run together in one process (as
# they are without xdist), the second gets the first's lab, reset; alone (xdist, -k),
# a lab just brought up: clean either way.
LEFT: dict[str, Lab] = {}


@pytest.mark.topology("home-dialup")
def test_a_test_leaves_a_mess(lab: Any, lab_backend: str) -> None:
    leave_a_mess(lab)
    assert lab.queue("hub")
    LEFT[f"lab-{lab_backend}"] = lab


@pytest.mark.topology("home-dialup")
def test_the_next_test_sees_none_of_it(lab: Any, lab_backend: str) -> None:
    reused = LEFT.pop(f"lab-{lab_backend}", None)
    assert reused is None or reused is lab, "the lab was not reused"
    assert_initial(lab, reset=reused is not None)


def test_a_factory_test_leaves_a_mess(lab_factory: Any, lab_backend: str) -> None:
    lab = lab_factory(TOPOLOGY)
    leave_a_mess(lab)
    assert lab.queue("hub")
    LEFT[f"factory-{lab_backend}"] = lab


def test_the_next_factory_test_sees_none_of_it(lab_factory: Any, lab_backend: str) -> None:
    with lab_factory(TOPOLOGY) as lab:  # the end of the block gives it back, not down
        reused = LEFT.pop(f"factory-{lab_backend}", None)
        assert reused is None or reused is lab, "the lab was not reused"
        assert_initial(lab, reset=reused is not None)
    assert lab._running


@pytest.mark.fresh_lab
def test_a_fresh_lab_test_gets_a_new_lab(lab_factory: Any, lab_backend: str) -> None:
    lab = lab_factory(TOPOLOGY)
    assert lab._lender is None, "a fresh_lab test was lent a pooled lab"
    assert all(lab is not left for left in LEFT.values())
    assert_initial(lab, reset=False)


def test_a_reused_lab_is_reset_and_works_again(lab_backend: str) -> None:
    with LabPool() as pool:
        first = pool.acquire(TOPOLOGY, backend=lab_backend)
        leave_a_mess(first)
        pool.release(first)
        again = pool.acquire(TOPOLOGY, backend=lab_backend)
        assert again is first and pool.made == 1 and pool.reused == 1
        assert_initial(again)
        # and it works as a new lab does: the same message goes the same way
        again.send("pc1", mail_from=EDDY, to=[PAUL])
        again.assert_queued(on="hub", to=PAUL)
        again.link("dialup").up()
        again.assert_delivered(to=PAUL, envelope_from="eddy@shofar.uklinux.net")
        assert len(again.mailbox("freeuk", "paulmidgley")) == 1


def test_a_lab_whose_reset_fails_is_replaced(lab_backend: str) -> None:
    with LabPool() as pool:
        first = pool.acquire(TOPOLOGY, backend=lab_backend)
        pool.release(first)

        async def broken() -> None:
            raise RuntimeError("reset failed")

        first.backend.reset = broken  # type: ignore[method-assign]
        second = pool.acquire(TOPOLOGY, backend=lab_backend)
        assert second is not first and not first._running and pool.made == 2
        assert second.queue("hub") == []


def test_two_labs_of_one_topology_at_once_are_two(lab_backend: str) -> None:
    with LabPool() as pool:
        one = pool.acquire(TOPOLOGY, backend=lab_backend)
        two = pool.acquire(TOPOLOGY, backend=lab_backend)
        assert one is not two


def test_a_lab_whose_topology_was_edited_is_replaced(lab_backend: str) -> None:
    with LabPool() as pool:
        first = pool.acquire(TOPOLOGY, backend=lab_backend)
        first.topology.nodes["hub"].policy.max_size = 1000  # a reset would keep this
        pool.release(first)
        second = pool.acquire(TOPOLOGY, backend=lab_backend)
        assert second is not first and not first._running and pool.made == 2
        assert second.topology.nodes["hub"].policy.max_size != 1000
