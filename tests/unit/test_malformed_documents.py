"""A billing document edited by hand out of the shape the chore writes is one line naming
the collection, the document, the field and what to do: never a traceback (outside review:
about thirty places raised one), and never a sum that skips it.

A draft is derived from its ledger: its kept sums, edited, are rebuilt from the ledger by
the next full run, and a draft edited elsewhere is removed and rebuilt the same way."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner

from chores.cli import main

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
NOW_ARG = ["--now", NOW.isoformat()]
INVOICE = "ws-acme:2026-11"


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def billed(env_db, fixture_docs):
    """The sample documents, metered: ws-acme's November draft is stored."""
    env_db.tasks.insert_many(fixture_docs["tasks"])
    env_db.findings.insert_many(fixture_docs["findings"])
    assert invoke("run", "--all", *NOW_ARG).exit_code == 0
    assert env_db.billing_invoices.find_one({"_id": INVOICE})["status"] == "draft"
    return env_db


def shown(db) -> dict:
    """The draft as `invoice show --json` prints it, less when it was written."""
    result = invoke("invoice", "show", "--org", "ws-acme", "--period", "2026-11", "--json")
    assert result.exit_code == 0, result.output
    return {k: v for k, v in json.loads(result.output).items() if k != "updated_at"}


COMMANDS = {
    "invoice show": ["invoice", "show", "--org", "ws-acme", "--period", "2026-11"],
    "usage": ["usage", "--org", "ws-acme", "--period", "2026-11"],
    "reconcile": ["reconcile", "--org", "ws-acme", "--period", "2026-11", *NOW_ARG],
    "run": ["run", "--org", "ws-acme", *NOW_ARG],
    "plan set": ["plan", "set", "--org", "ws-acme", "--token-limit", "10K", *NOW_ARG],
}


VIEWS = {"invoice show", "usage", "reconcile"}  # read the whole invoice
# their quota decision reads the invoice's sums only (review: `plan set` said "decision now
# malformed invoice", exit 0, while the old plan's decision stood)
RUN = {"run", "plan set"}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize(
    ("edit", "said", "refused_by"),
    [
        ({"$unset": {"org": ""}}, "(org: missing)", VIEWS | RUN),
        ({"$set": {"total_micros": None}}, "(total_micros: Input should be a valid", VIEWS | RUN),
        ({"$unset": {"lines": ""}}, "(lines: missing)", VIEWS | RUN),
        # a count written as text is no count, to the views as to the decision (outside
        # review: reconcile said "reconciled" on a draft the run refused)
        (
            {"$set": {"lines.0.tokens": "12"}},
            "(lines.0.tokens: Input should be a valid",
            VIEWS | RUN,
        ),
        ({"$set": {"total_micros": "12"}}, "(total_micros: Input should be a valid", VIEWS | RUN),
        # a total that is not its lines' sum drove the quota decision and `invoice show`
        # (outside review); reconcile lists it (exit 4)
        ({"$inc": {"total_micros": 1_000_000}}, "(total_micros ", VIEWS - {"reconcile"} | RUN),
        ({"$inc": {"unpriced_tokens": 5}}, "(unpriced_tokens ", VIEWS - {"reconcile"} | RUN),
        ({"$set": {"runs": None}}, "(runs: Input should be a valid integer (got None))", VIEWS),
        ({"$set": {"priced_with.models": 5}}, "(priced_with: not a registry (models:", VIEWS),
    ],
)
def test_an_edited_invoice_is_one_line_in_every_command_that_reads_it(
    billed, command, edit, said, refused_by
):
    billed.billing_invoices.update_one({"_id": INVOICE}, edit)
    result = invoke(*COMMANDS[command])
    assert "Traceback" not in result.output
    if command not in refused_by:
        assert result.exit_code in (0, 4), result.output  # reconcile: 4, the edit differs
        if said.startswith(("(total_micros ", "(unpriced_tokens ")):
            assert result.exit_code == 4 and "is not" in result.output, result.output
        return
    assert result.exit_code == 1, result.output
    said_lines = result.output.strip().splitlines()
    if command == "plan set":  # the plan is set, and said so; its decision is refused
        assert said_lines[-2].startswith("ws-acme: token limit 10,000 tokens"), result.output
        said_lines = said_lines[-1:]
    assert said_lines[0].startswith(
        f"Error: the billing_invoices document '{INVOICE}' is not as the chore writes it {said}"
    ), result.output
    assert (
        "`chore run --full --org ws-acme` rebuilds the draft from its ledger (remove it first "
        "if that run names it too)"
    ) in result.output
    assert len(said_lines) == 1


