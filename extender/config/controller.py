"""How the companion controller acts: the ``controller:`` section of the powercap config.

:class:`ControllerSpec` is the section as written (with :class:`SettleSpec`,
:class:`EvictionsSpec` of :class:`RateSpec`, :class:`ScaledObjectsSpec`,
:class:`AnnotationsSpec`, :class:`FeedbackSpec`, :class:`LeaseSpec` and :class:`StateSpec`).
:func:`resolve_controller` turns its durations into seconds, checks the cross-field rules
and returns :class:`ControllerSettings` (with :class:`LeaseSettings` and the
:mod:`placement.control` settings), or ``controller.<field>: message`` problems so the
config loader reports them with every other problem at once.

Every field with its default: docs/controller.md, "Configuration (controller:)".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from placement.control.breach import BreachSettings
from placement.control.capping import CapSettings
from placement.control.ladder import LadderSettings, RateLimit
from placement.validation import seconds_or_problem


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class SettleSpec(_Model):
    """How long each rung gets to show its effect before the next step."""

    reshape: str | int = "5m"
    evict: str | int = "60s"
    restore: str | int = "5m"


class RateSpec(_Model):
    limit: int = Field(ge=0)
    window: str | int = "5m"


class EvictionsSpec(_Model):
    per_domain: RateSpec = Field(default=RateSpec(limit=2), alias="perDomain")
    cluster: RateSpec = RateSpec(limit=5)


class ScaledObjectsSpec(_Model):
    """Which KEDA ScaledObjects the controller may reshape and whose service each is."""

    service_label: str = Field(default="powercap.io/service", alias="serviceLabel", min_length=1)
    namespaces: list[str] = []


class AnnotationsSpec(_Model):
    original_max_replicas: str = Field(
        default="powercap.io/original-max-replicas", alias="originalMaxReplicas", min_length=1
    )
    reshaped_by: str = Field(default="powercap.io/reshaped-by", alias="reshapedBy", min_length=1)


class FeedbackSpec(_Model):
    """How long the measured overage of a breach stays in the extender's ledger, in the
    slot of the period where it was measured, after it was last seen (0: only while the
    breach lasts)."""

    hold: str | int = "24h"


class LeaseSpec(_Model):
    name: str = Field(default="powercap-controller", min_length=1)
    namespace: str = Field(default="powercap-system", min_length=1)
    duration: str | int = "15s"
    renew_deadline: str | int = Field(default="10s", alias="renewDeadline")
    retry_period: str | int = Field(default="2s", alias="retryPeriod")


# A ConfigMap's name: a DNS subdomain (RFC 1123).
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


class StateSpec(_Model):
    """Where the leader keeps what the next leader needs — breach starts, steps, eviction
    times: the ConfigMap ``configMap`` in ``lease.namespace`` ("" keeps them in memory
    only). A change is written at once when a step was taken (and before every
    Eviction), otherwise at most once per ``minInterval``."""

    config_map: str = Field(default="powercap-controller-state", alias="configMap")
    min_interval: str | int = Field(default="10s", alias="minInterval")


class LimitSettleSpec(_Model):
    """How long a cap step gets to show its effect, how long limits stay where they are
    after the last cap step (``hold``, doubled for each recent earlier episode up to
    ``maxHold``) and between raising steps (``restore``); with ``restoreMargin``, the
    hysteresis."""

    cap: str | int = "30s"
    restore: str | int = "2m"
    hold: str | int = "24h"
    max_hold: str | int = Field(default="24h", alias="maxHold")


class PowerLimitsSpec(_Model):
    """The first rung: GPU power limits through ``NodePowerLimit`` objects. ``grace``: how
    long a domain is over its cap before limits are lowered (at most the controller's
    ``grace``, after which reshape and eviction may follow). ``guard``: a domain holding
    limits is capped further once its draw comes within this fraction of its cap."""

    enabled: bool = True
    grace: str | int = "15s"
    margin: float = Field(default=0.10, ge=0, le=1)
    high_priority: int = Field(default=1000, alias="highPriority")
    second_threshold: float = Field(default=0.05, ge=0, alias="secondThreshold")
    floor: float = Field(default=0.5, gt=0, le=1)
    floors: dict[str, float] = {}
    restore_step: float = Field(default=0.10, gt=0, le=1, alias="restoreStep")
    guard: float = Field(default=0.03, ge=0, lt=0.5)
    settle: LimitSettleSpec = LimitSettleSpec()
    agent_timeout: str | int = Field(default="30s", alias="agentTimeout")
    capped_by_annotation: str = Field(
        default="powercap.io/capped-by", alias="cappedByAnnotation", min_length=1
    )


class ControllerSpec(_Model):
    """The ``controller:`` section, as written."""

    enabled: bool = False
    dry_run: bool = Field(default=False, alias="dryRun")
    period: str | int = "15s"
    tolerance: float = Field(default=0.0, ge=0)
    hysteresis: float = Field(default=0.05, ge=0, lt=1)
    grace: str | int = "60s"
    settle: SettleSpec = SettleSpec()
    reshape_rounds: int = Field(default=1, ge=0, alias="reshapeRounds")
    restore_margin: float = Field(default=0.10, ge=0, lt=1, alias="restoreMargin")
    protect_priority: int = Field(default=1000, alias="protectPriority")
    evictions: EvictionsSpec = EvictionsSpec()
    victim_time_limit: str | int = Field(default="1s", alias="victimTimeLimit")
    feedback: FeedbackSpec = FeedbackSpec()
    priority_label: str = Field(default="powercap.io/priority", alias="priorityLabel", min_length=1)
    scaled_objects: ScaledObjectsSpec = Field(default=ScaledObjectsSpec(), alias="scaledObjects")
    annotations: AnnotationsSpec = AnnotationsSpec()
    lease: LeaseSpec = LeaseSpec()
    state: StateSpec = StateSpec()
    power_limits: PowerLimitsSpec = Field(default=PowerLimitsSpec(), alias="powerLimits")


@dataclass(frozen=True)
class LeaseSettings:
    name: str = "powercap-controller"
    namespace: str = "powercap-system"
    duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0


@dataclass(frozen=True)
class ControllerSettings:
    """The resolved ``controller:`` section: what :class:`extender.controller.loop.Controller`
    runs on."""

    enabled: bool = False
    dry_run: bool = False
    period_s: float = 15.0
    breach: BreachSettings = field(default_factory=BreachSettings)
    ladder: LadderSettings = field(default_factory=lambda: LadderSettings(protect_priority=1000))
    per_domain: RateLimit = field(default_factory=lambda: RateLimit(2, 300.0))
    cluster: RateLimit = field(default_factory=lambda: RateLimit(5, 300.0))
    victim_time_limit_s: float = 1.0
    hold_s: float = 86400.0
    priority_label: str = "powercap.io/priority"
    service_label: str = "powercap.io/service"
    namespaces: tuple[str, ...] = ()
    original_max_annotation: str = "powercap.io/original-max-replicas"
    reshaped_by_annotation: str = "powercap.io/reshaped-by"
    lease: LeaseSettings = field(default_factory=LeaseSettings)
    state_config_map: str = "powercap-controller-state"  # in lease.namespace; "": none
    state_min_interval_s: float = 10.0
    # The power-limit rung (``None``: off); floors per service, as a fraction of the default.
    capping: CapSettings | None = field(default_factory=CapSettings)
    floors: Mapping[str, float] = field(default_factory=dict)
    capped_by_annotation: str = "powercap.io/capped-by"
    # How long a node's agent may leave a NodePowerLimit's spec unobserved before its GPUs
    # count as uncappable (an agent gone or stuck leaves a status that no longer holds).
    agent_timeout_s: float = 30.0


def _limits(
    spec: PowerLimitsSpec, where: str, problems: list[str]
) -> tuple[CapSettings | None, dict[str, float]]:
    """The ``powerLimits`` section's cap settings (``None`` when off) and floors."""
    floors: dict[str, float] = {}
    for service, value in spec.floors.items():
        if not 0 < value <= 1:
            problems.append(
                f"{where}.powerLimits.floors.{service}: {value:g} is not a fraction of the "
                "GPU's default limit; give a number in (0, 1], such as 0.6"
            )
        floors[service] = value
    if not spec.enabled:
        return None, floors
    return (
        CapSettings(
            margin=spec.margin,
            high_priority=spec.high_priority,
            second_threshold=spec.second_threshold,
            floor=spec.floor,
            restore_step=spec.restore_step,
            guard=spec.guard,
        ),
        floors,
    )


