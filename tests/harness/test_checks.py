"""A topology's `checks:` run step by step: the runner, `maillab check`, and pytest items."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from lab.cli import main
from lab.harness.checks import (
    CheckResult,
    UnknownCheckError,
    describe,
    run_check,
    run_checks,
    select_checks,
)
from lab.topology import load_text
from lab.topology.checks import Step
from lab.topology.model import Topology
from lab.topology.software import ServiceSoftware, Software

pytest_plugins = ["pytester"]

# A LAN client, a hub on a dial-up line (down at first), an ISP with a POP maildrop the
# hub fetches into bob's mailbox, and a remote MTA that the ISP does not relay for.
WORLD = """\
name: small-office
networks:
  lan: {subnet: 192.168.10.0/24}
  internet: {subnet: 10.20.0.0/16}
links:
  dialup: {node: hub, network: internet, state: down, on_up: [flush]}
dns:
  zones:
    example.net:
      "@": {MX: "10 mail.example.net"}
      pop: {CNAME: mail.example.net}
nodes:
  ns: {role: dns, networks: {internet: 10.20.0.53}}
  hub:
    role: hub
    hostname: hub.office.test
    networks: {lan: 192.168.10.1, internet: 10.20.9.1}
    local_domains: [office.test]
    users: [ann, bob]
    relay_from: [lan]
    smarthost: mail.example.net
    fetch:
      - {server: pop.example.net, user: office, password: s3cret, to: bob}
  isp:
    role: isp
    hostname: mail.example.net
    networks: {internet: 10.20.0.25}
    local_domains: [example.net]
    users: [postmaster, carol]
    relay_from: [10.20.9.0/24]
    mailboxes: {office: {password: s3cret}}
  other:
    role: mta
    hostname: mx.other.test
    networks: {internet: 10.20.5.25}
    local_domains: [other.test]
    users: [dave]
  pc1: {role: client, networks: [lan], submit_to: hub}
"""

SEND_CAROL = "- send: {from: pc1, mail_from: ann@office.test, to: carol@example.net}"
SEND_BOB = "- send: {from: pc1, mail_from: ann@office.test, to: bob@office.test, subject: hi}"


def world(checks: dict[str, str]) -> Topology:
    """WORLD with these checks (name -> the YAML of its steps)."""
    text = WORLD + "checks:\n"
    for name, steps in checks.items():
        text += f"  {name}:\n" + textwrap.indent(textwrap.dedent(steps).strip(), "    ") + "\n"
    return load_text(text, "office.yaml").model


def run(steps: str) -> CheckResult:
    return run_check(world({"c": steps}), "c", file="office.yaml")


def statuses(result: CheckResult) -> list[str]:
    return [s.status for s in result.steps]


def assert_passed(result: CheckResult) -> None:
    assert result.ok, result.report()
    assert all(s.status == "passed" for s in result.steps), result.report()


# ---------------------------------------------------------------------------------------
# passing checks: every step kind


def test_send_queued_link_delivered() -> None:
    result = run(
        f"""
        {SEND_CAROL}
        - expect: {{queued: {{on: hub, to: carol@example.net}}}}
        - link: {{dialup: up}}
        - expect:
            delivered:
              to: carol@example.net
              node: isp
              mailbox: carol
              envelope_from: ann@office.test
              headers: {{From: ann@office.test}}
        """
    )
    assert_passed(result)
    assert [s.description for s in result.steps] == [
        "send ann@office.test -> carol@example.net from pc1",
        "expect queued on hub for carol@example.net",
        "link dialup up",
        "expect delivered to carol@example.net on isp in mailbox carol with envelope sender"
        " ann@office.test and From: ann@office.test",
    ]
    assert re.fullmatch(r"accepted by hub\.office\.test as [0-9A-F]+", result.steps[0].detail)
    assert result.steps[1].detail.startswith(result.steps[0].detail.split()[-1] + " queued on hub")
    assert result.steps[2].detail == "dialup is up"
    assert result.steps[3].detail == (
        "delivered, envelope sender ann@office.test, From: ann@office.test"
    )
    assert result.name == "c" and result.topology == "small-office" and result.duration > 0
    assert [s.index for s in result.steps] == [1, 2, 3, 4]


def test_fetch_and_flush() -> None:
    result = run(
        """
        - link: {dialup: up}
        - send: {from: pc1, mail_from: ann@office.test, to: office@example.net, subject: box}
        - expect: {delivered: {to: office@example.net, node: isp, mailbox: office}}
        - fetch: hub
        - expect:
            delivered: {to: bob@office.test, node: hub, mailbox: bob, headers: {Subject: box}}
        - flush: hub
        """
    )
    assert_passed(result)
    assert result.steps[3].description == "fetch mail on hub"
    assert result.steps[3].detail == "fetched 1 message(s)"
    assert result.steps[5].description == "flush the queue of hub"
    assert result.steps[5].detail == "tried 0 message(s)"


def test_advance_bounced_lands_and_not_delivered() -> None:
    result = run(
        f"""
        {SEND_CAROL}
        - expect: {{queued: {{on: hub}}}}
        - advance: 5d
        - expect:
            bounced:
              recipient: carol@example.net
              by: hub
              to: ann@office.test
              status: 4.4.7
              lands: {{to: ann@office.test, node: hub, mailbox: ann, envelope_from: ""}}
        - expect: {{not_delivered: {{to: carol@example.net, node: isp}}}}
        - expect: {{not_delivered: {{to: ann@office.test, envelope_from: ann@office.test}}}}
        """
    )
    assert_passed(result)
    advance, bounced = result.steps[2], result.steps[3]
    assert advance.description == "advance the clock 5d"
    assert re.fullmatch(r"\d+ timer\(s\) ran", advance.detail)
    assert bounced.description == (
        "expect a bounce for carol@example.net from hub to ann@office.test with status 4.4.7,"
        " delivered to ann@office.test on hub in mailbox ann with envelope sender <>"
    )
    assert re.fullmatch(
        r"hub sent a bounce \([0-9A-F]+\) to ann@office.test for carol@example.net,"
        r" status 4\.4\.7; it landed on hub in mailbox ann",
        bounced.detail,
    )
    assert result.steps[4].description == "expect not delivered to carol@example.net on isp"
    assert result.steps[4].detail == "not delivered"


PICKY = """\
name: picky
networks:
  home: {subnet: 192.168.1.0/24}
  internet: {subnet: 10.30.0.0/16}
