"""Garbage collection of Docker labs whose owner is gone.

Every container, network and volume of a lab carries the labels of
lab.backends.docker.labels, among them the run id and the owner (host, pid and start
time of the process holding the lab). A lab whose owner died without bringing it down
(killed, a crashed test worker, a lost terminal) leaves these objects behind; `gc`
finds them and removes them.

Only objects carrying LABEL_RUN are ever looked at: the API is asked for them by label,
and each answer is checked again here before it is used. A run is collected only when
every owner label among its objects names a process of this host that is gone; a live
owner, an owner label that cannot be read, or (unless asked) another host's owner
leaves the run untouched.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.backends.docker.labels import LABEL_LAB, LABEL_OWNER, LABEL_RUN, LABEL_STATE, Owner

__all__ = ["RunInfo", "find_runs", "gc", "remove_run"]

# how often (and how long apart) to try removing a network whose endpoints are still
# being released by the containers removed just before it
_NETWORK_ATTEMPTS = 5
_NETWORK_RETRY_DELAY = 0.2


@dataclass
class RunInfo:
    """The Docker objects of one run, and what is known about its owner."""

    run: str
    lab: str = ""
    owner: str = ""  # the owner label; several labels separated by spaces if they differ
    owner_alive: bool | None = None  # True/False on this host; None: another host or unknown
    containers: list[str] = field(default_factory=list)  # names
    networks: list[str] = field(default_factory=list)  # names
    volumes: list[str] = field(default_factory=list)  # names
    errors: list[str] = field(default_factory=list)  # what could not be removed, and why
    owner_labels: list[str] = field(default_factory=list, repr=False)  # distinct, in order
    container_ids: list[str] = field(default_factory=list, repr=False)
    network_ids: list[str] = field(default_factory=list, repr=False)
    state_dirs: list[str] = field(default_factory=list, repr=False)

    @property
    def counts(self) -> tuple[int, int, int]:
        return len(self.containers), len(self.networks), len(self.volumes)

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "lab": self.lab,
            "owner": self.owner,
            "owner_alive": self.owner_alive,
            "containers": list(self.containers),
            "networks": list(self.networks),
            "volumes": list(self.volumes),
            "errors": list(self.errors),
        }

    def _note(self, labels: dict[str, str]) -> None:
        if not self.lab and labels.get(LABEL_LAB):
            self.lab = labels[LABEL_LAB]
        owner = labels.get(LABEL_OWNER, "")
        if owner not in self.owner_labels:
            self.owner_labels.append(owner)
        state = labels.get(LABEL_STATE, "")
        if state and state not in self.state_dirs:
            self.state_dirs.append(state)


def _labels(raw: Any) -> dict[str, str]:
    labels = raw.get("Labels") if isinstance(raw, dict) else None
    return labels if isinstance(labels, dict) else {}


def _run_of(labels: dict[str, str]) -> str:
    run = labels.get(LABEL_RUN)
    return run if isinstance(run, str) and run else ""


def _container_name(raw: dict[str, Any]) -> str:
    names = raw.get("Names") or []
    if names:
        return str(names[0]).lstrip("/")
    return str(raw.get("Id", ""))[:12]


def _verdict(labels: list[str]) -> tuple[bool | None, bool]:
    """(owner_alive, readable) for a run's owner labels.

    owner_alive is False only when every label names a gone process of this host, True
    when any names a live one, None otherwise. readable is False when any label cannot
    be parsed (or is missing).
    """
    owners = [Owner.parse(label) for label in labels]
    if not owners or any(o is None for o in owners):
        return None, False
    states = [o.alive() for o in owners if o is not None]
    if any(s is True for s in states):
        return True, True
    if all(s is False for s in states):
        return False, True
    return None, True


def _list(client: Any, run: str | None = None) -> dict[str, RunInfo]:
    label = f"{LABEL_RUN}={run}" if run is not None else LABEL_RUN
    filters = {"label": label}
    runs: dict[str, RunInfo] = {}

    def info(labels: dict[str, str]) -> RunInfo | None:
        found = _run_of(labels)
        if not found or (run is not None and found != run):
            return None  # no run label after all: never ours to touch
        entry = runs.setdefault(found, RunInfo(found))
        entry._note(labels)
        return entry

    for raw in client.api.containers(all=True, filters=filters) or []:
        entry = info(_labels(raw))
        if entry is not None:
            entry.containers.append(_container_name(raw))
            entry.container_ids.append(str(raw["Id"]))
    for raw in client.api.networks(filters=filters) or []:
        entry = info(_labels(raw))
        if entry is not None:
            entry.networks.append(str(raw.get("Name") or raw["Id"]))
            entry.network_ids.append(str(raw["Id"]))
    answer = client.api.volumes(filters=filters) or {}
    for raw in answer.get("Volumes") or []:
        entry = info(_labels(raw))
        if entry is not None:
            entry.volumes.append(str(raw["Name"]))

    for entry in runs.values():
        entry.owner = " ".join(entry.owner_labels)
        entry.owner_alive, _ = _verdict(entry.owner_labels)
    return runs


def find_runs(client: Any) -> dict[str, RunInfo]:
    """Every container (running or not), network and volume labelled with a run id,
    grouped by run id."""
    return _list(client)


def _remove(client: Any, info: RunInfo) -> RunInfo:
    """Remove the objects listed in info: containers, then networks, then volumes.

    Objects already gone are counted as removed; other errors are noted in the answer's
    errors and the rest is still removed.
    """
    import docker.errors

    done = RunInfo(
        info.run,
        lab=info.lab,
        owner=info.owner,
        owner_alive=info.owner_alive,
        owner_labels=list(info.owner_labels),
        state_dirs=list(info.state_dirs),
    )
    for name, cid in zip(info.containers, info.container_ids, strict=True):
        try:
            client.api.remove_container(cid, v=True, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            done.errors.append(f"container {name}: {exc}")
            continue
        done.containers.append(name)
        done.container_ids.append(cid)
    for name, nid in zip(info.networks, info.network_ids, strict=True):
        for attempt in range(_NETWORK_ATTEMPTS):
            try:
                client.api.remove_network(nid)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if attempt + 1 < _NETWORK_ATTEMPTS and "active endpoints" in str(exc):
                    time.sleep(_NETWORK_RETRY_DELAY)
                    continue
                done.errors.append(f"network {name}: {exc}")
                break
            done.networks.append(name)
            done.network_ids.append(nid)
            break
    for name in info.volumes:
        try:
            client.api.remove_volume(name)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            done.errors.append(f"volume {name}: {exc}")
            continue
        done.volumes.append(name)
    return done


def gc(
    client: Any,
    *,
    dry_run: bool = False,
    include_foreign_hosts: bool = False,
    runs: list[str] | None = None,
) -> list[RunInfo]:
    """Remove every object of the runs whose owner is gone; return those runs.

    A run is collected when its owner is a process of this host that no longer exists
    (or, with include_foreign_hosts, an owner on another host, which cannot be checked
    from here). A live owner or an unreadable owner label keeps the run. `runs` limits
    collection to these run ids (still only those with a gone owner). With dry_run
    nothing is removed and the answer is what would be. Errors while removing are in
    each answer's `errors`; they do not stop the removal of the rest.
    """
    wanted = set(runs) if runs is not None else None
    collected = []
    for run_id, info in sorted(_list(client).items()):
        if wanted is not None and run_id not in wanted:
            continue
        alive, readable = _verdict(info.owner_labels)
        if not readable or alive is True:
            continue
        if alive is None and not include_foreign_hosts:
            continue
        if not dry_run:
            info = _remove(client, info)
            if info.owner_alive is False:  # a run of this machine: its directories too
                shutil.rmtree(runtime_dir(run_id), ignore_errors=True)
                for state in info.state_dirs:
                    if _temporary_lab_dir(state):
                        shutil.rmtree(state, ignore_errors=True)
        collected.append(info)
    return collected


def _temporary_lab_dir(path: str) -> bool:
    """Only a directory the lab itself made in the temporary directory is ever removed."""
    candidate = Path(path)
    return candidate.parent == Path(tempfile.gettempdir()) and candidate.name.startswith("maillab-")


def runtime_dir(run: str) -> Path:
    """Where a run keeps its spec, lab CA and control sockets (shared with its containers)."""
    return Path(tempfile.gettempdir()) / f"maillab-{run}"


def remove_run(client: Any, run: str) -> RunInfo:
    """Remove every object labelled with run id `run`, whoever owns it.

    For a backend's own `down` and clean-up after Ctrl-C. Errors are in the answer's
    `errors` (empty when everything went).
    """
    if not run:
        raise ValueError("remove_run needs a run id")
    info = _list(client, run).get(run)
    if info is None:
        return RunInfo(run)
    return _remove(client, info)
