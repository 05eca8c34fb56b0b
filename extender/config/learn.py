"""Re-learning profiles while serving: the ``learn:`` section of the powercap config.

::

    learn:
      refresh: 6h                 # re-learn this often (absent: never)
      prometheus: http://prometheus-operated.monitoring.svc:9090   # default: power.url
      since: 14d
      quantile: 0.95
      resolution: 1m
      chunk: 6h
      minSamples: 10
      fill: none                  # none | nearest
      gpuIdleWatts: 60
      serviceLabel: powercap.io/service

The fields mean what the options of ``powercap profiles learn`` of the same names mean
(docs/power.md, "Learned profiles"); :class:`LearnSpec` is the section as written,
:class:`LearnRefreshSettings` the resolved one. A refresh replaces, for every service it
learned completely, the service's profile; a service it could not learn keeps the profile
the config gives.

:func:`resolve_learn` returns ``learn.<field>: message`` problems so the config loader
reports them with every other problem. This module imports no HTTP client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from extender.config.power import DCGM_METRIC
from placement.grid import format_duration
from placement.learning import DEFAULT_MIN_SAMPLES, DEFAULT_QUANTILE
from placement.validation import seconds_or_problem

# Prometheus's hard limit of points per series in one range query.
MAX_POINTS = 11_000


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class LearnSpec(_Model):
    """The ``learn:`` section, as written."""

    refresh: str | int | None = None
    prometheus: str | None = None
    since: str | int = "14d"
    quantile: float = Field(default=DEFAULT_QUANTILE, gt=0, le=1)
    resolution: str | int = "1m"
    chunk: str | int = "6h"
    min_samples: int = Field(default=DEFAULT_MIN_SAMPLES, ge=1, alias="minSamples")
    fill: Literal["none", "nearest"] = "none"
    gpu_idle_watts: float = Field(default=0.0, ge=0, alias="gpuIdleWatts")
    service_label: str = Field(default="powercap.io/service", alias="serviceLabel", min_length=1)
    metric: str = Field(default=DCGM_METRIC, min_length=1)
    labels_metric: str = Field(default="kube_pod_labels", alias="labelsMetric", min_length=1)
    query: str | None = None
    timeout: str | int = "60s"

    @field_validator("prometheus")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL of Prometheus, got {v!r}")
        return v.rstrip("/") if v is not None else None


@dataclass(frozen=True)
class LearnRefreshSettings:
    """The resolved ``learn:`` section: how often and how to re-learn."""

    interval_s: float
    url: str
    since_s: int
    quantile: float = DEFAULT_QUANTILE
    resolution_s: int = 60
    chunk_s: int = 6 * 3600
    min_samples: int = DEFAULT_MIN_SAMPLES
    fill: Literal["none", "nearest"] = "none"
    gpu_idle_w: float = 0.0
    service_label: str = "powercap.io/service"
    metric: str = DCGM_METRIC
    labels_metric: str = "kube_pod_labels"
    query: str | None = None
    timeout_s: float = 60.0


def resolve_learn(
    spec: LearnSpec, power_url: str | None, grid_step_s: int, *, where: str = "learn"
) -> tuple[LearnRefreshSettings | None, list[str]]:
    """Settings from a spec (``None`` when ``refresh`` is not set), or ``None`` and the
    ``where.field: message`` problems. ``power_url`` is ``power.url`` when the config
    has a power section: the default Prometheus."""
    problems: list[str] = []
    interval = (
        seconds_or_problem(spec.refresh, f"{where}.refresh", problems)
        if spec.refresh is not None
        else 0.0
    )
    since = seconds_or_problem(spec.since, f"{where}.since", problems)
    resolution = seconds_or_problem(spec.resolution, f"{where}.resolution", problems)
    chunk = seconds_or_problem(spec.chunk, f"{where}.chunk", problems)
    timeout = seconds_or_problem(spec.timeout, f"{where}.timeout", problems)
    url = spec.prometheus or power_url
    if url is None:
        problems.append(
            f"{where}.prometheus: give the Prometheus URL to learn from (or a power: section, "
            "whose url is the default)"
        )
    if resolution and chunk and chunk // resolution > MAX_POINTS:
        problems.append(
            f"{where}.chunk: {chunk // resolution:.0f} points per series at resolution "
            f"{format_duration(int(resolution))}; Prometheus allows {MAX_POINTS}: shorten it"
        )
    if resolution > grid_step_s:
        problems.append(
            f"{where}.resolution: coarser than the grid step {format_duration(grid_step_s)}; "
            "some slots would get no samples: lower it"
        )
    if since and resolution and since < resolution:
        problems.append(f"{where}.since: shorter than the resolution")
    if spec.query is not None and spec.gpu_idle_watts:
        problems.append(
            f"{where}.gpuIdleWatts: applies to the built-in query only; subtract the idle "
            "inside query, or drop query"
        )
    if problems or url is None or spec.refresh is None:
        return None, problems
    return (
        LearnRefreshSettings(
            interval_s=interval,
            url=url,
            since_s=int(since),
            quantile=spec.quantile,
            resolution_s=int(resolution),
            chunk_s=int(chunk),
            min_samples=spec.min_samples,
            fill=spec.fill,
            gpu_idle_w=spec.gpu_idle_watts,
            service_label=spec.service_label,
            metric=spec.metric,
            labels_metric=spec.labels_metric,
            query=spec.query,
            timeout_s=timeout,
        ),
        [],
    )
