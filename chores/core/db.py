"""Database access: the client factory, the billing collections and their indexes.

`mongomock://...` URLs give an in-process mongomock client (tests), `file://PATH` one
loaded from and saved to a file (`local_store`: the demo's data, never production);
anything else is a real `pymongo.MongoClient`. Nothing here prints a URL
without redacting its password.

mongomock stays on the demo and test side: it is imported (and its compatibility shim
installed) only by `local_store`, when such a URL is opened, or when a database of a
mongomock the caller imported comes in (`_is_mongomock`). The worker never loads it.
"""

from __future__ import annotations

import contextlib
import re
import sys
import warnings
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import unquote, unquote_plus

import pymongo
from bson.codec_options import CodecOptions, DatetimeConversion
from dns.exception import DNSException
from pymongo import ASCENDING, DESCENDING, IndexModel, ReadPreference
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import ConfigurationError, OperationFailure, PyMongoError

from chores.core.exceptions import (
    ConfigError,
    CredentialsRefused,
    DatabaseUnavailable,
    IndexesNotCreated,
    SourceIsReadOnly,
)
from chores.core.settings import BILLING_COLLECTIONS, Settings, is_secret_option

Doc = dict[str, Any]
IN_PROCESS_SCHEMES = ("file://", "mongomock://")  # the demo's and tests' stores (`local_store`)


def reading(options: CodecOptions[Any]) -> CodecOptions[Any]:
    """How the chore decodes what a server sends: aware datetimes in `datetime.UTC` itself
    (not bson's FixedOffset: the rules take them as they are); a date BSON holds but Python
    cannot (year 0 or 10,000+) as a `DatetimeMS`, and bytes that are not UTF-8 as U+FFFD,
    both held by the rules as anomalies. pymongo's defaults raise on either, and the batch
    that holds one such runner stopped every run of its org."""
    return options.with_options(
        tz_aware=True,
        tzinfo=UTC,
        datetime_conversion=DatetimeConversion.DATETIME_AUTO,
        unicode_decode_error_handler="replace",
    )


def _is_mongomock(db: object) -> bool:
    """Is `db` a database of an in-process mongomock? None exists in a process that never
    imported mongomock; when one does, its compatibility shim is installed first."""
    mongomock = sys.modules.get("mongomock")
    if mongomock is None or not isinstance(db, mongomock.Database):
        return False
    from chores.core.mongomock_compat import install

    install()
    return True


def utc_view(db: Database[Doc]) -> Database[Doc]:
    """The database as the chore reads it (`reading`): every datetime aware, in UTC,
    values Python cannot decode handed to the rules rather than raised, and every read on
    the primary.

    The public API takes any pymongo `Database` (SPEC §7), whatever its client's codec
    options; a plain `MongoClient()` (tz_aware=False) hands back naive datetimes, which
    BSON stores as UTC. Rather than convert each value where it is read, the database is
    re-opened once here with the options `connect` gives its own clients, so everything
    downstream sees what it sees with `connect`.

    On the primary, whatever the URL's `readPreference`: a run reads back what it wrote
    (a draft's new ledger entries, once their dirty mark is read), which a lagging
    secondary may not hold yet; the draft would be built without them, and the mark
    deleted.

    mongomock refuses a custom tzinfo: its tz_aware datetimes are in bson's UTC
    (`as_utc` takes either). Anything that is not a Database (a test's stand-in that
    wraps one) is taken as it is.
    """
    if isinstance(db, Database):
        options = reading(db.codec_options)
        if options == db.codec_options and db.read_preference == ReadPreference.PRIMARY:
            return db
        return db.with_options(codec_options=options, read_preference=ReadPreference.PRIMARY)
    if _is_mongomock(db):
        mock_options = db.codec_options
        if mock_options.tz_aware:
            return db
        view: Database[Doc] = db.with_options(
            codec_options=mock_options.with_options(tz_aware=True)
        )
        return view
    return db


