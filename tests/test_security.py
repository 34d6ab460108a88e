"""Secrets never reach output, logs or stored documents."""

from __future__ import annotations

import logging

import pytest
from click.testing import CliRunner

from chores import get_settings
from chores._settings import redact_url
from chores.cli import main

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
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected


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
