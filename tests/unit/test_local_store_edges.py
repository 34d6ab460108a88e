"""Found untested by mutation testing of chores/core/local_store.py (stop 56)."""

from __future__ import annotations

import pytest
from bson import json_util

from chores.core import local_store
from chores.core.exceptions import ConfigError


def _documents(path):
    return json_util.loads(path.read_text())["databases"]["main"]["t"]["documents"]


def test_a_save_leaves_alone_a_directory_or_a_link_named_like_its_leftovers(tmp_path):
    """Only a save's own leftover files are removed: a directory or a symlink that happens
    to bear a leftover's name is not the chore's, and must neither be deleted (through a
    link, nothing it points to is touched) nor stop the save, which would lose the
    command's writes."""
    store = tmp_path / "store.json"
    url = local_store.url_of(store)
    local_store.open_client(url, fresh=True)["main"]["t"].insert_one({"_id": 1})
    local_store.close_all()
    directory = tmp_path / ".store.json.saving-mine"
    directory.mkdir()
    (directory / "kept.txt").write_text("mine")
    target = tmp_path / "elsewhere.txt"
    target.write_text("kept")
    link = tmp_path / ".store.json.saving-link"
    link.symlink_to(target)

    local_store.open_client(url)["main"]["t"].insert_one({"_id": 2})
    assert local_store.close_all() == [store]

    assert [d["_id"] for d in _documents(store)] == [1, 2]
    assert (directory / "kept.txt").read_text() == "mine"
    assert link.is_symlink() and target.read_text() == "kept"


def _edited_store(tmp_path, databases):
    import json

    store = tmp_path / f"store{len(list(tmp_path.iterdir()))}.json"
    header = {"format": "chore-local-store", "version": 1}
    store.write_text(json.dumps({**header, "databases": databases}))
    return store


def test_a_duplicate_id_in_an_edited_store_is_named_without_the_documents(tmp_path):
    """A store edited into two documents of one `_id`: the refusal names the duplicate key,
    not the documents the bulk write's details hold (what they carry is not for an error
    line, and a store's documents can be long)."""
    documents = [{"_id": 1, "note": "private-notes-xyz"}, {"_id": 1, "note": "private-notes-xyz"}]
    store = _edited_store(tmp_path, {"main": {"tasks": {"documents": documents}}})
    with pytest.raises(ConfigError) as refused:
        local_store.open_client(local_store.url_of(store))
    message = str(refused.value)
    assert message.startswith(f"{store}: not a readable local store (")
    assert "Duplicate Key" in message or "duplicate key" in message
    assert "private-notes-xyz" not in message
    assert len(message) < len(str(store)) + 200


def test_a_store_of_the_wrong_shape_says_what_is_wrong_not_that_a_key_is_missing(tmp_path):
    """Only a missing key is said to be missing: any other problem is said as it is."""
    store = _edited_store(tmp_path, {"main": {"tasks": "no collection"}})
    with pytest.raises(ConfigError) as refused:
        local_store.open_client(local_store.url_of(store))
    assert str(refused.value) == (
        f"{store}: not a readable local store ('str' object has no attribute 'get')"
    )
    missing = _edited_store(tmp_path, {"main": {"tasks": {"indexes": [{"name": "i"}]}}})
    with pytest.raises(ConfigError) as refused:
        local_store.open_client(local_store.url_of(missing))
    assert str(refused.value) == (
        f"{missing}: not a readable local store (no 'key' where one was expected)"
    )