@pytest.mark.parametrize(
    ("edit", "finalized"),
    [
        ({"$set": {"status": "void"}}, False),
        ({"$set": {"priced_with.models": 5}}, True),
    ],
)
def test_an_invoice_the_chore_cannot_read_says_restore_it(billed, edit, finalized):
    """A final (or an invoice whose status is unknown): the chore does not guess."""
    if finalized:
        assert invoke("finalize", "--now", "2026-12-04T00:00:00+00:00").exit_code == 0
        assert billed.billing_invoices.find_one({"_id": INVOICE})["status"] == "final"
    billed.billing_invoices.update_one({"_id": INVOICE}, edit)
    result = invoke(*COMMANDS["invoice show"])
    assert result.exit_code == 1, result.output
    assert "is not as the chore writes it" in result.output
    assert result.output.strip().endswith("restore it as it was"), result.output


def test_a_removed_draft_is_rebuilt_by_a_full_run_as_the_error_says(billed):
    before = shown(billed)
    billed.billing_invoices.update_one({"_id": INVOICE}, {"$set": {"total_micros": None}})
    billed.billing_invoices.delete_one({"_id": INVOICE})
    result = invoke("run", "--full", "--org", "ws-acme", *NOW_ARG)
    assert result.exit_code == 0, result.output
    assert shown(billed) == before


@pytest.mark.parametrize(
    "edit",
    [
        {"$set": {"usage_groups.0.day": 5}},
        {"$set": {"usage_groups.0.day": "2026-13-40"}},
        {"$set": {"usage_groups.0.input": "5"}},
        {"$unset": {"usage_groups.0.late": ""}},
        {"$set": {"pending_fold": []}},
    ],
)
def test_edited_sums_of_a_draft_are_rebuilt_from_its_ledger(billed, edit):
    """As a draft whose sums were removed: reconcile names the edit, the next full run
    rebuilds the draft from its ledger, to the micro-dollar."""
    before = shown(billed)
    billed.billing_invoices.update_one({"_id": INVOICE}, edit)
    checked = invoke(*COMMANDS["reconcile"])
    assert checked.exit_code == 4 and "an edit" in checked.output, checked.output
    rebuilt = invoke("run", "--full", "--org", "ws-acme", *NOW_ARG)
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "rebuilt from the ledger" in rebuilt.output
    assert shown(billed) == before
    assert invoke(*COMMANDS["reconcile"]).exit_code == 0


def an_entry_with_usage(db) -> str:
    entry = db.billing_ledger.find_one(
        {"org": "ws-acme", "usage_period": "2026-11", "input_tokens": {"$gt": 0}}
    )
    return entry["_id"]


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        ({"$unset": {"late": ""}}, "(late: missing)"),
        ({"$set": {"usage_day": 5}}, "(usage_day: Input should be a valid string (got 5))"),
        ({"$set": {"usage_day": "2026-11-31"}}, "(usage_day: day is out of range for month"),
        ({"$set": {"input_tokens": "5"}}, "(input_tokens: Input should be a valid integer"),
        ({"$set": {"output_tokens": None}}, "(output_tokens: Input should be a valid integer"),
        ({"$unset": {"runner_id": ""}}, "(runner_id: missing)"),
        ({"$set": {"model": 5}}, "(model: Input should be a valid string (got 5))"),
        ({"$set": {"byok": "no"}}, "(byok: Input should be a valid boolean (got 'no'))"),
    ],
)
@pytest.mark.parametrize("command", ["usage", "reconcile", "run --full"])
def test_an_edited_ledger_entry_is_one_line_naming_it(billed, edit, said, command):
    """The ledger is the books: an entry edited by hand is refused where it is read, never
    summed without it (a real server's `$sum` skips a count written as text) nor a
    traceback."""
    entry_id = an_entry_with_usage(billed)
    billed.billing_ledger.update_one({"_id": entry_id}, edit)
    args = {
        "usage": COMMANDS["usage"],
        "reconcile": COMMANDS["reconcile"],
        "run --full": ["run", "--full", "--org", "ws-acme", *NOW_ARG],
    }[command]
    result = invoke(*args)
    assert result.exit_code == 1, result.output
    assert result.output.startswith(
        f"Error: the billing_ledger document '{entry_id}' is not as the chore writes it {said}"
    ), result.output
    assert result.output.strip().endswith("restore it as it was")


