"""Prometheus metrics of the extender, on a registry of its own (one per app, so
tests and benchmarks can build many apps in one process).

* ``powercap_build_info{version,revision,python_version}`` — always 1: which build runs
  (``revision`` from ``POWERCAP_REVISION``, else ``unknown``);
* ``powercap_extender_request_seconds{verb}`` — latency histogram per verb;
* ``powercap_extender_decisions_total{verb,outcome}`` — what the decisions were;
* ``powercap_domain_predicted_headroom_watts{domain}`` — least cap − load over the
  period, computed from the ledger at scrape time;
* ``powercap_mirror_lag_seconds{resource}`` — time since the mirror last heard from
  the API server (an event, a bookmark or a list);
* ``powercap_mirror_relists_total{resource}`` — full lists after the first: watches
  whose resourceVersion expired (``410 Gone``) and were replaced by a relist;
* ``powercap_plan_age_seconds``, ``powercap_plan_gap_ratio``,
  ``powercap_plan_hosted_replicas`` — the latest plan's age, the solver's relative gap to
  its bound, and what it hosts.

Renamed metrics (to Prometheus's naming conventions: base units, ``_ratio``) keep their
old name for one release, exported alongside with a HELP that starts ``Deprecated: use
<new>; removed in 0.3`` (:class:`DeprecatedAlias`): ``powercap_plan_gap``,
``powercap_domain_cap_fraction``, ``powercap_emissions_kg_total``,
``powercap_emission_budget_remaining_kg``, ``powercap_emission_budget_projected_kg``,
``powercap_emission_budget_cap_fraction``. :data:`RENAMED` maps each to its new name.

The companion controller's metrics (:class:`ControllerMetrics`) and those of the live
carbon caps (:class:`CarbonMetrics`) join the same registry when they run (see
``docs/controller.md`` and ``docs/carbon.md`` for the lists).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from extender.cluster.state import ClusterState

DISTRIBUTION = "powercap-scheduler"
# The source revision the running build came from: set by the image build (a build
# argument passed on as this variable); absent, the revision label is "unknown".
REVISION_ENV = "POWERCAP_REVISION"

# Decisions take well under a millisecond; the scheduler gives up after httpTimeout (5 s).
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
    5.0,
)


# Outcomes of any verb that mean the extender could not answer (the last two: refused by
# a bound of powercap serve); binds that failed.
ERROR_OUTCOMES = ("bad_request", "internal_error", "too_large", "busy")
BIND_FAILURES = ("api_error", "over_cap")


def build_labels() -> dict[str, str]:
    """The labels of ``powercap_build_info``: the installed distribution's version, the
    Python running it, and the source revision when the build recorded one."""
    from importlib import metadata

    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "version": version,
        "revision": os.environ.get(REVISION_ENV, "").strip() or "unknown",
        "python_version": platform.python_version(),
    }


# Renamed metrics keep their old name for one release, exported alongside the new one.
REMOVED_IN = "0.3"
# Old name → new name, as exposed (counters with their _total).
RENAMED = {
    "powercap_plan_gap": "powercap_plan_gap_ratio",
    "powercap_domain_cap_fraction": "powercap_domain_cap_ratio",
    "powercap_emissions_kg_total": "powercap_emissions_grams_total",
    "powercap_emission_budget_remaining_kg": "powercap_emission_budget_remaining_grams",
    "powercap_emission_budget_projected_kg": "powercap_emission_budget_projected_grams",
    "powercap_emission_budget_cap_fraction": "powercap_emission_budget_cap_ratio",
}
GRAMS_PER_KG = 1000.0


def deprecated_help(new_name: str, help_text: str) -> str:
    """The HELP of a deprecated name: what to use instead and when it goes."""
    return f"Deprecated: use {new_name}; removed in {REMOVED_IN}. {help_text}"


class DeprecatedAlias(Collector):
    """Exports ``source`` (a :class:`Gauge` or :class:`Counter`) a second time under its
    old name ``old_name``, every value times ``scale`` (the old unit per new unit: 1/1000
    from grams back to kg), read at scrape time, so no call site sets two metrics."""

    def __init__(self, source: Gauge | Counter, old_name: str, *, scale: float = 1.0) -> None:
        self.source = source
        self.old_name = old_name
        self.scale = scale

    def collect(self) -> Iterator[Metric]:
        for family in self.source.collect():
            if family.type == "counter":
                out: Metric = CounterMetricFamily(
                    self.old_name, deprecated_help(family.name + "_total", family.documentation)
                )
                suffix = "_total"
            else:
                out = GaugeMetricFamily(
                    self.old_name, deprecated_help(family.name, family.documentation)
                )
                suffix = ""
            for sample in family.samples:
                if sample.name == family.name + suffix:
                    out.add_sample(
                        self.old_name + suffix, dict(sample.labels), sample.value * self.scale
                    )
            yield out


class _StateCollector(Collector):
    """Gauges read from live objects at scrape time, so decisions never pay for them."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        t = self.telemetry
        headroom = GaugeMetricFamily(
            "powercap_domain_predicted_headroom_watts",
            "Least predicted cap minus load over the period, per domain (effective caps).",
            labels=["domain"],
        )
        if t.state is not None:
            values = t.state.headroom_watts()
            for name, value in zip(t.state.tree.names, values, strict=True):
                headroom.add_metric([name], float(value))
        yield headroom
        lag = GaugeMetricFamily(
            "powercap_mirror_lag_seconds",
            "Seconds since the mirror last heard from the API server, per resource.",
            labels=["resource"],
        )
        now = time.monotonic()
        for resource, seen in sorted(t.mirror_seen.items()):
            lag.add_metric([resource], now - seen)
        yield lag
        relists = CounterMetricFamily(
            "powercap_mirror_relists",
            "Full lists after the first, per resource: each follows an expired watch (410).",
            labels=["resource"],
        )
        # Every resource the mirror has heard of gets a series from its first list on, at
        # 0 until a relist: a counter born at its first increment hides that increment
        # from increase() and rate(), and the relist alert would miss it.
        for resource in sorted(set(t.mirror_seen) | set(t.mirror_relists)):
            relists.add_metric([resource], float(t.mirror_relists.get(resource, 0)))
        yield relists
        plan = t.plan_info() if t.plan_info is not None else None
        age = GaugeMetricFamily("powercap_plan_age_seconds", "Seconds since the latest plan.")
        gap_help = "Relative gap of the latest plan to the solver's bound (0-1)."
        gap = GaugeMetricFamily("powercap_plan_gap_ratio", gap_help)
        old_gap = GaugeMetricFamily(
            "powercap_plan_gap", deprecated_help("powercap_plan_gap_ratio", gap_help)
        )
        hosted = GaugeMetricFamily(
            "powercap_plan_hosted_replicas", "Replicas the latest plan hosts."
        )
        if plan is not None:
            created, plan_gap, plan_hosted = plan
            age.add_metric([], now - created)
            if plan_gap is not None:
                gap.add_metric([], plan_gap)
                old_gap.add_metric([], plan_gap)
            hosted.add_metric([], plan_hosted)
        yield age
        yield gap
        yield old_gap
        yield hosted


