"""The powercap config file (``kind: PowercapConfig``) as pydantic models, and the resolved
:class:`Config`.

:class:`ConfigSpec` is the whole file as written. The small sections have their models
here (:class:`NodesSpec`, :class:`ServiceSpec`, :class:`PolicySpec`,
:class:`PlannerSpec`, :class:`ScoringSpec`, :class:`SchedulerSpec`); the larger ones each
have a module of their own, ``extender/config/<section>.py`` (``power``, ``intensity``,
``controller``, ``learn``, ``kubernetes``). :class:`ProfileDocument` is a
``kind: PowerProfile`` file. :class:`Config` is what the extender runs on once
:mod:`extender.config.loading` has checked everything (with :class:`ServiceEntry`,
:class:`PlannerSettings` and :class:`SchedulerSettings`); :class:`ConfigError` lists every
problem found. The file section by section: docs/extender.md, "Configuration".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from extender.config.controller import ControllerSettings, ControllerSpec
from extender.config.intensity import (
    IntensitySettings,
)
from extender.config.kubernetes import KubernetesSettings, KubernetesSpec
from extender.config.learn import LearnRefreshSettings, LearnSpec
from extender.config.power import PowerSettings, PowerSourceSpec
from placement.grid import Grid
from placement.problem import Problem
from placement.scenario.spec import (
    DomainSpec,
    GridSpec,
    Metadata,
    ProfileRef,
)
from placement.tree import PowerTree
from placement.validation import ProblemsError

DEFAULT_NAMEPLATE_W = 5600.0  # 8 × 700 W: an 8-GPU H100 server's GPUs at TDP


class ConfigError(ProblemsError):
    """A config that cannot be used; ``problems`` lists every ``path: message``."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        super().__init__(problems, source)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


ProfileValue = list[float] | ProfileRef


class NodesSpec(_Model):
    """How cluster nodes map onto the tree."""

    domain_label: str = Field(default="powercap.io/domain", alias="domainLabel", min_length=1)
    idle_watts_annotation: str = Field(
        default="powercap.io/idle-watts", alias="idleWattsAnnotation", min_length=1
    )
    default_idle_watts: float = Field(default=0.0, alias="defaultIdleWatts", ge=0)
    gpu_resource: str = Field(default="nvidia.com/gpu", alias="gpuResource", min_length=1)


class ServiceSpec(_Model):
    """A service's entry. ``profile`` names a profile or gives one inline."""

    profile: str | ProfileValue | None = None
    priority: int = 0
    gpus_per_replica: int = Field(default=1, alias="gpusPerReplica", ge=1)
    nameplate_watts: float | None = Field(default=None, alias="nameplateWatts", ge=0)
    replicas: int = Field(default=0, ge=0)


class PolicySpec(_Model):
    """What to do with a managed pod whose profile is missing or invalid:
    ``reject`` fails it on every node; ``nameplate`` admits it at the service's
    ``nameplateWatts`` (else ``defaultNameplateWatts``) in every slot."""

    missing_profile: Literal["reject", "nameplate"] = Field(
        default="nameplate", alias="missingProfile"
    )
    default_nameplate_watts: float = Field(
        default=DEFAULT_NAMEPLATE_W, alias="defaultNameplateWatts", gt=0
    )


class PlannerSpec(_Model):
    """``workers`` are CP-SAT threads; keep one core free for the decisions."""

    enabled: bool = True
    strategy: Literal["cpsat", "greedy"] = "cpsat"
    debounce: str | int = "5s"
    time_limit: str | int = Field(default="30s", alias="timeLimit")
    interval: str | int = "15m"
    workers: int = Field(default=1, ge=1)


class ScoringSpec(_Model):
    """``planWeight`` of the 0–10 score goes to agreeing with the plan, the rest to
    the least peak increase. Above 0.5 the plan always wins over peak increase.

    ``reservePlan`` makes the plan binding, not just a preference: filter keeps the
    power the plan holds for its planned-but-unplaced replicas free for them, so a
    replica the plan did not count on cannot take it (it stays Pending until a re-plan
    makes room). Off by default: a stale plan then costs nothing but steering.

    ``filterToPlan`` makes filter offer only the fitting nodes under domains where the
    plan wants more replicas of the pod's service, when there are any (else every
    fitting node, as without it). The plan is then followed as placement, not as a
    score, and kube-scheduler scores tens of nodes instead of the whole cluster: less
    work for it and for prioritize on every pod. The nodes left out fit; they are not
    reported as failed. On by default; off, kube-scheduler's own scoring sees every node
    that fits and the plan is one score among its plugins'."""

    plan_weight: float = Field(default=0.6, alias="planWeight", ge=0, le=1)
    reserve_plan: bool = Field(default=False, alias="reservePlan")
    filter_to_plan: bool = Field(default=True, alias="filterToPlan")


class SchedulerSpec(_Model):
    """The scheduler the extender binds for. ``name`` is the ``spec.schedulerName`` a pod
    must carry to be bound (the profile's ``schedulerName`` in ``kube-scheduler.yaml``).
    ``assumedPodTTL`` is how long a pod this extender bound keeps its place in the ledger
    through a relist that still lists it unbound (its binding was in flight), waiting for
    the watch event that shows it bound. ``failureReasons``: ``whenNoneFit`` (the
    default) says why each failing node fails only when no node passes, the only case in
    which kube-scheduler reads the reasons; ``always`` says it in every filter answer,
    for an extender configured after this one that may fail every node left."""

    name: str = Field(default="powercap-scheduler", min_length=1)
    assumed_pod_ttl: str | int = Field(default="30s", alias="assumedPodTTL")
    failure_reasons: Literal["whenNoneFit", "always"] = Field(
        default="whenNoneFit", alias="failureReasons"
    )


