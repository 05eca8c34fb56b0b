"""The powercap extender, the companion controller and the second kube-scheduler, as
processes beside a test cluster.

Each runs as the manifests run it, under its own ServiceAccount of ``manifests/base``: the
extender and kube-scheduler as ``powercap-scheduler``, the controller as
``powercap-controller``, each with a token of its account (:mod:`e2e.rbac`), never the
cluster's admin credentials. The extender runs ``--controller=track`` as in the shipped
Deployment: a config with the controller on has it act in :func:`start_controller`.

The scheduler runs ``config/kube-scheduler.yaml`` — the configuration shipped to users —
with only what a local run must change: the extender's port, the kubeconfig, and no leader
election (one instance).
"""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster import Cluster, Process, binary, free_ports
from e2e.deploy import wait_for
from e2e.rbac import CONTROLLER_ACCOUNT, SCHEDULER_ACCOUNT, account_kubeconfig

REPO = Path(__file__).resolve().parent.parent
SCHEDULER_CONFIG = REPO / "config" / "kube-scheduler.yaml"


def powercap_command() -> list[str]:
    """``powercap`` of the interpreter running the tests (the venv's console script)."""
    script = Path(sys.executable).with_name("powercap")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from powercap.cli import main; main()"]


def powercap_json(*args: str, timeout_s: float | None = None) -> dict[str, Any]:
    """Run ``powercap ARGS`` and return the one JSON object it prints; fail the calling test
    with the tail of its stderr when it exits non-zero."""
    import orjson

    proc = subprocess.run(
        [*powercap_command(), *args], capture_output=True, text=True, check=False, timeout=timeout_s
    )
    assert proc.returncode == 0, f"powercap {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    result: dict[str, Any] = orjson.loads(proc.stdout)
    return result


@dataclass(frozen=True)
class ExtenderPorts:
    """Where a ``powercap serve`` listens on loopback: the scheduler verbs (``verbs``, the
    port kube-scheduler calls) and health, readiness and metrics (``metrics``)."""

    verbs: int
    metrics: int


def start_extender(
    c: Cluster,
    config: Path,
    timeout_s: float = 60.0,
    *,
    ports: ExtenderPorts | None = None,
    name: str = "powercap-extender",
) -> tuple[Process, ExtenderPorts]:
    """``powercap serve --controller=track`` on loopback ``ports`` (free ones when
    ``None``), authenticated as the ServiceAccount ``powercap-scheduler``; returns once
    ``/readyz`` on the metrics port answers 200 (the mirror has listed Nodes and Pods), so
    the scheduler's first calls find it ready. Passing the ports of an extender that was
    stopped restarts it where a running kube-scheduler already calls it. ``name`` names
    the process and its log (two instances side by side need two)."""
    if ports is None:
        ports = ExtenderPorts(*free_ports(2))
    argv = [
        *powercap_command(),
        "serve",
        "--config",
        str(config),
        "--kubeconfig",
        str(account_kubeconfig(c, SCHEDULER_ACCOUNT)),
        "--controller",
        "track",
        *serve_address_args(ports),
    ]
    proc = c.start(name, argv)
    wait_ready(proc, ports.metrics, timeout_s)
    return proc, ports


def serve_address_args(ports: ExtenderPorts) -> list[str]:
    """The ``powercap serve`` options that put it on ``ports`` on loopback."""
    return [
        "--host",
        "127.0.0.1",
        "--port",
        str(ports.verbs),
        "--metrics-address",
        f"127.0.0.1:{ports.metrics}",
    ]


def start_controller(
    c: Cluster,
    config: Path,
    timeout_s: float = 60.0,
    *,
    port: int | None = None,
    name: str = "powercap-controller",
) -> tuple[Process, int]:
    """``powercap controller`` with ``/healthz``, ``/readyz`` and ``/metrics`` on loopback
    ``port`` (a free one when ``None``), authenticated as the ServiceAccount
    ``powercap-controller``; returns once ``/readyz`` answers 200 (its mirror has listed
    Nodes and Pods). ``name`` names the process and its log (two instances side by side,
    competing for the Lease, need two). The config's ``controller.lease`` must be one the
    account may take: the shipped ``powercap-system/powercap-controller``."""
    if port is None:
        (port,) = free_ports(1)
    argv = [
        *powercap_command(),
        "controller",
        "--config",
        str(config),
        "--kubeconfig",
        str(account_kubeconfig(c, CONTROLLER_ACCOUNT)),
        "--metrics-address",
        f"127.0.0.1:{port}",
    ]
    proc = c.start(name, argv)
    wait_ready(proc, port, timeout_s)
    return proc, port


def wait_ready(
    proc: Process,
    metrics_port: int,
    timeout_s: float = 60.0,
    *,
    path: str = "/readyz",
    every_s: float = 0.2,
) -> None:
    """Wait until the ``powercap serve`` or ``powercap controller`` in ``proc`` (or another
    local server: ``path``) answers 200 on ``path`` on its metrics port; raise with its log
    tail if it exits first."""

    def ready() -> bool:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited early:\n{proc.tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}{path}", timeout=2) as r:
                return int(r.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    wait_for(f"{proc.name}'s {path}", ready, timeout_s, every_s=every_s)


def scheduler_config(
    kubeconfig: Path, extender_port: int | None, stock: bool = False
) -> dict[str, Any]:
    """The shipped configuration adapted to a local run.

    ``extender_port=None`` drops the extender and keeps everything else (profile name,
    plugin arguments, client QPS): the same scheduler without powercap, for throughput
    comparisons. ``stock=True`` (no extender) also drops the profile's settings, leaving
    the upstream defaults under the same scheduler name: what a cluster without powercap
    would do, for side-by-side placements."""
    config: dict[str, Any] = yaml.safe_load(SCHEDULER_CONFIG.read_text())
    config["clientConnection"]["kubeconfig"] = str(kubeconfig)
    config["leaderElection"] = {"leaderElect": False}
    if extender_port is None:
        del config["extenders"]
        if stock:
            config["profiles"] = [{"schedulerName": p["schedulerName"]} for p in config["profiles"]]
    for extender in config.get("extenders", []):
        extender["urlPrefix"] = f"http://127.0.0.1:{extender_port}"
    return config


def start_scheduler(
    c: Cluster, extender_port: int | None, stock: bool = False, *, secure_port: int | None = None
) -> Process:
    """kube-scheduler with the adapted configuration (see :func:`scheduler_config`),
    authenticated as the ServiceAccount ``powercap-scheduler`` (its built-in roles are
    bound there). ``--secure-port=0`` turns its HTTPS endpoint off: nothing reads it, and it
    would otherwise listen on every interface. With ``secure_port`` it serves HTTPS there,
    on loopback, for a scrape of its /metrics: callers are authenticated and authorized by
    the API server (TokenReview, SubjectAccessReview) as the shipped pod does in-cluster,
    here through the account's kubeconfig."""
    path = c.run_dir / "kube-scheduler.yaml"
    kubeconfig = account_kubeconfig(c, SCHEDULER_ACCOUNT)
    path.write_text(yaml.safe_dump(scheduler_config(kubeconfig, extender_port, stock)))
    serving = (
        ["--secure-port=0"]
        if secure_port is None
        else [
            f"--secure-port={secure_port}",
            "--bind-address=127.0.0.1",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
        ]
    )
    argv = [str(binary("kube-scheduler")), f"--config={path}", *serving, "--v=2"]
    proc = c.start("kube-scheduler", argv)
    return proc
