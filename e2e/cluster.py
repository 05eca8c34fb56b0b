"""A throwaway local Kubernetes cluster for e2e tests: kwokctl's binary runtime, our binaries.

    with cluster(log_dir=Path("out/e2e")) as c:
        ...  # c.kubeconfig, c.run_dir, c.start(name, argv)

``kwokctl create cluster --runtime binary`` runs etcd, kube-apiserver, kube-controller-manager
(so Deployments and ReplicaSets work) and the kwok controller (fake nodes and pods, through the
default Stage objects kwokctl installs) from the pinned toolchain. Its own kube-scheduler is
disabled: the harness runs kube-scheduler itself (:meth:`Cluster.start`) so that the test owns
its configuration, its lifetime and its log, and can restart it or the extender mid-run.

Everything listens on 127.0.0.1 only. kwokctl binds every component to 0.0.0.0; its
``--extra-args`` are appended after its own flags and the last value of a flag wins, so they
rebind each component to loopback on ports picked here. kwokctl's state lives in a private
``KWOK_WORKDIR`` and its kubeconfig edits go to a private file, so ``~/.kwok`` and
``~/.kube/config`` are never touched. Teardown always runs; when the body raised, the logs of
every component are copied to ``log_dir/<cluster name>/`` first.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from e2e import toolchain

# Components kwokctl runs; the scheduler is ours (see the module docstring).
KWOKCTL_BINARIES = {
    "kube-apiserver": "--kube-apiserver-binary",
    "kube-controller-manager": "--kube-controller-manager-binary",
    "etcd": "--etcd-binary",
    "kwok": "--kwok-controller-binary",
}
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
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

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

    @property
    def logs_dir(self) -> Path:
        return self.run_dir / "logs"

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
    return args, apiserver


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


@contextlib.contextmanager
def cluster(log_dir: Path, prefix: str = "powercap-e2e") -> Iterator[Cluster]:
    """Create a cluster, yield it, always tear it down; keep logs in ``log_dir`` on failure."""
    # kwokctl names become directory and process names: short, unique per run.
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    for needed in ("kwokctl", "kube-scheduler", *KWOKCTL_BINARIES):
        binary(needed)  # fail with the fix before anything is created
    run_dir = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    workdir = run_dir / "kwok"
    kwokctl_log = run_dir / "logs" / "kwokctl.log"
    kwokctl_log.parent.mkdir(parents=True)
    args, apiserver_port = create_args(run_dir)
    c = Cluster(
        name=name,
        run_dir=run_dir,
        kubeconfig=workdir / "clusters" / name / "kubeconfig.yaml",
        apiserver_port=apiserver_port,
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
        if failed:
            kept = _keep_logs(c, workdir, log_dir)
            print(f"[e2e] logs of cluster {name} kept in {kept}", flush=True)
        with contextlib.suppress(RuntimeError, ToolchainMissing):
            _kwokctl(workdir, name, ["delete", "cluster"], kwokctl_log)
        shutil.rmtree(run_dir, ignore_errors=True)
