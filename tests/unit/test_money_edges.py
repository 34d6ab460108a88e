"""Money at its edges, from mutation testing of `chores/core/money.py`: the one rounding of a
line's exact amount into micro-dollars is half up, never half to even (`ROUND_HALF_EVEN` was
caught only by a random property test, `test_rules_reference.py`; here a worked example)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from chores import Settings, run_chore
from pricing import Registry

from support import ai_runner

CONFIG = Settings(mongo_url="mongomock://money-edges", batch_size=20, redis_url=None)
NOW = datetime(2026, 11, 28, tzinfo=UTC)
ENDED = datetime(2026, 11, 3, tzinfo=UTC)


def half_micro_registry() -> Registry:
    """One paid model whose input costs $0.50 per million tokens: half a micro-dollar each
    (USD per million tokens x tokens = micro-dollars)."""
    return Registry.model_validate(
        {
            "version": "half-micro",
            "models": [
                {
                    "id": "half-micro",
                    "tier": "paid",
                    "prices": [{"valid_from": "2026-01-01", "input": "0.5", "output": "0.5"}],
                }
            ],
        }
    )


def test_a_line_of_an_exact_half_micro_rounds_up_not_to_even(db):
    """SPEC's one rounding: a line's exact amount becomes integer micro-dollars half up. Five
    input tokens at $0.50 per million cost exactly 5 x 0.5 = 2.5 micro-dollars, which half
    up makes 3; half to even (banker's rounding, `Decimal`'s default) would make 2, and an
    invoice would differ by a micro-dollar from what the SPEC and a customer's own
    arithmetic say."""
    db.tasks.insert_one(ai_runner("r1", ended=ENDED, tokens=5, prompt=5, model="half-micro"))
    run_chore(db, now=NOW, registry=half_micro_registry(), settings=CONFIG)
    (entry,) = db.billing_ledger.find()
    assert Decimal(entry["amount_micros_exact"]) == Decimal("2.5")
    invoice = db.billing_invoices.find_one({"_id": "acme:2026-11"})
    (line,) = invoice["lines"]
    assert (line["tokens"], line["amount_micros"]) == (5, 3)
    assert invoice["total_micros"] == 3
