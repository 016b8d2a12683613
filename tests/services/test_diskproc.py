"""The lab's disk process (lab.services.diskproc): the hosts' disk work runs there, in
order, durable before it is answered; nothing goes quietly when the child ends."""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from lab.services import diskjobs
from lab.services.diskio import DiskWorker
from lab.services.diskproc import DiskProcess, DiskProcessGone

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def proc() -> Iterator[DiskProcess]:
    process = DiskProcess()
    process.start()
    yield process
    process.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "\nState:\tZ" not in status.read_text()


def test_work_runs_in_the_child_and_its_result_comes_back(
    proc: DiskProcess, tmp_path: Path
) -> None:
    disk = DiskWorker("t", proc)

    async def run() -> tuple[int, str]:
        pid = await disk.commit(os.getpid, None)
        box = str(tmp_path / "mail" / "eddy")
        key = await disk.commit(
            partial(diskjobs.maildir_deliver, box, b"Subject: hi\r\n\r\nbody\r\n", True, None),
            f"{box}/new",
        )
        return pid, key

    pid, key = asyncio.run(run())
    disk.close()
    assert pid == proc.pid != os.getpid()
    delivered = tmp_path / "mail" / "eddy" / "new" / key
    assert delivered.read_bytes() == b"Subject: hi\r\n\r\nbody\r\n"
    assert f"P{proc.pid}." in key  # named by the process that wrote it


def test_a_fence_keeps_its_place_and_removals_follow_their_writes(
    proc: DiskProcess, tmp_path: Path
) -> None:
    """Written, then the directory emptied (a reset), then a new message: only the new
    one is left; a removal asked for after a write removes what the write made."""
    disk = DiskWorker("t", proc)
    queue = tmp_path / "queue"

    async def run() -> None:
        first = asyncio.ensure_future(
            disk.commit(partial(diskjobs.create_file, f"{queue}/A.msg", b"a", True), queue)
        )
        await asyncio.sleep(0)
        disk.later(partial(diskjobs.create_file, f"{queue}/B.json", b"b", True), queue)
        disk.later(partial(diskjobs.empty_directory, str(queue)), queue, fence=True)
        second = disk.commit(partial(diskjobs.create_file, f"{queue}/C.msg", b"c", True), queue)
        await asyncio.gather(first, second)
        await disk.commit(partial(diskjobs.create_file, f"{queue}/D.msg", b"d", True), queue)
        disk.later(partial(diskjobs.unlink, f"{queue}/D.msg"), queue)

    asyncio.run(run())
    disk.close()  # waits for the work asked so far, the removal included
    assert sorted(p.name for p in queue.iterdir()) == ["C.msg"]


def test_a_failed_write_fails_its_commit_and_the_rest_go_on(
    proc: DiskProcess, tmp_path: Path
) -> None:
    disk = DiskWorker("t", proc)
    (tmp_path / "taken.msg").write_bytes(b"old")

    async def run() -> BaseException | None:
        failed = disk.commit(
            partial(diskjobs.create_file, str(tmp_path / "taken.msg"), b"new", True), tmp_path
        )
        fine = disk.commit(
            partial(diskjobs.create_file, str(tmp_path / "free.msg"), b"ok", True), tmp_path
        )
        results = await asyncio.gather(failed, fine, return_exceptions=True)
        return results[0] if isinstance(results[0], BaseException) else None

    error = asyncio.run(run())
    disk.close()
    assert isinstance(error, FileExistsError)
    assert (tmp_path / "taken.msg").read_bytes() == b"old"  # never overwritten
    assert (tmp_path / "free.msg").read_bytes() == b"ok"


def test_work_that_cannot_cross_fails_in_the_caller(proc: DiskProcess) -> None:
    disk = DiskWorker("t", proc)

    async def run() -> None:
        await disk.commit(lambda: None, None)

    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        asyncio.run(run())
    disk.close()


def test_when_the_child_dies_waiting_writes_fail_and_the_next_work_starts_another(
    proc: DiskProcess, tmp_path: Path
) -> None:
    disk = DiskWorker("t", proc)
    first_pid = proc.pid
    assert first_pid is not None

    async def run() -> tuple[BaseException | None, int]:
        # a write that sleeps in the child, so that it is waiting when the child dies
        slow = asyncio.ensure_future(disk.commit(partial(time.sleep, 5), None))
        await asyncio.sleep(0.3)
        os.kill(first_pid, signal.SIGKILL)
        try:
            await asyncio.wait_for(slow, 10)
            error = None
        except DiskProcessGone as exc:
            error = exc
        return error, await disk.commit(os.getpid, None)

    error, second_pid = asyncio.run(run())
    disk.close()
    assert isinstance(error, DiskProcessGone)
    assert second_pid == proc.pid and second_pid != first_pid


def test_stop_finishes_the_work_nobody_waited_for(tmp_path: Path) -> None:
    process = DiskProcess()
    disk = DiskWorker("t", process)
    for i in range(50):
        disk.later(partial(diskjobs.create_file, str(tmp_path / f"{i}.msg"), b"x", True), tmp_path)
    pid = process.pid
    process.stop()
    assert pid is not None and not _alive(pid)
    assert len(list(tmp_path.iterdir())) == 50


def test_the_child_ends_with_the_lab_that_dies(tmp_path: Path) -> None:
    """A lab killed (no end said): its disk process ends too, and does not go on
    writing beside the lab that starts over the same state."""
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from lab.services.diskproc import DiskProcess
        process = DiskProcess()
        process.start()
        print(process.pid, flush=True)
        sys.stdin.read()
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as lab:
        assert lab.stdout is not None
        child = int(lab.stdout.readline())
        assert _alive(child)
        lab.kill()
        lab.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(child)


def test_more_work_than_the_pipe_holds_in_one_turn_goes_through(proc: DiskProcess) -> None:
    disk = DiskWorker("t", proc)
    count = 60_000

    async def run() -> set[int]:
        futures = [asyncio.ensure_future(disk.commit(os.getpid, None)) for _ in range(count)]
        await asyncio.sleep(0)  # every commit handed over in this one turn
        return set(await asyncio.wait_for(asyncio.gather(*futures), 120))

    assert asyncio.run(run()) == {proc.pid}
    disk.close()


def test_a_full_pipe_each_way_does_not_stall_the_lab() -> None:
    """The child writes a long answer nobody reads yet (the loop is busy), and the lab
    then writes more than the pipe to the child holds: the lab reads the answers while
    it waits to write, or each would wait for the other for ever. (In a process of its
    own, so that a stall fails the test rather than hangs it.)"""
    script = textwrap.dedent(
        f"""
        import asyncio, sys, time
        from functools import partial
        sys.path.insert(0, {str(ROOT)!r})
        from lab.services.diskio import DiskWorker
        from lab.services.diskproc import DiskProcess

        proc = DiskProcess()
        disk = DiskWorker("t", proc)

        async def main():
            answer = asyncio.ensure_future(disk.commit(partial(bytes, 4_000_000), None))
            await asyncio.sleep(0)
            proc.flush()
            time.sleep(0.5)  # its 4 MB answer fills the pipe back; the loop is busy
            work = asyncio.ensure_future(disk.commit(partial(len, b"x" * 4_000_000), None))
            await asyncio.sleep(0)
            print(len(await answer), await work)

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["4000000", "4000000"]
