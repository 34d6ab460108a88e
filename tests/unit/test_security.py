"""Secrets never reach output, logs or stored documents."""

from __future__ import annotations

import logging

import pytest
from click.testing import CliRunner

from chores import get_settings
from chores.cli import main
from chores.core.settings import redact_url

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
