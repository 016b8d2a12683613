"""Link and network impairments end to end, over real sockets, on every --lab-backend
backend: a rate-limited transfer's bytes and duration in the delivery event (lab time on
both: in process the virtual network paces it, in Docker the agents do, on a network of
built-in hosts), run-time changes and their errors, Lab.reset() putting the topology's
back, a hang-up at a lab time, and delay on a network. The kernel's qdisc, in real time,
for a network with a real MTA: test_a_real_mtas_line_is_the_kernels, Docker only."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from lab.errors import LabError
from lab.services.client import attachment_text
from lab.services.pacing import wire_bytes

ROOT = Path(__file__).resolve().parents[2]
QUEUE_LIFECYCLE = ROOT / "topologies" / "queue-lifecycle.yaml"
MODEM = ROOT / "topologies" / "modem-33k.yaml"
TO = "paulmidgley@freeuk.com"


def send(lab: Any, size: int) -> str:
    result = lab.send("pc1", mail_from="eddy@shofar.org.uk", to=TO, body=attachment_text(size))
    assert result.accepted, result
    return str(result.queue_id)


def hop(lab: Any, queue_id: str) -> Any:
    """The hub's delivery.result of the message, once it is delivered."""
    lab.assert_delivered(TO, node="freeuk", timeout=60)
    found = [e for e in lab.events if e.kind == "delivery.result" and e.get("id") == queue_id]
    delivered = [e for e in found if e.get("result") == "delivered"]
    assert delivered, found
    return delivered[-1]


def test_a_rate_limited_transfer_takes_its_time_on_the_line(lab_factory: Any) -> None:
    lab = lab_factory(QUEUE_LIFECYCLE)
    size = 100_000
    assert lab.impair("dialup", rate="33.6kbit") == {"rate": "33.6kbit"}
    queue_id = send(lab, size)
    lab.link("dialup").up()
    started = time.monotonic()
    lab.flush("hub")
    lab.clock.advance("2m")
    event = hop(lab, queue_id)
    real = time.monotonic() - started
    on_line = wire_bytes(event.get("bytes")) * 8 / 33_600
    assert event.get("bytes") >= size
    # the whole transaction: the message at 33.6 kbit/s, and the replies
    assert on_line * 0.95 <= event.get("duration") <= on_line * 1.2 + 1, (event, on_line)
    # lab time: the 25 s took a fraction of that in real time
    assert 24 <= event.get("duration") <= 27
    assert real < 15, real
    trace = lab.format_trace(queue_id)
    assert f"bytes={event.get('bytes')}" in trace and "duration=" in trace


def test_run_time_changes_their_errors_and_reset(lab_factory: Any) -> None:
    lab = lab_factory(MODEM)
    status = lab.status()["links"]["dialup"]
    assert status["impair"] == {"rate": "33.6kbit", "drop_after": 6000}
    assert lab.impair("dialup", rate="56kbit") == {"rate": "56kbit", "drop_after": 6000}
    assert lab.impair("dialup", clear=True, rate="2mbit") == {"rate": "2mbit"}
    with pytest.raises(LabError, match=r"impairment of dialup: rate: expected a rate such as"):
        lab.impair("dialup", rate="fast")
    with pytest.raises(LabError, match=r"internet: .*drop_after: .*unknown field|drop_after"):
        lab.impair("internet", drop_after="5KB")
    with pytest.raises(LabError, match=r"unknown link or network 'modem'"):
        lab.impair("modem", rate="33.6kbit")
    assert lab.status()["links"]["dialup"]["impair"] == {"rate": "2mbit"}
    # the 2 Mbit/s line: no hang-up any more, the message goes at once
    queue_id = send(lab, 12_000)
    lab.link("dialup").up()
    lab.clock.advance("1m")
    assert hop(lab, queue_id).get("duration") < 2
    lab.reset()
    assert lab.status()["links"]["dialup"]["impair"] == {"rate": "33.6kbit", "drop_after": 6000}
    # the topology's hang-up is armed again
    send(lab, 12_000)
    lab.link("dialup").up()
    lab.clock.advance("1m")
    hung_up = lab.wait_for("link.down", node="hub", cause="drop_after", timeout=30)
    assert hung_up.get("link") == "dialup"
    assert lab.link("dialup").state == "down"


def test_the_modem_hangs_up_at_a_lab_time(lab_factory: Any) -> None:
    lab = lab_factory(QUEUE_LIFECYCLE)
    docker = lab.backend.name == "docker"
    size = 20_000 if docker else 100_000
    at = 3 if docker else 10  # seconds after up: in the middle of the transfer
    lab.impair("dialup", rate="33.6kbit", drop_at=f"{at}s")
    queue_id = send(lab, size)
    lab.link("dialup").up()
    lab.flush("hub")
    lab.clock.advance("1m")
    lab.wait_for("link.down", node="hub", cause="drop_at", timeout=30)
    assert lab.link("dialup").state == "down"
    lab.assert_not_delivered(TO)
    assert [e["id"] for e in lab.queue("hub")] == [queue_id]
    with pytest.raises(LabError, match="drop_at 1s is past"):
        lab.impair("dialup", drop_at="1s")
    lab.link("dialup").up()
    lab.flush("hub")
    lab.clock.advance("2m")
    event = hop(lab, queue_id)
    [message] = lab.mailbox("freeuk", "paulmidgley")
    assert attachment_text(size).replace("\n", "\r\n") in message.raw.replace("\r\n", "\n").replace(
        "\n", "\r\n"
    )
    assert event.get("bytes") >= size


def test_delay_on_a_network(lab_factory: Any) -> None:
    lab = lab_factory(QUEUE_LIFECYCLE)
    # in Docker: netem, or where the kernel has none, the agents hold the bytes
    lab.impair("internet", delay="150ms", jitter="10ms")
    assert lab.status()["links"]["dialup"]["impair"] == {}
    assert lab.backend.impairs["internet"] == {"delay": "150ms", "jitter": "10ms"}
    queue_id = send(lab, 2_000)
    lab.link("dialup").up()
    lab.flush("hub")
    lab.clock.advance("1m")
    # a pipelined transaction: MAIL, RCPT and DATA in one round trip, then the message
    # and its reply in another; each round trip is 300 ms (+- jitter) on the line
    assert 0.5 <= hop(lab, queue_id).get("duration") <= 1.5


@pytest.mark.lab_backend("docker")
def test_a_real_mtas_line_is_the_kernels(lab_factory: Any) -> None:
    """Where a real daemon has connections of its own (Postfix on the hub), the rate is a
    qdisc on the lab's segments (tbf, or netem where the kernel has it), in real time:
    16 KB at 33.6 kbit/s take about 4 s, which an unimpaired line does in milliseconds."""
    lab = lab_factory(ROOT / "topologies" / "home-dialup-postfix.yaml")
    assert lab.impair("dialup", rate="33.6kbit") == {"rate": "33.6kbit"}
    size = 16_000
    sent = lab.send(
        "pc1", mail_from="eddy@shofar.org.uk", to=TO, body=attachment_text(size), subject="slow"
    )
    assert sent.accepted, sent.to_json()
    lab.assert_queued("hub", to=TO)
    started = time.monotonic()
    lab.link("dialup").up()
    lab.assert_delivered(TO, node="freeuk", mailbox="paulmidgley", timeout=60)
    real = time.monotonic() - started
    on_line = wire_bytes(size) * 8 / 33_600
    assert real >= on_line * 0.8, (real, on_line)
    shown = lab.run(lab.backend.qdiscs("hub", "internet"))
    assert ("netem" if lab.backend.netem else "tbf") in shown, shown
