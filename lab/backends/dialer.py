"""Links that dial on a schedule: each dial is a timer on the lab clock that raises the
link (running its on_up hooks, as set_link does) and another that drops it `for` later,
then arms the next. So `clock advance 1d` plays the dial-ups among the queue runs,
retries and fetches in lab-time order, and the events say `cause: schedule`.

Both backends use it over a `LabClock` of the lab's: in process the lab's own clock; in
Docker a clock of the lab's process that the backend's advance runs in order with the
hosts' timers. A schedule set at run time replaces the topology's until `reset()`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from lab.runtime.clock import LabClock, Timer
from lab.topology.model import Topology
from lab.topology.schedule import Schedule, next_dial

SetLink = Callable[[str, bool, str], Awaitable[None]]


class Dialer:
    """The scheduled dials of a lab's links."""

    def __init__(self, topology: Topology, set_link: SetLink):
        self.topology = topology
        self.set_link = set_link
        self.clock: LabClock | None = None
        self.schedules: dict[str, Schedule] = {}
        self.timers: dict[str, Timer] = {}

    def start(self, clock: LabClock) -> None:
        """Arm every link's schedule, as the topology declares it, on `clock`."""
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        """Back to the topology's schedules (run-time edits forgotten), armed afresh."""
        for timer in self.timers.values():
            timer.cancel()
        self.timers.clear()
        self.schedules = {
            name: link.schedule
            for name, link in self.topology.links.items()
            if link.schedule is not None
        }
        for name in self.schedules:  # from lab start: `first: 0` dials at once
            self._arm(name, self.clock.epoch if self.clock is not None else None)

    def set(self, link: str, schedule: Schedule | None) -> None:
        """Give `link` this schedule (None: no schedule), from now on."""
        if (timer := self.timers.pop(link, None)) is not None:
            timer.cancel()
        if schedule is None:
            self.schedules.pop(link, None)
            return
        self.schedules[link] = schedule
        self._arm(link, None)

    def next_dial(self, link: str) -> tuple[float, float] | None:
        """The link's next dial window (up, down) in lab time, or None."""
        schedule = self.schedules.get(link)
        if schedule is None or self.clock is None:
            return None
        return next_dial(schedule, self.clock.epoch, self.clock.time())

    def _arm(self, link: str, after: float | None) -> None:
        clock = self.clock
        schedule = self.schedules.get(link)
        if clock is None or schedule is None:
            return
        window = next_dial(schedule, clock.epoch, clock.time() if after is None else after)
        if window is None:
            return
        start, end = window

        async def dial() -> None:
            await self.set_link(link, True, "schedule")
            self.timers[link] = clock.call_at(end, hang_up, name=f"dial:{link}:down")

        async def hang_up() -> None:
            self.timers.pop(link, None)
            await self.set_link(link, False, "schedule")
            self._arm(link, end)

        self.timers[link] = clock.call_at(start, dial, name=f"dial:{link}:up")
