"""Measured power per node from Prometheus, and its sums per power domain.

:class:`PrometheusPowerSource` runs two instant queries through ``prometheus-api-client``
at one evaluation time: the value query (watts per node; by default the DCGM exporter's
``DCGM_FI_DEV_POWER_USAGE`` summed by ``Hostname``) and the timestamp query (per node, the
time of its oldest underlying sample). Each expected node gets a :class:`NodePower`:

* ``fresh`` — a sample no older than the staleness limit; ``watts`` is the measured
  value plus the node's configured non-GPU watts;
* ``stale`` — a sample, but too old (or of unknown age while a timestamp query is
  configured); ``watts`` is NaN and ``last_watts`` keeps what was seen;
* ``missing`` — no usable sample at all (no series, NaN, negative, or the query failed).

A node that is not fresh never reads as zero: its ``watts`` is NaN, and so is every
domain sum it is part of (:func:`leaf_watts`, :func:`rollup_watts`). Whoever acts on
power decides what to do with an unknown domain; it must not be a guess.

The parsing and summing are pure functions, tested on recorded Prometheus responses.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from prometheus_api_client.exceptions import PrometheusApiClientException
from prometheus_api_client.prometheus_connect import PrometheusConnect
from urllib3.util.retry import Retry

from extender.cluster.state import ClusterState
from extender.config.power import PowerSettings


class Freshness(StrEnum):
    FRESH = "fresh"
    STALE = "stale"
    MISSING = "missing"


@dataclass(frozen=True, slots=True)
class NodePower:
    """One node's reading. ``watts`` is NaN unless ``status`` is fresh."""

    node: str
    status: Freshness
    watts: float
    last_watts: float = math.nan  # the measured value (without non-GPU watts), even if stale
    sample_time: float | None = None  # unix seconds of the oldest sample behind the value
    age_s: float | None = None
    reason: str = ""  # why the reading is not fresh


@dataclass(frozen=True)
class PowerReadings:
    """Readings of the expected nodes at evaluation time ``at`` (unix seconds).

    ``error`` is set when a query failed (every node is then missing); ``unknown``
    lists node-label values Prometheus reported that are not expected nodes — a
    label that does not carry Kubernetes node names shows up here."""

    at: float
    nodes: Mapping[str, NodePower]
    error: str | None = None
    unknown: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()  # series the queries returned that could not be used

    def watts(self, names: Sequence[str]) -> NDArray[np.float64]:
        """Watts of ``names`` in that order; NaN for any node not fresh or not read."""
        out = np.full(len(names), np.nan)
        for i, name in enumerate(names):
            reading = self.nodes.get(name)
            if reading is not None and reading.status is Freshness.FRESH:
                out[i] = reading.watts
        return out

    @property
    def not_fresh(self) -> list[NodePower]:
        return [r for r in self.nodes.values() if r.status is not Freshness.FRESH]

    @property
    def complete(self) -> bool:
        """Every expected node is fresh."""
        return self.error is None and not self.not_fresh


class PowerQueryError(ValueError):
    """A query answer that is not an instant vector keyed by the node label."""


# --- pure: parsing ---------------------------------------------------------------------
def parse_vector(
    result: Any, node_label: str, what: str = "query"
) -> tuple[dict[str, float], list[str]]:
    """``{node: value}`` from the ``data.result`` of an instant-vector answer, and the
    problems found (series without the label, a node twice). Values are floats as
    Prometheus spells them (``"NaN"``, ``"+Inf"`` included). Raises
    :class:`PowerQueryError` when the answer is not a vector at all."""
    if not isinstance(result, list):
        raise PowerQueryError(
            f"{what} did not return an instant vector (got {type(result).__name__}); "
            "it must return one series per node"
        )
    values: dict[str, float] = {}
    problems: list[str] = []
    for series in result:
        if not isinstance(series, Mapping) or "value" not in series:
            raise PowerQueryError(
                f"{what} did not return an instant vector (a range query, or a matrix "
                "selector?); it must return one series per node"
            )
        labels = series.get("metric") or {}
        node = labels.get(node_label)
        if not node:
            problems.append(f"{what}: a series without the {node_label!r} label: {dict(labels)}")
            continue
        try:
            value = float(series["value"][1])
        except (TypeError, ValueError, IndexError, KeyError) as exc:
            raise PowerQueryError(f"{what}: unreadable sample {series['value']!r}") from exc
        if node in values:
            problems.append(
                f"{what}: node {node!r} has several series; aggregate by ({node_label})"
            )
            # Two answers for one node: neither can be trusted.
            values[node] = math.nan
            continue
        values[node] = value
    return values, problems


def readings_from_vectors(
    values: Mapping[str, float],
    stamps: Mapping[str, float] | None,
    nodes: Iterable[str],
    *,
    settings: PowerSettings,
    at: float,
    problems: Sequence[str] = (),
) -> PowerReadings:
    """Judge each expected node's value and sample time (``stamps`` is ``None`` when no
    timestamp query is configured: ages are then unknown and not held against a node)."""
    expected = list(dict.fromkeys(nodes))
    out: dict[str, NodePower] = {}
    for node in expected:
        value = values.get(node)
        if value is None:
            out[node] = NodePower(
                node,
                Freshness.MISSING,
                math.nan,
                reason=f"no series with {settings.node_label}={node!r}",
            )
            continue
        if not math.isfinite(value) or value < 0:
            out[node] = NodePower(
                node, Freshness.MISSING, math.nan, value, reason=f"unusable value {value!r}"
            )
            continue
        stamp = None if stamps is None else stamps.get(node)
        age = None if stamp is None else at - stamp
        if stamps is not None and (stamp is None or not math.isfinite(stamp)):
            # The value query still answers (a rate over a window, say) but no current
            # sample backs it: the source has stopped reporting.
            out[node] = NodePower(
                node,
                Freshness.STALE,
                math.nan,
                value,
                reason="no current sample behind the value (the exporter stopped reporting?)",
            )
            continue
        if age is not None and age > settings.staleness_s:
            out[node] = NodePower(
                node,
                Freshness.STALE,
                math.nan,
                value,
                stamp,
                age,
                reason=f"newest sample is {age:.0f}s old (limit {settings.staleness_s:g}s)",
            )
            continue
        out[node] = NodePower(
            node, Freshness.FRESH, value + settings.non_gpu_watts(node), value, stamp, age
        )
    known = set(expected)
    unknown = tuple(sorted(n for n in values if n not in known))
    return PowerReadings(at, out, None, unknown, tuple(problems))


