"""The Celery app's start-up checks at their edges, in this process: what stops the `celery`
command (worker, beat) and what does not stop a program that merely loads the app.

Found untested by mutation testing of chores/celery_app.py (stop 58)."""

from __future__ import annotations

import sys
import urllib.parse
from types import ModuleType

import click
import pytest
from celery.signals import import_modules

from chores import Settings, celery_app
from chores.celery_app import app

# Found untested by mutation testing (stop 58).


def rediss_to_a_plain_redis(redis_base_url: str) -> Settings:
    """Settings whose broker is a `rediss://` URL naming the test Redis, which speaks no
    TLS: `redis_problem` stops the `celery` command on it."""
    plain = urllib.parse.urlsplit(redis_base_url)
    return Settings(
        celery_broker_url=f"rediss://{plain.hostname}:{plain.port}/0",
        mongo_url="mongomock://celery-app-edges",
    )


def test_a_program_loading_the_task_modules_is_not_stopped_by_the_service_checks(
    redis_base_url, monkeypatch
):
    """Only `celery worker` and `celery beat` stop at start on a Redis problem: a program
    that loads the app and its task modules itself (an embedded worker, a script) is left
    to handle the connection as it will."""
    settings = rediss_to_a_plain_redis(redis_base_url)
    monkeypatch.setattr(celery_app, "get_settings", lambda: settings)
    monkeypatch.delitem(sys.modules, "celery.__main__", raising=False)

    import_modules.send(sender=app)  # not stopped

    monkeypatch.setitem(sys.modules, "celery.__main__", ModuleType("celery.__main__"))  # as run
    with pytest.raises(SystemExit) as stopped:
        import_modules.send(sender=app)
    assert str(stopped.value).startswith(
        f"chore service: CELERY_BROKER_URL {settings.celery_broker_url}: that Redis speaks no TLS"
    )


def test_the_subcommand_is_the_one_click_runs_and_none_outside_the_command():
    """Beat's own check (its Redis reached at start) asks which subcommand runs: outside
    click's context (a program loading the app) there is none, not an error."""
    assert celery_app._celery_subcommand() is None
    with click.Context(click.Command("beat"), info_name="beat"):
        assert celery_app._celery_subcommand() == "beat"
