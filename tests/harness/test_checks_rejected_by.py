"""`expect: rejected: {by: NODE}`: a refusal at a later hop (the smarthost), asserted from
the lab's events, on each backend of --lab-backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.harness.checks import run_check
from lab.topology import load_text

# A LAN client, a hub on a dial-up line (down at first) with the ISP as its smarthost;
# the ISP has no mailbox `nobody`, and refuses it at RCPT when the hub relays it.
WORLD = """\
name: refused-later
networks:
  lan: {subnet: 192.168.10.0/24}
  internet: {subnet: 10.20.0.0/16}
links:
  dialup: {node: hub, network: internet, state: down, on_up: [flush]}
dns:
  zones:
    example.net:
      "@": {MX: "10 mail.example.net"}
nodes:
  ns: {role: dns, networks: {internet: 10.20.0.53}}
  hub:
    role: hub
    hostname: hub.office.test
    networks: {lan: 192.168.10.1, internet: 10.20.9.1}
    local_domains: [office.test]
    users: [ann]
    relay_from: [lan]
    smarthost: mail.example.net
  isp:
    role: isp
    hostname: mail.example.net
    networks: {internet: 10.20.0.25}
    local_domains: [example.net]
    users: [postmaster, carol]
    relay_from: [10.20.9.0/24]
  pc1: {role: client, networks: [lan], submit_to: hub}
"""

STEPS = """
    - send: {from: pc1, mail_from: ann@office.test, to: nobody@example.net}
    - expect: {queued: {on: hub}}
    - link: {dialup: up}
    - expect: {rejected: %s, within: %s}
"""


def run(expect: str, backend: str, tmp_path: Path, within: float = 10) -> str:
    steps = STEPS % (expect, within)
    topology = load_text(WORLD + "checks:\n  refused:\n" + steps, "t.yaml").model
    result = run_check(topology, "refused", backend=backend, state_dir=tmp_path / "lab")
    return result.report()


def test_refusal_by_the_smarthost(lab_backend: str, tmp_path: Path) -> None:
    report = run("{by: isp, code: 550, stage: rcpt}", lab_backend, tmp_path)
    assert "PASS" in report and "FAIL" not in report, report
    assert "isp refused at rcpt: 550" in report, report


@pytest.mark.parametrize(
    ("expect", "why"),
    [
        ("{by: isp, code: 451, stage: rcpt}", "isp refused at rcpt: 550"),
        ("{by: isp, stage: mail}", "isp refused at rcpt: 550"),
        ("{by: hub}", "hub refused nothing"),
    ],
)
def test_a_refusal_elsewhere_does_not_pass(
    expect: str, why: str, lab_backend: str, tmp_path: Path
) -> None:
    report = run(expect, lab_backend, tmp_path, within=3)
    assert "FAIL" in report, report
    assert why in report, report