def resolve_controller(
    spec: ControllerSpec, where: str = "controller"
) -> tuple[ControllerSettings | None, list[str]]:
    """Settings from a spec, or ``None`` and the ``where.field: message`` problems."""
    problems: list[str] = []

    def secs(value: str | int, field: str, zero: bool = False) -> float:
        # A grace or settle period of nothing is meaningful (act on the first tick over);
        # durations elsewhere must be positive.
        if zero and str(value).strip() in ("0", "0s"):
            return 0.0
        return seconds_or_problem(value, f"{where}.{field}", problems)

    period = secs(spec.period, "period")
    grace = secs(spec.grace, "grace", zero=True)
    settle = {
        k: secs(getattr(spec.settle, k), f"settle.{k}", zero=True)
        for k in ("reshape", "evict", "restore")
    }
    per_domain_window = secs(spec.evictions.per_domain.window, "evictions.perDomain.window")
    cluster_window = secs(spec.evictions.cluster.window, "evictions.cluster.window")
    victim_limit = secs(spec.victim_time_limit, "victimTimeLimit")
    hold = secs(spec.feedback.hold, "feedback.hold", zero=True)
    duration = secs(spec.lease.duration, "lease.duration")
    renew = secs(spec.lease.renew_deadline, "lease.renewDeadline")
    retry = secs(spec.lease.retry_period, "lease.retryPeriod")
    if duration and renew and renew >= duration:
        problems.append(
            f"{where}.lease.renewDeadline: must be shorter than lease.duration "
            f"({renew:g}s ≥ {duration:g}s), or a leader could act after another took over"
        )
    if renew and retry and retry >= renew:
        problems.append(
            f"{where}.lease.retryPeriod: must be shorter than lease.renewDeadline "
            f"({retry:g}s ≥ {renew:g}s), or the leader loses the lease between two tries"
        )
    state_interval = secs(spec.state.min_interval, "state.minInterval", zero=True)
    name = spec.state.config_map
    if name and not (len(name) <= 253 and _DNS_SUBDOMAIN.fullmatch(name)):
        problems.append(
            f"{where}.state.configMap: {name!r} is not a ConfigMap name (lower-case letters, "
            "digits, '-' and '.'); \"\" keeps the controller's memory in the process only"
        )
    capping, floors = _limits(spec.power_limits, where, problems)
    cap_settle = secs(spec.power_limits.settle.cap, "powerLimits.settle.cap", zero=True)
    uncap_settle = secs(spec.power_limits.settle.restore, "powerLimits.settle.restore", zero=True)
    limit_hold = secs(spec.power_limits.settle.hold, "powerLimits.settle.hold", zero=True)
    before = len(problems)
    max_hold = secs(spec.power_limits.settle.max_hold, "powerLimits.settle.maxHold", zero=True)
    if max_hold < limit_hold and len(problems) == before:
        problems.append(
            f"{where}.powerLimits.settle.maxHold: {max_hold:g}s is shorter than "
            f"settle.hold ({limit_hold:g}s); give at least the hold, such as 24h"
        )
    agent_timeout = secs(spec.power_limits.agent_timeout, "powerLimits.agentTimeout")
    cap_grace = secs(spec.power_limits.grace, "powerLimits.grace", zero=True)
    if capping is not None:
        # The breach starts after the shorter grace; the rungs that cost replicas wait on.
        cap_grace = min(cap_grace, grace)
        escalate_after = grace - cap_grace
    else:
        cap_grace, escalate_after = grace, 0.0
    if spec.annotations.original_max_replicas == spec.annotations.reshaped_by:
        problems.append(f"{where}.annotations: originalMaxReplicas and reshapedBy must differ")
    if problems:
        return None, problems
    return (
        ControllerSettings(
            enabled=spec.enabled,
            dry_run=spec.dry_run,
            period_s=period,
            breach=BreachSettings(spec.tolerance, spec.hysteresis, cap_grace),
            ladder=LadderSettings(
                protect_priority=spec.protect_priority,
                reshape_settle_s=settle["reshape"],
                evict_settle_s=settle["evict"],
                restore_settle_s=settle["restore"],
                reshape_rounds=spec.reshape_rounds,
                restore_margin=spec.restore_margin,
                cap_settle_s=cap_settle,
                uncap_settle_s=uncap_settle,
                limit_hold_s=limit_hold,
                limit_hold_max_s=max_hold,
                escalate_after_s=escalate_after,
            ),
            per_domain=RateLimit(spec.evictions.per_domain.limit, per_domain_window),
            cluster=RateLimit(spec.evictions.cluster.limit, cluster_window),
            victim_time_limit_s=victim_limit,
            hold_s=hold,
            priority_label=spec.priority_label,
            service_label=spec.scaled_objects.service_label,
            namespaces=tuple(spec.scaled_objects.namespaces),
            original_max_annotation=spec.annotations.original_max_replicas,
            reshaped_by_annotation=spec.annotations.reshaped_by,
            lease=LeaseSettings(
                name=spec.lease.name,
                namespace=spec.lease.namespace,
                duration_s=duration,
                renew_deadline_s=renew,
                retry_period_s=retry,
            ),
            state_config_map=name,
            state_min_interval_s=state_interval,
            capping=capping,
            floors=floors,
            capped_by_annotation=spec.power_limits.capped_by_annotation,
            agent_timeout_s=agent_timeout,
        ),
        [],
    )
