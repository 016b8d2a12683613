"""A user's own exim4.conf (`config:`) with the lab's part applied over it: the
main-section options the lab owns replace the user's lines of the same names, every
appendfile transport delivers into the lab's Maildirs, every smtp transport gets the
lab's connect timeout. Everything else (ACLs, routers, rewrite and retry rules) is the
user's (docs/real-mtas.md).
"""

from __future__ import annotations

import re

from lab.software.adapter import RenderContext

_BEGIN = re.compile(r"^\s*begin\s+(\w+)\s*$", re.MULTILINE)
_OPTION = re.compile(r"^\s*(?:no_|not_)?(?P<name>[a-z_0-9]+)\s*(?:=|$)")


def user_config(files: dict[str, str]) -> str:
    """The user's configuration file: exim4.conf, or the only file given."""
    if "exim4.conf" in files:
        return files["exim4.conf"]
    if len(files) == 1:
        return next(iter(files.values()))
    raise ValueError(
        "an Exim node's config: is exim4.conf or a single file; got " + ", ".join(sorted(files))
    )


def apply_lab_part(
    text: str, ctx: RenderContext, owned: dict[str, str], connect_timeout: float = 3.0
) -> str:
    """The user's exim4.conf with the lab's part applied: the main-section options the
    lab owns (`lab_owned`, then the node's settings) replace the user's own lines of the
    same names; every appendfile transport delivers into the lab's Maildirs (its file,
    directory and format lines replaced); every smtp transport gets the lab's connect
    timeout. Everything else (routers, ACLs, rewrite and retry rules) is the user's."""
    lines = text.splitlines()
    first = _BEGIN.search(text)
    main_end = text[: first.start()].count("\n") if first else len(lines)
    main = [
        line
        for line in lines[:main_end]
        if not ((opt := _OPTION.match(line)) and opt["name"] in owned)
    ]
    head = [
        "# maillab: the lab's part (lab/software/exim.py, lab_owned)",
        *(f"{k} = {v}".rstrip() for k, v in owned.items()),
    ]
    rest = _fix_transports(lines[main_end:], ctx, connect_timeout)
    return "\n".join(head + main + rest) + "\n"


_LOCAL_OPTIONS = {
    "file",
    "directory",
    "maildir_format",
    "mailstore_format",
    "mbx_format",
    "create_directory",
    "directory_mode",
    "mode",
    "user",
    "group",
    "check_owner",
    "check_group",
}


def _fix_transports(lines: list[str], ctx: RenderContext, connect_timeout: float) -> list[str]:
    out: list[str] = []
    section = ""
    block: list[str] = []

    def flush() -> None:
        if not block:
            return
        body = "\n".join(block)
        driver = re.search(r"^\s*driver\s*=\s*(\w+)", body, re.MULTILINE)
        kind = driver.group(1) if driver else ""
        if kind == "appendfile":
            kept = [
                b for b in block if not ((o := _OPTION.match(b)) and o["name"] in _LOCAL_OPTIONS)
            ]
            block[:] = [
                *kept,
                "  maildir_format",
                f"  directory = {ctx.mail_root}/$local_part_data",
                "  create_directory",
                f"  user = {ctx.uid}",
                f"  group = {ctx.gid}",
                "  mode = 0600",
            ]
        elif kind == "smtp":
            kept = [
                b for b in block if not ((o := _OPTION.match(b)) and o["name"] == "connect_timeout")
            ]
            block[:] = [*kept, f"  connect_timeout = {max(1, round(connect_timeout))}s"]
        out.extend(block)
        block.clear()

    for line in lines:
        begin = _BEGIN.match(line)
        if begin:
            flush()
            section = begin.group(1)
            out.append(line)
            continue
        if section == "transports" and re.match(r"^\S[^=]*:\s*$", line):
            flush()
            block.append(line)
            continue
        if block:
            block.append(line)
        else:
            out.append(line)
    flush()
    return out
