"""A DSN is written like accepted mail, by the host's disk worker, and is durable (its
file and its directory fsync'd) before the message it reports on leaves the queue.

The lab's disk work runs in the disk process; these tests watch the order of the work
the MTA asks for, so they give the host's worker back its own thread (`in_a_thread`),
where the same grouping runs (diskio.run_group) and the calls can be watched."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

import lab.services.diskio as diskio
import lab.services.mta.queue as queue_module
from lab.harness import Lab


def in_threads(lab: Lab) -> None:
    """Each MTA's disk jobs run in its worker's own thread from now on, not in the disk
    process (the functions these tests watch are replaced in this process only)."""
    for services in lab.backend.services.values():  # type: ignore[attr-defined]
        if services.mta is not None:
            services.mta.disk.wait()
            services.mta.disk.process = None


def is_dsn(data: bytes) -> bool:
    """A queue file's first line (its state) names the null sender: a DSN."""
    return b'"envelope_from":""' in data.split(b"\n", 1)[0]


@pytest.mark.lab_backend("inprocess")
@pytest.mark.topology("home-dialup")
def test_a_bounce_is_durable_in_the_disk_thread_before_the_original_goes(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    mta = lab.backend.services["isp"].mta  # type: ignore[attr-defined]
    queue_dir = mta.queue.dir
    log: list[tuple[str, str, str]] = []  # (what, which, thread), in the order done
    create_file = queue_module.create_file
    fsync_directory = diskio.fsync_directory
    retire = queue_module.retire

    def logged_write(path: str, data: bytes, durable: bool) -> None:
        create_file(path, data, durable)
        if Path(path).parent == queue_dir:
            log.append(("write", Path(path).stem, threading.current_thread().name))

    def logged_fsync(directory: str) -> None:
        fsync_directory(directory)
        if Path(directory) == queue_dir:
            log.append(("fsync", "", threading.current_thread().name))

    def logged_retire(*paths: str) -> None:
        for path in map(Path, paths):
            if path.parent == queue_dir:
                log.append(("retire", path.name, threading.current_thread().name))
        retire(*paths)

    in_threads(lab)
    monkeypatch.setattr(queue_module, "create_file", logged_write)
    monkeypatch.setattr(diskio, "fsync_directory", logged_fsync)
    monkeypatch.setattr(queue_module, "retire", logged_retire)

    lab.send("pc1", mail_from="eddy@shofar.org.uk", to=["nobody@freeuk.com"], subject="hi")
    lab.link("dialup").up()
    bounce: Any = lab.assert_bounced(recipient="nobody@freeuk.com", by="isp")
    original, dsn = bounce.get("original_id"), bounce.get("id")
    lab.wait_for("queue.removed", node="isp", id=original)
    lab.settle()
    mta.disk.wait()

    def at(entry: tuple[str, str]) -> int:
        return next(i for i, (what, which, _) in enumerate(log) if (what, which) == entry)

    written = at(("write", dsn))
    synced = next(i for i, (what, _, _) in enumerate(log) if what == "fsync" and i > written)
    removed = at(("retire", f"{original}.msg"))
    assert written < synced < removed, log
    assert {thread for _, _, thread in log} == {"disk:isp"}, log  # never on the loop's


@pytest.mark.lab_backend("inprocess")
@pytest.mark.topology("home-dialup")
def test_a_bounce_that_cannot_be_written_keeps_the_original_and_is_tried_again(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_file = queue_module.create_file
    disk_full = True

    def failing(path: str, data: bytes, durable: bool) -> None:
        if disk_full and is_dsn(data):
            raise OSError(28, "No space left on device")
        create_file(path, data, durable)

    in_threads(lab)
    monkeypatch.setattr(queue_module, "create_file", failing)
    lab.send("pc1", mail_from="eddy@shofar.org.uk", to=["nobody@freeuk.com"], subject="hi")
    lab.link("dialup").up()
    original = lab.wait_for("queue.write_failed", node="isp").get("id")
    lab.settle()
    assert [m["id"] for m in lab.queue("isp")] == [original]  # kept, with its DSN owed
    assert not [e for e in lab.events if e.node == "isp" and e.kind == "dsn.sent"]
    assert not [e for e in lab.events if e.kind == "queue.removed" and e.get("id") == original]

    disk_full = False
    lab.clock.advance("31m")
    bounce: Any = lab.assert_bounced(recipient="nobody@freeuk.com", by="isp")
    assert bounce.get("original_id") == original
    lab.wait_for("queue.removed", node="isp", id=original)
    assert lab.queue("isp") == []
    sent = [e for e in lab.events if e.node == "isp" and e.kind == "dsn.sent"]
    assert len(sent) == 1
