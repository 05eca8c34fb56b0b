"""The powercap custom resources (``powercap.io/v1alpha1``) as pydantic models, and the
conversions between them and the config file.

- :class:`PowerDomain` (cluster-scoped): one domain of the power tree — its ``parent``,
  its ``cap`` (``watts``, or a ``schedule`` of T values), an optional ``carbonZone`` (the
  live intensity source its caps follow) and ``emissionBudget``. Its status carries what the
  extender predicts and the controller measures, and the conditions ``Ready``,
  ``Breached`` and ``InvalidParent``.
- :class:`PowerProfile` (namespaced): one replica's watts per slot (``watts``, T values), or
  the ``diurnal`` / ``constant`` shorthands of a scenario's profiles; the ``quantile`` it
  stands for and where it came from (``source: manual`` or ``learned``, with when and over
  what window). Profile learning writes its status.
- :class:`PowerPolicy` (namespaced): how one service is placed and capped — the pods it
  covers (``service``, the ``powercap.io/service`` label's value, or a ``selector``), the
  PowerProfile it uses, ``priority``, ``nameplateWatts``, ``gpusPerReplica`` and the
  power-limit fields of a scenario's services (``powerLimit``, ``throughputCurve``, …). A
  label on each workload could name the profile, but priority, nameplate watts and the
  throughput curve belong to the service, not to one Deployment of it, and a policy object
  is where ``kubectl get`` and RBAC can see and guard them.

The spec models reuse the config's own models where one fits (:class:`DiurnalSpec`, the
budget window of :class:`~extender.config.intensity.BudgetSpec`), and :func:`config_from_resources`
turns a set of resources back into a :class:`~extender.config.model.ConfigSpec`, so the
checks of :func:`~extender.config.loading.config_from_spec` (the tree, caps, profile
lengths) apply to both forms. :func:`resources_from_config` is the other way
(``powercap config migrate``). The CRDs are generated from these models
(:mod:`extender.crds`). Their use: docs/api.md.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from extender.config.intensity import BudgetSpec
from extender.config.model import ConfigSpec, ServiceSpec
from placement.grid import Grid
from placement.scenario.spec import DiurnalSpec, DomainSpec, ProfileRef
from placement.validation import ProblemsError, validation_problems

GROUP = "powercap.io"
VERSION = "v1alpha1"
# The grid the CRDs check schedule and profile lengths against (the config's default grid:
# 24h period, 10m step). A cluster on another grid regenerates them: `make crds SLOTS=...`.
DEFAULT_SLOTS = Grid(86400, 600, 0).slots
SERVICE_LABEL = "powercap.io/service"
REFERENCE = "docs/api.md"


class ResourceError(ProblemsError):
    """Resources that cannot be used; ``problems`` lists every ``path: message``."""

    def __init__(self, problems: list[str], source: str = "resources") -> None:
        super().__init__(problems, source)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ObjectMeta(_Model):
    """The metadata the models read; the API server's other fields are kept as given."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = Field(min_length=1)
    namespace: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class Condition(_Model):
    """A Kubernetes condition (``metav1.Condition``)."""

    type: str = Field(min_length=1)
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(min_length=1)
    message: str = ""
    observed_generation: int | None = Field(None, alias="observedGeneration")
    last_transition_time: str = Field(alias="lastTransitionTime")


# ---- PowerDomain ------------------------------------------------------------------------


class Cap(_Model):
    """A domain's cap: one number of ``watts``, or a ``schedule`` of T values (one per slot
    of the grid; carbon-aware caps are schedules). Exactly one."""

    watts: float | None = Field(None, gt=0, description="the cap in watts, in every slot")
    schedule: list[float] | None = Field(
        None, description="the cap in watts per slot of the grid (T values, each > 0)"
    )

    @model_validator(mode="after")
    def _one_form(self) -> Cap:
        if (self.watts is None) == (self.schedule is None):
            raise ValueError("give exactly one of cap.watts or cap.schedule")
        if self.schedule is not None and any(not w > 0 for w in self.schedule):
            raise ValueError("cap.schedule: every value must be positive watts")
        return self

    def as_config(self) -> float | list[float]:
        return self.watts if self.watts is not None else list(self.schedule or [])