class ResourcesSpec(_Model):
    """Where the domain tree, the profiles and the demand come from in a live cluster.

    ``enabled``: the extender lists and watches the ``powercap.io`` custom resources
    (PowerDomain, PowerProfile, PowerPolicy) and builds the tree, caps, profiles and
    services from them in place of this file's ``domains``, ``profiles`` and ``services``;
    a change applies without a restart (docs/api.md). Off by default: the file is the
    source, as before. ``workloads``: the planner's demand per service comes from the
    Deployments, StatefulSets, KEDA ScaledObjects and KServe InferenceServices carrying
    the service label (``services[].replicas`` then only serves offline scenarios)."""

    enabled: bool = False
    workloads: bool = True


class ConfigSpec(_Model):
    """The file, as written."""

    api_version: Literal["powercap.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["PowercapConfig"]
    metadata: Metadata = Metadata(name="powercap")
    grid: GridSpec = GridSpec()
    headroom: float = Field(default=0.0, ge=0, lt=1)
    domains: list[DomainSpec]
    nodes: NodesSpec = NodesSpec()
    profiles: dict[str, ProfileValue] = {}
    profile_files: list[str] = Field(default=[], alias="profileFiles")
    services: dict[str, ServiceSpec] = {}
    policy: PolicySpec = PolicySpec()
    planner: PlannerSpec = PlannerSpec()
    scoring: ScoringSpec = ScoringSpec()
    scheduler: SchedulerSpec = SchedulerSpec()
    # Measured power for the controller; absent: no readings, the controller stays idle.
    power: PowerSourceSpec | None = None
    # Live grid carbon intensity (docs/carbon.md): one source, or a list of them, one per
    # grid zone (checked by resolve_intensity); absent: caps do not follow it.
    intensity: dict[str, Any] | list[dict[str, Any]] | None = None
    # The companion controller (off unless ``controller.enabled``); it needs ``power``.
    controller: ControllerSpec = ControllerSpec()
    # Re-learning profiles from Prometheus while serving (``learn.refresh``; absent: never).
    learn: LearnSpec = LearnSpec()
    # Timeouts of every call to the Kubernetes API server.
    kubernetes: KubernetesSpec = KubernetesSpec()
    # The powercap.io custom resources as the source of the tree (off: this file is).
    resources: ResourcesSpec = ResourcesSpec()


class ProfileDocument(_Model):
    """One named profile in its own file (``kind: PowerProfile``)."""

    api_version: Literal["powercap.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["PowerProfile"]
    metadata: Metadata
    description: str = ""
    profile: ProfileValue


@dataclass(frozen=True)
class ServiceEntry:
    """A service as the extender uses it. ``profile`` is ``None`` when the config
    gives none (pods then need a ``powercap.io/profile`` annotation)."""

    name: str
    profile: NDArray[np.float64] | None
    profile_name: str | None
    priority: int = 0
    gpus_per_replica: int = 1
    nameplate_watts: float | None = None
    replicas: int = 0


@dataclass(frozen=True)
class PlannerSettings:
    enabled: bool = True
    strategy: str = "cpsat"
    debounce_s: float = 5.0
    time_limit_s: float = 30.0
    interval_s: float = 900.0
    workers: int = 1


@dataclass(frozen=True)
class SchedulerSettings:
    """:class:`SchedulerSpec` resolved: the scheduler name, and the TTL in seconds."""

    name: str = "powercap-scheduler"
    assumed_pod_ttl_s: float = 30.0
    failure_reasons: Literal["whenNoneFit", "always"] = "whenNoneFit"

    @property
    def reasons_if_some_pass(self) -> bool:
        """Whether the filter verb says why nodes fail even when some pass
        (``failureReasons: always``)."""
        return self.failure_reasons == "always"


@dataclass(frozen=True)
class Config:
    """The validated, resolved config."""

    name: str
    grid: Grid
    tree: PowerTree
    headroom: float
    profiles: dict[str, NDArray[np.float64]]
    services: dict[str, ServiceEntry]
    nodes: NodesSpec = field(default_factory=NodesSpec)
    policy: PolicySpec = field(default_factory=PolicySpec)
    planner: PlannerSettings = field(default_factory=PlannerSettings)
    scoring: ScoringSpec = field(default_factory=ScoringSpec)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    power: PowerSettings | None = None
    intensity: tuple[IntensitySettings, ...] = ()  # one per grid zone; () without the section
    controller: ControllerSettings = field(default_factory=ControllerSettings)
    learn: LearnRefreshSettings | None = None
    kubernetes: KubernetesSettings = field(default_factory=KubernetesSettings)
    source: str = "config"
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    # The file as written, for rebuilding with the custom resources (None: not from a file).
    spec: ConfigSpec | None = field(default=None, compare=False)
    # Scenario mode: the static fleet the cluster state starts from.
    problem: Problem | None = field(default=None, compare=False)

    def nameplate_of(self, service: str | None) -> float:
        """Watts a pod of ``service`` is admitted at under the ``nameplate`` policy."""
        entry = self.services.get(service) if service is not None else None
        if entry is not None and entry.nameplate_watts is not None:
            return entry.nameplate_watts
        return self.policy.default_nameplate_watts