def connect(settings: Settings) -> Database[Doc]:
    """The source database named in settings, checked to be reachable.

    A `mongomock://name` URL gives one in-process mongomock client per name,
    shared by every `connect` of this process (the demo and CLI tests use it).
    """
    url = settings.mongo_url
    if url.startswith(IN_PROCESS_SCHEMES):
        from chores.core import local_store

        local: Database[Doc] = local_store.in_process_client(url)[settings.mongo_db]
        return local
    real = mongo_client(settings)
    try:
        real.admin.command("ping")
    except PyMongoError as exc:
        real.close()
        if isinstance(exc, OperationFailure) and exc.code == AUTHENTICATION_FAILED:
            raise CredentialsRefused(
                f"MongoDB at {settings.safe_mongo_url} refused the user or password of "
                "MONGO_URL (authentication failed): check them, and its authSource option "
                "if the user is not in the admin database"
            ) from None
        hint = (
            "is the server running?"
            if "://" in url
            else "MONGO_URL is read as a host name: is it meant to be a mongodb:// URL?"
        )
        raise DatabaseUnavailable(
            f"cannot reach MongoDB at {settings.safe_mongo_url}: {hint}"
        ) from None
    return real.get_database(settings.mongo_db, codec_options=reading(real.codec_options))


AUTHENTICATION_FAILED = 18  # MongoDB's error code for a user or password it refuses
UNKNOWN_OPTION = "an option pymongo does not know, which it would ignore (check its spelling)"


def mongo_client(settings: Settings, *, connect: bool = True) -> pymongo.MongoClient[Doc]:
    """A client of the MongoDB server MONGO_URL names, not checked to be reachable
    (`connect=False`: not even tried, as the worker's start checks it). `ConfigError` for a
    URL pymongo cannot read, or would go on without an option of; `DatabaseUnavailable`
    for a `mongodb+srv://` name not resolved now."""
    url = settings.mongo_url
    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always", UserWarning)
            real: pymongo.MongoClient[Doc] = pymongo.MongoClient(
                url, serverSelectionTimeoutMS=settings.mongo_timeout_ms, connect=connect
            )
    except (ConfigurationError, ValueError) as exc:
        if isinstance(exc.__cause__, DNSException):  # a mongodb+srv:// name not resolved now
            raise DatabaseUnavailable(
                f"cannot resolve MongoDB at {settings.safe_mongo_url}: {exc.__cause__}"
            ) from None
        # not pymongo's message: it may quote part of the URL (a password read as a port)
        raise ConfigError(
            f"MONGO_URL {settings.safe_mongo_url} is not a valid MongoDB URL"
        ) from None
    except OSError as exc:  # ssl.SSLError too: a TLS file option (tlsCAFile=...) unusable
        raise ConfigError(
            f"MONGO_URL {settings.safe_mongo_url}: a TLS file it names cannot be used"
            f" ({type(exc).__name__}: {exc.strerror or exc})"
        ) from None
    ignored = []
    for warning in warned:
        if _an_option_dropped(warning):
            ignored.append(_option_dropped(str(warning.message)))
        else:  # a notice, not a dropped option (a DocumentDB host, a compressor not installed)
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    if ignored:  # pymongo would go on without an option it cannot read (a typo's, say)
        real.close()
        raise ConfigError(
            f"MONGO_URL {settings.safe_mongo_url}: {_without_secrets('; '.join(ignored), url)}"
        )
    return real


def _option_dropped(text: str) -> str:
    """pymongo's warning about an option it drops, for a user of the CLI: its "Unknown
    option. Did you mean one of (a, b) or maybe a camelCase version of one? Refer to
    docstring." as UNKNOWN_OPTION and the names it suggests."""
    if not text.startswith("Unknown option"):
        return text
    suggested = re.search(r"Did you mean one of \(([^)]*)\)", text)
    return UNKNOWN_OPTION + (f"; did you mean {suggested.group(1)}?" if suggested else "")


def _an_option_dropped(warning: warnings.WarningMessage) -> bool:
    """Whether pymongo warned that it goes on without an option of the URL: one it does not
    know or whose value it cannot read (warned while parsing the URI), or a compressor name
    it does not know. Its other warnings are notices (a DocumentDB or CosmosDB host, a
    compressor whose library is not installed, for which it falls back to the next)."""
    if not issubclass(warning.category, UserWarning):
        return False
    return Path(warning.filename).name == "uri_parser_shared.py" or str(warning.message).startswith(
        "Unsupported compressor"
    )


