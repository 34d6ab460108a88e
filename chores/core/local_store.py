"""A file-backed local store, to explore every command without a MongoDB server.

`MONGO_URL=file://PATH` (relative, `file://.chore-demo/store.json`, or absolute,
`file:///tmp/store.json`) opens PATH into an in-process mongomock when a command first
connects, and writes it back when the command ends (`close_all`, which the `chore`
command calls on exit, after an error or Ctrl-C too, as a server would have kept the
writes made until then). `chore demo` leaves its month behind in one.

It is for trying the chore out, and only that:

- not for production: every command loads the whole file and, when it changed anything,
  rewrites it, and mongomock is a Python imitation of MongoDB, far slower and not exactly
  alike;
- not for concurrent use: a command holds an exclusive lock on `PATH.lock` from load to
  save, and a second command on the same store while one runs stops with a one-line
  error rather than losing the other's writes; a Celery worker refuses it
  (`service.checks.store_problem`): its billing would never be saved.

The file is MongoDB Extended JSON (canonical: datetimes, ObjectIds and 64-bit integers
come back as they went in), one object per database and collection, with the
collection's secondary indexes, so a unique index keeps its meaning across commands. A
save writes a temporary file beside it, then renames it over the store (keeping its mode
and owner); a store reached through a symlink is the file it points to; a store of
another format version is refused, not rewritten.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import re
import signal
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import IO, Any

from bson import json_util
from bson.codec_options import DatetimeConversion
from bson.errors import InvalidBSON, InvalidDocument
from bson.json_util import CANONICAL_JSON_OPTIONS, JSONOptions
from pymongo import IndexModel
from pymongo.errors import BulkWriteError, PyMongoError

from chores.core.exceptions import ConfigError
from chores.core.paths import absolute
from chores.core.settings import redact_options

SCHEME = "file://"
FORMAT = "chore-local-store"
VERSION = 1
DEMO_PATH = Path(".chore-demo") / "store.json"
INDEX_OPTIONS = ("unique", "sparse", "partialFilterExpression", "expireAfterSeconds")
# As the chore's reads decode (`db.reading`): a date outside Python's range (a source
# document's end_time after year 9999) comes back as the DatetimeMS it was saved from.
_READ = JSONOptions(tz_aware=True, tzinfo=UTC, datetime_conversion=DatetimeConversion.DATETIME_AUTO)
_MARK = f'{{"format": "{FORMAT}"'.encode()  # how `_save` begins every store
# The format named in a store reformatted by hand (`may_be_store`).
_NAMES_FORMAT = re.compile(rb'"format"\s*:\s*(\{\s*"\$symbol"\s*:\s*)?"' + FORMAT.encode() + rb'"')
_SNIFF_BYTES = 4096


MOCK_SCHEME = "mongomock://"
_MOCK_CLIENTS: dict[str, Any] = {}


def is_local(url: str) -> bool:
    return url.startswith(SCHEME)


def in_process_client(url: str) -> Any:
    """The mongomock client of a `file://PATH` store (`open_client`), or of a
    `mongomock://NAME` one: one per name, shared by every `connect` of this process (the
    demo and CLI tests use it), keeping nothing after it."""
    if is_local(url):
        return open_client(url)
    if not url.startswith(MOCK_SCHEME):
        raise ConfigError(f"not an in-process store: {url}")
    if url not in _MOCK_CLIENTS:
        _MOCK_CLIENTS[url] = _mongomock_client()
    return _MOCK_CLIENTS[url]


def is_client_of(url: str, client: Any) -> bool:
    """Whether `client` is the in-process client that `url` names in this process (a
    `file://` store opened, or a `mongomock://` name used), not another mongomock."""
    if is_local(url):
        store = _OPEN.get(file_of(url))
        return store is not None and store.client is client
    return _MOCK_CLIENTS.get(url) is client


def throwaway_client() -> Any:
    """A fresh in-process mongomock client, kept by nobody (`chore demo --no-store`)."""
    return _mongomock_client()


def path_of(url: str) -> Path:
    """`file://.chore-demo/store.json` -> `.chore-demo/store.json`; `file:///x` -> `/x`.

    A URL that may hold credentials (`holds_credentials`) is refused, and not shown: never
    read as a path that messages would then print."""
    text = url[len(SCHEME) :]
    if not text:
        raise ConfigError(f"MONGO_URL {url} names no file: use file://PATH, such as {url_of()}")
    if holds_credentials(text):
        raise ConfigError(
            "the local store's URL (not shown) reads as file://USER:PASSWORD@... or carries a "
            f"credential option: a local store is a file, file://PATH, such as {url_of()} (a "
            "relative name holding ':' as file://./NAME)"
        )
    return Path(text)


def holds_credentials(text: str) -> bool:
    """Whether what follows `file://` may hold credentials: a `:` (percent-encoded too) before
    the first `/`, where a URL puts `user:password@` (and a password alone may hold a `/` or
    an `@`), or a credential option (`?password=`). `store@v2.json`, `/tmp/a:b.json` and
    `./store:v2.json` are names."""
    authority = text.partition("/")[0].lower()
    return ":" in authority or "%3a" in authority or redact_options(text) != text


def file_of(url: str) -> Path:
    """The file a `file://` URL names, absolute, links followed: a store reached through a
    symlink is written where the link points and locked there, or two names of one file
    would make two diverging stores."""
    return absolute(path_of(url))


def url_of(path: Path = DEMO_PATH) -> str:
    """The `file://` URL of a store's path (`./NAME` when a relative one's first part holds a
    `:`, which `path_of` would take for credentials)."""
    if not path.is_absolute() and ":" in path.parts[0]:
        return f"{SCHEME}./{path}"
    return f"{SCHEME}{path}"


@dataclass
class LocalStore:
    path: Path
    client: Any  # mongomock.MongoClient
    lock: IO[str]
    loaded: str | None = None  # the file's text when loaded: saved again only if changed


_OPEN: dict[Path, LocalStore] = {}


def open_client(url: str, *, fresh: bool = False) -> Any:
    """The mongomock client of the store at `url`, loaded once per command.

    `fresh` starts an empty store (the demo), replacing the file when it is saved. A file
    that is no local store is not replaced (ConfigError): it is not the chore's to lose.
    """
    path = file_of(url)
    store = _OPEN.get(path)
    if store is not None:
        return store.client
    if not fresh and path.exists() and not path.is_file():
        raise ConfigError(
            f"MONGO_URL {url}: {path_of(url)} is not a regular file (a directory, a pipe or "
            "a device): a local store is a file"
        )
    if not fresh and not path.is_file():
        raise ConfigError(
            f"MONGO_URL {url}: no local store at {path_of(url)} (`chore demo` creates "
            f"{DEMO_PATH}; a file:// store is for trying the chore out without a server)"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the local store {path}: {_reason(exc)}") from None
    lock_path = Path(f"{path}.lock")
    lock_was_there = lock_path.exists()
    lock = _lock(path)
    try:
        if fresh and path.exists() and not is_store(path):
            raise ConfigError(
                f"{path_of(url)} exists and is not a local store written by `chore`: not "
                "replaced (give another path)"
            )
        client: Any = _mongomock_client()
        loaded = None if fresh else _load(path, client)
    except BaseException:
        if not lock_was_there and path.exists() and not may_be_store(path):
            # A file that is no store: no lock file of ours left beside it. Never the lock
            # of a store (or of one being created): a command that opened it before the
            # unlink would lock a file nobody else sees.
            lock_path.unlink(missing_ok=True)
        lock.close()
        raise
    _OPEN[path] = LocalStore(path, client, lock, loaded)
    return client


def is_store(path: Path) -> bool:
    """Whether the file at `path` begins as `_save` writes a store (its format mark first):
    what `chore demo` may replace. Strict, the safe side there: a store reformatted by hand
    is not one, and the demo leaves it alone (`may_be_store` is the lenient judge, for what
    must never be replaced). Only a regular file may be one: a named pipe or a device is
    never opened (a pipe with no writer would wait for good)."""
    head = _head_and_tail(path)
    return head is not None and head[0].startswith(_MARK)


def may_be_store(path: Path) -> bool:
    """Whether the file at `path` is, or may be, a local store: `is_store`, or it names the
    store's format (`"format": "chore-local-store"`, or its `$symbol` form, which loading
    reads alike) in its first or last few KB, as a store reformatted by hand does
    (`python -m json.tool` keeps the key first, `jq -S` sorts it after `databases`). Only
    those few KB are read, whatever the file's size. Lenient, the safe side for what must
    never destroy a store: `--out` does not replace such a file, and a failed open keeps
    its lock file."""
    parts = _head_and_tail(path)
    if parts is None:
        return False
    return parts[0].startswith(_MARK) or any(_NAMES_FORMAT.search(part) for part in parts)


def _head_and_tail(path: Path) -> tuple[bytes, bytes] | None:
    """A regular file's first and last `_SNIFF_BYTES` (overlapping in a small file); None
    for anything else or a file that cannot be read."""
    if not path.is_file():
        return None
    try:
        with path.open("rb") as stream:
            head = stream.read(_SNIFF_BYTES)
            size = stream.seek(0, os.SEEK_END)
            stream.seek(max(size - _SNIFF_BYTES, 0))
            return head, stream.read(_SNIFF_BYTES)
    except OSError:
        return None


def close_all(*, save: bool = True) -> list[Path]:
    """Write every open store back to its file (atomically, and only if it changed) and
    release its lock. Ctrl-C, SIGTERM or SIGHUP during the writing is held until every
    store is written, then raised (KeyboardInterrupt): it never costs the command's writes.
    A store that cannot be written raises ConfigError (its writes are lost: it says so)."""
    saved = []
    with _interruptions_deferred():
        while _OPEN:
            path, store = _OPEN.popitem()
            try:
                if save and _save(store):
                    saved.append(path)
            finally:
                store.lock.close()
    return saved


@contextmanager
def _interruptions_deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP (those not ignored) until the block ends, then raise
    KeyboardInterrupt for the first one received. Only the main thread handles signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def remember(signum: int, frame: Any) -> None:
        received.append(signum)

    held = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
    previous = {
        sig: signal.signal(sig, remember) for sig in held if signal.getsignal(sig) != signal.SIG_IGN
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        raise KeyboardInterrupt(signal.Signals(received[0]).name)


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _lock(path: Path) -> IO[str]:
    try:
        handle = open(f"{path}.lock", "a", encoding="utf-8")  # noqa: SIM115 (held until close_all)
    except OSError as exc:
        raise ConfigError(f"cannot lock the local store {path}: {_reason(exc)}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ConfigError(
            f"the local store {path} is in use by another command (a file:// store is not "
            "for concurrent use): wait for it to end"
        ) from None
    return handle


def _load(path: Path, client: Any) -> str:
    """Load the store at `path` into `client`; returns the file's text."""
    try:
        text = path.read_text(encoding="utf-8")
        data = json_util.loads(text, json_options=_READ)
    except (OSError, ValueError, InvalidBSON) as exc:
        raise ConfigError(f"{path}: not a readable local store ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a local store written by `chore` (no {FORMAT!r} mark)")
    if data.get("version") != VERSION:
        # Another version's store would be rewritten in this one's format, losing what it
        # holds that this version does not know: not opened, not changed.
        raise ConfigError(
            f"{path}: a local store of version {data.get('version')!r}, where this chore "
            f"reads version {VERSION}: not opened, not changed"
        )
    try:
        _fill(client, data.get("databases", {}))
    except (AttributeError, KeyError, TypeError, ValueError, InvalidDocument, PyMongoError) as exc:
        # A file edited by hand: a document MongoDB would not take, a duplicate `_id`, or
        # not the shape `_save` writes.
        raise ConfigError(f"{path}: not a readable local store ({_problem(exc)})") from None
    return text