class EmissionBudget(_Model):
    """At most ``kg`` CO2e from the domain per ``window`` (as ``intensity.budgets``)."""

    kg: float = Field(gt=0, description="kg CO2e allowed per window")
    window: Literal["day", "month"] = Field("day", description="a day or a calendar month")


class PowerDomainSpec(_Model):
    """One domain of the power tree; the domain's name is the object's name."""

    parent: str | None = Field(
        None, min_length=1, description="the parent domain's name; absent on the root only"
    )
    cap: Cap
    carbon_zone: str | None = Field(
        None,
        alias="carbonZone",
        min_length=1,
        description="the grid zone of the live intensity source the caps follow",
    )
    emission_budget: EmissionBudget | None = Field(None, alias="emissionBudget")


class PowerDomainStatus(_Model):
    """What the extender predicts and the controller measures; ``state`` is one word for
    ``kubectl get`` (``Ok``, ``Breached``, ``Invalid``, ``Unknown``)."""

    observed_generation: int | None = Field(None, alias="observedGeneration")
    predicted_peak_watts: float | None = Field(None, alias="predictedPeakWatts")
    predicted_peak_at: str | None = Field(
        None, alias="predictedPeakAt", description="time of day of the predicted peak, HH:MM"
    )
    measured_watts: float | None = Field(None, alias="measuredWatts")
    measured_at: str | None = Field(None, alias="measuredAt", description="RFC 3339")
    headroom_watts: float | None = Field(
        None, alias="headroomWatts", description="the cap now minus the predicted peak"
    )
    breached: bool | None = None
    breached_since: str | None = Field(None, alias="breachedSince")
    state: Literal["Ok", "Breached", "Invalid", "Unknown"] | None = None
    conditions: list[Condition] = Field(default_factory=list)


class PowerDomain(_Model):
    api_version: Literal["powercap.io/v1alpha1"] = Field("powercap.io/v1alpha1", alias="apiVersion")
    kind: Literal["PowerDomain"] = "PowerDomain"
    metadata: ObjectMeta
    spec: PowerDomainSpec
    status: PowerDomainStatus | None = None


# ---- PowerProfile -----------------------------------------------------------------------


class LearnedFrom(_Model):
    """Where a learned profile came from."""

    at: str = Field(description="when it was learned, RFC 3339")
    window: str = Field(min_length=1, description="the history it was learned from, e.g. 14d")


class PowerProfileSpec(_Model):
    """One replica's watts above node idle per slot: ``watts`` (T values), or one of the
    shorthands ``diurnal`` and ``constant``. Exactly one."""

    watts: list[float] | None = Field(None, description="watts per slot of the grid (T values)")
    diurnal: DiurnalSpec | None = None
    constant: float | None = Field(None, ge=0, description="the same watts in every slot")
    quantile: float = Field(0.95, ge=0, le=1, description="the quantile of the draw it stands for")
    source: Literal["manual", "learned"] = "manual"
    learned: LearnedFrom | None = None
    description: str | None = None

    @model_validator(mode="after")
    def _one_form(self) -> PowerProfileSpec:
        given = [self.watts is not None, self.diurnal is not None, self.constant is not None]
        if sum(given) != 1:
            raise ValueError("give exactly one of watts, diurnal or constant")
        if self.watts is not None and any(not w >= 0 for w in self.watts):
            raise ValueError("watts: every value must be >= 0")
        if self.source == "learned" and self.learned is None:
            raise ValueError("a learned profile says when and from what window (learned)")
        return self

    def as_config(self) -> list[float] | ProfileRef:
        if self.watts is not None:
            return list(self.watts)
        if self.diurnal is not None:
            return ProfileRef(diurnal=self.diurnal)
        return ProfileRef(constant=self.constant)