@pytest.mark.parametrize(
    "edit",
    [
        {"$set": {"input_tokens": "5"}},  # $sum skips it, as a real server's does
        {"$unset": {"cached_tokens": ""}},
        {"$unset": {"runner_id": ""}},  # $addToSet skips it: one run fewer
        {"$set": {"late": "yes"}},  # a key of the groups
        {"$set": {"usage_day": None}},
    ],
)
def test_the_ledger_summed_in_the_database_refuses_an_edited_entry(billed, edit):
    """What a removed draft is rebuilt from, and a full run checks drafts against: the
    `$group` of a period's entries, which skips what it cannot sum."""
    from chores.billing.invoices import Invoices
    from chores.core.db import Collections
    from chores.core.exceptions import MalformedDocument
    from chores.core.settings import get_settings
    from chores.metering.anomalies import AnomalyLog
    from chores.metering.ledger import Ledger
    from chores.metering.progress import Progress
    from pricing import load_registry

    collections = Collections.of(billed, get_settings())
    invoices = Invoices(
        collections,
        load_registry(),
        Ledger(collections, batch_size=100),
        AnomalyLog(collections),
        Progress(collections),
    )
    pair = {("ws-acme", "2026-11")}
    assert invoices.check_drafts(pair) == []
    entry_id = an_entry_with_usage(billed)
    billed.billing_ledger.update_one({"_id": entry_id}, edit)
    with pytest.raises(MalformedDocument, match=f"billing_ledger document '{entry_id}'"):
        invoices.check_drafts(pair)


@pytest.mark.parametrize(
    "edit",
    [
        {"$set": {"period": "bogus"}},
        {"$set": {"period": 5}},
        {"$set": {"org": 5}},
        {"$unset": {"org": ""}},
    ],
)
def test_an_anomaly_edited_out_of_its_invoice_is_recorded_where_it_belongs_again(billed, edit):
    """An anomaly record flags no invoice once its org or period is edited out of shape
    (before: a traceback sorting the invoices to mark); a run that sees its anomaly again
    records it where a new one would go."""
    record = billed.billing_anomalies.find_one({"org": "ws-beta"})
    assert record is not None
    billed.billing_anomalies.update_one({"_id": record["_id"]}, edit)
    result = invoke("run", "--full", "--all", *NOW_ARG)
    assert result.exit_code == 0, result.output
    again = billed.billing_anomalies.find_one({"_id": record["_id"]})
    assert (again["org"], again["period"], again["resolved"]) == ("ws-beta", "2026-11", False)


@pytest.mark.parametrize(
    ("collection", "document", "edit", "said"),
    [
        (
            "billing_pending",
            {"_id": "r1:claim", "runner_id": "r1", "org": "ws-acme", "recheck_at": None},
            None,
            "(source_id: missing)",
        ),
        (  # the property test: a list as the runner id, unhashable
            "billing_pending",
            {"_id": "r1:claim", "runner_id": ["r1"], "source_id": "r1", "org": "ws-acme"},
            None,
            "(runner_id: Input should be a valid string (got ['r1']))",
        ),
        (
            "billing_dirty",
            {"_id": "b:ws-acme:2026-11", "org": "ws-acme", "period": "2026-13", "open": False},
            None,
            "(period: not a period (YYYY-MM) (got '2026-13'))",
        ),
    ],
)
def test_a_run_refuses_an_edited_claim_or_mark_saying_a_full_run_replaces_it(
    billed, collection, document, edit, said
):
    billed[collection].insert_one(document)
    result = invoke("run", "--all", *NOW_ARG)
    assert result.exit_code == 1, result.output
    assert result.output.startswith(
        f"Error: the {collection} document '{document['_id']}' is not as the chore writes it {said}"
    ), result.output
    assert "remove it: a full run (`chore run --full`) reads every runner" in result.output
    billed[collection].delete_one({"_id": document["_id"]})
    assert invoke("run", "--full", "--all", *NOW_ARG).exit_code == 0


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("docs_read", "7", "docs_read: Input should be a valid"),
        # outside hunt: sorted after every date, it never showed
        ("started_at", "yesterday", "started_at: Input should be a valid datetime"),
    ],
)
def test_status_shows_an_edited_run_record_as_malformed_and_the_others(billed, field, value, said):
    first = billed.billing_runs.find_one({})
    for _ in range(11):  # more intact records than `status` shows (10)
        assert invoke("run", "--all", *NOW_ARG).exit_code == 0
    billed.billing_runs.update_one({"_id": first["_id"]}, {"$set": {field: value}})
    result = invoke("status", *NOW_ARG)
    assert result.exit_code == 0, result.output
    shown = " ".join(result.output.split())  # the table's cells wrapped at any width
    assert "malformed" in shown and said in shown
    assert "all" in shown  # the intact records' scope


