"""`chore db`: the indexes the chore needs."""

from __future__ import annotations

import click

from chores.cli.common import (
    user_errors,
)
from chores.cli.params import OneLineGroup
from chores.core.db import (
    connect,
    ensure_indexes,
)
from chores.core.settings import get_settings


# database --------------------------------------------------------------------------
@click.group(cls=OneLineGroup)
def db() -> None:
    """Database helpers."""


@db.command("indexes")
@click.option("--apply", is_flag=True, help="Create them (default: print them).")
@user_errors
def db_indexes(apply: bool) -> None:
    """The indexes the chore needs on the source and billing collections."""
    from chores.core.db import billing_indexes, source_indexes

    settings = get_settings()
    if apply:
        created = ensure_indexes(connect(settings), settings, source=True)
        click.echo(f"ensured {len(created)} indexes")
        return
    for group, prefix in ((source_indexes(), ""), (billing_indexes(), settings.billing_prefix)):
        for collection, models in group.items():
            for model in models:
                doc = model.document
                click.echo(f"{prefix}{collection}: {doc['name']} {dict(doc['key'])}")
