"""Clean up after harness runs that could not clean up themselves.

A harness process killed with SIGKILL (a CI timeout, an impatient Ctrl-\\) never reaches
its teardown, and the cluster components it started run in their own sessions, so they
outlive it: etcd, kube-apiserver, kwok, kube-scheduler, ``powercap serve``, Prometheus.
Each run directory therefore records its owner (:func:`claim`); at the next start,
:func:`reap_orphans` kills every process whose command line names the directory of a run
whose owner is gone, and removes the directory. Runs whose owner is alive — another test
session on the same machine — are left alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from pathlib import Path

OWNER_FILE = "owner.pid"
# Every harness run directory starts with this (clusters and Prometheus alike).
RUN_PREFIX = "powercap-"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat):
    with the pid, it tells a live owner from a later process that reused its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its end.
    return stat[stat.rindex(")") + 2 :].split()[19]


def claim(run_dir: Path) -> None:
    """Record the current process as the owner of ``run_dir``."""
    pid = os.getpid()
    (run_dir / OWNER_FILE).write_text(f"{pid} {_start_time(pid) or ''}\n")


def _owner_alive(run_dir: Path) -> bool:
    try:
        pid_text, _, started = (run_dir / OWNER_FILE).read_text().strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return True  # not ours, or being written: leave it
    now = _start_time(pid)
    return now is not None and (not started or now == started)


def _processes_naming(text: str) -> list[int]:
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def reap_orphans(tmp: Path | None = None) -> list[Path]:
    """Kill the processes of every orphaned run under ``tmp`` (default: the system temp
    directory) and remove their directories; returns the directories reaped."""
    root = Path(tmp or tempfile.gettempdir())
    reaped: list[Path] = []
    for run_dir in sorted(root.glob(f"{RUN_PREFIX}*")):
        if not (run_dir / OWNER_FILE).is_file() or _owner_alive(run_dir):
            continue
        for pid in _processes_naming(str(run_dir)):
            with contextlib.suppress(OSError):  # gone meanwhile
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(run_dir, ignore_errors=True)
        reaped.append(run_dir)
        print(f"[e2e] reaped the leftovers of an interrupted run in {run_dir}", flush=True)
    return reaped
