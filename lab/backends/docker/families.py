"""Family images: the node image plus the real software a node runs, one layer per
family (images/FAMILY/Dockerfile, each FROM the image below it, passed as NODE_IMAGE).
A node with Postfix and fetchmail runs maillab-postfix-fetchmail, built FROM
maillab-postfix, which is built FROM maillab-node. Each tag is a hash of the layer's
Dockerfile and the tag below it; builds share the node image's lock and progress.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lab.backends.docker.engine import image_exists, tag_latest
from lab.backends.docker.image import (
    NodeImage,
    build_lock,
    docker_build,
    make_node_image,
    project_root,
    prune_old_tags,
)
from lab.errors import LabError
from lab.progress import Progress, ProgressLike, as_progress

FAMILIES: dict[str, str] = {
    "postfix": "images/postfix/Dockerfile",
    "exim": "images/exim/Dockerfile",  # conflicts with postfix: a node runs one MTA
    "sendmail": "images/sendmail/Dockerfile",  # the same: it replaces exim4
    "dovecot": "images/dovecot/Dockerfile",
    "fetchmail": "images/fetchmail/Dockerfile",
}


def family_chain(families: str | Iterable[str]) -> tuple[str, ...]:
    """The families in the order their layers are stacked (FAMILIES' order), checked."""
    wanted = (families,) if isinstance(families, str) else tuple(families)
    unknown = [f for f in wanted if f not in FAMILIES]
    if unknown:
        raise LabError(f"no image family {unknown[0]!r}; expected one of: {', '.join(FAMILIES)}")
    return tuple(f for f in FAMILIES if f in wanted)


def family_repo(families: str | Iterable[str]) -> str:
    return "maillab-" + "-".join(family_chain(families))


def _layer_tag(chain: tuple[str, ...], base_tag: str, root: Path) -> str:
    dockerfile = root / FAMILIES[chain[-1]]
    try:
        text = dockerfile.read_bytes()
    except OSError as exc:
        raise LabError(f"the {chain[-1]} image is built from {dockerfile}: {exc}") from None
    digest = hashlib.sha256(base_tag.encode() + b"\0" + text).hexdigest()[:12]
    return f"{family_repo(chain)}:{digest}"


def family_image_tag(
    families: str | Iterable[str], node_tag: str, root: Path | str | None = None
) -> str:
    """`maillab-FAMILY[-FAMILY...]:<12 hex>`: a hash of the top family's Dockerfile and the
    tag of the image below it, down to the node image (a code change gives new tags)."""
    root = Path(root) if root is not None else project_root()
    chain = family_chain(families)
    tag = node_tag
    for depth in range(1, len(chain) + 1):
        tag = _layer_tag(chain[:depth], tag, root)
    return tag


def make_family_image(
    client: Any,
    families: str | Iterable[str],
    *,
    progress: ProgressLike = None,
    force: bool = False,
    root: Path | str | None = None,
) -> NodeImage:
    """The image of these families (the node image and the layers below first, built when
    missing), built when its tag is missing or force; also tagged REPO:latest. Built
    offline: apt inside the Dockerfiles reaches Debian's mirror, nothing else is fetched."""
    display = as_progress(progress)
    started = time.monotonic()
    root = Path(root) if root is not None else project_root()
    chain = family_chain(families)
    tag = make_node_image(client, progress=display, root=root).tag
    built = False
    for depth in range(1, len(chain) + 1):
        tag, made = _make_layer(client, chain[:depth], tag, display, force, root)
        built = built or made
    seconds = time.monotonic() - started
    if built:
        display.done(f"built {tag} in {seconds:.1f}s")
    return NodeImage(tag, built, seconds)


def _make_layer(
    client: Any,
    chain: tuple[str, ...],
    base_tag: str,
    display: Progress,
    force: bool,
    root: Path,
) -> tuple[str, bool]:
    tag = _layer_tag(chain, base_tag, root)
    repo = family_repo(chain)
    if not force and image_exists(client, tag):
        tag_latest(client, tag, repo)
        return tag, False
    what = f"{'+'.join(chain)} image"
    with build_lock(display):
        if not force and image_exists(client, tag):
            tag_latest(client, tag, repo)
            return tag, False
        display.step(f"{what}: building {tag} from {base_tag}")
        with tempfile.TemporaryDirectory(prefix=f"{family_repo(chain)}-") as tmp:
            context = Path(tmp)
            shutil.copy2(root / FAMILIES[chain[-1]], context / "Dockerfile")
            docker_build(
                client,
                context,
                tag,
                display,
                nocache=force,
                what=what,
                buildargs={"NODE_IMAGE": base_tag},
            )
        tag_latest(client, tag, repo)
        prune_old_tags(client, keep=tag, repo=repo, kind=chain[-1])
    return tag, True


def ensure_image(
    client: Any, families: str | Iterable[str] | None, progress: ProgressLike = None
) -> str:
    """The tag of the image a node runs: the node image (no family) or its families'."""
    if not families:
        return make_node_image(client, progress=progress).tag
    return make_family_image(client, families, progress=progress).tag
