"""The Celery service around the app (`chores.celery_app`) and its tasks (`chores.tasks`):
Celery's configuration derived from the settings (`config`), beat as a singleton and its
healthcheck (`beat`), and what stops the worker or beat at start (`checks`).

May import: every other `chores` package but `chores.cli`.
"""
