"""lab.software.postfix without Docker: a node's POP3 maildrops rendered for Postfix (the
ISP's Postfix delivering where Dovecot serves), their deliveries read from the log, and
queue.queued's recipients read from the message's queue file."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.software.adapter import RenderContext
from lab.software.postfix import PostfixAdapter, main_cf, users_script
from lab.software.postfix_log import PostfixLog, queue_file_content, queue_file_recipients
from lab.topology import load

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def isp() -> RenderContext:
    topology = load(ROOT / "topologies" / "home-dialup-dovecot.yaml").model
    return RenderContext(
        name="isp",
        node=topology.nodes["isp"],
        topology=topology,
        hostname="mail.uklinux.net",
        addresses={"internet": "10.20.0.25"},
        mail_root="/var/lib/maillab/mail",
    )


def test_multidrop_domains_go_to_virtual_into_the_mailboxes_maildir(isp: RenderContext) -> None:
    params = main_cf(isp)
    assert params["virtual_mailbox_domains"] == "shofar.uklinux.net"
    assert params["virtual_mailbox_maps"] == "inline:{ @shofar.uklinux.net=shofar/ }"
    assert params["virtual_mailbox_base"] == "/var/lib/maillab/mail"  # where Dovecot reads
    assert params["virtual_uid_maps"] == "static:5000"
    assert params["virtual_gid_maps"] == "static:5000"
    # a domain is local or virtual, never both (Postfix refuses that)
    assert "shofar.uklinux.net" not in params["mydestination"]
    assert "uklinux.net" in params["mydestination"]
    # a mailbox's own name at the ISP's domain is a single drop: local(8), an account
    assert "useradd" in users_script(isp) and " shofar\n" in users_script(isp)


def test_a_node_without_maildrops_has_no_virtual_delivery() -> None:
    topology = load(ROOT / "topologies" / "home-dialup-postfix.yaml").model
    ctx = RenderContext(
        "hub", topology.nodes["hub"], topology, "moriah.shofar.org.uk", {}, "/var/lib/mail"
    )
    assert not any(key.startswith("virtual_") for key in main_cf(ctx))


VIRTUAL = """\
Dec 04 18:14:53 mail postfix/smtpd[176]: 1A2B3C4D5E: client=scrabble.freeuk.net[10.20.1.25]
Dec 04 18:14:53 mail postfix/qmgr[148]: 1A2B3C4D5E: from=<paulmidgley@freeuk.com>, size=463, nrcpt=2 (queue active)
Dec 04 18:14:53 mail postfix/virtual[180]: 1A2B3C4D5E: to=<nelug@shofar.uklinux.net>, relay=virtual, delay=0.1, delays=0/0/0/0.1, dsn=2.0.0, status=sent (delivered to maildir)
Dec 04 18:14:53 mail postfix/local[181]: 1A2B3C4D5E: to=<shofar@uklinux.net>, relay=local, delay=0.1, delays=0/0/0/0.1, dsn=2.0.0, status=sent (delivered to maildir)
"""  # noqa: E501


def record(kind: str, value: bytes) -> bytes:
    """One queue file record as Postfix writes it (rec_put): type, length, data."""
    length, encoded = len(value), b""
    while True:
        byte = length & 0x7F
        length >>= 7
        encoded += bytes([byte | (0x80 if length else 0)])
        if not length:
            return kind.encode() + encoded + value


def test_virtual_deliveries_name_the_mailbox_and_queued_has_the_recipients(
    isp: RenderContext, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    (spool / "active").mkdir(parents=True)
    body = b"x" * 300  # a length that takes two bytes
    (spool / "active" / "1A2B3C4D5E").write_bytes(
        record("C", b"463 0 0 2")
        + record("S", b"paulmidgley@freeuk.com")
        + record("O", b"NELUG@shofar.uklinux.net")
        + record("R", b"nelug@shofar.uklinux.net")
        + record("D", b"shofar@uklinux.net")  # delivered already: still a recipient
        + record("M", b"")
        + record("N", body)
        + record("X", b"")
        + record("E", b"")
    )
    adapter = PostfixAdapter()
    reader = adapter.log_reader()
    reader.spool = spool
    adapter.render(isp)  # fills the maildrops the reader knows
    events = [(e.kind, e.data) for line in VIRTUAL.splitlines() for e in reader.feed(line, 0.0)]
    assert [kind for kind, _ in events] == [
        "queue.queued",
        "mailbox.delivered",
        "mailbox.delivered",
    ]
    queued = events[0][1]
    assert queued["recipients"] == ["nelug@shofar.uklinux.net", "shofar@uklinux.net"]
    assert queued["original_recipients"] == ["NELUG@shofar.uklinux.net", "shofar@uklinux.net"]
    multidrop, single = events[1][1], events[2][1]
    assert multidrop["user"] == "shofar" and multidrop["maildrop"] is True
    assert multidrop["rcpt"] == multidrop["address"] == "nelug@shofar.uklinux.net"
    assert single["user"] == "shofar" and single["maildrop"] is True


def test_a_queue_file_gone_or_cut_short(tmp_path: Path) -> None:
    assert queue_file_recipients(tmp_path, "1A2B3C4D5E") is None
    assert queue_file_recipients(tmp_path, "../etc") is None
    (tmp_path / "incoming").mkdir()
    whole = record("R", b"a@example.com") + record("R", b"b@example.com")
    (tmp_path / "incoming" / "ABCDEF1234").write_bytes(whole[:-3])  # still being written
    assert queue_file_recipients(tmp_path, "ABCDEF1234") == (["a@example.com"], ["a@example.com"])
    # without a spool (a reader fed lines alone) queue.queued has no recipients
    line = VIRTUAL.splitlines()[1]
    assert PostfixLog().feed(line, 0.0)[0].data["recipients"] == []


def test_a_message_delivered_before_its_queue_file_was_read(
    isp: RenderContext, tmp_path: Path
) -> None:
    """The queue file is gone by the time qmgr's line is read (local delivery takes
    milliseconds): queue.queued waits for the delivery lines, whose recipients it
    carries, and comes before them."""
    (tmp_path / "active").mkdir()
    adapter = PostfixAdapter()
    reader = adapter.log_reader()
    reader.spool = tmp_path
    adapter.render(isp)
    lines = VIRTUAL.splitlines()
    assert [e for line in lines[:3] for e in reader.feed(line, 0.0)] == []  # 1 of nrcpt=2
    events = reader.feed(lines[3], 0.0)
    assert [e.kind for e in events] == ["queue.queued", "mailbox.delivered", "mailbox.delivered"]
    assert events[0].data["recipients"] == ["nelug@shofar.uklinux.net", "shofar@uklinux.net"]
    # one recipient of two had an outcome when the message left the queue: it is released
    reader = adapter.log_reader()
    reader.spool = tmp_path
    removed = "Dec 04 18:14:54 mail postfix/qmgr[148]: 1A2B3C4D5E: removed"
    events = [e for line in [*lines[:3], removed] for e in reader.feed(line, 0.0)]
    assert [e.kind for e in events] == ["queue.queued", "mailbox.delivered", "queue.removed"]
    assert events[0].data["recipients"] == ["nelug@shofar.uklinux.net"]


def test_a_queued_messages_content_from_its_queue_file(tmp_path: Path) -> None:
    (tmp_path / "deferred" / "A").mkdir(parents=True)
    (tmp_path / "deferred" / "A" / "A1B2C3D4E5").write_bytes(
        record("S", b"eddy@shofar.org.uk")
        + record("R", b"paulmidgley@freeuk.com")
        + record("M", b"")
        + record("N", b"Subject: hello")
        + record("N", b"")
        + record("L", b"a long ")  # a line Postfix kept in two records
        + record("N", b"line")
        + record("X", b"")
        + record("R", b"extracted@example.com")
        + record("E", b"")
    )
    content = queue_file_content(tmp_path, "A1B2C3D4E5")
    assert content == b"Subject: hello\r\n\r\na long line\r\n"
    assert queue_file_recipients(tmp_path, "A1B2C3D4E5") == (
        ["paulmidgley@freeuk.com", "extracted@example.com"],  # not the content's lines
        ["paulmidgley@freeuk.com", "extracted@example.com"],
    )
    assert queue_file_content(tmp_path, "FFFFFFFFFF") is None