def _fill(client: Any, databases: dict[str, Any]) -> None:
    """Each database's collections as `_save` wrote them: indexes, then documents."""
    for db_name, collections in databases.items():
        for name, content in collections.items():
            collection = client[db_name][name]
            # As the chore creates them (`create_indexes` of IndexModels): mongomock takes
            # a `create_index` of the same index for one "with different options".
            models = [
                IndexModel(
                    [tuple(pair) for pair in index["key"]],
                    name=index["name"],
                    **{k: index[k] for k in INDEX_OPTIONS if k in index},
                )
                for index in content.get("indexes", [])
            ]
            if models:
                collection.create_indexes(models)
            if content.get("documents"):
                collection.insert_many(content["documents"])


def _problem(exc: Exception) -> str:
    """What is wrong with a store's content, in a few words: a duplicate key's message, not
    the documents a bulk write's details hold; a missing key named as missing."""
    if isinstance(exc, BulkWriteError) and exc.details.get("writeErrors"):
        return str(exc.details["writeErrors"][0].get("errmsg", "a document was refused"))
    if isinstance(exc, KeyError):
        return f"no {exc} where one was expected"
    text = str(exc)
    return text if len(text) <= 200 else f"{text[:197]}..."


def _save(store: LocalStore) -> bool:
    """Write the store to its file, unless nothing changed since it was loaded; whether it
    was written."""
    client = store.client
    databases: dict[str, Any] = {}
    for db_name in client.list_database_names():
        db = client[db_name]
        collections: dict[str, Any] = {}
        for name in sorted(db.list_collection_names()):
            collection = db[name]
            indexes = []
            for index_name, info in collection.index_information().items():
                if index_name == "_id_":
                    continue
                index = {"name": index_name, "key": [list(pair) for pair in info["key"]]}
                index.update({k: info[k] for k in INDEX_OPTIONS if k in info})
                indexes.append(index)
            collections[name] = {"indexes": indexes, "documents": list(collection.find({}))}
        databases[db_name] = collections
    text = json_util.dumps(
        {"format": FORMAT, "version": VERSION, "databases": databases},
        json_options=CANONICAL_JSON_OPTIONS,
    )
    if text == store.loaded:
        return False
    kept = _kept_stat(store.path)
    _remove_leftovers(store.path)
    try:
        handle, temp = tempfile.mkstemp(dir=store.path.parent, prefix=_temp_prefix(store.path))
    except OSError as exc:
        raise _not_saved(store.path, exc) from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        if kept is not None:
            os.chmod(temp, stat.S_IMODE(kept.st_mode))
            _keep_owner(temp, kept)
        os.replace(temp, store.path)
    except BaseException as exc:
        Path(temp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _not_saved(store.path, exc) from None
        raise
    return True


def _kept_stat(path: Path) -> os.stat_result | None:
    """The store file's status, whose permission bits and owner the file that replaces it
    keeps (None: no file yet). A file made read-only (no write bit, or not writable by this
    user) is not replaced: its owner meant it to stay as it is (root could replace it)."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _not_saved(path, exc) from None
    if not stat.S_IMODE(status.st_mode) & 0o222 or not os.access(path, os.W_OK):
        raise _not_saved(path, PermissionError(errno.EACCES, "the file is read-only"))
    return status


def _keep_owner(temp: str, kept: os.stat_result) -> None:
    """The new file keeps the old one's owner and group where this user may give them
    (root saving another user's store); elsewhere it is the saver's, as any new file."""
    if (kept.st_uid, kept.st_gid) == (os.geteuid(), os.getegid()):
        return
    with suppress(PermissionError):
        os.chown(temp, kept.st_uid, kept.st_gid)


def _temp_prefix(path: Path) -> str:
    """How the file a save writes before renaming it over the store begins."""
    return f".{path.name}.saving-"


def _remove_leftovers(path: Path) -> None:
    """Files a save killed before its rename left beside the store (SIGKILL, power loss):
    each is as large as the store. Only this store's saves make them, under its lock."""
    prefix = _temp_prefix(path)
    for leftover in path.parent.glob(f"{glob.escape(prefix)}*"):
        if leftover.is_file() and not leftover.is_symlink():
            leftover.unlink(missing_ok=True)


def _not_saved(path: Path, exc: OSError) -> ConfigError:
    return ConfigError(
        f"cannot write the local store {path}: {_reason(exc)}; this command's writes are lost"
    )


def _mongomock_client() -> Any:
    """A new in-process mongomock client. mongomock is imported here, on first use, with
    its compatibility shim: a process that opens no in-process store never loads it."""
    import mongomock

    from chores.core import mongomock_compat

    mongomock_compat.install()
    return mongomock.MongoClient(tz_aware=True)
