"""``powercap profiles learn``: per-service power profiles from Prometheus history.

::

    powercap profiles learn --prometheus http://prometheus:9090 --since 14d \\
        --gpu-idle-watts 60 --format configmap -o powercap-profiles.yaml

Where the samples come from: one range query, evaluated every ``--resolution`` over the
window, that returns watts per pod labelled with the pod's service. The default query
joins the DCGM exporter's per-GPU power to kube-state-metrics' pod labels::

    sum by (namespace, pod) (DCGM_FI_DEV_POWER_USAGE{pod!=""} - <gpu idle>)
      * on (namespace, pod) group_left (label_powercap_io_service)
      max by (namespace, pod, label_powercap_io_service)
        (kube_pod_labels{label_powercap_io_service!=""})

* The DCGM exporter labels a GPU held by a pod with ``pod`` and ``namespace``; the sum
  is a pod's draw over all its GPUs. GPUs held by no pod are left out.
* The join goes through Prometheus rather than the Kubernetes API because history
  outlives pods: the replicas that drew power two weeks ago are gone from the API server,
  but ``kube_pod_labels`` remembers their labels for as long as Prometheus keeps data.
  kube-state-metrics exports a pod label only when allowed
  (``--metric-labels-allowlist=pods=[powercap.io/service]``); its name there is the
  Kubernetes label sanitised (``label_powercap_io_service``).
* DCGM's per-GPU power includes the GPU's idle draw, which the ledger already counts in
  the node's ``idleWatts``; profiles are watts *above* node idle, so ``--gpu-idle-watts``
  is subtracted per GPU. It defaults to 0, which leaves every GPU's idle draw in the
  profile (counted twice: safe, but strands power); measure an empty GPU and set it.

``--query`` replaces the whole PromQL (e.g. when Prometheus renamed the exporter's
labels to ``exported_pod``/``exported_namespace``); its series must carry the service
label (``label_`` + the sanitised ``--service-label``) and should carry ``pod`` and
``namespace`` (used only to count replicas). Its watts must already be above idle.

Prometheus refuses range queries of more than 11,000 points per series, so the window
is cut into chunks of at most ``--chunk`` (default 6h: 360 points at 1m), whose
evaluation instants are aligned to the resolution and never overlap.

The per-slot quantiles and the fill policy are :mod:`placement.learning`'s. The output
is PowerProfile documents (``--format profiles``: one file per service in the ``-o``
directory, as ``profileFiles: [profiles/*.yaml]`` loads them) or one ConfigMap holding
the same files as keys (``--format configmap``: mounted as the config's
``profiles/`` directory). A summary per service goes to stderr.

Exit codes: 0 written; 1 a service has slots with too few samples (nothing written;
lengthen ``--since``, lower ``--min-samples`` or pass ``--fill nearest``); 2 bad input
or Prometheus failed.

For a serving extender, :class:`ProfileRefresher` re-runs the same learner every
``learn.refresh`` (:mod:`extender.learn_config`) and hands a config with the learned
profiles swapped in (:func:`apply_learned`) to a callback.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import numpy as np
import typer
import yaml
from numpy.typing import NDArray
from prometheus_api_client.exceptions import PrometheusApiClientException
from prometheus_api_client.prometheus_connect import PrometheusConnect
from urllib3.util.retry import Retry

from extender.learn_config import MAX_POINTS, LearnRefreshSettings
from extender.power_config import DCGM_METRIC
from placement.grid import Grid, format_duration, parse_duration
from placement.learning import (
    DEFAULT_MIN_SAMPLES,
    DEFAULT_QUANTILE,
    FILL_POLICIES,
    FillPolicy,
    LearnedProfile,
    learn_profiles,
    thin_problems,
)

if TYPE_CHECKING:
    from extender.config import Config

log = logging.getLogger(__name__)

API_VERSION = "powercap.io/v1alpha1"
DEFAULT_SERVICE_LABEL = "powercap.io/service"
DEFAULT_LABELS_METRIC = "kube_pod_labels"
DEFAULT_CONFIGMAP = "powercap-profiles"
DEFAULT_NAMESPACE = "powercap-system"
# Watts are written to a tenth: finer is below what a power meter resolves.
DECIMALS = 1


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


def windows(start: float, end: float, resolution_s: int, chunk_s: int) -> list[tuple[int, int]]:
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

    def add(self, service: str, pod: tuple[str, str], t: NDArray[Any], w: NDArray[Any]) -> None:
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
        samples.add(str(service), pod, t, w)


# --- pure: documents -----------------------------------------------------------------------
def _rounded(profile: NDArray[np.float64]) -> list[float]:
    return [round(float(v), DECIMALS) for v in profile]


def _span(seconds: int) -> str:
    """A history length as people say it: ``14d``, ``36h``, ``90m``."""
    return f"{seconds // 86400}d" if seconds % 86400 == 0 else format_duration(seconds)


def describe(learned: LearnedProfile, grid: Grid, since_s: int, pods: int) -> str:
    """The ``description`` of a learned profile: what it is and what it came from."""
    q = f"p{learned.quantile * 100:g}"
    text = (
        f"{q} per {format_duration(grid.step_s)} slot of {_span(since_s)} of "
        f"history: {pods} pod{'s' if pods != 1 else ''}, {learned.samples} samples, "
        f"{learned.coverage:.0%} of slots with at least {learned.min_samples}"
    )
    if learned.filled.any():
        text += f", {int(learned.filled.sum())} filled from the nearest slot"
    if learned.clamped.any():
        text += f", {int(learned.clamped.sum())} below the GPU idle clamped to 0"
    return text


def profile_document(learned: LearnedProfile, description: str) -> dict[str, Any]:
    """A ``kind: PowerProfile`` document named after the service."""
    return {
        "apiVersion": API_VERSION,
        "kind": "PowerProfile",
        "metadata": {"name": learned.service},
        "description": description,
        "profile": _rounded(learned.profile),
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the files inside a ConfigMap) as literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def profile_text(document: Mapping[str, Any], header: str = "") -> str:
    """A PowerProfile file: an optional comment header, then the document with the
    profile as a flow list."""
    body = yaml.dump(
        dict(document), Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=100
    )
    lines = "".join(f"# {line}\n" for line in header.splitlines())
    return lines + body


def configmap_document(
    files: Mapping[str, str], name: str, namespace: str, annotations: Mapping[str, str]
) -> dict[str, Any]:
    """A v1 ConfigMap with one key per profile file."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": "powercap",
                "app.kubernetes.io/component": "profiles",
            },
            "annotations": dict(annotations),
        },
        "data": dict(sorted(files.items())),
    }


