"""The disk jobs' spare files: a queue's finished files are written over for its next
messages (no inode freed and allocated again), and never at the cost of a message."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from lab.services import diskjobs
from lab.services.diskjobs import SPARE, create_file, retire
from lab.services.mta.queue import Queue, QueuedMessage, new_id


def _spares(directory: Path) -> list[str]:
    return sorted(os.listdir(directory / SPARE))


def test_a_retired_file_is_the_next_new_file_of_its_directory(tmp_path: Path) -> None:
    first = tmp_path / "A.msg"
    create_file(str(first), b"x" * 5000, True)
    inode = first.stat().st_ino
    retire(str(first))
    assert not first.exists() and len(_spares(tmp_path)) == 1

    second = tmp_path / "B.msg"
    create_file(str(second), b"short", True)
    assert second.read_bytes() == b"short"  # written over, and cut to its length
    assert second.stat().st_ino == inode  # the same inode: none freed, none allocated
    assert second.stat().st_nlink == 1 and _spares(tmp_path) == []


def test_a_new_file_never_replaces_one_that_exists(tmp_path: Path) -> None:
    create_file(str(tmp_path / "A.msg"), b"a", True)
    retire(str(tmp_path / "A.msg"))
    create_file(str(tmp_path / "B.msg"), b"b", True)
    create_file(str(tmp_path / "C.msg"), b"c", True)
    retire(str(tmp_path / "C.msg"))
    with pytest.raises(FileExistsError):
        create_file(str(tmp_path / "B.msg"), b"other", True)
    assert (tmp_path / "B.msg").read_bytes() == b"b"
    assert _spares(tmp_path) == []  # the spare it took is not left half-used


def test_spares_found_from_before_are_removed_never_written_over(tmp_path: Path) -> None:
    """A crash can leave a spare's name beside the message file it became (the same
    inode), and another process's spares are not this one's to take: the first retire
    in a directory clears them."""
    (tmp_path / SPARE).mkdir()
    live = tmp_path / "LIVE.msg"
    live.write_bytes(b"a message still queued")
    os.link(live, tmp_path / SPARE / "12345.7")
    (tmp_path / SPARE / "99999.1").write_bytes(b"stale")

    create_file(str(tmp_path / "A.msg"), b"a", True)
    retire(str(tmp_path / "A.msg"))
    left = _spares(tmp_path)
    assert len(left) == 1 and left[0] not in ("12345.7", "99999.1")
    create_file(str(tmp_path / "B.msg"), b"b", True)
    create_file(str(tmp_path / "C.msg"), b"c", True)
    assert live.read_bytes() == b"a message still queued"


def test_beyond_the_limit_a_finished_file_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(diskjobs, "_SPARES_PER_DIRECTORY", 2)
    names = [str(tmp_path / f"{n}.msg") for n in "ABCD"]
    for name in names:
        create_file(name, b"m", True)
    retire(*names)
    assert len(_spares(tmp_path)) == 2
    assert not any(Path(name).exists() for name in names)


def test_a_directory_emptied_behind_its_back_still_takes_new_files(tmp_path: Path) -> None:
    create_file(str(tmp_path / "A.msg"), b"a", True)
    retire(str(tmp_path / "A.msg"))
    for spare in _spares(tmp_path):
        os.unlink(tmp_path / SPARE / spare)
    create_file(str(tmp_path / "B.msg"), b"b", True)
    assert (tmp_path / "B.msg").read_bytes() == b"b"


def test_a_queue_with_spares_loads_only_its_messages(tmp_path: Path) -> None:
    """Messages through a queue leave spares in DIR/.spare; after a restart the queue
    has exactly the messages it had, each whole."""
    directory = tmp_path / "queue"

    async def run() -> list[str]:
        queue = Queue(directory)
        ids = []
        for n in range(6):
            message = QueuedMessage(
                id=new_id(), envelope_from="a@b.test", recipients=[], received=float(n)
            )
            await queue.put_async(f"Subject: {n}\r\n\r\nbody {n}\r\n".encode(), message)
            ids.append(message.id)
        for gone in ids[:4]:
            queue.remove(gone)
        queue.disk.wait()
        for n in range(4, 8):  # these take the spares
            message = QueuedMessage(
                id=new_id(), envelope_from="a@b.test", recipients=[], received=float(n)
            )
            await queue.put_async(f"Subject: {n}\r\n\r\nbody {n}\r\n".encode(), message)
            ids.append(message.id)
        queue.close()
        return ids[4:]

    kept = asyncio.run(run())
    again = Queue(directory)
    assert sorted(m.id for m in again.load()) == sorted(kept)
    subjects = [again.content(i).split(b"\r\n")[0] for i in kept]
    assert subjects == [f"Subject: {n}".encode() for n in (4, 5, 4, 5, 6, 7)]
    assert len(_spares(directory)) == 0  # the four spares became four new messages
    again.close()


def test_without_hard_links_a_new_file_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system that refuses hard links: the spare is written over for nothing,
    and a new file takes the message; no spare is left."""
    create_file(str(tmp_path / "A.msg"), b"a" * 100, True)
    retire(str(tmp_path / "A.msg"))

    def refused(src: str, dst: str) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(diskjobs.os, "link", refused)
    create_file(str(tmp_path / "B.msg"), b"b", True)
    assert (tmp_path / "B.msg").read_bytes() == b"b"
    assert _spares(tmp_path) == []