class PowerProfileStatus(_Model):
    """Written by profile learning: the last refresh and what it was learned from."""

    observed_generation: int | None = Field(None, alias="observedGeneration")
    learned_at: str | None = Field(None, alias="learnedAt")
    window: str | None = None
    samples: int | None = Field(None, ge=0)
    peak_watts: float | None = Field(None, alias="peakWatts")
    conditions: list[Condition] = Field(default_factory=list)


class PowerProfile(_Model):
    api_version: Literal["powercap.io/v1alpha1"] = Field("powercap.io/v1alpha1", alias="apiVersion")
    kind: Literal["PowerProfile"] = "PowerProfile"
    metadata: ObjectMeta
    spec: PowerProfileSpec
    status: PowerProfileStatus | None = None


# ---- PowerPolicy ------------------------------------------------------------------------


class LabelSelector(_Model):
    match_labels: dict[str, str] = Field(default_factory=dict, alias="matchLabels")


class PowerLimit(_Model):
    """Provision at a GPU power limit: a ``fraction`` of the GPU's default limit, or
    ``wattsPerGpu``. Exactly one."""

    fraction: float | None = Field(None, gt=0, le=1)
    watts_per_gpu: float | None = Field(None, alias="wattsPerGpu", gt=0)

    @model_validator(mode="after")
    def _one_form(self) -> PowerLimit:
        if (self.fraction is None) == (self.watts_per_gpu is None):
            raise ValueError("give exactly one of powerLimit.fraction or powerLimit.wattsPerGpu")
        return self

    def as_config(self) -> float | str:
        return self.fraction if self.fraction is not None else f"{self.watts_per_gpu:g}W"


class CurvePoint(_Model):
    """Relative throughput at a power limit (a fraction of the default limit)."""

    fraction: float = Field(gt=0, le=1)
    throughput: float = Field(ge=0)


class PowerPolicySpec(_Model):
    """How one service's replicas are placed and capped."""

    service: str | None = Field(
        None,
        min_length=1,
        description=f"the {SERVICE_LABEL} label value of the service's pods "
        "(default: the object's name)",
    )
    selector: LabelSelector | None = Field(
        None, description="pods of the service by labels, instead of the service label"
    )
    profile_ref: str | None = Field(
        None,
        alias="profileRef",
        min_length=1,
        description="name of a PowerProfile in the policy's namespace",
    )
    priority: int = 0
    gpus_per_replica: int = Field(1, alias="gpusPerReplica", ge=1)
    nameplate_watts: float | None = Field(None, alias="nameplateWatts", ge=0)
    power_limit: PowerLimit | None = Field(None, alias="powerLimit")
    gpu_limit_watts: float | None = Field(None, alias="gpuLimitWatts", gt=0)
    throughput_curve: list[CurvePoint] | None = Field(None, alias="throughputCurve")
    tokens_per_second: float | None = Field(None, alias="tokensPerSecond", gt=0)


class PowerPolicy(_Model):
    api_version: Literal["powercap.io/v1alpha1"] = Field("powercap.io/v1alpha1", alias="apiVersion")
    kind: Literal["PowerPolicy"] = "PowerPolicy"
    metadata: ObjectMeta
    spec: PowerPolicySpec

    @property
    def service_name(self) -> str:
        return self.spec.service or self.metadata.name


Resource = PowerDomain | PowerProfile | PowerPolicy
KINDS: dict[str, type[PowerDomain] | type[PowerProfile] | type[PowerPolicy]] = {
    "PowerDomain": PowerDomain,
    "PowerProfile": PowerProfile,
    "PowerPolicy": PowerPolicy,
}


