"""`maillab images`: the Docker images of the Docker backend."""

from __future__ import annotations

from pathlib import Path

import click

from lab.cli.output import emit_json, friendly, json_option, print_table


@click.group("images")
def images_group() -> None:
    """The Docker images of the Docker backend (see images/README.md)."""


@images_group.command("build")
@click.option(
    "--force",
    is_flag=True,
    help="Rebuild even if the image is there: no Docker layer cache, fresh dependency wheels.",
)
@click.option(
    "--family",
    "families",
    multiple=True,
    metavar="NAME",
    help="Also build this family's image (postfix, dovecot, fetchmail), FROM the node image;"
    " repeatable.",
)
@click.option(
    "--topology",
    "topologies",
    multiple=True,
    metavar="FILE",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Also build the images this topology's nodes run (Postfix with fetchmail, ...);"
    " repeatable.",
)
@click.option("--all", "all_families", is_flag=True, help="Also build every family image.")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
@json_option
@friendly
def images_build(
    force: bool,
    families: tuple[str, ...],
    topologies: tuple[Path, ...],
    all_families: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Build the node image (maillab-node:<content hash>) unless it is already there;
    with --family NAME or --all, also the real-MTA images (maillab-postfix:<hash>).

    Makes the base image debian:bookworm-slim with debootstrap when it is missing and no
    registry answers (needs root), and downloads maillab's dependencies as wheels on this
    machine. Prints the image's tag.
    """
    from lab.backends.docker import families as lab_families
    from lab.backends.docker import image as lab_images
    from lab.backends.docker.engine import docker_client
    from lab.progress import Progress

    client = docker_client()
    try:
        with Progress(quiet=quiet) as progress:
            result = lab_images.make_node_image(client, progress=progress, force=force)
            wanted: list[tuple[str, ...]] = [
                (f,) for f in (lab_families.FAMILIES if all_families else families)
            ]
            wanted += topology_families(topologies)
            built = {
                "+".join(chain): lab_families.make_family_image(
                    client, chain, progress=progress, force=force
                )
                for chain in dict.fromkeys(lab_families.family_chain(w) for w in wanted)
            }
    finally:
        client.close()
    if as_json:
        found = result.to_json()
        if built:
            found["families"] = {f: r.to_json() for f, r in built.items()}
        emit_json(found)
    else:
        click.echo(result.tag)
        for family_result in built.values():
            click.echo(family_result.tag)


@images_group.command("list")
@json_option
@friendly
def images_list(as_json: bool) -> None:
    """List maillab's images in the Docker engine: tag, id, size and creation time."""
    from lab.backends.docker import image as lab_images
    from lab.backends.docker.engine import docker_client

    client = docker_client()
    try:
        rows = lab_images.list_images(client)
    finally:
        client.close()
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no maillab images (build one with `maillab images build`)")
        return
    table = [("TAG", "IMAGE ID", "SIZE", "CREATED")]
    table += [(r["tag"], r["id"], f"{r['size'] / 1e6:.0f} MB", r["created"]) for r in rows]
    print_table(table)


def topology_families(files: tuple[Path, ...]) -> list[tuple[str, ...]]:
    """The family chains the nodes of these topologies run (a LabError for a bad file)."""
    from lab.software.registry import image_families
    from lab.topology.loader import load

    found: list[tuple[str, ...]] = []
    for file in files:
        for node in load(file).model.nodes.values():
            chain = image_families(node)
            if chain:
                found.append(chain)
    return found
