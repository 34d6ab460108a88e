"""The service's Celery app, with a run whose pool process died sent again after 1 s rather
than the 5 s of `tasks.RETRY` (`default_retry_delay`): for a prefork worker in a test that
kills six pool processes in a row. Nothing else differs.

    celery -A support.quick_retries worker ...    # with tests/ on PYTHONPATH
"""

from __future__ import annotations

from chores import tasks
from chores.celery_app import app

RETRY_DELAY = 1  # seconds
tasks.meter_org.default_retry_delay = RETRY_DELAY

__all__ = ["RETRY_DELAY", "app"]
