"""Queued messages and beat's schedule name tasks by string: those names are pinned.

A task renamed or moved would leave the messages already queued (and a deployed beat)
naming a task no worker knows.
"""

from __future__ import annotations

import pytest

from chores import Settings, tasks
from chores.celery_app import app
from chores.service.config import celery_config

TASK_NAMES = {
    "chores.tasks.meter_all": tasks.meter_all,
    "chores.tasks.meter_org": tasks.meter_org,
    "chores.tasks.finalize_invoices": tasks.finalize_invoices,
}


def registered() -> set[str]:
    return {name for name in app.tasks if not name.startswith("celery.")}


def test_the_app_registers_exactly_the_pinned_names() -> None:
    assert registered() == set(TASK_NAMES)


@pytest.mark.parametrize("name", sorted(TASK_NAMES))
def test_each_name_is_its_task(name: str) -> None:
    assert TASK_NAMES[name].name == name  # the function in chores/tasks.py
    assert app.tasks[name].name == name


def test_the_beat_schedule_names_registered_tasks() -> None:
    schedule = celery_config(Settings(redis_url="redis://localhost:6379/0"))["beat_schedule"]
    assert schedule
    for entry, spec in schedule.items():
        assert spec["task"] in registered(), entry


def test_the_beat_healthcheck_answers_where_probes_written_before_the_service_package_call_it():
    """`import chores.celery_app as app; raise SystemExit(app.beat_health())` was the
    compose healthcheck; a probe copied from it keeps working (review)."""
    import chores.celery_app as old_home
    from chores.service import beat

    assert old_home.beat_health is beat.beat_health
