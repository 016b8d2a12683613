"""lab.software.postfix without Docker: main.cf rendered from a node, its log lines read as
the lab's events, `postqueue -j` read as the built-in MTA's queue listing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab.software.adapter import RenderContext, faketime_offset, smtp_software
from lab.software.postfix import PostfixAdapter, main_cf
from lab.software.postfix_log import PostfixLog, parse_postqueue
from lab.software.registry import adapter_for, image_families
from lab.topology import load
from lab.topology.model import Software
from lab.topology.software import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ctx() -> RenderContext:
    topology = load(ROOT / "topologies" / "home-dialup-postfix.yaml").model
    return RenderContext(
        name="hub",
        node=topology.nodes["hub"],
        topology=topology,
        hostname="moriah.shofar.org.uk",
        addresses={"lan": "192.168.10.1", "internet": "10.20.9.201"},
        mail_root="/var/lib/maillab/mail",
    )


def test_the_hub_is_on_postfix_and_runs_in_the_postfix_image(ctx: RenderContext) -> None:
    assert smtp_software(ctx.node) is Software.postfix
    assert image_families(ctx.node) == ("postfix",)
    assert image_families(ctx.topology.nodes["pc1"]) == ()
    assert adapter_for(Software.builtin) is None
    assert isinstance(adapter_for(Software.postfix), PostfixAdapter)


def test_main_cf_comes_from_the_nodes_fields(ctx: RenderContext) -> None:
    params = main_cf(ctx, connect_timeout=3.0)
    assert params["myhostname"] == "moriah.shofar.org.uk"
    assert params["mydomain"] == "shofar.org.uk"
    assert params["mydestination"] == "$myhostname, localhost, shofar.org.uk"
    assert params["mynetworks"] == "127.0.0.0/8, 192.168.10.0/24"  # relay_from: [lan]
    assert params["relayhost"] == "[mail.uklinux.net]"
    assert params["masquerade_domains"] == "shofar.org.uk"
    assert params["masquerade_classes"] == "envelope_sender, header_sender, header_recipient"
    assert params["smtp_generic_maps"] == "regexp:/etc/postfix/generic"
    # the lab's own settings
    assert params["mail_spool_directory"] == "/var/lib/maillab/mail/"  # Maildir per user
    assert params["home_mailbox"] == ""
    assert params["maillog_file"] == "/dev/stdout"
    assert params["inet_protocols"] == "ipv4"
    assert params["smtp_connect_timeout"] == "3s"
    assert "LD_PRELOAD" in params["import_environment"]
    assert "NO_FAKE_STAT" in params["import_environment"]
    # the default retry schedule: every 30m, warn after 4h, give up after 5d
    assert params["queue_run_delay"] == "1800s"
    assert params["minimal_backoff_time"] == "1800s"
    assert params["maximal_backoff_time"] == "1800s"
    assert params["delay_warning_time"] == "14400s"
    assert params["maximal_queue_lifetime"] == "432000s"
    assert params["bounce_queue_lifetime"] == "432000s"


def test_the_files_written_for_the_hub(ctx: RenderContext) -> None:
    files = PostfixAdapter().render(ctx)
    assert "myhostname = moriah.shofar.org.uk\n" in files["/etc/postfix/main.cf"]
    assert files["/etc/postfix/generic"] == (
        "/^(.+)@([^@.]+\\.)*shofar\\.org\\.uk$/\t${1}@shofar.uklinux.net\n"
    )
    aliases = files["/etc/aliases"].splitlines()
    assert "postmaster: eddy" in aliases
    assert "nelug-announce: eddy, keith" in aliases
    users = files["/etc/maillab/postfix-users.sh"]
    for user in ("eddy", "keith", "root"):
        assert f" {user}\n" in users
    assert "chmod 1777 /var/lib/maillab/mail" in users


def test_retry_schedule_settings_and_raw_settings(ctx: RenderContext) -> None:
    node = ctx.node.model_copy(
        update={
            "retry": ctx.node.retry.model_copy(
                update={"intervals": [60.0, 600.0], "warn_after": None, "give_up_after": 3600.0}
            ),
            "settings": ServiceSettings(
                smtp={"smtpd_helo_required": "yes", "mynetworks_style": "host"}
            ),
            "smarthost": "isp:2525",
        }
    )
    params = main_cf(
        RenderContext("hub", node, ctx.topology, ctx.hostname, ctx.addresses, ctx.mail_root)
    )
    assert params["minimal_backoff_time"] == "60s"
    assert params["maximal_backoff_time"] == "600s"
    assert params["delay_warning_time"] == "0h"
    assert params["maximal_queue_lifetime"] == "3600s"
    assert params["relayhost"] == "[mail.uklinux.net]:2525"  # a node name: its hostname
    assert params["smtpd_helo_required"] == "yes"
    assert params["mynetworks_style"] == "host"


LOG = """\
Dec 04 18:14:53 moriah postfix/smtpd[176]: connect from pc1[192.168.10.11]
Dec 04 18:14:53 moriah postfix/smtpd[176]: BE0E218C096: client=pc1.shofar.org.uk[192.168.10.11]
Dec 04 18:14:53 moriah postfix/cleanup[179]: BE0E218C096: message-id=<m1@pc1.shofar.org.uk>
Dec 04 18:14:53 moriah postfix/qmgr[148]: BE0E218C096: from=<eddy@shofar.org.uk>, size=463, nrcpt=2 (queue active)
Dec 04 18:14:53 moriah postfix/local[180]: BE0E218C096: to=<eddy@shofar.org.uk>, orig_to=<NELUG-announce@shofar.org.uk>, relay=local, delay=0.17, delays=0.05/0.12/0/0, dsn=2.0.0, status=sent (delivered to maildir)
Dec 04 18:14:53 moriah postfix/smtp[181]: BE0E218C096: to=<paulmidgley@freeuk.com>, relay=none, delay=0.17, delays=0.05/0.13/0/0, dsn=4.4.3, status=deferred (Host or domain name not found. Name service error for name=mail.uklinux.net type=A: Host not found, try again)
Dec 04 19:15:00 moriah postfix/qmgr[148]: BE0E218C096: from=<eddy@shofar.org.uk>, size=463, nrcpt=2 (queue active)
Dec 04 19:15:00 moriah postfix/smtp[217]: BE0E218C096: to=<paulmidgley@freeuk.com>, relay=mail.uklinux.net[10.20.0.25]:25, delay=3607, delays=3606/0.29/0/0.1, dsn=2.0.0, status=sent (250 2.0.0 A1B2C3D4E5 Message accepted)
Dec 04 19:15:00 moriah postfix/qmgr[148]: BE0E218C096: removed
"""  # noqa: E501


def feed(text: str) -> list[tuple[str, dict[str, object]]]:
    reader = PostfixLog()
    found = []
    for line in text.splitlines():
        found += [(e.kind, e.data) for e in reader.feed(line, 0.0)]
    return found


def test_log_lines_become_the_built_in_mtas_events() -> None:
    events = feed(LOG)
    assert [kind for kind, _ in events] == [
        "queue.queued",
        "mailbox.delivered",
        "delivery.result",
        "queue.deferred",
        "delivery.result",
        "queue.removed",
    ]
    queued = events[0][1]
    assert queued["id"] == "BE0E218C096"
    assert queued["envelope_from"] == "eddy@shofar.org.uk"
    assert queued["client"] == "192.168.10.11"
    assert queued["message_id"] == "<m1@pc1.shofar.org.uk>"
    assert queued["size"] == 463
    local = events[1][1]
    assert local["user"] == "eddy"
    assert local["rcpt"] == "NELUG-announce@shofar.org.uk"
    assert local["address"] == "eddy@shofar.org.uk"
    assert local["envelope_from"] == "eddy@shofar.org.uk"
    assert local["message_id"] == "<m1@pc1.shofar.org.uk>"
    deferred = events[3][1]
    assert deferred["recipients"] == ["paulmidgley@freeuk.com"]
    assert str(deferred["reply"]).startswith("Host or domain name not found")
    sent = events[4][1]
    assert sent["result"] == "delivered"
    assert sent["server"] == "mail.uklinux.net"
    assert sent["relay"] == "mail.uklinux.net[10.20.0.25]:25"
    assert sent["reply"] == "250 2.0.0 A1B2C3D4E5 Message accepted"
    assert sent["status"] == "2.0.0"


BOUNCE = """\
Dec 04 18:00:00 moriah postfix/qmgr[1]: 11111AAAAA: from=<eddy@shofar.org.uk>, size=400, nrcpt=1 (queue active)
Dec 04 18:00:01 moriah postfix/smtp[2]: 11111AAAAA: to=<nobody@freeuk.com>, relay=mail.uklinux.net[10.20.0.25]:25, delay=1, delays=0/0/0/1, dsn=5.1.1, status=bounced (host mail.uklinux.net[10.20.0.25] said: 550 5.1.1 <nobody@freeuk.com>: no such user (in reply to RCPT TO command))
Dec 04 18:00:01 moriah postfix/cleanup[3]: 22222BBBBB: message-id=<dsn@moriah.shofar.org.uk>
Dec 04 18:00:01 moriah postfix/bounce[4]: 11111AAAAA: sender non-delivery notification: 22222BBBBB
Dec 04 18:00:01 moriah postfix/qmgr[1]: 11111AAAAA: removed
Dec 04 18:00:01 moriah postfix/qmgr[1]: 33333CCCCC: from=<eddy@shofar.org.uk>, status=expired, returned to sender
Dec 04 18:00:01 moriah postfix/bounce[4]: 44444DDDDD: sender delay notification: 55555EEEEE
Dec 04 18:00:02 moriah postfix/smtpd[5]: NOQUEUE: reject: RCPT from unknown[10.20.1.25]: 554 5.7.1 <x@example.com>: Relay access denied; from=<a@b> to=<x@example.com> proto=ESMTP helo=<x>
"""  # noqa: E501


def test_bounces_dsns_and_rejects() -> None:
    events = feed(BOUNCE)
    kinds = [kind for kind, _ in events]
    assert kinds == [
        "queue.queued",
        "delivery.result",
        "queue.bounced",
        "dsn.sent",
        "queue.removed",
        "queue.expired",
        "dsn.sent",
        "policy.reject",
    ]
    result = events[1][1]
    assert result["result"] == "failed"
    assert result["reply"] == "550 5.1.1 <nobody@freeuk.com>: no such user"
    dsn = events[3][1]
    assert dsn == {
        "id": "22222BBBBB",
        "original_id": "11111AAAAA",
        "to": "eddy@shofar.org.uk",
        "action": "failed",
        "recipients": ["nobody@freeuk.com"],
        "status": ["5.1.1"],
    }
    assert events[6][1]["action"] == "delayed"
    assert events[7][1] == {
        "stage": "rcpt",
        "reply": "554 5.7.1 <x@example.com>: Relay access denied",
    }


def test_postqueue_json_in_the_queue_shape(tmp_path: Path) -> None:
    (tmp_path / "deferred" / "B").mkdir(parents=True)
    (tmp_path / "deferred" / "B" / "BE0E218C096").write_text("")
    import os

    os.utime(tmp_path / "deferred" / "B" / "BE0E218C096", (1796409893, 1796409893))
    line = {
        "queue_name": "deferred",
        "queue_id": "BE0E218C096",
        "arrival_time": 1796408093,
        "message_size": 463,
        "forced_expire": False,
        "sender": "eddy@shofar.org.uk",
        "recipients": [{"address": "paulmidgley@freeuk.com", "delay_reason": "Host not found"}],
    }
    reader = PostfixLog()
    for text in LOG.splitlines()[:6]:
        reader.feed(text, 0.0)
    [entry] = parse_postqueue(json.dumps(line) + "\n", reader, tmp_path)
    assert entry == {
        "id": "BE0E218C096",
        "envelope_from": "eddy@shofar.org.uk",
        "recipients": ["paulmidgley@freeuk.com"],
        "attempts": 1,
        "received": 1796408093.0,
        "next_attempt": 1796409893.0,
        "last_reply": "Host not found",
        "queue_name": "deferred",
    }


def test_the_faketime_offset_file() -> None:
    assert faketime_offset(3600) == "+3600.000\n"
    assert faketime_offset(-1) == "+0.000\n"


def test_starttls_with_the_lab_ca(ctx: RenderContext) -> None:
    assert main_cf(ctx)["smtpd_tls_security_level"] == "none"  # no certificate: no TLS
    import dataclasses

    tls = dataclasses.replace(ctx, tls_chain="/etc/maillab/tls/chain.pem", tls_ca="/ca.pem")
    params = main_cf(tls)
    assert params["smtpd_tls_security_level"] == "may"  # policy.starttls: offer
    assert params["smtpd_tls_chain_files"] == "/etc/maillab/tls/chain.pem"
    assert params["smtp_tls_security_level"] == "may"  # tls_outbound: opportunistic
    assert params["smtp_tls_CAfile"] == "/ca.pem"


def test_a_users_own_files_go_in_as_they_are_and_postconf_sets_the_labs_part(
    ctx: RenderContext,
) -> None:
    from dataclasses import replace

    from lab.software.postfix import lab_owned, user_tables

    files = {
        "main.cf": "relayhost = [smtp.isp.example]\n"
        "smtpd_recipient_restrictions = check_recipient_access hash:/etc/postfix/access,"
        " reject_unauth_destination\ntransport_maps = lmdb:/etc/postfix/transport\n"
        "virtual_alias_maps = hash:/etc/postfix/virtual\n",
        "access": "jo@office.example 550 gone\n",
        "transport": "partner.example smtp:[10.0.0.1]\n",
    }
    own = replace(ctx, config_files=files)
    adapter = PostfixAdapter()
    rendered = adapter.render(own)
    assert rendered["/etc/postfix/main.cf"] == files["main.cf"]
    assert rendered["/etc/postfix/access"] == files["access"]
    assert "/etc/postfix/generic" not in rendered  # nothing of the node's is rendered
    commands = adapter.prepare_commands(own)
    postconf = next(c for c in commands if c[:2] == ["postconf", "-e"])
    assert postconf[2:] == [f"{k}={v}" for k, v in lab_owned(own).items()]
    assert "myhostname=moriah.shofar.org.uk" in postconf
    assert "maillog_file=/dev/stdout" in postconf
    assert not any(arg.startswith("relayhost=") for arg in postconf)
    # the maps among the user's files are built; a map not among them is the user's affair
    assert [c for c in commands if c[0] == "postmap"] == [
        ["postmap", "hash:/etc/postfix/access"],
        ["postmap", "lmdb:/etc/postfix/transport"],
    ]
    assert user_tables({"main.cf": "x = hash:/etc/postfix/virtual"}) == []


def test_a_users_config_directory_is_read_for_the_node(tmp_path: Path) -> None:
    from lab.errors import LabError
    from lab.software.userconfig import read_config

    (tmp_path / "main.cf").write_text("myorigin = example.com\n")
    (tmp_path / "access").write_text("a@b REJECT\n")
    (tmp_path / ".hidden").write_text("x")
    (tmp_path / "sub").mkdir()
    assert read_config(tmp_path) == {
        "access": "a@b REJECT\n",
        "main.cf": "myorigin = example.com\n",
    }
    assert read_config(tmp_path / "main.cf") == {"main.cf": "myorigin = example.com\n"}
    with pytest.raises(LabError, match="no such file or directory"):
        read_config(tmp_path / "gone")
    (tmp_path / "big").write_bytes(b"x" * ((1 << 20) + 1))
    with pytest.raises(LabError, match="too big"):
        read_config(tmp_path)


def test_sender_checks_and_the_hop_limit_are_rendered(ctx: RenderContext) -> None:
    from dataclasses import replace

    node = ctx.node.model_copy(deep=True)
    node.policy.verify_sender_domain = True
    node.policy.max_received = 12
    params = main_cf(replace(ctx, node=node))
    assert params["smtpd_sender_restrictions"] == "reject_unknown_sender_domain"
    assert params["unknown_address_reject_code"] == "553"
    assert params["hopcount_limit"] == "12"
    assert "smtpd_sender_restrictions" not in main_cf(ctx)


def test_relay_domains_are_rendered(ctx: RenderContext) -> None:
    """A backup MX: relay_domains as Postfix's; with a smarthost (relayhost) too, a
    transport entry sends their mail to their own MX, as the built-in MTA does."""
    from dataclasses import replace

    assert "relay_domains" not in main_cf(ctx) and "transport_maps" not in main_cf(ctx)
    node = ctx.node.model_copy(deep=True)
    node.relay_domains = ["example.org", "example.net"]
    params = main_cf(replace(ctx, node=node))
    assert params["relay_domains"] == "example.org, example.net"
    assert params["relayhost"] == "[mail.uklinux.net]"
    assert params["transport_maps"] == (
        "inline:{ example.org=relay:example.org, example.net=relay:example.net }"
    )
    node.smarthost = None
    params = main_cf(replace(ctx, node=node))
    assert params["relay_domains"] == "example.org, example.net"
    assert "transport_maps" not in params


def test_fields_postfix_cannot_honour_are_refused_with_the_node_named() -> None:
    from lab.errors import LabError
    from lab.software import check_topology

    topology = load(ROOT / "topologies" / "home-dialup-postfix.yaml").model.model_copy(deep=True)
    hub = topology.nodes["hub"]
    hub.policy.expn = 250
    hub.policy.spf = type(hub.policy.spf)("reject")
    with pytest.raises(LabError) as caught:
        check_topology(topology, "docker")
    text = str(caught.value)
    assert "node 'hub' runs postfix" in text
    assert "policy.expn: 250: Postfix has no EXPN command" in text
    assert "policy.spf: reject" in text
    # a user's own main.cf says for itself what it does
    hub.config.smtp = ROOT / "topologies" / "office-postfix"
    check_topology(topology, "docker")


def test_a_delivery_over_tls_says_so() -> None:
    """smtp_tls_loglevel 1 logs the TLS handshake of each smtp process before its
    deliveries: a delivery by that process to that relay went over TLS."""
    lines = LOG.replace(
        "Dec 04 19:15:00 moriah postfix/smtp[217]: BE0E218C096",
        "Dec 04 19:15:00 moriah postfix/smtp[217]: Verified TLS connection established to"
        " mail.uklinux.net[10.20.0.25]:25: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384"
        " (256/256 bits)\nDec 04 19:15:00 moriah postfix/smtp[217]: BE0E218C096",
    )
    results = [data for kind, data in feed(lines) if kind == "delivery.result"]
    assert [r.get("tls") for r in results] == [None, True]  # deferred: no tls field
    plain = [data for kind, data in feed(LOG) if kind == "delivery.result"]
    assert plain[-1]["tls"] is False


def test_masquerading_as_a_whole_address_maps_every_local_part_to_it() -> None:
    """lg45's fix: every sender at home becomes joe.bloggs@isp.com (not
    "joe@joe.bloggs"@isp.com)."""
    from lab.software.postfix import generic_map
    from lab.topology.model import Masquerade

    whole = Masquerade.model_validate({"as": "joe.bloggs@isp.com", "domains": ["home"]})
    assert generic_map(whole) == "/^(.+)@home$/\tjoe.bloggs@isp.com\n"
    domain = Masquerade.model_validate({"as": "isp.com", "domains": ["home"]})
    assert generic_map(domain) == "/^(.+)@home$/\t${1}@isp.com\n"


def test_a_header_only_masquerade_leaves_the_envelope_alone() -> None:
    """lg45 as the seed found it (masquerade.header without envelope): no
    smtp_generic_maps, which would rewrite the envelope sender too, but smtp_header_checks
    REPLACE rules for From:, Sender: and Reply-To: on the way out."""
    import re

    from lab.software.postfix import header_checks

    topology = load(ROOT / "topologies" / "lg45-envelope.yaml").model
    heaven = topology.nodes["heaven"]
    heaven.software.smtp = Software.postfix
    ctx = RenderContext(
        name="heaven",
        node=heaven,
        topology=topology,
        hostname="heaven.home",
        addresses={"home": "192.168.1.1", "internet": "10.30.5.123"},
        mail_root="/var/lib/maillab/mail",
    )
    params = main_cf(ctx)
    assert "smtp_generic_maps" not in params
    assert params["smtp_header_checks"] == "regexp:/etc/postfix/header_checks"
    assert heaven.masquerade is not None
    rules = header_checks(heaven.masquerade)
    assert PostfixAdapter().render(ctx)["/etc/postfix/header_checks"] == rules
    # the rule as Postfix's regexp table applies it (POSIX classes as Python's)
    (rule,) = rules.splitlines()
    pattern, replace = rule[1:].split("/ REPLACE ")
    regex = re.compile(pattern.replace("[:space:]", r"\s"), re.IGNORECASE)

    def rewritten(header: str) -> str:
        found = regex.match(header)
        if found is None:
            return header
        return re.sub(r"\$\{(\d)\}", lambda m: found.group(int(m.group(1))) or "", replace)

    assert rewritten("From: joe@home") == "From: joe.bloggs@isp.com"
    assert rewritten("From: Joe <joe@home>") == "From: Joe <joe.bloggs@isp.com>"
    assert rewritten("Reply-To: joe@home (Joe)") == "Reply-To: joe.bloggs@isp.com (Joe)"
    assert rewritten("From: Your Dad") == "From: Your Dad"
    assert rewritten("From: joe@homeland.org") == "From: joe@homeland.org"
    assert rewritten("To: emi@home") == "To: emi@home"
