"""The Celery app: created, configured from the settings (`chores.service.config`), its
tasks in `chores.tasks`, and the start-up checks and logging hooked to Celery's signals.

    celery -A chores.celery_app worker --loglevel=INFO
    celery -A chores.celery_app beat --loglevel=INFO     # one sends; any other waits

docs/deploy.md explains the settings.
"""

from __future__ import annotations

import logging
import sys
from types import TracebackType
from typing import Any

import click
from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    celeryd_init,
    import_modules,
)

from chores.core.exceptions import ConfigError
from chores.core.logs import use_log_format
from chores.core.settings import Settings, get_settings
from chores.service.beat import beat_health, beat_redis_problem
from chores.service.checks import (
    mongo_url_problem,
    redis_problem,
    stop_line,
    store_problem,
)
from chores.service.config import celery_config


def _configured() -> dict[str, Any]:
    """Celery's settings from the environment. A bad one stops the `celery` command (worker,
    beat) with its one line (redacted, as `get_settings` words it), not Celery's usage text
    and a traceback: SystemExit, which Celery's loading of the app does not catch; a JSON
    record under `LOG_FORMAT=json` when the settings could be read. Any other importer gets
    the `ConfigError`."""
    settings: Settings | None = None
    try:
        settings = get_settings()
        return celery_config(settings)
    except ConfigError as exc:
        if _run_by_celery_command():
            line = f"chore service: {exc}"
            raise SystemExit(line if settings is None else stop_line(line, settings)) from None
        raise


def _run_by_celery_command() -> bool:
    """Whether this process is the `celery` command: its script runs `celery.__main__`'s
    `main`, `python -m celery` runs that module as `__main__` (a script merely named
    celery does neither)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return "celery.__main__" in sys.modules or getattr(spec, "name", None) == "celery.__main__"


# The beat healthcheck as probes written before `chores.service` call it
# (`import chores.celery_app as app; raise SystemExit(app.beat_health())`).
__all__ = ["app", "beat_health"]

app = Celery("chores", include=["chores.tasks"])
app.conf.update(_configured())


@celeryd_init.connect
def _refuse_a_local_store(**_: Any) -> None:
    """`celery worker` stops before it starts on a store it cannot bill into, or a
    MONGO_URL pymongo cannot read."""
    settings = get_settings()
    problem = store_problem(settings) or mongo_url_problem(settings)
    if problem is not None:  # not Exception: Celery would log it on
        raise SystemExit(stop_line(f"chore worker: {problem}", settings))


@import_modules.connect
def _refuse_refused_credentials(**_: Any) -> None:
    """`celery worker` and `celery beat` stop before they start (each imports the task
    modules first) when a Redis refuses their credentials, or speaks no TLS to a rediss:// URL
    (`redis_problem`)."""
    if not _run_by_celery_command():
        return
    settings = get_settings()
    problem = redis_problem(settings)
    if problem is None and _celery_subcommand() == "beat":
        problem = beat_redis_problem(settings)
    if problem is not None:
        # not Exception: Celery would log it on
        raise SystemExit(stop_line(f"chore service: {problem}", settings))


def _celery_subcommand() -> str | None:
    """`worker`, `beat`, ...: the `celery` subcommand running now (click's context)."""
    context = click.get_current_context(silent=True)
    return None if context is None else context.info_name


@after_setup_logger.connect
@after_setup_task_logger.connect
def _log_format(logger: logging.Logger, **_: Any) -> None:
    """Celery's loggers as set up by the worker and beat: URLs redacted in every line,
    JSON lines when `LOG_FORMAT=json` (`chores.core.logs`); from then on, an exception that
    stops the worker or beat is logged through them too."""
    use_log_format(logger, get_settings().log_format)
    sys.excepthook = _log_uncaught


def _log_uncaught(
    kind: type[BaseException], exc: BaseException, traceback: TracebackType | None
) -> None:
    """One record through the loggers set up above (redacted; JSON with `LOG_FORMAT=json`)
    instead of Python's raw traceback on stderr, which nothing redacts."""
    logging.getLogger("chores").critical(
        "stopped by %s", kind.__name__, exc_info=(kind, exc, traceback)
    )
