"""The MTA queue's files (lab.services.mta.queue.Queue), with no lab around them: what is
put is whole after a restart, every state change is saved, removals and half-written
leftovers, and when each file and its directory are fsync'd.

What the running MTA does with queued mail over time is in test_queued_mail.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lab.services.mta.queue import (
    DELIVERED,
    PENDING,
    Attempt,
    Queue,
    QueuedMessage,
    Recipient,
    new_id,
)

CONTENT = b"Received: from pc1 ([192.168.10.11])\r\nSubject: hi\r\n\r\nbody \xe2\x9c\x89\r\n"


def message(
    recipients: tuple[str, ...] = ("bob@example.org",),
    sender: str = "a@b.test",
    received: float = 1_000.0,
) -> QueuedMessage:
    return QueuedMessage(
        new_id(),
        sender,
        [Recipient(r, r) for r in recipients],
        received,
        client="192.168.10.11",
        helo="pc1",
        size=len(CONTENT),
    )


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_put_then_load_in_a_new_instance(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q")
    first = message(("bob@example.org", "carol@example.org"))
    second = message(sender="", received=2_000.0)
    queue.put(CONTENT, first)
    queue.put(b"Subject: two\r\n\r\n.\r\n", second)
    assert len(queue) == 2

    again = Queue(tmp_path / "q")
    loaded = {m.id: m for m in again.load()}
    assert set(loaded) == {first.id, second.id}
    assert loaded[first.id] == first
    assert loaded[second.id].envelope_from == ""
    assert again.content(first.id) == CONTENT
    assert again.content(second.id) == b"Subject: two\r\n\r\n.\r\n"
    assert [m.id for m in again.list()] == [first.id, second.id]  # in order of arrival


def test_state_changes_survive_a_restart(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q")
    qm = message(("bob@example.org", "carol@example.org"))
    queue.put(CONTENT, qm)
    qm.attempts.append(
        Attempt(
            1_100.0,
            "mx1.example.org[10.40.1.1]",
            "mixed",
            "250 2.0.0 OK",
            ["bob@example.org", "carol@example.org"],
        )
    )
    qm.recipients[0].state = DELIVERED
    qm.recipients[1].reply = "451 4.2.1 mailbox busy"
    qm.next_attempt = 2_900.0
    qm.warned = True
    queue.save(qm)
    queue.disk.wait()  # state updates are written by the disk thread

    loaded = Queue(tmp_path / "q").load()
    assert len(loaded) == 1
    back = loaded[0]
    assert back == qm
    assert back.attempts == [
        Attempt(
            1_100.0,
            "mx1.example.org[10.40.1.1]",
            "mixed",
            "250 2.0.0 OK",
            ["bob@example.org", "carol@example.org"],
        )
    ]
    assert [r.state for r in back.recipients] == [DELIVERED, PENDING]
    assert [r.address for r in back.pending] == ["carol@example.org"]
    assert back.summary()["attempts"] == 1
    assert back.summary()["last_reply"] == "250 2.0.0 OK"
    assert back.next_attempt == 2_900.0 and back.warned


def test_remove_forgets_the_message_on_disk_too(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q")
    keep, gone = message(), message()
    queue.put(CONTENT, keep)
    queue.put(CONTENT, gone)
    queue.save(gone)
    queue.remove(gone.id)
    assert [m.id for m in queue.list()] == [keep.id]
    queue.close()  # the files go in the disk thread; close waits for it
    assert not [name for name in files(tmp_path / "q") if gone.id in name]
    assert [m.id for m in Queue(tmp_path / "q").load()] == [keep.id]


def test_a_removal_the_disk_never_saw_sends_the_message_again(tmp_path: Path) -> None:
    """Only the .msg file left (a crash before the worker removed it): the message comes
    back, delivered twice rather than lost; a lone state file is dropped."""
    queue = Queue(tmp_path / "q")
    again, half = message(), message()
    queue.put(CONTENT, again)
    queue.put(CONTENT, half)
    queue.save(half)
    queue.disk.wait()
    (tmp_path / "q" / f"{half.id}.msg").unlink()  # the worker got as far as the .msg
    assert sorted(m.id for m in Queue(tmp_path / "q").load()) == [again.id]
    assert not [name for name in files(tmp_path / "q") if half.id in name]


def test_half_written_leftovers_are_dropped_on_load(tmp_path: Path) -> None:
    directory = tmp_path / "q"
    queue = Queue(directory)
    whole, cut = message(), message()
    queue.put(CONTENT, whole)
    queue.put(CONTENT, cut)
    # a crash while writing: a temporary file never renamed into place...
    (directory / f".{new_id()}.json.tmp").write_bytes(b'{"id": "half')
    (directory / f".{whole.id}.json.tmp").write_bytes(b"{")
    # ... and a message file cut short (it was never acknowledged with 250)
    cut_files = [
        p for p in directory.iterdir() if cut.id in p.name and CONTENT[:20] in p.read_bytes()
    ]
    assert len(cut_files) == 1
    data = cut_files[0].read_bytes()
    cut_files[0].write_bytes(data[: len(data) - 7])

    again = Queue(directory)
    loaded = again.load()
    assert [m.id for m in loaded] == [whole.id]
    assert again.content(whole.id) == CONTENT
    assert not [name for name in files(directory) if name.endswith(".tmp")]
    assert not [name for name in files(directory) if cut.id in name]


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths fsync'd from now on, in order (the fsyncs still happen)."""
    paths: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return paths


