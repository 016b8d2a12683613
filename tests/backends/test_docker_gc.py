"""Garbage collection of Docker labs whose owner is gone (lab.backends.docker.gc).

The Docker tests run against the real engine with a local image (nothing is pulled);
each labels its objects with run ids of its own and restricts gc to them, so parallel
workers never collect each other's objects.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from lab.backends.docker import gc as dockergc
from lab.backends.docker.gc import RunInfo, find_runs, gc, remove_run
from lab.backends.docker.labels import (
    LABEL_LAB,
    LABEL_OWNER,
    LABEL_RUN,
    Owner,
    labels,
    process_start,
)
from lab.cli import main

IMAGE = "debian:bookworm-slim"

# ---------------------------------------------------------------------------------------
# owners (no Docker needed)


def test_process_start_of_this_process_is_a_number() -> None:
    start = process_start(os.getpid())
    assert start.isdigit()
    assert process_start(os.getpid()) == start


def test_process_start_of_no_process_is_empty() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert process_start(proc.pid) == ""
    assert process_start(2**22 + 12345) == ""  # above the kernel's pid_max


def test_owner_label_round_trip() -> None:
    owner = Owner("box", 1234, "98765")
    assert owner.label() == "box:1234:98765"
    assert Owner.parse(owner.label()) == owner
    me = Owner.me()
    assert Owner.parse(me.label()) == me


def test_owner_parse_keeps_colons_in_the_host() -> None:
    assert Owner.parse("fe80::1:42:777") == Owner("fe80::1", 42, "777")


@pytest.mark.parametrize("label", ["", "garbage", "box:12", "box:pid:777", ":", "box::777"])
def test_owner_parse_refuses_unreadable_labels(label: str) -> None:
    assert Owner.parse(label) is None


def test_owner_alive() -> None:
    me = Owner.me()
    assert me.alive() is True
    assert Owner(me.host, me.pid, me.start + "1").alive() is False  # pid reused
    assert Owner(me.host, me.pid, "").alive() is False
    assert Owner(f"not-{me.host}", me.pid, me.start).alive() is None


def test_owner_of_a_finished_process_is_dead() -> None:
    owner = _dead_owner()
    assert owner.start.isdigit()
    assert owner.alive() is False


def test_labels_carry_run_lab_kind_owner() -> None:
    owner = Owner("box", 1, "2")
    found = labels("abcd1234", "demo", "node", node="mx", owner=owner)
    assert found[LABEL_RUN] == "abcd1234"
    assert found[LABEL_LAB] == "demo"
    assert found[LABEL_OWNER] == "box:1:2"
    assert "io.maillab.node" not in labels("abcd1234", "demo", "switch", owner=owner)


# ---------------------------------------------------------------------------------------
# gc's decisions, against a fake engine (no Docker needed)


class _FakeApi:
    """The few low-level calls dockergc makes; it ignores filters on purpose."""

    def __init__(self, containers: list[dict[str, Any]], networks: list[dict[str, Any]]):
        self._containers = containers
        self._networks = networks
        self.removed: list[str] = []
        self.fail: dict[str, Exception] = {}

    def containers(self, all: bool = False, filters: Any = None) -> list[dict[str, Any]]:
        assert all is True
        assert filters == {"label": LABEL_RUN} or filters["label"].startswith(f"{LABEL_RUN}=")
        return self._containers

    def networks(self, filters: Any = None) -> list[dict[str, Any]]:
        assert filters["label"].startswith(LABEL_RUN)
        return self._networks

    def volumes(self, filters: Any = None) -> dict[str, Any]:
        assert filters["label"].startswith(LABEL_RUN)
        return {"Volumes": None}

    def _remove(self, ident: str) -> None:
        if ident in self.fail:
            raise self.fail[ident]
        self.removed.append(ident)

    def remove_container(self, ident: str, v: bool = False, force: bool = False) -> None:
        assert v and force
        self._remove(ident)

    def remove_network(self, ident: str) -> None:
        self._remove(ident)

    def remove_volume(self, name: str) -> None:
        self._remove(name)


class _FakeClient:
    def __init__(self, api: _FakeApi):
        self.api = api


def _raw(ident: str, run: str | None, owner: str | None) -> dict[str, Any]:
    found: dict[str, str] = {LABEL_LAB: "demo"}
    if run is not None:
        found[LABEL_RUN] = run
    if owner is not None:
        found[LABEL_OWNER] = owner
    return {"Id": ident, "Names": [f"/{ident}"], "Name": ident, "Labels": found}


def test_gc_rechecks_the_run_label_even_if_the_engine_ignores_the_filter() -> None:
    dead = _dead_owner().label()
    api = _FakeApi(
        [_raw("c-unlabelled", None, dead), _raw("c-empty", "", dead), _raw("c-dead", "r1", dead)],
        [{"Id": "n-unlabelled", "Name": "n-unlabelled", "Labels": None}],
    )
    removed = gc(_FakeClient(api))
    assert [r.run for r in removed] == ["r1"]
    assert api.removed == ["c-dead"]


def test_gc_skips_live_unreadable_mixed_and_foreign_owners() -> None:
    me = Owner.me().label()
    dead = _dead_owner().label()
    foreign = Owner("elsewhere.invalid", 1, "1").label()
    api = _FakeApi(
        [
            _raw("c-live", "live", me),
            _raw("c-bad", "bad", "not an owner"),
            _raw("c-none", "none", None),
            _raw("c-mixed-dead", "mixed", dead),
            _raw("c-mixed-live", "mixed", me),
            _raw("c-foreign", "foreign", foreign),
        ],
        [],
    )
    client = _FakeClient(api)
    runs = find_runs(client)
    assert runs["live"].owner_alive is True
    assert runs["bad"].owner_alive is None
    assert runs["mixed"].owner_alive is True
    assert runs["mixed"].owner == f"{dead} {me}"
    assert runs["foreign"].owner_alive is None
    assert gc(client) == []
    assert api.removed == []
    assert [r.run for r in gc(client, include_foreign_hosts=True)] == ["foreign"]
    assert api.removed == ["c-foreign"]


def test_gc_ignores_vanished_objects_and_reports_other_errors() -> None:
    import docker.errors

    dead = _dead_owner().label()
    api = _FakeApi(
        [_raw("c-gone", "r1", dead), _raw("c-stuck", "r1", dead), _raw("c-ok", "r1", dead)],
        [{"Id": "n1", "Name": "net1", "Labels": {LABEL_RUN: "r1", LABEL_OWNER: dead}}],
    )
    api.fail["c-gone"] = docker.errors.NotFound("no such container")
    api.fail["c-stuck"] = docker.errors.APIError("device or resource busy")
    [done] = gc(_FakeClient(api))
    assert done.containers == ["c-gone", "c-ok"]
    assert done.networks == ["net1"]
    assert len(done.errors) == 1 and done.errors[0].startswith("container c-stuck:")
    assert api.removed == ["c-ok", "n1"]  # the error did not stop the rest


# ---------------------------------------------------------------------------------------
# the real engine


@pytest.fixture(scope="module")
def _docker(docker_client: Any) -> Any:
    """The engine (the docker_client fixture: skipped without one, failing when CI=true),
    with the local base image the test containers run."""
    import docker.errors

    try:
        docker_client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        message = f"no local {IMAGE} image (`make images` makes it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return docker_client


class _Objects:
    """Docker objects a test made; all removed at the end, whatever gc did."""

    def __init__(self, client: Any):
        self.client = client
        self.containers: list[Any] = []
        self.networks: list[Any] = []
        self.volumes: list[Any] = []

    def container(self, found: dict[str, str], *, start: bool = True) -> Any:
        create = self.client.containers.run if start else self.client.containers.create
        extra = {"detach": True} if start else {}
        container = create(
            IMAGE,
            ["sleep", "300"],
            name=f"maillab-gc-test-{uuid.uuid4().hex[:12]}",
            labels=found,
            network_mode="none",
            **extra,
        )
        self.containers.append(container)
        return container

    def network(self, found: dict[str, str]) -> Any:
        network = self.client.networks.create(
            f"maillab-gc-test-{uuid.uuid4().hex[:12]}",
            driver="bridge",
            internal=True,
            labels=found,
        )
        self.networks.append(network)
        return network

    def volume(self, found: dict[str, str]) -> Any:
        volume = self.client.volumes.create(
            f"maillab-gc-test-{uuid.uuid4().hex[:12]}", labels=found
        )
        self.volumes.append(volume)
        return volume

    def cleanup(self) -> None:
        import docker.errors

        for container in self.containers:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)
        for each in [*self.networks, *self.volumes]:
            with contextlib.suppress(docker.errors.NotFound):
                each.remove()

    def exists(self, obj: Any) -> bool:
        import docker.errors

        try:
            obj.reload()
        except docker.errors.NotFound:
            return False
        return True


@pytest.fixture
def objects(_docker: Any) -> Iterator[_Objects]:
    made = _Objects(_docker)
    try:
        yield made
    finally:
        made.cleanup()


def _run_id() -> str:
    return f"t{uuid.uuid4().hex}"


def _dead_owner() -> Owner:
    """The owner label of a process that has finished (its start time read while alive)."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        start = process_start(proc.pid)
        assert start, "the subprocess should still be running"
    finally:
        proc.kill()
        proc.wait()
    return Owner(socket.gethostname(), proc.pid, start)


