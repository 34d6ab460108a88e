"""Secrets never reach output, logs or stored documents."""

from __future__ import annotations

import logging

import pytest
from click.testing import CliRunner

from chores import get_settings
from chores.cli import main
from chores.core.logs import redact_urls
from chores.core.settings import NO_SCHEME, redact_url

SECRET = "pa55-w0rd-xyz"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"mongodb://billing:{SECRET}@db:27017/main", "mongodb://billing:***@db:27017/main"),
        (f"redis://:{SECRET}@cache:6379/0", "redis://:***@cache:6379/0"),
        ("mongodb://db:27017", "mongodb://db:27017"),
        (
            f"mongodb+srv://u:{SECRET}@cluster.example/?tls=true",
            "mongodb+srv://u:***@cluster.example/?tls=true",
        ),
        # production forms: several hosts, options, passwords with `@`, `:` or `/` unescaped
        (
            f"mongodb://user:{SECRET}@h1:27017,h2:27017/x?replicaSet=rs",
            "mongodb://user:***@h1:27017,h2:27017/x?replicaSet=rs",
        ),
        (f"mongodb://u:{SECRET}@x:y@h1:27017/db", "mongodb://u:***@h1:27017/db"),
        (f"mongodb://u:{SECRET}/z@h1,h2/db?w=majority", "mongodb://u:***@h1,h2/db?w=majority"),
        ("mongodb://user@h1:27017,h2:27017/db", "mongodb://user@h1:27017,h2:27017/db"),
        (f"rediss://default:{SECRET}@cache:6380/1", "rediss://default:***@cache:6380/1"),
        # credentials as options, which redis-py and pymongo both read
        (f"redis://cache:6379/0?password={SECRET}", "redis://cache:6379/0?password=***"),
        # an `@` in an option's password may end it or the userinfo: what follows it, up to
        # the next option, is hidden too (review: `***@ss` showed the password's tail)
        (f"redis://cache:6379/0?password=pa@{SECRET}&db=1", "redis://cache:***@***&db=1"),
        (
            f"mongodb://u:{SECRET}@db/?authSource=admin&password=a@{SECRET}",
            "mongodb://u:***@***",
        ),
        # ...and a password holding `?` and an option stays hidden (review of a first fix,
        # which showed `u:1234?token=***`)
        ("redis://u:1234?token=x@h/0", "redis://u:***@***"),
        ("mongodb://u:55/s3c?sig=1@h/db", "mongodb://u:***@***"),
        ("mongodb://u:p&password=q@h/db", "mongodb://u:***@h/db"),  # no `?`: no option
        (
            f"mongodb://KEY:{SECRET}@db/x?authMechanism=MONGODB-AWS"
            f"&authMechanismProperties=AWS_SESSION_TOKEN:{SECRET}",
            "mongodb://KEY:***@db/x?authMechanism=MONGODB-AWS&authMechanismProperties=***",
        ),
        (
            f"mongodb://db/?tls=true&tlsCertificateKeyFilePassword={SECRET};w=1",
            "mongodb://db/?tls=true&tlsCertificateKeyFilePassword=***;w=1",
        ),
        (  # review: pymongo takes a quote, a space or a `#` in a value: all of it hidden
            f'mongodb://u:pw@db/?tlsCertificateKeyFilePassword=ab"{SECRET} x#y&w=1',
            "mongodb://u:***@db/?tlsCertificateKeyFilePassword=***&w=1",
        ),
        (  # review: a value ran over the `?` after which pymongo reads the options
            f"mongodb://db/?appname=my app?password={SECRET}",
            "mongodb://db/?appname=my app?password=***",
        ),
        (  # review: an `@` in a credential value holding a quote or a space
            f'mongodb://db/?tls=true&tlsCertificateKeyFilePassword=a"b@{SECRET} x#y&w=1',
            "mongodb://***@***&w=1",
        ),
        # outside hunt: a `:` written escaped still parts the user from the password, read
        # as a user name (pymongo decodes the user): shown whole in an error about it
        (f"mongodb://u%3A{SECRET}@db:27017/main", "mongodb://u:***@db:27017/main"),
        (f"redis://u%3a{SECRET}@cache:6379/0", "redis://u:***@cache:6379/0"),
        ("mongodb://u%40corp@db/main", "mongodb://u%40corp@db/main"),
        # no `@`: a "port" that is not a number is a password
        (f"mongodb://user:{SECRET}", "mongodb://***"),
        (f"mongodb://user:{SECRET}/db", "mongodb://***/db"),
        ("mongodb://[::1]:27017,h2:27018/db", "mongodb://[::1]:27017,h2:27018/db"),
        # no scheme: a host name, or a password pasted in its place, which nothing tells
        # apart (review: `admin:123456` reads as a host and its port)
        (SECRET, NO_SCHEME),
        (f"user:{SECRET}", NO_SCHEME),
        ("admin:123456", NO_SCHEME),
        ("localhost:27017", NO_SCHEME),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected


