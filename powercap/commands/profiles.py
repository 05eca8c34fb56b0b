"""``powercap profiles learn``: per-slot profiles from measured power in Prometheus."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Annotated, NamedTuple

import numpy as np
import typer
import yaml

from extender.config.learn import MAX_POINTS
from extender.config.power import DCGM_METRIC
from extender.profiles.documents import (
    DEFAULT_CONFIGMAP,
    DEFAULT_NAMESPACE,
    configmap_document,
    dump_yaml,
    output_files,
)
from extender.profiles.samples import (
    DEFAULT_LABELS_METRIC,
    DEFAULT_SERVICE_LABEL,
    Fill,
    LearnError,
    LearnResult,
    LearnSettings,
    RangeClient,
    default_query,
    iso_time,
    learn,
    prometheus_client,
    promql_label,
)
from placement.grid import Grid, format_duration, parse_duration
from placement.learning import (
    DEFAULT_MIN_SAMPLES,
    DEFAULT_QUANTILE,
)
from powercap.console import fail as console_fail

log = logging.getLogger(__name__)


# --- the CLI ---------------------------------------------------------------------------------
class LearnOutput(StrEnum):
    profiles = "profiles"
    configmap = "configmap"


fail = partial(console_fail, prefix="powercap profiles learn")


def _duration(value: str, option: str, example: str) -> int:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise fail(f"{option}: {exc}; e.g. {option} {example}") from None


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
        raise fail(
            f"--until: {value!r} is neither unix seconds nor an ISO 8601 time; "
            "e.g. --until 2026-11-20T00:00:00Z"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _grid(config: Path | None, period: str | None, step: str | None, offset: str | None) -> Grid:
    if config is not None:
        if any(v is not None for v in (period, step, offset)):
            raise fail("--config gives the grid; drop --period/--step/--offset, or drop --config")
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
        raise fail(f"--step/--period: {exc}") from None


def _config_grid(path: Path) -> Grid:
    """The ``grid:`` of a PowercapConfig (or scenario) file. Only the grid is read: the
    profiles being learned may be the ones its ``profileFiles`` still lack."""
    from pydantic import ValidationError

    from placement.scenario.spec import GridSpec

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise fail(f"--config: cannot read {path}: {exc}") from None
    section = data.get("grid", {}) if isinstance(data, Mapping) else None
    try:
        return GridSpec.model_validate(section).to_grid()
    except (ValidationError, ValueError) as exc:
        raise fail(f"--config: {path} has no usable grid: {exc}") from None


def _summary(result: LearnResult, settings: LearnSettings) -> list[str]:
    grid = settings.grid
    header = (
        f"{'service':<28} {'pods':>5} {'samples':>9} {'coverage':>8} {'min/slot':>8} "
        f"{'filled':>6} {'peak W':>9} {'mean W':>9}"
    )
    lines = [
        f"learned {len(result.learned)} service(s) from {settings.url}: "
        f"{iso_time(settings.start)} to {iso_time(settings.end)}, p{settings.quantile * 100:g} per "
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
        LearnOutput, typer.Option("--format", help="profiles (files) or configmap")
    ] = LearnOutput.profiles,
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
    _check_learn_options(
        prometheus=prometheus,
        quantile=quantile,
        min_samples=min_samples,
        gpu_idle_watts=gpu_idle_watts,
        query=query,
    )
    spans = _query_spans(since=since, resolution=resolution, chunk=chunk, timeout=timeout)
    grid = _grid(config, period, step, offset)
    if spans.resolution_s > grid.step_s:
        raise fail(
            f"--resolution {resolution} is coarser than the grid step "
            f"{format_duration(grid.step_s)}: some slots would get no samples; lower it"
        )
    if output_format is LearnOutput.profiles and output is not None and output.is_file():
        raise fail(
            f"-o {output}: --format profiles writes one file per service into a directory; "
            "name a directory, or use --format configmap for one file"
        )
    label = promql_label(service_label)
    end = _instant(until)
    settings = LearnSettings(
        url=prometheus.rstrip("/"),
        query=query
        if query is not None
        else default_query(label, gpu_idle_watts or 0.0, metric, labels_metric=labels_metric),
        service_label=label,
        grid=grid,
        start=end - spans.since_s,
        end=end,
        resolution_s=spans.resolution_s,
        chunk_s=spans.chunk_s,
        quantile=quantile,
        min_samples=min_samples,
        fill=fill.value,
        services=tuple(service or ()),
    )
    client = prometheus_client(settings.url, spans.timeout_s)
    result = _learned(client, settings, service_label=service_label, labels_metric=labels_metric)
    _echo_learned(result, settings, with_gpu_idle=gpu_idle_watts is None and query is None)
    files = output_files(result, settings, time.time())
    _write(files, output_format, output, name, namespace, settings)


def _check_learn_options(
    *,
    prometheus: str,
    quantile: float,
    min_samples: int,
    gpu_idle_watts: float | None,
    query: str | None,
) -> None:
    """Exit 2 naming the first of these options that is out of range or conflicts."""
    if not prometheus.startswith(("http://", "https://")):
        raise fail(f"--prometheus: expected an http:// or https:// URL, got {prometheus!r}")
    if not 0.0 < quantile <= 1.0:
        raise fail(f"--quantile: {quantile:g} is not in (0, 1]; e.g. --quantile 0.95 for p95")
    if min_samples < 1:
        raise fail(f"--min-samples: must be at least 1, got {min_samples}")
    if gpu_idle_watts is not None and gpu_idle_watts < 0:
        raise fail(f"--gpu-idle-watts: must be >= 0, got {gpu_idle_watts:g}")
    if query is not None and gpu_idle_watts:
        raise fail(
            "--gpu-idle-watts applies to the default query only; subtract the idle "
            "inside --query, or drop --query"
        )


class _Spans(NamedTuple):
    """The query durations in seconds: history, query step, window per query, timeout."""

    since_s: int
    resolution_s: int
    chunk_s: int
    timeout_s: int


def _query_spans(*, since: str, resolution: str, chunk: str, timeout: str) -> _Spans:
    """The duration options parsed and checked against each other (and Prometheus's
    points per series); exit 2 naming the option at fault."""
    since_s = _duration(since, "--since", "14d")
    resolution_s = _duration(resolution, "--resolution", "1m")
    chunk_s = _duration(chunk, "--chunk", "6h")
    timeout_s = _duration(timeout, "--timeout", "60s")
    if chunk_s < resolution_s:
        raise fail(f"--chunk ({chunk}) is shorter than --resolution ({resolution})")
    if chunk_s // resolution_s > MAX_POINTS:
        raise fail(
            f"--chunk {chunk} at --resolution {resolution} is {chunk_s // resolution_s} points "
            f"per series; Prometheus allows {MAX_POINTS}: shorten --chunk"
        )
    if since_s < resolution_s:
        raise fail(f"--since ({since}) is shorter than --resolution ({resolution})")
    return _Spans(since_s, resolution_s, chunk_s, timeout_s)


def _learned(
    client: RangeClient, settings: LearnSettings, *, service_label: str, labels_metric: str
) -> LearnResult:
    """The profiles learned through ``client``, its problems echoed as warnings; exit 2
    on a learning error and 1 when no service had samples."""
    try:
        result = learn(client, settings)
    except LearnError as exc:
        raise fail(str(exc)) from exc
    for line in result.problems:
        typer.echo(f"warning: {line}", err=True)
    if not result.learned and settings.services:
        raise fail(
            f"no samples for --service {', '.join(settings.services)} in "
            f"{iso_time(settings.start)}–{iso_time(settings.end)}; check the names (the "
            f"{service_label} label's values) or lengthen --since",
            code=1,
        )
    if not result.learned:
        raise fail(
            f"no samples in {iso_time(settings.start)}–{iso_time(settings.end)}: no series carried "
            f"{settings.service_label!r} (does {labels_metric} export the pod label? "
            f"kube-state-metrics needs --metric-labels-allowlist=pods=[{service_label}]), "
            "or lengthen --since",
            code=1,
        )
    return result


def _echo_learned(result: LearnResult, settings: LearnSettings, *, with_gpu_idle: bool) -> None:
    """The summary of what was learned on stderr, with a note when the profiles include
    the GPUs' idle draw (``with_gpu_idle``); exit 1 listing thin slots, if any."""
    missing = sorted(set(settings.services) - set(result.learned))
    if missing:
        typer.echo(f"warning: no samples for --service {', '.join(missing)}", err=True)
    for line in _summary(result, settings):
        typer.echo(line, err=True)
    if with_gpu_idle:
        typer.echo(
            "note: --gpu-idle-watts not given: the profiles include each GPU's idle draw, "
            "which node idleWatts counts too",
            err=True,
        )
    if result.thin:
        for line in result.thin:
            typer.echo(f"thin: {line}", err=True)
        raise fail(
            "some slots have too few samples; nothing written. Lengthen --since, lower "
            "--min-samples, or pass --fill nearest to copy the nearest slot's value",
            code=1,
        )


def _write(
    files: Mapping[str, str],
    output_format: LearnOutput,
    output: Path | None,
    name: str,
    namespace: str,
    settings: LearnSettings,
) -> None:
    if output_format is LearnOutput.configmap:
        annotations = {
            "powercap.io/learned-from": settings.url,
            "powercap.io/learned-window": f"{iso_time(settings.start)}/{iso_time(settings.end)}",
        }
        text = dump_yaml(configmap_document(files, name, namespace, annotations=annotations))
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
    """Add the ``profiles`` command group (``profiles learn``) to ``app``."""
    app.add_typer(profiles_app, name="profiles")
