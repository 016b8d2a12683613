"""`maillab impair` against a running lab (a real `maillab up -d` process): a link's
rate changed and shown, a mistake as one line, and `--clear`."""

from __future__ import annotations

from test_cli_lab import Maillab, Run, dialup, fails, maillab  # noqa: F401  (fixtures)


def test_impair_a_link_of_a_running_lab(maillab: Maillab, dialup: tuple[str, Run]) -> None:  # noqa: F811
    name, _ = dialup
    run = maillab.ok("impair", "--lab", name, "dialup", "--rate", "33.6kbit", "--delay", "150ms")
    assert run.out.strip() == "dialup: rate=33.6kbit delay=150ms"
    run = maillab.ok("impair", "--lab", name, "dialup", "--drop-after", "50KB")
    assert run.out.strip() == "dialup: rate=33.6kbit delay=150ms drop_after=50000"
    status = maillab.ok("status", "--lab", name, "--json").json
    assert status["links"]["dialup"]["impair"]["rate"] == "33.6kbit"
    fails(
        maillab("impair", "--lab", name, "internet", "--loss", "150%"),
        "impairment of internet: loss: expected a percentage such as 1% or 0.5%"
        " (or a fraction from 0 to 1), got '150%'",
    )
    assert maillab.ok("impair", "--lab", name, "dialup", "--clear").out.strip() == "dialup: none"
