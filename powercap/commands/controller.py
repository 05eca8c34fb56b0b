"""``powercap controller``: run the companion controller on its own.

::

    powercap controller --config config/powercap.yaml

:func:`controller` loads the config (exit 2 listing every problem; exit 2 too when
``controller.enabled`` is false, since there would be nothing to run), builds the
controller with :func:`extender.runtime.controller_from_cluster` — the cluster mirror, the
control loop acting while it holds its Lease, the live caps loop with an ``intensity:``
section — and serves ``/healthz``, ``/readyz`` (the mirror has synced) and ``/metrics`` on
``--metrics-address``, and nothing else: no scheduler verb. The Kubernetes client is set
up as for ``powercap serve`` (:func:`extender.cluster.client.kubernetes_core`: in-cluster,
else ``--kubeconfig``; the config's ``kubernetes:`` timeouts on every call).

This is how the shipped manifests run the controller: in its own Deployment with its own
ServiceAccount, so the scheduler's identity holds no right to evict or reshape, and the
controller's none to bind. The extender beside kube-scheduler then runs ``powercap serve
--controller=track``, which keeps feeding the overage of breached domains into its ledger.
:func:`register` adds the command to the ``powercap`` CLI.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from extender.cluster.client import ClientConfigError, kubernetes_core
from extender.config.loading import load_config
from extender.config.model import ConfigError
from powercap.console import fail as console_fail

DEFAULT_METRICS_ADDRESS = "0.0.0.0:8889"

fail = partial(console_fail, prefix="powercap controller")


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for an IPv6 host) as ``(host, port)``; raises
    ``ValueError`` naming what is wrong."""
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{address!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r}: the port must be a number from 1 to 65535")
    return host, int(port)


def controller(
    config: Annotated[Path, typer.Option("--config", help="powercap config (PowercapConfig YAML)")],
    metrics_address: Annotated[
        str,
        typer.Option("--metrics-address", help="HOST:PORT for /healthz, /readyz and /metrics"),
    ] = DEFAULT_METRICS_ADDRESS,
    kubeconfig: Annotated[
        Path | None, typer.Option("--kubeconfig", help="kubeconfig (default: in-cluster)")
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
) -> None:
    """Run the power-cap controller alone: it watches measured power and, while it holds
    its Lease, reshapes and evicts; no scheduler verbs, health and metrics only."""
    import uvicorn

    from extender import runtime
    from placement.validation import ProblemsError

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        host, port = split_address(metrics_address)
    except ValueError as exc:
        raise fail(f"--metrics-address {exc}") from exc
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        raise fail(f"invalid config {exc.source}:\n  " + "\n  ".join(exc.problems)) from exc
    if not cfg.controller.enabled:
        raise fail(
            f"{config}: controller.enabled is false, so there is no controller to run; "
            "set it to true (and give a power: section)"
        )
    try:
        core = kubernetes_core(kubeconfig)
    except ClientConfigError as exc:
        raise fail(str(exc)) from exc
    try:
        ext = runtime.controller_from_cluster(cfg, core)
    except ProblemsError as exc:  # e.g. a secret's environment variable is unset
        raise fail(f"invalid config {exc.source}:\n  " + "\n  ".join(exc.problems)) from exc
    uvicorn.run(
        ext.health_app(), host=host, port=port, log_level=log_level.lower(), access_log=False
    )


def register(app: typer.Typer) -> None:
    """Add ``controller`` to ``app``."""
    app.command("controller")(controller)
