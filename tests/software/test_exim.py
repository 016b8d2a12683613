# ruff: noqa: E501  (the log lines are Exim's, whole)
"""lab.software.exim without Docker: exim4.conf rendered from a node (or a user's own with
the lab's part applied), Exim's main log lines read as the lab's events, `exim4 -bp` and
the retry hints read as the built-in MTA's queue listing and due times."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.errors import LabError
from lab.software import check_node
from lab.software.adapter import RenderContext
from lab.software.exim import EximAdapter, lab_owned, render_config, retry_rule
from lab.software.exim_log import EximLog, parse_due, parse_queue, received_time
from lab.software.exim_userconf import apply_lab_part
from lab.software.registry import adapter_for, image_families
from lab.topology import load
from lab.topology.model import Retry, Software, SpfCheck
from lab.topology.software import ServiceSoftware

ROOT = Path(__file__).resolve().parents[2]
MAIL = "/var/lib/maillab/mail"


@pytest.fixture()
def ctx() -> RenderContext:
    topology = load(ROOT / "topologies" / "home-dialup-postfix.yaml").model
    topology.nodes["hub"].software = ServiceSoftware(smtp=Software.exim)
    return RenderContext(
        name="hub",
        node=topology.nodes["hub"],
        topology=topology,
        hostname="moriah.shofar.org.uk",
        addresses={"lan": "192.168.10.1", "internet": "10.20.9.201"},
        mail_root=MAIL,
        tls_chain="/etc/maillab/tls/chain.pem",
        tls_ca="/etc/maillab/tls/ca.pem",
    )


def test_an_exim_node_runs_in_the_exim_image(ctx: RenderContext) -> None:
    assert image_families(ctx.node) == ("exim",)
    assert isinstance(adapter_for(Software.exim), EximAdapter)
    check_node("hub", ctx.node, "docker")  # nothing refused
    with pytest.raises(LabError, match="inprocess"):
        check_node("hub", ctx.node, "inprocess")


def test_exim4_conf_comes_from_the_nodes_fields(ctx: RenderContext) -> None:
    conf = render_config(ctx, connect_timeout=3.0)
    assert "primary_hostname = moriah.shofar.org.uk\n" in conf
    assert "qualify_domain = shofar.org.uk\n" in conf
    assert "domainlist local_domains = shofar.org.uk : moriah.shofar.org.uk : localhost" in conf
    assert "hostlist relay_from_hosts = 127.0.0.0/8 : 192.168.10.0/24\n" in conf
    assert "route_list = * mail.uklinux.net\n" in conf
    assert "local_parts = eddy : keith : root\n" in conf
    assert f"directory = {MAIL}/$local_part_data\n" in conf and "maildir_format" in conf
    assert "connect_timeout = 3s\n" in conf
    # masquerade: entire domain, headers and recipients, and the envelope on the way out
    assert (
        "headers_rewrite = *@shofar.org.uk $local_part@shofar.uklinux.net fsrtc"
        " : *@*.shofar.org.uk $local_part@shofar.uklinux.net fsrtc" in conf
    )
    assert "return_path = ${if eqi{$sender_address_domain}{shofar.org.uk}" in conf
    assert "match_domain{$sender_address_domain}{*.shofar.org.uk}" in conf
    # TLS with the lab CA's key and chain in one PEM
    assert "tls_certificate = /etc/maillab/tls/chain.pem\n" in conf
    assert "tls_privatekey = /etc/maillab/tls/chain.pem\n" in conf
    assert "tls_verify_certificates = /etc/maillab/tls/ca.pem" in conf
    # the log the agent reads and libfaketime's variables
    assert "log_file_path = /var/log/exim4/%slog\n" in conf
    assert "keep_environment = LD_PRELOAD : FAKETIME_TIMESTAMP_FILE" in conf
    # the default schedule: every 30m until 5d, warn after 4h (once)
    assert "* * F,432000s,1800s\n" in conf
    assert "delay_warning = 14400s : 446400s\n" in conf
    assert "acl_check_vrfy:\n  accept\n" in conf  # VRFY 252 by default: Exim answers
    ctx.node.policy.vrfy = 502
    assert "deny message = 502 VRFY command disabled" in render_config(ctx)


def test_the_retry_rule_covers_each_interval_until_the_give_up(ctx: RenderContext) -> None:
    ctx.node.retry = Retry(intervals=[300.0, 900.0, 3600.0], give_up_after=86400.0)
    assert retry_rule(ctx.node) == "* * F,300s,300s; F,1200s,900s; F,86400s,3600s"


def test_fields_exim_cannot_honour_are_refused(ctx: RenderContext) -> None:
    ctx.node.policy.spf = next(s for s in SpfCheck if s.value != "off")
    with pytest.raises(LabError, match=r"(?s)runs exim.*policy\.spf"):
        check_node("hub", ctx.node, "docker")


def test_a_users_exim4_conf_gets_only_the_labs_part(ctx: RenderContext) -> None:
    mine = (ROOT / "topologies" / "lg45-exim" / "exim4.conf").read_text()
    conf = apply_lab_part(mine, ctx, lab_owned(ctx), connect_timeout=3.0)
    assert conf.count("primary_hostname") == 1
    assert "primary_hostname = moriah.shofar.org.uk\n" in conf  # the lab's
    assert "qualify_domain = home\n" in conf  # the user's
    assert "headers_rewrite = *@home joe.bloggs@isp.com f" in conf
    assert "file = /var/mail" not in conf  # local mail into the lab's Maildirs
    assert f"directory = {MAIL}/$local_part_data" in conf
    assert "  connect_timeout = 3s" in conf
    assert "F,2h,15m; G,16h,1h,1.5; F,4d,6h" in conf
    files = EximAdapter().render(
        RenderContext(**{**ctx.__dict__, "config_files": {"rewrite-F.conf": mine}})
    )
    assert "/etc/exim4/exim4.conf" in files


LOG = """\
2026-12-04 20:32:53.921 [172] 1xZZxd-00002m-2y <= joe@home H=(pc.home) [192.168.1.10]:58366 I=[192.168.1.1]:25 P=esmtp S=407 id=abc@pc.home T="hi for you" from <joe@home> for emi@home friend@picky.org
2026-12-04 20:32:53.931 [173] 1xZZxd-00002m-2y => emi <emi@home> F=<joe@home> P=<joe@home> R=local_user T=local_maildir S=500 QT=0.010s DT=0.002s
2026-12-04 20:32:53.932 [176] 1xZZxd-00002m-2y H=smtp.isp.com [10.30.0.25]:25 Connection refused
2026-12-04 20:32:53.934 [173] 1xZZxd-00002m-2y == friend@picky.org R=smarthost T=remote_smtp defer (111): Connection refused DT=0.000s
2026-12-04 21:02:53.934 [180] 1xZZxd-00002m-2y == friend@picky.org R=smarthost T=remote_smtp defer (-53): retry time not reached for any host
2026-12-04 21:32:53.934 [190] 1xZZxd-00002m-2y ** friend@picky.org F=<joe@home> P=<joe@home> R=smarthost T=remote_smtp H=smtp.isp.com [10.30.0.25]:25 X=TLS1.3:TLS_AES_256_GCM_SHA384:256 CV=yes: SMTP error from remote mail server after RCPT TO:<friend@picky.org>: 553 5.1.8 <joe@home>: Sender address rejected: Domain not found
2026-12-04 21:32:53.940 [191] 1xZaaa-00000q-0B <= <> R=1xZZxd-00002m-2y U=Debian-exim P=local S=1681 id*=E1xZaaa-00000q-0B@heaven.home T="Mail delivery failed: returning message to sender" from <> for joe@home
2026-12-04 21:32:53.950 [190] 1xZZxd-00002m-2y Completed QT=1h
2026-12-04 21:33:00.100 [200] 1xZbbb-00000q-0C => friend@picky.org F=<joe.bloggs@isp.com> P=<joe.bloggs@isp.com> R=smarthost T=remote_smtp S=480 H=smtp.isp.com [10.30.0.25]:25 X=TLS1.3:TLS_AES_256_GCM_SHA384:256 CV=yes C="250 OK id=Q123" QT=0.1s DT=0.05s
2026-12-04 21:34:00.000 [201] H=(x) [192.168.1.10]:4000 I=[192.168.1.1]:25 F=<joe@home> rejected RCPT <x@nowhere.example>: relay not permitted
"""


def test_the_main_log_becomes_the_labs_events() -> None:
    reader = EximLog()
    events = [e for line in LOG.splitlines() for e in reader.feed(line, 0.0)]
    kinds = [e.kind for e in events]
    assert kinds == [
        "queue.queued",
        "mailbox.delivered",
        "delivery.result",
        "queue.deferred",
        "delivery.result",
        "queue.bounced",
        "queue.queued",
        "dsn.sent",
        "queue.removed",
        "delivery.result",
        "policy.reject",
    ]
    queued = events[0].data
    assert queued["envelope_from"] == "joe@home"
    assert queued["recipients"] == ["emi@home", "friend@picky.org"]
    assert queued["client"] == "192.168.1.10" and queued["size"] == 407
    assert queued["message_id"] == "<abc@pc.home>"
    assert events[1].data["user"] == "emi" and events[1].data["rcpt"] == "emi@home"
    assert events[2].data["result"] == "deferred"
    assert events[2].data["reply"] == "Connection refused"
    failed = events[4].data
    assert failed["result"] == "failed" and failed["status"] == "5.1.8"
    assert failed["reply"].startswith("553 5.1.8 <joe@home>")
    assert failed["server"] == "smtp.isp.com" and failed["relay"] == "smtp.isp.com[10.30.0.25]:25"
    dsn = events[7].data
    assert dsn["original_id"] == "1xZZxd-00002m-2y" and dsn["action"] == "failed"
    assert dsn["to"] == "joe@home" and dsn["recipients"] == ["friend@picky.org"]
    assert dsn["status"] == ["5.1.8"]
    delivered = events[9].data
    assert delivered["result"] == "delivered" and delivered["reply"] == "250 OK id=Q123"
    assert delivered["remote_id"] == "Q123" and delivered["tls"] is True
    assert events[10].data == {
        "stage": "rcpt",
        "reply": "relay not permitted",
        "address": "x@nowhere.example",
    }


def test_attempts_count_delivery_processes_not_skipped_runs() -> None:
    reader = EximLog()
    for line in LOG.splitlines()[:5]:
        reader.feed(line, 0.0)
    assert reader.attempts("1xZZxd-00002m-2y") == 1  # the -53 line was no try
    assert reader.last_host("1xZZxd-00002m-2y") == "10.30.0.25"


BP = """\
 0m   407 1xZZxd-00002m-2y <joe@home>
        D emi@home
          friend@picky.org

 2h   1.2K 1xZZxe-00002m-3z <> *** frozen ***
          joe@home