dns:
  zones:
    isp.com: {"@": {MX: "10 smtp.isp.com"}}
    picky.org: {"@": {MX: "10 mx.picky.org"}}
nodes:
  dns: {role: dns, networks: {internet: 10.30.0.53}}
  heaven:
    role: mta
    hostname: heaven.home
    networks: {home: 192.168.1.1, internet: 10.30.5.123}
    local_domains: [home]
    users: [joe]
    relay_from: [home]
    smarthost: smtp.isp.com
  isp:
    role: mta
    hostname: smtp.isp.com
    networks: {internet: 10.30.0.25}
    local_domains: [isp.com]
    users: [postmaster]
    relay_from: [10.30.5.0/24]
  picky:
    role: mta
    hostname: mx.picky.org
    networks: {internet: 10.30.2.25}
    local_domains: [picky.org]
    users: [friend]
    policy: {verify_sender_domain: true}
  pc: {role: client, networks: {home: 192.168.1.10}, submit_to: heaven}
checks:
  lands:
    - send: {from: pc, mail_from: joe@home, to: [friend@picky.org]}
    - expect:
        bounced:
          recipient: friend@picky.org
          to: joe@home
          lands: {to: postmaster@isp.com, node: isp, mailbox: postmaster}
"""


def test_bounce_that_double_bounces_lands_with_the_postmaster() -> None:
    """Seed lg45: picky refuses joe@home, the ISP's bounce to joe@home cannot be delivered,
    and the bounce of the bounce lands with the ISP's postmaster. `lands` follows the
    bounce's own trace, DSNs it caused included."""
    result = run_check(load_text(PICKY).model, "lands")
    assert_passed(result)
    assert result.steps[1].detail.endswith("it landed on isp in mailbox postmaster")


