"""The Celery app: Redis broker, late acks, time limits, JSON, UTC, and the beat schedule.

    celery -A chores.celery_app worker --loglevel=INFO
    celery -A chores.celery_app beat --loglevel=INFO     # exactly one, ever

The tasks are in `chores.tasks`; docs/deploy.md explains the settings.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.schedules import crontab

from ._exceptions import ConfigError
from ._settings import Settings, get_settings

RETRY_BACKOFF_MAX = 60  # seconds: the longest countdown between two retries


def visibility_timeout(hard_time_limit: int) -> int:
    """Seconds before Redis hands an unacknowledged message to another worker: longer
    than a run plus a retry countdown, or a slow run would be started twice."""
    return max(3600, 2 * (hard_time_limit + RETRY_BACKOFF_MAX))


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
        "broker_transport_options": {"visibility_timeout": visibility_timeout(hard)},
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
