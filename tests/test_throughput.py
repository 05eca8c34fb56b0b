"""The throughput model, the limits that cover an overage, and provisioning at a limit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from placement.metrics import evaluate
from placement.problem import Problem
from placement.provisioning import at_limit, throughput_hosted, uncapped
from placement.scenario.building import spec_from_problem
from placement.scenario.spec import ScenarioError
from placement.strategies import run_strategy
from placement.throughput import (
    DEFAULT_CURVE,
    GpuSet,
    ThroughputCurve,
    capped_profile,
    parse_limit,
    plan_limits,
)
from tests.problems import SMALL_GRID, problem_from_dict, problems

# -- the curve ---------------------------------------------------------------------------


def test_default_curve_is_monotone_concave_and_one_at_the_default() -> None:
    xs = np.linspace(DEFAULT_CURVE.floor, 1.0, 50)
    ys = [DEFAULT_CURVE.at(float(x)) for x in xs]
    assert ys[-1] == 1.0
    assert bool(np.all(np.diff(ys) >= 0))
    assert DEFAULT_CURVE.concave
    assert DEFAULT_CURVE.floor == pytest.approx(200 / 700)


def test_curve_interpolates_and_refuses_below_its_floor() -> None:
    curve = ThroughputCurve(points=((0.5, 0.6), (1.0, 1.0)))
    assert curve.at(0.75) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="outside the curve"):
        curve.at(0.4)


@pytest.mark.parametrize(
    ("points", "message"),
    [
        ([], "at least"),
        ([(0.6, 0.9), (0.8, 0.8), (1.0, 1.0)], "non-decreasing"),
        ([(0.8, 0.9), (0.6, 0.95), (1.0, 1.0)], "increase strictly"),
        ([(0.0, 0.5), (1.0, 1.0)], r"outside \(0, 1\]"),
        ([(0.6, 1.2), (1.0, 1.0)], "throughput 1.2"),
        ([(0.6, 0.9), (0.9, 0.95)], r"last point must be \[1.0, 1.0\]"),
    ],
)
def test_bad_curves_name_the_problem(points: list[tuple[float, float]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ThroughputCurve(points=tuple(points))


def test_limits_parse_as_fraction_or_watts() -> None:
    assert parse_limit(0.8, 700.0) == 0.8
    assert parse_limit("560W", 700.0) == pytest.approx(0.8)
    assert parse_limit("350 w", 700.0) == pytest.approx(0.5)
    for bad in ("800W", 1.5, 0, "fast"):
        with pytest.raises(ValueError, match="powerLimit"):
            parse_limit(bad, 700.0)


def test_capped_profile_clips_only_above_the_bound() -> None:
    profile = np.array([1000.0, 3000.0, 5000.0])
    # 4 GPUs of 700 W at 0.5: the bound is 6000 - 4 * 350 = 4600 W
    clipped, nameplate = capped_profile(profile, 6000.0, gpus=4, fraction=0.5, gpu_watts=700.0)
    assert nameplate == 4600.0
    assert clipped.tolist() == [1000.0, 3000.0, 4600.0]


# -- covering an overage -----------------------------------------------------------------

LINEAR = ThroughputCurve(points=((0.2, 0.2), (1.0, 1.0)))


def gpu_set(n: int, **overrides: Any) -> GpuSet:
    base: dict[str, Any] = {
        "current": np.full(n, 700.0),
        "default": np.full(n, 700.0),
        "floor": np.full(n, 200.0),
        "weight": np.ones(n),
        "high": np.zeros(n, dtype=bool),
        "curves": (DEFAULT_CURVE,) * n,
    }
    return GpuSet(**{**base, **overrides})


def test_low_priority_gpus_are_capped_first() -> None:
    gpus = gpu_set(2, weight=np.array([1.0, 10.0]), high=np.array([False, True]))
    plan = plan_limits(gpus, 300.0)
    assert plan.limits[1] == 700.0 and plan.limits[0] == pytest.approx(400.0)
    assert plan.uncovered == 0.0 and not plan.used_high


def test_high_priority_only_past_the_second_threshold() -> None:
    gpus = gpu_set(2, high=np.array([False, True]))
    plan = plan_limits(gpus, 600.0)  # the low GPU frees 500 W at most (700 → 200)
    assert plan.limits[0] == pytest.approx(200.0)
    assert plan.limits[1] == pytest.approx(600.0)
    assert plan.used_high and plan.uncovered == pytest.approx(0.0)


def test_cheapest_weighted_loss_first_within_a_tier() -> None:
    # equal curves: the lighter pod loses throughput first
    gpus = gpu_set(2, weight=np.array([5.0, 1.0]))
    plan = plan_limits(gpus, 100.0)
    assert plan.limits.tolist() == pytest.approx([700.0, 600.0])


def test_what_cannot_be_covered_is_reported() -> None:
    gpus = gpu_set(2, floor=np.array([500.0, 600.0]))
    plan = plan_limits(gpus, 1000.0)
    assert plan.limits.tolist() == pytest.approx([500.0, 600.0])
    assert plan.uncovered == pytest.approx(700.0)


@st.composite
def gpu_sets(draw: st.DrawFn) -> GpuSet:
    n = draw(st.integers(1, 6))
    default = np.array(draw(st.lists(st.sampled_from([400.0, 700.0]), min_size=n, max_size=n)))
    current = default * np.array(
        draw(st.lists(st.floats(0.5, 1.0), min_size=n, max_size=n)), dtype=np.float64
    )
    floor = default * np.array(draw(st.lists(st.floats(0.2, 0.6), min_size=n, max_size=n)))
    return GpuSet(
        current=current,
        default=default,
        floor=floor,
        weight=np.array(draw(st.lists(st.floats(0.0, 10.0), min_size=n, max_size=n))),
        high=np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n))),
        curves=tuple(
            draw(st.lists(st.sampled_from([DEFAULT_CURVE, LINEAR]), min_size=n, max_size=n))
        ),
    )


@settings(max_examples=150, deadline=None)
@given(gpus=gpu_sets(), overage=st.floats(0.0, 3000.0))
def test_limits_cover_what_they_can_and_respect_floors(gpus: GpuSet, overage: float) -> None:
    plan = plan_limits(gpus, overage)
    room = float((gpus.current - gpus.lowest).sum())
    assert np.all(plan.limits >= gpus.lowest - 1e-6)
    assert np.all(plan.limits <= gpus.current + 1e-6)
    assert plan.freed == pytest.approx(min(overage, room), abs=1e-6)
    assert plan.uncovered == pytest.approx(max(0.0, overage - room), abs=1e-6)
    assert plan.lost >= -1e-9
    # high-priority GPUs move only when the low ones are all at their lowest
    low = ~gpus.high
    if np.any(plan.limits[gpus.high] < gpus.current[gpus.high] - 1e-6):
        assert np.allclose(plan.limits[low], gpus.lowest[low], atol=1e-6)


@settings(max_examples=100, deadline=None)
@given(gpus=gpu_sets(), a=st.floats(0.0, 2000.0), b=st.floats(0.0, 2000.0))
def test_more_overage_never_raises_a_limit_nor_loses_less(gpus: GpuSet, a: float, b: float) -> None:
    small, large = plan_limits(gpus, min(a, b)), plan_limits(gpus, max(a, b))
    assert np.all(large.limits <= small.limits + 1e-6)
    assert large.lost >= small.lost - 1e-9


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(st.floats(0.1, 10.0), min_size=2, max_size=3),
    overage=st.floats(0.0, 1000.0),
)
def test_greedy_is_optimal_for_concave_curves(weights: list[float], overage: float) -> None:
    # no limit on a 10 W grid that frees as much loses less than the greedy
    n = len(weights)
    plan = plan_limits(gpu_set(n, weight=np.array(weights)), overage)
    grid = np.arange(200.0, 701.0, 10.0)
    combos = np.array(np.meshgrid(*[grid] * n)).reshape(n, -1)  # (n × combos)
    xs, ys = zip(*DEFAULT_CURVE.points, strict=True)
    lost = np.asarray(weights) @ (1.0 - np.interp(combos / 700.0, xs, ys))
    enough = 700.0 * n - combos.sum(axis=0) >= overage - 1e-9
    assert plan.lost <= float(lost[enough].min()) + 1e-9


# -- provisioning at a limit -------------------------------------------------------------


def scenario(**service: Any) -> dict[str, Any]:
    return {
        "grid": SMALL_GRID,
        "domains": [{"name": "site", "cap": 20_000}],
        "nodes": [{"name": f"n{i}", "domain": "site", "gpus": 8} for i in range(4)],
        "services": [
            {
                "name": "chat",
                "replicas": 10,
                "gpusPerReplica": 4,
                "nameplateWatts": 4000,
                "profile": [1000.0] * 6 + [3800.0] * 6,
                **service,
            }
        ],
    }


def test_a_service_limit_clips_its_profile_and_more_replicas_fit() -> None:
    capped = problem_from_dict(scenario(powerLimit="420W"))  # 0.6 of 700 W
    # bound = 4000 - 4 * 280 = 2880 W per replica
    assert capped.services.profiles.max() == pytest.approx(2880.0)
    assert capped.services.nameplate[0] == pytest.approx(2880.0)
    free = uncapped(capped)
    assert free.services.profiles.max() == pytest.approx(3800.0)
    hosted_capped = evaluate(capped, run_strategy("greedy", capped).assignment).hosted_total
    hosted_free = evaluate(free, run_strategy("greedy", free).assignment).hosted_total
    assert hosted_free == 5 and hosted_capped == 6  # 20 kW / 3.8 kW vs / 2.88 kW
    # throughput-weighted: each capped replica counts its curve's 0.8
    assert throughput_hosted(capped, np.array([6])) == pytest.approx(6 * 0.8)
    assert throughput_hosted(free, np.array([5])) == pytest.approx(5.0)


def test_the_cli_limit_applies_where_a_service_sets_none() -> None:
    data = scenario()
    other = {**data["services"][0], "name": "batch", "powerLimit": 0.9}
    data["services"].append(other)
    problem = at_limit(problem_from_dict(data), "350W")
    assert problem.provisioning is not None
    assert problem.provisioning.applied.tolist() == pytest.approx([0.5, 0.9])


def test_tokens_per_second_make_throughput_absolute() -> None:
    problem = problem_from_dict(
        scenario(powerLimit=0.8, tokensPerSecond=1000, throughputCurve=[[0.5, 0.5], [1.0, 1.0]])
    )
    assert throughput_hosted(problem, np.array([2])) == pytest.approx(2 * 1000 * 0.8)


@pytest.mark.parametrize(
    ("service", "message"),
    [
        ({"powerLimit": "900W"}, r"services\[0\].powerLimit: 900 W of 700 W"),
        ({"powerLimit": 0.25}, r"services\[0\].powerLimit: .*below the throughput curve's floor"),
        ({"throughputCurve": [[0.8, 1.0], [0.5, 0.9]]}, r"services\[0\].throughputCurve\[1\]"),
    ],
)
def test_bad_limits_name_the_field(service: dict[str, Any], message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        problem_from_dict(scenario(**service))


def test_the_explicit_form_keeps_limits_without_clipping_twice() -> None:
    problem = problem_from_dict(scenario(powerLimit=0.6))
    again = problem_from_dict(
        spec_from_problem(problem).model_dump(by_alias=True, exclude_defaults=True)
    )
    assert np.allclose(again.services.profiles, problem.services.profiles)
    assert again.provisioning is not None and again.provisioning.applied[0] == 0.6


def test_a_small_nameplate_scales_with_the_limit_and_never_reaches_zero() -> None:
    # 8 GPUs of 700 W but a 3 kW nameplate: the GPU share is the whole nameplate
    clipped, nameplate = capped_profile(
        np.array([2900.0]), 3000.0, gpus=8, fraction=0.5, gpu_watts=700.0
    )
    assert nameplate == pytest.approx(1500.0)
    assert clipped.tolist() == [1500.0]


@settings(max_examples=40, deadline=None)
@given(problem=problems(), fraction=st.floats(0.3, 1.0))
def test_a_limit_only_lowers_profiles_and_uncapping_restores_them(
    problem: Problem, fraction: float
) -> None:
    capped = at_limit(problem, fraction)
    assert np.all(capped.services.profiles <= problem.services.profiles + 1e-9)
    assert np.all(capped.services.nameplate <= problem.services.nameplate + 1e-9)
    # the bound is at least fraction × nameplate: nothing becomes free
    assert np.all(capped.services.nameplate >= fraction * problem.services.nameplate - 1e-6)
    again = uncapped(capped)
    assert np.array_equal(again.services.profiles, problem.services.profiles)
    assert np.array_equal(again.services.nameplate, problem.services.nameplate)
    # the capped problem's placements are admissible against its own profiles
    assert evaluate(capped, run_strategy("greedy", capped).assignment).violations == 0