def test_rejected_with_code_and_stage() -> None:
    result = run_check(
        world(
            {
                "unknown-user": """
                    - send: {from: pc1, mail_from: ann@office.test, to: nobody@office.test}
                    - expect: {rejected: {code: 550, stage: rcpt}}
                """,
                "relay-refused": """
                    - send:
                        {from: other, via: isp, mail_from: dave@other.test, to: v@else.test}
                    - expect: {rejected: {code: 550, stage: rcpt}, within: 5s}
                """,
            }
        ),
        "relay-refused",
    )
    assert_passed(result)
    send, rejected = result.steps
    assert send.description == "send dave@other.test -> v@else.test from other via isp"
    assert send.detail == (
        "refused by mail.example.net at rcpt: 550 5.7.1 <v@else.test>... Relaying denied"
    )
    assert rejected.description == "expect a rejection with 550 at rcpt"
    assert rejected.detail == send.detail


def test_rejected_without_code_or_stage_accepts_any_refusal() -> None:
    result = run(
        """
        - send: {from: pc1, mail_from: ann@office.test, to: nobody@office.test}
        - expect: {rejected: {}}
        """
    )
    assert_passed(result)
    assert result.steps[1].description == "expect a rejection"


# ---------------------------------------------------------------------------------------
# failing checks: what was expected, what happened instead


def failed(result: CheckResult, index: int) -> str:
    assert not result.ok
    step = result.steps[index - 1]
    assert step.status == "failed", result.report()
    assert result.failed_step is step
    return step.detail


def test_delivered_fails_with_what_happened_and_the_trace() -> None:
    result = run(
        f"""
        {SEND_CAROL}
        - expect: {{delivered: {{to: carol@example.net, node: isp, mailbox: carol}}, within: 0.3s}}
        """
    )
    detail = failed(result, 2)
    head, _, happened = detail.partition("\n--- what happened ---\n")
    assert head == "expected a delivery to carol@example.net on isp in mailbox carol within 0.3s"
    assert "hub        queue.deferred" in happened
    assert "hub's link to internet is down" in happened
    trace = result.steps[1].trace
    assert trace.startswith("--- trace of the last message sent (step 1) ---\n")
    assert "queue.queued" in trace and "queue.deferred" in trace
    assert result.steps[1].description.endswith("(within 300ms)")


def test_delivered_with_a_wrong_header_fails() -> None:
    result = run(
        f"""
        {SEND_BOB}
        - expect: {{delivered: {{to: bob@office.test, headers: {{Subject: goodbye}}}}}}
        """
    )
    detail = failed(result, 2)
    assert detail.startswith(
        "delivered to bob@office.test on hub, but header Subject: is 'hi',"
        " expected it to contain 'goodbye'\n--- what happened ---\n"
    )


def test_not_delivered_fails() -> None:
    result = run(
        f"""
        {SEND_BOB}
        - expect: {{not_delivered: {{to: bob@office.test, node: hub}}}}
        """
    )
    detail = failed(result, 2)
    assert detail.startswith(
        "expected no delivery to bob@office.test, but it was delivered on hub\n"
        "--- what happened ---\n"
    )
    assert "mailbox.delivered" in detail


def test_not_delivered_with_envelope_and_headers_fails() -> None:
    result = run(
        f"""
        {SEND_BOB}
        - expect:
            not_delivered:
              to: bob@office.test
              envelope_from: ann@office.test
              headers: {{Subject: hi}}
        """
    )
    detail = failed(result, 2)
    assert detail.startswith(
        "expected no delivery to bob@office.test with envelope sender ann@office.test and"
        " Subject: hi, but it was delivered on hub in mailbox bob\n--- what happened ---\n"
    )


def test_queued_fails() -> None:
    result = run(
        f"""
        {SEND_BOB}
        - expect: {{queued: {{on: hub}}, within: 0.3s}}
        """
    )
    detail = failed(result, 2)
    assert detail.startswith(
        "expected a message queued on hub; the queue is empty\n--- what happened ---\n"
    )
    assert "mailbox.delivered" in detail


def test_bounced_fails() -> None:
    result = run(
        f"""
        {SEND_CAROL}
        - expect: {{bounced: {{recipient: carol@example.net, by: hub}}, within: 0.3s}}
        """
    )
    detail = failed(result, 2)
    assert detail.startswith(
        "expected a bounce for carol@example.net from hub within 0.3s\n--- what happened ---\n"
    )
    assert "queue.deferred" in detail


