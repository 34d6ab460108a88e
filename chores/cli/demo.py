"""`chore demo`: a realistic month on an in-process mongomock, metered end to end, left
behind in a local file store (`local_store`) for the other commands to explore."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
from pymongo.database import Database
from rich.console import Console
from rich.markup import escape

from chores.billing.invoice import Invoice
from chores.cli.common import console, now_option, user_errors
from chores.cli.invoice import print_invoice
from chores.cli.params import FilePathType
from chores.core.clock import checked_now
from chores.core.db import Collections, Doc, ensure_indexes
from chores.core.exceptions import ConfigError
from chores.core.local_store import DEMO_PATH, is_store, open_client, throwaway_client, url_of
from chores.core.paths import absolute
from chores.core.periods import period_of
from chores.core.settings import Settings
from chores.core.wording import counted, tally
from chores.demo.corpus import generate_corpus
from chores.metering.anomalies import AnomalyLog
from chores.quota.check import check_quota
from chores.run.chore import finalize_invoices, run_chore
from pricing import load_registry

DEMO_ORGS = ("acme", "globex", "initech")


def run_demo(
    out: Console, *, seed: int = 7, now: datetime | None = None, store: Path | None = None
) -> None:
    """The demo, on a fresh local store at `store` (saved when the command ends:
    `local_store.close_all`), or on a throwaway in-process one."""
    url = "mongomock://demo" if store is None else url_of(store)
    settings = Settings(mongo_url=url, redis_url=None)
    # Refused before the store is replaced: a --now the runs would refuse loses nothing.
    now = checked_now(now, settings.future_skew_seconds) if now else None
    now = now or datetime.now(UTC).replace(microsecond=0)
    registry = load_registry()
    client = throwaway_client() if store is None else open_client(url, fresh=True)
    db: Database[Doc] = client[settings.mongo_db]

    corpus = generate_corpus(
        seed=seed, orgs=DEMO_ORGS, runs_per_org=25, start=now - timedelta(days=40), days=39
    )
    db[settings.tasks_collection].insert_many([t for t in corpus.tasks])
    ensure_indexes(db, settings, source=True)  # what `chore db indexes --apply` creates
    db[settings.findings_collection].insert_many(corpus.findings)
    db[settings.collection("plans")].insert_many(
        [
            {"_id": "acme", "token_limit": 5_000_000, "spend_limit_micros": 50_000_000},
            {"_id": "globex", "token_limit": 1_000_000},
        ]
    )
    out.print(
        f"[bold]Seeded[/] {len(corpus.tasks)} runner documents and {len(corpus.findings)} "
        f"findings for {', '.join(DEMO_ORGS)} (registry {registry.version}, "
        f"{len(registry.models)} models)"
    )

    report = run_chore(db, now=now, registry=registry, settings=settings)
    out.print(
        f"[bold]Metered[/]: {counted(report.docs_read, 'AI runner document')} read, "
        f"{counted(report.tokens_billed, 'token')} billed, anomalies: {tally(report.anomalies)}"
    )
    rerun = run_chore(db, now=now, registry=registry, settings=settings)
    out.print(
        f"[bold]Rerun[/]: {rerun.docs_read} documents re-read, "
        f"{rerun.tokens_billed} tokens billed (exactly once)"
    )
    finalized = finalize_invoices(db, now=now, settings=settings)
    out.print(f"[bold]Finalized[/]: {', '.join(finalized) or 'nothing due yet'}\n")

    collections = Collections.of(db, settings)
    for doc in collections.invoices.find({}, sort=[("period", 1), ("org", 1)]):
        invoice = Invoice.read(doc, collections)
        print_invoice(
            out, invoice, AnomalyLog(collections).open_anomalies(invoice.org, invoice.period)
        )
        out.print()
    out.print(f"[bold]Quota decisions for {period_of(now)}[/]")
    for org in DEMO_ORGS:
        # The standing decision (what `chore status` shows), then the answer for a run ahead.
        standing = check_quota(db, org, estimated_tokens=0, now=now, settings=settings)
        ahead = check_quota(db, org, estimated_tokens=200_000, now=now, settings=settings)
        verdict = "[green]allowed[/]" if ahead.allowed else f"[red]refused[/] ({ahead.state})"
        out.print(f"  {standing.summary()} → a run of ~200K tokens: {verdict}")
    if store is not None:
        explore(out, url)


def _is_the_demos(store: Path) -> bool:
    """Whether `store` is the demo's own store (DEMO_PATH, from here), which each demo
    replaces."""
    return absolute(store) == absolute(DEMO_PATH)


def explore(out: Console, url: str) -> None:
    """How to go on from the demo without a server."""
    out.print(
        f"\n[bold]The demo's data stays in {escape(url.removeprefix('file://'))}[/] "
        "(a local store: "
        "for trying the chore out, not for production, not for concurrent use). "
        "Every command works on it:"
    )
    out.print(f"  export MONGO_URL={escape(url)}", highlight=False, soft_wrap=True)
    for command in (
        "chore status",
        "chore invoice show --org acme",
        "chore usage --org acme --by run",
        "chore anomaly list --org acme",
        "chore plan set --org acme --token-limit 2M",
        "chore quota check --org acme --estimate 500K",
        "chore report --org acme --out acme.html",
    ):
        out.print(f"  {command}", highlight=False)


@click.command(short_help="A realistic month metered end to end, no server needed.")
@click.option("--seed", default=7, show_default=True, help="Random seed of the generated month.")
@click.option(
    "--store",
    type=FilePathType(path_type=Path),
    default=DEMO_PATH,
    show_default=True,
    help="The local store the demo leaves its data in. The demo's own is replaced by each "
    "demo; another existing store only with --replace; a file that is no store never.",
)
@click.option("--replace", is_flag=True, help="Replace the store at --store if there is one.")
@click.option("--no-store", is_flag=True, help="Keep nothing: an in-process store only.")
@now_option
@user_errors
def demo(seed: int, store: Path, no_store: bool, replace: bool, now: datetime | None) -> None:
    """Seed a realistic month (three orgs, subagents, free, paid, customer-key and unknown
    models, malformed documents), meter it, finalize the months whose grace has passed and
    print the invoices and quota decisions, on its own store whatever MONGO_URL says.

    The data stays in a local file store (--store) that every other command opens with
    MONGO_URL=file://PATH: for trying the chore out, not for production and not for
    concurrent use.
    """
    given = click.get_current_context().get_parameter_source("store")
    if no_store and given is not click.core.ParameterSource.DEFAULT:
        raise click.UsageError("--store and --no-store exclude each other: give one")
    if not no_store and store.exists() and not is_store(store):
        # Said before the lock is taken: no `.lock` file is left beside it.
        raise ConfigError(
            f"{store} exists and is not a local store written by `chore`: never replaced, "
            "not even with --replace; give another --store"
        )
    if not (no_store or replace) and store.exists() and not _is_the_demos(store):
        raise ConfigError(
            f"{store} exists: `chore demo` replaces a store there only with --replace "
            f"(its data is lost), or give another --store"
        )
    out = console()
    run_demo(out, seed=seed, now=now, store=None if no_store else store)
    if no_store:
        click.echo("note: --no-store: the demo's data is not kept after this command", err=True)
