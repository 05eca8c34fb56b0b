"""The embedded default scenario: valid, deterministic, asynchronous and power-bound."""

from __future__ import annotations

import numpy as np

from placement.default_scenario import default_problem, default_spec
from placement.metrics import evaluate
from placement.strategies import run_strategy


def test_default_scenario_is_deterministic() -> None:
    assert default_spec() == default_spec()


def test_default_scenario_shape() -> None:
    p = default_problem()
    assert p.grid.slots == 144
    assert p.fleet.size == 320
    assert len(p.tree.leaves) == 40
    assert 20 <= p.services.size <= 40
    assert set(p.services.gpus.tolist()) == {1, 2, 4, 8}
    per_gpu_peak = p.services.peaks / p.services.gpus
    assert (per_gpu_peak > 400).all() and (per_gpu_peak < 600).all()
    assert (p.services.profiles.min(axis=1) / p.services.gpus < 260).all()


def test_services_peak_at_different_hours() -> None:
    p = default_problem()
    peak_hours = {int(np.argmax(prof)) // 6 for prof in p.services.profiles}
    assert len(peak_hours) >= 8


def test_default_scenario_is_power_bound() -> None:
    p = default_problem()
    site = p.tree.index["site"]
    nameplate_demand = p.services.demand @ p.services.nameplate + p.fleet.idle_watts.sum()
    assert nameplate_demand > 2 * p.tree.caps[site].max()
    # Power runs out before GPUs do, even for the asynchrony-aware greedy placement.
    greedy = run_strategy("greedy", p).assignment
    m = evaluate(p, greedy)
    assert m.gpus_used < 0.9 * m.gpus_total
    assert m.unplaced_total > 0
    assert m.violations == 0
