"""Issue 18 item 3: the live progress of `chore run --all`, seen in a real terminal.

The run goes in a tmux pane (a real pseudo-terminal, so rich draws its live display) on a
local file store of several thousand runner documents; the pane is captured while it
runs, and the count of documents read must move between captures. Skipped only where
tmux is not installed (`apt-get install -y tmux`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chores.core import local_store as _local_store
from chores.demo.corpus import generate_corpus

TMUX = shutil.which("tmux")
READ = re.compile(r"metering: ([\d,]+) runner documents? read · (\d+) orgs? with new usage")


@pytest.fixture
def big_store(tmp_path: Path) -> Path:
    path = tmp_path / "store.json"
    now = datetime(2026, 11, 25, 12, tzinfo=UTC)
    corpus = generate_corpus(
        seed=11, orgs=("acme", "globex", "initech"), runs_per_org=900,
        start=now - timedelta(days=20), days=19,
    )  # fmt: skip
    client = _local_store.open_client(f"file://{path}", fresh=True)
    client["main"]["tasks"].insert_many(corpus.tasks)
    client["main"]["findings"].insert_many(corpus.findings)
    _local_store.close_all()
    return path


def tmux(socket: str, *args: str) -> str:
    assert TMUX is not None
    done = subprocess.run([TMUX, "-L", socket, *args], capture_output=True, text=True, timeout=30)
    return done.stdout


def test_run_all_progress_moves_in_a_real_terminal(big_store, tmp_path):
    if TMUX is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("tmux is not installed; CI must `apt-get install -y tmux`")
        pytest.skip("tmux is not installed (apt-get install -y tmux)")
    socket = f"chore-progress-{os.getpid()}"
    chore = Path(sys.executable).parent / "chore"
    done = tmp_path / "exit-code"
    command = (
        f"env MONGO_URL=file://{big_store} BATCH_SIZE=100 REDIS_URL= "
        f"{chore} run --all --now 2026-11-25T12:00:00+00:00; echo $? > {done}; sleep 30"
    )
    tmux(socket, "new-session", "-d", "-s", "run", "-x", "160", "-y", "30", command)
    try:
        seen: list[tuple[int, int]] = []
        deadline = time.monotonic() + 240
        while not done.exists() and time.monotonic() < deadline:
            match = READ.search(tmux(socket, "capture-pane", "-p", "-t", "run"))
            if match:
                seen.append((int(match.group(1).replace(",", "")), int(match.group(2))))
            time.sleep(0.25)
        assert done.exists() and done.read_text().strip() == "0", seen
        counts = sorted({count for count, _ in seen})
        assert len(counts) >= 2, f"the display never moved: {seen}"  # two captures at least
        assert [c for c, _ in seen] == sorted(c for c, _ in seen)  # only ever forward
        assert counts[-1] > counts[0] > 0
        assert max(orgs for _, orgs in seen) >= 1
        final = tmux(socket, "capture-pane", "-p", "-t", "run")
        assert "Metering run" in final and "documents read" in final  # the table after it
    finally:
        subprocess.run([TMUX, "-L", socket, "kill-server"], capture_output=True, timeout=30)