def test_gc_removes_the_objects_of_a_dead_owner(_docker: Any, objects: _Objects) -> None:
    run = _run_id()
    found = labels(run, "gc-dead", "node", node="mx", owner=_dead_owner())
    running = objects.container(found)
    stopped = objects.container(found, start=False)
    network = objects.network(labels(run, "gc-dead", "switch", owner=_dead_owner()))
    volume = objects.volume(found)

    info = find_runs(_docker)[run]
    assert info.owner_alive is False
    assert info.lab == "gc-dead"
    assert sorted(info.containers) == sorted([running.name, stopped.name])
    assert info.networks == [network.name]
    assert info.volumes == [volume.name]

    [removed] = gc(_docker, runs=[run])
    assert removed.run == run
    assert removed.errors == []
    assert sorted(removed.containers) == sorted([running.name, stopped.name])
    assert removed.networks == [network.name]
    assert removed.volumes == [volume.name]
    for obj in (running, stopped, network, volume):
        assert not objects.exists(obj)
    assert run not in find_runs(_docker)
    assert gc(_docker, runs=[run]) == []


def test_gc_leaves_a_live_owner_alone(_docker: Any, objects: _Objects) -> None:
    run = _run_id()
    container = objects.container(labels(run, "gc-live", "node", owner=Owner.me()))
    assert find_runs(_docker)[run].owner_alive is True
    assert gc(_docker, runs=[run]) == []
    assert gc(_docker, runs=[run], include_foreign_hosts=True) == []
    assert objects.exists(container)


