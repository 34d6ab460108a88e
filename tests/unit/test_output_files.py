"""`--out` files (review): written whole, through a symlink to its file, never over a FIFO,
a device, a local store or (for a registry) a file that is no registry, with the permission
bits a file written by the user would have."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from chores.cli import main
from chores.cli.output_files import write_output
from chores.core import local_store


def test_a_new_file_gets_the_umasks_bits_and_a_replaced_one_keeps_its_own(tmp_path):
    previous = os.umask(0o027)
    try:
        new = tmp_path / "new.html"
        write_output(new, "one")
        assert stat.S_IMODE(new.stat().st_mode) == 0o640  # not a temporary file's 0600
        kept = tmp_path / "kept.html"
        kept.write_text("old")
        kept.chmod(0o604)
        write_output(kept, "two")
        assert kept.read_text() == "two" and stat.S_IMODE(kept.stat().st_mode) == 0o604
    finally:
        os.umask(previous)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.html", "new.html"]


def test_a_symlink_is_written_through_and_stays_a_link(tmp_path):
    real = tmp_path / "real.html"
    real.write_text("old")
    link = tmp_path / "link.html"
    link.symlink_to(real)
    write_output(link, "new")
    assert link.is_symlink() and real.read_text() == "new"


def test_a_fifo_or_a_directory_is_refused_and_left_as_it_is(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for target in (fifo, tmp_path):
        with pytest.raises(click.ClickException, match="not a regular file"):
            write_output(target, "page")
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]  # no temporary file left


def test_a_local_store_is_never_replaced(tmp_path):
    store = tmp_path / "store.json"
    client = local_store.open_client(f"file://{store}", fresh=True)
    client["main"]["billing_invoices"].insert_one({"_id": "acme:2026-11", "total_micros": 7})
    local_store.close_all()
    before = store.read_bytes()
    with pytest.raises(click.ClickException, match="is a local store of the chore's billing"):
        write_output(store, "<html>")
    assert store.read_bytes() == before


def _litellm_map(tmp_path: Path) -> Path:
    source = tmp_path / "map.json"
    source.write_text(
        json.dumps(
            {
                "gpt-4o-mini": {
                    "input_cost_per_token": 1.5e-07,
                    "output_cost_per_token": 6e-07,
                    "litellm_provider": "openai",
                    "mode": "chat",
                }
            }
        )
    )
    return source


def test_import_litellm_replaces_a_registry_but_no_other_file(tmp_path):
    """A mistyped `--out` replaced a billing store (every invoice lost) with `wrote 1 model`
    and exit 0."""
    source = _litellm_map(tmp_path)
    store = tmp_path / "s7.json"
    local_store.open_client(f"file://{store}", fresh=True)["main"]["plans"].insert_one({"o": 1})
    local_store.close_all()
    compose = tmp_path / "docker-compose.yml"
    compose.write_text("services:\n  mongo:\n    image: mongo:7.0\n")
    for target, says in (
        (store, "is a local store"),
        (compose, "exists and is not a model registry"),
    ):
        before = target.read_bytes()
        args = ["registry", "import-litellm", str(source), "--out", str(target)]
        refused = CliRunner().invoke(main, args)
        assert refused.exit_code == 1 and f"not replaced: {target} {says}" in refused.output
        assert refused.output.count("\n") == 1, refused.output  # one line
        assert target.read_bytes() == before
    registry = tmp_path / "registry.yaml"
    first = CliRunner().invoke(
        main, ["registry", "import-litellm", str(source), "--out", str(registry)]
    )
    again = CliRunner().invoke(
        main, ["registry", "import-litellm", str(source), "--out", str(registry)]
    )
    assert (first.exit_code, again.exit_code) == (0, 0), again.output
    assert f"wrote 1 model to {registry}" in again.output


def test_a_symlink_loop_or_a_read_only_file_is_one_line_and_nothing_written(tmp_path):
    loop = tmp_path / "a.html"
    loop.symlink_to(tmp_path / "b.html")
    (tmp_path / "b.html").symlink_to(loop)
    with pytest.raises(click.ClickException, match="a loop of symbolic links"):
        write_output(loop, "page")
    kept = tmp_path / "kept.html"
    kept.write_text("old")
    kept.chmod(0o444)  # refused even for root, who could write it anyway
    with pytest.raises(click.ClickException, match="is read-only"):
        write_output(kept, "new")
    assert kept.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.html", "b.html", "kept.html"]


def test_a_stores_lock_is_never_replaced_and_an_empty_file_always_is(tmp_path):
    store = tmp_path / "store.json"
    local_store.open_client(f"file://{store}", fresh=True)["main"]["plans"].insert_one({"o": 1})
    local_store.close_all()
    lock = tmp_path / "store.json.lock"
    lock.touch()
    creating = tmp_path / "new.json.lock"  # a store being created: no file beside it yet
    creating.touch()
    for held in (lock, creating):
        with pytest.raises(click.ClickException, match="is the lock of a local store"):
            write_output(held, "<html>" * 10, keep=lambda path: "never")
    empty = tmp_path / "empty.yaml"
    empty.touch()  # `touch`, `mktemp`: nothing in it to lose
    write_output(empty, "version: '1'\n", keep=lambda path: "never")
    assert empty.read_text() == "version: '1'\n"


def test_a_store_reformatted_by_hand_and_its_lock_are_never_replaced(tmp_path):
    """Review: `is_store` looked at the file's first bytes only, so a store reformatted with
    `python -m json.tool` (which every command still opens) was replaced by a report."""
    store = tmp_path / "store.json"
    local_store.open_client(f"file://{store}", fresh=True)["main"]["plans"].insert_one({"o": 1})
    local_store.close_all()
    store.write_text(json.dumps(json.loads(store.read_text()), indent=2))
    before = store.read_bytes()
    with pytest.raises(click.ClickException, match="is a local store"):
        write_output(store, "<html>")
    with pytest.raises(click.ClickException, match="is the lock of a local store"):
        write_output(tmp_path / "store.json.lock", "<html>")
    assert store.read_bytes() == before


def test_a_report_of_ones_own_named_like_a_lock_is_replaced(tmp_path):
    """Review: `report --out report.lock` twice was refused the second time as 'the lock of
    a local store'. A store's lock is empty; a report is not."""
    own = tmp_path / "report.lock"
    write_output(own, "<html>1")
    write_output(own, "<html>2")
    assert own.read_text() == "<html>2"


def _a_store_with_many_plans(tmp_path: Path) -> Path:
    store = tmp_path / "store.json"
    plans = local_store.open_client(f"file://{store}", fresh=True)["main"]["plans"]
    plans.insert_many([{"org": f"org-{n}", "note": "x" * 100} for n in range(200)])  # > 4 KB
    local_store.close_all()
    return store


@pytest.mark.parametrize("shape", ["sorted keys", "symbol"])
def test_a_store_reformatted_any_way_loading_reads_is_a_store(tmp_path, shape):
    """Review: `jq -S` sorts `format` after `databases`, and loading reads
    `{"$symbol": ...}` as the string: both stores were replaced by `--out`."""
    store = _a_store_with_many_plans(tmp_path)
    data = json.loads(store.read_text())
    if shape == "symbol":
        data["format"] = {"$symbol": data["format"]}
    store.write_text(json.dumps(data, indent=2, sort_keys=shape == "sorted keys"))
    assert local_store.open_client(f"file://{store}")["main"]["plans"].count_documents({}) == 200
    local_store.close_all(save=False)
    assert local_store.may_be_store(store) and not local_store.is_store(store)


@pytest.mark.parametrize(
    "text",
    ["[" * 200_000, '{"a": [' + "1," * 2_000_000 + "1]}", '{"format": "other"}', ""],
    ids=["deeply nested", "large JSON", "another format", "empty"],
)
def test_a_file_that_is_no_store_is_judged_from_a_few_kb_without_a_crash(tmp_path, text):
    """Review: parsing the whole file raised RecursionError on deep nesting and took 2.85 GB
    for a 240 MB file; only its first and last few KB are read now."""
    path = tmp_path / "data.json"
    path.write_text(text)
    assert not local_store.may_be_store(path)
    write_output(path, "replaced")  # a file that is no store: replaced as any other
    assert path.read_text() == "replaced"


def test_the_format_named_across_the_first_4_kb_is_still_seen(tmp_path):
    """Review: in a file of 4-8 KB the first and last 4 KB read did not overlap, so a key
    straddling byte 4096 was in neither."""
    opening = '{"databases": "'
    prefix = opening + "x" * (4090 - len(opening) - 3) + '", '
    path = tmp_path / "sorted.json"
    path.write_text(prefix + '"format": "chore-local-store", "version": 1}')
    assert len(prefix) == 4090 and path.stat().st_size < 8192
    assert local_store.may_be_store(path)
    with pytest.raises(click.ClickException, match="is a local store"):
        write_output(path, "<html>")


def test_an_out_ending_in_a_slash_is_refused_not_written_as_the_file_before_it(
    metered_env_db, tmp_path
):
    """Outside hunt: `report --out newdir/` wrote the page to a file named `newdir` ("wrote
    newdir/", exit 0), and `import-litellm --out reg.yaml/` replaced `reg.yaml`: the path
    lost its trailing `/`. A path ending in `/` (or `/.`) names a directory, as a shell's
    `> newdir/` takes it: one line, nothing written, the file before it left as it was."""
    kept = tmp_path / "reg.yaml"
    kept.write_text("")  # empty: replaced by any --out naming it
    for out in (f"{tmp_path}/newdir/", f"{tmp_path}/newdir/.", f"{kept}/"):
        args = ["report", "--org", "ws-acme", "--period", "2026-11", "--out", out]
        refused = CliRunner().invoke(main, [*args, "--now", "2026-11-25T12:00:00Z"])
        assert refused.exit_code == 1, refused.output
        assert refused.output.splitlines()[0] == (
            f"Error: cannot write {out}: a directory's path: give the path of a file"
        )
    args = ["report", "--org", "ws-acme", "--period", "2026-11", "--out", ""]
    refused = CliRunner().invoke(main, [*args, "--now", "2026-11-25T12:00:00Z"])
    assert refused.exit_code == 1 and refused.output.splitlines()[0] == (
        "Error: cannot write to an empty path: give the path of a file"
    )
    source = _litellm_map(tmp_path)
    args = ["registry", "import-litellm", str(source), "--out", f"{kept}/"]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 1 and "a directory's path" in refused.output
    assert kept.read_text() == ""
    refused = CliRunner().invoke(main, ["registry", "import-litellm", str(source), "--out", ""])
    assert (refused.exit_code, refused.stdout) == (1, ""), refused.output  # not printed instead
    assert "cannot write to an empty path" in refused.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.json", "reg.yaml"]