def test_an_anomaly_whose_period_was_edited_moves_to_the_open_month_once_its_own_is_final(
    billed,
):
    """Before: recorded on no invoice, it 'stayed' there (its month final), and its edited
    period stayed in the database for good."""
    later = ["--now", "2026-12-04T00:00:00+00:00"]
    assert invoke("finalize", *later).exit_code == 0
    record = billed.billing_anomalies.find_one({"org": "ws-beta"})
    billed.billing_anomalies.update_one({"_id": record["_id"]}, {"$set": {"period": "bogus"}})
    assert invoke("run", "--full", "--all", *later).exit_code == 0
    again = billed.billing_anomalies.find_one({"_id": record["_id"]})
    assert (again["org"], again["period"], again["resolved"]) == ("ws-beta", "2026-12", False)


NOT_PRICED_SO = "(its lines are not what its usage_groups price to at the prices it names)"


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        # before: its lines' ValidationError, a traceback, after its fence had moved
        ({"$set": {"lines.0.tokens": None}}, "(lines.0.tokens: Input should be a valid integer"),
        # outside review: lines and a total edited alike, which no check of a draft's own
        # numbers sees, were frozen, a final charging $1 more for good; its lines are now
        # priced again from its kept sums at the prices it names
        ({"$inc": {"lines.0.amount_micros": 1_000_000, "total_micros": 1_000_000}}, NOT_PRICED_SO),
        ({"$inc": {"lines.0.tokens": 7, "lines.0.input_tokens": 7}}, NOT_PRICED_SO),
    ],
)
def test_a_due_draft_edited_by_hand_is_never_frozen(billed, edit, said):
    """Refused and named, the other due drafts frozen; the full run rebuilds it from its
    ledger, as the error says, and it is then frozen as its ledger says."""
    before = shown(billed)
    billed.billing_invoices.update_one({"_id": INVOICE}, edit)
    result = invoke("finalize", "--now", "2026-12-04T00:00:00+00:00")
    assert result.exit_code == 1, result.output
    assert result.output.startswith(
        "Error: finalized ws-beta:2026-11; refused 1 draft edited by hand: the "
        f"billing_invoices document '{INVOICE}' is not as the chore writes it {said}"
    ), result.output
    assert billed.billing_invoices.find_one({"_id": INVOICE})["status"] == "draft"
    assert invoke("run", "--full", "--org", "ws-acme", *NOW_ARG).exit_code == 0
    assert shown(billed) == before
    again = invoke("finalize", "--now", "2026-12-04T00:00:00+00:00")
    assert again.exit_code == 0 and INVOICE in again.output, again.output


def test_entries_written_before_some_fields_existed_are_read_as_before(billed):
    """Review: entries written before `priced_as`, `amount_micros_exact`, `subagent`,
    `parent_id`, `fence` and `fold` existed were refused by `usage` and `report`, which
    read them with defaults before."""
    from chores.metering.ledger import ADDED_LATER

    before = invoke(*COMMANDS["usage"], "--json")
    assert before.exit_code == 0, before.output
    older = ADDED_LATER - {"fold"}  # unfolded, the draft would hold what no entry says
    billed.billing_ledger.update_many({}, {"$unset": dict.fromkeys(older, "")})
    for args in (COMMANDS["usage"], COMMANDS["reconcile"], ["run", "--full", "--all", *NOW_ARG]):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
    after = invoke(*COMMANDS["usage"], "--json")
    # the same rows and amounts; only what the missing fields said is gone
    unsaid = {"subagent", "parent_id"}
    assert without(json.loads(after.output), unsaid) == without(json.loads(before.output), unsaid)


