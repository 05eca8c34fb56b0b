"""Where measured power comes from: the ``power:`` section of the powercap config.

::

    power:
      url: http://prometheus-operated.monitoring.svc:9090
      preset: dcgm              # dcgm | kepler | kepler-0.9 | custom
      nodeLabel: Hostname       # the label carrying the Kubernetes node name
      selector: {job: nvidia-dcgm-exporter}   # only these series count (or a matcher string)
      nonGpuWatts: {default: 1200, nodes: {gpu-0001: 1500}}
      staleness: 60s            # a sample older than this is stale, never used
      timeout: 5s               # per query

With ``preset: custom``, ``query`` (and optionally ``timestampQuery``) give the PromQL;
both must return an instant vector with one series per node, labelled ``nodeLabel``.

``selector`` restricts the presets' queries to the series of the trusted exporter:
anything else that exports the same metric (a rogue pod reporting huge watts for a
node) is not read. :func:`series_selector` checks and renders it.

:func:`resolve_power_source` checks what pydantic cannot (cross-field rules and
durations) and returns ``path: message`` problems, so the config loader reports them
with every other problem at once. This module imports no HTTP client, so loading a
config stays cheap.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from placement.validation import seconds_or_problem

Preset = Literal["dcgm", "kepler", "kepler-0.9", "custom"]

# DCGM exporter: one gauge per GPU in watts. Its ``Hostname`` label is the node name when
# the exporter runs as a DaemonSet with NODE_NAME set (its Helm chart does so).
DCGM_METRIC = "DCGM_FI_DEV_POWER_USAGE"
DCGM_NODE_LABEL = "Hostname"
# Kepler 0.10 and later: energy counters in joules per node, so watts are their rates,
# each series carrying the node in the ``node_name`` label the exporter sets itself.
# ``kepler_node_gpu_joules_total`` has a series per GPU (labels ``gpu``, ``gpu_uuid``,
# ``vendor``); ``kepler_node_cpu_joules_total`` one per RAPL ``zone`` (and ``path``):
# ``package`` already holds ``core`` and ``uncore``, and ``dram`` is apart, so only those
# two count. A node's watts are its GPU watts plus its CPU watts; a node one of them is
# missing for has no reading (stale, not silently lower).
KEPLER_GPU_METRIC = "kepler_node_gpu_joules_total"
KEPLER_CPU_METRIC = "kepler_node_cpu_joules_total"
KEPLER_CPU_ZONES = 'zone=~"package|dram"'
KEPLER_NODE_LABEL = "node_name"
# Kepler up to 0.9 (preset ``kepler-0.9``): whole-platform energy per node, a counter in
# joules. The exporter labels each series with the node in ``instance``; behind a
# ServiceMonitor without honorLabels that becomes ``exported_instance`` (set nodeLabel).
KEPLER_09_METRIC = "kepler_node_platform_joules_total"
KEPLER_09_NODE_LABEL = "instance"
# The rate window of both Kepler presets: at least two scrapes at Kepler's usual 15-30 s.
KEPLER_RATE_WINDOW = "1m"


DEFAULT_NODE_LABELS: Mapping[str, str] = {
    "dcgm": DCGM_NODE_LABEL,
    "kepler": KEPLER_NODE_LABEL,
    "kepler-0.9": KEPLER_09_NODE_LABEL,
}


def _check_label(label: str) -> str:
    if not label or not (label[0].isalpha() or label[0] == "_"):
        raise ValueError(f"{label!r} is not a Prometheus label name")
    if not all(c.isalnum() or c == "_" for c in label):
        raise ValueError(f"{label!r} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)")
    return label


# One label matcher of a PromQL selector: name, operator, and a quoted string (double or
# single quotes with backslash escapes, or backticks without).
_MATCHER = re.compile(
    r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"
    r"(\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'|`[^`]*`)\s*"
)
# The escapes PromQL strings accept (Go's), scanned pair by pair; a backslash starting
# none of them (group 1) is a parse error at query time.
_ESCAPE = re.compile(
    r"\\(?:[abfnrtv\\'\"]|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[0-7]{3})|(\\)"
)


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _check_matcher_label(label: str) -> str:
    _check_label(label)
    if label == "__name__":
        raise ValueError("the metric name is the preset's; select on other labels")
    return label


def series_selector(given: Mapping[str, str] | str) -> str:
    """The label matchers of ``power.selector`` as PromQL, without braces.

    A mapping is exact matches, ``{job: dcgm-exporter}`` → ``job="dcgm-exporter"``; a
    string is PromQL label matchers as written inside ``{...}`` (the braces optional),
    ``job="dcgm-exporter", namespace=~"gpu-operator|nvidia"``, each kept as written.
    Raises ``ValueError`` saying what is wrong: an empty selector (it would select
    everything), a bad label name, ``__name__``, or a string that is not matchers."""
    if isinstance(given, Mapping):
        if not given:
            raise ValueError("an empty selector selects every series; leave it out instead")
        return ",".join(f"{_check_matcher_label(k)}={_quote(v)}" for k, v in given.items())
    text = given.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    matchers: list[str] = []
    pos = 0
    while pos < len(text):
        found = _MATCHER.match(text, pos)
        if found is None:
            raise ValueError(
                f'expected a label matcher such as job="dcgm-exporter" at {text[pos:]!r}'
            )
        label, op, value = found.groups()
        _check_matcher_label(label)
        if value[0] != "`" and any(m.group(1) for m in _ESCAPE.finditer(value[1:-1])):
            raise ValueError(f"{value} has an escape PromQL does not accept")
        matchers.append(f"{label}{op}{value}")
        pos = found.end()
        if pos < len(text):
            if text[pos] != ",":
                raise ValueError(f"expected a comma between matchers at {text[pos:]!r}")
            pos += 1
    if not matchers:
        raise ValueError("an empty selector selects every series; leave it out instead")
    return ",".join(matchers)


def preset_queries(preset: Preset, node_label: str, *, selector: str = "") -> tuple[str, str]:
    """The (value, timestamp) PromQL of a preset, grouped by ``node_label``, over the
    series ``selector`` matches (rendered label matchers, :func:`series_selector`;
    empty: every series of the metric).

    The value query gives watts per node; the timestamp query gives, per node, the
    time of its *oldest* underlying sample, so one GPU whose reading stopped makes
    the whole node stale rather than silently lower."""
    label = _check_label(node_label)
    matchers = f"{{{selector}}}" if selector else ""
    if preset == "dcgm":
        series = f"{DCGM_METRIC}{matchers}"
        return (f"sum by ({label}) ({series})", f"min by ({label}) (timestamp({series}))")
    if preset == "kepler":
        gpu = f"{KEPLER_GPU_METRIC}{matchers}"
        cpu_matchers = f"{selector},{KEPLER_CPU_ZONES}" if selector else KEPLER_CPU_ZONES
        cpu = f"{KEPLER_CPU_METRIC}{{{cpu_matchers}}}"
        return (
            f"sum by ({label}) (rate({gpu}[{KEPLER_RATE_WINDOW}])) "
            f"+ sum by ({label}) (rate({cpu}[{KEPLER_RATE_WINDOW}]))",
            f"min by ({label}) (timestamp({gpu}) or timestamp({cpu}))",
        )
    if preset == "kepler-0.9":
        series = f"{KEPLER_09_METRIC}{matchers}"
        return (
            f"sum by ({label}) (rate({series}[{KEPLER_RATE_WINDOW}]))",
            f"min by ({label}) (timestamp({series}))",
        )
    raise ValueError("preset custom has no built-in query; give power.query")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class NonGpuWattsSpec(_Model):
    """Watts a node draws outside its GPUs (CPUs, memory, fans, NICs), added to the
    GPU sum of every node that reports: ``default`` for all, ``nodes`` per node."""

    default: float = Field(default=0.0, ge=0)
    nodes: dict[str, float] = {}

    @field_validator("nodes")
    @classmethod
    def _non_negative(cls, v: dict[str, float]) -> dict[str, float]:
        bad = sorted(n for n, w in v.items() if not w >= 0)
        if bad:
            raise ValueError(f"watts must be >= 0 (nodes: {', '.join(bad)})")
        return v


class PowerSourceSpec(_Model):
    """The ``power:`` section, as written."""

    url: str = "http://prometheus-operated.monitoring.svc:9090"
    preset: Preset = "dcgm"
    query: str | None = None
    timestamp_query: str | None = Field(default=None, alias="timestampQuery")
    node_label: str | None = Field(default=None, alias="nodeLabel")
    # Which series of the preset's metric count: a mapping of exact label values, or
    # PromQL label matchers. Absent: every series, whoever exports it.
    selector: dict[str, str] | str | None = None
    non_gpu_watts: NonGpuWattsSpec = Field(default=NonGpuWattsSpec(), alias="nonGpuWatts")
    staleness: str | int = "60s"
    timeout: str | int = "5s"

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL of Prometheus, got {v!r}")
        return v.rstrip("/")


@dataclass(frozen=True)
class PowerSettings:
    """The resolved ``power:`` section: what
    :class:`extender.controller.readings.PrometheusPowerSource` runs on. ``timestamp_query``
    is ``None`` when ages cannot be measured (a custom query without one): freshness then
    rests on Prometheus's own staleness handling. ``selector`` is the label matchers the
    preset's queries carry (empty: none; always empty with a custom query)."""

    url: str
    query: str
    node_label: str
    timestamp_query: str | None = None
    preset: Preset = "custom"
    selector: str = ""
    non_gpu_default_w: float = 0.0
    non_gpu_node_w: Mapping[str, float] = field(default_factory=dict)
    staleness_s: float = 60.0
    timeout_s: float = 5.0

    def non_gpu_watts(self, node: str) -> float:
        """Watts added to ``node``'s measured (GPU) power."""
        return self.non_gpu_node_w.get(node, self.non_gpu_default_w)