def parse_resources(objects: Iterable[Mapping[str, Any]]) -> list[Resource]:
    """Each object (as the API server or a YAML file gives it) as its model; raises
    :class:`ResourceError` listing every bad field, each named ``Kind/name: path``."""
    out: list[Resource] = []
    problems: list[str] = []
    for i, obj in enumerate(objects):
        kind = obj.get("kind")
        meta = obj.get("metadata")
        name = meta.get("name", f"[{i}]") if isinstance(meta, Mapping) else f"[{i}]"
        model = KINDS.get(str(kind))
        if model is None:
            problems.append(
                f"[{i}].kind: {kind!r} is not a powercap resource; use one of {', '.join(KINDS)}"
            )
            continue
        try:
            out.append(model.model_validate(obj))
        except ValidationError as exc:
            problems += validation_problems(exc, reference=REFERENCE, prefix=f"{kind}/{name}")
    if problems:
        raise ResourceError(problems)
    return out


# ---- config <-> resources ---------------------------------------------------------------


def _meta(name: str, namespace: str | None) -> ObjectMeta:
    return ObjectMeta(name=name, namespace=namespace)


def _zone_of(source: Mapping[str, Any]) -> str:
    """The zone an intensity source stands for: its zone, region or location, else its kind."""
    for key in ("zone", "region", "location", "kind"):
        if source.get(key):
            return str(source[key])
    return "default"


def _intensity_sources(spec: ConfigSpec) -> list[dict[str, Any]]:
    """Copies of the config's intensity sources (one or a list)."""
    if spec.intensity is None:
        return []
    given = [spec.intensity] if isinstance(spec.intensity, dict) else spec.intensity
    return copy.deepcopy(list(given))


def resources_from_config(
    spec: ConfigSpec, namespace: str, profiles: Mapping[str, Any]
) -> list[Resource]:
    """The resources of a config: a PowerDomain per domain, a PowerProfile per named profile
    (``profiles`` maps each name to its value as written: the config's own and those of its
    ``profileFiles``), a PowerPolicy per service. A service's inline profile becomes a
    PowerProfile named after the service. ``services[].replicas`` is left out: demand comes
    from the workloads. Raises :class:`ResourceError` for what has no resource form (a
    profile read from a CSV file: learn it, or list its T values)."""
    problems: list[str] = []
    zones: dict[str, str] = {}
    budgets: dict[str, EmissionBudget] = {}
    for source in _intensity_sources(spec):
        for domain in source.get("domains") or []:
            zones[str(domain)] = _zone_of(source)
        for budget in source.get("budgets") or []:
            b = BudgetSpec.model_validate(budget)
            budgets[b.domain] = EmissionBudget(kg=b.kg, window=b.window)
            zones[b.domain] = _zone_of(source)
    out: list[Resource] = []
    for d in spec.domains:
        cap = Cap(watts=d.cap) if isinstance(d.cap, int | float) else Cap(schedule=list(d.cap))
        domain_spec = PowerDomainSpec(
            parent=d.parent,
            cap=cap,
            carbon_zone=zones.get(d.name),
            emission_budget=budgets.get(d.name),
        )
        out.append(PowerDomain(metadata=_meta(d.name, None), spec=domain_spec))

    def profile(name: str, value: Any, where: str) -> None:
        if isinstance(value, ProfileRef) and value.csv is not None:
            problems.append(
                f"{where}: a CSV profile has no resource form; learn it "
                "(`powercap profiles learn`) or give its T values"
            )
            return
        if isinstance(value, ProfileRef):
            pspec = PowerProfileSpec(diurnal=value.diurnal, constant=value.constant)
        else:
            pspec = PowerProfileSpec(watts=[float(v) for v in value])
        out.append(PowerProfile(metadata=_meta(name, namespace), spec=pspec))

    for name, value in profiles.items():
        profile(name, value, f"profiles.{name}")
    for name, svc in spec.services.items():
        ref: str | None
        if svc.profile is None or isinstance(svc.profile, str):
            ref = svc.profile
        else:
            ref = name
            if name in profiles:
                problems.append(
                    f"services.{name}.profile: an inline profile would take the name {name!r} "
                    "of a named profile; name it under profiles and refer to it"
                )
                continue
            profile(name, svc.profile, f"services.{name}.profile")
        pol = PowerPolicySpec(
            profile_ref=ref,
            priority=svc.priority,
            gpus_per_replica=svc.gpus_per_replica,
            nameplate_watts=svc.nameplate_watts,
        )
        out.append(PowerPolicy(metadata=_meta(name, namespace), spec=pol))
    if problems:
        raise ResourceError(problems, "config")
    return out