def without(value, keys):
    """`value` (parsed JSON) with these keys dropped at every level."""
    if isinstance(value, dict):
        return {k: without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [without(v, keys) for v in value]
    return value


def test_an_invoice_whose_org_is_a_list_is_one_line_in_a_full_run(billed):
    """Review: `Invoices._drafts` put it in a set: 'unhashable type: list'."""
    billed.billing_invoices.update_one({"_id": INVOICE}, {"$set": {"org": ["ws-acme"]}})
    result = invoke("run", "--full", "--all", *NOW_ARG)
    assert result.exit_code == 1, result.output
    assert result.output.startswith(
        f"Error: the billing_invoices document '{INVOICE}' is not as the chore writes it "
        "(org: Input should be a valid string (got ['ws-acme']))"
    ), result.output
    assert "`chore run --full --org ws-acme` rebuilds the draft" in result.output


def test_a_ledger_entry_whose_org_is_a_list_holding_it_is_refused_by_the_views(billed):
    """Review: `{"org": {"$eq": ...}}` matches a list holding the org: `usage` summed it."""
    entry_id = an_entry_with_usage(billed)
    billed.billing_ledger.update_one({"_id": entry_id}, {"$set": {"org": ["ws-acme"]}})
    result = invoke(*COMMANDS["usage"])
    assert result.exit_code == 1 and f"'{entry_id}'" in result.output, result.output
    assert "(org: Input should be a valid string" in result.output


@pytest.mark.parametrize(
    ("collection", "doc_id", "edit", "said", "remedy"),
    [
        (
            "billing_counters",
            "draft_builds",
            {"$set": {"value": "x"}},
            "(value: Input should be a valid integer (got 'x'))",
            "remove it: the next build starts it again past every build_ticket of the invoices",
        ),
        (
            "billing_counters",
            "draft_builds",
            {"$unset": {"value": ""}},
            "(value: missing)",
            "remove it: the next build starts it again past every build_ticket of the invoices",
        ),
        (  # review: a double (as a shell writes numbers) was bumped at each refusal
            "billing_counters",
            "draft_builds",
            {"$set": {"value": 7.0}},
            "(value: Input should be a valid integer (got 7.0))",
            "remove it: the next build starts it again past every build_ticket of the invoices",
        ),
        (  # the property test: `$type` matches a list holding an int, `$inc` met the list
            "billing_counters",
            "draft_builds",
            {"$set": {"value": [7]}},
            "(value: Input should be a valid integer (got [7]))",
            "remove it: the next build starts it again past every build_ticket of the invoices",
        ),
        (
            "billing_cursors",
            "*",
            {"$set": {"stamp": [5.0]}},
            "(stamp: Input should be a valid number (got [5.0]))",
            "remove it: the next run reads every runner again, from the first",
        ),
        (
            "billing_cursors",
            "*",
            {"$set": {"stamp": "yesterday"}},
            "(stamp: Input should be a valid number (got 'yesterday'))",
            "remove it: the next run reads every runner again, from the first",
        ),
    ],
)
def test_an_edited_counter_or_cursor_is_one_line(billed, collection, doc_id, edit, said, remedy):
    """Before: `$inc` on text (a real server refuses it; mongomock raised a TypeError), and
    `float('yesterday')`, each a traceback."""
    billed[collection].update_one({"_id": doc_id}, edit)
    edited = billed[collection].find_one({"_id": doc_id})
    result = invoke("run", "--full", "--all", *NOW_ARG)
    assert result.exit_code == 1, result.output
    assert billed[collection].find_one({"_id": doc_id}) == edited  # left as it was
    assert result.output.startswith(
        f"Error: the {collection} document '{doc_id}' is not as the chore writes it {said}"
    ), result.output
    assert result.output.strip().endswith(remedy)
    if collection == "billing_cursors":  # the remedy, carried out: billing as before
        before = shown(billed)
        billed[collection].delete_one({"_id": doc_id})
        assert invoke("run", "--all", *NOW_ARG).exit_code == 0
        assert shown(billed) == before


class InsertedMeanwhile:
    """A collection whose first call of `method` finds its document inserted by another run
    a moment before: the upsert collides with it (a real server's E11000 when two first
    writes race, which it does not retry for a filter beyond `_id`)."""

    def __init__(self, collection, method: str, other: dict):
        self._collection, self._method, self._other = collection, method, other

    def __getattr__(self, name: str):
        if name != self._method or self._other is None:
            return getattr(self._collection, name)

        def collide(*args, **kwargs):
            from pymongo.errors import DuplicateKeyError

            self._collection.insert_one(self._other)
            self._other = None
            raise DuplicateKeyError("E11000 duplicate key error")

        return collide


def test_the_first_ticket_and_cursor_of_two_runs_at_once_are_taken_again_not_refused(billed):
    """Review of the number-only filters: two runs' first writes on a new database collide;
    each takes the next ticket (never the other's) and moves the cursor, no error."""
    from chores.core.db import Collections
    from chores.core.settings import get_settings
    from chores.run.pipeline import Pipeline
    from pricing import load_registry

    billed.billing_counters.delete_many({})
    billed.billing_cursors.delete_many({})
    meter = Pipeline(billed, get_settings(), load_registry())
    collections: Collections = meter.collections
    counters, cursors = collections.counters, collections.cursors
    collections.counters = InsertedMeanwhile(
        counters, "find_one_and_update", {"_id": "draft_builds", "value": 1}
    )
    assert meter.invoices._ticket() == 2  # the other run's was 1
    assert collections.counters._other is None  # the collision did happen
    collections.cursors = InsertedMeanwhile(
        cursors, "find_one_and_update", {"_id": "*", "stamp": 5.0}
    )
    meter.progress.advance_cursor("*", 10.0)
    assert cursors.find_one({"_id": "*"})["stamp"] == 10.0
    assert collections.cursors._other is None  # the collision did happen


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        ({"$set": {"amount_micros_exact": "abc"}}, "(amount_micros_exact: not a decimal amount"),
        ({"$set": {"amount_micros_exact": "NaN"}}, "(amount_micros_exact: not a decimal amount"),
        # review: finite, but no amount the chore writes (the views dropped it unsaid)
        ({"$set": {"amount_micros_exact": "1E+1000000"}}, "(amount_micros_exact: not a decimal"),
        ({"$set": {"amount_micros_exact": "1E-1000000"}}, "(amount_micros_exact: not a decimal"),
        ({"$set": {"priced_as.tier": "gold"}}, "(priced_as.tier: Input should be 'paid', 'free'"),
        ({"$set": {"priced_as.price_valid_from": "x"}}, "(priced_as.price_valid_from: Invalid"),
    ],
)
@pytest.mark.parametrize(
    "command",
    [
        ["usage", "--org", "ws-acme", "--period", "2026-11", "--by", "run"],
        ["report", "--org", "ws-acme", "--period", "2026-11", "--out", "{tmp}/r.html"],
    ],
)
def test_an_entry_whose_billed_price_was_edited_is_one_line_in_the_views(
    billed, edit, said, command, tmp_path
):
    """Outside review: an `amount_micros_exact` that is no number stopped `usage --by run`
    and `report` on a `decimal.InvalidOperation` traceback (the allocation reads the
    price each entry was billed at)."""
    entry_id = an_entry_with_usage(billed)
    billed.billing_ledger.update_one({"_id": entry_id}, edit)
    result = invoke(*(arg.format(tmp=tmp_path) for arg in command))
    assert result.exit_code == 1, result.output
    assert result.output.startswith(
        f"Error: the billing_ledger document '{entry_id}' is not as the chore writes it {said}"
    ), result.output
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("quiet", [[], ["--quiet"]])
def test_kept_sums_edited_to_other_numbers_are_rebuilt_by_the_full_run(billed, quiet):
    """Well-formed numbers a run cannot tell from its ledger without reading the whole
    period (outside review: a plain run billed on top of them): reconcile names the edit,
    and the daily full run compares the draft with its ledger and rebuilds it, saying so
    on stderr, with `--quiet` too (docs review: a cron's quiet run said nothing)."""
    before = shown(billed)
    billed.billing_invoices.update_one({"_id": INVOICE}, {"$inc": {"usage_groups.0.input": 1}})
    checked = invoke(*COMMANDS["reconcile"])
    assert checked.exit_code == 4 and "an edit" in checked.output, checked.output
    rebuilt = invoke("run", "--full", "--org", "ws-acme", *quiet, *NOW_ARG)
    assert rebuilt.exit_code == 0, rebuilt.output
    assert f"draft {INVOICE} held other sums or lines than its ledger" in rebuilt.stderr
    assert shown(billed) == before
    assert invoke(*COMMANDS["reconcile"]).exit_code == 0