def failed_readings(nodes: Iterable[str], at: float, error: str) -> PowerReadings:
    """Every node missing because the source could not be asked."""
    out = {n: NodePower(n, Freshness.MISSING, math.nan, reason=error) for n in dict.fromkeys(nodes)}
    return PowerReadings(at, out, error)


# --- pure: sums by domain ---------------------------------------------------------------
def leaf_watts(
    node_watts: NDArray[np.float64], node_domain: NDArray[np.int64], domains: int
) -> NDArray[np.float64]:
    """Watts of the nodes attached directly to each domain, a ``(domains,)`` vector.

    ``node_domain[i]`` is node ``i``'s leaf index (-1: not in the tree, ignored). A
    domain with any NaN node is NaN — one unknown node makes its domain unknown; a
    domain with no nodes draws 0."""
    watts = np.asarray(node_watts, dtype=np.float64)
    where = np.asarray(node_domain, dtype=np.int64)
    if watts.shape != where.shape:
        raise ValueError(f"{watts.size} readings for {where.size} nodes")
    keep = where >= 0
    # bincount adds floats, so a NaN reading makes its domain's sum NaN.
    sums = np.bincount(where[keep], weights=watts[keep], minlength=domains)
    return sums[:domains].astype(np.float64)


def rollup_watts(membership: NDArray[np.bool_], direct: NDArray[np.float64]) -> NDArray[np.float64]:
    """Totals for every level: ``out[a]`` sums ``direct`` over ``a`` and the domains
    below it (``membership[a, d]``, as in :class:`placement.tree.PowerTree`); NaN when
    any of them is NaN. (A plain matrix product would spread a NaN to every domain,
    because 0 × NaN is NaN.)"""
    unknown = np.isnan(direct)
    totals = membership.astype(np.float64) @ np.where(unknown, 0.0, direct)
    totals[(membership & unknown[None, :]).any(axis=1)] = np.nan
    return totals


def domain_watts(readings: PowerReadings, state: ClusterState) -> NDArray[np.float64]:
    """Measured watts of every domain of ``state``'s tree (tree order); NaN where any
    node below is not fresh."""
    with state.lock:
        nodes = state.nodes()
    names = [n.name for n in nodes]
    leaves = np.fromiter((n.leaf for n in nodes), dtype=np.int64, count=len(nodes))
    direct = leaf_watts(readings.watts(names), leaves, state.tree.size)
    return rollup_watts(state.tree.membership, direct)


# --- the source ---------------------------------------------------------------------------
class QueryClient(Protocol):
    """What the source needs of ``PrometheusConnect``."""

    def custom_query(self, query: str, params: dict[str, Any] = ...) -> Any: ...


def prometheus_client(settings: PowerSettings) -> PrometheusConnect:
    """A client for ``settings.url`` that fails fast: no retries (the next read is the
    retry) and the configured timeout on every request."""
    return PrometheusConnect(
        url=settings.url,
        timeout=max(1, math.ceil(settings.timeout_s)),
        retry=Retry(total=0, connect=0, read=0, status=0),
    )


class PrometheusPowerSource:
    """Reads measured watts per node from Prometheus (see the module docstring).

    ``read`` never raises for an unreachable or failing Prometheus; it returns readings
    whose ``error`` says why and whose nodes are all missing."""

    def __init__(
        self,
        settings: PowerSettings,
        client: QueryClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.client: QueryClient = client if client is not None else prometheus_client(settings)
        self.clock = clock

    def _query(self, query: str, at: float) -> Any:
        # Both queries at one explicit instant, so they see the same samples.
        return self.client.custom_query(query, params={"time": f"{at:.3f}"})

    def read(self, nodes: Iterable[str], at: float | None = None) -> PowerReadings:
        """Readings for ``nodes`` evaluated at ``at`` (default: now)."""
        when = self.clock() if at is None else at
        expected = list(nodes)
        s = self.settings
        try:
            values, problems = parse_vector(self._query(s.query, when), s.node_label, "query")
            stamps: dict[str, float] | None = None
            if s.timestamp_query is not None:
                stamps, more = parse_vector(
                    self._query(s.timestamp_query, when), s.node_label, "timestampQuery"
                )
                problems += more
        except PowerQueryError as exc:
            return failed_readings(expected, when, str(exc))
        # requests' errors are OSErrors; the client raises its own for non-200 answers.
        except (OSError, PrometheusApiClientException, ValueError) as exc:
            return failed_readings(expected, when, f"querying Prometheus at {s.url} failed: {exc}")
        return readings_from_vectors(
            values, stamps, expected, settings=s, at=when, problems=problems
        )

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if callable(close):
            close()
