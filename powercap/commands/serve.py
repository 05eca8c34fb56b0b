"""``powercap serve``: run the scheduler extender.

::

    powercap serve --config config/powercap.yaml    # against a cluster
    powercap serve --scenario my-scenario.yaml      # over a static scenario

:func:`serve` loads the config (exit 2 listing every problem), builds the extender with
:mod:`extender.runtime` and runs its two servers (:mod:`extender.webhook.serving`): the
scheduler verbs on ``--host``/``--port`` (default 127.0.0.1:8888; TLS with ``--tls-cert``
and ``--tls-key``, mutual TLS with ``--tls-client-ca``), health, readiness and metrics on
``--metrics-address`` (default 0.0.0.0:8889), the verbs bounded by ``--max-body-bytes``,
``--max-candidates``, ``--read-timeout``, ``--max-concurrent``, ``--max-queued`` and
``--max-binds`` (:class:`~extender.webhook.settings.Limits`; docs/extender.md, "Bounds").
:func:`register` adds it to the ``powercap`` CLI. Against a cluster the Kubernetes client
is configured in-cluster when it runs in a pod, else from ``--kubeconfig`` (or
``$KUBECONFIG`` / ``~/.kube/config``), by :func:`extender.cluster.client.kubernetes_core`,
with the timeouts of the config's ``kubernetes:`` section on every call. With
``controller.enabled`` in the config, the companion controller runs in the same process
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
from extender.webhook.settings import (
    DEFAULT_METRICS_ADDRESS,
    DEFAULT_VERBS_HOST,
    DEFAULT_VERBS_PORT,
    Address,
    Limits,
    ServeError,
    ServeSettings,
    Tls,
)
from powercap.console import fail as console_fail
from powercap.console import warn_deprecated

DEFAULT_PORT = DEFAULT_VERBS_PORT


fail = partial(console_fail, prefix="powercap serve")


def serve(
    config: Annotated[
        Path | None, typer.Option("--config", help="powercap config (PowercapConfig YAML)")
    ] = None,
    scenario: Annotated[
        Path | None,
        typer.Option("--scenario", help="serve a static cluster read from a scenario file"),
    ] = None,
    host: Annotated[
        str, typer.Option(help="address the scheduler verbs listen on (loopback: the sidecar)")
    ] = DEFAULT_VERBS_HOST,
    port: Annotated[
        int, typer.Option(help="port the scheduler verbs listen on", min=0, max=65535)
    ] = DEFAULT_PORT,
    metrics_address: Annotated[
        str,
        typer.Option(
            "--metrics-address",
            help="HOST:PORT for /healthz, /readyz and /metrics (plain HTTP, nothing else)",
        ),
    ] = DEFAULT_METRICS_ADDRESS,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="serve the verbs with TLS: PEM certificate")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="PEM private key")] = None,
    tls_client_ca: Annotated[
        Path | None,
        typer.Option(
            "--tls-client-ca",
            help="require a client certificate signed by this PEM CA (mutual TLS; needs "
            "--tls-cert and --tls-key)",
        ),
    ] = None,
    max_body_bytes: Annotated[
        int,
        typer.Option(
            "--max-body-bytes", min=1, help="largest verb request body; more is answered 413"
        ),
    ] = Limits.max_body_bytes,
    max_candidates: Annotated[
        int,
        typer.Option(
            "--max-candidates",
            min=1,
            help="most nodes (or victims) in one verb request; more is answered 413",
        ),
    ] = Limits.max_candidates,
    read_timeout: Annotated[
        float,
        typer.Option(
            "--read-timeout",
            min=0.001,
            help="seconds a client has to send its headers, and its body once admitted",
        ),
    ] = Limits.read_timeout_s,
    max_concurrent: Annotated[
        int,
        typer.Option(
            "--max-concurrent",
            min=1,
            help="filter, prioritize and preempt calls served at once, each on a worker thread",
        ),
    ] = Limits.max_concurrent,
    max_queued: Annotated[
        int,
        typer.Option(
            "--max-queued",
            min=0,
            help="filter, prioritize and preempt calls waiting for a worker; more are "
            "answered 503 at once",
        ),
    ] = Limits.max_queued,
    max_binds: Annotated[
        int,
        typer.Option(
            "--max-binds",
            min=1,
            help="binds served at once, each on a worker thread; one more is answered 503 at once",
        ),
    ] = Limits.max_binds,
    inline_max_bytes: Annotated[
        int,
        typer.Option(
            "--inline-max-bytes",
            min=0,
            help="filter and prioritize bodies up to this size are decided on the event "
            "loop, larger ones on a worker thread (0: all on workers)",
        ),
    ] = Limits.inline_max_bytes,
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
    """Serve the scheduler extender: the verbs (filter, prioritize, bind, preempt) on
    --host/--port, health, readiness and metrics on --metrics-address; with --config and
    controller.enabled, the power-cap controller runs beside it (see --controller)."""
    from extender import runtime
    from placement.scenario.spec import ScenarioError
    from placement.validation import ProblemsError

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if (config is None) == (scenario is None):
        raise fail("give exactly one of --config FILE (a cluster) or --scenario FILE")
    settings = _serve_settings(
        Address(host, port),
        metrics_address,
        tls=(tls_cert, tls_key, tls_client_ca),
        limits=Limits(
            max_body_bytes=max_body_bytes,
            max_candidates=max_candidates,
            read_timeout_s=read_timeout,
            max_concurrent=max_concurrent,
            max_queued=max_queued,
            max_binds=max_binds,
            inline_max_bytes=inline_max_bytes,
        ),
        log_level=log_level,
    )
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
        warn_deprecated(cfg)
        try:
            core = kubernetes_core(kubeconfig)
        except ClientConfigError as exc:
            raise fail(str(exc)) from exc
        try:
            ext = runtime.from_cluster(cfg, core, controller=controller)
        except ProblemsError as exc:  # e.g. a secret's environment variable is unset
            raise fail(f"invalid config {exc.source}:\n  " + "\n  ".join(exc.problems)) from exc
    try:
        servers = ext.servers(settings)
    except ServeError as exc:
        raise fail(str(exc)) from exc
    servers.run()


def _serve_settings(
    verbs: Address,
    metrics_address: str,
    *,
    tls: tuple[Path | None, Path | None, Path | None],
    limits: Limits,
    log_level: str,
) -> ServeSettings:
    """The servers' settings from the options; exits 2 naming the option at fault."""
    cert, key, client_ca = tls
    if (cert is None) != (key is None):
        raise fail("give both --tls-cert and --tls-key, or neither")
    if client_ca is not None and cert is None:
        raise fail("--tls-client-ca needs --tls-cert and --tls-key: client certificates need TLS")
    for option, path in (("--tls-cert", cert), ("--tls-key", key), ("--tls-client-ca", client_ca)):
        if path is not None and not path.is_file():
            raise fail(f"{option}: no such file: {path}")
    try:
        metrics = Address.parse(metrics_address, option="--metrics-address")
    except ServeError as exc:
        raise fail(str(exc)) from exc
    if metrics == verbs:
        raise fail(
            f"--metrics-address {metrics} is the verbs' --host/--port: give them two addresses"
        )
    return ServeSettings(
        verbs=verbs,
        metrics=metrics,
        tls=Tls(cert, key, client_ca) if cert is not None and key is not None else None,
        limits=limits,
        log_level=log_level,
    )


def register(app: typer.Typer) -> None:
    """Add ``serve`` to ``app``."""
    app.command("serve")(serve)
