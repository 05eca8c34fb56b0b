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
from extender.webhook.settings import DEFAULT_METRICS_ADDRESS
from powercap.console import fail as console_fail
from powercap.console import warn_deprecated

fail = partial(console_fail, prefix="powercap controller")


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
    from extender import runtime
    from extender.webhook.serving import HealthServer
    from extender.webhook.settings import Address, ServeError
    from placement.validation import ProblemsError

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        address = Address.parse(metrics_address, option="--metrics-address")
    except ServeError as exc:
        raise fail(str(exc)) from exc
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        raise fail(f"invalid config {exc.source}:\n  " + "\n  ".join(exc.problems)) from exc
    if not cfg.controller.enabled:
        raise fail(
            f"{config}: controller.enabled is false, so there is no controller to run; "
            "set it to true (and give a power: section)"
        )
    warn_deprecated(cfg)
    try:
        core = kubernetes_core(kubeconfig)
    except ClientConfigError as exc:
        raise fail(str(exc)) from exc
    try:
        ext = runtime.controller_from_cluster(cfg, core)
    except ProblemsError as exc:  # e.g. a secret's environment variable is unset
        raise fail(f"invalid config {exc.source}:\n  " + "\n  ".join(exc.problems)) from exc
    try:
        server = HealthServer(ext.health_app(), address, log_level=log_level)
    except ServeError as exc:
        raise fail(str(exc)) from exc
    server.run()


def register(app: typer.Typer) -> None:
    """Add ``controller`` to ``app``."""
    app.command("controller")(controller)