@pytest.mark.parametrize(
    "edit",
    [
        {"$inc": {"lines.0.amount_micros": 5_000_000, "total_micros": 5_000_000}},
        {"$inc": {"lines.0.tokens": 7, "lines.0.input_tokens": 7}},
    ],
)
def test_lines_edited_with_their_total_are_repriced_by_the_full_run(billed, edit):
    """A line and the total edited alike (outside review: the quota decision spent it, and
    `run --full` left it, while the README says it rebuilds every draft and names those
    that differed): reconcile names it, the full run reprices the draft from its sums."""
    before = shown(billed)
    billed.billing_invoices.update_one({"_id": INVOICE}, edit)
    assert shown(billed) != before
    assert invoke(*COMMANDS["reconcile"]).exit_code == 4
    rebuilt = invoke("run", "--full", "--org", "ws-acme", *NOW_ARG)
    assert rebuilt.exit_code == 0, rebuilt.output
    assert f"draft {INVOICE} held other sums or lines than its ledger" in rebuilt.output
    assert shown(billed) == before
    assert invoke(*COMMANDS["reconcile"]).exit_code == 0


def test_the_full_run_leaves_an_exact_draft_as_it_is(billed):
    stored = billed.billing_invoices.find_one({"_id": INVOICE})
    rebuilt = invoke("run", "--full", "--org", "ws-acme", *NOW_ARG)
    assert rebuilt.exit_code == 0 and "held other" not in rebuilt.output, rebuilt.output
    assert billed.billing_invoices.find_one({"_id": INVOICE}) == stored


