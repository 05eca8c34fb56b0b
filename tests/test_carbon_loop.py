"""The live caps loop (extender/carbon/loop.py): intensity → cap fractions now and ahead,
fallback through ``Resilient``, caps restored when the grid cleans up, the emission
budget's projection and throttle, the metrics, and the ``intensity:`` settings it reads."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry

from extender.carbon.loop import (
    CarbonCaps,
    budget_cap_fraction,
    emitted_kg,
    forecast_fractions,
    live_caps,
    window_bounds,
)
from extender.carbon.sources import Reading, Resilient, SourceUnavailable
from extender.cluster.state import ClusterState
from extender.config.loading import config_from_data
from extender.config.model import Config, ConfigError
from extender.telemetry import GRAMS_PER_KG as G_PER_KG
from extender.telemetry import CarbonMetrics
from placement.carbon.intensity import IntensitySeries
from placement.carbon.policy import CapPolicy
from placement.grid import Grid

GRID = Grid(period_s=86400, step_s=3600)
POLICY = CapPolicy((150.0, 450.0), (1.0, 0.5), floor=0.5)
T0 = int(datetime(2026, 3, 2, 12, 10, tzinfo=UTC).timestamp())  # slot 12 of an hourly grid
SITE_CAP = 10_000.0
RACK_CAP = 6_000.0


def utc(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


# ---------------------------------------------------------------- pure parts


def test_forecast_fractions_cover_only_the_slots_ahead_that_the_forecast_reaches() -> None:
    # Hourly from 12:00: 100, 300 (13:00), 450 (14:00, held until 15:00).
    series = IntensitySeries.from_arrays(
        [utc("2026-03-02 12:00"), utc("2026-03-02 13:00"), utc("2026-03-02 14:00")],
        [100.0, 300.0, 450.0],
    )
    out = forecast_fractions(series, POLICY, GRID, now=T0)
    assert math.isnan(out[12])  # the current slot is the live value's
    assert out[13] == pytest.approx(0.75)  # 300 g: halfway between 1.0 and 0.5
    assert out[14] == pytest.approx(0.5)
    assert np.isnan(out[15:]).all() and np.isnan(out[:12]).all()


def test_forecast_fractions_wrap_around_the_period_and_average_within_a_slot() -> None:
    series = IntensitySeries.from_arrays(
        [utc("2026-03-02 23:00"), utc("2026-03-02 23:30"), utc("2026-03-03 00:00")],
        [150.0, 450.0, 150.0],
    )
    out = forecast_fractions(series, POLICY, GRID, now=utc("2026-03-02 22:40"))
    assert out[23] == pytest.approx(POLICY.fraction(300.0))  # mean of 150 and 450
    assert out[0] == pytest.approx(1.0)  # tomorrow's first slot is slot 0


def test_budget_fraction_is_the_affordable_rate_over_the_cap() -> None:
    # 10 kg left, 200 g/kWh, 10 h left: 10e6 / (200 · 10) = 5000 W affordable.
    assert budget_cap_fraction(
        110.0, 100.0, 200.0, hours_left=10.0, cap_w=10_000.0, floor=0.2
    ) == pytest.approx(0.5)
    # Plenty left: no throttle. Overspent: the floor, never zero.
    assert (
        budget_cap_fraction(1000.0, 0.0, 200.0, hours_left=10.0, cap_w=10_000.0, floor=0.2) == 1.0
    )
    assert (
        budget_cap_fraction(100.0, 120.0, 200.0, hours_left=10.0, cap_w=10_000.0, floor=0.2) == 0.2
    )
    # The window is over, or nothing more can be emitted: nothing to throttle.
    assert (
        budget_cap_fraction(100.0, 120.0, 200.0, hours_left=0.0, cap_w=10_000.0, floor=0.2) == 1.0
    )
    assert budget_cap_fraction(100.0, 120.0, 0.0, hours_left=5.0, cap_w=10_000.0, floor=0.2) == 1.0


def test_a_projection_at_the_affordable_rate_lands_on_the_budget() -> None:
    budget, emitted, g, hours, cap = 80.0, 30.0, 250.0, 7.5, 40_000.0
    fraction = budget_cap_fraction(budget, emitted, g, hours_left=hours, cap_w=cap, floor=0.0)
    assert emitted + float(emitted_kg(fraction * cap, g, hours)) == pytest.approx(budget)


def test_emitted_kg_units() -> None:
    # 1 kW for 1 h at 500 g/kWh is 0.5 kg.
    assert float(emitted_kg(1000.0, 500.0, 1.0)) == pytest.approx(0.5)


def test_window_bounds_follow_the_grid_clock() -> None:
    start, end = window_bounds("day", T0, GRID)
    assert (start, end) == (utc("2026-03-02 00:00"), utc("2026-03-03 00:00"))
    start, end = window_bounds("month", T0, GRID)
    assert (start, end) == (utc("2026-03-01 00:00"), utc("2026-04-01 00:00"))
    # A grid an hour ahead of UTC: its day starts at 23:00 UTC the evening before.
    ahead = Grid(period_s=86400, step_s=3600, offset_s=3600)
    start, _ = window_bounds("day", utc("2026-03-02 23:30"), ahead)
    assert start == utc("2026-03-02 23:00")
    with pytest.raises(ValueError, match="day or month"):
        window_bounds("week", T0, GRID)


def test_live_caps_scale_the_named_domains_only_and_throttle_takes_the_lower() -> None:
    base = np.array([[10.0] * 4, [6.0] * 4])
    ahead = np.array([np.nan, 0.5, np.nan, 0.8])
    caps = live_caps(base, 0, [([0], 0.7, ahead)], throttles={})
    assert caps[0].tolist() == pytest.approx([7.0, 5.0, 10.0, 8.0])
    assert caps[1].tolist() == [6.0] * 4
    # A throttle below the carbon-aware cap wins; one above it changes nothing.
    assert live_caps(base, 0, [([0], 0.7, None)], throttles={0: 0.5})[0, 0] == pytest.approx(5.0)
    assert live_caps(base, 0, [([0], 0.7, None)], throttles={0: 0.9})[0, 0] == pytest.approx(7.0)
    assert live_caps(base, 2, [], throttles={1: 0.5})[1].tolist() == [6.0, 6.0, 3.0, 6.0]
    # Two sources, one domain each.
    both = live_caps(base, 1, [([0], 0.5, None), ([1], 0.8, None)], throttles={})
    assert both[:, 1].tolist() == pytest.approx([5.0, 4.8])


# ---------------------------------------------------------------- the tick


class FakeSource:
    """An intensity source whose value and failure the test sets."""

    def __init__(self, g_per_kwh: float, at_s: int | None = None, name: str = "fake") -> None:
        self.name = name
        self.g_per_kwh = g_per_kwh
        self.at_s = at_s
        self.failing = False
        self.ahead: IntensitySeries | None = None

    def latest(self, now: float) -> Reading | None:
        if self.failing:
            raise SourceUnavailable("fake: GET /intensity answered HTTP 503")
        # By default the value is a minute old whenever asked; a test that ages it sets at_s.
        at = int(now) - 60 if self.at_s is None else self.at_s
        return Reading(at, self.g_per_kwh, self.name)

    def forecast(self, now: float, horizon_s: float) -> IntensitySeries:
        if self.failing or self.ahead is None:
            raise SourceUnavailable("fake: GET /forecast answered HTTP 503")
        return self.ahead


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def config(**intensity: Any) -> Config:
    section: dict[str, Any] = {
        "kind": "ukci",
        "fallbackCapFraction": 0.8,
        "policy": "150:1.0,450:0.5",
        "floor": 0.5,
        "staleness": "30m",
        "forecast": False,
        "period": "60s",
    }
    section.update(intensity)
    return config_from_data(
        {
            "apiVersion": "powercap.io/v1alpha1",
            "kind": "PowercapConfig",
            "grid": {"period": "24h", "step": "1h"},
            "domains": [
                {"name": "site", "cap": SITE_CAP},
                {"name": "rack-1", "parent": "site", "cap": RACK_CAP},
                {"name": "rack-2", "parent": "site", "cap": RACK_CAP},
            ],
            "intensity": section,
        }
    )


class Rig:
    def __init__(self, g_per_kwh: float = 100.0, headroom: float = 0.0, **intensity: Any) -> None:
        self.config = config(**intensity)
        self.state = ClusterState(self.config.grid, self.config.tree, headroom)
        self.clock = Clock(T0)
        self.fake = FakeSource(g_per_kwh)
        (settings,) = self.config.intensity
        self.source = Resilient(
            self.fake,
            retries=0,
            staleness_s=settings.staleness_s,
            fallback_cap_fraction=settings.fallback_cap_fraction,
            clock=self.clock,
            sleep=lambda s: None,
        )
        self.registry = CollectorRegistry()
        self.metrics = CarbonMetrics(self.registry)
        self.measured: np.ndarray[Any, np.dtype[np.float64]] | None = None
        self.caps = CarbonCaps(
            [(settings, self.source)],
            self.state,
            self.config.grid,
            base=self.config.tree.caps,
            metrics=self.metrics,
            measured=lambda now: self.measured,
        )

    def tick(self, after_s: float = 0.0) -> None:
        self.clock.now += after_s
        self.caps.tick(self.clock.now)

    def cap(self, domain: str, slot: int = 12) -> float:
        return float(self.state.tree.caps[self.state.tree.index[domain], slot])

    def sample(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


def test_caps_follow_intensity_now_and_come_back_when_it_falls() -> None:
    rig = Rig(g_per_kwh=100.0, headroom=0.1)
    rig.tick()
    assert rig.caps.last is not None
    assert rig.cap("site") == SITE_CAP and not rig.caps.last.changed
    version = rig.state.topology_version

    rig.fake.g_per_kwh = 450.0
    rig.tick(60)
    assert rig.cap("site") == pytest.approx(SITE_CAP * 0.5)
    # Only the current slot, only the root: racks and other hours keep theirs.
    assert rig.cap("site", 13) == SITE_CAP and rig.cap("rack-1") == RACK_CAP
    # What filter admits against: the effective cap, headroom applied to the lowered cap.
    assert rig.state.caps[0, 12] == pytest.approx(SITE_CAP * 0.5 * 0.9)
    assert rig.state.topology_version > version  # the planner re-plans on it
    assert rig.sample("powercap_domain_cap_watts", domain="site") == SITE_CAP * 0.5
    assert rig.sample("powercap_domain_cap_ratio", domain="site") == 0.5
    assert rig.sample("powercap_carbon_intensity_grams_per_kwh", source="fake") == 450.0

    rig.fake.g_per_kwh = 300.0
    rig.tick(60)
    assert rig.cap("site") == pytest.approx(SITE_CAP * 0.75)
    rig.fake.g_per_kwh = 120.0
    rig.tick(60)
    assert rig.cap("site") == SITE_CAP
    assert np.array_equal(rig.state.tree.caps, rig.config.tree.caps)


def test_a_new_slot_gives_the_old_one_its_configured_cap_back() -> None:
    rig = Rig(g_per_kwh=450.0)
    rig.tick()
    assert rig.cap("site", 12) == SITE_CAP * 0.5
    rig.tick(3600)  # 13:10
    assert rig.cap("site", 13) == SITE_CAP * 0.5
    assert rig.cap("site", 12) == SITE_CAP


def test_named_domains_follow_instead_of_the_root() -> None:
    rig = Rig(g_per_kwh=450.0, domains=["rack-1"])
    rig.tick()
    assert rig.cap("rack-1") == RACK_CAP * 0.5
    assert rig.cap("rack-2") == RACK_CAP and rig.cap("site") == SITE_CAP


def test_a_failing_source_serves_the_last_good_value_then_the_fallback_fraction() -> None:
    rig = Rig(g_per_kwh=450.0)
    rig.fake.at_s = T0 - 1200
    rig.tick()
    rig.fake.failing = True
    rig.tick(60)  # the 11:50 reading is 21 min old: still within 30 min
    zone = rig.caps.zones[0]
    assert zone.latest is not None and zone.latest.status == "last-good"
    assert rig.cap("site") == SITE_CAP * 0.5
    assert rig.sample("powercap_carbon_source_status", source="fake", status="last-good") == 1
    rig.tick(600)  # 31 min old: nothing usable, the fallback cap applies
    assert zone.latest.status == "fallback"
    assert rig.cap("site") == pytest.approx(SITE_CAP * 0.8)
    assert rig.sample("powercap_carbon_source_status", source="fake", status="fallback") == 1
    assert rig.sample("powercap_carbon_source_status", source="fake", status="live") == 0
    assert rig.sample("powercap_carbon_source_errors_total", source="fake", call="latest") == 2
    assert math.isnan(rig.sample("powercap_carbon_intensity_grams_per_kwh", source="fake") or 0)
    # Back: live again, caps from the value.
    rig.fake.failing = False
    rig.fake.g_per_kwh, rig.fake.at_s = 150.0, None
    rig.tick(60)
    assert rig.cap("site") == SITE_CAP


def test_the_forecast_sets_the_slots_ahead_and_its_failure_leaves_them_configured() -> None:
    rig = Rig(g_per_kwh=100.0, forecast=True)
    rig.fake.ahead = IntensitySeries.from_arrays(
        [utc("2026-03-02 12:00"), utc("2026-03-02 13:00"), utc("2026-03-02 14:00")],
        [100.0, 450.0, 300.0],
    )
    rig.tick()
    assert rig.cap("site", 12) == SITE_CAP
    assert rig.cap("site", 13) == SITE_CAP * 0.5
    assert rig.cap("site", 14) == pytest.approx(SITE_CAP * 0.75)
    assert rig.cap("site", 15) == SITE_CAP
    # The forecast is kept for the staleness limit, then the slots ahead go back.
    rig.fake.ahead = None
    rig.tick(60)
    assert rig.cap("site", 13) == SITE_CAP * 0.5
    rig.tick(1800)
    assert rig.cap("site", 13) == SITE_CAP
    assert rig.sample("powercap_carbon_source_errors_total", source="fake", call="forecast") == 2


def test_emissions_count_measured_power_where_known_else_predicted() -> None:
    rig = Rig(g_per_kwh=200.0, euaPrice=80.0, period="1h")
    # Predicted: one node of 2 kW idle in rack-1 (site and rack-1 carry it).
    rig.state.upsert_node("gpu-1", rig.state.tree.index["rack-1"], 8, idle_watts=2000.0)
    rig.tick()
    assert rig.sample("powercap_emissions_grams_total", domain="site") == 0.0  # nothing before
    rig.tick(1800)  # half an hour at 2 kW and 200 g/kWh: 0.2 kg
    assert rig.sample("powercap_emissions_grams_total", domain="site") == pytest.approx(
        0.2 * G_PER_KG
    )
    assert rig.sample("powercap_emissions_grams_total", domain="rack-2") == 0.0
    # Measured where fresh (rack-1 3 kW, not its predicted 2 kW); rack-2 unknown (NaN) →
    # its predicted 0 W. Counted at the leaves and summed up: the site gets 3 kW.
    rig.measured = np.array([np.nan, 3000.0, np.nan])
    rig.tick(1800)
    assert rig.sample("powercap_emissions_grams_total", domain="site") == pytest.approx(
        0.5 * G_PER_KG
    )
    assert rig.sample("powercap_emissions_grams_total", domain="rack-1") == pytest.approx(
        0.5 * G_PER_KG
    )
    assert rig.sample("powercap_emissions_grams_total", domain="rack-2") == 0.0
    assert rig.sample("powercap_emissions_cost_eur_total", domain="site") == pytest.approx(0.04)
    # A long silence counts at most three periods (3 h), not the 5 h in between.
    rig.tick(5 * 3600)
    assert rig.sample("powercap_emissions_grams_total", domain="site") == pytest.approx(
        (0.5 + 3000 * 200 * 3 / 1e6) * G_PER_KG
    )


def test_the_budget_throttle_holds_the_cap_at_the_affordable_rate() -> None:
    # A day budget of 24 kg for the site; at 12:10 the first tick assumes the 12 h 10 min
    # gone used their share (12.17 kg). 5 kW measured at 400 g/kWh projects
    # 12.17 + 5 · 0.4 · 11.83 = 35.8 kg: over. Affordable: 11.83 kg / (0.4 · 11.83 h) =
    # 2.5 kW, a quarter of the site's 10 kW — held at the floor, 0.5.
    rig = Rig(g_per_kwh=100.0, budgets=[{"domain": "site", "kg": 24, "window": "day"}])
    rig.measured = np.array([5000.0, 5000.0, 0.0])
    rig.fake.g_per_kwh = 400.0
    rig.tick()
    hours_left = (utc("2026-03-03 00:00") - T0) / 3600
    assumed = 24 * (1 - hours_left / 24)
    projected = assumed + 5.0 * 0.4 * hours_left
    labels = {"domain": "site", "window": "day"}
    assert rig.sample("powercap_emission_budget_projected_grams", **labels) == pytest.approx(
        projected * G_PER_KG
    )
    assert rig.sample("powercap_emission_budget_remaining_grams", **labels) == pytest.approx(
        (24 - assumed) * G_PER_KG
    )
    assert rig.sample("powercap_emission_budget_cap_ratio", **labels) == 0.5
    # The carbon policy alone would give 0.583 at 400 g/kWh; the budget's floor wins.
    assert POLICY.fraction(400.0) > 0.5
    assert rig.cap("site") == SITE_CAP * 0.5

    # A cleaner grid makes the same budget go further: at 100 g/kWh, 11.83 kg over
    # 11.83 h (less the little emitted since) affords about 10 kW — no throttle.
    rig.fake.g_per_kwh = 100.0
    rig.tick(60)
    fraction = rig.sample("powercap_emission_budget_cap_ratio", **labels)
    assert fraction is not None and 0.9 < fraction <= 1.0
    assert rig.cap("site") == pytest.approx(SITE_CAP * fraction)


def test_the_budget_window_restarts_at_midnight_without_the_assumed_share() -> None:
    rig = Rig(g_per_kwh=300.0, budgets=[{"domain": "rack-1", "kg": 10, "window": "day"}])
    rig.measured = np.array([4000.0, 4000.0, 0.0])
    rig.tick()
    labels = {"domain": "rack-1", "window": "day"}
    before = rig.sample("powercap_emission_budget_remaining_grams", **labels)
    assert before is not None and before < 10 * G_PER_KG
    rig.clock.now = utc("2026-03-02 23:59")
    rig.tick()
    rig.tick(90)  # the 90 s up to 00:00:30 count in the old day
    assert rig.sample("powercap_emission_budget_remaining_grams", **labels) == 10.0 * G_PER_KG
    rig.tick(60)
    remaining = rig.sample("powercap_emission_budget_remaining_grams", **labels)
    assert remaining == pytest.approx((10 - 4.0 * 0.3 / 60) * G_PER_KG)  # a minute of 4 kW at 300 g


def test_unknown_intensity_counts_no_emissions_and_keeps_the_last_throttle() -> None:
    rig = Rig(g_per_kwh=400.0, budgets=[{"domain": "site", "kg": 24, "window": "day"}])
    rig.measured = np.array([5000.0, 5000.0, 0.0])
    rig.fake.at_s = T0 - 60
    rig.tick()
    rig.fake.failing = True
    rig.tick(3600)  # the last good value is 70 min old: fallback
    assert rig.sample("powercap_emissions_grams_total", domain="site") == 0.0
    # The fallback (0.8) is above the kept throttle (0.5): the throttle holds.
    assert rig.cap("site", 13) == SITE_CAP * 0.5


# ---------------------------------------------------------------- the settings


def test_the_intensity_section_reads_the_loop_settings() -> None:
    (settings,) = config(
        policy="200:1.0,400:0.8,600:0.6",
        floor=0.6,
        domains=["rack-1", "rack-2"],
        budgets=[
            {"domain": "site", "kg": 1500},
            {"domain": "site", "kg": 40000, "window": "month"},
        ],
        euaPrice=72.5,
    ).intensity
    assert settings.policy == CapPolicy((200.0, 400.0, 600.0), (1.0, 0.8, 0.6), 0.6)
    assert settings.domains == ("rack-1", "rack-2")
    assert [(b.domain, b.kg, b.window) for b in settings.budgets] == [
        ("site", 1500.0, "day"),
        ("site", 40000.0, "month"),
    ]
    assert (settings.period_s, settings.eua_price_eur_per_t) == (60.0, 72.5)


def test_the_defaults_are_the_documented_policy() -> None:
    (settings,) = config_from_data(
        {
            "apiVersion": "powercap.io/v1alpha1",
            "kind": "PowercapConfig",
            "domains": [{"name": "site", "cap": 1000}],
            "intensity": {"kind": "ukci", "fallbackCapFraction": 0.8},
        }
    ).intensity
    assert settings.policy == CapPolicy((150.0, 450.0), (1.0, 0.7), 0.5)
    assert (settings.period_s, settings.forecast, settings.domains) == (300.0, True, None)


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"domains": ["rack-9"]}, "intensity.domains[0]: unknown domain 'rack-9'"),
        (
            {"budgets": [{"domain": "row-1", "kg": 5}]},
            "intensity.budgets[0].domain: unknown domain 'row-1'",
        ),
        ({"policy": "150:1.0,450:1.2"}, "intensity.policy: policy fractions must be in (0, 1]"),
        ({"policy": "lots"}, "intensity.policy: bad policy point 'lots'"),
        ({"fallbackCapFraction": 0.3}, "intensity.fallbackCapFraction: 0.3 is below the floor"),
        ({"period": "often"}, "intensity.period: expected a duration"),
        (
            {"budgets": [{"domain": "site", "kg": 5}, {"domain": "site", "kg": 6}]},
            "intensity.budgets[1]: a second day budget for site",
        ),
        (
            {"budgets": [{"domain": "site", "kg": 0}]},
            "intensity.budgets[0].kg: Input should be greater than 0",
        ),
    ],
)
def test_bad_loop_settings_refuse_to_start_naming_the_field(
    section: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        config(**section)
    assert any(p.startswith(expected) or expected in p for p in raised.value.problems), (
        raised.value.problems
    )


def test_the_documented_examples_load() -> None:
    """docs/carbon.md's "Live caps and the budget throttle" examples, as the loader reads
    them: one source for the site, then one source per site on two grids."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "carbon.md").read_text()
    section = text.split("## Live caps and the budget throttle", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0] for b in section.split("```yaml\n")[1:]]
    assert len(blocks) == 2
    domains = [
        {"name": "site", "cap": 480000},
        {"name": "site-gb", "parent": "site", "cap": 240000},
        {"name": "site-de", "parent": "site", "cap": 240000},
    ]
    loaded = [
        config_from_data(
            {
                "apiVersion": "powercap.io/v1alpha1",
                "kind": "PowercapConfig",
                "domains": domains,
                **yaml.safe_load(block),
            }
        ).intensity
        for block in blocks
    ]
    (one,) = loaded[0]
    assert one.domains == ("site",) and len(one.budgets) == 2
    assert one.policy == CapPolicy((150.0, 450.0), (1.0, 0.7), 0.5)
    assert (one.period_s, one.eua_price_eur_per_t) == (300.0, 70.0)
    gb, de = loaded[1]
    assert (gb.kind, gb.domains, de.kind, de.domains) == (
        "ukci",
        ("site-gb",),
        "electricitymaps",
        ("site-de",),
    )
    assert [(b.domain, b.kg) for b in de.budgets] == [("site-de", 900.0)]