def test_bounced_that_lands_elsewhere_fails_with_the_bounce_trace() -> None:
    result = run(
        f"""
        {SEND_CAROL}
        - advance: 5d
        - expect:
            bounced: {{recipient: carol@example.net, lands: {{to: bob@office.test}}}}
            within: 0.3s
        """
    )
    detail = failed(result, 3)
    lines = detail.splitlines()
    assert lines[0] == (
        "expected a bounce for carol@example.net, delivered to bob@office.test within 300ms;"
    )
    assert re.fullmatch(
        r"hub sent a bounce \([0-9A-F]+\) to ann@office.test for carol@example.net,"
        r" status 4\.4\.7, but it was not delivered to bob@office.test",
        lines[1],
    )
    assert lines[2] == "--- what happened to the bounce ---"
    assert any("mailbox.delivered" in line and "user=ann" in line for line in lines[3:])
    # five days of retries: the trace keeps its first 10 and last 40 events
    trace = result.steps[2].trace.splitlines()
    assert re.fullmatch(r"\.\.\. \(\d+ events left out\) \.\.\.", trace[11])
    assert len(trace) == 1 + 10 + 1 + 40


def test_rejected_fails_when_the_refusal_differs() -> None:
    result = run(
        """
        - send: {from: pc1, mail_from: ann@office.test, to: nobody@office.test}
        - expect: {rejected: {code: 554, stage: mail}}
        """
    )
    assert failed(result, 2) == (
        "expected a rejection with 554 at mail of the message sent in step 1\n"
        "it was refused by hub.office.test at rcpt:"
        " 550 5.1.1 <nobody@office.test>... User unknown"
    )
    assert result.steps[1].trace == (
        "--- trace of the last message sent (step 1) ---\n"
        "(not accepted by hub.office.test: 550 5.1.1 <nobody@office.test>... User unknown)"
    )


def test_rejected_fails_when_the_message_is_accepted() -> None:
    result = run(
        f"""
        {SEND_BOB}
        - expect: {{rejected: {{code: 550, stage: rcpt}}}}
        """
    )
    detail = failed(result, 2)
    assert re.fullmatch(
        r"expected a rejection with 550 at rcpt of the message sent in step 1\n"
        r"it was accepted by hub\.office\.test as [0-9A-F]+",
        detail,
    )


def test_rejected_with_nothing_sent_fails() -> None:
    result = run("- expect: {rejected: {code: 550}}")
    assert failed(result, 1) == (
        "expected a rejection with 550\nbut no message was sent before this step"
    )
    assert result.steps[0].trace == ""


def test_a_refused_send_fails_unless_a_rejection_is_expected() -> None:
    result = run(
        """
        - send: {from: pc1, mail_from: ann@office.test, to: nobody@office.test}
        - expect: {delivered: {to: nobody@office.test}}
        """
    )
    assert failed(result, 1) == (
        "expected the message to be accepted (no `expect: rejected` follows this step)\n"
        "it was refused by hub.office.test at rcpt: 550 5.1.1 <nobody@office.test>..."
        " User unknown"
    )
    assert statuses(result) == ["failed", "not run"]


def test_a_check_stops_at_its_first_failure() -> None:
    result = run(
        f"""
        {SEND_BOB}
        - expect: {{queued: {{on: hub}}, within: 0.2s}}
        - link: {{dialup: up}}
        - expect: {{delivered: {{to: bob@office.test}}}}
        """
    )
    assert statuses(result) == ["passed", "failed", "not run", "not run"]
    assert [s.ok for s in result.steps] == [True, False, False, False]
    assert result.steps[2].detail == "" and result.steps[2].duration == 0
    report = result.report().splitlines()
    assert report[0] == "check c (office.yaml, inprocess backend)"
    assert report[1].startswith("  PASS  1. send ann@office.test -> bob@office.test from pc1: ")
    assert report[2] == "  FAIL  2. expect queued on hub (within 200ms)"
    assert report[3] == "        expected a message queued on hub; the queue is empty"
    assert "        --- trace of the last message sent (step 1) ---" in report
    assert report[-4] == "  ----  3. link dialup up (not run)"
    assert report[-3] == "  ----  4. expect delivered to bob@office.test (not run)"
    seed = result.seed
    assert report[-2] == f"  seed {seed}: `maillab check --seed {seed}` replays this run"
    assert re.fullmatch(r"FAIL c: step 2 of 4 failed \(\d+\.\d\ds\)", report[-1])


