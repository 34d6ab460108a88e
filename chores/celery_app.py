"""The Celery app: Redis broker, late acks, time limits, JSON, UTC, and the beat schedule.

    celery -A chores.celery_app worker --loglevel=INFO
    celery -A chores.celery_app beat --loglevel=INFO     # exactly one, ever

The tasks are in `chores.tasks`; docs/deploy.md explains the settings.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.schedules import crontab
from celery.signals import after_setup_logger, after_setup_task_logger

from ._exceptions import ConfigError
from ._logs import use_log_format
from ._settings import Settings, get_settings

RETRY_BACKOFF_MAX = 60  # seconds: the longest countdown between two retries
SHUTDOWN_MARGIN = 30  # seconds: a worker's own shutdown after its last run has ended


def visibility_timeout(hard_time_limit: int, longest_countdown: float = RETRY_BACKOFF_MAX) -> int:
    """Seconds before Redis hands an unacknowledged message to another worker: longer
    than a run plus the longest retry countdown (a retried message waits out its
    countdown unacknowledged at a worker), or a slow run would be started twice."""
    return max(3600, 2 * (hard_time_limit + int(longest_countdown)))


def stop_timeout(settings: Settings) -> int:
    """Seconds a supervisor must give a worker between SIGTERM and SIGKILL: its run
    lasts at most the hard time limit (the soft shutdown no longer), then it exits."""
    return settings.task_time_limit + SHUTDOWN_MARGIN


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery's settings, derived from ours (time limits checked to nest)."""
    soft, hard = settings.task_soft_time_limit, settings.task_time_limit
    ttl = settings.lock_ttl_seconds
    if not soft < hard < ttl:
        raise ConfigError(
            "time limits must nest: TASK_SOFT_TIME_LIMIT < TASK_TIME_LIMIT < LOCK_TTL_SECONDS, "
            f"got {soft} < {hard} < {ttl}"
        )
    return {
        "broker_url": settings.celery_broker_url,
        "result_backend": settings.celery_result_backend,
        # The full pass of a locked org is retried after LOCK_TTL_SECONDS (`tasks.meter_org`).
        "broker_transport_options": {
            "visibility_timeout": visibility_timeout(hard, max(RETRY_BACKOFF_MAX, ttl))
        },
        # Ack after the run: a worker that dies mid-run leaves its message to be redelivered,
        # which is safe because every run can be repeated without billing twice.
        "task_acks_late": True,
        # ...and so does a pool process killed under it (OOM killer, SIGKILL): without this
        # Celery acknowledges the message as failed (`WorkerLostError`) and nothing is
        # redelivered. With it the message goes back on the queue at once, and its next run
        # takes over the dead run's lock (same task id, `_lock`).
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # SIGTERM (docker stop) is a warm shutdown: the running run finishes, cut at the
        # latest by the hard limit. A cold shutdown (SIGQUIT, a second Ctrl+C) first waits
        # as long (the soft shutdown), then cancels what still runs: with late acks its
        # message goes back on the queue. The supervisor's stop timeout must exceed both
        # (`stop_timeout`; docker-compose.yml's stop_grace_period, docs/deploy.md).
        "worker_soft_shutdown_timeout": float(hard),
        "broker_connection_retry_on_startup": True,
        "task_soft_time_limit": soft,
        "task_time_limit": hard,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "timezone": "UTC",
        "enable_utc": True,
        "beat_schedule": {
            "meter-all": {
                "task": "chores.tasks.meter_all",
                "schedule": settings.meter_every_seconds,
                # A fan-out nobody ran before the next one is redundant: the next covers it.
                "options": {"expires": settings.meter_every_seconds},
            },
            # The safety net: every org re-read in full (a runner rewritten long after it ended).
            "meter-all-full": {
                "task": "chores.tasks.meter_all",
                "schedule": crontab(minute="5", hour="0"),
                "kwargs": {"full": True},
            },
            "finalize-invoices": {
                "task": "chores.tasks.finalize_invoices",
                "schedule": crontab(minute="15", hour="0"),
            },
        },
    }


app = Celery("chores", include=["chores.tasks"])
app.conf.update(celery_config(get_settings()))


@after_setup_logger.connect
@after_setup_task_logger.connect
def _log_format(logger: logging.Logger, **_: Any) -> None:
    """Celery's loggers as set up by the worker and beat: URLs redacted in every line,
    JSON lines when `LOG_FORMAT=json` (`chores._logs`)."""
    use_log_format(logger, get_settings().log_format)