def _without_secrets(message: str, url: str) -> str:
    """pymongo's message about an option of `url`, with the URL's password and option
    values hidden (an option may carry a credential: `tlsCertificateKeyFilePassword`).

    The password and each credential option's value, and each piece of one (pymongo
    quotes one piece of `authMechanismProperties=NAME:value,...`, decoded), are hidden
    wherever they stand; another option's value only where it stands alone, not inside a
    longer word (`?maxPoolSize=x` made "ma***poolsize")."""
    secrets, values = _secrets_of(url)
    for value in secrets:
        message = message.replace(value, "***")
    for value in values:
        message = re.sub(rf"(?<![0-9A-Za-z]){re.escape(value)}(?![0-9A-Za-z])", "***", message)
    return message


def _secrets_of(url: str) -> tuple[list[str], list[str]]:
    """The credentials written in `url` (its password, each credential option's value and
    the pieces of it between `,` and `:` but the property names pymongo lists), and its
    other option values (with pieces of one or two characters); each as written and
    decoded, longest first. Options are separated by `&` or `;`, as pymongo reads them."""
    rest = url.partition("://")[2]
    credentials, at, _ = rest.rpartition("@")
    secrets = [credentials.partition(":")[2]] if at else []
    values = []
    query = rest.partition("?")[2]
    for name, _, value in (pair.partition("=") for pair in re.split(r"[&;]", query)):
        if is_secret_option(name):
            pieces = re.split(r"[,:]", unquote_plus(value)) + re.split(r"[,:]", unquote(value))
            pieces = [value, *(p for p in pieces if p.upper() not in MECHANISM_PROPERTY_NAMES)]
            secrets += [p for p in pieces if len(p) > 2]
            values += [p for p in pieces if len(p) <= 2]  # a letter hidden only alone
        else:
            values.append(value)
    return _decoded_longest_first(secrets), _decoded_longest_first(values)


def _decoded_longest_first(values: list[str]) -> list[str]:
    found = {form for value in values for form in (value, unquote(value), unquote_plus(value))}
    return sorted((form for form in found if form), key=len, reverse=True)


# The `authMechanismProperties` names pymongo lists in its messages (4.x): names, not secrets.
MECHANISM_PROPERTY_NAMES = frozenset(
    {
        "AWS_SESSION_TOKEN",
        "CANONICALIZE_HOST_NAME",
        "ENVIRONMENT",
        "SERVICE_HOST",
        "SERVICE_NAME",
        "SERVICE_REALM",
        "TOKEN_RESOURCE",
    }
)


class ReadOnlyCollection:
    """A source collection the chore may only read: any write raises `SourceIsReadOnly`.

    The chore never writes to the platform's collections; this makes a mistake
    fail loudly in tests instead of relying on a reviewer (production should
    also use a read-only MongoDB role, see SECURITY.md).
    """

    READS = frozenset(
        {
            "find",
            "find_one",
            "aggregate",
            "count_documents",
            "estimated_document_count",
            "distinct",
            "index_information",
            "list_indexes",
            "name",
            "full_name",
            "database",
            "codec_options",
            "read_preference",
        }
    )

    def __init__(self, collection: Collection[Doc]):
        self._collection = collection

    def __getattr__(self, attr: str) -> Any:
        if attr not in self.READS:
            raise SourceIsReadOnly(
                f"the chore only reads {self._collection.name!r}; {attr}() is not allowed"
            )
        return getattr(self._collection, attr)


