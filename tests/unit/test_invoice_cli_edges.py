"""`chore invoice show` at its edges: an org refused before the database is reached, the
JSON under the stored field names, the columns never cut on a narrow terminal, and no
unpriced note on a priced invoice.

Found untested by mutation testing of chores/cli/invoice.py (stop 55): each test names the
mutant it kills."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from chores.cli import main

from support import NOW, closed_port

NOW_ARG = ["--now", NOW.isoformat()]


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False, prog_name="chore")


# --- invoice.py:62 `org = validate_org(org)` -> pass (mutant 6) -------------------------------


def test_show_refuses_a_malformed_org_before_the_database_is_reached(monkeypatch):
    from chores import get_settings

    monkeypatch.setenv("MONGO_URL", f"mongodb://127.0.0.1:{closed_port()}/main")
    monkeypatch.delenv("REDIS_URL", raising=False)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["invoice", "show", "--org", "", "--period", "2026-11"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code != 0
    assert "org must be a non-empty string" in result.output
    assert "MongoDB" not in result.output


def test_show_json_is_the_stored_document_under_its_stored_field_names(metered_env_db):
    """invoice.py:67 `by_alias=True` -> False: --json gave the model's names, not the
    document's (`_id`)."""
    import json

    shown = json.loads(
        invoke("invoice", "show", "--org", "ws-beta", "--period", "2026-11", "--json").output
    )
    stored = metered_env_db.billing_invoices.find_one({"_id": "ws-beta:2026-11"})
    assert shown["_id"] == stored["_id"] == "ws-beta:2026-11"
    assert set(shown) <= set(stored)


@pytest.fixture
def usage_db(env_db, registry):
    from chores import get_settings

    from support import metered_months

    metered_months(env_db, get_settings(), registry, seed=5, orgs=("acme",))
    return env_db


def test_on_a_narrow_terminal_the_tier_of_a_late_line_is_never_cut(usage_db):
    """invoice.py:111 `keep=True` -> False: the tier column was shrunk like a name column,
    `paid (late)` cut with `…`."""
    result = CliRunner().invoke(
        main, ["invoice", "show", "--org", "acme", "--period", "2026-11"], env={"COLUMNS": "60"}
    )
    assert result.exit_code == 0, result.output
    assert "(late)" in result.output, result.output


def test_on_a_narrow_terminal_the_price_date_is_never_cut(usage_db):
    """invoice.py:112 `keep=True` -> False: the `price from` date shrunk like a name, cut
    with `…`."""
    import re

    result = CliRunner().invoke(
        main, ["invoice", "show", "--org", "acme", "--period", "2026-11"], env={"COLUMNS": "60"}
    )
    assert result.exit_code == 0, result.output
    assert "price from" in result.output
    assert re.search(r"\b20\d\d-\d\d-\d\d\b", result.output), result.output


def test_a_fully_priced_invoice_has_no_unpriced_note(metered_env_db):
    """invoice.py:147 `not all(x.priced ...)` -> `all(...)`: every priced invoice said
    "UNPRICED: no price yet"."""
    result = invoke("invoice", "show", "--org", "ws-acme", "--period", "2026-11")
    assert result.exit_code == 0, result.output
    assert "0 unpriced tokens" in result.output
    assert "UNPRICED" not in result.output


def test_a_final_whose_anomalies_were_reviewed_says_why_it_is_still_flagged(env_db, registry):
    """A final keeps the flag it was frozen with. Once its anomalies are reviewed, `invoice
    show` still lists it as needing review and says why: no anomaly of it waits for review
    any more (a reviewed one stays open, so "none is open" would be untrue)."""
    from datetime import UTC, datetime

    from chores import finalize_invoices, get_settings, run_chore
    from chores.run.review import review_anomalies

    from support import ai_runner

    settings = get_settings()
    october = datetime(2026, 10, 20, tzinfo=UTC)
    env_db.tasks.insert_many(
        [ai_runner("ok", ended=october), ai_runner("bad", ended=october, tokens="12")]
    )
    run_chore(env_db, now=datetime(2026, 10, 25, tzinfo=UTC), registry=registry, settings=settings)
    assert finalize_invoices(env_db, now=NOW, settings=settings) == ["acme:2026-10"]
    review_anomalies(env_db, "acme", "2026-10", note="checked", now=NOW, settings=settings)

    result = invoke("invoice", "show", "--org", "acme", "--period", "2026-10")
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert (
        "needs review: - flagged when it was built; no anomaly of it is waiting for review" in said
    )
