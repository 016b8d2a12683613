"""Warnings: what validates but probably does not do what was meant. An MX record or a
smarthost whose name has no address in the lab DNS makes mail bounce, which may be the
point of a scenario, so the file stays valid; `maillab validate` (and `up`) print the
warning with its place, and `validate --json` carries it. A mistyped name gets a "did you
mean", as an unknown node does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from lab.cli import main
from lab.errors import LabError, Problem, TopologyError
from lab.topology import load_text

BASE = """\
name: warn
networks:
  internet: {subnet: 10.20.0.0/16}
dns:
  zones:
    example.org:
      "@": {MX: "10 mx.example.org"}
      mx: {A: 10.20.0.25}
      broken: {fault: servfail}
      gone: {fault: nxdomain}
      relay: {CNAME: broken.example.org}
nodes:
  ns: {role: dns, networks: {internet: 10.20.0.53}}
  hub:
    role: mta
    hostname: hub.home.test
    networks: {internet: 10.20.9.1}
    local_domains: [home.test]
    users: [eddy]
    smarthost: mx.example.org
  isp:
    role: isp
    hostname: mx.example.org
    networks: {internet: 10.20.0.25}
    local_domains: [example.org]
    users: [user]
  pc: {role: client, networks: {internet: 10.20.9.11}, submit_to: hub}
