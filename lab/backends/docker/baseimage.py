"""The base image of the node image, `debian:bookworm-slim`: used when present, pulled
when a registry answers, and otherwise made here with `debootstrap --variant=minbase
bookworm` and imported into the engine (root and the debootstrap command needed, about a
minute), with the progress of each stage shown."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from lab.backends.docker.commands import run_command
from lab.backends.docker.engine import api_timeout, docker_errors, image_exists
from lab.errors import LabError
from lab.progress import Progress, ProgressLike, as_progress

__all__ = ["BASE_IMAGE", "DEBIAN_MIRROR", "ensure_base_image"]

BASE_IMAGE = "debian:bookworm-slim"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
PULL_TIMEOUT = 30.0  # seconds a pull of the base image may take before we make it ourselves
IMPORT_TIMEOUT = 900.0  # seconds the engine may take to import the base rootfs


# the apt sources of the official debian:bookworm-slim image
_DEBIAN_SOURCES = """\
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""

_DEBOOTSTRAP_LINE = re.compile(r"^I: (Retrieving|Validating|Unpacking|Configuring) (\S+)")
_DEBOOTSTRAP_NOT_PACKAGES = {
    "InRelease",
    "Release",
    "Release.gpg",
    "Packages",
    "required",
    "base",
    "the",
}


class _DebootstrapCounter:
    """Counts the packages debootstrap retrieves, validates, unpacks and configures.

    Details (every line, with the counts) go to the terminal line; a milestone with the
    counts so far marks each stage reached: downloading (retrieving and validating, which
    alternate), unpacking, configuring (debootstrap goes back to unpacking once, for the
    base packages after the required ones), and the end.
    """

    VERBS: ClassVar[dict[str, str]] = {
        "Retrieving": "retrieved",
        "Validating": "validated",
        "Unpacking": "unpacked",
        "Configuring": "configured",
    }
    STAGES: ClassVar[dict[str, int]] = {
        "Retrieving": 1,
        "Validating": 1,
        "Unpacking": 2,
        "Configuring": 3,
    }

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.counts = dict.fromkeys(self.VERBS, 0)
        self.stage = 0

    def summary(self) -> str:
        counts = ", ".join(f"{self.VERBS[v]} {n}" for v, n in self.counts.items() if n)
        return f"{counts} packages" if counts else "starting"

    def __call__(self, line: str) -> None:
        match = _DEBOOTSTRAP_LINE.match(line)
        if match and match[2].rstrip(".") not in _DEBOOTSTRAP_NOT_PACKAGES:
            verb = match[1]
            if self.STAGES[verb] > self.stage:
                if self.stage:
                    self.progress.step(f"base image: debootstrap: {self.summary()}")
                self.stage = self.STAGES[verb]
            self.counts[verb] += 1
        self.progress.status(f"base image: debootstrap: {self.summary()} | {line}")

    def finish(self) -> None:
        self.progress.step(f"base image: debootstrap: {self.summary()}")


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return []
    points = [line.split()[1].replace("\\040", " ") for line in lines if len(line.split()) > 1]
    return [p for p in points if (p + "/").startswith(prefix)]


def _remove_tree(path: Path) -> None:
    """Remove a debootstrap target, but never through a file system still mounted in it."""
    for point in sorted(_mounts_under(path), reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    if _mounts_under(path):
        return  # left for a person to look at rather than deleting through a mount
    shutil.rmtree(path, ignore_errors=True)


def _slim_rootfs(rootfs: Path, mirror: str) -> None:
    """Drop what an image does not need (apt's downloaded lists and packages) and, with
    the default mirror, use the apt sources of the official image (updates, security)."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*"):
        for path in rootfs.glob(pattern):
            if path.is_file():
                path.unlink()
    if mirror == DEBIAN_MIRROR:
        sources_d = rootfs / "etc/apt/sources.list.d"
        sources_d.mkdir(parents=True, exist_ok=True)
        (sources_d / "debian.sources").write_text(_DEBIAN_SOURCES)
        (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)


def _import_rootfs(client: Any, rootfs: Path, progress: Progress) -> None:
    """Import a root file system into the engine as BASE_IMAGE (`tar -c | docker import`)."""
    repository, tag = BASE_IMAGE.split(":")
    tar = subprocess.Popen(
        ["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert tar.stdout is not None
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        assert tar.stdout is not None
        while chunk := tar.stdout.read(1 << 20):
            sent += len(chunk)
            progress.status(f"base image: importing into Docker: {sent / 1e6:.0f} MB")
            yield chunk

    changes = [
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        'CMD ["bash"]',
    ]
    try:
        with api_timeout(client, IMPORT_TIMEOUT):
            client.api.import_image(
                src=chunks(), repository=repository, tag=tag, changes=changes, stream_src=True
            )
    except docker_errors() as exc:
        raise LabError(f"importing the base image into Docker failed: {exc}") from None
    finally:
        tar.stdout.close()
        stderr = tar.stderr.read().decode(errors="replace") if tar.stderr else ""
        tar.wait()
    if tar.returncode != 0:
        raise LabError(f"tar of the base image's root file system failed: {stderr.strip()}")


def ensure_base_image(client: Any, progress: ProgressLike = None) -> bool:
    """Make sure BASE_IMAGE (debian:bookworm-slim) is in the engine: present, pulled, or
    made with debootstrap and imported. True when it was not there before."""
    progress = as_progress(progress)
    if image_exists(client, BASE_IMAGE):
        return False
    progress.step(f"base image: {BASE_IMAGE} is missing; trying to pull it")
    repository, tag = BASE_IMAGE.split(":")
    try:
        with api_timeout(client, PULL_TIMEOUT):
            client.api.pull(repository, tag=tag)
    except docker_errors():
        pass  # no registry here: made below
    if image_exists(client, BASE_IMAGE):
        progress.done(f"base image: pulled {BASE_IMAGE}")
        return True

    hint = f"or load {BASE_IMAGE} into Docker some other way (docker load)"
    if shutil.which("debootstrap") is None:
        raise LabError(
            f"{BASE_IMAGE} is not in Docker and cannot be pulled; making it needs the "
            f"debootstrap command (apt-get install debootstrap), {hint}"
        )
    if os.geteuid() != 0:
        raise LabError(
            f"{BASE_IMAGE} is not in Docker and cannot be pulled; making it with debootstrap "
            f"needs root: run `sudo maillab images build` once, {hint}"
        )
    mirror = os.environ.get("MAILLAB_DEBIAN_MIRROR") or DEBIAN_MIRROR
    progress.step(f"base image: no registry answers; making {BASE_IMAGE} with debootstrap")
    workdir = Path(tempfile.mkdtemp(prefix="maillab-rootfs-"))
    rootfs = workdir / "rootfs"
    try:
        counter = _DebootstrapCounter(progress)
        run_command(
            ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), mirror],
            progress,
            "debootstrap",
            on_line=counter,
        )
        counter.finish()
        _slim_rootfs(rootfs, mirror)
        progress.step(f"base image: importing the root file system as {BASE_IMAGE}")
        _import_rootfs(client, rootfs, progress)
    finally:
        _remove_tree(workdir)
    if not image_exists(client, BASE_IMAGE):
        raise LabError(f"importing {BASE_IMAGE} into Docker did not leave the image there")
    progress.done(f"base image: made {BASE_IMAGE} with debootstrap")
    return True
