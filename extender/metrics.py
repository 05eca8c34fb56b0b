"""Prometheus metrics of the extender, on a registry of its own (one per app, so
tests and benchmarks can build many apps in one process).

* ``powercap_extender_request_seconds{verb}`` — latency histogram per verb;
* ``powercap_extender_decisions_total{verb,outcome}`` — what the decisions were;
* ``powercap_domain_predicted_headroom_watts{domain}`` — least cap − load over the
  period, computed from the ledger at scrape time;
* ``powercap_mirror_lag_seconds{resource}`` — time since the mirror last heard from
  the API server (an event, a bookmark or a list);
* ``powercap_mirror_relists_total{resource}`` — full lists after the first: watches
  whose resourceVersion expired (``410 Gone``) and were replaced by a relist;
* ``powercap_plan_age_seconds``, ``powercap_plan_gap``, ``powercap_plan_hosted_replicas``
  — the latest plan's age, the solver's relative gap to its bound, and what it hosts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from extender.state import ClusterState

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
        for resource, count in sorted(t.mirror_relists.items()):
            relists.add_metric([resource], float(count))
        yield relists
        plan = t.plan_info() if t.plan_info is not None else None
        age = GaugeMetricFamily("powercap_plan_age_seconds", "Seconds since the latest plan.")
        gap = GaugeMetricFamily(
            "powercap_plan_gap", "Relative gap of the latest plan to the solver's bound."
        )
        hosted = GaugeMetricFamily(
            "powercap_plan_hosted_replicas", "Replicas the latest plan hosts."
        )
        if plan is not None:
            created, plan_gap, plan_hosted = plan
            age.add_metric([], now - created)
            if plan_gap is not None:
                gap.add_metric([], plan_gap)
            hosted.add_metric([], plan_hosted)
        yield age
        yield gap
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
        # Children are cached: labels() costs a lock and a dict lookup per call.
        self._latency_child = {
            v: self.latency.labels(v) for v in ("filter", "prioritize", "bind", "preempt")
        }

    def observe(self, verb: str, seconds: float) -> None:
        child = self._latency_child.get(verb) or self.latency.labels(verb)
        child.observe(seconds)

    def decided(self, verb: str, outcome: str, count: int = 1) -> None:
        self.decisions.labels(verb, outcome).inc(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)
