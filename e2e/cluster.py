"""A throwaway local Kubernetes cluster for e2e tests: kwokctl's binary runtime, our binaries.

    with cluster(log_dir=Path("out/e2e")) as c:
        ...  # c.kubeconfig, c.run_dir, c.start(name, argv)

``kwokctl create cluster --runtime binary`` runs etcd, kube-apiserver, kube-controller-manager
(so Deployments and ReplicaSets work) and the kwok controller (fake nodes and pods, through the
default Stage objects kwokctl installs) from the pinned toolchain. Its own kube-scheduler is
disabled: the harness runs kube-scheduler itself (:meth:`Cluster.start`) so that the test owns
its configuration, its lifetime and its log, and can restart it or the extender mid-run.
kwokctl's components can be failed one at a time too: :meth:`Cluster.stop_component` kills
one (kube-apiserver, say) through kwokctl's pid file, :meth:`Cluster.signal_component` pauses
one (``SIGSTOP``) and resumes it, :meth:`Cluster.start_components` has
kwokctl start it again with its recorded arguments, and :meth:`Cluster.compact_etcd` drops
etcd's history, so old resourceVersions expire.

Everything listens on 127.0.0.1 only. kwokctl binds every component to 0.0.0.0; its
``--extra-args`` are appended after its own flags and the last value of a flag wins, so they
rebind each component to loopback on ports picked here. kwokctl's state lives in a private
``KWOK_WORKDIR`` and its kubeconfig edits go to a private file, so ``~/.kwok`` and
``~/.kube/config`` are never touched. Teardown always runs; when the body raised, the logs of
every component are copied to ``log_dir/<cluster name>/`` first.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e import toolchain
from e2e.reaper import claim, reap_orphans

# Components kwokctl runs; the scheduler is ours (see the module docstring).
KWOKCTL_BINARIES = {
    "kube-apiserver": "--kube-apiserver-binary",
    "kube-controller-manager": "--kube-controller-manager-binary",
    "etcd": "--etcd-binary",
    "kwok": "--kwok-controller-binary",
}
# Where the e2e tests have a failed cluster's logs copied: the repository's out/e2e-logs,
# wherever pytest runs from (`powercap whatif --kwok` logs under the working directory).
TEST_LOG_DIR = Path(__file__).resolve().parents[1] / "out" / "e2e-logs"
READY_TIMEOUT = "90s"
STOP_GRACE_S = 10.0


class ToolchainMissing(RuntimeError):
    """A pinned binary is not built; the message names the fix."""


def binary(name: str) -> Path:
    """Path of a toolchain binary: ``$POWERCAP_<NAME>`` if set, else the toolchain cache.

    Raises :class:`ToolchainMissing` naming ``make tools`` when it is not there, so an e2e
    run on a machine without the toolchain fails with the fix rather than skipping."""
    var = "POWERCAP_" + name.upper().replace("-", "_")
    given = os.environ.get(var)
    if given:
        path = Path(given)
    else:
        owners = [c for c in toolchain.components() if name in c.binaries]
        if not owners:
            raise ToolchainMissing(f"{name} is not a toolchain binary")
        path = owners[0].bin_dir / name
    if not os.access(path, os.X_OK):
        source = f" (from ${var})" if given else ""
        raise ToolchainMissing(
            f"{name} not found at {path}{source}; build the pinned toolchain with `make tools` "
            "(or `python -m e2e.toolchain`)"
        )
    return path


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports free right now.

    The sockets are held open until all are chosen so that the ports differ; another process
    could still take one before it is used, which is rare enough on a test machine."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Process:
    """A child process with its output in ``log``; started in its own session so that
    stopping it also stops anything it forked."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGCONT)  # a paused process cannot exit
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: no shutdown hooks run, open
        connections are reset. Returns once the process is gone."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets but runs no code (a long GC pause or
        a frozen VM) until :meth:`resume`."""
        os.killpg(self.popen.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: undo :meth:`pause`; the process finds what arrived meanwhile."""
        os.killpg(self.popen.pid, signal.SIGCONT)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class Cluster:
    """A running cluster. ``run_dir`` holds kwokctl's state and every log."""

    name: str
    run_dir: Path
    kubeconfig: Path
    apiserver_port: int
    processes: list[Process] = field(default_factory=list)
    etcd_port: int = 0  # 0: unknown (a Cluster not made by :func:`cluster`)

    @property
    def logs_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def workdir(self) -> Path:
        """kwokctl's ``KWOK_WORKDIR`` for this cluster."""
        return self.run_dir / "kwok"

    @property
    def component_dir(self) -> Path:
        """Where kwokctl keeps this cluster's ``pids/``, ``logs/``, ``etcd/``, ``pki/``."""
        return self.workdir / "clusters" / self.name

    def component_pid(self, component: str) -> int | None:
        """PID of a kwokctl-run component (``kube-apiserver``, ``etcd``, ``kwok-controller``,
        ``kube-controller-manager``) from kwokctl's pid file; ``None`` when it is stopped."""
        path = self.component_dir / "pids" / f"{component}.pid"
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            return None

    def stop_component(
        self, component: str, sig: signal.Signals = signal.SIGKILL, timeout_s: float = 30.0
    ) -> None:
        """Stop one kwokctl-run component (the rest of the cluster keeps running) and wait
        until it has exited; SIGKILL if it outlives ``timeout_s`` after ``sig``. The pid file
        goes too, as ``kwokctl stop`` would remove it, so :meth:`start_components` starts it
        again; its log so far is kept as ``logs/<component>.<n>.log``, since kwokctl
        truncates the log when it starts the component again.

        SIGKILL by default, as ``kwokctl stop`` sends: kube-apiserver stops listening at once
        on SIGTERM but then drains its long-running requests for tens of seconds."""
        pid = self.component_pid(component)
        if pid is None:
            raise RuntimeError(f"{component} of cluster {self.name} is not running")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        killed = sig == signal.SIGKILL
        while _running(pid):
            if time.monotonic() > deadline:
                if killed:
                    raise RuntimeError(f"{component} (pid {pid}) did not exit after SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed, deadline = True, time.monotonic() + timeout_s
            time.sleep(0.05)
        (self.component_dir / "pids" / f"{component}.pid").unlink(missing_ok=True)
        log = self.component_dir / "logs" / f"{component}.log"
        if log.is_file():
            self.logs_dir.mkdir(parents=True, exist_ok=True)
            n = 1 + len(list(self.logs_dir.glob(f"{component}.*.log")))
            shutil.copy2(log, self.logs_dir / f"{component}.{n}.log")

    def signal_component(self, component: str, sig: signal.Signals) -> None:
        """Send ``sig`` to one kwokctl-run component: ``SIGSTOP`` freezes it with its
        sockets open (connections are accepted, nothing is answered) until ``SIGCONT``.
        A test that stops one resumes it in a ``finally``, before teardown."""
        pid = self.component_pid(component)
        if pid is None:
            raise RuntimeError(f"{component} of cluster {self.name} is not running")
        os.kill(pid, sig)

    def start_components(self) -> None:
        """``kwokctl start cluster``: starts every kwokctl-run component that is stopped, with
        the arguments kwokctl recorded at creation, and waits until the API server's
        ``/healthz`` answers ok. Running components are left alone."""
        _kwokctl(
            self.workdir,
            self.name,
            ["start", "cluster", "--wait", READY_TIMEOUT],
            self.logs_dir / "kwokctl.log",
        )

    def etcd_revision(self) -> int:
        """etcd's current revision, through its JSON gateway."""
        # Any range answers with the store's header; ask for one key, keys only.
        body = {"key": base64.b64encode(b"/").decode(), "limit": 1, "keys_only": True}
        return int(self._etcd("/v3/kv/range", body)["header"]["revision"])

    def compact_etcd(self, revision: int | None = None) -> int:
        """Compact etcd's history up to ``revision`` (default: the current one) and wait
        until it is physically gone; returns the revision. A watch or list from an older
        resourceVersion that reaches etcd is then answered ``410 Gone``."""
        revision = revision or self.etcd_revision()
        self._etcd("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        return revision

    def _etcd(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if not self.etcd_port:
            raise RuntimeError(f"the etcd port of cluster {self.name} is unknown")
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.etcd_port}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer: dict[str, Any] = json.loads(response.read())
        return answer

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Process:
        """Start a process that lives as long as the cluster; its output goes to
        ``logs/<name>.log``. Stopped (newest first) at teardown."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        log = self.logs_dir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        proc = Process(name, popen, log)
        self.processes.append(proc)
        return proc

    def stop_processes(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs. kwokctl's components are not our children, so an exited
    one may linger as a zombie until its parent reaps it: that counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state follows the parenthesised command name, which may itself contain spaces.
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _kwokctl_env(workdir: Path) -> dict[str, str]:
    return {**os.environ, "KWOK_WORKDIR": str(workdir)}


def _kwokctl(workdir: Path, name: str, args: Sequence[str], log: Path) -> None:
    cmd = [str(binary("kwokctl")), "--name", name, *args]
    with log.open("ab") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.run(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=_kwokctl_env(workdir), check=False
        )
    if proc.returncode != 0:
        raise RuntimeError(
            f"kwokctl {' '.join(args[:2])} failed (exit {proc.returncode}); see {log}"
        )


def create_args(run_dir: Path) -> tuple[list[str], int]:
    """kwokctl ``create cluster`` arguments, and the API server's port."""
    args, ports = _create_args(run_dir)
    return args, ports["kube-apiserver"]


def _create_args(run_dir: Path) -> tuple[list[str], dict[str, int]]:
    """kwokctl ``create cluster`` arguments, and the client port of each component."""
    etcd, etcd_peer, apiserver, kcm, kwok = free_ports(5)
    args = [
        "create",
        "cluster",
        "--runtime",
        "binary",
        # kwokctl adds the cluster to this kubeconfig and makes it current; keep it private.
        "--kubeconfig",
        str(run_dir / "kwokctl-kubeconfig.yaml"),
        "--disable",
        "kube-scheduler",
        # kube-controller-manager's default 20 QPS would pace the ReplicaSet controller
        # at ~20 pods/s; lift it and the API server's in-flight limits, as a test cluster
        # of 10,000 pods needs.
        "--disable-qps-limits",
        "--etcd-port",
        str(etcd),
        "--kube-apiserver-port",
        str(apiserver),
        "--kube-controller-manager-port",
        str(kcm),
        "--controller-port",
        str(kwok),
        "--wait",
        READY_TIMEOUT,
    ]
    for component, flag in KWOKCTL_BINARIES.items():
        args += [flag, str(binary(component))]
    loopback = {
        "etcd": [
            f"listen-client-urls=http://127.0.0.1:{etcd}",
            f"advertise-client-urls=http://127.0.0.1:{etcd}",
            f"listen-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"initial-cluster=node0=http://127.0.0.1:{etcd_peer}",
        ],
        "kube-apiserver": ["bind-address=127.0.0.1"],
        "kube-controller-manager": ["bind-address=127.0.0.1"],
        "kwok-controller": [f"server-address=127.0.0.1:{kwok}"],
    }
    for component, pairs in loopback.items():
        for pair in pairs:
            args += ["--extra-args", f"{component}={pair}"]
    ports = {
        "etcd": etcd,
        "kube-apiserver": apiserver,
        "kube-controller-manager": kcm,
        "kwok-controller": kwok,
    }
    return args, ports


def _keep_logs(c: Cluster, workdir: Path, log_dir: Path) -> Path:
    dest = log_dir / c.name
    dest.mkdir(parents=True, exist_ok=True)
    sources = [c.logs_dir, workdir / "clusters" / c.name / "logs"]
    for src in sources:
        if src.is_dir():
            shutil.copytree(src, dest, dirs_exist_ok=True)
    for pattern in ("*.yaml", "*.json"):  # generated configs: what was run
        for extra in c.run_dir.glob(pattern):
            shutil.copy2(extra, dest)
    return dest


# Set (to anything) to keep every run's logs, not only a failed run's.
KEEP_LOGS_ENV = "POWERCAP_E2E_KEEP_LOGS"


@contextlib.contextmanager
def cluster(log_dir: Path, prefix: str = "powercap-e2e") -> Iterator[Cluster]:
    """Create a cluster, yield it, always tear it down; keep logs in ``log_dir`` on failure
    (always, with ``POWERCAP_E2E_KEEP_LOGS=1`` in the environment)."""
    # kwokctl names become directory and process names: short, unique per run.
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    for needed in ("kwokctl", "kube-scheduler", *KWOKCTL_BINARIES):
        binary(needed)  # fail with the fix before anything is created
    reap_orphans()
    run_dir = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    claim(run_dir)
    workdir = run_dir / "kwok"
    kwokctl_log = run_dir / "logs" / "kwokctl.log"
    kwokctl_log.parent.mkdir(parents=True)
    args, ports = _create_args(run_dir)
    c = Cluster(
        name=name,
        run_dir=run_dir,
        kubeconfig=workdir / "clusters" / name / "kubeconfig.yaml",
        apiserver_port=ports["kube-apiserver"],
        etcd_port=ports["etcd"],
    )
    failed = True
    try:
        started = time.monotonic()
        _kwokctl(workdir, name, args, kwokctl_log)
        with kwokctl_log.open("a") as out:
            out.write(f"cluster ready in {time.monotonic() - started:.1f}s\n")
        yield c
        failed = False
    finally:
        c.stop_processes()
        if failed or os.environ.get(KEEP_LOGS_ENV):
            kept = _keep_logs(c, workdir, log_dir)
            print(f"[e2e] logs of cluster {name} kept in {kept}", flush=True)
        with contextlib.suppress(RuntimeError, ToolchainMissing):
            _kwokctl(workdir, name, ["delete", "cluster"], kwokctl_log)
        shutil.rmtree(run_dir, ignore_errors=True)