def test_a_draft_priced_before_a_registry_change_is_repriced_by_the_full_run_unnamed(billed):
    """No edit: the full run reprices it with today's registry, and names nothing."""
    from decimal import Decimal

    from chores import get_settings, run_chore
    from pricing import Registry, load_registry

    stored = billed.billing_invoices.find_one({"_id": INVOICE})
    model = next(line["model"] for line in stored["lines"] if line["priced"])
    data = load_registry().model_dump(mode="json")
    for entry in data["models"]:
        if entry["id"] == model:
            for price in entry["prices"]:
                price["output"] = str(Decimal(price["output"]) * 2)
    changed = Registry.model_validate(data)
    settings = get_settings()
    report = run_chore(
        billed, now=NOW, org="ws-acme", full=True, registry=changed, settings=settings
    )
    assert report.repaired_drafts == []
    after = billed.billing_invoices.find_one({"_id": INVOICE})
    assert after["registry"] == changed.fingerprint
    assert after["total_micros"] > stored["total_micros"]


def test_one_orgs_edited_invoice_never_stops_the_other_orgs_decisions(billed):
    """Review: `run --all` read every org's invoice for the decisions and stopped at the
    first edited one, so no org was decided again (nor the cursor moved) until it was
    fixed; the fan-out's decisions of idle orgs likewise. Now the others are decided, the
    run's work is kept, and the run still fails naming the invoice."""
    from datetime import timedelta

    from chores import get_settings
    from chores.core.db import Collections
    from chores.core.exceptions import MalformedDocument
    from chores.quota.decisions import MALFORMED_INVOICE, Quota

    decided = {d["_id"]: d["computed_at"] for d in billed.billing_quota.find()}
    assert INVOICE.split(":")[0] in decided and len(decided) > 1
    billed.billing_invoices.update_one({"_id": INVOICE}, {"$inc": {"total_micros": 1}})
    later = NOW + timedelta(hours=1)
    result = invoke("run", "--all", "--now", later.isoformat())
    assert result.exit_code == 1
    assert f"Error: the billing_invoices document '{INVOICE}' is not as" in result.output
    after = {d["_id"]: d["computed_at"] for d in billed.billing_quota.find()}
    for org, computed_at in after.items():
        moved = computed_at > decided[org]
        assert moved == (org != "ws-acme"), (org, decided[org], computed_at)
    assert billed.billing_cursors.find_one({"_id": "*"}) is not None
    quota = Quota(Collections.of(billed, get_settings()), get_settings())
    states = quota.decide(sorted(after), later, raise_refused=False)  # as the fan-out does
    assert states["ws-acme"] == MALFORMED_INVOICE and set(quota.refused) == {"ws-acme"}
    assert all(state != MALFORMED_INVOICE for org, state in states.items() if org != "ws-acme")
    with pytest.raises(MalformedDocument, match=f"'{INVOICE}' is not as the chore writes it"):
        quota.decide(sorted(after), later)  # as `plan set` and `anomaly review` do


