"""Running a build's commands (debootstrap, pip) with their output in the progress
display, and a clear error with the last lines when one fails."""

from __future__ import annotations

import subprocess
from collections import deque
from collections.abc import Callable
from pathlib import Path

from lab.errors import LabError
from lab.progress import Progress


def run_command(
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
