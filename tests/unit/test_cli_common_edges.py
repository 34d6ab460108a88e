"""What every command shares (`chores/cli/common.py`): found untested by mutation testing
(stop 56)."""

from __future__ import annotations

import errno
import io
from typing import Any

from click.testing import CliRunner

from chores.cli import main


def test_json_and_csv_together_is_a_usage_error_not_a_silent_choice(metered_env_db):
    args = ["invoice", "show", "--org", "ws-acme", "--period", "2026-11", "--json", "--csv"]
    result = CliRunner().invoke(main, args, prog_name="chore")
    assert result.exit_code == 2, result.output
    assert "give at most one of --json and --csv" in result.output


def test_an_option_in_bytes_that_are_not_utf8_is_refused_before_the_command_runs(tmp_path):
    """A lone surrogate (what Python makes of bytes that are not UTF-8 in an argument) is
    refused in one line, exit 1, before anything is written."""
    import json

    source = tmp_path / "map.json"
    chat = {"litellm_provider": "openai", "mode": "chat"}
    rates = {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06}
    source.write_text(json.dumps({"m": {**chat, **rates}}))
    out = tmp_path / "registry.yaml"
    args = ["registry", "import-litellm", str(source), "--out", str(out), "--version", "v\udcff"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert result.output == "Error: --version is not UTF-8 text: 'v\\udcff'\n"
    assert not out.exists()


def test_a_database_error_that_is_not_a_bulk_write_is_its_message_in_one_line(env_db):
    import click
    import pytest
    from pymongo.errors import ServerSelectionTimeoutError

    from chores.cli.common import user_errors

    @user_errors
    def command() -> None:
        raise ServerSelectionTimeoutError("db.example:27017: timed out")

    with pytest.raises(click.ClickException) as raised:
        command()
    assert raised.value.message == "database error: db.example:27017: timed out"


# --- found untested by mutation testing of chores/cli/common.py (stop 58) ---


def test_a_bulk_write_with_one_error_is_its_message_and_code_without_a_count():
    """Mutants at common.py:104-106 (`len(errors) > 1`): one refused write is its message
    and code; "1 writes of the batch failed" would be noise (and wrong English)."""
    from pymongo.errors import BulkWriteError

    from chores.cli.common import database_problem

    error = {"index": 0, "code": 11000, "errmsg": "E11000 duplicate key", "op": {"_id": "x"}}
    exc = BulkWriteError({"writeErrors": [error], "nInserted": 0})
    assert database_problem(exc) == "E11000 duplicate key (code 11000)"


def test_a_bulk_write_error_without_its_message_or_errors_still_says_something():
    """Mutants at common.py:102-107: a write error with no `errmsg` says "a write failed"
    with its code; a bulk error listing no write errors (a write concern failure) is the
    driver's own message, not an IndexError."""
    from pymongo.errors import BulkWriteError

    from chores.cli.common import database_problem

    exc = BulkWriteError({"writeErrors": [{"index": 0, "code": 121}], "nInserted": 0})
    assert database_problem(exc) == "a write failed (code 121)"
    empty = BulkWriteError({"writeErrors": [], "writeConcernErrors": [{"code": 64}]})
    assert database_problem(empty) == str(empty)


def test_output_to_a_pipe_is_160_columns_unless_columns_says_otherwise(monkeypatch):
    """Mutants at common.py:39-42 (`console`): piped or written to a file (as under
    pytest), tables are 160 columns wide, so no row wraps in a log; COLUMNS, when set,
    wins; emoji codes in data (an org `:smile:`) are printed as written."""
    from chores.cli.common import console

    monkeypatch.delenv("COLUMNS", raising=False)
    piped = console()
    assert not piped.is_terminal and piped.width == 160
    with piped.capture() as captured:
        piped.print(":smile:")
    assert captured.get() == ":smile:\n"
    monkeypatch.setenv("COLUMNS", "93")
    told = console()
    assert told.width == 93
    with told.capture() as captured:
        told.print(":smile:")
    assert captured.get() == ":smile:\n"


def test_a_bulk_write_names_its_first_error_not_its_last():
    """Mutant common.py:105 `errors[0]` -> `errors[-1]`: the batch is refused at its first
    failing write (an ordered insert stops there), so that is the one to name."""
    from pymongo.errors import BulkWriteError

    from chores.cli.common import database_problem

    first = {"index": 3, "code": 11000, "errmsg": "E11000 duplicate key"}
    last = {"index": 7, "code": 121, "errmsg": "Document failed validation"}
    exc = BulkWriteError({"writeErrors": [first, last], "nInserted": 3})
    assert database_problem(exc) == (
        "E11000 duplicate key (code 11000; 2 writes of the batch failed)"
    )


def test_a_file_path_in_bytes_that_are_not_utf8_is_left_to_the_file_system(tmp_path):
    """Mutants at common.py:90-91 (a `click.Path` no longer skipped): unlike the text
    options, a file name may be any bytes (Linux's); `import-litellm` reads and writes such
    files, and `registry list` reads one, as the file system holds them."""
    import json
    import os

    source = tmp_path / os.fsdecode(b"prices-\xff.json")
    chat = {"litellm_provider": "openai", "mode": "chat"}
    rates = {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06}
    source.write_text(json.dumps({"m": {**chat, **rates}}))
    out = tmp_path / os.fsdecode(b"registry-\xfe.yaml")
    args = ["registry", "import-litellm", str(source), "--out", str(out), "--version", "v1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("# Model price registry")
    listed = CliRunner().invoke(main, ["registry", "list", str(out)])
    assert listed.exit_code == 0, listed.output
    assert listed.output.startswith("Model registry v1 (1 model)")


def test_a_data_format_on_an_output_with_no_bytes_beneath_is_its_text_once(monkeypatch):
    """Mutants at common.py:169-171 (`echo_utf8`): an output that is text only (a
    StringIO, as a caller that redirects stdout in Python has) gets the CSV as it is,
    once, with no line added and no AttributeError."""
    import sys

    from chores.cli.common import echo_utf8

    shown = io.StringIO()
    monkeypatch.setattr(sys, "stdout", shown)
    echo_utf8("invoice,model\nacme:2026-11,sess-中\n")
    assert shown.getvalue() == "invoice,model\nacme:2026-11,sess-中\n"


def test_a_data_format_comes_after_what_was_printed_before_it(monkeypatch):
    """Mutant common.py:167 (no `sys.stdout.flush()`): text printed before and still held
    in the output's text buffer (a `print`) comes first, not after the UTF-8 bytes written
    beneath it; and those bytes are UTF-8 whatever the output's encoding (latin-1 here)."""
    import sys

    from chores.cli.common import echo_utf8

    written = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(written, encoding="latin-1"))
    print("usage of acme")
    echo_utf8("session\nsess-中\n")
    assert written.getvalue() == "usage of acme\nsession\nsess-中\n".encode()


class _FullDisk(io.RawIOBase):
    """A device with no space left (Linux's /dev/full), as a raw output: its first write
    fails with ENOSPC; later ones (what Python flushes as it exits) are dropped."""

    failed = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if not self.failed:
            self.failed = True
            raise OSError(errno.ENOSPC, "No space left on device")
        return len(data)


def test_a_csv_on_a_full_disk_is_one_line_and_exit_1(metered_env_db, monkeypatch, capsys):
    """Mutant common.py:173 (no `output.flush()`): a CSV shorter than the output's buffer
    stayed in it, the command exited 0 and Python's flush as it exits failed ("Exception
    ignored", exit 120). The write fails in the command: one line, exit 1 (README)."""
    import sys

    import pytest

    from chores.cli import entry

    full = _FullDisk()
    stdout = io.TextIOWrapper(io.BufferedWriter(full), encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", stdout)
    args = ["invoice", "show", "--org", "ws-acme", "--period", "2026-11", "--csv"]
    monkeypatch.setattr(sys, "argv", ["chore", *args])
    with pytest.raises(SystemExit) as exited:
        entry.main()
    assert exited.value.code == 1
    assert capsys.readouterr().err == "Error: cannot write the output: No space left on device\n"
    assert full.failed