def test_the_full_run_repairs_a_count_edited_to_the_same_number_of_another_type(billed):
    """Review: a shell writes numbers as doubles. 336622.0 equals 336622 to Python, so the
    full run left it, while every strict reader refused it and said the full run would
    rebuild it."""
    before = shown(billed)
    stored = billed.billing_invoices.find_one({"_id": INVOICE})
    billed.billing_invoices.update_one(
        {"_id": INVOICE}, {"$set": {"total_micros": float(stored["total_micros"])}}
    )
    assert invoke(*COMMANDS["run"]).exit_code == 1  # refused, as the error says
    rebuilt = invoke("run", "--full", "--org", "ws-acme", *NOW_ARG)
    assert rebuilt.exit_code == 0, rebuilt.output
    assert f"draft {INVOICE} held other sums or lines than its ledger" in rebuilt.output
    assert type(billed.billing_invoices.find_one({"_id": INVOICE})["total_micros"]) is int
    assert shown(billed) == before


@pytest.mark.parametrize(
    ("edit", "repaired_in_place"),
    [
        ({"$set": {"total_micros": None}}, True),
        ({"$unset": {"lines": ""}}, True),
        ({"$set": {"lines.0.tokens": "12"}}, True),
        ({"$set": {"runs": None}}, True),
        ({"$inc": {"total_micros": 5}}, True),
        ({"$unset": {"org": ""}}, False),  # no pair to rebuild: named, then removed
        ({"$set": {"period": "2026-13"}}, False),
    ],
)
def test_a_malformed_draft_is_rebuilt_by_the_full_run_or_removed_first_as_the_error_says(
    billed, edit, repaired_in_place
):
    """Review: the error said to remove the draft, while the full run now rebuilds most
    edited drafts as they stand; it says to remove one only if that run names it too."""
    before = shown(billed)
    billed.billing_invoices.update_one({"_id": INVOICE}, edit)
    full = ["run", "--full", "--org", "ws-acme", *NOW_ARG]
    rebuilt = invoke(*full)
    assert (rebuilt.exit_code == 0) == repaired_in_place, rebuilt.output
    if not repaired_in_place:
        assert f"the billing_invoices document '{INVOICE}' is not as" in rebuilt.output
        assert "(remove it first if that run names it too)" in rebuilt.output
        billed.billing_invoices.delete_one({"_id": INVOICE})
        assert invoke(*full).exit_code == 0
    assert shown(billed) == before


def test_a_draft_edited_alike_that_also_has_new_usage_is_named_by_the_full_run(billed):
    """Outside review: only a draft with nothing new was compared with what its sums price
    to; one with new usage was rebuilt from its sums and the edit went unnamed."""
    from chores import get_settings, run_chore
    from pricing import load_registry

    billed.billing_invoices.update_one(
        {"_id": INVOICE}, {"$inc": {"lines.0.amount_micros": 7, "total_micros": 7}}
    )
    grown = billed.tasks.find_one({"context.workspace_id": "ws-acme", "status": "SUCCESS"})
    billed.tasks.update_one(
        {"_id": grown["_id"]},
        {"$inc": {"context.ai_tokens": 500, "context.ai_prompt_tokens": 500}},
    )
    report = run_chore(
        billed, now=NOW, org="ws-acme", full=True, registry=load_registry(), settings=get_settings()
    )
    assert report.tokens_billed == 500 and report.repaired_drafts == [INVOICE]
    assert invoke(*COMMANDS["reconcile"]).exit_code == 0
