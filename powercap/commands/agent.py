"""``powercap agent``: the node agent for GPU power limits (a DaemonSet on GPU nodes).

::

    powercap agent --node-name "$NODE_NAME"
    powercap agent --check          # read-only: print each GPU's limits and draw, set nothing

It reads the ``NodePowerLimit`` named after its node (``powercap.io/v1alpha1``), sets each
GPU's power limit to the request clamped to the GPU's constraints (the default when there
is no request), writes what holds to the object's status and serves ``/healthz``,
``/readyz`` and ``/metrics`` on ``--metrics-address``. On SIGTERM it restores every GPU's
default limit unless ``--no-restore-on-exit``. See docs/power-limits.md.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from powercap.console import fail as console_fail

fail = partial(console_fail, prefix="powercap agent")

DEFAULT_AGENT_METRICS_ADDRESS = "0.0.0.0:8890"


def agent(
    node_name: Annotated[
        str,
        typer.Option(
            "--node-name",
            envvar="NODE_NAME",
            help="this node's name (the downward API's spec.nodeName); names the NodePowerLimit",
        ),
    ] = "",
    kubeconfig: Annotated[
        Path | None, typer.Option("--kubeconfig", help="kubeconfig (default: in-cluster)")
    ] = None,
    metrics_address: Annotated[
        str,
        typer.Option("--metrics-address", help="HOST:PORT for /healthz, /readyz and /metrics"),
    ] = DEFAULT_AGENT_METRICS_ADDRESS,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="read and report, never set a limit")
    ] = False,
    restore_on_exit: Annotated[
        bool,
        typer.Option(
            "--restore-on-exit/--no-restore-on-exit",
            help="on SIGTERM put every GPU back on its default power limit",
        ),
    ] = True,
    resync: Annotated[
        float,
        typer.Option("--resync", help="seconds between re-reads when nothing changes", min=1.0),
    ] = 30.0,
    check: Annotated[
        bool,
        typer.Option("--check", help="print every GPU's limits and draw (read only) and exit"),
    ] = False,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
) -> None:
    """Run the node agent: apply the NodePowerLimit of this node to its GPUs through NVML,
    report what holds (status, /metrics), restore the defaults when withdrawn."""
    from extender.agent import check as gpu_check

    if check:
        raise typer.Exit(gpu_check.main())

    from extender.agent.kube import KubernetesRequests
    from extender.agent.loop import Agent, AgentLoop
    from extender.agent.metrics import AgentMetrics
    from extender.agent.nvml import NvmlError, NvmlUnavailable, PynvmlLibrary
    from extender.agent.serving import agent_app
    from extender.cluster.client import ClientConfigError, kubernetes_core
    from extender.webhook.serving import HealthServer
    from extender.webhook.settings import Address, ServeError

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not node_name:
        raise fail(
            "--node-name is empty: pass it, or set NODE_NAME from the downward API "
            "(env valueFrom fieldRef spec.nodeName)"
        )
    try:
        address = Address.parse(metrics_address, option="--metrics-address")
    except ServeError as exc:
        raise fail(str(exc)) from exc
    try:
        core = kubernetes_core(kubeconfig)
    except ClientConfigError as exc:
        raise fail(str(exc)) from exc
    metrics = AgentMetrics()
    try:
        node_agent = Agent(PynvmlLibrary(), metrics=metrics, dry_run=dry_run)
        node_agent.start()
    except NvmlUnavailable as exc:
        raise fail(str(exc)) from exc
    except NvmlError as exc:
        raise fail(
            f"NVML cannot start: {exc}; the agent needs the NVIDIA driver and the GPUs in its "
            "container (runtimeClassName: nvidia, or NVIDIA_VISIBLE_DEVICES=all)"
        ) from exc
    loop = AgentLoop(
        node_agent,
        KubernetesRequests(core.api_client, node_name),
        resync_s=resync,
        restore_on_exit=restore_on_exit and not dry_run,
    )
    try:
        server = HealthServer(agent_app(loop, metrics), address, log_level=log_level)
    except ServeError as exc:
        raise fail(str(exc)) from exc
    server.run()


def register(app: typer.Typer) -> None:
    """Add ``agent`` to ``app``."""
    app.command("agent")(agent)
