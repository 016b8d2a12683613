"""The poll schedule of a host's fetch jobs, on the lab clock: each job polled every
`poll` seconds (lab time, however long a poll takes) while the host's links are up. The
built-in fetcher and the Docker backend's fetchmail runner both keep one."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from lab.runtime.clock import Timer
from lab.services.host import Host

Poll = Callable[[int, float], Coroutine[Any, Any, None]]  # (job index, its due time)


class PollSchedule:
    def __init__(
        self,
        host: Host,
        jobs: Callable[[], list[tuple[float | None, str]]],  # each job's poll and label
        poll: Poll,
        links_up: Callable[[], bool],
    ):
        self.host = host
        self.jobs = jobs
        self.poll = poll
        self.links_up = links_up
        self.timers: dict[int, Timer] = {}

    def arm_all(self) -> None:
        """Every job with a poll interval, one interval from now (while the links are up)."""
        if not self.links_up():
            return
        for index in range(len(self.jobs())):
            self.arm(index)

    def arm(self, index: int, after: float | None = None) -> None:
        """Poll job `index` one interval after `after` (lab time; default: now)."""
        interval, label = self.jobs()[index]
        if interval is None or index in self.timers:
            return
        now = self.host.clock.time()
        when = max(now, (now if after is None else after) + interval)
        self.timers[index] = self.host.call_at(when, lambda: self.poll(index, when), label)

    def taken(self, index: int) -> None:
        """Job `index`'s timer fired: it is no longer pending."""
        self.timers.pop(index, None)

    def disarm_all(self) -> None:
        for timer in self.timers.values():
            timer.cancel()
        self.timers.clear()
