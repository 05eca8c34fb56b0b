"""Learned profiles: per-slot quantiles (placement.learning) and the learner's pure edge
(windows, PromQL, parsing and documents in extender.profiles.samples)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from extender.config.learn import MAX_POINTS, LearnRefreshSettings, LearnSpec, resolve_learn
from extender.config.loading import config_from_data
from extender.config.model import ProfileDocument
from extender.profiles.documents import output_files
from extender.profiles.refresh import ProfileRefresher
from extender.profiles.samples import (
    LearnResult,
    LearnSettings,
    add_matrix,
    default_query,
    learn,
    promql_label,
    windows,
)
from placement.grid import Grid
from placement.learning import (
    fill_nearest,
    learn_profile,
    slot_quantiles,
    slot_runs,
    slots_of,
    thin_problems,
)
from powercap.cli import app, load_plugins

DAY = 86400
HOUR_GRID = Grid(period_s=DAY, step_s=3600)  # T = 24, small enough to reason about
ORIGIN = 1_700_006_400.0  # a UTC midnight (2023-11-15)


def test_slots_of_matches_grid_slot_of() -> None:
    grid = Grid(period_s=DAY, step_s=600, offset_s=3600)
    times = ORIGIN + np.array([0, 599, 600, 3599, 82_799, 82_800, DAY - 1, DAY, 12.7])
    assert slots_of(times, grid).tolist() == [grid.slot_of(t) for t in times]


def test_quantile_per_slot_is_numpys_on_constructed_data() -> None:
    rng = np.random.default_rng(7)
    slots = rng.integers(0, 24, 5000)
    watts = rng.gamma(3.0, 400.0, 5000)
    for q in (0.0, 0.5, 0.9, 0.95, 0.99, 1.0):
        values, counts = slot_quantiles(slots, watts, 24, quantile=q)
        for t in range(24):
            mine = watts[slots == t]
            assert counts[t] == mine.size
            # The same arithmetic as numpy, so equal to the last bit.
            assert values[t] == np.quantile(mine, q), (q, t)


def test_quantile_of_known_values() -> None:
    # Slot 0 holds 1..100 W: p95 by linear interpolation is 95.05; slot 1 one sample.
    times = np.concatenate([ORIGIN + np.arange(100) * 30.0, [ORIGIN + 3600 + 5]])
    watts = np.concatenate([np.arange(100, 0, -1, dtype=float), [42.0]])
    lp = learn_profile(
        "svc", times, watts, grid=HOUR_GRID, quantile=0.95, min_samples=1, fill="nearest"
    )
    assert lp.profile[0] == pytest.approx(95.05, abs=1e-12)
    assert lp.profile[1] == 42.0
    assert lp.counts[:2].tolist() == [100, 1]
    assert lp.samples == 101


def test_wraparound_at_midnight_and_offset() -> None:
    # Samples at 23:55 and 00:05 of several days land in the last and first slots.
    days = np.arange(5) * DAY
    late = ORIGIN - 300 + days  # 23:55
    early = ORIGIN + 300 + days  # 00:05
    times = np.concatenate([late, early])
    watts = np.concatenate([np.full(5, 900.0), np.full(5, 100.0)])
    lp = learn_profile("svc", times, watts, grid=HOUR_GRID, quantile=0.5, min_samples=5)
    assert lp.profile[23] == 900.0 and lp.profile[0] == 100.0
    assert lp.counts[23] == 5 and lp.counts[0] == 5
    # An hour's offset moves both one slot on: 23:55 becomes 00:55 (slot 0).
    shifted = Grid(period_s=DAY, step_s=3600, offset_s=3600)
    lp = learn_profile("svc", times, watts, grid=shifted, quantile=0.5, min_samples=5)
    assert lp.profile[0] == 900.0 and lp.profile[1] == 100.0


def test_too_few_samples_are_reported_not_zero() -> None:
    # Ten samples in every slot but 03:00 and 04:00 (two), and none at 05:00.
    hours = np.repeat(np.arange(24), 10)
    keep = ~np.isin(hours, [3, 4, 5]) | (np.arange(hours.size) % 10 < 2) & (hours != 5)
    times = ORIGIN + hours[keep] * 3600.0 + 60
    watts = np.full(times.size, 500.0)
    lp = learn_profile("chat", times, watts, grid=HOUR_GRID, quantile=0.95, min_samples=10)
    assert not lp.complete
    assert np.isnan(lp.profile[[3, 4, 5]]).all()
    assert (lp.profile[np.r_[0:3, 6:24]] == 500.0).all()
    assert lp.thin.sum() == 3 and lp.coverage == pytest.approx(21 / 24)
    assert thin_problems(lp, HOUR_GRID) == [
        "chat: 3 slots 03:00–06:00 with 0–2 samples (at least 10 wanted)"
    ]


def test_fill_nearest_wraps_and_prefers_the_larger_at_a_tie() -> None:
    values = np.array([10.0, np.nan, np.nan, 40.0, np.nan, np.nan])
    ok = np.isfinite(values)
    # Slot 1 is next to 0; slot 2 next to 3; slot 4 next to 3; slot 5 next to 0 (wrapping).
    assert fill_nearest(values, ok).tolist() == [10.0, 10.0, 40.0, 40.0, 40.0, 10.0]
    tie = np.array([10.0, np.nan, 30.0, np.nan])
    assert fill_nearest(tie, np.isfinite(tie)).tolist() == [10.0, 30.0, 30.0, 30.0]
    assert np.isnan(fill_nearest(np.full(3, np.nan), np.zeros(3, dtype=bool))).all()


def test_fill_nearest_completes_a_thin_profile_and_says_which() -> None:
    hours = np.arange(24)
    hours = hours[hours != 23]  # nothing at 23:00: it takes 22:00's or 00:00's (larger)
    times = ORIGIN + hours * 3600.0
    watts = hours * 10.0
    lp = learn_profile(
        "b", times, watts, grid=HOUR_GRID, quantile=0.95, min_samples=1, fill="nearest"
    )
    assert lp.complete and lp.filled.tolist() == [h == 23 for h in range(24)]
    assert lp.profile[23] == 220.0
    assert thin_problems(lp, HOUR_GRID) == []
    # Nothing at all cannot be filled.
    empty = learn_profile("e", [], [], grid=HOUR_GRID, fill="nearest")
    assert not empty.complete and empty.coverage == 0.0
    assert thin_problems(empty, HOUR_GRID) == [
        "e: all 24 slots with 0–0 samples (at least 10 wanted)"
    ]


def test_negative_quantiles_clamp_to_zero_and_are_flagged() -> None:
    times = ORIGIN + np.arange(24) * 3600.0
    watts = np.where(np.arange(24) < 2, -15.0, 100.0)
    lp = learn_profile("s", times, watts, grid=HOUR_GRID, quantile=0.95, min_samples=1)
    assert lp.profile[:2].tolist() == [0.0, 0.0] and lp.clamped.sum() == 2


def test_non_finite_samples_are_dropped_and_counted() -> None:
    times = ORIGIN + np.arange(4) * 3600.0
    lp = learn_profile("s", times, [1.0, np.nan, np.inf, 2.0], grid=HOUR_GRID, min_samples=1)
    assert lp.dropped == 2 and lp.samples == 2


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="quantile"):
        learn_profile("s", [ORIGIN], [1.0], grid=HOUR_GRID, quantile=1.5)
    with pytest.raises(ValueError, match="min_samples"):
        learn_profile("s", [ORIGIN], [1.0], grid=HOUR_GRID, min_samples=0)
    with pytest.raises(ValueError, match="2 times for 1 watts"):
        learn_profile("s", [ORIGIN, ORIGIN], [1.0], grid=HOUR_GRID)


def test_slot_runs_join_across_the_end() -> None:
    mask = np.array([1, 1, 0, 1, 0, 0, 1, 1], dtype=bool)
    assert slot_runs(mask) == [(6, 1), (3, 3)]
    assert slot_runs(np.zeros(4, dtype=bool)) == []
    assert slot_runs(np.ones(4, dtype=bool)) == [(0, 3)]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3 * DAY - 1),
            st.floats(0, 10_000, allow_nan=False, allow_infinity=False),
        ),
        min_size=1,
        max_size=300,
    ),
    st.floats(0, 1),
    st.sampled_from([600, 3600, 7200]),
)
def test_profile_lies_between_each_slots_min_and_max(
    pairs: list[tuple[int, float]], q: float, step: int
) -> None:
    grid = Grid(period_s=DAY, step_s=step)
    times = np.array([ORIGIN + t for t, _ in pairs])
    watts = np.array([w for _, w in pairs])
    lp = learn_profile("s", times, watts, grid=grid, quantile=q, min_samples=1)
    slots = slots_of(times, grid)
    assert lp.samples == len(pairs)
    for t in range(grid.slots):
        mine = watts[slots == t]
        if mine.size == 0:
            assert np.isnan(lp.profile[t]) and lp.thin[t]
        else:
            assert mine.min() <= lp.profile[t] <= mine.max()
            assert lp.profile[t] == np.quantile(mine, q)
    # A higher quantile is never lower.
    higher = learn_profile("s", times, watts, grid=grid, quantile=min(1.0, q + 0.1), min_samples=1)
    ok = np.isfinite(lp.profile)
    assert (higher.profile[ok] >= lp.profile[ok]).all()


# --- the edge's pure parts ---------------------------------------------------------------
def test_windows_cover_every_instant_once_within_the_point_limit() -> None:
    start, end = 1_000_030.5, 1_000_030.5 + 14 * DAY
    chunks = windows(start, end, 60, chunk_s=6 * 3600)
    instants = np.concatenate([np.arange(a, b + 1, 60) for a, b in chunks])
    assert instants[0] >= start and instants[-1] <= end
    assert instants[0] - start < 60 and end - instants[-1] < 60
    assert (np.diff(instants) == 60).all()  # no gap, no instant twice
    assert max((b - a) // 60 + 1 for a, b in chunks) == 360 <= MAX_POINTS
    assert windows(0, 59, 60, chunk_s=3600) == [(0, 0)]


def test_default_query_joins_pod_power_to_the_service_label() -> None:
    label = promql_label("powercap.io/service")
    assert label == "label_powercap_io_service"
    assert default_query(label, 60.0) == (
        'sum by (namespace, pod) (DCGM_FI_DEV_POWER_USAGE{pod!=""} - 60)'
        " * on (namespace, pod) group_left (label_powercap_io_service)"
        " max by (namespace, pod, label_powercap_io_service)"
        ' (kube_pod_labels{label_powercap_io_service!=""})'
    )
    assert "- 0" not in default_query(label)


def _series(service: str | None, pod: str, values: list[tuple[float, str]]) -> dict[str, Any]:
    metric = {"namespace": "llm", "pod": pod}
    if service is not None:
        metric["label_powercap_io_service"] = service
    return {"metric": metric, "values": [[t, v] for t, v in values]}


class FakeRange:
    """Answers every chunk from fixed series, keeping only the instants asked for."""

    def __init__(self, series: list[dict[str, Any]]) -> None:
        self.series = series
        self.calls: list[tuple[float, float, str]] = []

    def custom_query_range(
        self, query: str, start_time: Any, end_time: Any, step: str, params: Any = None
    ) -> Any:
        a, b = start_time.timestamp(), end_time.timestamp()
        self.calls.append((a, b, step))
        out = []
        for s in self.series:
            vals = [v for v in s["values"] if a <= v[0] <= b]
            if vals:
                out.append({"metric": s["metric"], "values": vals})
        return out


def _hourly(watts: float, pods: int, days: int) -> list[dict[str, Any]]:
    return [
        _series(
            "chat", f"chat-{p}", [(ORIGIN + i * 600.0, f"{watts + p}") for i in range(days * 144)]
        )
        for p in range(pods)
    ]


def test_learn_pools_pods_and_chunks_and_writes_loadable_documents(tmp_path: Path) -> None:
    series = [*_hourly(1000.0, 3, 2), _series(None, "stray", [(ORIGIN, "5")])]
    client = FakeRange(series)
    s = LearnSettings(
        url="http://prom:9090",
        query="q",
        service_label="label_powercap_io_service",
        grid=HOUR_GRID,
        start=ORIGIN,
        end=ORIGIN + 2 * DAY - 1,
        resolution_s=600,
        chunk_s=6 * 3600,
        min_samples=12,
    )
    result = learn(client, s)
    assert len(client.calls) == 8 and all(step == "600s" for *_, step in client.calls)
    lp = result.learned["chat"]
    assert result.pods == {"chat": 3} and lp.complete
    assert lp.counts.tolist() == [6 * 2 * 3] * 24
    assert lp.profile[0] == np.quantile([1000.0, 1001.0, 1002.0] * 12, 0.95)
    assert len(result.problems) == 1 and "stray" in result.problems[0]
    files = output_files(result, s, ORIGIN + 2 * DAY)
    assert list(files) == ["chat.yaml"]
    doc = ProfileDocument.model_validate(yaml.safe_load(files["chat.yaml"]))
    assert doc.metadata.name == "chat" and "3 pods" in doc.description
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "chat.yaml").write_text(files["chat.yaml"])
    cfg = config_from_data(
        {
            "apiVersion": "powercap.io/v1alpha1",
            "kind": "PowercapConfig",
            "grid": {"period": "24h", "step": "1h"},
            "domains": [{"name": "site", "cap": 100000}],
            "profileFiles": ["profiles/*.yaml"],
            "services": {"chat": {"profile": "chat"}},
        },
        tmp_path,
    )
    np.testing.assert_allclose(cfg.profiles["chat"], lp.profile, atol=0.05)


def test_a_thin_service_is_reported() -> None:
    client = FakeRange(_hourly(500.0, 1, 1))
    s = LearnSettings(
        url="http://prom:9090",
        query="q",
        service_label="label_powercap_io_service",
        grid=HOUR_GRID,
        start=ORIGIN,
        end=ORIGIN + DAY - 1,
        resolution_s=600,
        min_samples=7,
    )
    result: LearnResult = learn(client, s)
    assert (
        len(result.thin) == 1
        and "all 24 slots" in result.thin[0]
        and "6–6 samples" in result.thin[0]
    )


def test_add_matrix_refuses_an_instant_answer() -> None:
    from extender.profiles.samples import LearnError, Samples

    with pytest.raises(LearnError, match="--query"):
        add_matrix(Samples(), [{"metric": {}, "value": [1, "2"]}], "x")


@pytest.fixture(scope="module")
def cli() -> Any:
    load_plugins(app)
    return app


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prometheus", "prom:9090"], "--prometheus: expected an http://"),
        (["--quantile", "95"], "--quantile: 95 is not in (0, 1]"),
        (["--since", "two weeks"], "--since: expected a duration"),
        (["--chunk", "30d"], "shorten --chunk"),
        (["--resolution", "20m"], "--resolution 20m is coarser than the grid step 10m"),
        (["--step", "7m"], "--step/--period: grid step 7m does not divide period 24h"),
        (["--until", "yesterday"], "--until: 'yesterday' is neither"),
        (["--query", "up", "--gpu-idle-watts", "60"], "--gpu-idle-watts applies to the default"),
        (["--config", "x.yaml", "--step", "5m"], "--config gives the grid"),
    ],
)
def test_bad_options_name_the_option_and_the_fix(cli: Any, args: list[str], message: str) -> None:
    full = ["profiles", "learn", "--prometheus", "http://127.0.0.1:1", *args]
    if args[0] == "--prometheus":
        full = ["profiles", "learn", *args]
    result = CliRunner().invoke(cli, full)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_an_unreachable_prometheus_is_an_error_naming_the_option(cli: Any) -> None:
    result = CliRunner().invoke(
        cli, ["profiles", "learn", "--prometheus", "http://127.0.0.1:1", "--since", "1h"]
    )
    assert result.exit_code == 2
    assert "cannot query Prometheus at http://127.0.0.1:1" in result.output
    assert "check --prometheus" in result.output


# --- re-learning while serving -------------------------------------------------------------
def _config(tmp: Path) -> Any:
    data: dict[str, Any] = {
        "apiVersion": "powercap.io/v1alpha1",
        "kind": "PowercapConfig",
        "grid": {"period": "24h", "step": "1h"},
        "domains": [{"name": "site", "cap": 100000}],
        "profiles": {"chat-prior": {"constant": 5000}},
        "services": {"chat": {"profile": "chat-prior"}, "other": {"profile": "chat-prior"}},
    }
    return config_from_data(data, tmp)


def _refresh_settings(**kw: Any) -> LearnRefreshSettings:
    spec = LearnSpec.model_validate({"refresh": "1h", "resolution": "10m", **kw})
    settings, problems = resolve_learn(spec, "http://prom:9090", 3600)
    assert problems == [] and settings is not None
    return settings


def test_a_refresh_replaces_the_learned_services_profiles(tmp_path: Path) -> None:
    config = _config(tmp_path)
    client = FakeRange(_hourly(1000.0, 2, 2))
    seen: list[Any] = []
    now = ORIGIN + 2 * DAY - 1
    refresher = ProfileRefresher(
        _refresh_settings(since="2d", minSamples=12),
        lambda: config,
        seen.append,
        client=client,
        clock=lambda: now,
    )
    assert refresher.refresh_once()
    (new,) = seen
    assert new.services["chat"].profile_name == "chat"
    np.testing.assert_array_equal(new.services["chat"].profile, new.profiles["chat"])
    assert new.profiles["chat"][0] == np.quantile([1000.0, 1001.0] * 12, 0.95)
    # Services without history keep the configured profile; the old config is untouched.
    assert new.services["other"].profile_name == "chat-prior"
    assert config.services["chat"].profile_name == "chat-prior"
    assert refresher.last_success == now and refresher.last_error is None
    # The window is the `since` before now, on the configured grid.
    assert client.calls[0][0] == ORIGIN and client.calls[-1][1] <= now


def test_an_incomplete_or_failed_refresh_keeps_the_profiles_in_use(tmp_path: Path) -> None:
    config = _config(tmp_path)
    seen: list[Any] = []
    thin = ProfileRefresher(
        _refresh_settings(since="2d", minSamples=100),
        lambda: config,
        seen.append,
        client=FakeRange(_hourly(1000.0, 1, 2)),
        clock=lambda: ORIGIN + 2 * DAY - 1,
    )
    assert thin.refresh_once()
    assert seen[0].services["chat"].profile_name == "chat-prior"
    assert "chat" not in seen[0].profiles
    assert thin.kept and "kept the configured profile" in thin.kept[0]

    class Down:
        def custom_query_range(self, *a: Any, **kw: Any) -> Any:
            raise ConnectionError("connection refused")

    seen.clear()
    down = ProfileRefresher(_refresh_settings(), lambda: config, seen.append, client=Down())
    assert not down.refresh_once() and seen == []
    assert down.last_error is not None and "connection refused" in down.last_error


def test_the_refresher_thread_runs_at_start_and_stops(tmp_path: Path) -> None:
    config = _config(tmp_path)
    calls: list[float] = []

    class Counting(ProfileRefresher):
        def refresh_once(self) -> bool:
            calls.append(time.time())
            return True

    refresher = Counting(_refresh_settings(), lambda: config, lambda c: None, client=FakeRange([]))
    refresher.start()
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    refresher.stop()
    assert len(calls) == 1  # the first refresh at start; the next one is an hour away


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ({"refresh": "soon"}, "learn.refresh: expected a duration"),
        ({"refresh": "1h", "chunk": "30d"}, "learn.chunk: 43200 points per series"),
        ({"refresh": "1h", "resolution": "2h"}, "learn.resolution: coarser than the grid step"),
        ({"refresh": "1h", "query": "x", "gpuIdleWatts": 60}, "learn.gpuIdleWatts: applies"),
    ],
)
def test_learn_section_problems_name_the_field(section: dict[str, Any], problem: str) -> None:
    _, problems = resolve_learn(LearnSpec.model_validate(section), "http://p:9090", 3600)
    assert any(p.startswith(problem) for p in problems), problems


def test_learn_section_needs_a_prometheus_and_is_off_without_refresh() -> None:
    _, problems = resolve_learn(LearnSpec.model_validate({"refresh": "1h"}), None, 600)
    assert problems and problems[0].startswith("learn.prometheus:")
    settings, problems = resolve_learn(LearnSpec(), "http://p:9090", 600)
    assert settings is None and problems == []
