"""Assembling a running extender: state, decisions, planner, mirror, metrics, and the two
apps and their servers (:meth:`Extender.servers`, what ``powercap serve`` runs).

Two shapes:

* :func:`from_scenario` — a static cluster read from a scenario file: its nodes and
  any ``current`` placement; bind records in the ledger only. Ready at once. For dry
  runs, simulators and benchmarks.
* :func:`from_cluster` — a live cluster through a ``kubernetes.client.CoreV1Api``:
  the mirror fills the state, bind creates Bindings, events are posted; every API call
  has the timeouts of the config's ``kubernetes:`` section. Ready after
  the mirror's first full sync. With ``controller.enabled`` (and a ``power:`` section)
  the companion controller runs beside it, acting while it holds its Lease — or, with
  :attr:`ControllerMode.TRACK`, only tracking measured power so that the overage of
  breached domains reaches the ledger while a separate process acts. With
  ``learn.refresh`` the profiles are re-learned from Prometheus every interval and
  swapped in (:func:`swap_config`). With an ``intensity:`` section the caps follow the
  grid's carbon intensity and any emission budget (:func:`add_carbon`).

:func:`controller_from_cluster` assembles the companion controller alone (``powercap
controller``): the mirror, the controller with its Lease, the live caps loop, served by
:meth:`Extender.health_app` — health, readiness and metrics, no scheduler verbs.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI
from numpy.typing import NDArray

from extender.carbon.loop import CarbonCaps, CarbonLoop
from extender.carbon.sources import Resilient, build_source
from extender.cluster.custom import (
    POWERCAP_KINDS,
    ResourceWatch,
    rebuild,
    sources_for,
    structure_change,
)
from extender.cluster.events import EventSink, KubernetesEventSink, RecordingEventSink
from extender.cluster.lease import KubernetesLeaseApi, LeaderElector, LeaseApi
from extender.cluster.mirror import KubernetesSource, Mirror, Source
from extender.cluster.pods import DemandResolver
from extender.cluster.state import ClusterState, PodRecord
from extender.cluster.status import (
    Snapshot,
    StatusWriter,
    domain_statuses,
    kubernetes_patch,
    rfc3339,
)
from extender.config.conditions import domain_conditions, merge_conditions
from extender.config.loading import config_from_problem
from extender.config.model import Config, PlannerSettings, PolicySpec, ScoringSpec
from extender.config.resources import Condition
from extender.controller.actions import ClusterApi, KubernetesClusterApi
from extender.controller.loop import Controller, ControllerLoop, PowerSource
from extender.controller.memory import ConfigMapStateStore, MemoryKeeper, StateStore
from extender.controller.mode import ControllerMode
from extender.health import Heartbeat, create_health_app
from extender.periodic import PeriodicLoop
from extender.profiles.refresh import ProfileRefresher
from extender.telemetry import CarbonMetrics, ControllerMetrics, Telemetry
from extender.webhook.app import create_app
from extender.webhook.binding import Binder, StaticBinder, binder_for
from extender.webhook.decisions import Decider
from extender.webhook.planner import Planner
from extender.webhook.serving import Servers
from extender.webhook.settings import Limits, ServeSettings
from placement.problem import Problem
from placement.scenario.files import load_problem
from placement.validation import ProblemsError

log = logging.getLogger(__name__)


@dataclass
class Extender:
    """Everything one extender process runs."""

    config: Config
    state: ClusterState
    decider: Decider
    telemetry: Telemetry
    binder: Binder
    events: EventSink
    planner: Planner | None = None
    mirror: Mirror | None = None
    plan_at_start: bool = field(default=False)
    controller: Controller | None = None
    controller_loop: ControllerLoop | None = None
    elector: LeaderElector | None = None
    refresher: ProfileRefresher | None = None
    carbon_loop: CarbonLoop | None = None
    # Forgets assumed pods whose Binding never landed (ClusterState.expire_assumed).
    expiry: PeriodicLoop | None = None
    # The powercap.io resources and the workloads, watched (resources.enabled).
    resources: ResourceWatch | None = None
    # Writes PowerDomain status while this process leads the controller.
    domain_status: PeriodicLoop | None = None

    def ready(self) -> bool:
        return self.state.synced

    def start(self) -> None:
        """Start the mirror and the planner (the app's lifespan calls this)."""
        if self.mirror is not None:
            self.mirror.start()
        if self.resources is not None:
            self.resources.start()
        if self.planner is not None:
            if self.plan_at_start:
                self.planner.plan_now()
            self.planner.start()
        if self.elector is not None:
            self.elector.start()
        if self.controller_loop is not None:
            self.controller_loop.start()
        if self.refresher is not None:
            self.refresher.start()
        if self.carbon_loop is not None:
            self.carbon_loop.start()
        if self.expiry is not None:
            self.expiry.start()
        if self.domain_status is not None:
            self.domain_status.start()
        # What exists now (the imported modules, the tree, a scenario's pods) lives as
        # long as the process: out of the collector's way, a full collection takes a few
        # milliseconds instead of ~50 ms in the middle of a verb call.
        gc.freeze()

    def stop(self) -> None:
        if self.domain_status is not None:
            self.domain_status.stop()
        if self.expiry is not None:
            self.expiry.stop()
        if self.carbon_loop is not None:
            self.carbon_loop.stop()
        if self.refresher is not None:
            self.refresher.stop()
        if self.controller_loop is not None:
            self.controller_loop.stop()
        if self.elector is not None:
            self.elector.stop()  # releases the Lease, so a successor need not wait
        if self.resources is not None:
            self.resources.stop()
        if self.mirror is not None:
            self.mirror.stop()
        if self.planner is not None:
            self.planner.stop()

    def health_app(self) -> FastAPI:
        """``/healthz``, ``/readyz`` and ``/metrics`` only, with the same lifespan as
        :meth:`app`: what ``powercap controller`` serves."""
        return create_health_app(self.telemetry, self.ready, on_start=self.start, on_stop=self.stop)

    def app(self, limits: Limits | None = None, heartbeat: Heartbeat | None = None) -> FastAPI:
        """The scheduler verbs' app, bounded by ``limits``; its lifespan starts and stops
        the extender (:meth:`start`, :meth:`stop`)."""
        return create_app(
            self.decider,
            self.telemetry,
            limits=limits,
            heartbeat=heartbeat,
            on_start=self.start,
            on_stop=self.stop,
        )

    def metrics_app(self, heartbeat: Heartbeat | None = None) -> FastAPI:
        """Health, readiness and metrics; with ``heartbeat`` (the one given to
        :meth:`app`), they follow the verbs' app too."""
        return create_health_app(self.telemetry, self.ready, heartbeat=heartbeat)

    def servers(self, settings: ServeSettings) -> Servers:
        """What ``powercap serve`` runs: both apps on their addresses (see
        :mod:`extender.webhook.serving`); raises ``ServeError`` naming the option when an
        address cannot be bound or a TLS file loaded."""
        heartbeat = Heartbeat()
        return Servers(self.app(settings.limits, heartbeat), self.metrics_app(heartbeat), settings)


def _assemble(
    config: Config, binder: Binder, events: EventSink, *, pods_from_requests: bool = False
) -> Extender:
    state = ClusterState(config.grid, config.tree, config.headroom)
    telemetry = Telemetry(state)
    planner = Planner(state, config, config.planner) if config.planner.enabled else None
    if planner is not None:
        telemetry.plan_info = planner.info
    decider = Decider(
        state,
        config,
        binder,
        events=events,
        plan=planner,
        telemetry=telemetry,
        pods_from_requests=pods_from_requests,
    )
    return Extender(config, state, decider, telemetry, binder, events, planner)


def static_state(state: ClusterState, problem: Problem) -> None:
    """Load a scenario's fleet (and its ``current`` placement) into ``state``."""
    fleet, svc = problem.fleet, problem.services
    for n in range(fleet.size):
        state.upsert_node(
            fleet.names[n],
            int(fleet.domain[n]),
            int(fleet.gpus[n]),
            idle_watts=float(fleet.idle_watts[n]),
        )
    if problem.current is not None:
        for s, n in zip(*problem.current.nonzero(), strict=True):
            for k in range(int(problem.current[s, n])):
                name = f"{svc.names[s]}-{fleet.names[n]}-{k}"
                state.add_pod(
                    PodRecord(
                        uid=f"scenario/{name}",
                        namespace="scenario",
                        name=name,
                        node=fleet.names[n],
                        service=svc.names[s],
                        profile=svc.profiles[s],
                        gpus=int(svc.gpus[s]),
                        profile_key=f"service:{svc.names[s]}",
                    )
                )
    state.synced = True


def from_scenario(problem: Problem, config: Config | None = None) -> Extender:
    """An extender over the static cluster of ``problem`` (see the module doc).

    ``config`` defaults to :func:`config_from_problem`; the first plan is computed
    before the server answers, so prioritize steers from the first pod on.
    """
    config = config or config_from_problem(problem)
    # No API server to read pods from: the scheduler's requests are all there is.
    ext = _assemble(config, StaticBinder(), RecordingEventSink(), pods_from_requests=True)
    static_state(ext.state, problem)
    ext.plan_at_start = True
    return ext


def from_scenario_file(
    path: Path,
    missing_profile: str = "nameplate",
    planner: bool = True,
    *,
    reserve_plan: bool = False,
) -> Extender:
    """What ``powercap serve --scenario FILE`` runs; raises ``ScenarioError``."""
    problem = load_problem(path)
    config = config_from_problem(
        problem,
        policy=PolicySpec.model_validate({"missingProfile": missing_profile}),
        planner=PlannerSettings(enabled=planner),
        scoring=ScoringSpec.model_validate({"reservePlan": reserve_plan}),
        source=str(path),
    )
    return from_scenario(problem, config)


def from_cluster(
    config: Config,
    core: Any,
    *,
    cluster_api: ClusterApi | None = None,
    lease_api: LeaseApi | None = None,
    power_source: PowerSource | None = None,
    state_store: StateStore | None = None,
    controller: ControllerMode = ControllerMode.RUN,
) -> Extender:
    """An extender over a live cluster; ``core`` is a ``kubernetes.client.CoreV1Api``.

    With ``controller.enabled`` the controller is added as ``controller`` says
    (:class:`ControllerMode`); its API clients are built on ``core``'s connection unless
    given (``cluster_api``, ``lease_api``, ``state_store``), and its power source from
    ``config.power`` unless given."""
    timeouts = config.kubernetes
    sources: dict[str, Source] = {}
    if config.resources.enabled:
        sources = sources_for(core.api_client, config)
        config = initial_config(config, sources)
    ext = _assemble(
        config,
        binder_for(core, timeouts=timeouts),
        KubernetesEventSink(core, timeouts=timeouts),
    )
    ext.mirror = Mirror(
        ext.state,
        config,
        KubernetesSource(core, "nodes", timeouts=timeouts),
        pods=KubernetesSource(core, "pods", timeouts=timeouts),
        on_pending=ext.decider.remember,
        seen=ext.telemetry.mirror_seen,
        relists=ext.telemetry.mirror_relists,
    )
    ext.expiry = assumed_pod_expiry(ext)
    if config.controller.enabled and controller is ControllerMode.RUN:
        add_controller(
            ext,
            core,
            cluster_api,
            lease_api=lease_api,
            power_source=power_source,
            state_store=state_store,
        )
    elif config.controller.enabled and controller is ControllerMode.TRACK:
        add_tracking(ext, power_source)
    if config.intensity:
        add_carbon(ext)
    _add_refresher(ext)
    if config.resources.enabled:
        add_resource_watch(ext, sources)
        if ext.elector is not None:
            add_domain_status(ext, kubernetes_patch(core.api_client, timeouts))
    return ext


def snapshot(ext: Extender, now: float) -> Snapshot:
    """What :func:`~extender.cluster.status.domain_statuses` reads, copied under the lock."""
    state, controller = ext.state, ext.controller
    last = controller.last if controller is not None else None
    with state.lock:
        return Snapshot(
            names=state.tree.names,
            predicted=state.ledger.load - state.feedback,
            caps=state.tree.caps.copy(),
            slot_labels=state.slot_labels,
            slot=state.grid.slot_of(now),
            measured=None if last is None else last.measured,
            measured_at=None if last is None else last.at,
            breach_since=None if controller is None else controller.breach.breach_since,
        )


def domain_status_tick(ext: Extender, writer: StatusWriter, now: float) -> list[str]:
    """One round of PowerDomain status: the statuses of the domains that exist, their
    conditions (``Ready``/``InvalidParent`` from the latest set's checks, ``Breached`` from
    the controller; transition times kept where nothing changed), written if changed
    enough (:class:`StatusWriter`). Only the leader writes; returns the names written."""
    watch = ext.resources
    if watch is None or not watch.domains:
        return []
    if ext.elector is not None and not ext.elector.is_leader():
        return []
    stamp = rfc3339(now)
    conditions = domain_conditions(watch.domains, watch.findings, stamp)
    snap = snapshot(ext, now)
    index = ext.state.tree.index
    for d in watch.domains:
        name = d.metadata.name
        own = conditions[name]
        if snap.breach_since is not None and name in index:
            since = float(snap.breach_since[index[name]])
            breached = bool(np.isfinite(since))
            own.append(
                Condition.model_validate(
                    {
                        "type": "Breached",
                        "status": "True" if breached else "False",
                        "reason": "OverCap" if breached else "UnderCap",
                        "message": (
                            f"PowerDomain/{name}: measured power over the cap since "
                            f"{rfc3339(since)}; the controller acts (docs/controller.md)"
                            if breached
                            else ""
                        ),
                        "observedGeneration": d.metadata.generation,
                        "lastTransitionTime": stamp,
                    }
                )
            )
        old = writer.written.get(name, {}).get("conditions") or []
        conditions[name] = merge_conditions([Condition.model_validate(c) for c in old], own)
    generations = {d.metadata.name: d.metadata.generation for d in watch.domains}
    return writer.write(domain_statuses(snap, conditions, generations), now)


def add_domain_status(
    ext: Extender, patch: Callable[[str, dict[str, Any]], object], min_interval_s: float = 30.0
) -> StatusWriter:
    """Write PowerDomain status every controller period while this process leads
    (:func:`domain_status_tick`)."""
    writer = StatusWriter(patch, min_interval_s)
    ext.domain_status = PeriodicLoop(
        "powercap-domain-status",
        lambda now: domain_status_tick(ext, writer, now),
        ext.config.controller.period_s,
        ready=lambda: ext.state.synced,
    )
    return writer


def initial_config(config: Config, sources: Mapping[str, Source]) -> Config:
    """The config the powercap.io resources make now (listed once, before the state is
    built, so the ledger has their tree's shape from the start), or ``config`` (logged)
    when they cannot be listed or do not make a valid tree."""
    objects: list[dict[str, Any]] = []
    try:
        for plural, kind in POWERCAP_KINDS.items():
            items, _rv = sources[plural].list()
            objects += [{**o, "kind": kind} for o in items]
    except Exception as exc:
        log.error(
            "cannot list the powercap.io resources (%s: %s); starting from the config "
            "file's tree until the watch reads them",
            type(exc).__name__,
            exc,
        )
        return config
    result = rebuild(objects, config)
    if result.config is None:
        log.error(
            "the powercap.io resources do not make a valid tree; starting from the config "
            "file's:\n  %s",
            "\n  ".join(result.problems),
        )
        return config
    return replace(
        config,
        tree=result.config.tree,
        profiles=result.config.profiles,
        services=result.config.services,
        spec=result.config.spec,
    )


def add_resource_watch(ext: Extender, sources: Mapping[str, Source]) -> None:
    """Watch the powercap.io resources (and the workloads, for the planner's demand) and
    swap what they make into ``ext`` without a restart (:func:`swap_resources`)."""
    planner = ext.planner
    if planner is not None:
        # With the workloads watched the replicas come from them: no plan before their
        # first count (it would plan for none).
        planner.wait_for_demand = bool(sources.keys() - POWERCAP_KINDS.keys())
    ext.resources = ResourceWatch(
        ext.config,
        sources,
        on_config=lambda new: swap_resources(ext, new),
        on_demand=(
            None
            if planner is None
            else lambda demand: planner.set_demand(
                {name: entry.replicas for name, entry in demand.services.items()}
            )
        ),
        events=ext.events,
    )
    log.info(
        "the tree, caps and profiles follow the powercap.io resources%s",
        "; the demand follows the workloads"
        if planner is not None and sources.keys() - POWERCAP_KINDS.keys()
        else "",
    )


def swap_resources(ext: Extender, new: Config) -> bool:
    """Put the config the resources make in place, without a restart: under the state
    lock, the caps in force (filter and bind check them from the next call; the
    controller compares measured power with them, so a cap lowered below the load shows
    as a breach) and the config the parts hold (profiles, services); then the planner
    re-plans after its debounce (the cap change is a topology change). A new tree shape
    (domains added or removed, a parent changed) cannot be swapped into a running ledger:
    it is refused with a log line and the current tree is kept until a restart. Returns
    whether ``new`` was swapped in."""
    why = structure_change(ext.config, new)
    if why is not None:
        log.error(
            "the powercap.io resources changed the tree's shape (%s); the running "
            "extender keeps its tree and caps until it restarts",
            why,
        )
        return False
    # Keep the running process's own settings (planner, controller, ...): only the tree,
    # profiles and services come from the resources.
    new = replace(
        ext.config,
        tree=new.tree,
        profiles=new.profiles,
        services=new.services,
        spec=new.spec,
    )
    with ext.state.lock:
        changed = not np.array_equal(ext.state.tree.caps, new.tree.caps)
        if changed:
            ext.state.set_configured_caps(new.tree.caps)
            if ext.carbon_loop is not None:
                # The live caps scale the configured ones: from the next tick, the new ones.
                base = np.array(new.tree.caps, dtype=np.float64)
                base.setflags(write=False)
                ext.carbon_loop.caps.base = base
        _swap_parts(ext, new)
    if ext.planner is not None:
        ext.planner.poke()
    if changed:
        log.info("caps changed by the powercap.io resources: applied now")
    return True


def _swap_parts(ext: Extender, new: Config) -> None:
    resolver = DemandResolver(new)
    ext.config = new
    ext.decider.config = new
    ext.decider.resolver = resolver
    if ext.mirror is not None:
        ext.mirror.config = new
        ext.mirror.resolver = DemandResolver(new)
    if ext.controller is not None:
        ext.controller.config = new
        ext.controller.resolver = DemandResolver(new)
    if ext.planner is not None:
        ext.planner.config = new


def _add_refresher(ext: Extender) -> None:
    """With ``learn.refresh``, re-learn the profiles on a timer (:func:`swap_config`)."""
    settings = ext.config.learn
    if settings is None:
        return
    ext.refresher = ProfileRefresher(
        settings, lambda: ext.config, lambda new: swap_config(ext, new)
    )
    log.info("profiles re-learned every %gs from %s", settings.interval_s, settings.url)


def assumed_pod_expiry(ext: Extender) -> PeriodicLoop:
    """A loop that forgets, once a second, the assumed pods whose Binding never landed
    (:meth:`ClusterState.expire_assumed` with ``scheduler.assumedPodTTL``). Filter and
    bind do it too, but after an API server outage nothing may call them: the power those
    pods hold keeps the pods that would retry them out."""

    def expire(_now: float) -> None:
        ext.state.expire_assumed(ttl_s=ext.config.scheduler.assumed_pod_ttl_s)

    return PeriodicLoop("powercap-assumed-pods", expire, 1.0, ready=lambda: ext.state.synced)


def controller_from_cluster(
    config: Config,
    core: Any,
    *,
    cluster_api: ClusterApi | None = None,
    lease_api: LeaseApi | None = None,
    power_source: PowerSource | None = None,
    state_store: StateStore | None = None,
) -> Extender:
    """The companion controller alone over a live cluster (``powercap controller``).

    The mirror lists and watches Nodes and Pods into the state the controller reads; the
    controller acts while it holds its Lease and keeps its memory for the next leader
    (:func:`add_controller`, with the same arguments as :func:`from_cluster`); with an
    ``intensity:`` section the live caps loop moves the caps it compares with, and with
    ``learn.refresh`` the profiles it splits a node's watts by are re-learned. No planner
    runs and nothing answers the scheduler: serve :meth:`Extender.health_app`, never
    :meth:`Extender.app`. Ready once the mirror has synced. Raises ``ValueError`` when
    ``controller.enabled`` is false."""
    if not config.controller.enabled:
        raise ValueError("controller.enabled is false: there is no controller to run")
    # The plan only steers the scheduler's choices; nothing here would read it.
    config = replace(config, planner=replace(config.planner, enabled=False))
    # Nothing calls the decider (the health app has no verbs); the binder is a stand-in.
    timeouts = config.kubernetes
    sources: dict[str, Source] = {}
    if config.resources.enabled:
        # The caps it compares measured power with; no planner, so no workloads.
        sources = {
            plural: source
            for plural, source in sources_for(core.api_client, config).items()
            if plural in POWERCAP_KINDS
        }
        config = initial_config(config, sources)
    ext = _assemble(config, StaticBinder(), KubernetesEventSink(core, timeouts=timeouts))
    # No on_pending: the extender warns about pods it cannot place, not this process.
    ext.mirror = Mirror(
        ext.state,
        config,
        KubernetesSource(core, "nodes", timeouts=timeouts),
        pods=KubernetesSource(core, "pods", timeouts=timeouts),
        seen=ext.telemetry.mirror_seen,
        relists=ext.telemetry.mirror_relists,
    )
    add_controller(
        ext,
        core,
        cluster_api,
        lease_api=lease_api,
        power_source=power_source,
        state_store=state_store,
    )
    if config.intensity:
        add_carbon(ext)
    _add_refresher(ext)
    if sources:
        add_resource_watch(ext, sources)
        add_domain_status(ext, kubernetes_patch(core.api_client, timeouts))
    return ext


def swap_config(ext: Extender, new: Config) -> None:
    """Put ``new`` (the same config with re-learned profiles) in place of the config the
    extender's parts hold, then re-plan with it.

    The swap happens under the state lock, so a decision sees the old config or the new
    one, never a mix. Pods from then on are admitted at the new profiles; pods already in
    the ledger keep the profile they were admitted at until they leave (their watts are
    what the caps were checked against). The re-plan runs in the caller's thread (the
    refresher's), so decisions never wait for it."""
    with ext.state.lock:
        _swap_parts(ext, new)
    if ext.planner is not None and ext.state.synced:
        ext.planner.plan_now()


def add_controller(
    ext: Extender,
    core: Any,
    cluster_api: ClusterApi | None = None,
    *,
    lease_api: LeaseApi | None = None,
    power_source: PowerSource | None = None,
    state_store: StateStore | None = None,
) -> None:
    """Add the companion controller, its Lease, its memory and its metrics to ``ext``.
    The memory is kept through ``state_store``, by default the ConfigMap
    ``controller.state.configMap`` in the Lease's namespace (none in dry-run, or when the
    name is empty)."""
    settings = ext.config.controller
    if power_source is None:
        from extender.controller.readings import PrometheusPowerSource

        if ext.config.power is None:  # the config loader refuses this; keep mypy sure
            raise ValueError("the controller needs the power: section")
        power_source = PrometheusPowerSource(ext.config.power)
    power = ext.config.power
    if power is not None and power.preset != "custom" and not power.selector:
        log.warning(
            "power.selector is not set: every series of the %s preset's metric counts, "
            "whoever exports it; select the trusted exporter's job (docs/power.md)",
            power.preset,
        )
    if cluster_api is None or lease_api is None:
        from kubernetes import client

        api_client = core.api_client
        if cluster_api is None:
            cluster_api = KubernetesClusterApi(
                core,
                client.CustomObjectsApi(api_client),
                client.PolicyV1Api(api_client),
                namespaces=settings.namespaces,
                timeouts=ext.config.kubernetes,
            )
        if lease_api is None:
            lease_api = KubernetesLeaseApi(
                client.CoordinationV1Api(api_client), timeouts=ext.config.kubernetes
            )
    metrics = ControllerMetrics(ext.telemetry.registry)
    elector = LeaderElector(
        lease_api, settings.lease, on_change=lambda leading: metrics.leader.set(float(leading))
    )
    metrics.leader.set(0.0)
    ext.elector = elector
    memory: MemoryKeeper | None = None
    if not settings.dry_run and (state_store is not None or settings.state_config_map):
        if state_store is None:
            state_store = ConfigMapStateStore(
                core,
                settings.lease.namespace,
                settings.state_config_map,
                identity=elector.identity,
            )
        memory = MemoryKeeper(state_store, settings.state_min_interval_s)
    ext.controller = Controller(
        ext.config,
        ext.state,
        power_source,
        api=cluster_api,
        events=ext.events,
        metrics=metrics,
        leader=elector.is_leader,
        memory=memory,
    )
    ext.controller_loop = ControllerLoop(ext.controller, settings.period_s)
    log.info(
        "controller enabled%s: period %gs, lease %s/%s as %s",
        " (dry run)" if settings.dry_run else "",
        settings.period_s,
        settings.lease.namespace,
        settings.lease.name,
        elector.identity,
    )


def add_tracking(ext: Extender, power_source: PowerSource | None = None) -> None:
    """Add a controller that only tracks measured power (:attr:`ControllerMode.TRACK`):
    every period it reads the power source (``config.power`` unless given), follows each
    domain's breach and feeds the overage of breached domains into ``ext``'s ledger. It
    holds no Lease, calls no API, posts no Event and registers no metric; the controller
    that acts (and exports the controller's metrics) runs elsewhere."""
    settings = ext.config.controller
    if power_source is None:
        from extender.controller.readings import PrometheusPowerSource

        if ext.config.power is None:  # the config loader refuses this; keep mypy sure
            raise ValueError("the controller needs the power: section")
        power_source = PrometheusPowerSource(ext.config.power)
    ext.controller = Controller(
        ext.config,
        ext.state,
        power_source,
        api=None,
        events=ext.events,
        leader=lambda: False,
    )
    ext.controller_loop = ControllerLoop(ext.controller, settings.period_s)
    log.info(
        "controller tracking only: measured power every %gs feeds the ledger; "
        "powercap controller acts",
        settings.period_s,
    )


def add_carbon(ext: Extender, sources: list[Resilient] | None = None) -> None:
    """Add the live caps loop (:mod:`extender.carbon.loop`) and its metrics to ``ext``.

    ``sources`` (one per ``intensity:`` source, in order) default to the ones the section
    describes; building them raises :class:`~placement.validation.ProblemsError` when a
    secret's variable is unset or two sources are the same. The emissions use the
    controller's measured power while its last tick is recent."""
    zones = ext.config.intensity
    if not zones:
        raise ValueError("the live caps loop needs the intensity: section")
    if sources is None:
        problems: list[str] = []
        sources = []
        for i, settings in enumerate(zones):
            where = "intensity" if len(zones) == 1 else f"intensity[{i}]"
            try:
                sources.append(build_source(settings, where=where))
            except ProblemsError as exc:
                problems += exc.problems
        if not problems:  # with every source built, position i is intensity[i]
            built = [s.source.name for s in sources]
            problems = [
                f"intensity[{i}]: the same source as intensity[{built.index(name)}] "
                f"({name}); one source per grid zone"
                for i, name in enumerate(built)
                if built.index(name) != i
            ]
        if problems:
            raise ProblemsError(problems, ext.config.source)
    controller = ext.controller
    metrics = CarbonMetrics(
        ext.telemetry.registry,
        cap=controller.metrics.cap if controller and controller.metrics else None,
    )

    def measured(now: float) -> NDArray[np.float64] | None:
        if controller is None or controller.last is None:
            return None
        # Older than a few control periods: the controller is stuck, not measuring.
        if now - controller.last.at > 3 * controller.settings.period_s:
            return None
        return controller.last.measured

    caps = CarbonCaps(
        list(zip(zones, sources, strict=True)),
        ext.state,
        ext.config.grid,
        base=ext.config.tree.caps,
        metrics=metrics,
        measured=measured,
    )
    ext.carbon_loop = CarbonLoop(caps, caps.period_s, clock=time.time)
    names = ext.state.tree.names
    for zone in caps.zones:
        log.info(
            "caps of %s follow %s every %gs (policy %s)%s",
            ", ".join(names[d] for d in zone.domains),
            zone.name,
            zone.settings.period_s,
            zone.settings.policy.describe(),
            "".join(
                f"; budget {b.kg:g} kg per {b.window} for {b.domain}" for b in zone.settings.budgets
            ),
        )