def test_serve_wires_the_loop_and_its_metrics_into_the_extender() -> None:
    from extender.cluster.events import RecordingEventSink
    from extender.runtime import _assemble, add_carbon
    from extender.webhook.binding import StaticBinder

    cfg = config(euaPrice=70.0)
    ext = _assemble(cfg, StaticBinder(), RecordingEventSink())
    ext.state.synced = True
    fake = FakeSource(450.0)
    add_carbon(ext, [Resilient(fake, retries=0, fallback_cap_fraction=0.8)])
    assert ext.carbon_loop is not None
    ext.carbon_loop.caps.tick(T0)
    text = ext.telemetry.render().decode()
    assert 'powercap_domain_cap_watts{domain="site"} 5000.0' in text
    assert 'powercap_carbon_intensity_grams_per_kwh{source="fake"} 450.0' in text
    assert 'powercap_emissions_cost_eur_total{domain="rack-2"} 0.0' in text
    # The filter's effective caps are the lowered ones.
    assert ext.state.caps[0, GRID.slot_of(T0)] == SITE_CAP * 0.5


def test_the_loop_thread_polls_once_synced_and_stops() -> None:
    from extender.carbon.loop import CarbonLoop

    rig = Rig(g_per_kwh=450.0)
    rig.state.synced = False
    loop = CarbonLoop(rig.caps, period_s=0.05, clock=rig.clock)
    loop.start()
    try:
        time.sleep(0.2)
        assert rig.caps.last is None  # not before the mirror's first sync
        rig.state.synced = True
        deadline = time.monotonic() + 5
        while rig.caps.last is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert rig.cap("site") == SITE_CAP * 0.5
    finally:
        loop.stop()
    assert loop._thread is not None and not loop._thread.is_alive()


