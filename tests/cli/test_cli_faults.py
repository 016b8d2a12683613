"""`maillab fault` and `maillab schedule` against a running lab (the control channel),
and `maillab check --seed`: the seed a failing check ran with is printed to replay it."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from test_cli_lab import ROOT, Maillab, fails, maillab  # noqa: F401  (the fixture)

HOURLY = ROOT / "topologies" / "hourly-dialup.yaml"


def test_faults_and_schedules_at_run_time(maillab: Maillab) -> None:  # noqa: F811
    maillab.ok("up", str(HOURLY), "-d", "--name", "hourly", "--seed", "11")
    status = maillab.ok("status", "--json").json
    assert status["seed"] == 11
    assert status["links"]["dialup"]["schedule"] == {"every": "1h", "for": "5m", "at": []}
    added = maillab.ok("fault", "add", "isp", "on: mail, rate: {messages: 1, per: 1m}")
    assert added.out.strip() == "isp: fault added"
    for to in ("paul@isp.test", "anna@isp.test"):
        maillab.ok("send", "--from-node", "pc1", "--mail-from", "eddy@home.test", "--to", to)
    maillab.ok("clock", "advance", "1h1m")  # the dial at 1h: one message through, one rate-limited
    lines = maillab.ok("events", "--json", "--kind", "fault.triggered").out.splitlines()
    assert [json.loads(line)["data"]["reply"] for line in lines] == [
        "421 4.7.0 too many messages, slow down"
    ]
    assert maillab.ok("fault", "clear", "isp").out.strip() == "isp: 1 fault(s) removed"
    rule = maillab.ok("fault", "dns", 'name: "*.isp.test", fault: servfail, until: 3h')
    assert rule.out.strip() == "dns: servfail for *.isp.test"
    assert maillab.ok("fault", "dns-clear").out.strip() == "dns: 1 rule(s) removed"
    scheduled = maillab.ok("schedule", "dialup", "every: 2h, for: 10m", "--json").json
    assert scheduled["schedule"]["every"] == "2h" and scheduled["next_dial"] > 0
    assert maillab.ok("schedule", "dialup", "--clear").out.strip() == "link dialup: no schedule"
    assert "schedule" not in maillab.ok("status", "--json").json["links"]["dialup"]
    maillab.ok("reset")
    assert maillab.ok("status", "--json").json["links"]["dialup"]["schedule"]["every"] == "1h"
    fails(
        maillab("fault", "add", "isp", "on: mail, chance: 2, reply: 451 later"),
        "fault: chance: Input should be less than or equal to 1",
    )
    fails(
        maillab("schedule", "dialup", "every: 1h, for: 2h"),
        "schedule: schedule: Value error, a dial must hang up before the next one: 'for' must"
        " be shorter than 'every'",
    )


CHANCY = """\
name: chancy
networks: {lan: {subnet: 192.168.10.0/24}}
nodes:
  hub:
    role: mta
    networks: {lan: 192.168.10.1}
    local_domains: [home.test]
    users: [eddy]
    faults: [{on: rcpt, reply: "451 4.3.0 dice", chance: 0.5}]
  pc1: {role: client, networks: {lan: 192.168.10.11}, submit_to: hub}
checks:
  all-six-land:
    - {send: {from: pc1, mail_from: eddy@home.test, to: eddy@home.test}}
    - {send: {from: pc1, mail_from: eddy@home.test, to: eddy@home.test}}
    - {send: {from: pc1, mail_from: eddy@home.test, to: eddy@home.test}}
    - {send: {from: pc1, mail_from: eddy@home.test, to: eddy@home.test}}
    - {send: {from: pc1, mail_from: eddy@home.test, to: eddy@home.test}}
    - {send: {from: pc1, mail_from: eddy@home.test, to: eddy@home.test}}
"""


def test_a_failing_check_prints_its_seed_and_the_seed_replays_it(
    maillab: Maillab,  # noqa: F811
    tmp_path: Path,
) -> None:
    topology = tmp_path / "chancy.yaml"
    topology.write_text(textwrap.dedent(CHANCY))
    first = maillab("check", str(topology), "--seed", "3")
    assert first.code == 1, first.out
    assert "seed 3: `maillab check --seed 3` replays this run" in first.out
    failed_at = [line for line in first.out.splitlines() if line.startswith("  FAIL")]
    again = maillab("check", str(topology), "--seed", "3")
    assert [line for line in again.out.splitlines() if line.startswith("  FAIL")] == failed_at
    outcomes = set()
    for seed in range(4):
        (result,) = json.loads(maillab("check", str(topology), "--seed", str(seed), "--json").out)
        outcomes.add(tuple(step["status"] for step in result["steps"]))
    assert len(outcomes) > 1  # other seeds fail elsewhere, or pass