def test_a_step_that_raises_a_lab_error_fails_the_step() -> None:
    """A model built in code skips the file's cross-reference checks; the lab refuses."""
    topology = world({"c": "- advance: 1m\n- flush: hub"})
    topology.checks["c"].append(Step(link={"modem": "up"}))
    result = run_check(topology, "c")
    assert statuses(result) == ["passed", "passed", "failed"]
    assert result.steps[2].detail == "unknown link 'modem'; expected one of: dialup"


def test_on_step_reports_every_step_in_order() -> None:
    seen: list[tuple[int, str]] = []
    run_check(
        world({"c": f"{SEND_BOB}\n- expect: {{queued: {{on: hub}}, within: 0.1s}}\n- flush: hub"}),
        "c",
        on_step=lambda s: seen.append((s.index, s.status)),
    )
    assert seen == [(1, "passed"), (2, "failed"), (3, "not run")]


def test_every_check_runs_on_a_fresh_lab() -> None:
    topology = world(
        {
            "sends": f"{SEND_BOB}\n- expect: {{delivered: {{to: bob@office.test}}}}",
            "sees-nothing": "- expect: {not_delivered: {to: bob@office.test}}",
            "link-is-down-again": f"{SEND_CAROL}\n- expect: {{queued: {{on: hub}}}}",
            "raises-link": "- link: {dialup: up}",
        }
    )
    results = run_checks(topology)
    assert [r.name for r in results] == [
        "sends",
        "sees-nothing",
        "link-is-down-again",
        "raises-link",
    ]
    assert all(r.ok for r in results), "\n".join(r.report() for r in results)
    assert [r.name for r in run_checks(topology, ["raises-link", "sends"])] == [
        "raises-link",
        "sends",
    ]


def test_unknown_check_names_list_the_known_ones() -> None:
    topology = world({"one": "- flush: hub", "two": "- flush: hub"})
    with pytest.raises(UnknownCheckError) as excinfo:
        run_check(topology, "three", file="office.yaml")
    assert str(excinfo.value) == (
        "office.yaml (small-office): unknown check 'three'; known checks: one, two"
    )
    assert excinfo.value.exit_code == 2
    with pytest.raises(UnknownCheckError, match="unknown checks 'x', 'y'; known checks: one"):
        select_checks(topology, ["one", "x", "y"])


def test_a_lab_that_cannot_come_up_fails_the_check() -> None:
    topology = world({"c": "- flush: hub"})
    topology.nodes["hub"].software = ServiceSoftware(smtp=Software.postfix)
    result = run_check(topology, "c", backend="inprocess")
    assert not result.ok
    assert statuses(result) == ["not run"]
    assert result.error.startswith("the lab could not be brought up: node 'hub': smtp software")
    assert re.fullmatch(r"FAIL c: the lab did not come up \(\d+\.\d\ds\)", result.summary())
    assert result.report().splitlines()[1:3] == [
        "  ----  1. flush the queue of hub (not run)",
        "  the lab could not be brought up: node 'hub': smtp software 'postfix' (Postfix, in a"
        " container (Docker backend)) does not run on the inprocess backend, which runs the"
        " built-in software only; use --backend docker (or --backend auto)",
    ]


def test_describe_link_and_send_to_many() -> None:
    topology = world(
        {
            "c": """
                - link: {dialup: up}
                - send: {from: pc1, mail_from: "", to: [a@example.net, b@example.net]}
                - expect: {rejected: {stage: mail}, within: 1m}
            """
        }
    )
    assert [describe(s) for s in topology.checks["c"]] == [
        "link dialup up",
        "send <> -> a@example.net, b@example.net from pc1",
        "expect a rejection at mail",
    ]


def test_result_as_json() -> None:
    result = run(f"{SEND_BOB}\n- expect: {{queued: {{on: hub}}, within: 0.1s}}")
    data = json.loads(json.dumps(result.to_json()))
    assert data["check"] == "c" and data["topology"] == "small-office"
    assert data["file"] == "office.yaml" and data["backend"] == "inprocess"
    assert data["ok"] is False and data["error"] == ""
    assert [s["status"] for s in data["steps"]] == ["passed", "failed"]
    assert set(data["steps"][1]) == {
        "index",
        "description",
        "status",
        "ok",
        "detail",
        "trace",
        "duration",
    }