"""

NO_ADDRESS = "(expected a node name, a node's hostname, an IP address or a name with an A record"


def change(old: str, new: str) -> str:
    assert BASE.count(old) == 1, f"{old!r} occurs {BASE.count(old)} times in BASE"
    return BASE.replace(old, new)


def warnings_of(text: str) -> list[str]:
    return [w.as_warning() for w in load_text(text, "warn.yaml").warnings]


def test_base_has_no_warnings() -> None:
    assert warnings_of(BASE) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            change('"@": {MX: "10 mx.example.org"}', '"@": {MX: "10 mail.example.org"}'),
            'warn.yaml:7:17: warning: dns.zones["example.org"].@.MX[0]: mail exchanger'
            " 'mail.example.org' has no address in the lab DNS, so mail sent to this name"
            " bounces (expected a node's hostname or a name with an A record in dns.zones)",
            id="mx-without-address",
        ),
        pytest.param(
            change('"@": {MX: "10 mx.example.org"}', '"@": {MX: ["10 mx.example.org", "20 mx2"]}'),
            "warn.yaml:7:39: warning: dns.zones[\"example.org\"].@.MX[1]: mail exchanger 'mx2'"
            " has no address in the lab DNS, so mail sent to this name bounces",
            id="second-mx-without-address",
        ),
        pytest.param(
            change('"@": {MX: "10 mx.example.org"}', '"@": {MX: "10 mx.exmaple.org"}'),
            'warn.yaml:7:17: warning: dns.zones["example.org"].@.MX[0]: mail exchanger'
            " 'mx.exmaple.org' has no address in the lab DNS, so mail sent to this name"
            " bounces; did you mean 'mx.example.org'?",
            id="mx-typo-did-you-mean",
        ),
        pytest.param(
            change("smarthost: mx.example.org", "smarthost: mail.example.org"),
            "warn.yaml:20:16: warning: nodes.hub.smarthost: smarthost 'mail.example.org' has no"
            f" address in the lab DNS, so mail relayed through it bounces {NO_ADDRESS}",
            id="smarthost-without-address",
        ),
        pytest.param(
            change("smarthost: mx.example.org", "smarthost: ips:2525"),
            "warn.yaml:20:16: warning: nodes.hub.smarthost: smarthost 'ips:2525' has no address"
            " in the lab DNS, so mail relayed through it bounces; did you mean 'isp'?",
            id="smarthost-node-typo-did-you-mean",
        ),
        pytest.param(
            change("dns:\n  zones:", "dns:\n  hosts: none\n  zones:")
            .replace("smarthost: mx.example.org", "smarthost: isp")
            .replace("hostname: mx.example.org", "hostname: mail.isp.test"),
            "warn.yaml:21:16: warning: nodes.hub.smarthost: smarthost 'isp' has no address in"
            " the lab DNS (node 'isp' is 'mail.isp.test'), so mail relayed through it bounces",
            id="smarthost-node-without-address-hosts-none",
        ),
    ],
)
def test_warning(text: str, expected: str) -> None:
    warnings = warnings_of(text)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(expected), warnings[0]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        pytest.param("smarthost: mx.example.org", "smarthost: isp", id="smarthost-node"),
        pytest.param("smarthost: mx.example.org", "smarthost: hub.home.test", id="hostname"),
        pytest.param("smarthost: mx.example.org", "smarthost: 10.20.0.25:2525", id="address"),
        pytest.param("smarthost: mx.example.org", "smarthost: broken.example.org", id="fault"),
        pytest.param("smarthost: mx.example.org", "smarthost: gone.example.org", id="nxdomain"),
        pytest.param("smarthost: mx.example.org", "smarthost: relay.example.org", id="cname"),
        pytest.param('{MX: "10 mx.example.org"}', '{MX: "0 ."}', id="null-mx"),
        pytest.param('{MX: "10 mx.example.org"}', '{MX: "10 broken.example.org"}', id="mx-fault"),
    ],
)
def test_no_warning(old: str, new: str) -> None:
    """A name that resolves, or whose failure is a fault on purpose, is no warning."""
    assert warnings_of(change(old, new)) == []


def test_submit_to_typo_is_an_error_with_did_you_mean() -> None:
    with pytest.raises(TopologyError) as info:
        load_text(change("submit_to: hub}", "submit_to: hubb}"), "warn.yaml")
    assert [str(p) for p in info.value.problems] == [
        "warn.yaml:27:67: nodes.pc.submit_to: 'hubb' does not resolve in the lab; did you mean"
        f" 'hub'? {NO_ADDRESS} in dns.zones)"
    ]


def test_problems_and_warnings_together() -> None:
    """A file with problems still reports its warnings, after them."""
    text = change("submit_to: hub}", "submit_to: hubb}").replace(
        "smarthost: mx.example.org", "smarthost: mail.example.org"
    )
    with pytest.raises(TopologyError) as info:
        load_text(text, "warn.yaml")
    assert [p.path for p in info.value.problems] == ["nodes.pc.submit_to"]
    assert [w.path for w in info.value.warnings] == ["nodes.hub.smarthost"]
    lines = str(info.value).splitlines()
    assert lines[0].startswith("warn.yaml:27:67: nodes.pc.submit_to: ")
    assert lines[1].startswith("warn.yaml:20:16: warning: nodes.hub.smarthost: ")


def test_problem_as_warning() -> None:
    assert Problem("f.yaml", 3, 5, "a.b", "text").as_warning() == "f.yaml:3:5: warning: a.b: text"
    assert Problem("f.yaml", 1, 1, "", "text").as_warning() == "f.yaml:1:1: warning: text"


# --- the command line ----------------------------------------------------------------------


@pytest.fixture
def warned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    path = Path("warn.yaml")
    path.write_text(change("smarthost: mx.example.org", "smarthost: mail.example.org"))
    return path


def test_validate_prints_warnings_and_exits_0(warned: Path) -> None:
    result = CliRunner().invoke(main, ["validate", str(warned)])
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(
        "warn.yaml:20:16: warning: nodes.hub.smarthost: smarthost 'mail.example.org' has no"
    )
    assert result.stdout.startswith("warn.yaml: ok (warn: 4 nodes")


def test_validate_json_carries_warnings(warned: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        change("smarthost: mx.example.org", "smarthost: mail.example.org").replace(
            "submit_to: hub}", "submit_to: hubb}"
        )
    )
    result = CliRunner().invoke(main, ["validate", "--json", str(warned), "bad.yaml"])
    assert result.exit_code == 2
    assert result.stderr == ""
    ok, failed = json.loads(result.stdout)
    warning = {
        "file": "warn.yaml",
        "line": 20,
        "column": 16,
        "path": "nodes.hub.smarthost",
        "message": ok["warnings"][0]["message"],
    }
    assert ok["ok"] is True and ok["warnings"] == [warning]
    assert failed["ok"] is False
    assert [p["path"] for p in failed["problems"]] == ["nodes.pc.submit_to"]
    assert failed["warnings"] == [{**warning, "file": "bad.yaml"}]


def test_up_prints_warnings(warned: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`maillab up` prints the warnings before it does anything else (here it stops right
    after, where it would choose the backend)."""

    def stop(*_: object) -> str:
        raise LabError("stopped here by the test")

    monkeypatch.setattr("lab.cli.running.choose_backend", stop)
    result = CliRunner().invoke(main, ["up", str(warned)])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        warnings_of(warned.read_text())[0],
        "stopped here by the test",
    ]
