"""The worker's log lines: URLs redacted in every line, JSON when `LOG_FORMAT=json`.

`use_log_format` is applied to the loggers Celery sets up (`after_setup_logger`,
`after_setup_task_logger`, in `celery_app`): it wraps each handler's formatter, so
Celery's own lines get the same treatment as ours. A record may carry structured
fields under `extra={"fields": {...}}` (the one line per run of `tasks.meter_org`):
in JSON they are keys of the line, in text the message already says them.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from chores.core.settings import redact_options, redact_url

# A URL: a scheme not glued to a longer word (a lookbehind, not `\b`: linear on long runs of
# `a.`), then everything up to whitespace, a quote, a bracket or a comma.
_URL = re.compile(r"(?<![a-zA-Z0-9+.-])[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>,)]+")
# The credentials of a URL whose password holds a character that ends `_URL` (`'`, `)`, `,`,
# all legal unescaped in a password): from `scheme://user:` to the last `@` before whitespace.
_CREDENTIALS = re.compile(r"(?<![a-zA-Z0-9+.-])([a-zA-Z][\w+.-]*://[^\s:/@]*:)[^\s@]*@")
TRAILING = ".:;"  # after a URL in a sentence: "... at mongodb://db:27017: is it up?"


def redact_urls(text: str) -> str:
    """`text` with the password of every URL in it replaced by `***`, and every credential
    option too (also where a URL's host list, cut at its comma, left the options outside
    the URL matched). For plain text: a JSON line is redacted value by value, before it is
    encoded (`JsonFormatter`)."""

    def redact(match: re.Match[str]) -> str:
        url = match.group().rstrip(TRAILING)
        return redact_url(url) + match.group()[len(url) :]

    text = _CREDENTIALS.sub(r"\1***@", text)
    return redact_options(_URL.sub(redact, text))


def short_list(items: list[str], limit: int = 20) -> str:
    """`a, b, c`; past `limit` items, the first `limit` then `... (+N more)`."""
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown}, ... (+{len(items) - limit} more)"


class RedactingFormatter(logging.Formatter):
    """Another formatter's output, URLs redacted (tracebacks included)."""

    def __init__(self, inner: logging.Formatter | None = None):
        super().__init__()
        self.inner = inner or logging.Formatter(logging.BASIC_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record)
        # A JSON line is redacted value by value by its formatter: a second pass over the
        # encoded text could cut a value at an escape and break the JSON.
        return text if isinstance(self.inner, JsonFormatter) else redact_urls(text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the task's id and name
    when in a task, a record's `fields`, and the traceback if any; URLs redacted."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("task_id", "task_name"):
            value = getattr(record, key, None)
            if value and value != "???":
                line[key] = value
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update({k: v for k, v in fields.items() if k not in line})
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        # Redacted before encoding: in the encoded line a password's backslash, quote or
        # non-ASCII letter is an escape sequence the URL patterns would cut it at.
        redacted = {k: redact_urls(v) if isinstance(v, str) else v for k, v in line.items()}
        return json.dumps(redacted, default=lambda value: redact_urls(str(value)))


def use_log_format(logger: logging.Logger, log_format: str) -> None:
    """Give every handler of `logger` the JSON formatter (`json`) or its own format with
    URLs redacted (`text`). Idempotent."""
    for handler in logger.handlers:
        current = handler.formatter
        if log_format == "json":
            if not isinstance(current, JsonFormatter):
                handler.setFormatter(JsonFormatter())
        elif isinstance(current, JsonFormatter):
            handler.setFormatter(RedactingFormatter())
        elif not isinstance(current, RedactingFormatter):
            handler.setFormatter(RedactingFormatter(current))