# ---------------------------------------------------------------------------------------
# maillab check


GOOD = WORLD + textwrap.dedent(
    f"""\
    checks:
      local:
        {SEND_BOB}
        - expect: {{delivered: {{to: bob@office.test, node: hub, mailbox: bob}}}}
      refused:
        - send: {{from: pc1, mail_from: ann@office.test, to: nobody@office.test}}
        - expect: {{rejected: {{code: 550, stage: rcpt}}}}
    """
)
BAD = GOOD.replace("name: small-office", "name: broken-office").replace(
    "- expect: {delivered: {to: bob@office.test, node: hub, mailbox: bob}}",
    "- expect: {delivered: {to: bob@office.test, node: isp}, within: 0.2s}",
)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {"good": tmp_path / "good.yaml", "bad": tmp_path / "bad.yaml"}
    paths["good"].write_text(GOOD)
    paths["bad"].write_text(BAD)
    return paths


def test_cli_all_checks_pass(files: dict[str, Path]) -> None:
    result = CliRunner().invoke(main, ["check", str(files["good"])])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"check local ({files['good']}, inprocess backend)"
    assert lines[1].startswith("  PASS  1. send ann@office.test -> bob@office.test from pc1: ")
    assert lines[2].startswith("  PASS  2. expect delivered to bob@office.test on hub in mailbox")
    assert re.fullmatch(r"PASS local: 2 steps \(\d+\.\d\ds\)", lines[3])
    assert "  PASS  2. expect a rejection with 550 at rcpt: refused by hub.office.test" in (
        result.stdout
    )
    assert re.fullmatch(r"2 checks: 2 passed, 0 failed \(\d+\.\d\ds\)", lines[-1])
    assert result.stderr == ""


def test_cli_named_check(files: dict[str, Path]) -> None:
    result = CliRunner().invoke(main, ["check", str(files["good"]), "refused"])
    assert result.exit_code == 0, result.output
    assert "check refused" in result.stdout and "check local" not in result.stdout
    assert result.stdout.splitlines()[-1].startswith("1 check: 1 passed, 0 failed")


def test_cli_a_failing_check_exits_1(files: dict[str, Path]) -> None:
    result = CliRunner().invoke(main, ["check", str(files["good"]), str(files["bad"])])
    assert result.exit_code == 1, result.output
    out = result.stdout
    assert "  FAIL  2. expect delivered to bob@office.test on isp (within 200ms)\n" in out
    assert "        expected a delivery to bob@office.test on isp within 0.2s\n" in out
    assert "        --- what happened ---\n" in out
    assert "        --- trace of the last message sent (step 1) ---\n" in out
    assert "FAIL local: step 2 of 2 failed" in out
    assert re.search(r"4 checks: 3 passed, 1 failed \(\d+\.\d\ds\)\n$", out)
    assert "Traceback" not in result.output


def test_cli_json(files: dict[str, Path]) -> None:
    result = CliRunner().invoke(main, ["check", "--json", str(files["bad"])])
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert [(r["check"], r["ok"]) for r in data] == [("local", False), ("refused", True)]
    assert data[0]["file"] == str(files["bad"]) and data[0]["topology"] == "broken-office"
    step = data[0]["steps"][1]
    assert step["status"] == "failed" and step["ok"] is False
    assert step["detail"].startswith("expected a delivery to bob@office.test on isp")
    assert step["trace"].startswith("--- trace of the last message sent (step 1) ---")