def test_gc_never_touches_unlabelled_objects(_docker: Any, objects: _Objects) -> None:
    dead = _dead_owner().label()
    tag = uuid.uuid4().hex
    # every maillab label but the run id: not maillab's to remove
    container = objects.container({LABEL_OWNER: dead, LABEL_LAB: tag})
    plain = objects.container({})
    assert all(tag != info.lab for info in find_runs(_docker).values())
    # even unrestricted: nothing without a run label is collected
    gc(_docker, dry_run=True)
    for info in gc(_docker, dry_run=True, include_foreign_hosts=True):
        assert container.name not in info.containers
        assert plain.name not in info.containers
    assert objects.exists(container)
    assert objects.exists(plain)


def test_gc_leaves_another_hosts_owner_unless_asked(_docker: Any, objects: _Objects) -> None:
    run = _run_id()
    foreign = Owner(f"elsewhere-{uuid.uuid4().hex[:8]}.invalid", 1, "12345")
    container = objects.container(labels(run, "gc-foreign", "node", owner=foreign))
    assert find_runs(_docker)[run].owner_alive is None
    assert gc(_docker, runs=[run]) == []
    assert objects.exists(container)
    [removed] = gc(_docker, runs=[run], include_foreign_hosts=True)
    assert removed.containers == [container.name]
    assert not objects.exists(container)