def test_a_replica_set_url_with_a_password_gives_one_line_and_quota_is_not_confused(
    monkeypatch,
):
    """`redact_url` once raised on `h1:27017,h2:27017`: `status` died with a traceback, and
    `quota check` answered `unknown` from the redaction error rather than the database."""
    monkeypatch.setenv(
        "MONGO_URL", f"mongodb://user:{SECRET}@127.0.0.1:9,127.0.0.1:10/x?replicaSet=rs"
    )
    monkeypatch.setenv("MONGO_TIMEOUT_MS", "150")
    monkeypatch.delenv("REDIS_URL", raising=False)
    get_settings.cache_clear()
    try:
        status = CliRunner().invoke(main, ["status"])
        quota = CliRunner().invoke(main, ["quota", "check", "--org", "acme"])
    finally:
        get_settings.cache_clear()
    for result in (status, quota):
        assert SECRET not in result.output
        assert "Traceback" not in result.output and "could not be cast" not in result.output
    assert status.exit_code == 1 and len(status.output.strip().splitlines()) == 1
    assert "user:***@127.0.0.1:9,127.0.0.1:10" in status.output
    assert "could not be cast" not in quota.output and "Port" not in quota.output


def test_no_password_in_cli_output_or_logs(monkeypatch, caplog):
    monkeypatch.setenv(
        "MONGO_URL", f"mongodb://billing:{SECRET}@127.0.0.1:9/?directConnection=true"
    )
    monkeypatch.setenv("REDIS_URL", f"redis://:{SECRET}@127.0.0.1:9/0")
    monkeypatch.setenv("MONGO_TIMEOUT_MS", "150")
    get_settings.cache_clear()
    caplog.set_level(logging.DEBUG)
    try:
        for args in (["run", "--all"], ["quota", "check", "--org", "acme"], ["status"]):
            result = CliRunner().invoke(main, args)
            assert SECRET not in result.output
        assert SECRET not in caplog.text
        assert SECRET not in repr(get_settings().safe_mongo_url)
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize(
    ("setting", "url", "says"),
    [
        ("MONGO_URL", f"mongodb://user:{SECRET}", "is not a valid MongoDB URL"),
        ("MONGO_URL", f"mongodb://user:{SECRET}@127.0.0.1:99999/db", "is not a valid MongoDB URL"),
        (
            "MONGO_URL",
            f"mongodb://u:{SECRET}@127.0.0.1:9/db?tls=true&tlsCAFile=/nonexistent/ca.pem",
            "a TLS file it names cannot be used (FileNotFoundError",
        ),
        # redis-py reads `Pa55` (before the `?` of the password) as the port
        ("REDIS_URL", f"rediss://app:Pa55?{SECRET}@cache:6380/0", "not a Redis URL"),
        ("CELERY_BROKER_URL", f"redis://:Xy7/{SECRET}@cache:6379/0", "not a Redis URL"),
        ("CELERY_BROKER_URL", f"redis://cache:6379/0?password={SECRET}", "no password option"),
        ("MONGO_URL", f"file://u:{SECRET}@/tmp/store.json", "reads as file://USER:PASSWORD@"),
        ("MONGO_URL", f"file://u:x/{SECRET}@/tmp/store.json", "reads as file://USER:PASSWORD@"),
        ("MONGO_URL", f"file://u%3A{SECRET}@/tmp/store.json", "reads as file://USER:PASSWORD@"),
        ("MONGO_URL", f"file://admin:{SECRET}", "reads as file://USER:PASSWORD@"),
        ("MONGO_URL", f"file://admin:{SECRET}/store.json", "reads as file://USER:PASSWORD@"),
    ],
)
def test_a_malformed_url_is_one_line_exit_1_without_any_of_its_password(
    monkeypatch, setting, url, says
):
    """Every command, `quota check` included (a bad setting is not an unreachable
    database to answer by QUOTA_FAIL_OPEN): exit 1, one line, nothing of the password."""
    monkeypatch.setenv(setting, url)
    monkeypatch.setenv("MONGO_TIMEOUT_MS", "150")
    get_settings.cache_clear()
    try:
        results = [
            CliRunner().invoke(main, args)
            for args in (["status"], ["run", "--org", "acme"], ["quota", "check", "--org", "acme"])
        ]
    finally:
        get_settings.cache_clear()
    for result in results:
        assert result.exit_code == 1, result.output
        assert says in result.output and len(result.output.strip().splitlines()) == 1
        assert SECRET not in result.output and "Pa55" not in result.output
        assert "Xy7" not in result.output


