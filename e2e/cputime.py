"""CPU seconds a run's processes spend over a window, read from ``/proc`` (Linux).

A throughput benchmark on one machine shares its cores among the API server, etcd, kwok,
kube-scheduler, the extender and the benchmark itself; whether the scheduler waited on
the extender or on a CPU the extender was using is only told by where the CPU went.
:class:`CpuMeter` takes a snapshot of named process trees (a process and every
descendant) and of the machine at :meth:`CpuMeter.start`, another at
:meth:`CpuMeter.stop`, and gives the difference as :class:`CpuUse`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class CpuUse:
    """``seconds``: CPU seconds (user + system) per name over the window; ``wall_s`` its
    length; ``busy``: the machine's CPUs busy over it, as a fraction of all of them
    (``cores``)."""

    seconds: Mapping[str, float]
    wall_s: float
    busy: float
    cores: int

    def describe(self, per: int = 0) -> str:
        """One line: the machine's busy share, then each name's CPU seconds (and, with
        ``per`` > 0, milliseconds per item), largest first."""
        parts = [f"cpu over {self.wall_s:.1f} s on {self.cores} cores: {self.busy:.0%} busy"]
        for name, s in sorted(self.seconds.items(), key=lambda kv: -kv[1]):
            each = f" ({1000 * s / per:.2f} ms/pod)" if per > 0 else ""
            parts.append(f"{name} {s:.1f} s{each}")
        return "; ".join(parts)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its end.
    return text[text.rindex(")") + 2 :].split()


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            out.setdefault(int(fields[1]), []).append(int(entry.name))
    return out


def tree_seconds(pid: int, children: Mapping[int, list[int]] | None = None) -> float:
    """CPU seconds of ``pid`` and its descendants (user + system, threads included;
    descendants that exited count once their parent in the tree waited for them); 0.0
    for a process that is gone."""
    kids = _children() if children is None else children
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        fields = _stat_fields(p)
        if fields is None:
            continue
        # utime, stime, cutime, cstime (fields 14–17 of stat; here 11–14): its own time
        # and that of the children it waited for, which are no longer in the tree.
        total += sum(int(f) for f in fields[11:15]) / _TICK
        todo.extend(kids.get(p, ()))
    return total


def _machine() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    first = (PROC / "stat").read_text().split("\n", 1)[0].split()[1:]
    values = [int(v) for v in first[:8]]  # user nice system idle iowait irq softirq steal
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class CpuMeter:
    """``pids`` maps a name to the root of a process tree; ``own``, when given, names this
    process alone (its threads, not its children: every process of the run descends from
    it). :meth:`start`, then :meth:`stop`."""

    def __init__(self, pids: Mapping[str, int], *, own: str | None = None) -> None:
        self.pids = dict(pids)
        self.own = own
        self._start: dict[str, float] = {}
        self._machine = (0, 0)
        self._t0 = 0.0

    def _sample(self) -> dict[str, float]:
        children = _children()
        out = {name: tree_seconds(pid, children) for name, pid in self.pids.items()}
        if self.own is not None:
            out[self.own] = time.process_time()
        return out

    def start(self) -> None:
        self._start = self._sample()
        self._machine = _machine()
        self._t0 = time.monotonic()

    def stop(self) -> CpuUse:
        end = self._sample()
        busy, total = _machine()
        b0, t0 = self._machine
        return CpuUse(
            seconds={n: max(0.0, end[n] - self._start.get(n, 0.0)) for n in end},
            wall_s=time.monotonic() - self._t0,
            busy=(busy - b0) / (total - t0) if total > t0 else 0.0,
            cores=os.cpu_count() or 1,
        )