def test_a_save_that_fails_at_its_rename_is_one_error_and_leaves_the_store_and_no_temp(
    tmp_path, monkeypatch
):
    """The rename over the store fails (a full disk, a store on a read-only mount): one
    ConfigError that says the writes are lost, the store as it was, and no temporary file
    as large as the store left beside it."""
    store = tmp_path / "store.json"
    url = local_store.url_of(store)
    local_store.open_client(url, fresh=True)["main"]["t"].insert_one({"_id": 1})
    local_store.close_all()
    before = store.read_text()
    local_store.open_client(url)["main"]["t"].insert_one({"_id": 2})

    def refused(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(local_store.os, "replace", refused)
    with pytest.raises(ConfigError) as failed:
        local_store.close_all()
    assert str(failed.value) == (
        f"cannot write the local store {store}: No space left on device; "
        "this command's writes are lost"
    )
    assert store.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.json", "store.json.lock"]


def test_a_store_that_cannot_be_examined_when_saved_is_one_error(tmp_path):
    """The store's file turned into a link loop while the command ran: its save cannot read
    the file's status, and says the writes are lost in one error, not a traceback."""
    store = tmp_path / "store.json"
    url = local_store.url_of(store)
    local_store.open_client(url, fresh=True)["main"]["t"].insert_one({"_id": 1})
    local_store.close_all()
    local_store.open_client(url)["main"]["t"].insert_one({"_id": 2})
    store.unlink()
    store.symlink_to(store.name)  # a link to itself: stat() fails with ELOOP
    with pytest.raises(ConfigError) as failed:
        local_store.close_all()
    assert str(failed.value).startswith(f"cannot write the local store {store}: ")
    assert str(failed.value).endswith("; this command's writes are lost")


def test_a_store_cut_short_is_refused_in_one_error_and_left_as_it_is(tmp_path):
    """A store whose file is no longer JSON (cut short by a full disk or an editor): one
    error naming the file, the file left as it was for its owner to mend."""
    store = tmp_path / "store.json"
    url = local_store.url_of(store)
    local_store.open_client(url, fresh=True)["main"]["t"].insert_one({"_id": 1})
    local_store.close_all()
    cut = store.read_text()[:-7]
    store.write_text(cut)
    with pytest.raises(ConfigError) as refused:
        local_store.open_client(url)
    assert str(refused.value).startswith(f"{store}: not a readable local store (")
    assert store.read_text() == cut
    local_store.close_all()
    assert store.read_text() == cut


def test_a_store_whose_lock_file_cannot_be_opened_is_one_error(tmp_path):
    """The lock beside the store cannot be opened (here a directory holds its name): one
    error that says the store cannot be locked, not a traceback, and the store unchanged."""
    store = tmp_path / "store.json"
    url = local_store.url_of(store)
    local_store.open_client(url, fresh=True)["main"]["t"].insert_one({"_id": 1})
    local_store.close_all()
    before = store.read_text()
    (tmp_path / "store.json.lock").unlink()
    (tmp_path / "store.json.lock").mkdir()
    with pytest.raises(ConfigError) as refused:
        local_store.open_client(url)
    assert str(refused.value).startswith(f"cannot lock the local store {store}: ")
    assert store.read_text() == before


def test_stores_opened_and_saved_in_another_thread_are_saved(tmp_path):
    """Only the main thread may handle signals: a store written back from another thread
    (a command run inside a thread) is saved as from the main one, not lost to an error."""
    import threading

    store = tmp_path / "store.json"
    url = local_store.url_of(store)
    outcome: list[object] = []

    def command() -> None:
        try:
            local_store.open_client(url, fresh=True)["main"]["t"].insert_one({"_id": 1})
            outcome.append(local_store.close_all())
        except BaseException as exc:  # what the thread would lose
            outcome.append(exc)

    thread = threading.Thread(target=command)
    thread.start()
    thread.join(60)
    assert outcome == [[store]]
    assert [d["_id"] for d in _documents(store)] == [1]


def test_signals_are_handled_as_before_once_the_stores_are_written():
    """The handlers a save holds signals from are given back after it: a later SIGTERM (or
    Ctrl-C) reaches the process's own handler again, rather than being swallowed."""
    import os
    import signal

    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        assert local_store.close_all() == []
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_demo_store_named_at_a_pipe_is_refused_without_waiting_on_the_pipe(tmp_path):
    """`chore demo --store` naming a named pipe: refused at once as no local store (a pipe
    with no writer would wait for good), and left as it is."""
    import os
    import threading

    pipe = tmp_path / "store.json"
    os.mkfifo(pipe)
    outcome: list[object] = []

    def demo_open() -> None:
        try:
            local_store.open_client(local_store.url_of(pipe), fresh=True)
            outcome.append("opened")
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=demo_open, daemon=True)
    thread.start()
    thread.join(20)
    try:
        assert not thread.is_alive(), "waited on the pipe"
        (refused,) = outcome
        assert isinstance(refused, ConfigError) and "is not a local store" in str(refused)
    finally:
        if thread.is_alive():  # let the blocked reader go: a writer opens, then closes
            os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
            thread.join(20)
            local_store.close_all(save=False)


def test_the_url_of_a_relative_name_holding_a_colon_names_that_file():
    """`chore demo --store store:v2.json` prints the URL to export: it must name that file,
    not read as `file://USER:PASSWORD@...` (refused), hence `file://./store:v2.json`."""
    from pathlib import Path

    for name in ("store:v2.json", "snap:1/store.json"):
        url = local_store.url_of(Path(name))
        assert url == f"file://./{name}"
        assert local_store.path_of(url) == Path(name)
    assert local_store.url_of(Path("/tmp/a:b.json")) == "file:///tmp/a:b.json"
    assert local_store.url_of() == "file://.chore-demo/store.json"  # what `chore demo` prints


def test_a_fresh_store_is_never_written_over_a_file_that_is_no_store(tmp_path):
    """`open_client(url, fresh=True)` (the demo's, through the API too) on a file the chore
    did not write refuses it in one error, and the file is left as it was, with no lock
    file of the chore beside it: it is not the chore's to lose."""
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}')
    url = local_store.url_of(notes)
    with pytest.raises(ConfigError, match="exists and is not a local store written by `chore`"):
        local_store.open_client(url, fresh=True)
    assert local_store.close_all() == []
    assert notes.read_text() == '{"mine": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.json"]


def test_a_store_opened_twice_in_one_command_is_one_store(tmp_path):
    """A command that connects twice (its own check, then the run) gets the store it has
    open, not a refusal of its own lock as a store "in use", and both writes are saved."""
    store = tmp_path / "store.json"
    url = local_store.url_of(store)
    first = local_store.open_client(url, fresh=True)
    first["main"]["t"].insert_one({"_id": 1})
    second = local_store.open_client(url)
    assert second is first
    second["main"]["t"].insert_one({"_id": 2})
    assert local_store.close_all() == [store]
    assert [d["_id"] for d in _documents(store)] == [1, 2]