def dump_yaml(document: Mapping[str, Any]) -> str:
    return yaml.dump(dict(document), Dumper=_Dumper, sort_keys=False, width=100)


# --- the edge: Prometheus ------------------------------------------------------------------
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
    chunks = windows(settings.start, settings.end, settings.resolution_s, settings.chunk_s)
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
                f"{_iso(first)}–{_iso(last)}: {exc}; check --query (or --service-label)"
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


def _iso(unix_s: float) -> str:
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
        samples.arrays(), settings.grid, settings.quantile, settings.min_samples, settings.fill
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


def output_files(result: LearnResult, settings: LearnSettings, learned_at: float) -> dict[str, str]:
    """``{file name: PowerProfile text}``, one per service."""
    files: dict[str, str] = {}
    for name, lp in result.learned.items():
        description = describe(lp, settings.grid, settings.since_s, result.pods.get(name, 0))
        header = (
            f"Learned from {settings.url}, {_iso(settings.start)} to {_iso(settings.end)} "
            f"at {_iso(learned_at)}.\nWatts per replica above node idle, per slot."
        )
        files[f"{name}.yaml"] = profile_text(profile_document(lp, description), header)
    return files


# --- re-learning while serving -----------------------------------------------------------------
def settings_for(refresh: LearnRefreshSettings, grid: Grid, now: float) -> LearnSettings:
    """The learner's settings for a refresh at ``now``: the ``since`` before it."""
    label = promql_label(refresh.service_label)
    query = refresh.query or default_query(
        label, refresh.gpu_idle_w, refresh.metric, refresh.labels_metric
    )
    return LearnSettings(
        url=refresh.url,
        query=query,
        service_label=label,
        grid=grid,
        start=now - refresh.since_s,
        end=now,
        resolution_s=refresh.resolution_s,
        chunk_s=refresh.chunk_s,
        quantile=refresh.quantile,
        min_samples=refresh.min_samples,
        fill=refresh.fill,
    )