class Collections:
    """Every collection the chore touches, named once; a handle is built on first use (a
    quota check needs one of the fourteen, and a handle costs ~10 µs to build)."""

    def __init__(self, db: Database[Doc], settings: Settings):
        self._db = utc_view(db)  # datetimes in UTC
        self._settings = settings

    @property
    def settings(self) -> Settings:
        """The settings the collections are named by (and the run's other settings)."""
        return self._settings

    @classmethod
    def of(cls, db: Database[Doc], settings: Settings) -> Collections:
        """The collections of `db` as the chore reads them: datetimes in UTC (`utc_view`)."""
        return cls(db, settings)

    def _billing(self, name: str) -> Collection[Doc]:
        assert name in BILLING_COLLECTIONS, name  # the names Settings keeps apart from the source
        return self._db[self._settings.collection(name)]

    @cached_property
    def tasks(self) -> ReadOnlyCollection:
        return ReadOnlyCollection(self._db[self._settings.tasks_collection])

    @cached_property
    def findings(self) -> ReadOnlyCollection:
        return ReadOnlyCollection(self._db[self._settings.findings_collection])

    @cached_property
    def ledger(self) -> Collection[Doc]:
        return self._billing("ledger")

    @cached_property
    def dirty(self) -> Collection[Doc]:
        return self._billing("dirty")

    @cached_property
    def pending(self) -> Collection[Doc]:
        return self._billing("pending")

    @cached_property
    def cursors(self) -> Collection[Doc]:
        return self._billing("cursors")

    @cached_property
    def anomalies(self) -> Collection[Doc]:
        return self._billing("anomalies")

    @cached_property
    def invoices(self) -> Collection[Doc]:
        return self._billing("invoices")

    @cached_property
    def plans(self) -> Collection[Doc]:
        return self._billing("plans")

    @cached_property
    def quota(self) -> Collection[Doc]:
        return self._billing("quota")

    @cached_property
    def quota_events(self) -> Collection[Doc]:
        return self._billing("quota_events")

    @cached_property
    def runs(self) -> Collection[Doc]:
        return self._billing("runs")

    @cached_property
    def due(self) -> Collection[Doc]:
        return self._billing("due")

    @cached_property
    def counters(self) -> Collection[Doc]:
        return self._billing("counters")


def source_indexes() -> dict[str, list[IndexModel]]:
    """Indexes on the platform's collections that keep the source reads indexed."""
    return {
        "tasks": [
            IndexModel(
                [("name", ASCENDING), ("last_updated_db", ASCENDING)], name="chore_name_stamp"
            ),
            IndexModel(
                [
                    ("context.workspace_id", ASCENDING),
                    ("name", ASCENDING),
                    ("last_updated_db", ASCENDING),
                ],
                name="chore_org_name_stamp",
            ),
            IndexModel([("context.task_id", ASCENDING)], name="chore_task_group"),
        ],
        "findings": [
            IndexModel([("extra_data.runner_id", ASCENDING)], name="chore_spawn_runner"),
            IndexModel([("extra_data.subagent_session_id", ASCENDING)], name="chore_spawn_session"),
        ],
    }


def billing_indexes() -> dict[str, list[IndexModel]]:
    """Indexes on the chore's own collections (`_id` uniqueness does the rest)."""
    return {
        "ledger": [
            IndexModel([("runner_id", ASCENDING), ("seq", DESCENDING)], name="runner_seq"),
            IndexModel(
                [("org", ASCENDING), ("usage_period", ASCENDING), ("booked", ASCENDING)],
                name="org_usage_booked",
            ),
            # A final period's stragglers (`ledger._stragglers`: booked there, unstamped or
            # under an older fence), found without reading the month it holds.
            IndexModel(
                [("org", ASCENDING), ("booked", ASCENDING), ("fence", ASCENDING)],
                name="org_booked_fence",
            ),
            # What a draft build reads: the entries of a period no draft holds yet.
            IndexModel(
                [("org", ASCENDING), ("fold", ASCENDING), ("booked", ASCENDING)],
                name="org_unfolded",
            ),
        ],
        "dirty": [IndexModel([("org", ASCENDING)], name="org")],
        "pending": [
            IndexModel([("org", ASCENDING)], name="org"),
            # The claims due now (`progress.due_claims`: none, or a `recheck_at` passed): the
            # idle runners' claims not due are not examined by every run and fan-out.
            IndexModel([("recheck_at", ASCENDING)], name="recheck_at"),
            IndexModel([("org", ASCENDING), ("recheck_at", ASCENDING)], name="org_recheck_at"),
            # Whether runners are claimed by any org's runs (`Progress.claimed`, reconcile).
            IndexModel([("runner_id", ASCENDING)], name="runner"),
        ],
        "anomalies": [
            IndexModel(
                [("org", ASCENDING), ("period", ASCENDING), ("resolved", ASCENDING)],
                name="org_period_open",
            ),
        ],
        "invoices": [
            IndexModel([("org", ASCENDING), ("period", ASCENDING)], name="org_period"),
            IndexModel([("status", ASCENDING), ("period_end", ASCENDING)], name="status_end"),
        ],
        "runs": [IndexModel([("org", ASCENDING), ("started_at", DESCENDING)], name="org_started")],
    }