class Telemetry:
    """The extender's metrics. ``plan_info`` returns ``(created_monotonic, gap, hosted)``
    of the latest plan or ``None``; ``mirror_seen`` maps resource → monotonic time,
    ``mirror_relists`` resource → relists so far (both filled by the mirror)."""

    def __init__(self, state: ClusterState | None = None) -> None:
        self.registry = CollectorRegistry()
        self.state = state
        self.mirror_seen: dict[str, float] = {}
        self.mirror_relists: dict[str, int] = {}
        self.plan_info: Callable[[], tuple[float, float | None, int] | None] | None = None
        self.latency = Histogram(
            "powercap_extender_request_seconds",
            "Time to answer a scheduler request, per verb.",
            ["verb"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.decisions = Counter(
            "powercap_extender_decisions",
            "Decisions by verb and outcome.",
            ["verb", "outcome"],
            registry=self.registry,
        )
        self.registry.register(_StateCollector(self))
        labels = build_labels()
        self.build_info = Gauge(
            "powercap_build_info",
            "Always 1; the labels say which build runs: version, revision, python_version.",
            list(labels),
            registry=self.registry,
        )
        self.build_info.labels(**labels).set(1)
        # Children are cached: labels() costs a lock and a dict lookup per call.
        self._latency_child = {
            v: self.latency.labels(v) for v in ("filter", "prioritize", "bind", "preempt")
        }
        # The error outcomes the alerts watch exist at 0 from the start: a counter born at
        # its first increment hides that increment from rate() and increase().
        for verb in self._latency_child:
            for outcome in ERROR_OUTCOMES:
                self.decisions.labels(verb, outcome)
        for outcome in BIND_FAILURES:
            self.decisions.labels("bind", outcome)

    def observe(self, verb: str, seconds: float) -> None:
        child = self._latency_child.get(verb) or self.latency.labels(verb)
        child.observe(seconds)

    def decided(self, verb: str, outcome: str, count: int = 1) -> None:
        self.decisions.labels(verb, outcome).inc(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ControllerMetrics:
    """The companion controller's metrics, registered on ``registry`` (the extender's,
    so one ``/metrics`` serves both). Only created when a controller runs, so an
    extender without one exports none of them.

    * ``powercap_controller_actions_total{kind,domain,dry_run}`` — steps taken (or, in
      dry-run, decided): ``cap``, ``uncap`` (one per node), ``reshape``, ``restore``,
      ``evict`` (one per pod);
    * ``powercap_controller_action_failures_total{kind,domain,reason}`` — steps the API
      refused: ``blocked`` (an eviction a PodDisruptionBudget does not allow now, 429),
      ``conflict`` (the object changed under the patch), ``error``;
    * ``powercap_domain_measured_watts{domain}`` — measured power (NaN when unknown);
    * ``powercap_domain_cap_watts{domain}`` — the raw cap of the current slot;
    * ``powercap_domain_in_breach{domain}`` — 1 while in breach;
    * ``powercap_domain_power_stale{domain}`` — 1 when some node below has no fresh reading;
    * ``powercap_domain_feedback_watts{domain}`` — watts added to the ledger's current slot
      for breached domains (own amount plus everything below);
    * ``powercap_power_data_stale`` — 1 when Prometheus failed or any node's reading is
      not fresh: the controller takes no action where data is missing, so alert on it;
    * ``powercap_power_nodes{status}`` — nodes by reading status (fresh, stale, missing);
    * ``powercap_controller_gpu_limit_ratio{node}`` — the power limit in force over the
      default, per node, as its NodePowerLimit status reports it (1: uncapped);
    * ``powercap_controller_throughput_lost_ratio{domain}`` — estimated relative throughput
      the domain's busy GPUs lose at their limits (by the throughput curve);
    * ``powercap_controller_leader`` — 1 while this process holds the Lease;
    * ``powercap_controller_last_tick_timestamp_seconds`` — when the last tick finished.
    """

    # The (kind, reason) pairs a step can fail with: an Eviction is refused by a budget
    # (blocked), finds its pod gone or fails otherwise; a patch conflicts or fails.
    FAILURES = (
        ("cap", "conflict"),
        ("cap", "error"),
        ("uncap", "conflict"),
        ("uncap", "error"),
        ("evict", "blocked"),
        ("evict", "gone"),
        ("evict", "error"),
        ("reshape", "conflict"),
        ("reshape", "error"),
        ("restore", "conflict"),
        ("restore", "error"),
    )
    KINDS = ("cap", "uncap", "reshape", "restore", "evict")

    def __init__(self, registry: CollectorRegistry) -> None:
        self.actions = Counter(
            "powercap_controller_actions",
            "Controller steps per kind and domain (dry_run: decided, not taken).",
            ["kind", "domain", "dry_run"],
            registry=registry,
        )
        self.failures = Counter(
            "powercap_controller_action_failures",
            "Controller steps the API refused, per kind, domain and reason.",
            ["kind", "domain", "reason"],
            registry=registry,
        )
        self.measured = Gauge(
            "powercap_domain_measured_watts",
            "Measured power per domain (NaN when some node below has no fresh reading).",
            ["domain"],
            registry=registry,
        )
        self.cap = Gauge(
            "powercap_domain_cap_watts",
            "Raw cap of the current slot per domain.",
            ["domain"],
            registry=registry,
        )
        self.in_breach = Gauge(
            "powercap_domain_in_breach",
            "1 while the domain is in breach of its cap.",
            ["domain"],
            registry=registry,
        )
        self.domain_stale = Gauge(
            "powercap_domain_power_stale",
            "1 when some node below the domain has no fresh power reading.",
            ["domain"],
            registry=registry,
        )
        self.feedback = Gauge(
            "powercap_domain_feedback_watts",
            "Watts the controller adds to the predicted load of breached domains.",
            ["domain"],
            registry=registry,
        )
        self.stale = Gauge(
            "powercap_power_data_stale",
            "1 when the power source failed or any node's reading is stale or missing.",
            registry=registry,
        )
        self.nodes = Gauge(
            "powercap_power_nodes",
            "Nodes by power reading status.",
            ["status"],
            registry=registry,
        )
        self.gpu_limit = Gauge(
            "powercap_controller_gpu_limit_ratio",
            "Power limit in force over the default limit, per node (1: uncapped).",
            ["node"],
            registry=registry,
        )
        self.throughput_lost = Gauge(
            "powercap_controller_throughput_lost_ratio",
            "Estimated relative throughput the domain's busy GPUs lose at their power limits.",
            ["domain"],
            registry=registry,
        )
        self.leader = Gauge(
            "powercap_controller_leader",
            "1 while this process holds the controller's Lease.",
            registry=registry,
        )
        self.last_tick = Gauge(
            "powercap_controller_last_tick_timestamp_seconds",
            "Unix time the controller's last tick finished.",
            registry=registry,
        )

    def zero(self, domains: Iterable[str], dry_run: bool) -> None:
        """Create every action and failure series of ``domains`` at 0, so the first step
        of each counts in increase() and rate() (a counter born at its first increment
        hides that increment) and dashboards show the series before anything happens."""
        flag = "true" if dry_run else "false"
        for domain in domains:
            for kind in self.KINDS:
                self.actions.labels(kind, domain, flag)
            for kind, reason in self.FAILURES:
                self.failures.labels(kind, domain, reason)


class CarbonMetrics:
    """The live caps loop's metrics (``extender/carbon/loop.py``), registered on
    ``registry`` when the config has an ``intensity:`` section.

    * ``powercap_carbon_intensity_grams_per_kwh{source}`` — the intensity in use (NaN on
      fallback);
    * ``powercap_carbon_source_status{source,status}`` — 1 for the current status
      (``live``, ``last-good``, ``fallback``), 0 for the others;
    * ``powercap_carbon_source_errors_total{source,call}`` — polls whose ``latest`` or
      ``forecast`` call failed (after retries);
    * ``powercap_domain_cap_watts{domain}`` — the raw cap of the current slot; the
      controller's gauge when a controller runs (``cap``), else one of its own;
    * ``powercap_domain_cap_ratio{domain}`` — that cap over the configured one;
    * ``powercap_emissions_grams_total{domain}`` — grams CO2e since start, from measured
      power where fresh, else predicted;
    * ``powercap_emissions_cost_eur_total{domain}`` — the same at the configured EUA price
      (only with ``euaPrice``);
    * ``powercap_emission_budget_remaining_grams{domain,window}``,
      ``powercap_emission_budget_projected_grams{domain,window}`` — a budget's grams left
      and the window's projection at the current rate;
    * ``powercap_emission_budget_cap_ratio{domain,window}`` — the largest cap fraction
      the budget allows now (1 when it does not bind);

    and, until 0.3, the deprecated names of the renamed ones (``..._fraction``, ``..._kg``).
    * ``powercap_carbon_last_poll_timestamp_seconds`` — when the last poll finished.
    """

    STATUSES = ("live", "last-good", "fallback")
    CALLS = ("latest", "forecast")

    def __init__(self, registry: CollectorRegistry, cap: Gauge | None = None) -> None:
        self.intensity = Gauge(
            "powercap_carbon_intensity_grams_per_kwh",
            "Grid carbon intensity in use, gCO2e/kWh (NaN on fallback).",
            ["source"],
            registry=registry,
        )
        self.status = Gauge(
            "powercap_carbon_source_status",
            "1 for the intensity source's current status: live, last-good or fallback.",
            ["source", "status"],
            registry=registry,
        )
        self.errors = Counter(
            "powercap_carbon_source_errors",
            "Polls whose call to the intensity source failed after retries, per call.",
            ["source", "call"],
            registry=registry,
        )
        self.cap = cap or Gauge(
            "powercap_domain_cap_watts",
            "Raw cap of the current slot per domain.",
            ["domain"],
            registry=registry,
        )
        self.cap_ratio = Gauge(
            "powercap_domain_cap_ratio",
            "Cap of the current slot over the configured cap, per domain.",
            ["domain"],
            registry=registry,
        )
        self.emissions = Counter(
            "powercap_emissions_grams",
            "Emissions in grams CO2e per domain: measured (else predicted) power × intensity.",
            ["domain"],
            registry=registry,
        )
        self.cost = Counter(
            "powercap_emissions_cost_eur",
            "Emissions priced at the configured EUA price, EUR per domain.",
            ["domain"],
            registry=registry,
        )
        self.budget_remaining = Gauge(
            "powercap_emission_budget_remaining_grams",
            "Emission budget left in the current window, grams CO2e (negative: over).",
            ["domain", "window"],
            registry=registry,
        )
        self.budget_projected = Gauge(
            "powercap_emission_budget_projected_grams",
            "Emissions projected for the whole window at the current rate, grams CO2e.",
            ["domain", "window"],
            registry=registry,
        )
        self.budget_ratio = Gauge(
            "powercap_emission_budget_cap_ratio",
            "Largest cap fraction the emission budget allows now (1: it does not bind).",
            ["domain", "window"],
            registry=registry,
        )
        kg = 1.0 / GRAMS_PER_KG
        for source, old, scale in (
            (self.cap_ratio, "powercap_domain_cap_fraction", 1.0),
            (self.emissions, "powercap_emissions_kg", kg),
            (self.budget_remaining, "powercap_emission_budget_remaining_kg", kg),
            (self.budget_projected, "powercap_emission_budget_projected_kg", kg),
            (self.budget_ratio, "powercap_emission_budget_cap_fraction", 1.0),
        ):
            registry.register(DeprecatedAlias(source, old, scale=scale))
        self.last_poll = Gauge(
            "powercap_carbon_last_poll_timestamp_seconds",
            "Unix time the live caps loop last polled the intensity source.",
            registry=registry,
        )

    def zero(self, source: str, domains: Iterable[str], priced: bool) -> None:
        """Create the counters' series at 0 (a counter born at its first increment hides
        that increment from increase() and rate())."""
        for call in self.CALLS:
            self.errors.labels(source, call)
        for domain in domains:
            self.emissions.labels(domain)
            if priced:
                self.cost.labels(domain)
