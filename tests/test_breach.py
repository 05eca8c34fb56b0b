"""Breach tracking: grace period, hysteresis, missing data, tree sums and placement feedback."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from placement.control.breach import (
    BreachSettings,
    BreachState,
    TickEvents,
    direct_watts,
    feedback_watts,
    measured_by_domain,
    resume,
    roll_up,
    step,
)
from placement.ledger import Ledger
from placement.tree import PowerTree

NAN = float("nan")
CAP = 1000.0
SETTINGS = BreachSettings(tolerance=0.02, hysteresis=0.05, grace_s=60)


def run(
    readings: list[tuple[float, float]], cfg: BreachSettings = SETTINGS
) -> list[tuple[BreachState, TickEvents]]:
    """One domain with cap 1000 W through ``(now, measured)`` ticks."""
    state = BreachState.initial(1)
    out = []
    for now, watts in readings:
        state, events = step(state, np.array([watts]), np.array([CAP]), now=now, settings=cfg)
        out.append((state, events))
    return out


def breached(results: list[tuple[BreachState, TickEvents]]) -> list[bool]:
    return [bool(s.in_breach[0]) for s, _ in results]


def test_grace_period_is_served_before_a_breach() -> None:
    results = run([(0, 1100), (30, 1100), (59, 1100), (60, 1100), (90, 1100)])
    assert breached(results) == [False, False, False, True, True]
    assert [bool(e.pending[0]) for _, e in results] == [True, True, True, False, False]
    entered = [bool(e.entered[0]) for _, e in results]
    assert entered == [False, False, False, True, False]
    assert results[3][0].breach_since[0] == 60


def test_a_dip_restarts_the_grace_period() -> None:
    # 1010 W is within the 2% tolerance: not over, so the run of over ticks restarts.
    results = run([(0, 1100), (40, 1010), (50, 1100), (100, 1100), (110, 1100)])
    assert breached(results) == [False, False, False, False, True]


def test_tolerance_is_the_threshold_not_the_cap() -> None:
    assert breached(run([(0, 1020), (100, 1020)])) == [False, False]
    assert breached(run([(0, 1021), (100, 1021)])) == [False, True]


def test_zero_grace_enters_on_the_first_tick_over() -> None:
    cfg = BreachSettings(tolerance=0.0, hysteresis=0.05, grace_s=0)
    assert breached(run([(0, 1001)], cfg)) == [True]


def test_hysteresis_clears_only_below_cap_times_one_minus_hysteresis() -> None:
    results = run([(0, 1200), (60, 1200), (70, 990), (80, 951), (90, 950), (100, 949)])
    assert breached(results) == [False, True, True, True, True, False]
    assert [bool(e.cleared[0]) for _, e in results] == [False] * 5 + [True]
    assert np.isnan(results[-1][0].breach_since[0])
    # Over again after clearing: the grace period is served again.
    more = run([(0, 1200), (60, 1200), (100, 900), (110, 1200), (150, 1200), (170, 1200)])
    assert breached(more) == [False, True, False, False, False, True]


def test_missing_data_never_starts_or_clears_a_breach() -> None:
    # A gap in a pending run: no breach on the gap, and the grace period starts over.
    results = run([(0, 1100), (50, NAN), (70, NAN), (80, 1100), (120, 1100), (140, 1100)])
    assert breached(results) == [False, False, False, False, False, True]
    assert [bool(e.stale[0]) for _, e in results] == [False, True, True, False, False, False]
    assert results[1][1].pending[0] == np.False_
    # In breach, a gap does not clear it; reported as stale with unknown watts.
    results = run([(0, 1100), (60, 1100), (70, NAN), (80, NAN), (90, 900)])
    assert breached(results) == [False, True, True, True, False]
    _, gap = results[2]
    assert gap.stale[0] and not gap.cleared[0]
    assert np.isnan(gap.overage_w[0]) and np.isnan(gap.to_clear_w[0])


def test_resume_carries_on_a_recorded_breach_over_now_or_in_breach_here() -> None:
    """Seven domains (cap 1000 W: over above 1020 W, clearing below 950 W). A breach
    recorded from t=10 in the first five and the last: over now, between the thresholds,
    below them, without data, over and in breach here since t=40, and between the
    thresholds but in breach here since t=40; the sixth has nothing recorded."""
    caps = np.full(7, CAP)
    state, _ = step(
        BreachState.initial(7),
        np.array([NAN, NAN, NAN, NAN, 1100.0, 1100.0, 1100.0]),
        caps,
        now=40,
        settings=BreachSettings(grace_s=0, hysteresis=0.05),
    )
    since = np.array([10.0, 10.0, 10.0, 10.0, 10.0, NAN, 10.0])
    measured = np.array([1100.0, 960.0, 900.0, NAN, 1100.0, 1100.0, 960.0])
    resumed, settled = resume(state, since, measured, caps=caps, settings=SETTINGS)
    np.testing.assert_array_equal(resumed.breach_since, [10.0, NAN, NAN, NAN, 10.0, 40.0, 10.0])
    np.testing.assert_array_equal(settled, [True, True, True, False, True, False, True])
    # step() then goes on from there: no new entry, a domain in breach stays in it.
    after, events = step(resumed, measured, caps, now=50, settings=SETTINGS)
    np.testing.assert_array_equal(after.in_breach, [True, False, False, False, True, True, True])
    assert not events.entered[[0, 6]].any()
    assert events.to_clear_w[0] == pytest.approx(150.0)
    with pytest.raises(ValueError):
        resume(state, since[:2], measured, caps=caps, settings=SETTINGS)


def test_overage_and_watts_to_clear() -> None:
    (_, first), (_, second) = run([(0, 1100), (60, 1100)])
    assert first.overage_w[0] == pytest.approx(100)
    assert first.to_clear_w[0] == 0  # pending, not in breach: nothing to shed yet
    assert second.to_clear_w[0] == pytest.approx(1100 - 950)


def test_all_domains_step_independently() -> None:
    cfg = BreachSettings(tolerance=0.0, hysteresis=0.1, grace_s=10)
    caps = np.array([100.0, 100.0, 100.0, 100.0])
    state = BreachState.initial(4)
    state, _ = step(state, np.array([150, 150, 50, NAN]), caps, now=0, settings=cfg)
    state, ev = step(state, np.array([150, 95, 50, 150]), caps, now=10, settings=cfg)
    assert state.in_breach.tolist() == [True, False, False, False]
    assert ev.entered.tolist() == [True, False, False, False]
    assert ev.pending.tolist() == [False, False, False, True]
    state, ev = step(state, np.array([80, 150, 50, 150]), caps, now=20, settings=cfg)
    assert ev.cleared.tolist() == [True, False, False, False]
    assert state.in_breach.tolist() == [False, False, False, True]


def test_state_is_immutable_and_inputs_checked() -> None:
    state = BreachState.initial(2)
    new, _ = step(state, np.array([5.0, 5.0]), np.array([1.0, 10.0]), now=0, settings=SETTINGS)
    assert np.isnan(state.over_since).all()  # the old value is untouched
    assert new.over_since[0] == 0
    with pytest.raises(ValueError):
        new.over_since[0] = 1.0
    with pytest.raises(ValueError, match="expected"):
        step(state, np.array([1.0]), np.array([1.0, 1.0]), now=0, settings=SETTINGS)
    with pytest.raises(ValueError, match="finite"):
        step(state, np.array([1.0, 1.0]), np.array([1.0, NAN]), now=0, settings=SETTINGS)
    with pytest.raises(ValueError, match="hysteresis"):
        BreachSettings(hysteresis=1.0)


# ------------------------------------------------------------------ tree sums


def small_tree() -> PowerTree:
    """site → row-a → (rack-1, rack-2); site → row-b → rack-3."""
    names = ["site", "row-a", "row-b", "rack-1", "rack-2", "rack-3"]
    parents = [None, "site", "site", "row-a", "row-a", "row-b"]
    return PowerTree.build(names, parents, np.full((6, 1), 1000.0))


def test_roll_up_sums_leaves_into_every_ancestor() -> None:
    tree = small_tree()
    i = tree.index
    direct = np.zeros(tree.size)
    direct[[i["rack-1"], i["rack-2"], i["rack-3"]]] = [100, 200, 400]
    total = roll_up(tree.membership, direct)
    assert total[i["row-a"]] == 300
    assert total[i["row-b"]] == 400
    assert total[i["site"]] == 700
    assert total[i["rack-2"]] == 200


def test_roll_up_propagates_missing_data_upwards_only() -> None:
    tree = small_tree()
    i = tree.index
    direct = np.zeros(tree.size)
    direct[[i["rack-1"], i["rack-2"], i["rack-3"]]] = [100, NAN, 400]
    total = roll_up(tree.membership, direct)
    assert np.isnan(total[[i["rack-2"], i["row-a"], i["site"]]]).all()
    assert total[i["rack-1"]] == 100
    assert total[i["row-b"]] == 400
    assert total[i["rack-3"]] == 400


def test_nodes_to_domains() -> None:
    tree = small_tree()
    i = tree.index
    node_domain = np.array([i["rack-1"], i["rack-1"], i["rack-3"]])
    direct = direct_watts(node_domain, np.array([10.0, 20.0, 40.0]), tree.size)
    assert direct[i["rack-1"]] == 30
    assert direct[i["rack-2"]] == 0  # no nodes: known to draw nothing
    total = measured_by_domain(tree.membership, node_domain, np.array([10.0, NAN, 40.0]))
    assert np.isnan(total[[i["rack-1"], i["row-a"], i["site"]]]).all()
    assert total[i["rack-2"]] == 0
    assert total[i["row-b"]] == 40


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(st.floats(0, 1e5), st.just(NAN)), min_size=3, max_size=3))
def test_roll_up_is_a_nan_aware_matrix_sum(values: list[float]) -> None:
    tree = small_tree()
    direct = np.zeros(tree.size)
    direct[tree.leaves] = values
    total = roll_up(tree.membership, direct)
    for a in range(tree.size):
        below = direct[tree.membership[a]]
        if np.isnan(below).any():
            assert np.isnan(total[a])
        else:
            assert total[a] == pytest.approx(below.sum())


# ------------------------------------------------------------------ tracker properties


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.one_of(st.floats(0, 2000), st.just(NAN)), min_size=1, max_size=30),
    st.floats(0, 0.1),
    st.floats(0, 0.2),
    st.sampled_from([0, 10, 30, 60]),
)
def test_tracker_never_moves_on_missing_data_and_respects_thresholds(
    readings: list[float], tolerance: float, hysteresis: float, grace: int
) -> None:
    cfg = BreachSettings(tolerance=tolerance, hysteresis=hysteresis, grace_s=grace)
    state = BreachState.initial(1)
    for k, watts in enumerate(readings):
        now = 10.0 * k
        before = bool(state.in_breach[0])
        state, ev = step(state, np.array([watts]), np.array([CAP]), now=now, settings=cfg)
        after = bool(state.in_breach[0])
        if np.isnan(watts):
            assert after == before and not ev.entered[0] and not ev.cleared[0]
            continue
        if ev.entered[0]:
            assert watts > CAP * (1 + tolerance)
            # Every tick of the last `grace` seconds had data and was over.
            window = [readings[j] for j in range(k + 1) if now - 10.0 * j <= grace]
            assert all(w > CAP * (1 + tolerance) for w in window)
        if ev.cleared[0]:
            assert watts < CAP * (1 - hysteresis)
        if before and watts >= CAP * (1 - hysteresis):
            assert after  # between the thresholds a breach holds


# ------------------------------------------------------------------ feedback to placement


def test_feedback_closes_a_breached_domain_to_new_replicas() -> None:
    tree = small_tree()
    i = tree.index
    ledger = Ledger(tree, np.zeros(tree.size))
    ledger.add(np.array([500.0]), i["rack-1"])  # predicted 500 W, measured 1100 W
    measured = roll_up(tree.membership, _leaves(tree, {"rack-1": 1100.0}))
    in_breach = np.zeros(tree.size, dtype=bool)
    in_breach[i["rack-1"]] = True
    add = feedback_watts(
        tree.parents, in_breach, measured, caps=tree.caps[:, 0], predicted=ledger.load[:, 0]
    )
    assert add[i["rack-1"]] == pytest.approx(600)  # measured − predicted > measured − cap
    assert add.sum() == pytest.approx(600)
    for d in np.flatnonzero(add):
        ledger.add_watts(np.array([add[d]]), int(d))
    assert ledger.load[i["rack-1"], 0] == pytest.approx(1100)
    assert ledger.load[i["site"], 0] == pytest.approx(1100)
    assert ledger.load[i["rack-2"], 0] == 0


def test_feedback_does_not_count_twice_up_the_tree() -> None:
    tree = small_tree()
    i = tree.index
    caps = np.array([1000.0, 600, 1000, 300, 300, 1000])[_order(tree)]
    predicted = np.zeros(tree.size)
    measured = roll_up(tree.membership, _leaves(tree, {"rack-1": 400.0, "rack-2": 350.0}))
    in_breach = np.zeros(tree.size, dtype=bool)
    in_breach[[i["rack-1"], i["rack-2"], i["row-a"]]] = True
    add = feedback_watts(tree.parents, in_breach, measured, caps=caps, predicted=predicted)
    raised = tree.membership.astype(float) @ add  # what add_watts does to every domain
    # Each breached domain is raised by at least its own need (measured − predicted here),
    # and a parent whose children already give it enough gets nothing of its own.
    assert raised[i["rack-1"]] == pytest.approx(400)
    assert raised[i["rack-2"]] == pytest.approx(350)
    assert raised[i["row-a"]] == pytest.approx(750)
    assert add[i["row-a"]] == 0
    assert raised[i["site"]] == pytest.approx(750)


def test_feedback_ignores_domains_without_data_or_breach() -> None:
    tree = small_tree()
    measured = np.full(tree.size, 2000.0)
    measured[0] = NAN
    in_breach = np.zeros(tree.size, dtype=bool)
    in_breach[0] = True
    add = feedback_watts(
        tree.parents, in_breach, measured, caps=tree.caps[:, 0], predicted=np.zeros(tree.size)
    )
    assert (add == 0).all()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0, 3000), min_size=6, max_size=6),
    st.lists(st.floats(0, 3000), min_size=6, max_size=6),
    st.lists(st.booleans(), min_size=6, max_size=6),
)
def test_feedback_raises_each_breached_domain_enough_and_no_more_than_needed(
    measured: list[float], predicted: list[float], flags: list[bool]
) -> None:
    tree = small_tree()
    m, p, b = np.array(measured), np.array(predicted), np.array(flags)
    caps = tree.caps[:, 0]
    add = feedback_watts(tree.parents, b, m, caps=caps, predicted=p)
    assert (add >= 0).all()
    raised = tree.membership.astype(float) @ add
    need = np.where(b, np.clip(np.maximum(m - caps, m - p), 0, None), 0.0)
    assert (raised >= need - 1e-6).all()
    # Minimal: each domain is raised by its own need or what its children bring, not more.
    for d in range(tree.size):
        children = np.flatnonzero(tree.parents == d)
        assert raised[d] == pytest.approx(max(need[d], raised[children].sum()))


def _order(tree: PowerTree) -> list[int]:
    """Positions in the build order (site, row-a, row-b, rack-1, rack-2, rack-3)."""
    names = ["site", "row-a", "row-b", "rack-1", "rack-2", "rack-3"]
    return [names.index(n) for n in tree.names]


def _leaves(tree: PowerTree, watts: dict[str, float]) -> np.ndarray:
    direct = np.zeros(tree.size)
    for name, w in watts.items():
        direct[tree.index[name]] = w
    return direct
