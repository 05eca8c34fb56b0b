"""The CPU meter of the KWOK benchmarks: process trees read from /proc."""

from __future__ import annotations

import subprocess
import sys
import time

from e2e.cputime import CpuMeter, CpuUse, tree_seconds

SPIN = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass\n"


def test_a_busy_grandchild_counts_for_its_tree_and_an_idle_tree_for_nothing() -> None:
    # The busy process is the child of a shell: the tree, not the root alone, holds it.
    busy = subprocess.Popen(
        ["sh", "-c", f"{sys.executable} -c '{SPIN.format(s=0.6)}'; sleep 5"],
    )
    idle = subprocess.Popen(["sleep", "5"])
    try:
        meter = CpuMeter({"busy": busy.pid, "idle": idle.pid}, own="here")
        meter.start()
        deadline = time.monotonic() + 30
        # The spinner exits after its 0.6 s of CPU; the shell waits for it, then sleeps.
        while time.monotonic() < deadline and _has_python_child(busy.pid):
            time.sleep(0.1)
        use = meter.stop()
    finally:
        busy.kill()
        idle.kill()
        busy.wait()
        idle.wait()
    assert 0.4 <= use.seconds["busy"] <= 1.0
    assert use.seconds["idle"] < 0.05
    assert use.seconds["here"] < 0.3  # this process slept
    assert 0.0 < use.busy <= 1.0 and use.wall_s > 0.5


def test_describe_orders_by_seconds_and_divides_per_pod() -> None:
    use = CpuUse({"a": 1.0, "b": 3.0}, wall_s=10.0, busy=0.5, cores=2)
    line = use.describe(per=1000)
    assert line.startswith("cpu over 10.0 s on 2 cores: 50% busy")
    assert line.index("b 3.0 s (3.00 ms/pod)") < line.index("a 1.0 s (1.00 ms/pod)")


def _has_python_child(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return bool(f.read().split())
    except OSError:
        return False


def test_a_process_that_is_gone_counts_nothing() -> None:
    done = subprocess.Popen(["true"])
    done.wait()
    assert tree_seconds(done.pid) == 0.0
