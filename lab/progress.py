"""What a long operation is doing, on a terminal or in a log: `Progress` shows
milestones, passing details and results on a stream (one updating line on a terminal,
plain lines with elapsed seconds elsewhere). The CLI and the image builds use it; callers
may pass a Progress, a function of one message, or None (`ProgressLike`, `as_progress`).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress", "ProgressLike", "as_progress"]


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