def test_serve_refuses_to_start_when_a_secret_is_not_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import typer
    from typer.testing import CliRunner

    from powercap.commands.serve import register

    monkeypatch.delenv("EM_TOKEN_FOR_THIS_TEST", raising=False)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    path = tmp_path / "powercap.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "powercap.io/v1alpha1",
                "kind": "PowercapConfig",
                "domains": [{"name": "site", "cap": 1000}],
                "planner": {"enabled": False},
                "intensity": {
                    "kind": "electricitymaps",
                    "zone": "DE",
                    "tokenEnv": "EM_TOKEN_FOR_THIS_TEST",
                    "fallbackCapFraction": 0.8,
                },
            }
        )
    )
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """powercap (test harness)."""

    register(app)
    result = CliRunner().invoke(
        app, ["serve", "--config", str(path), "--kubeconfig", str(kubeconfig)]
    )
    assert result.exit_code == 2, result.output
    assert "intensity.tokenEnv: the environment variable it names is not set" in result.output
    # What the field holds is never repeated: it may be the token itself, pasted in.
    assert "EM_TOKEN_FOR_THIS_TEST" not in result.output
    assert "Traceback" not in result.output


# ---------------------------------------------------------------- one source per grid zone


def zones_config(**extra: dict[str, Any]) -> Config:
    """Two sources: British for rack-1, German for rack-2; ``s0=``/``s1=`` add fields."""
    sources: list[dict[str, Any]] = [
        {"kind": "ukci", "domains": ["rack-1"], "fallbackCapFraction": 0.8, "period": "60s"},
        {
            "kind": "electricitymaps",
            "zone": "DE",
            "tokenEnv": "EM_TOKEN",
            "domains": ["rack-2"],
            "fallbackCapFraction": 0.8,
            "period": "120s",
        },
    ]
    for key, more in extra.items():
        sources[int(key[-1])].update(more)
    return config_from_data(
        {
            "apiVersion": "powercap.io/v1alpha1",
            "kind": "PowercapConfig",
            "grid": {"period": "24h", "step": "1h"},
            "domains": [
                {"name": "site", "cap": SITE_CAP},
                {"name": "rack-1", "parent": "site", "cap": RACK_CAP},
                {"name": "rack-2", "parent": "site", "cap": RACK_CAP},
            ],
            "intensity": sources,
        }
    )