def apply_learned(config: Config, result: LearnResult) -> tuple[Config, list[str]]:
    """``config`` with every completely learned profile in place: the named profile of the
    service's name is set (added or replaced), and so is the profile of the service of
    that name, whatever profile it was configured with. An incomplete profile changes
    nothing (the configured one stays); the returned lines say which and why."""
    profiles = dict(config.profiles)
    services = dict(config.services)
    kept: list[str] = []
    for name, lp in result.learned.items():
        if lp.profile.shape != (config.grid.slots,):
            kept.append(
                f"{name}: learned on {lp.profile.size} slots, the grid has {config.grid.slots}"
            )
            continue
        if not lp.complete:
            thin = "; ".join(thin_problems(lp, config.grid))
            kept.append(f"{name}: kept the configured profile: {thin}")
            continue
        profiles[name] = lp.profile
        entry = services.get(name)
        if entry is not None:
            services[name] = replace(entry, profile=lp.profile, profile_name=name)
    return replace(config, profiles=profiles, services=services), kept


class ProfileRefresher:
    """Re-learns profiles every ``settings.interval_s`` in a thread and hands each new
    config to ``on_config`` (which swaps it in). The first refresh runs at ``start``.

    A failed refresh (Prometheus down, a refused query, no samples) changes nothing:
    the profiles in use stay, ``last_error`` says why and the next interval retries."""

    def __init__(
        self,
        settings: LearnRefreshSettings,
        current: Callable[[], Config],
        on_config: Callable[[Config], None],
        client: RangeClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.current = current
        self.on_config = on_config
        self.client: RangeClient = (
            client if client is not None else prometheus_client(settings.url, settings.timeout_s)
        )
        self.clock = clock
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.kept: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh_once(self) -> bool:
        """One refresh; ``True`` when a new config was handed over."""
        config = self.current()
        now = self.clock()
        try:
            result = learn(self.client, settings_for(self.settings, config.grid, now))
        except LearnError as exc:
            self.last_error = str(exc)
            log.warning("profile refresh failed, profiles unchanged: %s", exc)
            return False
        if not result.learned:
            self.last_error = "no samples in the window: no service learned"
            log.warning("profile refresh found no samples; profiles unchanged")
            return False
        new, self.kept = apply_learned(config, result)
        for line in self.kept:
            log.warning("profile refresh: %s", line)
        self.on_config(new)
        self.last_success, self.last_error = now, None
        log.info(
            "profiles refreshed: %s",
            ", ".join(
                n for n in result.learned if n in new.profiles and result.learned[n].complete
            ),
        )
        return True

    def _run(self) -> None:
        delay = 0.0
        while not self._stop.wait(delay):
            try:
                self.refresh_once()
            except Exception:  # a bug must not end the loop: the profiles in use stay
                log.exception("profile refresh failed")
            delay = self.settings.interval_s

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="powercap-learn", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


# --- the CLI ---------------------------------------------------------------------------------
class OutputFormat(StrEnum):
    profiles = "profiles"
    configmap = "configmap"


class Fill(StrEnum):
    none = "none"
    nearest = "nearest"


assert tuple(f.value for f in Fill) == FILL_POLICIES


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"powercap profiles learn: {message}", err=True)
    return typer.Exit(code)


