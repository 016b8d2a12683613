"""The Docker images of the Docker backend: the node image, and how it is built.

One image, `maillab-node:<content hash>`, runs every node of a Docker lab. Its tag is a
hash of what goes into it (maillab's package, pyproject.toml, images/node/Dockerfile), so
a tag that exists is up to date and `ensure_node_image()` costs one API call; a code
change gives a new tag whose build reruns only the Dockerfile's last layer.

Building needs no registry and no package index inside the build:

- the base image `debian:bookworm-slim` is used when present, pulled when a registry
  answers, and otherwise made here with `debootstrap --variant=minbase bookworm` and
  imported into the engine (root and the debootstrap command needed, about a minute);
- maillab's dependencies are downloaded on the host as wheels for the image's Python
  (Debian bookworm's CPython 3.11, whatever Python runs here), kept in a cache directory
  ($MAILLAB_CACHE/wheels, default ~/.cache/maillab/wheels) and fetched again only when
  the requirements change; the maillab wheel is built from a snapshot of the source tree.

Progress goes to stderr through `Progress`: one updating line on a terminal, plain
lines with elapsed seconds elsewhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TextIO

from lab.errors import LabError

__all__ = [
    "BASE_IMAGE",
    "LABEL_CONTENT",
    "LABEL_IMAGE",
    "NODE_REPO",
    "NodeImage",
    "Progress",
    "ProgressLike",
    "as_progress",
    "build_node_image",
    "cache_dir",
    "docker_client",
    "ensure_base_image",
    "ensure_node_image",
    "image_exists",
    "list_images",
    "make_node_image",
    "node_image_tag",
    "pip_platforms",
    "prepare_wheels",
    "project_root",
    "read_requirements",
    "source_files",
]

NODE_REPO = "maillab-node"
BASE_IMAGE = "debian:bookworm-slim"
LABEL_IMAGE = "io.maillab.image"  # which maillab image: "node"
LABEL_CONTENT = "io.maillab.content"  # the content hash the tag is made of
DOCKERFILE = "images/node/Dockerfile"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
IMAGE_PYTHON = "3.11"  # the python3 of Debian bookworm, which the node image runs

PULL_TIMEOUT = 30.0  # seconds a pull of the base image may take before we make it ourselves
IMPORT_TIMEOUT = 900.0  # seconds the engine may take to import the base rootfs
DOCKER_TIMEOUT = 60.0  # the Docker SDK's usual timeout for other API calls
KEEP_OLD_TAGS = 3  # older maillab-node:<hash> tags kept after a build (besides the new one)


# ---------------------------------------------------------------------------------------
# progress display


class Progress:
    """What a long build is doing, on a stream (stderr by default).

    `step()` marks a milestone, `status()` a passing detail, `done()` the result. On a
    terminal they share one updating line (spinner, elapsed seconds, message) and only
    `done()` stays; elsewhere milestones and results are plain lines prefixed with the
    elapsed seconds and details are left out. `quiet` shows nothing.
    """

    SPINNER = "|/-\\"
    REDRAW_EVERY = 0.1  # seconds between two redraws of the terminal line for details

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        quiet: bool = False,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
        self.tty = tty
        self.clock = clock
        self.started = clock()
        self._frame = 0
        self._drawn = False  # a transient line is on the terminal
        self._last_draw = float("-inf")

    def elapsed(self) -> float:
        return self.clock() - self.started

    def step(self, message: str) -> None:
        """A milestone: a plain line, or the terminal's updating line."""
        if self.quiet:
            return
        if self.tty:
            self._draw(message)
        else:
            self._print(message)

    def status(self, message: str) -> None:
        """A passing detail (a log line, a counter): shown on a terminal only."""
        if self.quiet or not self.tty:
            return
        if self.clock() - self._last_draw >= self.REDRAW_EVERY:
            self._draw(message)

    def done(self, message: str) -> None:
        """A result: a line that stays, in both modes."""
        if self.quiet:
            return
        self.clear()
        self._print(message)

    def clear(self) -> None:
        """Remove the updating line (before other output, or at the end)."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False

    def _print(self, message: str) -> None:
        self.stream.write(f"[{self.elapsed():6.1f}s] {message}\n")
        self.stream.flush()

    def _draw(self, message: str) -> None:
        self._frame = (self._frame + 1) % len(self.SPINNER)
        line = f"{self.SPINNER[self._frame]} {self.elapsed():6.1f}s  {message}"
        width = shutil.get_terminal_size((100, 24)).columns - 1
        self.stream.write("\r\x1b[K" + line.replace("\n", " ")[:width])
        self.stream.flush()
        self._drawn = True
        self._last_draw = self.clock()

    def __call__(self, message: str) -> None:
        """A Progress is also a function of one message (a milestone)."""
        self.step(message)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.clear()


class _CallbackProgress(Progress):
    """Milestones and results handed to a function of one string; details are dropped."""

    def __init__(self, callback: Callable[[str], None]) -> None:
        super().__init__(tty=False)
        self.callback = callback

    def _print(self, message: str) -> None:
        self.callback(message)


ProgressLike = Progress | Callable[[str], None] | None


def as_progress(progress: ProgressLike) -> Progress:
    """A Progress for what callers pass: a Progress, a function of one message (which
    gets the milestones), or None (a Progress on stderr)."""
    if isinstance(progress, Progress):
        return progress
    if progress is None:
        return Progress()
    return _CallbackProgress(progress)


# ---------------------------------------------------------------------------------------
# what goes into the node image, and its tag


def project_root() -> Path:
    """maillab's source tree: the directory holding pyproject.toml and lab/."""
    return Path(__file__).resolve().parents[3]