def test_credential_options_are_redacted_in_errors_and_the_stored_run(monkeypatch):
    """A credential in a URL option (an AWS session token) is hidden from the message of an
    unreachable server, and from the run record a failed run stores."""
    import mongomock

    from chores import Settings, run_chore
    from chores.core.exceptions import DatabaseUnavailable

    token = f"AWS_SESSION_TOKEN:{SECRET}"
    url = (
        f"mongodb://KEY:x@127.0.0.1:9/db?authMechanism=MONGODB-AWS&authMechanismProperties={token}"
    )
    monkeypatch.setenv("MONGO_URL", url)
    monkeypatch.setenv("MONGO_TIMEOUT_MS", "150")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["status"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1 and "authMechanismProperties=***" in result.output
    assert SECRET not in result.output

    db = mongomock.MongoClient(tz_aware=True)["main"]
    settings = Settings(mongo_url="mongomock://x")

    def unreachable(*args, **kwargs):
        raise DatabaseUnavailable(
            f"cannot reach MongoDB at h1,h2/db?authMechanismProperties={token}"
        )

    monkeypatch.setattr("chores.run.pipeline.Pipeline.changed_runners", unreachable)
    with pytest.raises(DatabaseUnavailable):
        run_chore(db, org="acme", settings=settings)
    (stored,) = db.billing_runs.find()
    assert "authMechanismProperties=***" in stored["error"] and SECRET not in stored["error"]


def test_an_unresolvable_srv_name_is_an_unreachable_database_not_a_malformed_url():
    """A `mongodb+srv://` name that DNS cannot resolve now (an outage, a resolver down) is
    retried by the tasks like any unreachable server, and its message says why."""
    from chores import Settings
    from chores.core.db import connect
    from chores.core.exceptions import DatabaseUnavailable

    url = f"mongodb+srv://user:{SECRET}@cluster0.nonexistent.invalid/db"
    with pytest.raises(DatabaseUnavailable, match="cannot resolve MongoDB at") as raised:
        connect(Settings(mongo_url=url, mongo_timeout_ms=500))
    assert "mongodb+srv://user:***@cluster0.nonexistent.invalid/db" in str(raised.value)
    assert SECRET not in str(raised.value)


def test_a_mongo_url_that_is_no_url_is_said_so_never_shown():
    """Outside review: `MONGO_URL=bogus` (pymongo reads a host name) asked whether the server
    was running; it says the value is read as a host name, still without showing it."""
    from chores import Settings
    from chores.core.db import connect
    from chores.core.exceptions import DatabaseUnavailable

    with pytest.raises(DatabaseUnavailable) as raised:
        connect(Settings(mongo_url=SECRET, mongo_timeout_ms=300))
    assert "is it meant to be a mongodb:// URL?" in str(raised.value)
    assert NO_SCHEME in str(raised.value) and SECRET not in str(raised.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a URL ending a clause keeps its host: the punctuation is not a port
        (
            "cannot reach MongoDB at mongodb://127.0.0.1:1: is the server running?",
            "cannot reach MongoDB at mongodb://127.0.0.1:1: is the server running?",
        ),
        ("at mongodb://localhost:27017.", "at mongodb://localhost:27017."),
        (f"at mongodb://u:{SECRET}@db:27017: down", "at mongodb://u:***@db:27017: down"),
        # options: only the ones that carry a credential, percent-encoded names too
        (f"redis://cache:6379/0?pass%77ord={SECRET}", "redis://cache:6379/0?pass%77ord=***"),
        (
            f"https://api.example/x?access_token={SECRET}&client_secret={SECRET}&max_tokens=5",
            "https://api.example/x?access_token=***&client_secret=***&max_tokens=5",
        ),
        # a backslash in a password (or JSON's escape of one, or of a non-ASCII letter) is
        # part of it; only an escaped quote ends a URL or a value
        (f"redis://:pa\\{SECRET}@cache:6379/0", "redis://:***@cache:6379/0"),
        (f'{{"m": "mongodb://u:p\\u00e4{SECRET}@db/x"}}', '{"m": "mongodb://u:***@db/x"}'),
        (f"?password=ab\\{SECRET}#x", "?password=***"),
        # `)`, `'` and `,` are legal in a password and end a URL in text: the credentials
        # are hidden up to the last `@` all the same
        (
            f"at mongodb://billing:p){SECRET}@db:27017/main",
            "at mongodb://billing:***@db:27017/main",
        ),
        (f"to redis://u:'{SECRET}@cache:6379/0", "to redis://u:***@cache:6379/0"),
        (f"at mongodb://u:p,{SECRET}@db1,db2/x", "at mongodb://u:***@db1,db2/x"),
        (
            f"?X-Amz-Security-Token={SECRET}&api-key={SECRET}&pwd={SECRET}&max_tokens=5",
            "?X-Amz-Security-Token=***&api-key=***&pwd=***&max_tokens=5",
        ),
    ],
)
def test_redact_urls_in_text(text, expected):
    assert redact_urls(text) == expected


