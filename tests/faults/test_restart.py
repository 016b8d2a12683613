"""A lab started again over the state an earlier one left: every host listens before any
queue run begins, so what was due goes out at once instead of waiting for a retry."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from lab.harness import Lab
from lab.services.mta.queue import Queue, QueuedMessage, Recipient, new_id
from lab.topology import load_text

# `out` relays through mx (its smarthost) and comes before it in the file, with other
# servers between them: hosts start in that order, and each host's listeners take a turn
# of the event loop or, in Docker, a while of their own.
RELAYS = [
    f"  relay{n}: {{role: mta, hostname: relay{n}.example.net, networks: {{net: 10.51.2.{n + 1}}}}}"
    for n in range(8)
]
WORLD = "\n".join(
    [
        "name: restart-order",
        "networks:",
        "  net: {subnet: 10.51.0.0/16}",
        "dns:",
        "  zones:",
        '    example.org: {"@": {MX: "10 mx.example.org"}}',
        "nodes:",
        "  dns: {role: dns, hostname: ns.restart.test, networks: {net: 10.51.0.53}}",
        "  out: {role: mta, hostname: out.sender.test, networks: {net: 10.51.0.10},",
        "        local_domains: [sender.test], users: [alice], relay_from: [10.51.0.0/24],",
        "        smarthost: mx}",
        *RELAYS,
        "  mx: {role: mta, hostname: mx.example.org, networks: {net: 10.51.1.1},",
        "       local_domains: [example.org], users: [bob]}",
    ]
)


def left_by_a_crash(state: Path, count: int) -> list[str]:
    """`out`'s queue as a crash leaves it: messages accepted (said 250 for) and not yet
    tried, so due at once when the queue is read again."""
    queue = Queue(state / "nodes" / "out" / "queue")
    ids = []
    for n in range(count):
        message = QueuedMessage(
            new_id(),
            "alice@sender.test",
            [Recipient("bob@example.org", "bob@example.org")],
            time.time(),
            client="10.51.0.10",
        )
        content = f"Message-ID: <left-{n}@sender.test>\r\nSubject: {n}\r\n\r\nleft\r\n"
        queue.put(content.encode(), message)
        ids.append(message.id)
    queue.close()
    return ids


def test_what_a_crash_left_due_goes_out_once_every_host_listens(
    lab_factory: Callable[..., Lab], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    ids = left_by_a_crash(state, 3)
    lab = lab_factory(load_text(WORLD, "restart.yaml").model, state_dir=state)
    loaded = {lab.wait_for("queue.loaded", node="out", id=i).get("id") for i in ids}
    assert loaded == set(ids)
    for n in range(3):  # at once: not deferred by a next hop that was not listening yet
        lab.wait_for("mailbox.delivered", node="mx", message_id=f"<left-{n}@sender.test>")
    lab.settle()
    deferred = [
        e for e in lab.events if e.kind == "delivery.result" and e.get("result") != "delivered"
    ]
    assert deferred == []
    assert lab.queue("out") == []
    assert len(lab.mailbox("mx", "bob")) == 3
