"""`chore reconcile` and `chore finalize` on the command line: found untested by mutation
testing (stop 56)."""

from __future__ import annotations

import json
from datetime import timedelta

from click.testing import CliRunner

from chores.cli import main

from support import NOW

NOW_ARG = ["--now", NOW.isoformat()]


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_reconcile_of_an_invoice_priced_with_todays_registry_says_nothing_of_registries(
    metered_env_db,
):
    """The paragraph on another registry version is for an invoice priced with another one:
    said of every invoice, it would tell an operator to distrust amounts that are right."""
    result = invoke("reconcile", "--org", "ws-acme", "--period", "2026-11", *NOW_ARG)
    assert result.exit_code == 0, result.output
    assert "reconciled" in result.output
    assert "registry version" not in result.output


def test_reconcile_needs_a_period(env_db):
    """No `--period` is a usage error (exit 2) naming it, before any database work."""
    result = invoke("reconcile", "--org", "ws-acme", *NOW_ARG)
    assert result.exit_code == 2, result.output
    assert "Missing option '--period'" in result.output


def test_reconcile_needs_an_org(env_db):
    """No `--org` is a usage error (exit 2) naming it, as for every command of one org."""
    result = invoke("reconcile", "--period", "2026-11", *NOW_ARG)
    assert result.exit_code == 2, result.output
    assert "Missing option '--org'" in result.output


def test_reconcile_refuses_an_empty_org_as_such(metered_env_db):
    """An empty `--org` is refused as an org id, as every command does, not looked up as
    an invoice `:2026-11` that is missing."""
    result = invoke("reconcile", "--org", "", "--period", "2026-11", *NOW_ARG)
    assert result.exit_code == 1, result.output
    assert "org must be a non-empty string" in result.output
    assert "no invoice" not in result.output


def test_finalize_of_a_known_org_with_none_due_adds_no_note(metered_env_db):
    """The note after `finalize --org ORG` that finalized nothing is for an org the billing
    does not know (a typo): of a billed org it would be `note: None`."""
    result = invoke("finalize", "--org", "ws-acme", *NOW_ARG)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("finalized 0 invoices (none due")
    notes = [n for n in result.stderr.splitlines() if "in-process store" not in n]
    assert notes == []


def _reconcile(*extra: str, env: dict[str, str] | None = None):
    args = ["reconcile", "--org", "ws-acme", "--period", "2026-11", *NOW_ARG, *extra]
    return CliRunner().invoke(main, args, env=env, catch_exceptions=False)


def _row(output: str, model: str) -> list[str]:
    return next(line.split() for line in output.splitlines() if line.split()[:1] == [model])


def test_reconcile_rows_show_the_price_date_and_cents_where_they_agree(metered_env_db):
    """A line that agrees shows its amounts in cents, as the invoice does, and the day its
    price holds from; only a line that does not agree is shown to the micro-dollar."""
    from chores.core.money import usd

    report = json.loads(_reconcile("--json").output)
    result = _reconcile(env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert report["ok"]
    checked = 0
    for line in report["lines"]:
        row = _row(result.stdout, line["model"])
        assert row[-1] == "ok"
        # model, tier, from, tokens source, tokens invoiced, amount source, amount invoiced
        assert row[5:7] == [usd(line["expected_micros"]), usd(line["invoiced_micros"])], row
        if line["price_valid_from"]:
            assert line["price_valid_from"] in row and "–" not in row[:3]
            checked += 1
    assert checked and any(line["expected_micros"] % 10_000 for line in report["lines"])


def test_a_mismatch_on_a_narrow_terminal_keeps_its_verdict_tier_and_date_whole(
    metered_env_db,
):
    """The labels of a reconciliation (tier, price date, the check) are never cut on a
    narrow terminal: `MISMATCH` read as `MIS…` would hide the one thing it says."""
    metered_env_db.billing_invoices.update_one(  # an invoice line that now differs
        {"_id": "ws-acme:2026-11"}, {"$inc": {"lines.0.tokens": 1_000, "lines.0.amount_micros": 7}}
    )
    report = json.loads(_reconcile("--json").output)
    wrong = [
        line
        for line in report["lines"]
        if (line["expected_tokens"], line["expected_micros"])
        != (line["invoiced_tokens"], line["invoiced_micros"])
    ]
    assert wrong
    result = CliRunner().invoke(
        main,
        ["reconcile", "--org", "ws-acme", "--period", "2026-11", *NOW_ARG],
        env={"COLUMNS": "60"},
    )
    assert result.exit_code == 4, result.output
    assert result.stdout.count("MISMATCH") == len(wrong)
    for line in report["lines"]:
        assert line["tier"] in result.stdout
        if line["price_valid_from"]:
            assert line["price_valid_from"] in result.stdout


def test_reconcile_re_derives_the_source_as_of_its_now(metered_env_db):
    """`--now` is the moment the source is re-derived at, as for `chore run`: a day before
    the period's runners ended, their usage is still to come (held as `future_end_time`),
    so the invoice that billed it does not reconcile (exit 4); at NOW it does."""
    ended = [
        doc["end_time"]
        for doc in metered_env_db.tasks.find({"context.workspace_id": "ws-acme"})
        if doc.get("end_time")
    ]
    before = min(ended) - timedelta(days=1)
    early = invoke(
        "reconcile", "--org", "ws-acme", "--period", "2026-11", "--now", before.isoformat()
    )
    assert early.exit_code == 4, early.output
    assert "MISMATCH" in early.output
    assert invoke("reconcile", "--org", "ws-acme", "--period", "2026-11", *NOW_ARG).exit_code == 0
