"""lab.services.maildir: a store whose Maildirs and messages are given to another user (the
uid a real POP3 server reads them as, Dovecot on the Docker backend)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lab.services.maildir import MailStore


def test_an_owned_store_gives_its_maildirs_and_messages_to_the_owner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given: list[tuple[str, int, int]] = []
    chown, fchown = os.chown, os.fchown

    def record_chown(path: object, uid: int, gid: int) -> None:
        given.append((Path(str(path)).name, uid, gid))
        chown(path, uid, gid)  # type: ignore[arg-type]

    def record_fchown(fd: int, uid: int, gid: int) -> None:
        given.append(("message", uid, gid))
        fchown(fd, uid, gid)

    monkeypatch.setattr(os, "chown", record_chown)
    monkeypatch.setattr(os, "fchown", record_fchown)
    me = os.getuid(), os.getgid()  # the test can give files only to itself
    store = MailStore(tmp_path / "mail", durable=False)
    store.owner = me
    key = store.deliver("shofar", b"Subject: hi\r\n\r\nbody\r\n")
    assert given == [
        ("shofar", *me),
        ("tmp", *me),
        ("new", *me),
        ("cur", *me),
        ("message", *me),
    ]
    assert store.read("shofar", key).startswith(b"Subject: hi")
    store.deliver("shofar", b"again\r\n")
    assert [name for name, *_ in given[5:]] == ["message"]  # the Maildir is made once


def test_a_store_without_an_owner_leaves_ownership_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("chown called")

    monkeypatch.setattr(os, "chown", refuse)
    monkeypatch.setattr(os, "fchown", refuse)
    store = MailStore(tmp_path / "mail", durable=False)
    store.deliver("eddy", b"x\r\n")
    assert len(store.keys("eddy")) == 1
