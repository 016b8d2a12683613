"""The harness: a Lab runs a topology on a backend; clock, events and assertions."""

from lab.harness.lab import Lab, LabAssertionError

__all__ = ["Lab", "LabAssertionError"]