--- retry ---
  T:smtp.isp.com:10.30.0.25 111 65 Connection refused
04-Dec-2026 20:32:53  04-Dec-2026 20:32:53  04-Dec-2026 20:42:53
"""


def test_the_queue_listing_and_the_retry_hints_in_the_builtin_shape() -> None:
    reader = EximLog()
    for line in LOG.splitlines()[:4]:
        reader.feed(line, 0.0)
    first, frozen = parse_queue(BP, reader)
    assert first["id"] == "1xZZxd-00002m-2y"
    assert first["envelope_from"] == "joe@home"
    assert first["recipients"] == ["friend@picky.org"]  # emi's copy is delivered
    assert first["attempts"] == 1 and first["last_reply"] == "Connection refused"
    assert first["received"] == received_time("1xZZxd-00002m-2y") == 1796416373.0
    assert first["next_attempt"] == 1796416973.0  # 20:42:53 UTC, the host's next try
    assert frozen["envelope_from"] == "" and frozen["queue_name"] == "frozen"


def test_due_times_only_while_messages_wait() -> None:
    hints = BP.partition("--- retry ---\n")[2]
    assert parse_due("1\n" + hints) == [1796416973.0]
    assert parse_due("0\n" + hints) == []


def test_a_recipient_whose_retry_time_is_over_bounces_with_exims_status() -> None:
    """queue-lifecycle on Exim: the give-up is `** ... retry timeout exceeded`, and the
    bounce Exim writes for it says Status: 5.0.0 (the events carry that, not the
    built-in MTA's 4.4.7)."""
    reader = EximLog()
    lines = [
        "2026-12-09 23:00:00.001 [300] 1xZcex-00002e-2X == paulmidgley@freeuk.com R=smarthost T=remote_smtp defer (-1): host lookup for mail.uklinux.net did not complete (DNS timeout?)",
        "2026-12-10 00:00:00.001 [301] 1xZcex-00002e-2X ** paulmidgley@freeuk.com R=smarthost T=remote_smtp: retry timeout exceeded",
        '2026-12-10 00:00:00.010 [302] 1xZdaa-00000q-0B <= <> R=1xZcex-00002e-2X U=Debian-exim P=local S=1681 T="Mail delivery failed: returning message to sender" from <> for eddy@shofar.org.uk',
    ]
    events = [e for line in lines for e in reader.feed(line, 0.0)]
    kinds = [e.kind for e in events]
    assert "queue.expired" in kinds
    (bounced,) = [e.data for e in events if e.kind == "queue.bounced"]
    assert bounced["status"] == "5.0.0" and bounced["rcpt"] == "paulmidgley@freeuk.com"
    assert bounced["reply"].startswith("delivery time expired; last error: host lookup")
    (dsn,) = [e.data for e in events if e.kind == "dsn.sent"]
    assert dsn["action"] == "failed" and dsn["status"] == ["5.0.0"]
