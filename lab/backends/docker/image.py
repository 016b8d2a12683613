"""The node image of the Docker backend: what goes into it, its tag, and how it is built.

One image, `maillab-node:<content hash>`, runs every node of a Docker lab. Its tag is a
hash of what goes into it (maillab's package, pyproject.toml, images/node/Dockerfile), so
a tag that exists is up to date and `ensure_node_image()` costs one API call; a code
change gives a new tag whose build reruns only the Dockerfile's last layer.

Building needs no registry and no package index inside the build:

- the base image comes from lab.backends.docker.baseimage (present, pulled, or made with
  debootstrap);
- maillab's dependencies are downloaded on the host as wheels for the image's Python
  (Debian bookworm's CPython 3.11, whatever Python runs here), kept in a cache directory
  ($MAILLAB_CACHE/wheels, default ~/.cache/maillab/wheels) and fetched again only when
  the requirements change; the maillab wheel is built from a snapshot of the source tree.

Progress goes to stderr through lab.progress.Progress; the engine client is
lab.backends.docker.engine's.
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
import sys
import tempfile
import time
import tomllib
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.backends.docker.baseimage import ensure_base_image
from lab.backends.docker.commands import run_command
from lab.backends.docker.engine import (
    docker_client,
    docker_errors,
    engine_arch,
    image_exists,
    tag_latest,
)
from lab.errors import LabError
from lab.progress import Progress, ProgressLike, as_progress

__all__ = [
    "LABEL_CONTENT",
    "LABEL_IMAGE",
    "NODE_REPO",
    "NodeImage",
    "build_node_image",
    "cache_dir",
    "ensure_node_image",
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
LABEL_IMAGE = "io.maillab.image"  # which maillab image: "node"
LABEL_CONTENT = "io.maillab.content"  # the content hash the tag is made of
DOCKERFILE = "images/node/Dockerfile"
IMAGE_PYTHON = "3.11"  # the python3 of Debian bookworm, which the node image runs
KEEP_OLD_TAGS = 3  # older maillab-node:<hash> tags kept after a build (besides the new one)


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
# wheels


def _pip_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


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
        run_command(cmd, progress, "pip download", env=_pip_env())
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
        run_command([sys.executable, "-m", "venv", str(env_dir)], progress, "python -m venv")
        install = [str(python), "-m", "pip", "install", "--quiet", *requires]
        run_command(install, progress, "pip install (build requirements)", env=_pip_env())
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
    run_command([*cmd, str(source)], progress, "pip wheel", env=_pip_env(), cwd=source)
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
def build_lock(progress: Progress) -> Iterator[None]:
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


def docker_build(
    client: Any,
    context: Path,
    tag: str,
    progress: Progress,
    nocache: bool,
    *,
    what: str = "node image",
    buildargs: dict[str, str] | None = None,
) -> None:
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
            buildargs=buildargs or None,
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
                    progress.step(f"{what}: step {step[1]}/{step[2]}: {step[3][:70]}")
                elif line.strip() == "---> Using cache":
                    cached += 1
                else:
                    progress.status(f"{what}: {line}")
    except docker_errors() as exc:
        progress.clear()
        raise LabError(f"building {tag} failed: the Docker engine said: {exc}") from None
    if not image_exists(client, tag):
        raise LabError(f"building {tag} ended without the image:\n  " + "\n  ".join(tail))
    progress.step(f"{what}: {steps} steps, {cached} from the cache")


def prune_old_tags(client: Any, keep: str, repo: str = NODE_REPO, kind: str = "node") -> None:
    """Untag older maillab-node:<hash> (or family) images beyond the newest few, and
    remove such images left with no tag; images that a container still uses stay (no
    force)."""
    try:
        images = client.api.images(name=repo)
    except docker_errors():
        return
    tagged: list[tuple[int, str]] = []
    for image in images:
        for ref in image.get("RepoTags") or []:
            if ref.startswith(f"{repo}:") and ref not in (keep, f"{repo}:latest"):
                tagged.append((int(image.get("Created") or 0), ref))
    tagged.sort(reverse=True)
    for _, ref in tagged[KEEP_OLD_TAGS:]:
        with contextlib.suppress(*docker_errors()):
            client.api.remove_image(ref)
    # node images left without a tag (latest moved on from them)
    with contextlib.suppress(*docker_errors()):
        dangling = {"dangling": True, "label": f"{LABEL_IMAGE}={kind}"}
        for image in client.api.images(filters=dangling):
            with contextlib.suppress(*docker_errors()):
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
        tag_latest(client, tag, NODE_REPO)
        return NodeImage(tag, False, time.monotonic() - started)
    with build_lock(display):
        if not force and image_exists(client, tag):  # another process built it meanwhile
            tag_latest(client, tag, NODE_REPO)
            return NodeImage(tag, False, time.monotonic() - started)
        with tempfile.TemporaryDirectory(prefix="maillab-image-") as tmp:
            work = Path(tmp)
            source, context = work / "src", work / "context"
            tag = _snapshot(root, source)
            display.step(f"node image: building {tag}")
            ensure_base_image(client, display)
            arch = engine_arch(client)
            deps = prepare_wheels(
                read_requirements(source / "pyproject.toml"), display, arch=arch, force=force
            )
            (context / "deps").mkdir(parents=True)
            for path in deps.iterdir():
                if path.suffix == ".whl" or path.name == "requirements.txt":
                    _link_or_copy(path, context / "deps" / path.name)
            _build_app_wheel(source, context / "app", display)
            shutil.copy2(source / DOCKERFILE, context / "Dockerfile")
            docker_build(client, context, tag, display, nocache=force)
        tag_latest(client, tag, NODE_REPO)
        prune_old_tags(client, keep=tag)
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
    except docker_errors() as exc:
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