def _duration(value: str, option: str, example: str) -> int:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise _fail(f"{option}: {exc}; e.g. {option} {example}") from None


def _instant(value: str | None) -> float:
    """``--until``: unix seconds or an ISO 8601 time (UTC unless it says otherwise)."""
    if value is None:
        return time.time()
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _fail(
            f"--until: {value!r} is neither unix seconds nor an ISO 8601 time; "
            "e.g. --until 2026-11-20T00:00:00Z"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _grid(config: Path | None, period: str | None, step: str | None, offset: str | None) -> Grid:
    if config is not None:
        if any(v is not None for v in (period, step, offset)):
            raise _fail("--config gives the grid; drop --period/--step/--offset, or drop --config")
        return _config_grid(config)
    period_s = _duration(period or "24h", "--period", "24h")
    step_s = _duration(step or "10m", "--step", "10m")
    offset_s = 0
    if offset is not None:
        # Seconds as in the config's grid.offset, or a duration such as 1h.
        offset_s = (
            int(offset) if offset.lstrip("-").isdigit() else _duration(offset, "--offset", "1h")
        )
    try:
        return Grid(period_s, step_s, offset_s)
    except ValueError as exc:
        raise _fail(f"--step/--period: {exc}") from None


def _config_grid(path: Path) -> Grid:
    """The ``grid:`` of a PowercapConfig (or scenario) file. Only the grid is read: the
    profiles being learned may be the ones its ``profileFiles`` still lack."""
    from pydantic import ValidationError

    from placement.scenario import GridSpec

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise _fail(f"--config: cannot read {path}: {exc}") from None
    section = data.get("grid", {}) if isinstance(data, Mapping) else None
    try:
        return GridSpec.model_validate(section).to_grid()
    except (ValidationError, ValueError) as exc:
        raise _fail(f"--config: {path} has no usable grid: {exc}") from None


def _summary(result: LearnResult, settings: LearnSettings) -> list[str]:
    grid = settings.grid
    header = (
        f"{'service':<28} {'pods':>5} {'samples':>9} {'coverage':>8} {'min/slot':>8} "
        f"{'filled':>6} {'peak W':>9} {'mean W':>9}"
    )
    lines = [
        f"learned {len(result.learned)} service(s) from {settings.url}: "
        f"{_iso(settings.start)} to {_iso(settings.end)}, p{settings.quantile * 100:g} per "
        f"{format_duration(grid.step_s)} slot (T = {grid.slots}), resolution "
        f"{format_duration(settings.resolution_s)}",
        header,
    ]
    for name, lp in result.learned.items():
        finite = lp.profile[np.isfinite(lp.profile)]
        peak = f"{finite.max():.1f}" if finite.size else "-"
        mean = f"{finite.mean():.1f}" if finite.size else "-"
        lines.append(
            f"{name:<28} {result.pods.get(name, 0):>5} {lp.samples:>9} "
            f"{lp.coverage:>8.0%} {int(lp.counts.min()):>8} {int(lp.filled.sum()):>6} "
            f"{peak:>9} {mean:>9}"
        )
    return lines


profiles_app = typer.Typer(
    help="Learn and manage per-service power profiles.", no_args_is_help=True
)


@profiles_app.command("learn")
def learn_command(
    prometheus: Annotated[
        str, typer.Option("--prometheus", help="Prometheus base URL, e.g. http://prometheus:9090")
    ],
    since: Annotated[str, typer.Option("--since", help="history to learn from")] = "14d",
    until: Annotated[
        str | None,
        typer.Option("--until", help="end of the history: unix seconds or ISO 8601 (now)"),
    ] = None,
    quantile: Annotated[
        float, typer.Option("--quantile", help="quantile per slot, 0..1")
    ] = DEFAULT_QUANTILE,
    step: Annotated[str | None, typer.Option("--step", help="grid step (10m)")] = None,
    period: Annotated[str | None, typer.Option("--period", help="grid period (24h)")] = None,
    offset: Annotated[
        str | None, typer.Option("--offset", help="grid offset: seconds added to UTC (0)")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="take the grid from this PowercapConfig")
    ] = None,
    resolution: Annotated[
        str, typer.Option("--resolution", help="query step; at least the scrape interval")
    ] = "1m",
    chunk: Annotated[str, typer.Option("--chunk", help="longest window per query")] = "6h",
    min_samples: Annotated[
        int, typer.Option("--min-samples", help="fewer samples make a slot thin")
    ] = DEFAULT_MIN_SAMPLES,
    fill: Annotated[
        Fill, typer.Option("--fill", help="thin slots: none (fail) or nearest")
    ] = Fill.none,
    gpu_idle_watts: Annotated[
        float | None,
        typer.Option("--gpu-idle-watts", help="per-GPU idle draw subtracted (default 0)"),
    ] = None,
    service_label: Annotated[
        str, typer.Option("--service-label", help="pod label naming the service")
    ] = DEFAULT_SERVICE_LABEL,
    metric: Annotated[
        str, typer.Option("--metric", help="per-GPU power gauge with pod/namespace labels")
    ] = DCGM_METRIC,
    labels_metric: Annotated[
        str, typer.Option("--labels-metric", help="kube-state-metrics pod labels metric")
    ] = DEFAULT_LABELS_METRIC,
    query: Annotated[
        str | None, typer.Option("--query", help="PromQL replacing the default (see docs)")
    ] = None,
    service: Annotated[
        list[str] | None, typer.Option("--service", help="learn only this service (repeat)")
    ] = None,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="profiles (files) or configmap")
    ] = OutputFormat.profiles,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o", "--output", help="profiles: a directory; configmap: a file (default stdout)"
        ),
    ] = None,
    name: Annotated[str, typer.Option("--name", help="ConfigMap name")] = DEFAULT_CONFIGMAP,
    namespace: Annotated[
        str, typer.Option("--namespace", help="ConfigMap namespace")
    ] = DEFAULT_NAMESPACE,
    timeout: Annotated[str, typer.Option("--timeout", help="per query")] = "60s",
) -> None:
    """Learn per-service power profiles (a quantile per slot) from Prometheus history."""
    if not prometheus.startswith(("http://", "https://")):
        raise _fail(f"--prometheus: expected an http:// or https:// URL, got {prometheus!r}")
    if not 0.0 < quantile <= 1.0:
        raise _fail(f"--quantile: {quantile:g} is not in (0, 1]; e.g. --quantile 0.95 for p95")
    if min_samples < 1:
        raise _fail(f"--min-samples: must be at least 1, got {min_samples}")
    if gpu_idle_watts is not None and gpu_idle_watts < 0:
        raise _fail(f"--gpu-idle-watts: must be >= 0, got {gpu_idle_watts:g}")
    if query is not None and gpu_idle_watts:
        raise _fail(
            "--gpu-idle-watts applies to the default query only; subtract the idle "
            "inside --query, or drop --query"
        )
    since_s = _duration(since, "--since", "14d")
    resolution_s = _duration(resolution, "--resolution", "1m")
    chunk_s = _duration(chunk, "--chunk", "6h")
    timeout_s = _duration(timeout, "--timeout", "60s")
    if chunk_s < resolution_s:
        raise _fail(f"--chunk ({chunk}) is shorter than --resolution ({resolution})")
    if chunk_s // resolution_s > MAX_POINTS:
        raise _fail(
            f"--chunk {chunk} at --resolution {resolution} is {chunk_s // resolution_s} points "
            f"per series; Prometheus allows {MAX_POINTS}: shorten --chunk"
        )
    if since_s < resolution_s:
        raise _fail(f"--since ({since}) is shorter than --resolution ({resolution})")
    grid = _grid(config, period, step, offset)
    if resolution_s > grid.step_s:
        raise _fail(
            f"--resolution {resolution} is coarser than the grid step "
            f"{format_duration(grid.step_s)}: some slots would get no samples; lower it"
        )
    if output_format is OutputFormat.profiles and output is not None and output.is_file():
        raise _fail(
            f"-o {output}: --format profiles writes one file per service into a directory; "
            "name a directory, or use --format configmap for one file"
        )
    label = promql_label(service_label)
    end = _instant(until)
    settings = LearnSettings(
        url=prometheus.rstrip("/"),
        query=query
        if query is not None
        else default_query(label, gpu_idle_watts or 0.0, metric, labels_metric),
        service_label=label,
        grid=grid,
        start=end - since_s,
        end=end,
        resolution_s=resolution_s,
        chunk_s=chunk_s,
        quantile=quantile,
        min_samples=min_samples,
        fill=fill.value,
        services=tuple(service or ()),
    )
    client = prometheus_client(settings.url, timeout_s)
    try:
        result = learn(client, settings)
    except LearnError as exc:
        raise _fail(str(exc)) from exc
    for line in result.problems:
        typer.echo(f"warning: {line}", err=True)
    if not result.learned and settings.services:
        raise _fail(
            f"no samples for --service {', '.join(settings.services)} in "
            f"{_iso(settings.start)}–{_iso(settings.end)}; check the names (the "
            f"{service_label} label's values) or lengthen --since",
            code=1,
        )
    if not result.learned:
        raise _fail(
            f"no samples in {_iso(settings.start)}–{_iso(settings.end)}: no series carried "
            f"{label!r} (does {labels_metric} export the pod label? kube-state-metrics needs "
            f"--metric-labels-allowlist=pods=[{service_label}]), or lengthen --since",
            code=1,
        )
    missing = sorted(set(settings.services) - set(result.learned))
    if missing:
        typer.echo(f"warning: no samples for --service {', '.join(missing)}", err=True)
    for line in _summary(result, settings):
        typer.echo(line, err=True)
    if gpu_idle_watts is None and query is None:
        typer.echo(
            "note: --gpu-idle-watts not given: the profiles include each GPU's idle draw, "
            "which node idleWatts counts too",
            err=True,
        )
    if result.thin:
        for line in result.thin:
            typer.echo(f"thin: {line}", err=True)
        raise _fail(
            "some slots have too few samples; nothing written. Lengthen --since, lower "
            "--min-samples, or pass --fill nearest to copy the nearest slot's value",
            code=1,
        )
    files = output_files(result, settings, time.time())
    _write(files, output_format, output, name, namespace, settings)


def _write(
    files: Mapping[str, str],
    output_format: OutputFormat,
    output: Path | None,
    name: str,
    namespace: str,
    settings: LearnSettings,
) -> None:
    if output_format is OutputFormat.configmap:
        annotations = {
            "powercap.io/learned-from": settings.url,
            "powercap.io/learned-window": f"{_iso(settings.start)}/{_iso(settings.end)}",
        }
        text = dump_yaml(configmap_document(files, name, namespace, annotations))
        if output is None:
            typer.echo(text, nl=False)
        else:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(text)
            typer.echo(f"wrote ConfigMap {namespace}/{name} to {output}", err=True)
        return
    if output is None:
        typer.echo("---\n".join(files.values()), nl=False)
        return
    output.mkdir(parents=True, exist_ok=True)
    for file_name, text in files.items():
        (output / file_name).write_text(text)
    typer.echo(f"wrote {len(files)} profile(s) to {output}/", err=True)


def register(app: typer.Typer) -> None:
    """Entry point of the ``powercap.commands`` group: adds ``profiles learn``."""
    app.add_typer(profiles_app, name="profiles")