def test_each_zone_caps_its_domains_and_the_site_sums_their_emissions() -> None:
    cfg = zones_config(
        s0={"policy": "150:1.0,450:0.5", "euaPrice": 100},
        s1={"budgets": [{"domain": "site", "kg": 1000}]},
    )
    state = ClusterState(cfg.grid, cfg.tree)
    clock = Clock(T0)
    gb, de = FakeSource(450.0, name="gb"), FakeSource(150.0, name="de")
    sources = [Resilient(f, retries=0, clock=clock, sleep=lambda s: None) for f in (gb, de)]
    registry = CollectorRegistry()
    measured = np.array([np.nan, 3000.0, 1000.0])
    caps = CarbonCaps(
        list(zip(cfg.intensity, sources, strict=True)),
        state,
        cfg.grid,
        base=cfg.tree.caps,
        metrics=CarbonMetrics(registry),
        measured=lambda now: measured,
    )
    assert caps.period_s == 60.0
    caps.tick(T0)
    index = state.tree.index
    assert state.tree.caps[index["rack-1"], 12] == RACK_CAP * 0.5
    assert state.tree.caps[index["rack-2"], 12] == RACK_CAP * POLICY.fraction(150.0)
    assert state.tree.caps[index["site"], 12] == SITE_CAP
    clock.now = T0 + 60
    caps.tick(T0 + 60)  # the German source is not due yet (120 s): polled once
    assert caps.last is not None and caps.last.polled == ["gb"]

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    # A minute of 3 kW at 450 g/kWh plus 1 kW at 150 g/kWh.
    rack_1, rack_2 = 3000 * 450 / 60 / 1e6, 1000 * 150 / 60 / 1e6
    assert sample("powercap_emissions_grams_total", domain="rack-1") == pytest.approx(
        rack_1 * G_PER_KG
    )
    assert sample("powercap_emissions_grams_total", domain="site") == pytest.approx(
        (rack_1 + rack_2) * G_PER_KG
    )
    # Only the British zone has a price.
    assert sample("powercap_emissions_cost_eur_total", domain="site") == pytest.approx(
        rack_1 / 1000 * 100
    )
    assert sample("powercap_emissions_cost_eur_total", domain="rack-2") == 0.0
    assert sample("powercap_carbon_intensity_grams_per_kwh", source="de") == 150.0
    # The site's budget projects at its power-weighted intensity: (3·450 + 1·150) / 4 kW.
    hours_left = (utc("2026-03-03 00:00") - (T0 + 60)) / 3600
    budget = sample("powercap_emission_budget_projected_grams", domain="site", window="day")
    emitted = 1000 * (1 - (utc("2026-03-03 00:00") - T0) / 86400) + rack_1 + rack_2
    assert budget == pytest.approx((emitted + 4.0 * 375.0 / 1000 * hours_left) * G_PER_KG)


