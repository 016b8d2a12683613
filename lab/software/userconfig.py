"""The user's own configuration of a node's real software (`config:` in the topology),
read on the machine running the lab and carried to the node in its plan: a file, or a
directory's regular files (Postfix: main.cf, master.cf and the maps beside them).

Hidden files and subdirectories are left out; sizes are bounded, because the files
travel in the lab's plan and the user's directory might be the wrong one.
"""

from __future__ import annotations

from pathlib import Path

from lab.errors import LabError
from lab.topology.model import Node, Service
from lab.topology.software import SOFTWARE_SERVICES

MAX_FILE = 1 << 20  # bytes per file
MAX_TOTAL = 4 << 20  # bytes per service


def read_config(path: Path) -> dict[str, str]:
    """File name -> text: the file itself, or the regular files of the directory."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    elif path.is_file():
        files = [path]
    else:
        raise LabError(f"{path}: no such file or directory")
    found: dict[str, str] = {}
    total = 0
    for file in files:
        size = file.stat().st_size
        total += size
        if size > MAX_FILE or total > MAX_TOTAL:
            raise LabError(
                f"{file}: too big for a configuration file ({size} bytes; at most"
                f" {MAX_FILE} per file and {MAX_TOTAL} in all)"
            )
        try:
            found[file.name] = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise LabError(f"{file}: cannot read it as text: {exc}") from None
    return found


def node_config_files(node: Node) -> dict[str, dict[str, str]]:
    """Service -> the user's files for that service's software, for the services given one."""
    found: dict[str, dict[str, str]] = {}
    for service in SOFTWARE_SERVICES:
        path = node.config_for(service)
        if path is not None:
            found[service.value] = read_config(Path(path))
    return found


def config_files_for(plan: dict[str, dict[str, str]], service: Service) -> dict[str, str]:
    return dict(plan.get(service.value, {}))


def config_file_text(plan: dict[str, dict[str, str]], service: Service) -> str | None:
    """The text of the user's one configuration file for `service` (a dovecot.conf, a
    .fetchmailrc), or None when the node gives none."""
    files = plan.get(service.value)
    return next(iter(files.values())) if files else None