def ensure_indexes(db: Database[Doc], settings: Settings, *, source: bool = False) -> list[str]:
    """Create the billing indexes (and the source ones when `source`); names created.

    An index whose keys are there already under another name, with no option, is not
    created again: a server refuses the copy (`IndexOptionsConflict`, "Index already
    exists with a different name"), which stopped every run once a DBA had created one.
    Nor is a source index `chore status` counts as there (`_source_served`: one the reads
    can use begins with its keys).
    One call per collection; when the server refuses it (an index of that name already
    there with other options: made partial or hidden by hand), each of its indexes is
    created on its own, the others are created all the same, and `IndexesNotCreated`
    names those refused and why."""
    targets = [
        (db[settings.collection(short)], models, False)
        for short, models in billing_indexes().items()
    ]
    if source:
        names = {"tasks": settings.tasks_collection, "findings": settings.findings_collection}
        targets += [(db[names[short]], models, True) for short, models in source_indexes().items()]
    created: list[str] = []
    refused: list[str] = []
    for collection, models, of_the_source in targets:
        have = collection.index_information()
        models = [
            model
            for model in models
            if not _there_already(model, have)
            and not (of_the_source and _source_served(model, have.values()))
        ]
        if not models:
            continue
        try:
            created += collection.create_indexes(models)
        except OperationFailure:
            for model in models:
                try:
                    created += collection.create_indexes([model])
                except OperationFailure as exc:
                    reason = (exc.details or {}).get("errmsg") or str(exc)
                    refused.append(f"{collection.name} {model.document['name']} ({reason})")
    if refused:
        raise IndexesNotCreated(
            f"the server refused {len(refused)} of the chore's indexes (the others are there): "
            f"{'; '.join(refused)}. An index of the chore's name with other keys or options "
            f"(partial, hidden) is not replaced: drop it (or unhide it), then run "
            f"`{APPLY_INDEXES_COMMAND}`"
        )
    return created


# What `index_information()` says of an index besides its options: an index with any other
# field (unique, sparse, a TTL, a partial filter, a collation, hidden) is not the chore's.
_PLAIN_INDEX_FIELDS = frozenset({"key", "v", "ns", "background"})


