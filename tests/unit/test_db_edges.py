"""Found untested by mutation testing of `chores/core/db.py` (stop 56)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import chores
from chores import Settings, run_chore
from chores.core.db import missing_source_indexes

import support

_PATH = os.pathsep.join(
    [str(Path(chores.__file__).parent.parent), str(Path(support.__file__).parent.parent)]
)


def _python(script: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": _PATH}
    env.pop("MONGO_URL", None)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_mongomock_database_the_caller_made_is_billed_without_the_demo_loaded():
    """The public API with the caller's own mongomock (a plain client, as a user's own tests
    would make it), in a process that never opened a `mongomock://` URL: the chore installs
    its compatibility shim itself, and the run bills and writes the invoice."""
    ran = _python(
        """
        import sys
        import mongomock
        from chores import Settings, run_chore
        from support import NOW, ai_runner

        assert "chores.core.mongomock_compat" not in sys.modules
        db = mongomock.MongoClient()["main"]
        db.tasks.insert_many([ai_runner(f"r{i}", ended=NOW, tokens=1000) for i in range(3)])
        report = run_chore(db, now=NOW, settings=Settings(mongo_url="mongomock://x"))
        print("entries", db.billing_ledger.count_documents({}))
        print("invoices", db.billing_invoices.count_documents({"org": "acme"}))
        """
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "entries 3" in ran.stdout and "invoices 1" in ran.stdout, ran.stdout


class _Indexed:
    """A collection as `missing_source_indexes` reads it: the server's `index_information`
    (as tests/unit/test_source.py builds it)."""

    def __init__(self, **indexes: dict[str, Any]) -> None:
        self.indexes = {"_id_": {"key": [("_id", 1)], "v": 2}, **indexes}

    def index_information(self) -> dict[str, dict[str, Any]]:
        return self.indexes


def _missing(
    settings: Settings, *, tasks: _Indexed | None = None, findings: _Indexed | None = None
):
    found = {"tasks": tasks or _Indexed(), "findings": findings or _Indexed()}
    collections = type("Sources", (), found)()
    return {m.name: m for m in missing_source_indexes(collections, settings)}


@pytest.mark.parametrize(
    "partial",
    [
        {"$and": [5]},  # a part that is no document
        {"$and": [{"_type": "ai"}, "ai"]},
        {"$and": {"_type": "ai"}},  # not a list
        {"$and": [{"_type": "ai"}, {"status": "RUNNING"}]},  # one part the reads do not imply
    ],
)
def test_a_partial_filter_the_check_cannot_read_is_reported_unusable_not_a_crash(settings, partial):
    """A partial filter of a shape no server would keep but a hand-made demo store may (its
    `$and` not a list of documents) is taken as not implied: `chore status` names the index
    unusable rather than failing; so is a `$and` one of whose parts the reads do not imply."""
    info = {"key": [("extra_data.runner_id", 1)], "v": 2, "partialFilterExpression": partial}
    missing = _missing(settings, findings=_Indexed(theirs=info))
    assert missing["chore_spawn_runner"].unusable == "partial, with a filter its reads do not imply"


@pytest.mark.parametrize(
    "partial",
    [
        {"ai_type": {"$nin": ["task", "workflow", "scan"]}},  # the opposite of the reads
        {"_type": {"$all": ["ai"]}},
        # one operator implied, the other excluding the subagents' findings
        {"ai_type": {"$in": ["task", "workflow", "scan"], "$nin": ["task"]}},
    ],
)
def test_a_partial_filter_listing_the_read_values_under_another_operator_is_unusable(
    settings, partial
):
    """Only `$in` (and `$eq`, `$exists: true`) of the values the reads hold is implied: a
    `$nin` of exactly those values excludes every finding the spawn reads look for, and the
    index must be reported unusable, not counted as serving them."""
    info = {"key": [("extra_data.runner_id", 1)], "v": 2, "partialFilterExpression": partial}
    missing = _missing(settings, findings=_Indexed(theirs=info))
    assert missing["chore_spawn_runner"].unusable == "partial, with a filter its reads do not imply"


@pytest.mark.parametrize("piece", ["Zq", "7", "pp"])
def test_a_short_piece_of_a_credential_option_pymongo_quotes_is_hidden(piece):
    """pymongo quotes one piece of `authMechanismProperties` (a session token cut at `,`
    and `:`): a piece of one or two characters is hidden where it stands alone, as a longer
    one is anywhere."""
    from chores.core.db import mongo_client
    from chores.core.exceptions import ConfigError

    url = (
        "mongodb://nohost.invalid/?authMechanism=MONGODB-AWS"
        f"&authMechanismProperties=AWS_SESSION_TOKEN:IQoJb3,{piece}:x"
    )
    with pytest.raises(ConfigError) as raised:
        mongo_client(Settings(mongo_url=url), connect=False)
    said = str(raised.value)
    assert "authMechanismProperties=***: *** is not a supported auth mechanism property" in said
    assert f"{piece} is not" not in said and "IQoJb3" not in said


@pytest.mark.parametrize(
    ("option", "choices"),
    [
        (
            "readPreference=second",
            "Must be one of: primary, primaryPreferred, secondary, secondaryPreferred",
        ),
        ("uuidRepresentation=standar", "'unspecified', 'standard', 'pythonLegacy'"),
    ],
)
def test_a_mistyped_option_value_leaves_pymongos_list_of_choices_readable(option, choices):
    """A value that is no credential is hidden only where it stands alone: the valid
    choices pymongo lists (which begin with the mistyped value) are shown whole, so the user
    can correct it."""
    from chores.core.db import mongo_client
    from chores.core.exceptions import ConfigError

    with pytest.raises(ConfigError) as raised:
        mongo_client(Settings(mongo_url=f"mongodb://u:pw@nohost.invalid/?{option}"), connect=False)
    said = str(raised.value)
    assert choices in said and "***ary" not in said and "***d'" not in said
    assert f"MONGO_URL mongodb://u:***@nohost.invalid/?{option}: " in said


def test_a_source_index_simply_absent_is_said_missing_with_the_command_not_unusable(settings):
    """What a run logs (and `chore status` shows) for an index that is not there at all: its
    keys, what its absence costs and the command, without the advice meant for one present
    in a form the reads cannot use."""
    missing = _missing(settings)
    assert missing["chore_name_stamp"].warning() == (
        "source index missing: tasks {name: 1, last_updated_db: 1} (chore_name_stamp); "
        "every batch of changed runners is a collection scan of tasks "
        "(create it: chore db indexes --apply)"
    )
    assert all(m.unusable is None for m in missing.values())
    assert not any("cannot use" in m.warning() for m in missing.values())


class _Collection:
    def __init__(self, name: str, indexes: dict[str, dict[str, Any]], created: list[str]):
        self.name, self._indexes, self._created = name, indexes, created

    def index_information(self) -> dict[str, dict[str, Any]]:
        return {"_id_": {"key": [("_id", 1)], "v": 2}, **self._indexes}

    def create_indexes(self, models: list[Any]) -> list[str]:
        names = [model.document["name"] for model in models]
        self._created += [f"{self.name} {name}" for name in names]
        return names


def test_an_index_a_dba_made_on_an_older_server_is_taken_as_the_chores(settings):
    """`index_information()` of an index built on a MongoDB before 4.4 with `background`
    holds `ns` and `background` besides its keys: with the chore's keys it is the chore's
    index, and none is created beside it (a server refuses the copy under another name)."""
    from chores.core.db import ensure_indexes

    created: list[str] = []
    old = {"key": [("org", 1)], "v": 1, "ns": "main.billing_dirty", "background": True}
    collections = {"billing_dirty": {"by_dba": old}}

    class _Database:
        def __getitem__(self, name: str) -> _Collection:
            return _Collection(name, collections.get(name, {}), created)

    ensure_indexes(_Database(), settings)  # type: ignore[arg-type]
    assert "billing_ledger runner_seq" in created
    assert not [c for c in created if c.startswith("billing_dirty ")]


def test_the_billing_indexes_are_built_once_per_database_in_a_process(db, settings, monkeypatch):
    """A worker runs every few minutes: its first run creates the billing indexes, the next
    ones of that database send no index command at all; another database of the same
    client gets its own."""
    import mongomock

    built: list[str] = []
    create_indexes = mongomock.collection.Collection.create_indexes

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        built.append(self.name)
        return create_indexes(self, *args, **kwargs)

    monkeypatch.setattr(mongomock.collection.Collection, "create_indexes", counted)
    run_chore(db, now=support.NOW, settings=settings)
    assert "billing_ledger" in built
    assert "runner_seq" in db.billing_ledger.index_information()
    built.clear()
    run_chore(db, now=support.NOW, settings=settings)
    run_chore(db, org="acme", now=support.NOW, settings=settings)
    assert built == []
    other = db.client["other"]
    run_chore(other, now=support.NOW, settings=settings)
    assert "billing_ledger" in built and "runner_seq" in other.billing_ledger.index_information()


@pytest.mark.parametrize(
    ("option", "why"),
    [
        (
            "tlsCAFile=/nonexistent/ca.pem",
            "(FileNotFoundError: The tlscafile file is not readable)",
        ),
        ("tlsCAFile={bad}", "(SSLError: [X509: NO_CERTIFICATE_OR_CRL_FOUND] no certificate or crl"),
    ],
)
def test_a_tls_file_that_cannot_be_used_is_said_with_the_reason(tmp_path, option, why):
    """A TLS file option naming a file that is missing or holds no certificate: one line that
    names the option's file and says why it cannot be used (pymongo's reason, not `None`)."""
    from chores.core.db import mongo_client
    from chores.core.exceptions import ConfigError

    bad = tmp_path / "bad.pem"
    bad.write_text("garbage\n")
    url = f"mongodb://u:pw@nohost.invalid/?tls=true&{option.format(bad=bad)}"
    with pytest.raises(ConfigError) as raised:
        mongo_client(Settings(mongo_url=url), connect=False)
    said = str(raised.value)
    assert said.startswith("MONGO_URL mongodb://u:***@nohost.invalid/?tls=true&tlsCAFile=")
    assert f": a TLS file it names cannot be used {why}" in said and "None)" not in said


def test_an_index_the_server_refuses_is_said_with_the_servers_own_reason(env_db):
    """`chore db indexes --apply` names each index refused with the server's reason (its
    `errmsg`), so the operator knows what to drop."""
    from click.testing import CliRunner
    from pymongo import ASCENDING

    from chores.cli import main

    env_db.tasks.create_index(
        [("name", ASCENDING), ("last_updated_db", ASCENDING)],
        name="chore_name_stamp",
        partialFilterExpression={"status": "RUNNING"},
    )
    result = CliRunner().invoke(main, ["db", "indexes", "--apply"])
    assert result.exit_code == 1
    assert (
        "tasks chore_name_stamp (Index with name: chore_name_stamp already exists with "
        "different options). An index of the chore's name"
    ) in result.output
