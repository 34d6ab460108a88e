"""Issue 18 item 4: `chore demo` leaves its data in a local file store, and every other
command works on it without a server (`MONGO_URL=file://.chore-demo/store.json`)."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId, json_util
from click.testing import CliRunner

from chores import get_settings
from chores.cli import main
from chores.cli.exit_codes import INTERRUPTED
from chores.core import local_store as _local_store

from support import invoke_with_env

CHORE = [str(Path(sys.executable).parent / "chore")]  # the installed command
NOW = "2026-11-25T12:00:00+00:00"


def chore(cwd: Path, *args: str, env: dict[str, str] | None = None):
    environ = {k: v for k, v in os.environ.items() if k not in ("MONGO_URL", "REDIS_URL")}
    environ.update(env or {}, COLUMNS="100")
    return subprocess.run(
        [*CHORE, *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=300
    )


def test_an_argument_in_bytes_that_are_not_utf8_is_refused_in_one_line(tmp_path):
    """A command line's bytes that are not UTF-8 reach Python as lone surrogates, which no
    write to MongoDB (nor a query) can encode: `chore run --org` metered, then stopped on a
    traceback writing the org's quota decision; `plan set` and a review's note the same."""
    assert chore(tmp_path, "demo", "--now", NOW).returncode == 0
    env = {**os.environ, "MONGO_URL": "file://.chore-demo/store.json"}
    env.pop("REDIS_URL", None)
    store = tmp_path / ".chore-demo" / "store.json"
    before = store.read_bytes()
    review = ["anomaly", "review", "--org", "acme", "--period", "2026-11", "--now", NOW]
    for args, refused in (
        (["run", "--org", b"ac\xffme", "--now", NOW], "--org is not UTF-8 text: 'ac\\udcffme'"),
        (["plan", "set", "--org", b"ac\xffme", "--token-limit", "100"], "--org"),
        (["quota", "check", "--org", b"ac\xffme"], "--org"),
        ([*review, "--note", b"checked \xff"], "--note is not UTF-8 text: 'checked \\udcff'"),
        (["usage", "--org", "acme", "--period", "2026-11", "--model", b"\xff"], "--model"),
    ):
        ran = subprocess.run(
            [*CHORE, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert ran.returncode == 1, (args, ran.stdout, ran.stderr)
        (line,) = ran.stderr.splitlines()
        assert line.startswith(f"Error: {refused}"), (args, line)
    assert store.read_bytes() == before  # nothing written


def test_an_output_that_cannot_be_written_is_one_line_and_the_work_is_kept(tmp_path):
    """stdout on a full disk (Linux's /dev/full): every command stopped on an OSError
    traceback (a closed pipe was already Click's, silent). What the command wrote before
    its output is kept."""
    assert chore(tmp_path, "demo", "--now", NOW).returncode == 0
    env = {**os.environ, "MONGO_URL": "file://.chore-demo/store.json"}
    env.pop("REDIS_URL", None)
    for args in (
        ["--help"],
        ["status"],
        ["usage", "--org", "acme", "--period", "2026-11", "--json"],
        ["plan", "set", "--org", "acme", "--token-limit", "123K", "--now", NOW],
    ):
        with open("/dev/full", "w") as full:
            ran = subprocess.run(
                [*CHORE, *args],
                cwd=tmp_path,
                env=env,
                stdout=full,
                stderr=subprocess.PIPE,
                text=True,
                timeout=300,
            )
        assert ran.returncode == 1, (args, ran.stderr)
        assert ran.stderr.splitlines() == [
            "Error: cannot write the output: No space left on device"
        ], args
    shown = chore(tmp_path, "plan", "show", "--org", "acme", env=env)
    assert shown.stdout.startswith("acme: token limit 123,000 tokens"), shown.stdout


@pytest.mark.parametrize("unbuffered", [True, False])
def test_a_long_output_cut_short_by_its_reader_exits_1(tmp_path, unbuffered):
    """Outside hunt: with `PYTHONUNBUFFERED=1` (the Dockerfile's), an output written in one
    long write (`--json`, `--csv`, a registry) that its reader stopped reading (`| head -1`)
    exited 0, the rest dropped without a word: a `set -o pipefail` script took it whole."""
    prices = {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6, "mode": "chat"}
    litellm_map = tmp_path / "prices.json"
    litellm_map.write_text(json.dumps({f"model-{i}": prices for i in range(3_000)}))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    said = tmp_path / "stderr"
    with (
        said.open("wb") as stderr,
        subprocess.Popen(
            [*CHORE, "registry", "import-litellm", str(litellm_map)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
        ) as reader,
    ):
        assert reader.stdout is not None
        assert reader.stdout.readline().startswith(b"# Model price registry")
        reader.stdout.close()  # as `head -1` does
        assert reader.wait(timeout=300) == 1
    assert said.read_text() == ""  # nothing said, as Click does


def test_a_closed_standard_output_is_an_output_that_cannot_be_written(tmp_path):
    """Outside review: `chore invoice show >&-` exited 0 and showed nothing (Python drops
    every print when file descriptor 1 is closed). Now its first write is one line and
    exit 1, as on a full disk; a command that writes nothing (`run --quiet`, a cron's)
    runs as usual (review: refused before any work, a cron's `--quiet >&-` metered
    nothing)."""
    assert chore(tmp_path, "demo", "--now", NOW).returncode == 0
    env = {**os.environ, "MONGO_URL": "file://.chore-demo/store.json"}
    env.pop("REDIS_URL", None)
    report = tmp_path / "r.html"
    for args, returncode in (
        (["invoice", "show", "--org", "acme", "--period", "2026-11"], 1),
        (["run", "--org", "acme", "--quiet", "--now", NOW], 0),
        (["plan", "set", "--org", "acme", "--token-limit", "123K", "--now", NOW], 1),
        (["report", "--org", "acme", "--period", "2026-11", "--out", str(report), "--quiet"], 0),
    ):
        ran = subprocess.run(
            [*CHORE, *args],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
            preexec_fn=lambda: os.close(1),  # the child starts with fd 1 closed
        )
        assert ran.returncode == returncode, (args, ran.stderr)
        said = ["Error: cannot write the output: standard output is closed"] if returncode else []
        assert [line for line in ran.stderr.splitlines() if not line.startswith("note:")] == said
    assert report.read_text().startswith("<!DOCTYPE html>")
    # what the command wrote before its output is kept, as on a full disk; and `plan set`
    # decides before it prints (review: the plan was set, the old decision stood)
    shown = chore(tmp_path, "plan", "show", "--org", "acme", env=env)
    assert shown.stdout.startswith("acme: token limit 123,000 tokens"), shown.stdout
    check = ["quota", "check", "--org", "acme", "--now", NOW, "--json"]
    answer = json.loads(chore(tmp_path, *check, env=env).stdout)
    assert answer["token_limit"] == 123_000, answer


def test_the_quota_answer_is_its_exit_code_even_when_the_output_is_lost(tmp_path):
    """Outside review: `quota check` answering "refused" on a closed, full or broken
    stdout exited 1 ("bad org or setting"); a note on a full stderr did the same to any
    answer. The exit code is the answer the platform reads: 0 allowed, 3 refused."""
    assert chore(tmp_path, "demo", "--now", NOW).returncode == 0
    env = {**os.environ, "MONGO_URL": "file://.chore-demo/store.json"}
    env.pop("REDIS_URL", None)
    check = [*CHORE, "quota", "check", "--now", NOW]
    plan = ["plan", "set", "--org", "globex", "--token-limit", "1K", "--now", NOW]
    assert chore(tmp_path, *plan, env=env).returncode == 0
    refused, allowed = ["--org", "globex"], ["--org", "acme"]
    never_seen = ["--org", "nosuch"]  # a note on stderr, then the answer (fail-open)
    with open("/dev/full", "w") as full:
        for args, returncode, stdout, stderr, closes in (
            (refused, 3, subprocess.DEVNULL, subprocess.PIPE, 1),
            (allowed, 0, subprocess.DEVNULL, subprocess.PIPE, 1),
            (refused, 3, full, subprocess.PIPE, None),
            ([*refused, "--json"], 3, full, subprocess.PIPE, None),
            (never_seen, 0, subprocess.PIPE, full, None),
        ):
            ran = subprocess.run(
                [*check, *args],
                cwd=tmp_path,
                env=env,
                stdout=stdout,
                stderr=stderr,
                timeout=300,
                preexec_fn=None if closes is None else lambda fd=closes: os.close(fd),
            )
            assert ran.returncode == returncode, (args, ran.stderr)
            if stderr is subprocess.PIPE:
                (line,) = ran.stderr.decode().splitlines()
                assert line.startswith("Error: cannot write the output: "), line


@pytest.mark.parametrize(
    "locale",
    [{"PYTHONIOENCODING": "latin-1"}, {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}],
    ids=["latin-1", "C"],
)
def test_an_output_that_cannot_spell_a_character_shows_its_escape(tmp_path, locale):
    """Outside hunt: under a latin-1 or C locale, `quota check` of an allowed org, `invoice
    show` and the demo stopped on a UnicodeEncodeError traceback at their first `—` or `·`,
    and the check exited 1 ("bad org or setting") on an allowed answer."""
    assert chore(tmp_path, "demo", "--now", NOW).returncode == 0
    environ = {k: v for k, v in os.environ.items() if k not in ("MONGO_URL", "REDIS_URL")}
    env = {**environ, "MONGO_URL": "file://.chore-demo/store.json", **locale}

    def run(*args: str) -> tuple[int, str, str]:
        ran = subprocess.run([*CHORE, *args], cwd=tmp_path, env=env, capture_output=True)
        # as a terminal of that locale would show it
        return ran.returncode, ran.stdout.decode("latin-1"), ran.stderr.decode("latin-1")

    code, out, err = run("quota", "check", "--org", "acme", "--now", NOW)
    assert code == 0 and out.startswith("acme: ok "), (out, err)
    code, out, err = run("invoice", "show", "--org", "acme", "--period", "2026-11")
    assert code == 0 and "claude-sonnet-4-5" in out, err
    code, out, err = run("usage", "--org", "acme", "--period", "2026-11", "--by", "model")
    assert code == 0 and "claude-sonnet-4-5" in out, err
    code, out, err = run("demo", "--no-store", "--now", NOW)
    assert code == 0 and "globex: block " in out, err[-2000:]
    if "PYTHONIOENCODING" in locale:  # what latin-1 cannot spell is shown as its escape
        assert "\\u2014" in out


def test_a_working_directory_removed_under_a_command_is_one_line(tmp_path):
    """A relative store or output path, in a shell whose directory was removed: `chore
    status`, `chore demo` and `report --out` stopped on a FileNotFoundError traceback."""
    store = tmp_path / "store"
    store.mkdir()
    assert chore(store, "demo", "--now", NOW).returncode == 0
    env = {k: v for k, v in os.environ.items() if k not in ("MONGO_URL", "REDIS_URL")}
    absolute = f"file://{store}/.chore-demo/store.json"
    for args, url, says in (
        (["status"], "file://x.json", "'x.json' is relative, and the working directory no "),
        (["demo"], None, "'.chore-demo/store.json' is relative, and the working directory "),
        (
            ["report", "--org", "acme", "--period", "2026-11", "--out", "r.html"],
            absolute,
            "cannot write r.html: it is relative, and the working directory no longer exists",
        ),
    ):
        gone = tmp_path / "gone"
        gone.mkdir()
        in_gone = 'cd "$1" && rmdir "$1" && shift && exec "$@"'
        ran = subprocess.run(
            ["sh", "-c", in_gone, "sh", str(gone), *CHORE, *args],
            env={**env, "MONGO_URL": url} if url else env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert ran.returncode == 1, (args, ran.stderr)
        (line,) = ran.stderr.splitlines()
        assert line.startswith(f"Error: {says}"), (args, line)
    shown = chore(tmp_path, "status", env={"MONGO_URL": absolute})  # absolute: works
    assert shown.returncode == 0, shown.stderr


def test_demo_then_every_command_on_its_data_without_a_server(tmp_path):
    """From a fresh directory, as the README says: demo, then plan set, quota check,
    invoice show, usage, report and status, each a new process on the demo's file."""
    demo = chore(tmp_path, "demo", "--now", NOW)
    assert demo.returncode == 0, demo.stderr
    assert (tmp_path / ".chore-demo" / "store.json").is_file()
    assert "export MONGO_URL=file://.chore-demo/store.json" in demo.stdout
    env = {"MONGO_URL": "file://.chore-demo/store.json"}

    plan = chore(
        tmp_path, "plan", "set", "--org", "acme", "--token-limit", "100K", "--now", NOW, env=env
    )
    assert plan.returncode == 0, plan.stderr
    assert "acme: token limit 100,000 tokens" in plan.stdout
    assert "acme: decision now block" in plan.stdout  # acme used more than 100K this month
    shown = chore(tmp_path, "plan", "show", "--org", "acme", env=env)
    assert shown.stdout.startswith("acme: token limit 100,000 tokens")  # kept between commands

    check = chore(tmp_path, "quota", "check", "--org", "acme", "--now", NOW, env=env)
    assert check.returncode == 3 and check.stdout.startswith("acme: block"), check.stdout

    invoice = chore(tmp_path, "invoice", "show", "--org", "acme", "--period", "2026-11", env=env)
    assert invoice.returncode == 0 and "Invoice acme:2026-11" in invoice.stdout
    as_json = json.loads(
        chore(tmp_path, "usage", "--org", "acme", "--period", "2026-11", "--json", env=env).stdout
    )
    assert as_json["total"]["amount_micros"] == as_json["invoice_total_micros"] > 0

    listed = chore(tmp_path, "anomaly", "list", "--org", "acme", env=env)
    assert listed.returncode == 0 and "malformed_counters" in listed.stdout, listed.stderr
    assert "chore anomaly review --org acme --period 2026-11 --note TEXT" in listed.stdout
    review = ["anomaly", "review", "--org", "acme", "--period", "2026-11", "--now", NOW]
    reviewed = chore(tmp_path, *review, "--note", "garbage documents, checked", env=env)
    assert reviewed.returncode == 0 and "reviewed 2 anomalies of acme 2026-11" in reviewed.stdout
    assert (
        "malformed_counters"
        not in chore(
            tmp_path, "invoice", "show", "--org", "acme", "--period", "2026-11", env=env
        ).stdout
    )

    report = chore(
        tmp_path, "report", "--org", "acme", "--period", "2026-11", "--out", "acme.html", env=env
    )
    assert report.returncode == 0, report.stderr
    assert "acme:2026-11" in (tmp_path / "acme.html").read_text()

    status = chore(tmp_path, "status", env=env)
    assert status.returncode == 0, status.stderr
    assert "Last runs" in status.stdout and "Source indexes: all present" in status.stdout
    assert "note:" not in status.stderr  # not an ephemeral store: no such note

    rerun = chore(tmp_path, "run", "--all", "--json", "--now", NOW, env=env)
    assert json.loads(rerun.stdout)["tokens_billed"] == 0  # everything was billed, once


def test_the_file_keeps_types_and_indexes(tmp_path, monkeypatch):
    store = tmp_path / "store.json"
    url = f"file://{store}"
    client = _local_store.open_client(url, fresh=True)
    client["main"]["tasks"].insert_one({"_id": ObjectId(), "n": 2**40, "name": "ai"})
    client["main"]["plans"].create_index([("org", 1)], name="org_unique", unique=True)
    assert _local_store.close_all() == [store.absolute()]
    again = _local_store.open_client(url)
    doc = again["main"]["tasks"].find_one()
    assert isinstance(doc["_id"], ObjectId) and doc["n"] == 2**40
    assert again["main"]["plans"].index_information()["org_unique"]["unique"] is True
    _local_store.close_all(save=False)


@pytest.mark.parametrize("as_json", [False, True])
def test_a_run_has_saved_what_it_billed_before_it_says_so(tmp_path, monkeypatch, as_json):
    """Outside review: `kill -9` after `chore run` had printed "199,037,776 tokens billed"
    kept none of it (the store was written back when the command ended): the rerun billed
    it all again, exactly, but the line had said otherwise. The file holds the run's
    writes before a word of its summary is printed."""
    store = tmp_path / "store.json"
    url = f"file://{store}"
    db = _local_store.open_client(url, fresh=True)["main"]
    db["tasks"].insert_one(
        {
            "_id": ObjectId(),
            "name": "ai",
            "status": "SUCCESS",
            "end_time": datetime(2026, 11, 20, tzinfo=UTC),
            "last_updated_db": 1.0e9,
            "context": {"workspace_id": "acme", "ai_tokens": 9_000, "ai_model": "gpt-4o-mini"},
        }
    )
    _local_store.close_all()
    monkeypatch.setenv("MONGO_URL", url)
    get_settings.cache_clear()
    on_disk: list[int] = []

    def echo(*args: Any, **kwargs: Any) -> None:  # the first word of the summary
        if not on_disk:
            stored = json_util.loads(store.read_text(encoding="utf-8"))["databases"]["main"]
            on_disk.append(len(stored.get("billing_ledger", {}).get("documents", [])))

    monkeypatch.setattr("chores.cli.run.click.echo", echo)
    monkeypatch.setattr("chores.cli.run.tables.show", echo)
    args = ["run", "--all", "--now", NOW, *(["--json"] if as_json else [])]
    result = CliRunner().invoke(main, args)
    get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert on_disk == [1]  # the run's one ledger entry


def test_a_runner_with_a_64_bit_integer_id_is_billed_once_across_reloads(tmp_path, settings):
    """Inserted as a Python int, read back from the file as `Int64`: one runner, one key."""
    from chores import run_chore
    from pricing import load_registry

    url = f"file://{tmp_path / 'store.json'}"
    db = _local_store.open_client(url, fresh=True)["main"]
    db["tasks"].insert_one(
        {
            "_id": 2**40,
            "name": "ai",
            "status": "SUCCESS",
            "start_time": datetime(2026, 11, 20, tzinfo=UTC),
            "end_time": datetime(2026, 11, 20, 0, 5, tzinfo=UTC),
            "last_updated_db": 1.0e9,
            "context": {"workspace_id": "acme", "ai_tokens": 9_000, "ai_model": "gpt-4o-mini"},
        }
    )
    now = datetime.fromisoformat(NOW)
    first = run_chore(db, now=now, registry=load_registry(), settings=settings)
    assert first.tokens_billed == 9_000
    _local_store.close_all()
    db = _local_store.open_client(url)["main"]
    again = run_chore(db, now=now, registry=load_registry(), settings=settings, full=True)
    assert again.tokens_billed == 0 and again.anomalies == {}
    invoice = db[settings.collection("invoices")].find_one({"_id": "acme:2026-11"})
    assert sum(line["tokens"] for line in invoice["lines"]) == 9_000
    _local_store.close_all(save=False)


def test_a_runner_ending_after_year_9999_is_an_anomaly_and_the_store_still_loads(
    tmp_path, settings
):
    """Review: a server hands back an end_time after 9999 as `DatetimeMS`; the store saved
    it and could not read itself back, so every later command died with a traceback."""
    from bson.datetime_ms import DatetimeMS

    from chores import run_chore
    from pricing import load_registry

    url = f"file://{tmp_path / 'store.json'}"
    db = _local_store.open_client(url, fresh=True)["main"]
    far = {
        "_id": "far",
        "name": "ai",
        "status": "SUCCESS",
        "end_time": DatetimeMS(253_402_387_200_000),  # 10000-01-02
        "last_updated_db": 1.0e9,
        "context": {"workspace_id": "acme", "ai_tokens": 9_000, "ai_model": "gpt-4o-mini"},
    }
    db["tasks"].insert_one(far)
    now = datetime.fromisoformat(NOW)
    first = run_chore(db, now=now, registry=load_registry(), settings=settings)
    assert first.tokens_billed == 0 and first.anomalies == {"bad_end_time": 1}
    _local_store.close_all()

    db = _local_store.open_client(url)["main"]
    assert db["tasks"].find_one({"_id": "far"})["end_time"] == far["end_time"]
    again = run_chore(db, now=now, registry=load_registry(), settings=settings, full=True)
    assert again.tokens_billed == 0 and again.anomalies == {"bad_end_time": 1}
    _local_store.close_all(save=False)


def test_a_missing_or_foreign_file_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MONGO_URL", f"file://{tmp_path}/none.json")
    get_settings.cache_clear()
    try:
        missing = CliRunner().invoke(main, ["status"])
        assert missing.exit_code == 1
        assert missing.output.startswith(f"Error: MONGO_URL file://{tmp_path}/none.json: no local")
        assert len(missing.output.splitlines()) == 1
        (tmp_path / "none.json").write_text('{"hello": 1}')
        foreign = CliRunner().invoke(main, ["status"])
        assert foreign.exit_code == 1 and "not a local store written by `chore`" in foreign.output
        assert sorted(p.name for p in tmp_path.iterdir()) == ["none.json"]  # no stray .lock
    finally:
        get_settings.cache_clear()


def test_a_store_in_use_is_refused_not_shared(tmp_path, monkeypatch):
    store = tmp_path / "store.json"
    assert CliRunner().invoke(main, ["demo", "--store", str(store)]).exit_code == 0
    monkeypatch.setenv("MONGO_URL", f"file://{store}")
    get_settings.cache_clear()
    try:
        with open(f"{store}.lock", "a") as other:  # another command holds it
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            busy = CliRunner().invoke(main, ["plan", "show", "--org", "acme"])
        assert busy.exit_code == 1
        assert (
            "is in use by another command" in busy.output
            and "not for concurrent use" in busy.output
        )
        assert CliRunner().invoke(main, ["plan", "show", "--org", "acme"]).exit_code == 0
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize("url", ["file://"])
def test_a_file_url_without_a_path_is_one_line(url, monkeypatch):
    monkeypatch.setenv("MONGO_URL", url)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["status"])
        assert result.exit_code == 1 and "names no file: use file://PATH" in result.output
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize(
    "name",
    [
        "store@v2.json",
        "snapshots@2025-03/store.json",
        "./store:v2.json",
        "snap/2026-11-25T12:00@v2/s.json",
    ],
)
def test_a_file_name_may_hold_an_at_sign_or_a_colon(tmp_path, monkeypatch, name):
    """What may hold credentials is refused (test_security.py): a `:` before the first `/`.
    `@` in a name is a name, and so is a `:` after a `/` (`./NAME` for a relative name)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MONGO_URL", f"file://{name}")
    get_settings.cache_clear()
    try:
        assert CliRunner().invoke(main, ["demo", "--store", name]).exit_code == 0
        assert (tmp_path / name).is_file()
        result = CliRunner().invoke(main, ["status"])
        assert result.exit_code == 0, result.output
        assert "acme" in result.output
    finally:
        get_settings.cache_clear()


# A `chore` process that receives a signal in the middle of its first batch.
SIGNALLED_RUN = """
import os, signal, sys
from chores.cli import main
from chores.run.pipeline import Pipeline

SIGNAL, process = getattr(signal, sys.argv[1]), Pipeline.process
# as `nohup` leaves SIGHUP, or the default (whatever this test's own parent left)
signal.signal(SIGNAL, signal.SIG_IGN if sys.argv[3] == "ignored" else signal.SIG_DFL)
def signalled(self, *args, **kwargs):
    os.kill(os.getpid(), SIGNAL)
    return process(self, *args, **kwargs)
Pipeline.process = signalled
sys.argv = ["chore", "run", "--all", "--now", sys.argv[2]]
main()
"""


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_a_terminated_command_saves_its_store_like_ctrl_c(tmp_path, name):
    """`timeout`, `docker stop` or a closed terminal end a command as Ctrl-C does: it
    unwinds, says so, and the file:// store keeps what it did (here: the run's record),
    its lock released for the next command."""
    store = _demo_store(tmp_path)
    runs_before = len(_runs(store))
    done = _python(tmp_path, store, SIGNALLED_RUN, name, NOW, "default")
    assert done.returncode == 130, done.stderr
    assert "interrupted: what was written so far is kept" in done.stderr
    runs = _runs(store)
    assert len(runs) == runs_before + 1 and f"KeyboardInterrupt: {name}" in runs[-1]["error"]
    status = chore(tmp_path, "status", env={"MONGO_URL": f"file://{store}"})
    assert status.returncode == 0, status.stderr  # the lock was released


def test_a_command_under_nohup_keeps_going_on_sighup(tmp_path):
    store = _demo_store(tmp_path)
    done = _python(tmp_path, store, SIGNALLED_RUN, "SIGHUP", NOW, "ignored")
    assert done.returncode == 0, done.stderr
    assert _runs(store)[-1]["error"] is None


def _demo_store(directory: Path) -> Path:
    """The store `chore demo` leaves in `directory`."""
    assert chore(directory, "demo", "--now", NOW).returncode == 0
    return directory / ".chore-demo" / "store.json"


def _python(directory: Path, store: Path, script: str, *args: str) -> Any:
    """`script` run by a new interpreter in `directory`, on `store`, without Redis."""
    environ = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    environ["MONGO_URL"] = f"file://{store}"
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=directory, env=environ, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _runs(store: Path) -> list[dict]:
    from bson import json_util

    data = json_util.loads(store.read_text())
    return sorted(data["databases"]["main"].get("billing_runs", {}).get("documents", []),
                  key=lambda r: r["started_at"])  # fmt: skip


# A `chore` process that receives a signal while it writes its store back to its file.
SIGNALLED_SAVE = """
import os, signal, sys
from chores.cli import main
from chores.core import local_store

SIGNAL, replace = getattr(signal, sys.argv[1]), os.replace
signal.signal(SIGNAL, signal.SIG_DFL if SIGNAL != signal.SIGINT else signal.default_int_handler)
def signalled(*args, **kwargs):
    os.kill(os.getpid(), SIGNAL)
    return replace(*args, **kwargs)
local_store.os.replace = signalled
sys.argv = ["chore", "run", "--all", "--now", sys.argv[2]]
main()
"""


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_signal_while_the_store_is_written_waits_for_the_writing(tmp_path, name):
    """Ctrl-C, `timeout` or a closed terminal just as the command writes its store back:
    the writing ends first, the command exits 130 after it, and the file keeps every
    write (here the run's record), not the store as it was before the command."""
    store = _demo_store(tmp_path)
    runs_before = len(_runs(store))
    done = _python(tmp_path, store, SIGNALLED_SAVE, name, NOW)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip() == INTERRUPTED
    runs = _runs(store)
    assert len(runs) == runs_before + 1 and runs[-1]["error"] is None
    assert not list(store.parent.glob(".store.json.*"))  # no temporary file left behind


def test_a_store_that_cannot_be_written_is_one_line_that_says_the_writes_are_lost(
    tmp_path, monkeypatch
):
    store = tmp_path / "store.json"
    assert CliRunner().invoke(main, ["demo", "--store", str(store), "--now", NOW]).exit_code == 0
    before = store.read_text()

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(_local_store.tempfile, "mkstemp", refused)
    monkeypatch.setenv("MONGO_URL", f"file://{store}")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            main, ["plan", "set", "--org", "acme", "--token-limit", "7M", "--now", NOW]
        )
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == (
        f"Error: cannot write the local store {store}: Permission denied; "
        "this command's writes are lost"
    )
    assert "Traceback" not in result.output and store.read_text() == before


def plan_set(monkeypatch: Any, store: Path) -> Any:
    """A writing command on `store`, in this process."""
    args = ["plan", "set", "--org", "acme", "--token-limit", "7M", "--now", NOW]
    return invoke_with_env(monkeypatch, args, MONGO_URL=f"file://{store}")


def test_a_read_only_store_is_not_replaced_and_a_writable_one_keeps_its_mode(tmp_path, monkeypatch):
    """A file its owner made read-only stays as it was (the directory would let a rename
    replace it, with a file of mode 0600: outside review), and a saved store keeps the
    permission bits of the file it replaces."""
    store = tmp_path / "store.json"
    assert CliRunner().invoke(main, ["demo", "--store", str(store), "--now", NOW]).exit_code == 0
    before = store.read_text()
    store.chmod(0o444)
    refused = plan_set(monkeypatch, store)
    assert refused.exit_code == 1
    assert refused.output.splitlines()[-1] == (
        f"Error: cannot write the local store {store}: the file is read-only; "
        "this command's writes are lost"
    )
    assert store.read_text() == before and store.stat().st_mode & 0o777 == 0o444
    store.chmod(0o640)
    assert plan_set(monkeypatch, store).exit_code == 0
    assert store.read_text() != before and store.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ({"main": {"tasks": {"documents": [{"$weird": 1}]}}}, 'cannot start with the "$"'),
        ({"main": {"tasks": {"indexes": [{"name": "i"}]}}}, "no 'key' where one was expected"),
        ({"main": {"tasks": "no collection"}}, "'str' object has no attribute 'get'"),
        ({"main": ["a", "list"]}, "'list' object has no attribute 'items'"),
        ({"main": {"tasks": {"documents": {"_id": 1}}}}, "must be an instance of dict"),
        ({"main": {"tasks": {"documents": [{"_id": 1}, {"_id": 1}]}}}, "Duplicate Key"),
    ],
    ids=["dollar key", "index without key", "collection", "database", "documents", "dup id"],
)
def test_a_store_edited_into_another_shape_is_one_line(tmp_path, monkeypatch, content, says):
    """Valid JSON with the format mark, but not what the chore writes (edited by hand):
    one line, no traceback, nor the documents a duplicate key's details hold."""
    store = tmp_path / "store.json"
    store.write_text(
        json.dumps({"format": "chore-local-store", "version": 1, "databases": content})
    )
    before = store.read_text()
    result = invoke_with_env(monkeypatch, ["status"], MONGO_URL=f"file://{store}")
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {store}: not a readable local store (")
    assert says in result.output and len(result.output.splitlines()) == 1
    assert store.read_text() == before


def test_a_store_that_cannot_be_created_is_one_line(tmp_path):
    (tmp_path / "a-file").write_text("")
    result = CliRunner().invoke(main, ["demo", "--store", str(tmp_path / "a-file" / "s.json")])
    assert result.exit_code == 1
    assert result.output.startswith(
        f"Error: cannot create the local store {tmp_path}/a-file/s.json"
    )
    assert len(result.output.splitlines()) == 1


def test_a_command_that_changes_nothing_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    """Reading commands do not rewrite the store: they work on a file they may only read."""
    store = tmp_path / "store.json"
    assert CliRunner().invoke(main, ["demo", "--store", str(store), "--now", NOW]).exit_code == 0
    before = store.stat()
    monkeypatch.setenv("MONGO_URL", f"file://{store}")
    get_settings.cache_clear()
    try:
        reading = (["invoice", "show", "--org", "acme", "--period", "2026-11"], ["status"])
        for command in reading:
            result = CliRunner().invoke(main, command)
            assert result.exit_code == 0, result.output
        after = store.stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        changed = CliRunner().invoke(main, ["plan", "set", "--org", "acme", "--token-limit", "7M"])
        assert changed.exit_code == 0 and store.stat().st_ino != before.st_ino
    finally:
        get_settings.cache_clear()


def test_a_store_unchanged_since_loaded_is_not_written_again(tmp_path):
    """L1 (also killed by tests/integration/test_local_store.py, not run in the unit pass)."""
    from chores.core import local_store

    path = tmp_path / "store.json"
    url = local_store.url_of(path)
    local_store.open_client(url, fresh=True)["main"]["t"].insert_one({"_id": 1})
    assert local_store.close_all() == [path]
    before = path.stat()
    assert local_store.open_client(url)["main"]["t"].find_one({"_id": 1}) == {"_id": 1}
    assert local_store.close_all() == []
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


@pytest.fixture
def own_signal_handlers():
    held = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    saved = {sig: signal.getsignal(sig) for sig in held}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_signals_while_a_store_is_written_are_held_then_the_first_is_raised(own_signal_handlers):
    """L3 (SIGHUP not held) and L4 (the last signal raised, not the first)."""
    from chores.core.local_store import _interruptions_deferred

    seen: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: seen.append(signum))
    with pytest.raises(KeyboardInterrupt, match="SIGHUP"), _interruptions_deferred():
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == []  # held, not handled
    assert seen == []


def test_a_signal_ignored_before_a_store_is_written_stays_ignored(own_signal_handlers):
    """L2: under `nohup` SIGHUP is ignored: the writing must not turn it into an interrupt."""
    from chores.core.local_store import _interruptions_deferred

    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with _interruptions_deferred():
            os.kill(os.getpid(), signal.SIGHUP)
    except KeyboardInterrupt:
        pytest.fail("an ignored SIGHUP was raised as an interrupt")
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN


@pytest.mark.parametrize("reformatted", [False, True], ids=["as-saved", "reformatted"])
def test_a_store_whose_open_is_interrupted_keeps_its_lock_file(tmp_path, monkeypatch, reformatted):
    """Only the lock file of a file that is no store is removed: a store's, removed while
    another command had it open, would leave that command locking a file nobody sees, and
    a third command free to open the store beside it (reviews; a store reformatted by hand
    is one too)."""
    store = tmp_path / "store.json"
    _local_store.open_client(f"file://{store}", fresh=True)
    _local_store.close_all()
    (tmp_path / "store.json.lock").unlink()  # a store copied here without its lock file
    if reformatted:
        store.write_text(json.dumps(json.loads(store.read_text()), indent=2))

    def interrupted(path, client):
        raise KeyboardInterrupt

    monkeypatch.setattr(_local_store, "_load", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _local_store.open_client(f"file://{store}")
    assert (tmp_path / "store.json.lock").exists()


def plans(store: Path) -> list[Any]:
    """The plans the store's file holds."""
    data = json_util.loads(store.read_text())
    return data["databases"]["main"].get("billing_plans", {}).get("documents", [])


def test_a_store_reached_through_a_symlink_is_the_file_it_points_to(tmp_path, monkeypatch):
    """Local-store review: a save through a symlink replaced the link with a file of its
    own, and each name had its own lock: two diverging stores, nothing said."""
    store = tmp_path / "store.json"
    assert CliRunner().invoke(main, ["demo", "--store", str(store), "--now", NOW]).exit_code == 0
    link = tmp_path / "link.json"
    link.symlink_to(store.name)

    assert plan_set(monkeypatch, link).exit_code == 0

    assert link.is_symlink() and link.resolve() == store
    assert [p.get("token_limit") for p in plans(store) if p["_id"] == "acme"] == [7_000_000]
    with open(f"{store}.lock", "a") as other:  # a command holding the store by its own name
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        busy = plan_set(monkeypatch, link)
    assert busy.exit_code == 1 and "is in use by another command" in busy.output
    assert not (tmp_path / "link.json.lock").exists()


def test_a_store_of_another_version_is_refused_and_left_as_it_is(tmp_path, monkeypatch):
    """Local-store review: a store of version 2 was opened, and rewritten as version 1
    without what version 1 does not know, by a read-only `chore status`."""
    store = tmp_path / "store.json"
    assert CliRunner().invoke(main, ["demo", "--store", str(store), "--now", NOW]).exit_code == 0
    data = json.loads(store.read_text())
    for version in (2, None):
        data["version"] = version
        data["future_field"] = {"kept": True}
        store.write_text(json.dumps(data))
        before = store.read_text()
        refused = invoke_with_env(monkeypatch, ["status"], MONGO_URL=f"file://{store}")
        assert refused.exit_code == 1
        assert refused.output == (
            f"Error: {store}: a local store of version {version!r}, where this chore reads "
            "version 1: not opened, not changed\n"
        )
        assert store.read_text() == before


def test_a_save_killed_before_its_rename_leaves_nothing_behind_for_good(tmp_path, monkeypatch):
    """Local-store review: a SIGKILL while a save wrote left its temporary file, as large
    as the store, and every such kill another. The next save removes them; the store's
    owner is kept (root saving another user's store), as its mode is."""
    store = tmp_path / "store.json"
    assert CliRunner().invoke(main, ["demo", "--store", str(store), "--now", NOW]).exit_code == 0
    leftover = tmp_path / ".store.json.saving-k1lled42"
    leftover.write_text(store.read_text()[:1000])
    someone_elses = tmp_path / ".store.json.bak"  # not a save's: left alone
    someone_elses.write_text("mine")
    if os.geteuid() == 0:
        os.chown(store, 65534, 65534)

    assert plan_set(monkeypatch, store).exit_code == 0

    assert not leftover.exists() and someone_elses.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".store.json.bak",
        "store.json",
        "store.json.lock",
    ]
    if os.geteuid() == 0:
        assert (store.stat().st_uid, store.stat().st_gid) == (65534, 65534)


def test_a_directory_at_the_stores_path_is_said_to_be_one(tmp_path, monkeypatch):
    (tmp_path / "dir.json").mkdir()
    said = invoke_with_env(monkeypatch, ["status"], MONGO_URL=f"file://{tmp_path}/dir.json")
    assert said.exit_code == 1 and "is not a regular file (a directory, a pipe or a device)" in (
        said.output
    )
