"""How long the node image takes to build: `make bench-images` (python -m bench.images).

- warm no-op:       the image of this tree is there; ensure_node_image has nothing to do
- code change:      a copy of this tree with one line added to a lab file; only the
                    Dockerfile's last layer is rebuilt (the copy's image is removed after)
- cold (--cold):    every maillab-node image and debian:bookworm-slim removed first, and an
                    empty wheel cache: the base image is made with debootstrap when no
                    registry answers (root needed), the wheels downloaded, all layers built
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lab.backends.docker import image as images
from lab.backends.docker.baseimage import BASE_IMAGE
from lab.backends.docker.engine import docker_client
from lab.backends.docker.image import NODE_REPO
from lab.progress import Progress


def _remove_images(client: Any, refs: list[str]) -> None:
    import docker.errors

    for ref in refs:
        # force untags an image a container still runs; the container keeps it
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_image(ref, force=True)


def _node_tags(client: Any) -> list[str]:
    return [
        ref
        for image in client.api.images(name=NODE_REPO)
        for ref in image.get("RepoTags") or []
        if ref.startswith(f"{NODE_REPO}:")
    ]


@contextmanager
def _empty_cache() -> Iterator[None]:
    saved = os.environ.get("MAILLAB_CACHE")
    with tempfile.TemporaryDirectory(prefix="maillab-bench-cache-") as tmp:
        os.environ["MAILLAB_CACHE"] = tmp
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop("MAILLAB_CACHE", None)
            else:
                os.environ["MAILLAB_CACHE"] = saved


def _timed(client: Any, progress: Progress, **kwargs: Any) -> tuple[float, images.NodeImage]:
    started = time.perf_counter()
    result = images.make_node_image(client, progress=progress, **kwargs)
    return time.perf_counter() - started, result


def bench_images(cold: bool, progress: Progress | None = None) -> dict[str, Any]:
    """Seconds for a cold build (only when cold: it removes the images first), a warm
    no-op and a rebuild after a code change."""
    progress = progress if progress is not None else Progress(quiet=True)
    client = docker_client()
    out: dict[str, Any] = {}
    try:
        if cold:
            _remove_images(client, [*_node_tags(client), BASE_IMAGE])
            with _empty_cache():
                seconds, result = _timed(client, progress)
            assert result.built
            out["cold_build_s"] = round(seconds, 2)
        else:
            images.make_node_image(client, progress=progress)  # the image of this tree
        seconds, result = _timed(client, progress)
        assert not result.built, "the second make_node_image built again"
        out["warm_noop_s"] = round(seconds, 4)
        tag = result.tag
        out["tag"] = tag

        with tempfile.TemporaryDirectory(prefix="maillab-bench-tree-") as tmp:
            root = images.project_root()
            copy = Path(tmp)
            for rel in [*images.source_files(root), "README.md"]:
                (copy / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(root / rel, copy / rel)
            with (copy / "lab" / "__init__.py").open("a") as f:
                f.write(f"# bench-images {time.time()}\n")
            seconds, changed = _timed(client, progress, root=copy)
        assert changed.built and changed.tag != tag
        out["code_change_rebuild_s"] = round(seconds, 2)
        # leave the engine as it was: latest is this tree's image, the copy's is gone
        client.api.tag(tag, NODE_REPO, "latest")
        _remove_images(client, [changed.tag])
    finally:
        client.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.images", description=__doc__)
    parser.add_argument(
        "--cold", action="store_true", help="Remove the images (and base image) first."
    )
    parser.add_argument("--json", action="store_true", help="Print the figures as JSON.")
    parser.add_argument("-v", "--verbose", action="store_true", help="Show build progress.")
    args = parser.parse_args()
    result = bench_images(args.cold, Progress(quiet=not args.verbose))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    names = {
        "cold_build_s": "cold build",
        "warm_noop_s": "warm no-op",
        "code_change_rebuild_s": "code-change rebuild",
    }
    for key, label in names.items():
        if key in result:
            print(f"{label:<22} {result[key]:8.2f} s")
    print(f"{'image':<22} {result['tag']}")


if __name__ == "__main__":
    main()
