"""``powercap serve``: run the scheduler extender.

::

    powercap serve --config config/powercap.yaml    # against a cluster
    powercap serve --scenario my-scenario.yaml      # over a static scenario

:func:`serve` loads the config (exit 2 listing every problem), builds the extender with
:mod:`extender.runtime` and runs it under uvicorn; :func:`register` adds it to the
``powercap`` CLI. Against a cluster the Kubernetes client is configured in-cluster when it
runs in a pod, else from ``--kubeconfig`` (or ``$KUBECONFIG`` / ``~/.kube/config``), by
:func:`extender.cluster.client.kubernetes_core`, with the timeouts of the config's
``kubernetes:`` section on every call. With ``controller.enabled`` in the
config, the companion controller runs in the same process
(:func:`extender.runtime.add_controller`), acting while it holds its Lease; with
``--controller=track`` it only tracks measured power and feeds the ledger, while
``powercap controller`` acts in another process under its own ServiceAccount (the shipped
manifests).
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
from extender.controller.mode import ControllerMode
from powercap.console import fail as console_fail

DEFAULT_PORT = 8888


fail = partial(console_fail, prefix="powercap serve")


def serve(
    config: Annotated[
        Path | None, typer.Option("--config", help="powercap config (PowercapConfig YAML)")
    ] = None,
    scenario: Annotated[
        Path | None,
        typer.Option("--scenario", help="serve a static cluster read from a scenario file"),
    ] = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = DEFAULT_PORT,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="PEM certificate")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="PEM private key")] = None,
    kubeconfig: Annotated[
        Path | None, typer.Option("--kubeconfig", help="kubeconfig (default: in-cluster)")
    ] = None,
    missing_profile: Annotated[
        str | None,
        typer.Option(
            "--missing-profile", help="scenario mode: reject | nameplate (default nameplate)"
        ),
    ] = None,
    planner: Annotated[
        bool, typer.Option("--planner/--no-planner", help="scenario mode: run the planner")
    ] = True,
    reserve_plan: Annotated[
        bool,
        typer.Option(
            "--reserve-plan/--no-reserve-plan",
            help="scenario mode: keep power the plan holds for its replicas (scoring.reservePlan)",
        ),
    ] = False,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
    controller: Annotated[
        ControllerMode,
        typer.Option(
            "--controller",
            help="with controller.enabled: run it here (act while holding the Lease), only "
            "track measured power into the ledger while `powercap controller` acts, or off",
        ),
    ] = ControllerMode.RUN,
) -> None:
    """Serve the scheduler extender (filter, prioritize, bind, preempt, metrics); with
    --config and controller.enabled, the power-cap controller runs beside it (see
    --controller)."""
    import uvicorn

    from extender import runtime
    from placement.scenario.spec import ScenarioError
    from placement.validation import ProblemsError

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if (config is None) == (scenario is None):
        raise fail("give exactly one of --config FILE (a cluster) or --scenario FILE")
    if (tls_cert is None) != (tls_key is None):
        raise fail("give both --tls-cert and --tls-key, or neither")
    if scenario is not None:
        if missing_profile not in (None, "reject", "nameplate"):
            raise fail(f"--missing-profile must be reject or nameplate, not {missing_profile!r}")
        try:
            ext = runtime.from_scenario_file(
                scenario, missing_profile or "nameplate", planner, reserve_plan=reserve_plan
            )
        except ScenarioError as exc:
            raise fail("invalid scenario:\n  " + "\n  ".join(exc.problems)) from exc
    else:
        assert config is not None
        try:
            cfg = load_config(config)
        except ConfigError as exc:
            raise fail(f"invalid config {exc.source}:\n  " + "\n  ".join(exc.problems)) from exc
        try:
            core = kubernetes_core(kubeconfig)
        except ClientConfigError as exc:
            raise fail(str(exc)) from exc
        try:
            ext = runtime.from_cluster(cfg, core, controller=controller)
        except ProblemsError as exc:  # e.g. a secret's environment variable is unset
            raise fail(f"invalid config {exc.source}:\n  " + "\n  ".join(exc.problems)) from exc
    uvicorn.run(
        ext.app(),
        host=host,
        port=port,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
        log_level=log_level.lower(),
        access_log=False,
    )


def register(app: typer.Typer) -> None:
    """Add ``serve`` to ``app``."""
    app.command("serve")(serve)
