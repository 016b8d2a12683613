"""Which of an MTA's scripted faults strikes at a point of the SMTP dialogue: the node's
own (`faults:`) and those added while the lab runs, each through its gate (window,
times, rate limit per client, chance: lab.services.faultgate)."""

from __future__ import annotations

from dataclasses import dataclass

from lab.services.mta.frontend import Mta
from lab.topology.model import Fault


@dataclass(frozen=True)
class Strike:
    """A fault that strikes, and the reply it gives (None: delay or disconnect only)."""

    fault: Fault
    reply: str | None


def pick_fault(mta: Mta, stage: str, address: str | None, client: str) -> Strike | None:
    """The first fault for `stage` (and `address`, for MAIL and RCPT) that strikes now
    for `client`; a `fault.triggered` event says which. A readiness probe neither
    triggers nor uses up a fault."""
    if mta.probing:
        return None
    clock = mta.host.clock
    for index, fault in enumerate([*mta.node.faults, *mta.runtime_faults]):
        if fault.on.value != stage:
            continue
        if fault.match and (address or "").lower() != fault.match.lower():
            continue
        gate = mta.fault_gates.gate(index, fault, fault.rate)
        strikes, _ = gate.strikes(clock.time(), clock.epoch, client, fault.times)
        if not strikes:
            continue
        reply = fault.answer()
        mta.host.emit(
            "fault.triggered",
            stage=stage,
            reply=reply or "",
            disconnect=fault.disconnect,
            address=address or "",
            client=client,
            index=index,
            hit=gate.hits,
        )
        return Strike(fault, reply)
    return None
