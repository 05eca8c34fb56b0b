"""The e2e harness's reaper: leftovers of a run whose owner died are killed and removed;
a live run is left alone (real processes, no cluster)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from e2e.reaper import OWNER_FILE, claim, reap_orphans


def _sleeper(run_dir: Path) -> subprocess.Popen[bytes]:
    # A component as the harness starts them: its command line names the run directory.
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)", str(run_dir / "config.yaml")],
        start_new_session=True,
    )


def test_an_orphaned_run_is_killed_and_removed_and_a_live_one_kept(tmp_path: Path) -> None:
    orphan = tmp_path / "powercap-e2e-dead-1"
    live = tmp_path / "powercap-e2e-live-2"
    foreign = tmp_path / "powercap-unrelated"
    for d in (orphan, live, foreign):
        d.mkdir()
    owner = subprocess.Popen([sys.executable, "-c", "pass"])
    owner.wait()
    (orphan / OWNER_FILE).write_text(f"{owner.pid} 1\n")  # dead, or a reused pid
    claim(live)  # this test process: alive
    left, kept = _sleeper(orphan), _sleeper(live)
    try:
        assert reap_orphans(tmp_path) == [orphan]
        assert left.wait(timeout=10) != 0  # killed
        assert kept.poll() is None
        assert not orphan.exists() and live.exists() and foreign.exists()
        assert reap_orphans(tmp_path) == []
    finally:
        for p in (left, kept):
            p.kill()
            p.wait()