def test_gc_leaves_an_unreadable_owner_alone(_docker: Any, objects: _Objects) -> None:
    run = _run_id()
    found = labels(run, "gc-unreadable", "node") | {LABEL_OWNER: "not an owner"}
    container = objects.container(found)
    assert gc(_docker, runs=[run], include_foreign_hosts=True) == []
    assert objects.exists(container)


def test_gc_dry_run_removes_nothing(_docker: Any, objects: _Objects) -> None:
    run = _run_id()
    found = labels(run, "gc-dry", "node", owner=_dead_owner())
    container = objects.container(found)
    network = objects.network(found)
    [would] = gc(_docker, dry_run=True, runs=[run])
    assert would.containers == [container.name]
    assert would.networks == [network.name]
    assert objects.exists(container)
    assert objects.exists(network)
    assert run in find_runs(_docker)


def test_remove_run_removes_whatever_the_owner(_docker: Any, objects: _Objects) -> None:
    run, other = _run_id(), _run_id()
    container = objects.container(labels(run, "gc-own", "node", owner=Owner.me()))
    network = objects.network(labels(run, "gc-own", "switch", owner=Owner.me()))
    kept = objects.container(labels(other, "gc-own", "node", owner=Owner.me()))
    removed = remove_run(_docker, run)
    assert removed.containers == [container.name]
    assert removed.networks == [network.name]
    assert removed.errors == []
    assert not objects.exists(container)
    assert not objects.exists(network)
    assert objects.exists(kept)
    assert remove_run(_docker, run) == RunInfo(run)


# ---------------------------------------------------------------------------------------
# the command line


def _only(monkeypatch: pytest.MonkeyPatch, runs: list[str]) -> None:
    """Make `maillab gc` consider only these runs (other tests' objects stay out of it)."""
    monkeypatch.setattr(dockergc, "gc", functools.partial(dockergc.gc, runs=runs))


def test_cli_gc_json(_docker: Any, objects: _Objects, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _run_id()
    found = labels(run, "gc-cli", "node", owner=_dead_owner())
    container = objects.container(found)
    network = objects.network(found)
    _only(monkeypatch, [run])

    result = CliRunner().invoke(main, ["gc", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    [would] = json.loads(result.output)
    assert would["run"] == run
    assert objects.exists(container)

    result = CliRunner().invoke(main, ["gc", "--json"])
    assert result.exit_code == 0, result.output
    [removed] = json.loads(result.output)
    assert removed["run"] == run
    assert removed["lab"] == "gc-cli"
    assert removed["owner_alive"] is False
    assert removed["containers"] == [container.name]
    assert removed["networks"] == [network.name]
    assert removed["errors"] == []
    assert not objects.exists(container)
    assert not objects.exists(network)

    result = CliRunner().invoke(main, ["gc"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "nothing to collect"
    result = CliRunner().invoke(main, ["gc", "--json"])
    assert json.loads(result.output) == []


def test_cli_gc_table(_docker: Any, objects: _Objects, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _run_id()
    owner = _dead_owner()
    objects.container(labels(run, "gc-table", "node", owner=owner))
    _only(monkeypatch, [run])
    result = CliRunner().invoke(main, ["gc", "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "would remove:"
    assert lines[1].split() == ["RUN", "LAB", "OWNER", "CONTAINERS", "NETWORKS", "VOLUMES"]
    assert lines[2].split() == [run, "gc-table", owner.label(), "1", "0", "0"]


# the docker SDK leaves the socket of a failed first connection unclosed: collect it here,
# quietly, rather than have its warning surface in some later test
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_cli_gc_without_an_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    import gc as collector

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such-docker.sock")
    result = CliRunner().invoke(main, ["gc"])
    assert result.exit_code == 1
    assert "no Docker engine answers" in result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)  # a message and an exit code only
    del result
    collector.collect()
