"""Whether a fault strikes now: its lab-time window, how often it has struck, its rate
limit per client, and its chance. The one core the MTA's faults and the lab DNS's share.

Chance is drawn from a `random.Random` of the fault's own, seeded from the lab's seed,
the node and the fault's index, so a fault's draws depend only on how often that fault
was asked, never on what else the lab did meanwhile or in what order: the same seed
gives the same run. Rate limits count in lab time, per client address, the messages let
through in the last period (a sliding window, as Postfix's anvil counts).
"""

from __future__ import annotations

import random
from collections import defaultdict, deque
from dataclasses import dataclass, field

from lab.topology.faults import RateLimit, resolve
from lab.topology.faults import Timed as TimedSpec


def fault_rng(seed: int, node: str, index: int) -> random.Random:
    """The fault's own generator: the same (seed, node, index), the same draws."""
    return random.Random(f"{seed}:{node}:{index}")


def in_window(spec: TimedSpec, now: float, epoch: float) -> bool:
    """True when `now` is inside the fault's `from`/`until` window (open ends: always)."""
    if spec.from_ is not None and now < resolve(spec.from_, epoch):
        return False
    return not (spec.until is not None and now >= resolve(spec.until, epoch))


@dataclass
class RateCounter:
    """Messages let through per client in the last `per` seconds of lab time."""

    limit: RateLimit
    seen: defaultdict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))

    def over(self, client: str, now: float) -> bool:
        """True when `client` is past the limit now; otherwise it is counted in."""
        times = self.seen[client]
        while times and times[0] <= now - self.limit.per:
            times.popleft()
        if len(times) >= self.limit.messages:
            return True
        times.append(now)
        return False


@dataclass
class Gate:
    """One fault's memory: its hits, its generator, its rate counter."""

    spec: TimedSpec
    rng: random.Random
    hits: int = 0
    rate: RateCounter | None = None

    def strikes(
        self, now: float, epoch: float, client: str = "", times: int | None = None
    ) -> tuple[bool, str]:
        """(strikes, why not): window, then `times`, then the rate limit, then chance.
        A draw is taken only when everything before it let the fault through."""
        if not in_window(self.spec, now, epoch):
            return False, "outside its window"
        if times is not None and self.hits >= times:
            return False, "used up"
        if self.rate is not None and not self.rate.over(client, now):
            return False, "under the rate limit"
        chance = self.spec.chance
        if chance is not None and self.rng.random() >= chance:
            return False, "not drawn"
        self.hits += 1
        return True, ""


class Gates:
    """The gates of one host's faults, by index, made on first use."""

    def __init__(self, seed: int, node: str):
        self.seed = seed
        self.node = node
        self.gates: dict[int, Gate] = {}

    def gate(self, index: int, spec: TimedSpec, rate: RateLimit | None = None) -> Gate:
        found = self.gates.get(index)
        if found is None or found.spec is not spec:
            found = Gate(
                spec,
                fault_rng(self.seed, self.node, index),
                rate=RateCounter(rate) if rate is not None else None,
            )
            self.gates[index] = found
        return found

    def hits(self, index: int) -> int:
        found = self.gates.get(index)
        return found.hits if found else 0

    def clear(self) -> None:
        self.gates.clear()

    def forget_from(self, index: int) -> None:
        """Forget the gates from `index` on (faults added at run time, now removed)."""
        for found in [i for i in self.gates if i >= index]:
            del self.gates[found]
