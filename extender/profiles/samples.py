"""Per-pod power history from Prometheus, turned into learned profiles.

:func:`learn` runs :func:`fetch_samples` — the range query (:func:`default_query`, or the
user's) over the window cut into chunks by :func:`windows`, each answer added to
:class:`Samples` by :func:`add_matrix` — then :func:`placement.learning.learn_profiles`,
and returns a :class:`LearnResult`. :class:`LearnSettings` holds every option of
``powercap profiles learn`` besides the client; :func:`prometheus_client` builds a client
that fails fast. Bad input and failed queries raise :class:`LearnError`, naming the option
and the fix.

The CLI is :mod:`powercap.commands.profiles`, the output files
:mod:`extender.profiles.documents`, the refresh while serving
:mod:`extender.profiles.refresh`. What is queried and why (the join through
kube-state-metrics, the GPU idle, chunks, custom queries, exit codes): docs/power.md,
"Learned profiles".
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from prometheus_api_client.exceptions import PrometheusApiClientException
from prometheus_api_client.prometheus_connect import PrometheusConnect
from urllib3.util.retry import Retry

from extender.config.power import DCGM_METRIC
from placement.grid import Grid
from placement.learning import (
    DEFAULT_MIN_SAMPLES,
    DEFAULT_QUANTILE,
    FILL_POLICIES,
    FillPolicy,
    LearnedProfile,
    learn_profiles,
    thin_problems,
)

log = logging.getLogger(__name__)


DEFAULT_SERVICE_LABEL = "powercap.io/service"


DEFAULT_LABELS_METRIC = "kube_pod_labels"


class LearnError(ValueError):
    """Bad input or a failed query; the message names the option and the fix."""


# --- pure: queries and windows ---------------------------------------------------------
def promql_label(kubernetes_label: str) -> str:
    """The label kube-state-metrics gives a Kubernetes pod label in ``kube_pod_labels``:
    ``label_`` + the name with every character outside ``[a-zA-Z0-9_]`` as ``_``."""
    if not kubernetes_label:
        raise LearnError("--service-label: give the pod label naming the service")
    return "label_" + re.sub(r"[^a-zA-Z0-9_]", "_", kubernetes_label)


def default_query(
    service_label: str,
    gpu_idle_w: float = 0.0,
    metric: str = DCGM_METRIC,
    *,
    labels_metric: str = DEFAULT_LABELS_METRIC,
) -> str:
    """The PromQL of watts per pod above GPU idle, labelled with the pod's service."""
    power = f'{metric}{{pod!=""}}'
    if gpu_idle_w:
        power = f"{power} - {gpu_idle_w:g}"
    return (
        f"sum by (namespace, pod) ({power})"
        f" * on (namespace, pod) group_left ({service_label})"
        f" max by (namespace, pod, {service_label})"
        f' ({labels_metric}{{{service_label}!=""}})'
    )


def windows(start: float, end: float, resolution_s: int, *, chunk_s: int) -> list[tuple[int, int]]:
    """Inclusive ``(first, last)`` evaluation instants of consecutive range queries
    covering ``[start, end]`` on multiples of ``resolution_s``, each at most
    ``chunk_s`` long; no instant is evaluated twice."""
    first = math.ceil(start / resolution_s) * resolution_s
    last = math.floor(end / resolution_s) * resolution_s
    points = max(1, chunk_s // resolution_s)
    out: list[tuple[int, int]] = []
    at = first
    while at <= last:
        stop = min(at + (points - 1) * resolution_s, last)
        out.append((at, stop))
        at = stop + resolution_s
    return out


@dataclass
class Samples:
    """Samples per service gathered from range answers, in arrival order."""

    times: dict[str, list[NDArray[np.float64]]] = field(default_factory=dict)
    watts: dict[str, list[NDArray[np.float64]]] = field(default_factory=dict)
    pods: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def add(self, service: str, pod: tuple[str, str], t: NDArray[Any], *, w: NDArray[Any]) -> None:
        self.times.setdefault(service, []).append(t)
        self.watts.setdefault(service, []).append(w)
        self.pods.setdefault(service, set()).add(pod)

    def arrays(self) -> dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]]:
        return {
            s: (np.concatenate(self.times[s]), np.concatenate(self.watts[s])) for s in self.times
        }


