"""A link that dials on a schedule (`schedule:` of a link), as cron or diald dialled:
every hour for five minutes, or at given lab times. `dials()` expands it into the dial
windows on the lab clock; lab.backends.dialer plays them."""

from __future__ import annotations

import math
from collections.abc import Iterator

from pydantic import Field, model_validator

from lab.topology.faults import LabTime, resolve
from lab.topology.fields import Base
from lab.topology.units import Duration


class Schedule(Base):
    """When a link dials: `every: 1h, for: 5m` (the first dial `first` after lab start,
    by default one period in), and/or `at:` a list of lab times."""

    every: Duration | None = Field(None, description="dial once per this period (e.g. 1h)")
    for_: Duration = Field(
        300.0, alias="for", description="stay up this long each time (default 5m)"
    )
    first: Duration | None = Field(
        None, description="the first periodic dial this long after lab start (default: every)"
    )
    at: list[LabTime] = Field(
        default_factory=list,
        description="dial at these lab times too: durations from lab start or dates and times",
    )

    @model_validator(mode="after")
    def _sound(self) -> Schedule:
        if self.every is None and not self.at:
            raise ValueError("a schedule needs 'every' (e.g. 1h) or 'at' (a list of lab times)")
        if self.every is not None and self.every <= 0:
            raise ValueError("a schedule's period ('every') must be longer than zero")
        if self.for_ <= 0:
            raise ValueError("a dial must stay up for longer than zero ('for')")
        if self.every is not None and self.for_ >= self.every:
            raise ValueError(
                "a dial must hang up before the next one: 'for' must be shorter than 'every'"
            )
        if self.first is not None and self.every is None:
            raise ValueError("'first' is the first periodic dial: it needs 'every'")
        return self


def dials(schedule: Schedule, epoch: float, after: float) -> Iterator[tuple[float, float]]:
    """The dial windows (up, down) whose start is at or after `after`, in order, for a
    lab that started at `epoch`; windows that overlap are joined."""
    fixed = sorted(t for t in (resolve(a, epoch) for a in schedule.at) if t >= after)
    every = schedule.every
    if every is not None:
        first = epoch + (schedule.first if schedule.first is not None else every)
        k = max(0, math.ceil((after - first) / every - 1e-9))
    length = schedule.for_
    pending: tuple[float, float] | None = None
    i = 0
    while True:
        candidates = []
        if i < len(fixed):
            candidates.append(fixed[i])
        if every is not None:
            candidates.append(first + k * every)
        if not candidates:
            break
        start = min(candidates)
        if i < len(fixed) and fixed[i] == start:
            i += 1
        else:
            k += 1
        window = (start, start + length)
        if pending is not None and window[0] <= pending[1]:
            pending = (pending[0], max(pending[1], window[1]))
            continue
        if pending is not None:
            yield pending
        pending = window
    if pending is not None:
        yield pending


def next_dial(schedule: Schedule, epoch: float, after: float) -> tuple[float, float] | None:
    """The first dial window starting at or after `after`, or None."""
    return next(dials(schedule, epoch, after), None)