@pytest.mark.parametrize(
    "message",
    [
        'bad option "redis://cache:6379/0?password={secret}" and "mongodb://localhost:27017" given',
        "x?password=ab\\{secret}\\",  # a backslash in it, and one ending the value
        "mongodb://billing:p\u00e4{secret}@db/x",  # a non-ASCII letter: \u00e4 in JSON
        "redis://u:p)'{secret}@cache:6379/0",  # ')' and "'" are legal in a password
    ],
)
def test_a_json_log_line_is_redacted_value_by_value_and_stays_json(message):
    """Redacted before it is encoded: in the encoded line a password's backslash, quote or
    non-ASCII letter is an escape the URL patterns would cut it at."""
    import json

    from chores.core.logs import JsonFormatter, RedactingFormatter

    text = message.format(secret=SECRET)
    record = logging.LogRecord("chores.tasks", logging.WARNING, __file__, 1, "%s", (text,), None)
    try:
        raise ConnectionError(f"Error 111 connecting to {text}")
    except ConnectionError:
        import sys

        record.exc_info = sys.exc_info()
    for formatter in (JsonFormatter(), RedactingFormatter(JsonFormatter())):
        line = formatter.format(record)
        decoded = json.loads(line)  # still JSON
        assert SECRET not in line and SECRET not in decoded["message"]
        assert SECRET not in decoded["exc_info"]
    assert json.loads(JsonFormatter().format(record))["message"] == redact_urls(text)


def test_an_escape_sequence_in_the_data_is_shown_never_obeyed(env_db):
    """From an outside review: an org id holding an escape sequence (`\\x1b[31m`) or a
    newline reached the terminal raw from `plan set`, `quota check` and `status`; a model
    name or workspace id from the source would drive an operator's terminal the same way."""
    from datetime import UTC, datetime

    org, model = "\x1b[31mred\nline", "gpt\x1b]0;owned\x07\u202e"
    env_db.tasks.insert_one(
        {
            "name": "ai",
            "status": "SUCCESS",
            "end_time": datetime(2026, 10, 20, tzinfo=UTC),
            "context": {"workspace_id": org, "ai_model": model, "ai_tokens": 100},
        }
    )
    now = ["--now", "2026-11-25T12:00:00+00:00"]
    commands = [
        ["run", "--all", "--no-lock", *now],
        ["plan", "set", "--org", org, "--token-limit", "1K", *now],
        ["plan", "show", "--org", org],
        ["quota", "check", "--org", org, *now],
        ["invoice", "show", "--org", org, "--period", "2026-10"],
        ["usage", "--org", org, "--period", "2026-10", "--by", "model"],
        ["finalize", *now],
        ["status", *now],
    ]
    for args in commands:
        result = CliRunner().invoke(main, args, color=True)  # click strips CSI otherwise
        assert result.exit_code == 0, (args, result.output)
        assert not any(c in result.output for c in "\x1b\x07\u202e"), (args, result.output)
        assert "\\x1b[31mred\\nline" in result.output, (args, result.output)
    # an error naming an org no invoice has, with the command to run for it (review)
    for command in ("invoice show", "reconcile", "usage"):
        args = [*command.split(), "--org", "new\x1b[31m", "--period", "2026-11"]
        result = CliRunner().invoke(main, args, color=True)
        assert result.exit_code == 1, (args, result.output)
        assert "\x1b" not in result.output and "new\\x1b[31m" in result.output, result.output


def test_a_url_without_a_scheme_is_never_shown(monkeypatch):
    """A password pasted as MONGO_URL reads as a host name: unreachable, and not printed."""
    monkeypatch.setenv("MONGO_URL", SECRET)
    monkeypatch.setenv("MONGO_TIMEOUT_MS", "150")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["status"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1, result.output
    assert f"cannot reach MongoDB at {NO_SCHEME}" in result.output
    assert SECRET not in result.output
