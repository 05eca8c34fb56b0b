"""Carbon-aware caps, emissions of a placement, budgets and the EU ETS figures."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from placement.assignment import Assignment
from placement.carbon.emissions import check_budget, emissions_kg, placement_emissions
from placement.carbon.intensity import IntensitySeries, day_window, on_grid
from placement.carbon.intensity_csv import read_intensity_csv
from placement.carbon.market import (
    EuaPrice,
    PriceSeriesError,
    allowance_position,
    emission_cost_eur,
    savings,
)
from placement.carbon.policy import DEFAULT_POLICY, CapPolicy, cap_schedule, carbon_aware
from placement.carbon.price_csv import read_eua_csv
from placement.problem import Problem
from tests.problems import SMALL_GRID, problem_from_dict, problems

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DAY = date(2020, 6, 1)
T0 = int(datetime(2020, 6, 1, tzinfo=UTC).timestamp())


def site(**extra: Any) -> Problem:
    """site → rack-a, rack-b; one node each (idle 1 kW, 500 W); a flat and a stepped service."""
    return problem_from_dict(
        {
            "metadata": {"name": "carbon"},
            "grid": SMALL_GRID,  # 12 slots of 2 h
            "domains": [
                {"name": "site", "cap": 20_000},
                {"name": "rack-a", "parent": "site", "cap": 12_000},
                {"name": "rack-b", "parent": "site", "cap": 12_000},
            ],
            "nodes": [
                {"name": "a", "domain": "rack-a", "gpus": 8, "idleWatts": 1000},
                {"name": "b", "domain": "rack-b", "gpus": 8, "idleWatts": 500},
            ],
            "services": [
                {
                    "name": "flat",
                    "replicas": 2,
                    "gpusPerReplica": 4,
                    "nameplateWatts": 3000,
                    "profile": {"constant": 2000},
                },
                {
                    "name": "day",
                    "replicas": 1,
                    "gpusPerReplica": 4,
                    "nameplateWatts": 3000,
                    "profile": [0] * 6 + [3000] * 6,
                },
            ],
            **extra,
        }
    )


def counts(problem: Problem, table: dict[tuple[str, str], int]) -> Assignment:
    a = np.zeros((problem.services.size, problem.fleet.size), dtype=np.int64)
    for (svc, node), k in table.items():
        a[problem.services.index[svc], problem.fleet.index[node]] = k
    return Assignment(a)


def series_of(values: list[float], step_s: int = 7200, t0: int = T0) -> IntensitySeries:
    return IntensitySeries.from_arrays([t0 + step_s * k for k in range(len(values))], values)


# ---------------------------------------------------------------- policy


def test_policy_interpolates_clamps_and_floors() -> None:
    policy = CapPolicy.parse("200:1.0,400:0.8,600:0.6", floor=0.7)
    assert policy.fraction(100) == 1.0
    assert policy.fraction(200) == 1.0
    assert policy.fraction(300) == pytest.approx(0.9)
    assert policy.fraction(400) == pytest.approx(0.8)
    assert policy.fraction(500) == pytest.approx(0.7)  # 0.7 by the line, the floor too
    assert policy.fraction(550) == pytest.approx(0.7)  # 0.65 by the line: floored
    assert policy.fraction(10_000) == pytest.approx(0.7)
    assert policy.describe() == "200:1,400:0.8,600:0.6 floor 0.7"


@pytest.mark.parametrize(
    ("text", "floor", "message"),
    [
        ("200:1.0,400:1.1", 0.0, r"\(0, 1\]"),
        ("200:0.8,400:0.9", 0.0, "must not rise"),
        ("400:1.0,200:0.8", 0.0, "strictly increasing"),
        ("200=1.0", 0.0, "intensity:fraction pairs"),
        ("200:1.0", 1.5, "floor"),
        ("-1:1.0", 0.0, "non-negative"),
    ],
)
def test_bad_policies_say_why(text: str, floor: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CapPolicy.parse(text, floor)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 1000), st.floats(0.05, 1.0)), min_size=1, max_size=5),
    st.floats(0, 1),
    st.floats(0, 2000),
    st.floats(0, 2000),
)
def test_higher_intensity_never_gives_a_higher_cap(
    points: list[tuple[float, float]], floor: float, a: float, b: float
) -> None:
    xs = sorted({round(x, 3) for x, _ in points})
    ys = sorted((y for _, y in points), reverse=True)[: len(xs)]
    policy = CapPolicy(tuple(xs), tuple(ys), floor)
    low, high = sorted((a, b))
    assert policy.fraction(high) <= policy.fraction(low) + 1e-12
    assert floor - 1e-12 <= policy.fraction(high) <= 1.0


def test_carbon_aware_scales_only_the_site_by_default() -> None:
    problem = site()
    intensity = np.array([100.0] * 4 + [300.0] * 4 + [600.0] * 4)
    aware = carbon_aware(problem, intensity, CapPolicy.parse("150:1,450:0.7"))
    s, a = problem.tree.index["site"], problem.tree.index["rack-a"]
    np.testing.assert_allclose(aware.tree.caps[s], [20_000] * 4 + [17_000] * 4 + [14_000] * 4)
    np.testing.assert_array_equal(aware.tree.caps[a], problem.tree.caps[a])
    assert problem.tree.caps[s].max() == 20_000  # the input is untouched
    racks = carbon_aware(problem, intensity, CapPolicy.parse("150:1,450:0.7"), domains=["rack-a"])
    np.testing.assert_array_equal(racks.tree.caps[s], problem.tree.caps[s])
    assert racks.tree.caps[a, -1] == pytest.approx(12_000 * 0.7)


def test_cap_schedule_checks_shape_and_domains() -> None:
    problem = site()
    with pytest.raises(ValueError, match="12 slots"):
        cap_schedule(problem, np.ones(5), {"site": DEFAULT_POLICY})
    with pytest.raises(ValueError, match="unknown domain 'rack-z'"):
        cap_schedule(problem, np.ones(12), {"rack-z": DEFAULT_POLICY})


@settings(max_examples=40, deadline=None)
@given(problems(), st.lists(st.floats(0, 1500), min_size=12, max_size=12))
def test_carbon_aware_caps_never_exceed_the_originals(
    problem: Problem, intensity: list[float]
) -> None:
    names = list(problem.tree.names)
    aware = carbon_aware(problem, np.array(intensity), DEFAULT_POLICY, domains=names)
    assert np.all(aware.tree.caps <= problem.tree.caps + 1e-9)
    assert np.all(aware.tree.caps >= problem.tree.caps * DEFAULT_POLICY.floor - 1e-9)


# ---------------------------------------------------------------- emissions


def test_emissions_of_a_constructed_placement_are_exact() -> None:
    problem = site()
    # rack-a: node a (idle 1000) + 2 × flat (2000) = 5000 W all day.
    # rack-b: node b (idle 500) + day: 500 W for 6 slots, 3500 W for 6 slots.
    assignment = counts(problem, {("flat", "a"): 2, ("day", "b"): 1})
    intensity = [100.0] * 6 + [200.0] * 6
    window = day_window(series_of(intensity), problem.grid, DAY)
    e = placement_emissions(problem, assignment, window)
    # kg = g/kWh × W/1000 × 2 h / 1000
    rack_a = 5000 / 1000 * 2 * (6 * 100 + 6 * 200) / 1000
    rack_b = (500 / 1000 * 2 * 6 * 100 + 3500 / 1000 * 2 * 6 * 200) / 1000
    assert e.of("rack-a") == pytest.approx(rack_a)  # 18 kg
    assert e.of("rack-b") == pytest.approx(rack_b)  # 9 kg
    assert e.site_kg == pytest.approx(rack_a + rack_b)
    assert e.idle_kg[0] == pytest.approx(1500 / 1000 * 2 * (6 * 100 + 6 * 200) / 1000)
    assert e.energy_kwh[0] == pytest.approx((5000 * 24 + 500 * 12 + 3500 * 12) / 1000)
    assert e.hosted == 3
    assert e.service_kg == pytest.approx(e.site_kg - e.idle_kg[0])


def test_window_longer_than_the_period_repeats_the_profile() -> None:
    problem = site()
    assignment = counts(problem, {("day", "b"): 1})
    series = series_of([100.0] * 12 + [300.0] * 12)  # two days
    from placement.carbon.intensity import on_window

    window = on_window(series, problem.grid, T0, slots=24)
    e = placement_emissions(problem, assignment, window)
    one_day = (1000 + 500) * 2 * 12 + 3000 * 2 * 6  # Wh per day
    assert e.site_kg == pytest.approx(one_day * (100 + 300) / 1e6)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(0, 1e5), min_size=12, max_size=12),
    st.lists(st.floats(0, 1e3), min_size=12, max_size=12),
    st.floats(0, 10),
)
def test_emissions_are_linear_in_power(
    load: list[float], intensity: list[float], factor: float
) -> None:
    p = np.array([load])
    i = np.array(intensity)
    base = emissions_kg(p, i, 2.0)
    np.testing.assert_allclose(
        emissions_kg(p * factor, i, 2.0), base * factor, rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(
        emissions_kg(p + p, i, 2.0), emissions_kg(p, i, 2.0) * 2, rtol=1e-9, atol=1e-12
    )


def test_budget_check_and_largest_scale() -> None:
    problem = site()
    assignment = counts(problem, {("flat", "a"): 2, ("day", "b"): 1})
    window = day_window(series_of([100.0] * 6 + [200.0] * 6), problem.grid, DAY)
    e = placement_emissions(problem, assignment, window)
    total, idle = e.site_kg, float(e.idle_kg[0])  # 27.0, 5.4
    over = check_budget(e, 20.0)
    assert not over.fits and over.margin_kg == pytest.approx(20.0 - total)
    assert over.max_service_scale == pytest.approx((20.0 - idle) / (total - idle))
    assert check_budget(e, 30.0).fits
    rack = check_budget(e, 20.0, "rack-a")  # 18 kg, 3.6 of them idle
    assert rack.fits and rack.domain == "rack-a"
    assert rack.max_service_scale == pytest.approx((20.0 - 3.6) / (18.0 - 3.6))
    assert check_budget(e, total).fits  # the budget itself is allowed
    with pytest.raises(ValueError, match="budget"):
        check_budget(e, -1.0)


# ---------------------------------------------------------------- EU ETS


def test_cost_with_a_constant_and_a_daily_series(tmp_path: Path) -> None:
    problem = site()
    assignment = counts(problem, {("flat", "a"): 2})
    # 100 g/kWh for 24 h; the site draws 5500 W → 13.2 kg per day.
    e = placement_emissions(
        problem, assignment, day_window(series_of([100.0] * 12), problem.grid, DAY)
    )
    assert e.site_kg == pytest.approx(13.2)
    assert emission_cost_eur(e, EuaPrice(constant=25.0)) == pytest.approx(13.2 / 1000 * 25)
    prices = tmp_path / "prices.csv"
    prices.write_text(
        "datetime,open,settle\n2020-05-28,1,20.0\n2020-05-29,1,22.0\n2020-06-02,1,30.0\n"
    )
    series = read_eua_csv(prices)
    # 2020-06-01 is a Monday: the Friday settle carries over the weekend.
    assert series.on(
        np.array(["2020-05-31", "2020-06-01", "2020-06-02"], "datetime64[D]")
    ).tolist() == [
        22.0,
        22.0,
        30.0,
    ]
    assert emission_cost_eur(e, series) == pytest.approx(13.2 / 1000 * 22.0)


def test_price_series_outside_its_span_is_an_error() -> None:
    price = EuaPrice(days=np.array(["2020-01-06"], "datetime64[D]"), settles=np.array([25.0]))
    with pytest.raises(ValueError, match="starts on 2020-01-06"):
        price.on(np.array(["2020-01-05"], "datetime64[D]"))
    assert price.on(np.array(["2020-01-13"], "datetime64[D]")).tolist() == [25.0]
    with pytest.raises(ValueError, match="ends on 2020-01-06"):
        price.on(np.array(["2020-01-14"], "datetime64[D]"))


def test_bad_price_files_name_the_row_and_column(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("datetime,close\n2020-01-01,3\n")
    with pytest.raises(PriceSeriesError, match="no price column 'settle'"):
        read_eua_csv(path)
    path.write_text("datetime,settle\n2020-01-01,3\n2020-01-02,\nlater,4\n2020-01-01,5\n")
    with pytest.raises(PriceSeriesError) as err:
        read_eua_csv(path)
    assert err.value.problems[0].startswith("row 4: expected a date")
    assert err.value.problems[1].startswith("row 5: 2020-01-01 is not after")
    with pytest.raises(ValueError, match="either a constant"):
        EuaPrice()


def test_allowance_position_and_savings() -> None:
    problem = site()
    window = day_window(series_of([100.0] * 6 + [200.0] * 6), problem.grid, DAY)
    full = placement_emissions(
        problem, counts(problem, {("flat", "a"): 2, ("day", "b"): 1}), window
    )
    less = placement_emissions(problem, counts(problem, {("flat", "a"): 2}), window)
    price = EuaPrice(constant=50.0)
    position = allowance_position(full, allocation_t=0.02, price=price)
    assert position.emissions_t == pytest.approx(0.027)
    assert position.surplus_t == pytest.approx(-0.007)
    assert position.value_eur == pytest.approx(-0.35)
    s = savings(full, less, price)
    assert s.saved_kg == pytest.approx(full.site_kg - less.site_kg)  # the day service: 7.2 kg
    assert s.saved_kg == pytest.approx(3000 / 1000 * 2 * 6 * 200 / 1000)
    assert s.saved_eur == pytest.approx(s.saved_kg / 1000 * 50)
    assert (s.oblivious_hosted, s.aware_hosted) == (3, 2)
    assert s.aware_kg_per_replica == pytest.approx(less.service_kg / 2)
    other = day_window(series_of([1.0] * 24, t0=T0 - 86400), problem.grid, date(2020, 5, 31))
    with pytest.raises(ValueError, match="same window"):
        savings(full, placement_emissions(problem, Assignment.empty(problem), other), price)


# ---------------------------------------------------------------- real data


def test_real_intensity_and_eua_prices_price_a_day() -> None:
    ci = DATA / "carbon-intensity" / "gb_ci.csv"
    eua = DATA / "eua-prices" / "market_prices.csv"
    for path in (ci, eua):
        assert path.is_file(), (
            f"{path} is missing: these tests read the shared public data in ../shared/data "
            "beside the repository (see its README)"
        )
    price = read_eua_csv(eua)
    assert price.days is not None and price.settles is not None
    assert str(price.days[0]) == "2008-04-08" and str(price.days[-1]) == "2021-04-16"
    # 2020-06-06 is a Saturday: Friday's settle carries over.
    sat, fri = price.on(np.array(["2020-06-06", "2020-06-05"], "datetime64[D]"))
    assert sat == fri and 10 < fri < 40
    problem = site()
    series = read_intensity_csv(ci)
    forecast = on_grid(series, problem.grid, DAY)
    aware = carbon_aware(problem, forecast)
    assert np.all(aware.tree.caps <= problem.tree.caps)
    e = placement_emissions(
        problem, counts(problem, {("flat", "a"): 2}), day_window(series, problem.grid, DAY)
    )
    # The site draws a flat 5.5 kW: 132 kWh at the day's mean intensity.
    assert e.site_kg == pytest.approx(132 * forecast.mean() / 1000)
    assert emission_cost_eur(e, price) == pytest.approx(
        e.tonnes * float(price.on(np.array(["2020-06-01"], "datetime64[D]"))[0])
    )
