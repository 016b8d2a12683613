"""Hypothesis settings profiles and the `fuzz` marker for the fuzz tests here, registered
only if the suite's own conftest has not done it already.

Profiles: "ci" (the default: few examples, derandomized, so a run is repeatable and
quick) and "fuzz" (many examples, random); MAILLAB_HYPOTHESIS_PROFILE chooses.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.errors import InvalidArgument

PROFILES = {
    "ci": {"max_examples": 25, "derandomize": True, "deadline": None},
    "fuzz": {"max_examples": 2000, "deadline": None},
}

for _name, _options in PROFILES.items():
    try:
        settings.get_profile(_name)
    except InvalidArgument:
        settings.register_profile(_name, suppress_health_check=[HealthCheck.too_slow], **_options)
settings.load_profile(os.environ.get("MAILLAB_HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config: pytest.Config) -> None:
    if not any(line.split(":")[0].strip() == "fuzz" for line in config.getini("markers")):
        config.addinivalue_line("markers", "fuzz: property-based fuzzing (hypothesis)")
