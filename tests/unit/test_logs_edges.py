"""Found untested by mutation testing of chores/core/logs.py (stop 56)."""

from __future__ import annotations

import io
import json
import logging

from chores.core.logs import JsonFormatter, RedactingFormatter, short_list, use_log_format

SECRET = "s3cr3t-pw"


def _record(**attributes: object) -> logging.LogRecord:
    record = logging.LogRecord("chores.tasks", logging.INFO, __file__, 1, "metered", None, None)
    for key, value in attributes.items():
        setattr(record, key, value)
    return record


def test_a_json_line_names_its_task_and_a_line_outside_a_task_names_none():
    """In a task, Celery's task formatter gives the record its task's id and name: they are
    keys of the JSON line (an operator finds a run's lines by them). Outside a task there
    is none, or Celery's `???` placeholder: no key, rather than a null or `???`."""
    in_task = json.loads(
        JsonFormatter().format(_record(task_id="4f1c-id", task_name="chores.tasks.meter_org"))
    )
    assert (in_task["task_id"], in_task["task_name"]) == ("4f1c-id", "chores.tasks.meter_org")
    for outside in (_record(), _record(task_id="???", task_name="???"), _record(task_id=None)):
        line = json.loads(JsonFormatter().format(outside))
        assert "task_id" not in line and "task_name" not in line, line
        assert line["message"] == "metered"


def test_a_json_handler_given_the_text_format_writes_text_lines_redacted():
    """`use_log_format(logger, "text")` on a handler that writes JSON gives it text lines
    again (URLs still redacted), not JSON lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("test.edges.json-then-text")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    use_log_format(logger, "json")
    use_log_format(logger, "text")
    assert isinstance(handler.formatter, RedactingFormatter)
    logger.error("cannot reach mongodb://u:%s@h:27017/db", SECRET)
    (line,) = stream.getvalue().splitlines()
    assert line == "ERROR:test.edges.json-then-text:cannot reach mongodb://u:***@h:27017/db"


def test_a_list_of_exactly_the_limit_is_shown_whole_without_a_more_note():
    """The fan-out's line names up to 20 orgs in full; only past 20 does it say how many
    more: 20 orgs are not `... (+0 more)`."""
    orgs = [f"org{i:02d}" for i in range(20)]
    assert short_list(orgs) == ", ".join(orgs)
    assert short_list([*orgs, "org20"]) == ", ".join(orgs) + ", ... (+1 more)"
    assert short_list(["a", "b", "c"], limit=3) == "a, b, c"
