"""A host's disk thread (lab.services.diskio.DiskWorker): order, errors, shutdown."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lab.services.diskio import DiskWorker


def test_commits_and_later_work_run_in_order_off_the_loop_thread(tmp_path: Path) -> None:
    disk = DiskWorker("t")
    seen: list[tuple[str, str]] = []

    def work(name: str) -> str:
        seen.append((name, threading.current_thread().name))
        return name

    async def run() -> list[str]:
        first = asyncio.ensure_future(disk.commit(lambda: work("a"), tmp_path))
        await asyncio.sleep(0)  # the task has handed its work over
        disk.later(lambda: work("b"))
        second = asyncio.ensure_future(disk.commit(lambda: work("c"), None))
        return list(await asyncio.gather(first, second))

    assert asyncio.run(run()) == ["a", "c"]
    disk.close()
    names = [name for name, _ in seen]
    assert names[0] == "a" and sorted(names) == ["a", "b", "c"]  # b after what came before
    assert {thread for _, thread in seen} == {"disk:t"}


def while_busy(queue_up: Callable[[DiskWorker, list[str]], list[Any]]) -> list[str]:
    """What the disk thread did when work was queued up (by `queue_up`, which returns
    the futures to await) while it was busy with a first write: one group."""
    disk = DiskWorker("t")
    seen: list[str] = []
    gate, entered = threading.Event(), threading.Event()

    def held() -> None:
        entered.set()
        gate.wait()
        seen.append("a")

    async def run() -> None:
        first = asyncio.ensure_future(disk.commit(held, None))
        await asyncio.to_thread(entered.wait)  # the thread is busy with it
        waited = queue_up(disk, seen)
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(first, *waited)

    asyncio.run(run())
    disk.close()
    return seen


def test_work_nobody_waits_for_runs_after_the_writes_of_its_group() -> None:
    """A removal queued before a write does not hold up that write's 250."""

    def queue_up(disk: DiskWorker, seen: list[str]) -> list[Any]:
        disk.later(lambda: seen.append("b"))
        return [asyncio.ensure_future(disk.commit(lambda: seen.append("c"), None))]

    assert while_busy(queue_up) == ["a", "c", "b"]


def test_a_fence_keeps_its_place_among_the_writes_of_its_group() -> None:
    """A queue emptied by a reset while the disk is busy: the message accepted after it,
    in the same group, is written after the wipe, not wiped with the old ones."""

    def queue_up(disk: DiskWorker, seen: list[str]) -> list[Any]:
        disk.later(lambda: seen.append("removal"))
        disk.later(lambda: seen.append("wipe"), fence=True)
        written = asyncio.ensure_future(disk.commit(lambda: seen.append("new message"), None))
        disk.later(lambda: seen.append("state"))
        return [written]

    assert while_busy(queue_up) == ["a", "removal", "wipe", "new message", "state"]


def test_a_failed_write_reaches_whoever_waits_and_the_thread_goes_on(tmp_path: Path) -> None:
    disk = DiskWorker("t")

    def fail() -> None:
        raise OSError(28, "No space left on device")

    async def run() -> str:
        with pytest.raises(OSError, match="No space left"):
            await disk.commit(fail, tmp_path)
        return await disk.commit(lambda: "next", tmp_path)

    assert asyncio.run(run()) == "next"
    disk.close()


def test_a_directory_that_cannot_be_synced_fails_the_writes_of_its_group(tmp_path: Path) -> None:
    disk = DiskWorker("t")

    async def run() -> None:
        with pytest.raises(OSError):
            await disk.commit(lambda: None, tmp_path / "missing")

    asyncio.run(run())
    disk.close()


def test_wait_and_close_finish_what_was_asked(tmp_path: Path) -> None:
    disk = DiskWorker("t")
    done: list[int] = []
    for i in range(50):
        disk.later(lambda i=i: done.append(i))
    disk.wait()
    assert done == list(range(50))
    disk.later(lambda: done.append(50))
    disk.close()
    assert done[-1] == 50
    disk.later(lambda: done.append(51))  # after close: done at once, in the caller
    assert done[-1] == 51
