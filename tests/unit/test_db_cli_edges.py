"""`chore db indexes`: found untested by mutation testing (stop 56)."""

from __future__ import annotations

from click.testing import CliRunner

from chores.cli import main


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _indexes(db, collections):
    return {(c, n) for c in collections for n in db[c].index_information() if n != "_id_"}


def test_db_indexes_apply_says_how_many_it_created_and_only_that(env_db):
    """`--apply` creates the indexes and says how many in one line on stdout: the
    listing is what the command prints without `--apply`, not after creating them."""
    listed = invoke("db", "indexes")
    assert listed.exit_code == 0, listed.output
    collections = {line.split(":")[0] for line in listed.stdout.splitlines()}
    before = _indexes(env_db, collections)
    applied = invoke("db", "indexes", "--apply")
    assert applied.exit_code == 0, applied.output
    created = _indexes(env_db, collections) - before
    assert len(created) > 10  # the billing and source indexes, on an empty database
    assert applied.stdout == f"ensured {len(created)} indexes\n"