def test_two_sources_with_one_name_are_refused() -> None:
    cfg = zones_config()
    state = ClusterState(cfg.grid, cfg.tree)
    same = [Resilient(FakeSource(100.0, name="ukci")) for _ in range(2)]
    with pytest.raises(ValueError, match="two intensity sources are the same"):
        CarbonCaps(list(zip(cfg.intensity, same, strict=True)), state, cfg.grid, base=cfg.tree.caps)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"s1": {"domains": None}}, "intensity[1].domains: with more than one source, name"),
        (
            {"s0": {"domains": ["site"]}},
            "intensity[1].domains[0]: rack-2 overlaps site of intensity[0]",
        ),
        ({"s1": {"fallbackCapFraction": None}}, "intensity[1].fallbackCapFraction:"),
        (
            {
                "s0": {"budgets": [{"domain": "site", "kg": 5}]},
                "s1": {"budgets": [{"domain": "site", "kg": 6}]},
            },
            "intensity[1].budgets[0]: intensity[0] has a day budget for site already",
        ),
    ],
)
def test_zone_problems_are_named_by_position(extra: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        cfg_with_nones(extra)
    assert any(p.startswith(expected) for p in raised.value.problems), raised.value.problems


def cfg_with_nones(extra: dict[str, dict[str, Any]]) -> Config:
    """:func:`zones_config` where a ``None`` value removes the field."""
    sources: list[dict[str, Any]] = [
        {"kind": "ukci", "domains": ["rack-1"], "fallbackCapFraction": 0.8},
        {"kind": "csv", "path": "x.csv", "domains": ["rack-2"], "fallbackCapFraction": 0.8},
    ]
    for key, more in extra.items():
        section = sources[int(key[-1])]
        for field_name, value in more.items():
            if value is None:
                section.pop(field_name, None)
            else:
                section[field_name] = value
    return config_from_data(
        {
            "apiVersion": "powercap.io/v1alpha1",
            "kind": "PowercapConfig",
            "domains": [
                {"name": "site", "cap": SITE_CAP},
                {"name": "rack-1", "parent": "site", "cap": RACK_CAP},
                {"name": "rack-2", "parent": "site", "cap": RACK_CAP},
            ],
            "intensity": sources,
        }
    )


def test_an_empty_list_of_sources_is_refused() -> None:
    with pytest.raises(ConfigError) as raised:
        config_from_data(
            {
                "apiVersion": "powercap.io/v1alpha1",
                "kind": "PowercapConfig",
                "domains": [{"name": "site", "cap": 1000}],
                "intensity": [],
            }
        )
    assert raised.value.problems[0].startswith("intensity: expected a source")


def test_the_renamed_metrics_keep_their_old_names_until_0_3() -> None:
    rig = Rig(g_per_kwh=200.0, period="1h", budgets=[{"domain": "site", "kg": 24, "window": "day"}])
    rig.state.upsert_node("gpu-1", rig.state.tree.index["rack-1"], 8, idle_watts=2000.0)
    rig.tick()
    rig.tick(1800)  # half an hour at 2 kW and 200 g/kWh: 0.2 kg
    site = {"domain": "site"}
    budget = {"domain": "site", "window": "day"}
    assert rig.sample("powercap_emissions_grams_total", **site) == pytest.approx(200.0)
    # the deprecated names carry the same values in their old units
    assert rig.sample("powercap_emissions_kg_total", **site) == pytest.approx(0.2)
    for old, new, labels in (
        (
            "powercap_emission_budget_remaining_kg",
            "powercap_emission_budget_remaining_grams",
            budget,
        ),
        (
            "powercap_emission_budget_projected_kg",
            "powercap_emission_budget_projected_grams",
            budget,
        ),
    ):
        grams = rig.sample(new, **labels)
        assert grams is not None and grams > 1000.0
        assert rig.sample(old, **labels) == pytest.approx(grams / 1000.0)
    for old, new, labels in (
        ("powercap_emission_budget_cap_fraction", "powercap_emission_budget_cap_ratio", budget),
        ("powercap_domain_cap_fraction", "powercap_domain_cap_ratio", site),
    ):
        assert rig.sample(old, **labels) == rig.sample(new, **labels) is not None