def test_put_fsyncs_the_file_and_then_the_directory(tmp_path: Path, synced: list[str]) -> None:
    directory = tmp_path / "q"
    queue = Queue(directory)
    qm = message()
    queue.put(CONTENT, qm)
    assert len(synced) >= 2, synced
    message_files = [s for s in synced if qm.id in Path(s).name]
    assert message_files, f"the message file was not fsync'd: {synced}"
    assert synced[-1] == str(directory.resolve()), "the directory must be fsync'd last"
    assert synced.index(message_files[0]) < len(synced) - 1

    synced.clear()
    qm.attempts.append(Attempt(1.0, "x", "deferred", "451 4.4.1 no", ["bob@example.org"]))
    queue.save(qm)
    queue.disk.wait()
    assert any(qm.id in Path(s).name or ".tmp" in s for s in synced), synced
    assert synced[-1] == str(directory.resolve())


def test_a_queue_that_is_not_durable_does_not_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", calls.append)
    queue = Queue(tmp_path / "q", durable=False)
    qm = message()
    queue.put(CONTENT, qm)
    queue.save(qm)
    queue.close()
    assert calls == []
    assert [m.id for m in Queue(tmp_path / "q").load()] == [qm.id]


def test_a_state_update_is_taken_when_saved_and_written_later(tmp_path: Path) -> None:
    """`save` snapshots the state at once; what the message becomes afterwards does not
    leak into the file the disk thread writes."""
    queue = Queue(tmp_path / "q")
    qm = message()
    queue.put(CONTENT, qm)
    qm.next_attempt = 1_800.0
    queue.save(qm)
    qm.next_attempt = 9_999.0  # changed after save, not saved again
    queue.close()
    assert Queue(tmp_path / "q").load()[0].next_attempt == 1_800.0


def test_put_async_is_durable_when_it_returns(tmp_path: Path, synced: list[str]) -> None:
    """Many messages at once: each file is fsync'd, the directory at least once after the
    last file of each group, and every put returns only after its group's directory
    fsync (group commit)."""
    import asyncio

    directory = tmp_path / "q"
    queue = Queue(directory)
    order = synced
    messages = [message() for _ in range(40)]

    async def put_all() -> dict[str, int]:
        returned: dict[str, int] = {}

        async def one(qm: QueuedMessage) -> None:
            await queue.put_async(CONTENT, qm)
            returned[qm.id] = len(order)  # how many fsyncs had happened when it returned
            assert qm.id in queue.messages

        await asyncio.gather(*(one(qm) for qm in messages))
        return returned

    returned = asyncio.run(put_all())
    queue.close()
    dir_syncs = [i for i, name in enumerate(order) if name == str(directory.resolve())]
    assert len(dir_syncs) < len(messages), "the directory was fsync'd once per message"
    for qm in messages:
        file_sync = next(i for i, name in enumerate(order) if qm.id in Path(name).name)
        assert any(file_sync < i < returned[qm.id] for i in dir_syncs), (
            f"{qm.id} returned before a directory fsync that covers it: {order}"
        )
    assert sorted(m.id for m in Queue(directory).load()) == sorted(m.id for m in messages)


@pytest.mark.parametrize("where", ["thread", "disk process"])
def test_state_changes_asked_while_one_is_written_go_as_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A link that flaps defers the same messages again and again: one state write per
    message is on its way at a time, the newest state waiting replaces the others, and
    what is on disk in the end is the newest."""
    import asyncio
    from functools import partial

    import lab.services.mta.queue as queue_module
    from lab.services.diskio import DiskWorker
    from lab.services.diskproc import DiskProcess

    process = DiskProcess() if where == "disk process" else None
    sent: list[str] = []
    real_later = DiskWorker.later

    def later(self: DiskWorker, work: partial[None], *args: object, **kwargs: object) -> None:
        if work.func is queue_module.replace_file:
            sent.append(work.args[0])
        real_later(self, work, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(DiskWorker, "later", later)
    queue = Queue(tmp_path / "q", disk=DiskWorker("q", process))
    qm = message()

    async def flap() -> None:
        await queue.put_async(CONTENT, qm)
        for i in range(100):
            qm.next_attempt = float(i)
            queue.save(qm)
            if i % 10 == 9:
                await asyncio.sleep(0.001)
        while queue._writing:  # the last write's end heard
            await asyncio.sleep(0.001)

    asyncio.run(flap())
    queue.close()
    if process is not None:
        process.stop()
    assert 1 <= len(sent) <= 25, len(sent)  # at most two a burst, not one per change (100)
    assert Queue(tmp_path / "q").load()[0].next_attempt == 99.0