def _there_already(model: IndexModel, have: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether `index_information()` (`have`) holds `model` itself under another name: its
    keys, in its order and directions, and no option at all (a unique or TTL index of the
    same keys would refuse or delete what the chore writes: the server's refusal of ours
    then says so). A server refuses to create such an index twice."""
    wanted = list(model.document["key"].items())
    for name, info in have.items():
        plain = set(info) <= _PLAIN_INDEX_FIELDS
        if name != model.document["name"] and list(info["key"]) == wanted and plain:
            return True
    return False


# What running without each source index costs, said where it is missing (run log, status).
SOURCE_INDEX_COSTS = {
    "chore_name_stamp": "every batch of changed runners is a collection scan of tasks",
    "chore_org_name_stamp": "every --org run scans every org's AI runners in tasks",
    "chore_spawn_runner": "every batch with subagents is a collection scan of findings",
    "chore_spawn_session": (
        "every batch with a subagent no spawn finding names yet (its chunks) is a "
        "collection scan of findings"
    ),
    "chore_task_group": (
        "every batch with a chunk of an AI runner started by run_task (or a subagent whose "
        "spawn finding is not stored yet) is a collection scan of tasks"
    ),
}
APPLY_INDEXES_COMMAND = "chore db indexes --apply"


@dataclass(frozen=True)
class MissingIndex:
    """A source index the server does not have (by key pattern, whatever its name), or has
    only in a form the chore's reads cannot use (`unusable`: why, e.g. `hidden`)."""

    collection: str
    name: str
    key: tuple[tuple[str, Any], ...]
    unusable: str | None = None

    @property
    def cost(self) -> str:
        return SOURCE_INDEX_COSTS.get(self.name, "every batch is a collection scan")

    def describe(self) -> str:
        fields = ", ".join(f"{field}: {direction}" for field, direction in self.key)
        found = f", present but {self.unusable}" if self.unusable else ""
        return f"{self.collection} {{{fields}}} ({self.name}{found})"

    def warning(self) -> str:
        """What a run says about it: the index, what its absence costs, how to create it."""
        create = f"create it: {APPLY_INDEXES_COMMAND}"
        if self.unusable:
            create = (
                f"the chore's reads cannot use such an index: make it usable, or {create} "
                f"(if that index is itself named {self.name}, drop it first)"
            )
        return f"source index missing: {self.describe()}; {self.cost} ({create})"


# What an AI run spawns (a spawn finding's `ai_type`): a subagent or another task, or a
# workflow or scan whose `ai` steps inherit the run's counters (`lineage.spawner_ids`).
SPAWNED_RUNNER_TYPES = ("task", "workflow", "scan")
_PRESENT = "present"  # a field every read constrains to some value, none of them null
# What each source index's reads hold of a finding, beyond its keys: a partial index
# serves them when its filter follows from this (`_implied`). The reads of tasks hold
# `name` in AI_TASK_NAMES *or* matching `^<name>/` (a variant, `ai/triage`): no filter a
# partial index may hold follows from a pattern, so none of tasks' counts.
SOURCE_READS: dict[str, dict[str, tuple[str, ...] | str]] = {
    "chore_spawn_runner": {
        "_type": ("ai",),
        "ai_type": SPAWNED_RUNNER_TYPES,
        "extra_data.runner_id": _PRESENT,
    },
    "chore_spawn_session": {
        "_type": ("ai",),
        "ai_type": ("task",),
        "extra_data.subagent_session_id": _PRESENT,
    },
}


def unusable_because(info: Mapping[str, Any], reads: Mapping[str, Any]) -> str | None:
    """Why the chore's reads (`reads`: what they hold, `SOURCE_READS`) cannot use an index
    of `index_information()`, or None: the planner ignores a hidden one, a partial one
    serves only reads that imply its filter, and one with a collation other than `simple`
    serves no string comparison made without it (the chore's are made without)."""
    if info.get("hidden"):
        return "hidden"
    wanted = info.get("partialFilterExpression")
    if wanted and not _implied(wanted, reads):  # an empty filter filters nothing
        return "partial, with a filter its reads do not imply"
    collation = info.get("collation")
    if isinstance(collation, Mapping) and collation.get("locale", "simple") != "simple":
        return f"with the collation {str(collation.get('locale'))!r:.40}"
    return None


def _implied(wanted: Any, reads: Mapping[str, Any]) -> bool:
    """Whether every document the reads can return passes the partial filter `wanted`:
    each of its clauses an equality, `$eq`, `$in` or `$exists: true` that follows from
    `reads` (anything else is taken as not implied: the index is reported unusable)."""
    if not isinstance(wanted, Mapping):
        return False
    for field, condition in wanted.items():
        if field == "$and":
            parts = condition if isinstance(condition, list) else [None]
            if not all(_implied(part, reads) for part in parts):
                return False
        elif field not in reads:
            return False
        elif isinstance(condition, Mapping):
            if not condition or not all(
                _operator_implied(operator, value, reads[field])
                for operator, value in condition.items()
            ):
                return False
        elif not _operator_implied("$eq", condition, reads[field]):
            return False
    return True


def _operator_implied(operator: str, value: Any, held: tuple[Any, ...] | str) -> bool:
    """Whether `{field: {operator: value}}` holds of every value the reads allow `field`
    (`held`: those values, or `_PRESENT` for some non-null value)."""
    if operator == "$exists":  # true as the server reads it: any text, any number but 0
        return isinstance(value, str) or (value is not None and value != 0)
    if held == _PRESENT:
        return False  # values not known here: only `$exists: true` follows
    if operator == "$eq":
        return list(held) == [value]
    if operator == "$in":
        return isinstance(value, list) and all(one in value for one in held)
    return False


def _key_pattern(key: Any) -> tuple[tuple[str, Any], ...]:
    """An index's keys as the check compares them: every numeric direction alike (the
    server walks a B-tree either way, for the equality and range reads the chore makes,
    and reads any positive number as ascending, any negative one as descending); `hashed`,
    `text`, the geo kinds and a wildcard as themselves (not counted: they serve none of
    the compound reads, and are not told apart from those they might serve)."""
    items = key.items() if hasattr(key, "items") else key
    return tuple(
        (str(field), 1 if isinstance(d, int | float) and not isinstance(d, bool) and d else d)
        for field, d in items
    )


def missing_source_indexes(collections: Collections, settings: Settings) -> list[MissingIndex]:
    """The source indexes the server lacks, from its own `index_information()` (one read-only
    call per collection; nothing is created). An index counts when its key pattern is the
    wanted one or begins with it, whatever its name (someone else may have created it),
    and the chore's reads can use it (`unusable_because`)."""
    sources = {
        "tasks": (collections.tasks, settings.tasks_collection),
        "findings": (collections.findings, settings.findings_collection),
    }
    missing: list[MissingIndex] = []
    for short, models in source_indexes().items():
        collection, name = sources[short]
        have = list(collection.index_information().values())
        for model in models:
            reasons = _why_unusable(model, have)
            if None not in reasons:
                why = ", ".join(sorted({reason for reason in reasons if reason})) or None
                want = _key_pattern(model.document["key"])
                missing.append(MissingIndex(name, model.document["name"], want, why))
    return missing


def _why_unusable(model: IndexModel, have: Iterable[Mapping[str, Any]]) -> list[str | None]:
    """For each index of `have` (`index_information()` values) whose key pattern is a source
    index's (`model`) or begins with it: None when the chore's reads can use it, else why
    not (`unusable_because`)."""
    want = _key_pattern(model.document["key"])
    reads = SOURCE_READS.get(model.document["name"], {})
    return [
        unusable_because(info, reads)
        for info in have
        if _key_pattern(info["key"])[: len(want)] == want
    ]


def _source_served(model: IndexModel, have: Iterable[Mapping[str, Any]]) -> bool:
    """Whether a source index (`model`) is there in the sense of `missing_source_indexes`:
    an index the chore's reads can use begins with its keys. `chore db indexes --apply`
    creates none `chore status` counts (outside hunt: a DBA's `{context.task_id: 1, x: 1}`
    counted, and `--apply` asked for one more, which the server refused)."""
    return None in _why_unusable(model, have)


# By client identity (clients compare equal by address: every mongomock one is "equal").
_BILLING_INDEXED: dict[tuple[int, str, str], weakref.ReferenceType[Any]] = {}


def ensure_billing_indexes(db: Database[Doc], settings: Settings) -> bool:
    """Create the billing collections' indexes once per client and database in this process
    (a run does it on its own; the source indexes are never created unasked). True when
    it created them now. A stand-in that is not a Database (a test's wrapper) is skipped."""
    if not (isinstance(db, Database) or _is_mongomock(db)):
        return False
    client = db.client
    key = (id(client), db.name, settings.billing_prefix)
    known = _BILLING_INDEXED.get(key)
    if known is not None and known() is client:
        return False
    ensure_indexes(db, settings)
    # A client that cannot be weakly referenced gets them created on every run.
    with contextlib.suppress(TypeError):
        _BILLING_INDEXED[key] = weakref.ref(client)
    return True
