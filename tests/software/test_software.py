"""lab.software: one entry per name of the topology's Software enum, and clear refusals."""

from __future__ import annotations

import pytest

from lab.errors import LabError
from lab.software import SOFTWARE, check_supported
from lab.topology.model import Software


def test_the_table_has_the_enums_names_in_order() -> None:
    assert list(SOFTWARE) == [s.value for s in Software]
    assert all(SOFTWARE.values())


def test_the_builtin_mta_runs_on_every_backend() -> None:
    check_supported("hub", "builtin", "inprocess")
    check_supported("hub", "builtin", "docker")


@pytest.mark.parametrize(
    ("software", "backend", "message"),
    [
        ("qmail", "docker", "unknown software 'qmail'; expected one of: builtin, postfix, exim"),
        ("postfix", "inprocess", "does not run on the inprocess backend"),
        ("exim", "docker", "(Exim 4, in a container (Docker backend)) is not available yet"),
    ],
)
def test_other_software_is_refused_clearly(software: str, backend: str, message: str) -> None:
    with pytest.raises(LabError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_supported("mx", software, backend)
