"""The event bus: order, waiting, and the JSON-lines log a lab with a state directory keeps."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from lab.runtime.events import Event, EventBus


def test_the_log_has_a_line_per_event_as_to_json_has_it(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    bus = EventBus(lambda: 12.5, log)

    async def run() -> list[Event]:
        first = bus.emit("hub", "smtp.command", command="MAIL", arg="FROM:<a@b>", session=3)
        second = bus.emit("isp", "queue.queued", id="ABC", to=["x@y"], path=tmp_path)
        third = bus.emit("hub", "smtp.reply", reply='250 2.0.0 "ok"\n\u00e9', session=3)
        await asyncio.sleep(0.2)  # the bus writes a burst a moment later
        return [first, second, third]

    events = asyncio.run(run())
    lines = log.read_bytes().splitlines()
    assert [json.loads(line) for line in lines] == [
        json.loads(json.dumps(e.to_json(), default=str)) for e in events
    ]
    assert json.loads(lines[1])["data"]["path"] == str(tmp_path)  # (not JSON: its str)
    assert [Event.from_json(json.loads(line)).seq for line in lines] == [1, 2, 3]
    bus.close()


def test_a_reset_starts_the_log_again_and_numbers_go_on(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    bus = EventBus(lambda: 0.0, log)
    bus.emit("hub", "link.up")
    bus.flush()
    bus.reset()
    later = bus.emit("hub", "link.down")
    bus.close()
    assert [json.loads(line)["seq"] for line in log.read_bytes().splitlines()] == [later.seq]
    assert later.seq == 2


def test_a_waiter_hears_the_first_matching_event(tmp_path: Path) -> None:
    bus = EventBus(lambda: 0.0)

    async def run() -> Event:
        waiting = asyncio.ensure_future(bus.wait_for(kind="queue.*", node="isp", timeout=1))
        await asyncio.sleep(0)
        bus.emit("hub", "queue.queued", id="A")
        bus.emit("isp", "smtp.reply", reply="250")
        bus.emit("isp", "queue.queued", id="B")
        return await waiting

    assert asyncio.run(run()).get("id") == "B"


def test_the_history_reads_as_events_and_finds_after_a_number() -> None:
    bus = EventBus(lambda: 1.0)
    for n in range(10):
        bus.emit("hub" if n % 2 else "isp", "queue.queued", id=str(n), to=["a@b"])
    history = bus.events
    assert len(history) == 10 and history[0].seq == 1 and history[-1].get("id") == "9"
    assert [e.seq for e in history[-3:]] == [8, 9, 10]
    assert [e.get("id") for e in bus.find(node="hub", since=6)] == ["7", "9"]
    assert [e.seq for e in bus.find(kind="queue.*", to="a@b", since=8)] == [9, 10]
    assert bus.find(since=10) == [] and len(bus.find()) == 10
    assert list(history) == bus.find()  # equal Events, as the emit returned them
    bus.reset()
    bus.emit("hub", "link.up")
    assert [e.seq for e in bus.events] == [11] and bus.find(since=5)[0].seq == 11


def test_the_history_is_left_alone_by_the_garbage_collector() -> None:
    """What a lab keeps of each event are tuples of strings and numbers, which the
    collector stops tracking: a long-running lab's full collections do not grow with
    its traffic."""
    import gc

    bus = EventBus(lambda: 1.0)
    for n in range(1000):
        bus.emit("hub", "smtp.command", command="MAIL", arg=f"FROM:<{n}@b>", session=n)
    gc.collect()
    history = bus.events
    assert not any(gc.is_tracked(head) for head in history._heads)
    assert not any(gc.is_tracked(data) for data in history._data)