def by_zone_budgets(
    zone_budgets: Mapping[str, list[dict[str, Any]]], source: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The budgets of the domains in ``source``'s zone."""
    return list(zone_budgets.get(_zone_of(source), []))


def config_from_resources(resources: Sequence[Resource], settings: ConfigSpec) -> ConfigSpec:
    """The config that ``resources`` and the config's other sections (``settings``: the
    grid, nodes, planner, power, intensity sources, …) make together: ``domains``,
    ``profiles`` and ``services`` come from the resources (replacing those of ``settings``;
    ``profileFiles`` is dropped), emission budgets go to the intensity source of the
    domain's ``carbonZone``. Run :func:`~extender.config.loading.config_from_spec` on the
    result for the tree, cap and profile checks. Raises :class:`ResourceError` when two
    resources claim one name or a budget's zone has no source."""
    problems: list[str] = []
    domains: list[DomainSpec] = []
    profiles: dict[str, list[float] | ProfileRef] = {}
    services: dict[str, ServiceSpec] = {}
    zone_budgets: dict[str, list[dict[str, Any]]] = {}
    for r in resources:
        where = f"{r.kind}/{r.metadata.name}"
        if isinstance(r, PowerDomain):
            domains.append(
                DomainSpec(name=r.metadata.name, parent=r.spec.parent, cap=r.spec.cap.as_config())
            )
            budget = r.spec.emission_budget
            if budget is not None:
                if r.spec.carbon_zone is None:
                    problems.append(
                        f"{where}.spec.emissionBudget: a budget needs the domain's "
                        "carbonZone (the intensity source that prices it); set spec.carbonZone"
                    )
                    continue
                entry = {"domain": r.metadata.name, "kg": budget.kg, "window": budget.window}
                zone_budgets.setdefault(r.spec.carbon_zone, []).append(entry)
        elif isinstance(r, PowerProfile):
            if r.metadata.name in profiles:
                problems.append(f"{where}: a second PowerProfile named {r.metadata.name!r}")
            profiles[r.metadata.name] = r.spec.as_config()
        else:
            name = r.service_name
            if name in services:
                problems.append(f"{where}: a second PowerPolicy for service {name!r}")
            services[name] = ServiceSpec(
                profile=r.spec.profile_ref,
                priority=r.spec.priority,
                gpus_per_replica=r.spec.gpus_per_replica,
                nameplate_watts=r.spec.nameplate_watts,
            )
    sources = _intensity_sources(settings)
    by_zone = {_zone_of(s): s for s in sources}
    for zone, entries in zone_budgets.items():
        if zone not in by_zone:
            known = ", ".join(sorted(by_zone)) or "no intensity source configured"
            problems.append(
                f"PowerDomain/{entries[0]['domain']}.spec.carbonZone: no intensity source for "
                f"zone {zone!r} (known: {known}); add one under intensity or fix the zone"
            )
    if problems:
        raise ResourceError(problems)
    data = settings.model_dump(by_alias=True, exclude_unset=True, mode="json")
    data.update(
        domains=[d.model_dump(exclude_none=True) for d in domains],
        profiles={
            k: v if isinstance(v, list) else v.model_dump(exclude_none=True, by_alias=True)
            for k, v in profiles.items()
        },
        services={k: s.model_dump(by_alias=True, exclude_none=True) for k, s in services.items()},
    )
    data.pop("profileFiles", None)
    if sources:
        for s in sources:
            # The domains are where budgets live now: a zone without one has none.
            s["budgets"] = by_zone_budgets(zone_budgets, s)
        data["intensity"] = sources if isinstance(settings.intensity, list) else sources[0]
    return ConfigSpec.model_validate(data)
