"""Labs kept for reuse: one per topology, backend and options, reset between uses.

Bringing a lab up costs tens of milliseconds in process and seconds on Docker; a reset
costs a millisecond in process and a fraction of a second on Docker. `maillab check`
and the pytest plugin take their labs from a `LabPool`, which hands out an idle lab of
the same topology after resetting it, or brings a new one up:

    pool = LabPool()
    lab = pool.acquire("topologies/home-dialup.yaml")
    ...                       # the lab is the caller's until released
    pool.release(lab)
    pool.close()              # every lab down (containers removed on Docker)

A lab whose reset fails, that is no longer running, or whose topology model was edited
while it was lent (a reset puts back what the topology declares), is stopped and replaced
by a fresh one, so a check or test that broke its lab does not break the next. A lab is never handed
out twice at once: a caller that wants two labs of one topology gets two.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

from lab.harness.lab import Lab
from lab.topology import load
from lab.topology.model import Topology

MAX_IDLE = 8  # labs kept idle per pool; the least recently used goes down beyond that
# fewer of the labs that hold containers (a container per host, each a few tens of MB)
MAX_IDLE_BY_BACKEND = {"docker": 2}


class LabPool:
    def __init__(self, max_idle: int = MAX_IDLE):
        self.max_idle = max_idle
        self._idle: list[tuple[tuple[str, str, str], Lab]] = []  # oldest first
        self._busy: dict[int, tuple[tuple[str, str, str], Lab]] = {}
        self._lock = threading.Lock()
        self.made = 0  # labs brought up
        self.reused = 0  # labs handed out again after a reset

    def acquire(
        self,
        topology: str | Path | Topology,
        *,
        backend: str = "inprocess",
        source: Path | None = None,
        **options: Any,
    ) -> Lab:
        """A running lab of `topology` in its initial state: an idle one reset, or a new one."""
        if not isinstance(topology, Topology):
            source = Path(topology)
            topology = load(source).model
        key = (topology.model_dump_json(), backend, repr(sorted(options.items())))
        while (lab := self._take(key)) is not None:
            try:
                if not lab._running:
                    raise RuntimeError("the lab is not running")
                if lab.topology.model_dump_json() != key[0]:  # edited while it was lent
                    raise RuntimeError("the lab's topology was changed")
                lab.reset()
            except Exception:
                self._discard(lab)
                continue
            lab.source = source
            self.reused += 1
            return self._lend(key, lab)
        lab = Lab.up(topology, backend=backend, source=source, **options)
        self.made += 1
        return self._lend(key, lab)

    def release(self, lab: Lab) -> None:
        """The caller is done with `lab`: kept for the next acquire while it runs (the
        end of a `with` block on a lent lab releases it too)."""
        with self._lock:
            entry = self._busy.pop(id(lab), None)
        if entry is None:
            return
        lab._lender = None
        if not lab._running:
            self._discard(lab)
            return
        backend = entry[0][1]
        limit = min(self.max_idle, MAX_IDLE_BY_BACKEND.get(backend, self.max_idle))
        with self._lock:
            self._idle.append(entry)
            same = [e for e in self._idle if e[0][1] == backend]
            extra = same[: max(0, len(same) - limit)]
            kept = [e for e in self._idle if all(e is not x for x in extra)]
            extra += kept[: max(0, len(kept) - self.max_idle)]
            self._idle = kept[max(0, len(kept) - self.max_idle) :]
        for _, old in extra:
            self._discard(old)

    def discard(self, lab: Lab) -> None:
        """The caller is done with `lab` and wants nobody to use it again: it goes down."""
        with self._lock:
            self._busy.pop(id(lab), None)
        lab._lender = None
        self._discard(lab)

    def close(self) -> None:
        """Every lab of the pool down, idle or not."""
        with self._lock:
            labs = [lab for _, lab in self._idle] + [lab for _, lab in self._busy.values()]
            self._idle.clear()
            self._busy.clear()
        for lab in labs:
            self._discard(lab)

    def __enter__(self) -> LabPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _take(self, key: tuple[str, str, str]) -> Lab | None:
        with self._lock:
            for index in range(len(self._idle) - 1, -1, -1):
                if self._idle[index][0] == key:
                    return self._idle.pop(index)[1]
        return None

    def _lend(self, key: tuple[str, str, str], lab: Lab) -> Lab:
        with self._lock:
            self._busy[id(lab)] = (key, lab)
        lab._lender = self.release
        return lab

    @staticmethod
    def _discard(lab: Lab) -> None:
        with contextlib.suppress(Exception):
            lab.down()