def source_files(root: Path | str | None = None) -> list[str]:
    """The files the node image is made of, relative to root, sorted: every file of the
    lab package (code, py.typed, package data; no caches, no hidden or backup files),
    pyproject.toml and the Dockerfile."""
    root = Path(root) if root is not None else project_root()
    package = root / "lab"
    missing = [p for p in ("pyproject.toml", DOCKERFILE) if not (root / p).is_file()]
    if not package.is_dir():
        missing.insert(0, "lab/")
    if missing:
        raise LabError(
            f"the node image is built from maillab's source tree, and {root} lacks "
            f"{', '.join(missing)}; build it from a checkout of maillab"
        )
    files = ["pyproject.toml", DOCKERFILE]
    for path in package.rglob("*"):
        rel = path.relative_to(root)
        if any(part == "__pycache__" or part.startswith(".") for part in rel.parts):
            continue
        if not path.is_file() or path.suffix in (".pyc", ".pyo") or path.name.endswith("~"):
            continue
        files.append(rel.as_posix())
    return sorted(files)


def _content_hash(root: Path, files: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for rel in files:
        digest.update(rel.encode() + b"\0")
        digest.update(hashlib.sha256((root / rel).read_bytes()).digest())
    return digest.hexdigest()[:12]


def node_image_tag(root: Path | str | None = None) -> str:
    """`maillab-node:<12 hex>`, a hash of the contents (not the times) of the files the
    image is made of (`source_files`): equal trees give equal tags."""
    root = Path(root) if root is not None else project_root()
    return f"{NODE_REPO}:{_content_hash(root, source_files(root))}"


def read_requirements(pyproject: Path | str) -> list[str]:
    """The [project] dependencies of a pyproject.toml, as written, without duplicates."""
    path = Path(pyproject)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LabError(f"{path}: cannot read the project's dependencies: {exc}") from None
    deps = data.get("project", {}).get("dependencies", [])
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise LabError(f"{path}: [project] dependencies must be a list of strings")
    out: list[str] = []
    for dep in deps:
        dep = dep.strip()
        if dep and dep not in out:
            out.append(dep)
    return out


_ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def pip_platforms(machine: str | None = None) -> list[str]:
    """pip --platform tags of wheels that run on Debian bookworm (glibc 2.36) on this
    machine's architecture (x86_64/amd64 or aarch64/arm64), pure wheels included."""
    machine = machine or platform.machine()
    arch = _ARCHES.get(machine.lower())
    if arch is None:
        raise LabError(f"no node image for this architecture ({machine}): x86_64 or aarch64")
    manylinux = [f"manylinux_2_{v}_{arch}" for v in (36, 34, 31, 28, 27, 24, 17)]
    return [*manylinux, f"manylinux2014_{arch}", "any"]


def cache_dir() -> Path:
    """Where downloaded wheels are kept: $MAILLAB_CACHE/wheels, or
    $XDG_CACHE_HOME/maillab/wheels (~/.cache/maillab/wheels)."""
    root = os.environ.get("MAILLAB_CACHE")
    if root:
        return Path(root).expanduser() / "wheels"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "maillab" / "wheels"


# ---------------------------------------------------------------------------------------
# running commands with their output in the progress display


def _run(
    cmd: list[str],
    progress: Progress,
    what: str,
    *,
    on_line: Callable[[str], None] | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> None:
    """Run cmd, its output lines going to on_line (default: progress details); a failure
    is a LabError with the last lines."""
    tail: deque[str] = deque(maxlen=25)
    try:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            cwd=cwd,
            env=env,
        )
    except OSError as exc:
        raise LabError(f"{what}: cannot run {cmd[0]}: {exc}") from None
    assert proc.stdout is not None
    with proc:
        for raw in proc.stdout:
            line = raw.rstrip()
            if not line:
                continue
            tail.append(line)
            if on_line is not None:
                on_line(line)
            else:
                progress.status(f"{what}: {line}")
    if proc.returncode != 0:
        progress.clear()
        shown = "\n  ".join(tail)
        raise LabError(f"{what} failed (exit status {proc.returncode}): {' '.join(cmd)}\n  {shown}")


def _pip_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


# ---------------------------------------------------------------------------------------
# the Docker engine


def docker_client(timeout: float = 10.0) -> Any:
    """A Docker SDK client for the engine of the environment (DOCKER_HOST or the local
    socket), checked to answer within timeout seconds; a LabError when none does."""
    import docker
    import docker.errors
    import requests

    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if where.startswith("unix://"):
        # asked first with a socket of our own: the SDK leaves its socket open on failure
        reason = _unix_socket_problem(where.removeprefix("unix://"), timeout)
        if reason:
            raise LabError(
                f"no Docker engine answers at {where} ({reason}); "
                "start dockerd or use --backend inprocess"
            )
    try:
        client = docker.from_env(timeout=max(timeout, 1.0))
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        reason = str(exc)
        if len(reason) > 200:
            reason = reason[:200] + "..."
        raise LabError(
            f"no Docker engine answers at {where} ({reason}); "
            "start dockerd or use --backend inprocess"
        ) from None
    client.api.timeout = DOCKER_TIMEOUT
    return client


def _unix_socket_problem(path: str, timeout: float) -> str:
    """Why nothing listens on a Unix socket ('' when something does)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            return exc.strerror or str(exc)
    return ""


@contextlib.contextmanager
def _api_timeout(client: Any, seconds: float | None) -> Iterator[None]:
    """Run a few API calls with another timeout (the SDK has no per-call argument)."""
    saved = client.api.timeout
    client.api.timeout = seconds
    try:
        yield
    finally:
        client.api.timeout = saved


def _docker_errors() -> tuple[type[BaseException], ...]:
    import docker.errors
    import requests

    return (docker.errors.DockerException, requests.exceptions.RequestException)


def image_exists(client: Any, ref: str) -> bool:
    import docker.errors

    try:
        client.api.inspect_image(ref)
    except docker.errors.NotFound:
        return False
    return True


def _engine_arch(client: Any) -> str:
    try:
        arch = client.version().get("Arch")
    except _docker_errors():
        arch = None
    return str(arch or platform.machine())


# ---------------------------------------------------------------------------------------
# the base image


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
        with _api_timeout(client, IMPORT_TIMEOUT):
            client.api.import_image(
                src=chunks(), repository=repository, tag=tag, changes=changes, stream_src=True
            )
    except _docker_errors() as exc:
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
        with _api_timeout(client, PULL_TIMEOUT):
            client.api.pull(repository, tag=tag)
    except _docker_errors():
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
        _run(
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


# ---------------------------------------------------------------------------------------
# wheels


def _wheel_names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.whl"))


def prepare_wheels(
    requirements: list[str],
    progress: ProgressLike = None,
    *,
    arch: str | None = None,
    cache: Path | None = None,
    force: bool = False,
) -> Path:
    """A directory of wheels for requirements (and what they need) for the node image's
    CPython 3.11 on Linux/arch, with a requirements.txt; downloaded with pip only when the
    requirements changed or the wheels are gone (or force)."""
    progress = as_progress(progress)
    platforms = pip_platforms(arch)
    arch_name = platforms[-2].removeprefix("manylinux2014_")
    directory = (cache or cache_dir()) / f"deps-cp311-{arch_name}"
    stamp_path = directory / "stamp.json"
    key = hashlib.sha256(
        json.dumps({"requirements": requirements, "platforms": platforms}).encode()
    ).hexdigest()
    try:
        stamp = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        stamp = {}
    if (
        not force
        and stamp.get("key") == key
        and stamp.get("wheels")
        and all((directory / name).is_file() for name in stamp["wheels"])
        and (directory / "requirements.txt").is_file()
    ):
        progress.step(f"wheels: {len(stamp['wheels'])} dependency wheels cached in {directory}")
        return directory

    progress.step(f"wheels: downloading {len(requirements)} dependencies for CPython 3.11")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{directory.name}.", dir=directory.parent))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:"]
        cmd += ["--python-version", IMAGE_PYTHON, "--implementation", "cp", "--abi", "cp311"]
        for tag in platforms:
            cmd += ["--platform", tag]
        cmd += ["-d", str(staging), *requirements]
        _run(cmd, progress, "pip download", env=_pip_env())
        (staging / "requirements.txt").write_text("\n".join(requirements) + "\n")
        wheels = _wheel_names(staging)
        (staging / "stamp.json").write_text(json.dumps({"key": key, "wheels": wheels}) + "\n")
        if directory.exists():
            shutil.rmtree(directory)
        staging.rename(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    progress.step(f"wheels: {len(wheels)} dependency wheels in {directory}")
    return directory


def _build_requires(pyproject: Path) -> list[str]:
    data = tomllib.loads(pyproject.read_text())
    requires = data.get("build-system", {}).get("requires", [])
    return [str(r) for r in requires] if isinstance(requires, list) else []


def _build_env(requires: list[str], progress: Progress) -> Path | None:
    """The python of a kept virtual environment holding the build requirements, so the
    maillab wheel builds without pip's isolated environment (seconds per build saved);
    None when it cannot be made (pip then isolates as usual)."""
    env_dir = cache_dir().parent / "build-env"
    python = env_dir / "bin" / "python"
    stamp = env_dir / "maillab-requires.json"
    key = json.dumps(sorted(requires))
    with contextlib.suppress(OSError):
        if python.is_file() and stamp.read_text() == key:
            return python
    progress.step("wheels: preparing a build environment for the maillab wheel")
    shutil.rmtree(env_dir, ignore_errors=True)
    try:
        _run([sys.executable, "-m", "venv", str(env_dir)], progress, "python -m venv")
        install = [str(python), "-m", "pip", "install", "--quiet", *requires]
        _run(install, progress, "pip install (build requirements)", env=_pip_env())
    except LabError:
        shutil.rmtree(env_dir, ignore_errors=True)
        return None
    stamp.write_text(key)
    return python


def _build_app_wheel(source: Path, out: Path, progress: Progress) -> Path:
    """`pip wheel --no-deps` of the source snapshot, in the kept build environment when
    there is one."""
    requires = _build_requires(source / "pyproject.toml")
    python = _build_env(requires, progress) if requires else None
    progress.step("wheels: building the maillab wheel")
    cmd = [str(python or sys.executable), "-m", "pip", "wheel", "--no-deps", "-w", str(out)]
    if python is not None:
        cmd.append("--no-build-isolation")
    _run([*cmd, str(source)], progress, "pip wheel", env=_pip_env(), cwd=source)
    wheels = list(out.glob("maillab-*.whl"))
    if len(wheels) != 1:
        raise LabError(f"pip wheel left {len(wheels)} maillab wheels in {out}, not one")
    return wheels[0]


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _snapshot(root: Path, dest: Path) -> str:
    """Copy the files the image is made of (and README.md, which pyproject names) to
    dest; return the tag of the copy, which is what gets built even if root changes."""
    for rel in source_files(root):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)
    for extra in ("README.md", "LICENSE"):
        if (root / extra).is_file():
            shutil.copy2(root / extra, dest / extra)
    return node_image_tag(dest)


# ---------------------------------------------------------------------------------------
# the node image


@dataclass(frozen=True)
class NodeImage:
    """The result of making the node image."""

    tag: str
    built: bool  # False: the tag was there already
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"tag": self.tag, "built": self.built, "seconds": round(self.seconds, 3)}


@contextlib.contextmanager
def _build_lock(progress: Progress) -> Iterator[None]:
    """One build at a time on this machine, whatever the cache directory (the engine is
    shared): parallel test workers wait for the first."""
    path = Path(tempfile.gettempdir()) / "maillab-images.lock"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    except PermissionError:  # another user's lock file in a sticky /tmp
        fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress.step("waiting for another maillab image build to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")


def _docker_build(client: Any, context: Path, tag: str, progress: Progress, nocache: bool) -> None:
    """Build context as tag, the engine's log going to the progress display."""
    tail: deque[str] = deque(maxlen=30)
    cached = steps = 0
    labels = {LABEL_CONTENT: tag.split(":", 1)[1]}  # io.maillab.image: the Dockerfile
    try:
        stream = client.api.build(
            path=str(context),
            tag=tag,
            decode=True,
            rm=True,
            forcerm=True,
            pull=False,
            nocache=nocache,
            labels=labels,
        )
        for chunk in stream:
            if "error" in chunk or "errorDetail" in chunk:
                detail = chunk.get("errorDetail") or {}
                message = str(chunk.get("error") or detail.get("message") or chunk)
                progress.clear()
                shown = "\n  ".join(tail)
                raise LabError(f"building {tag} failed: {message.strip()}\n  {shown}")
            for line in str(chunk.get("stream") or chunk.get("status") or "").splitlines():
                line = line.rstrip()
                if not line:
                    continue
                tail.append(line)
                step = _STEP.match(line)
                if step:
                    steps = int(step[1])
                    progress.step(f"node image: step {step[1]}/{step[2]}: {step[3][:70]}")
                elif line.strip() == "---> Using cache":
                    cached += 1
                else:
                    progress.status(f"node image: {line}")
    except _docker_errors() as exc:
        progress.clear()
        raise LabError(f"building {tag} failed: the Docker engine said: {exc}") from None
    if not image_exists(client, tag):
        raise LabError(f"building {tag} ended without the image:\n  " + "\n  ".join(tail))
    progress.step(f"node image: {steps} steps, {cached} from the cache")


def _prune_old_tags(client: Any, keep: str) -> None:
    """Untag older maillab-node:<hash> images beyond the newest few, and remove node
    images left with no tag; images that a container still uses stay (no force)."""
    try:
        images = client.api.images(name=NODE_REPO)
    except _docker_errors():
        return
    tagged: list[tuple[int, str]] = []
    for image in images:
        for ref in image.get("RepoTags") or []:
            if ref.startswith(f"{NODE_REPO}:") and ref not in (keep, f"{NODE_REPO}:latest"):
                tagged.append((int(image.get("Created") or 0), ref))
    tagged.sort(reverse=True)
    for _, ref in tagged[KEEP_OLD_TAGS:]:
        with contextlib.suppress(*_docker_errors()):
            client.api.remove_image(ref)
    # node images left without a tag (latest moved on from them)
    with contextlib.suppress(*_docker_errors()):
        for image in client.api.images(filters={"dangling": True, "label": f"{LABEL_IMAGE}=node"}):
            with contextlib.suppress(*_docker_errors()):
                client.api.remove_image(image["Id"])


def make_node_image(
    client: Any,
    *,
    progress: ProgressLike = None,
    force: bool = False,
    root: Path | str | None = None,
) -> NodeImage:
    """The node image for the source tree at root (default: this maillab's), built when
    its tag is missing or force (then without Docker's layer cache and with fresh
    dependency wheels); also tagged maillab-node:latest."""
    display = as_progress(progress)
    started = time.monotonic()
    root = Path(root) if root is not None else project_root()
    tag = node_image_tag(root)
    if not force and image_exists(client, tag):
        return NodeImage(tag, False, time.monotonic() - started)
    with _build_lock(display):
        if not force and image_exists(client, tag):  # another process built it meanwhile
            return NodeImage(tag, False, time.monotonic() - started)
        with tempfile.TemporaryDirectory(prefix="maillab-image-") as tmp:
            work = Path(tmp)
            source, context = work / "src", work / "context"
            tag = _snapshot(root, source)
            display.step(f"node image: building {tag}")
            ensure_base_image(client, display)
            arch = _engine_arch(client)
            deps = prepare_wheels(
                read_requirements(source / "pyproject.toml"), display, arch=arch, force=force
            )
            (context / "deps").mkdir(parents=True)
            for path in deps.iterdir():
                if path.suffix == ".whl" or path.name == "requirements.txt":
                    _link_or_copy(path, context / "deps" / path.name)
            _build_app_wheel(source, context / "app", display)
            shutil.copy2(source / DOCKERFILE, context / "Dockerfile")
            _docker_build(client, context, tag, display, nocache=force)
        try:
            client.api.tag(tag, NODE_REPO, "latest")
        except _docker_errors() as exc:
            raise LabError(f"tagging {tag} as {NODE_REPO}:latest failed: {exc}") from None
        _prune_old_tags(client, keep=tag)
    seconds = time.monotonic() - started
    display.done(f"built {tag} in {seconds:.1f}s")
    return NodeImage(tag, True, seconds)


def build_node_image(
    client: Any,
    *,
    progress: ProgressLike,
    force: bool = False,
    root: Path | str | None = None,
) -> str:
    """Build the node image unless its tag exists (or force); return the tag."""
    return make_node_image(client, progress=progress, force=force, root=root).tag


def ensure_node_image(client: Any = None, progress: ProgressLike = None) -> str:
    """The node image's tag, built first when missing: what the Docker backend calls.
    progress: a Progress, a function of one message, or None (progress on stderr)."""
    own = client is None
    if own:
        client = docker_client()
    try:
        return make_node_image(client, progress=progress).tag
    finally:
        if own:
            client.close()


def list_images(client: Any) -> list[dict[str, Any]]:
    """maillab's images in the engine, newest first: tag, id, size (bytes), created
    (ISO 8601, UTC) and kind (the io.maillab.image label)."""
    try:
        images = client.api.images(filters={"label": LABEL_IMAGE})
    except _docker_errors() as exc:
        raise LabError(f"listing images failed: {exc}") from None
    rows: list[dict[str, Any]] = []
    for image in images:
        created = int(image.get("Created") or 0)
        refs = [r for r in image.get("RepoTags") or [] if r != "<none>:<none>"] or ["<none>"]
        for ref in refs:
            rows.append(
                {
                    "tag": ref,
                    "id": str(image.get("Id", "")).removeprefix("sha256:")[:12],
                    "size": int(image.get("Size") or 0),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
                    "kind": (image.get("Labels") or {}).get(LABEL_IMAGE, ""),
                    "_created": created,
                }
            )
    rows.sort(key=lambda r: (-r["_created"], r["tag"]))
    for row in rows:
        del row["_created"]
    return rows