def add_matrix(samples: Samples, result: Any, service_label: str) -> None:
    """Add the series of one range answer (``data.result`` of a matrix) to ``samples``.
    A series without the service label is left out and named in ``samples.problems``;
    an answer that is not a matrix raises :class:`LearnError`."""
    if not isinstance(result, list):
        raise LearnError(
            f"the query returned {type(result).__name__}, not a range vector; --query must "
            "give an instant-vector expression (no [range] selector, no scalar)"
        )
    for series in result:
        if not isinstance(series, Mapping) or "values" not in series:
            raise LearnError(
                "the query did not return a range vector; --query must give an "
                "instant-vector expression with one series per pod"
            )
        labels = series.get("metric") or {}
        service = labels.get(service_label)
        if not service:
            problem = (
                f"series without the {service_label!r} label left out: {dict(labels)}"
                f" (--service-label, or --query's labels?)"
            )
            if problem not in samples.problems:
                samples.problems.append(problem)
            continue
        values = series["values"]
        if not values:
            continue
        t = np.fromiter((float(v[0]) for v in values), dtype=np.float64, count=len(values))
        w = np.array([v[1] for v in values], dtype=np.float64)
        pod = (str(labels.get("namespace", "")), str(labels.get("pod", "")))
        samples.add(str(service), pod, t, w=w)


# --- the edge: Prometheus ------------------------------------------------------------------
class Fill(StrEnum):
    none = "none"
    nearest = "nearest"


class RangeClient(Protocol):
    """What the learner needs of ``PrometheusConnect``."""

    def custom_query_range(
        self, query: str, start_time: datetime, end_time: datetime, step: str, params: Any = ...
    ) -> Any: ...


@dataclass(frozen=True)
class LearnSettings:
    """Everything ``profiles learn`` needs besides the client (see the module docstring)."""

    url: str
    query: str
    service_label: str  # the label of the query's series that names the service
    grid: Grid
    start: float
    end: float
    resolution_s: int = 60
    chunk_s: int = 6 * 3600
    quantile: float = DEFAULT_QUANTILE
    min_samples: int = DEFAULT_MIN_SAMPLES
    fill: FillPolicy = "none"
    services: tuple[str, ...] = ()  # only these; empty: every service found

    @property
    def since_s(self) -> int:
        return round(self.end - self.start)


def fetch_samples(client: RangeClient, settings: LearnSettings) -> Samples:
    """Run the range query over every chunk of the window; raises :class:`LearnError`
    naming the failing chunk when Prometheus refuses or cannot be reached."""
    samples = Samples()
    chunks = windows(settings.start, settings.end, settings.resolution_s, chunk_s=settings.chunk_s)
    for first, last in chunks:
        try:
            result = client.custom_query_range(
                settings.query,
                start_time=datetime.fromtimestamp(first, UTC),
                end_time=datetime.fromtimestamp(last, UTC),
                step=f"{settings.resolution_s}s",
            )
        except PrometheusApiClientException as exc:
            raise LearnError(
                f"Prometheus at {settings.url} refused the query for "
                f"{iso_time(first)}–{iso_time(last)}: {exc}; check --query (or --service-label)"
            ) from exc
        except OSError as exc:  # requests' errors are OSErrors
            raise LearnError(
                f"cannot query Prometheus at {settings.url}: {_reason(exc)}; check --prometheus"
            ) from exc
        add_matrix(samples, result, settings.service_label)
    if settings.services:
        wanted = set(settings.services)
        for name in list(samples.times):
            if name not in wanted:
                del samples.times[name], samples.watts[name], samples.pods[name]
    return samples


def _reason(exc: OSError) -> str:
    """The cause of a connection error, without the request URL (the whole PromQL)
    that requests puts in front of it."""
    text = str(exc)
    cause = text.rpartition("Caused by ")[2]
    return cause.removesuffix(")") if cause != text else text


def iso_time(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class LearnResult:
    learned: dict[str, LearnedProfile]
    pods: dict[str, int]
    problems: list[str]  # series left out
    thin: list[str]  # thin slots left without a value; non-empty means incomplete


def learn(client: RangeClient, settings: LearnSettings) -> LearnResult:
    """Fetch the history and learn every service's profile."""
    samples = fetch_samples(client, settings)
    learned = learn_profiles(
        samples.arrays(),
        settings.grid,
        settings.quantile,
        min_samples=settings.min_samples,
        fill=settings.fill,
    )
    thin = [line for lp in learned.values() for line in thin_problems(lp, settings.grid)]
    pods = {s: len(samples.pods.get(s, ())) for s in learned}
    return LearnResult(learned, pods, samples.problems, thin)


def prometheus_client(url: str, timeout_s: float) -> PrometheusConnect:
    """A client that fails fast (no retries) with a per-request timeout."""
    return PrometheusConnect(
        url=url,
        timeout=max(1, math.ceil(timeout_s)),
        retry=Retry(total=0, connect=0, read=0, status=0),
    )


assert tuple(f.value for f in Fill) == FILL_POLICIES