def test_cli_an_invalid_topology_exits_2(files: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(GOOD.replace("- expect: {rejected:", "- expekt: {rejected:"))
    result = CliRunner().invoke(main, ["check", str(files["good"]), str(broken)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"{broken}:")
    assert "checks.refused[1]" in result.stderr
    assert result.stdout == ""  # nothing runs before every file is valid
    assert "Traceback" not in result.output
    missing = CliRunner().invoke(main, ["check", str(tmp_path / "missing.yaml")])
    assert missing.exit_code == 2
    assert "no such file" in missing.stderr


def test_cli_an_unknown_check_exits_2_with_the_known_names(files: dict[str, Path]) -> None:
    result = CliRunner().invoke(main, ["check", str(files["good"]), "locl"])
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"{files['good']} (small-office): unknown check 'locl'; known checks: local, refused\n"
    )
    both = CliRunner().invoke(main, ["check", str(files["good"]), str(files["bad"]), "nope"])
    assert both.exit_code == 2
    assert both.stderr == (
        f"unknown check 'nope'; known checks: {files['good']}: local, refused;"
        f" {files['bad']}: local, refused\n"
    )


def test_cli_needs_a_file() -> None:
    result = CliRunner().invoke(main, ["check", "local"])
    assert result.exit_code == 2
    assert "give at least one topology FILE" in result.output


# ---------------------------------------------------------------------------------------
# pytest: checks as test items


def test_pytest_collects_checks_as_items(pytester: pytest.Pytester) -> None:
    pytester.mkdir("topologies")
    text = GOOD.replace("  refused:\n", "  fails:\n").replace(
        "- expect: {rejected: {code: 550, stage: rcpt}}",
        "- expect: {rejected: {code: 554, stage: mail}}",
    )
    (pytester.path / "topologies" / "office.yaml").write_text(text)
    (pytester.path / "topologies" / "nochecks.yaml").write_text(WORLD)
    (pytester.path / "topologies" / "schema.json").write_text("{}")
    (pytester.path / "elsewhere.yaml").write_text(GOOD)  # not under topologies/

    collected = pytester.runpytest_subprocess("--collect-only", "-q")
    collected.stdout.fnmatch_lines(
        ["topologies/office.yaml::local", "topologies/office.yaml::fails", "2 tests collected*"]
    )

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rf")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ fails _*",
            "check fails (topologies/office.yaml, inprocess backend)",
            "  PASS  1. send ann@office.test -> nobody@office.test from pc1: refused by*",
            "  FAIL  2. expect a rejection with 554 at mail",
            "        expected a rejection with 554 at mail of the message sent in step 1",
            "        it was refused by hub.office.test at rcpt: 550 5.1.1*",
            "FAIL fails: step 2 of 2 failed*",
            "FAILED topologies/office.yaml::fails*",
        ]
    )
    assert "Traceback" not in result.stdout.str()

    one = pytester.runpytest_subprocess("topologies/office.yaml::local")
    one.assert_outcomes(passed=1)
    directory = pytester.runpytest_subprocess("topologies")
    directory.assert_outcomes(passed=1, failed=1)


def test_pytest_items_honour_lab_backend(pytester: pytest.Pytester) -> None:
    pytester.mkdir("topologies")
    (pytester.path / "topologies" / "office.yaml").write_text(GOOD)
    result = pytester.runpytest_subprocess("--lab-backend", "inprocess,docker", "--co", "-q")
    result.stdout.fnmatch_lines(
        [
            "topologies/office.yaml::local[[]inprocess[]]",
            "topologies/office.yaml::local[[]docker[]]",
            "topologies/office.yaml::refused[[]inprocess[]]",
            "topologies/office.yaml::refused[[]docker[]]",
        ]
    )
    single = pytester.runpytest_subprocess("--lab-backend", "inprocess", "--co", "-q")
    single.stdout.fnmatch_lines(
        ["topologies/office.yaml::local", "topologies/office.yaml::refused"]
    )
    bad = pytester.runpytest_subprocess("--lab-backend", "qemu")
    bad.stderr.fnmatch_lines(["*--lab-backend 'qemu': expected one or more of inprocess, docker*"])


def test_pytest_reports_an_invalid_topology_with_checks(pytester: pytest.Pytester) -> None:
    pytester.mkdir("topologies")
    (pytester.path / "topologies" / "office.yaml").write_text(
        GOOD.replace("- expect: {rejected:", "- expekt: {rejected:")
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*invalid topology*office.yaml*", "*checks.refused[[]1[]]*"])


def test_pytest_honours_the_lab_topologies_ini(pytester: pytest.Pytester) -> None:
    pytester.mkdir("labs")
    (pytester.path / "labs" / "office.yaml").write_text(GOOD)
    pytester.makeini("[pytest]\nlab_topologies = labs\n")
    result = pytester.runpytest_subprocess("--collect-only", "-q")
    result.stdout.fnmatch_lines(["labs/office.yaml::local", "labs/office.yaml::refused"])
