"""The JSON Schema of the topology format: valid, in sync, and in agreement with the loader.

Topology files are read with the project's own YAML loader (lab.topology.loader.parse_yaml),
not yaml.safe_load: PyYAML follows YAML 1.1, where `on`, `off`, `yes` and `no` are booleans,
so `faults: [{on: rcpt}]` would reach the schema as `{true: "rcpt"}`. maillab reads YAML
1.2 booleans (only true and false), and so must this test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from lab.cli import main
from lab.topology.loader import parse_yaml
from lab.topology.schema import schema_text, topology_schema

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGIES = ROOT / "topologies"
TOPOLOGY_FILES = sorted(TOPOLOGIES.glob("*.yaml"))
SCHEMA_COMMENT = "# yaml-language-server: $schema=schema.json"


def load_data(path: Path) -> Any:
    return parse_yaml(path.read_text(encoding="utf-8"), str(path))[0]


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(
        topology_schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def test_there_are_topology_files() -> None:
    assert TOPOLOGY_FILES, f"no topologies/*.yaml under {ROOT}"


def test_schema_is_valid_draft_2020_12() -> None:
    schema = topology_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_cli_schema_prints_the_schema() -> None:
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0, result.output
    assert result.stdout == schema_text()
    schema = json.loads(result.stdout)
    assert schema == topology_schema()
    jsonschema.Draft202012Validator.check_schema(schema)


def test_cli_schema_writes_a_file(tmp_path: Path) -> None:
    target = tmp_path / "schema.json"
    result = CliRunner().invoke(main, ["schema", "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert f"wrote {target}" in result.stderr
    assert target.read_text(encoding="utf-8") == schema_text()


def test_committed_schema_is_in_sync() -> None:
    committed = (TOPOLOGIES / "schema.json").read_text(encoding="utf-8")
    assert committed == schema_text(), (
        "topologies/schema.json is stale; regenerate it with"
        " `.venv/bin/maillab schema -o topologies/schema.json`"
    )


@pytest.mark.parametrize("path", TOPOLOGY_FILES, ids=lambda p: p.name)
def test_topology_file_has_the_schema_comment(path: Path) -> None:
    first_line = path.read_text(encoding="utf-8").splitlines()[0]
    assert first_line == SCHEMA_COMMENT


@pytest.mark.parametrize("path", TOPOLOGY_FILES, ids=lambda p: p.name)
def test_schema_accepts_topology_file(
    path: Path, validator: jsonschema.Draft202012Validator
) -> None:
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(load_data(path))
    ]
    assert errors == []


def test_project_loader_keeps_yaml_1_1_booleans_as_strings() -> None:
    """Why the files are read with parse_yaml: yaml.safe_load changes their meaning."""
    text = "faults: [{on: rcpt, disconnect: true}]\nstate: off\nkeep: yes\n"
    assert parse_yaml(text, "t.yaml")[0] == {
        "faults": [{"on": "rcpt", "disconnect": True}],
        "state": "off",
        "keep": "yes",
    }
    assert yaml.safe_load(text) == {
        "faults": [{True: "rcpt", "disconnect": True}],
        "state": False,
        "keep": True,
    }


MINIMAL: dict[str, Any] = {
    "name": "mini",
    "networks": {"lan": {"subnet": "192.168.10.0/24"}},
    "nodes": {
        "hub": {"role": "mta", "networks": {"lan": "192.168.10.1"}},
        "pc1": {"role": "client", "networks": ["lan"], "submit_to": "hub"},
    },
}


def test_schema_accepts_the_minimal_document(validator: jsonschema.Draft202012Validator) -> None:
    assert list(validator.iter_errors(MINIMAL)) == []


def with_change(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(MINIMAL))
    target = data
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return data


@pytest.mark.parametrize(
    "document",
    [
        pytest.param(with_change(("nodez",), {}), id="unknown-top-level-key"),
        pytest.param(with_change(("nodes", "hub", "smarthst"), "isp"), id="unknown-node-key"),
        pytest.param(with_change(("nodes", "hub", "role"), "relay"), id="unknown-role"),
        pytest.param(with_change(("nodes", "hub", "users"), {"eddy": 1}), id="mapping-for-list"),
        pytest.param(with_change(("networks", "lan", "subnet"), 24), id="number-for-subnet"),
        pytest.param(
            with_change(("nodes", "hub", "retry"), {"intervals": ["1hour"]}), id="bad-duration"
        ),
        pytest.param(
            with_change(("dns",), {"zones": {"example.org": {"@": {"MX": "mx.example.org"}}}}),
            id="mx-without-preference",
        ),
        pytest.param(with_change(("nodes", "hub", "software"), "qmail"), id="unknown-software"),
        pytest.param(
            with_change(("nodes", "hub", "software"), "dovecot"), id="pop3-software-for-smtp"
        ),
        pytest.param(
            with_change(("nodes", "hub", "software"), {"pop3": "postfix"}),
            id="software-not-for-that-service",
        ),
        pytest.param(
            with_change(("nodes", "hub", "software"), {"dns": "builtin"}),
            id="software-for-dns",
        ),
        pytest.param(
            with_change(("nodes", "hub", "config"), {"smtp": ["main.cf"]}), id="config-list"
        ),
        pytest.param(
            with_change(("nodes", "hub", "settings"), {"soft_bounce": True}),
            id="settings-boolean",
        ),
        pytest.param(
            with_change(("nodes", "hub", "settings"), {"pop3": {"x": [1]}}),
            id="settings-list-value",
        ),
        pytest.param({"networks": {}, "nodes": {}}, id="missing-name"),
        pytest.param(["not", "a", "mapping"], id="top-level-list"),
    ],
)
def test_schema_rejects_invalid_document(
    document: Any, validator: jsonschema.Draft202012Validator
) -> None:
    assert list(validator.iter_errors(document)) != []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("software", "postfix", id="software-one-name"),
        pytest.param(
            "software", {"smtp": "exim", "pop3": "dovecot", "fetch": "fetchmail"}, id="software"
        ),
        pytest.param("config", "hub-postfix/", id="config-one-path"),
        pytest.param("config", {"smtp": "pf", "pop3": "dovecot.conf"}, id="config-per-service"),
        pytest.param("settings", {"queue_run_delay": "5s", "limit": 10}, id="settings-smtp"),
        pytest.param(
            "settings", {"smtp": {"a": 1.5}, "fetch": {"b": "c"}}, id="settings-per-service"
        ),
    ],
)
def test_schema_accepts_software_config_and_settings(
    field: str, value: Any, validator: jsonschema.Draft202012Validator
) -> None:
    assert list(validator.iter_errors(with_change(("nodes", "hub", field), value))) == []


def test_schema_offers_the_software_of_each_service() -> None:
    node = topology_schema()["$defs"]["Node"]["properties"]
    scalar, mapping = node["software"]["anyOf"]
    assert scalar["enum"] == ["builtin", "postfix", "exim", "sendmail"]
    assert {k: v["enum"] for k, v in mapping["properties"].items()} == {
        "smtp": ["builtin", "postfix", "exim", "sendmail"],
        "pop3": ["builtin", "dovecot"],
        "fetch": ["builtin", "fetchmail"],
    }
    assert set(node["config"]["anyOf"][1]["properties"]) == {"smtp", "pop3", "fetch"}