def resolve_power_source(
    spec: PowerSourceSpec, where: str = "power"
) -> tuple[PowerSettings | None, list[str]]:
    """Settings from a spec, or ``None`` and the ``where.field: message`` problems."""
    problems: list[str] = []
    preset = spec.preset
    label = spec.node_label
    if label is not None:
        try:
            _check_label(label)
        except ValueError as exc:
            problems.append(f"{where}.nodeLabel: {exc}")
            label = None
    query = spec.query
    stamp_query = spec.timestamp_query
    selector = ""
    if spec.selector is not None:
        if preset == "custom":
            problems.append(
                f"{where}.selector: preset custom takes its selector inside power.query"
            )
        else:
            try:
                selector = series_selector(spec.selector)
            except ValueError as exc:
                problems.append(f"{where}.selector: {exc}")
    if preset == "custom":
        if not query:
            problems.append(
                f"{where}.query: preset custom needs a PromQL query giving watts per node"
            )
        if spec.node_label is None:
            problems.append(
                f"{where}.nodeLabel: preset custom needs the label that carries the node name"
            )
    else:
        for given, name in ((spec.query, "query"), (spec.timestamp_query, "timestampQuery")):
            if given is not None:
                problems.append(
                    f"{where}.{name}: preset {preset} builds its own PromQL; set "
                    "preset: custom to give your own"
                )
        label = label or DEFAULT_NODE_LABELS[preset]
        query, stamp_query = preset_queries(preset, label, selector=selector)
        non_gpu = spec.non_gpu_watts
        if preset == "kepler-0.9" and (non_gpu.default > 0 or any(non_gpu.nodes.values())):
            problems.append(
                f"{where}.nonGpuWatts: the kepler-0.9 preset reads whole-platform power, so "
                "non-GPU watts would count twice; remove them (or use preset: custom)"
            )
    staleness = seconds_or_problem(spec.staleness, f"{where}.staleness", problems)
    timeout = seconds_or_problem(spec.timeout, f"{where}.timeout", problems)
    if problems or not query or label is None:
        return None, problems
    return (
        PowerSettings(
            url=spec.url,
            query=query,
            node_label=label,
            timestamp_query=stamp_query or None,
            preset=preset,
            selector=selector,
            non_gpu_default_w=spec.non_gpu_watts.default,
            non_gpu_node_w=dict(spec.non_gpu_watts.nodes),
            staleness_s=staleness,
            timeout_s=timeout,
        ),
        [],
    )
