"""The power-limit rung: plan_cap, plan_uncap and how next_action puts them first."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from placement.control.capping import (
    CapSettings,
    LimitChange,
    NodeGpus,
    plan_cap,
    plan_uncap,
)
from placement.control.ladder import (
    Cap,
    DomainStatus,
    Evict,
    Idle,
    LadderSettings,
    Reshape,
    Restore,
    ScaledService,
    Step,
    Uncap,
    Wait,
    limits_held_until,
    next_action,
)

SETTINGS = CapSettings(margin=0.10, high_priority=1000, second_threshold=0.05, floor=0.5)
LADDER = LadderSettings(protect_priority=1000, cap_settle_s=30.0, uncap_settle_s=120.0)


def node(
    name: str,
    priority: int | None = 0,
    *,
    limit: float = 700.0,
    draw: float = 600.0,
    gpus: int = 8,
    can_set: bool | None = True,
    floor: float | None = None,
) -> NodeGpus:
    return NodeGpus(
        name,
        gpus,
        limit_w=limit,
        default_w=700.0,
        min_w=200.0,
        draw_w=draw,
        priority=priority,
        floor=floor,
        can_set=can_set,
    )


def cut(plan_changes: tuple[LimitChange, ...], name: str) -> float:
    for c in plan_changes:
        if c.node == name:
            return c.from_w - c.to_w
    return 0.0


# ---- plan_cap ------------------------------------------------------------------------------


def test_low_priority_gpus_are_capped_first_and_cover_the_overage_with_the_margin() -> None:
    nodes = [node("low", 0), node("high", 2000)]
    # 1,000 W over a 100 kW cap: 1 %, below the second threshold.
    plan = plan_cap(nodes, 1000.0, cap_w=100_000.0, settings=SETTINGS)
    assert [c.node for c in plan.changes] == ["low"]
    # From the draw (600 W per GPU): 1,100 W over 8 GPUs → 462.5 W each.
    assert plan.changes[0].to_w == pytest.approx(600 - 1100 / 8)
    assert plan.freed_w == pytest.approx(1100.0)
    assert plan.uncovered_w == pytest.approx(0.0)
    assert not plan.used_high


def test_high_priority_gpus_wait_for_the_second_threshold() -> None:
    nodes = [node("low", 0), node("high", 2000)]
    # Low room: 8 × (600 − 350) = 2,000 W. 3,000 W over is below 5 % of 100 kW:
    # high priority stays untouched and the rest is uncovered.
    below = plan_cap(nodes, 3000.0, cap_w=100_000.0, settings=SETTINGS)
    assert cut(below.changes, "high") == 0.0
    assert below.uncovered_w == pytest.approx(3300.0 - 2000.0)
    assert "second threshold" in below.why and "uncovered" in below.why
    # The same overage over a 50 kW cap is 6 %: past the threshold, high takes the rest.
    past = plan_cap(nodes, 3000.0, cap_w=50_000.0, settings=SETTINGS)
    limits = {c.node: c.to_w for c in past.changes}
    assert limits["low"] == pytest.approx(350.0)  # at its floor: 2,000 W below its draw
    assert limits["high"] == pytest.approx(600.0 - 1300.0 / 8)
    assert past.used_high and past.uncovered_w == pytest.approx(0.0)


def test_floors_are_never_crossed_and_the_rest_is_left_uncovered() -> None:
    nodes = [node("a", 0, floor=0.8), node("b", 0)]
    plan = plan_cap(nodes, 50_000.0, cap_w=100_000.0, settings=SETTINGS)
    limits = {c.node: c.to_w for c in plan.changes}
    assert limits["a"] == pytest.approx(0.8 * 700)
    assert limits["b"] == pytest.approx(0.5 * 700)
    assert plan.uncovered_w == pytest.approx(55_000 - 8 * (600 - 560) - 8 * (600 - 350))
    assert "floors leave" in plan.why


def test_nodes_without_agent_or_permission_are_not_capped_and_the_plan_says_why() -> None:
    nodes = [node("ghost", 0, can_set=None), node("locked", 0, can_set=False)]
    plan = plan_cap(nodes, 1000.0, cap_w=100_000.0, settings=SETTINGS)
    assert plan.changes == ()
    assert "no powercap agent reports on ghost" in plan.why
    assert "the agent cannot set limits on locked" in plan.why


def test_a_gpu_drawing_below_its_floor_frees_nothing() -> None:
    plan = plan_cap([node("quiet", 0, draw=300.0)], 500.0, cap_w=10_000.0, settings=SETTINGS)
    assert plan.changes == () and plan.uncovered_w == pytest.approx(550.0)


node_strategy = st.builds(
    node,
    name=st.sampled_from(["n0", "n1", "n2", "n3", "n4", "n5"]),
    priority=st.one_of(st.none(), st.sampled_from([0, 100, 1000, 5000])),
    limit=st.floats(300.0, 700.0),
    draw=st.floats(0.0, 800.0),
    gpus=st.integers(1, 8),
    can_set=st.sampled_from([True, True, False, None]),
    floor=st.one_of(st.none(), st.floats(0.3, 1.0)),
)


@settings(max_examples=150, deadline=None)
@given(
    nodes=st.lists(node_strategy, min_size=1, max_size=6, unique_by=lambda n: n.node),
    overage=st.floats(0.0, 30_000.0),
    cap=st.floats(10_000.0, 200_000.0),
)
def test_plan_cap_properties(nodes: list[NodeGpus], overage: float, cap: float) -> None:
    plan = plan_cap(nodes, overage, cap_w=cap, settings=SETTINGS)
    by_name = {n.node: n for n in nodes}
    target = overage * 1.1
    for c in plan.changes:
        n = by_name[c.node]
        assert n.can_set is True  # never a node that cannot be capped
        assert c.to_w <= n.limit_w + 1e-9  # a cap step only lowers
        assert c.to_w >= n.lowest(SETTINGS) - 1e-6  # never below a floor
        assert c.to_w >= n.min_w - 1e-9
        high = n.priority is not None and n.priority >= SETTINGS.high_priority
        if high:
            assert overage > SETTINGS.second_threshold * cap  # only past the threshold
    assert plan.freed_w + plan.uncovered_w == pytest.approx(target, abs=1e-3)
    assert plan.freed_w <= target + 1e-3  # as little as covers it
    if any(
        by_name[c.node].priority is not None and by_name[c.node].priority >= SETTINGS.high_priority  # type: ignore[operator]
        for c in plan.changes
    ):
        # High priority only for what the low-priority GPUs could not cover: every
        # low-priority node that can be capped is at its lowest.
        for n in nodes:
            low = n.priority is None or n.priority < SETTINGS.high_priority
            if low and n.can_set and n.gpus:
                top = min(n.limit_w, n.draw_w) if math.isfinite(n.draw_w) else n.limit_w
                floor = max(n.lowest(SETTINGS), n.min_w)
                if top > floor:
                    to = {c.node: c.to_w for c in plan.changes}[n.node]
                    assert to == pytest.approx(floor, abs=1e-3)


# ---- plan_uncap ----------------------------------------------------------------------------


def test_uncap_raises_one_step_high_priority_first_within_the_headroom() -> None:
    nodes = [node("low", 0, limit=400.0), node("high", 2000, limit=400.0), node("free", 0)]
    steps = plan_uncap(nodes, 800.0, SETTINGS)
    # 70 W per GPU per step (10 % of 700): high first (560 W), then low with what is left.
    assert [(c.node, c.to_w) for c in steps] == [("high", 470.0), ("low", 430.0)]
    assert sum((c.to_w - c.from_w) * c.gpus for c in steps) <= 800.0


def test_uncap_withdraws_at_the_default_and_waits_without_headroom() -> None:
    assert plan_uncap([node("a", 0, limit=690.0)], 10_000.0, SETTINGS)[0].withdraw
    assert plan_uncap([node("a", 0, limit=400.0)], 0.0, SETTINGS) == ()
    # Drawing below its limit, a node wants no more: a whole step, whatever the headroom
    # (as long as there is some), while a node held by its limit gets what headroom holds.
    free, held = node("free", 0, limit=450.0, draw=400.0), node("held", 0, limit=450.0, draw=450.0)
    steps = plan_uncap([free, held], 40.0, SETTINGS)
    assert [(c.node, c.to_w) for c in steps] == [("free", 520.0), ("held", 455.0)]
    assert plan_uncap([free], -1.0, SETTINGS) == ()


@settings(max_examples=100, deadline=None)
@given(
    nodes=st.lists(node_strategy, min_size=1, max_size=6, unique_by=lambda n: n.node),
    headroom=st.floats(-1000.0, 20_000.0),
)
def test_plan_uncap_properties(nodes: list[NodeGpus], headroom: float) -> None:
    steps = plan_uncap(nodes, headroom, SETTINGS)
    if headroom <= 0:
        assert steps == ()
    by_name = {n.node: n for n in nodes}
    raised = 0.0
    for c in steps:
        n = by_name[c.node]
        assert n.capped and c.to_w > c.from_w and c.to_w <= n.default_w
        if n.can_set:
            assert c.to_w - c.from_w <= SETTINGS.restore_step * n.default_w + 1.0
            if n.draw_w >= n.limit_w - 0.02 * n.default_w:  # held by its limit
                raised += (c.to_w - c.from_w) * c.gpus
    assert raised <= max(headroom, 0.0) + 8.0  # the last step may round up to the default


# ---- the ladder --------------------------------------------------------------------------------


def breach(to_clear: float = 1000.0, since: float = 0.0) -> DomainStatus:
    return DomainStatus(True, False, since, to_clear, 101_000.0, 100_000.0)


def calm(measured: float = 80_000.0) -> DomainStatus:
    return DomainStatus(False, False, math.nan, math.nan, measured, 100_000.0)


SERVICE = ScaledService(
    "batch", 0, replicas=4, in_domain=4, watts_per_replica=800.0, max_replicas=4
)


def act(
    status: DomainStatus, gpus: list[NodeGpus], history: list[Step], now: float = 100.0
) -> object:
    return next_action(
        status,
        [SERVICE],
        history,
        now=now,
        settings=LADDER,
        evictions_allowed=2,
        gpus=gpus,
        capping=SETTINGS,
    )


def test_a_breach_caps_first_then_waits_for_the_cap_to_settle() -> None:
    action = act(breach(), [node("a")], [])
    assert isinstance(action, Cap) and action.plan.changes[0].node == "a"
    waiting = act(breach(), [node("a")], [Step("cap", 90.0)])
    assert isinstance(waiting, Wait) and waiting.until == 120.0


def test_at_the_floors_the_ladder_falls_through_to_reshape_then_evict() -> None:
    floored = [node("a", limit=350.0, draw=350.0)]
    action = act(breach(), floored, [Step("cap", 10.0)])
    assert isinstance(action, Reshape) and "floors" in action.note
    then = act(breach(), floored, [Step("cap", 10.0), Step("reshape", 20.0)], now=1000.0)
    assert isinstance(then, Evict) and then.note


def test_without_an_agent_or_permission_the_ladder_goes_straight_to_reshape() -> None:
    action = act(breach(), [node("a", can_set=None), node("b", can_set=False)], [])
    assert isinstance(action, Reshape)
    assert "no powercap agent" in action.note and "cannot set limits on b" in action.note


def test_capping_off_is_the_old_ladder() -> None:
    action = next_action(
        breach(), [SERVICE], [], now=100.0, settings=LADDER, evictions_allowed=2, gpus=[node("a")]
    )
    assert isinstance(action, Reshape) and action.note == ""


def test_limits_come_back_after_the_settle_period_and_before_replicas() -> None:
    capped = [node("a", limit=400.0)]
    lowered = ScaledService(
        "batch", 0, replicas=2, in_domain=2, watts_per_replica=800.0, max_replicas=2, original_max=4
    )

    def out(history: list[Step], now: float, gpus: list[NodeGpus]) -> object:
        return next_action(
            calm(),
            [lowered],
            history,
            now=now,
            settings=LADDER,
            evictions_allowed=2,
            gpus=gpus,
            capping=SETTINGS,
        )

    early = out([Step("cap", 100.0)], 150.0, capped)
    assert isinstance(early, Wait) and early.until == 220.0  # hysteresis: settle first
    step = out([Step("cap", 100.0)], 220.0, capped)
    assert isinstance(step, Uncap) and step.changes[0].to_w == pytest.approx(470.0)
    # Replicas come back only once no limit of this domain is left.
    assert isinstance(out([Step("uncap", 0.0)], 1000.0, []), Restore)


def test_limits_are_held_for_the_hold_after_the_last_cap() -> None:
    held = replace(LADDER, limit_hold_s=3600.0)
    capped = [node("a", limit=400.0)]

    def out(history: list[Step], now: float) -> object:
        return next_action(
            calm(),
            [SERVICE],
            history,
            now=now,
            settings=held,
            evictions_allowed=2,
            gpus=capped,
            capping=SETTINGS,
        )

    # Past the restore settle period, but within the hold of the last cap: no raise.
    waiting = out([Step("cap", 100.0), Step("cap", 1000.0)], 2000.0)
    assert isinstance(waiting, Wait) and waiting.until == 4600.0
    assert "holding" in waiting.reason
    assert isinstance(out([Step("cap", 100.0), Step("cap", 1000.0)], 4600.0), Uncap)
    # Once raising has begun, each step waits only for the restore settle period.
    steps = [Step("cap", 1000.0), Step("uncap", 4600.0)]
    assert isinstance(out(steps, 4700.0), Wait)
    assert isinstance(out(steps, 4720.0), Uncap)
    # A breach caps regardless of the hold.
    assert isinstance(act(breach(), [node("a")], [Step("cap", 10.0)], now=100.0), Cap)


def test_the_hold_doubles_for_each_recent_cap_episode() -> None:
    hour = 3600.0
    one = [Step("cap", 0.0), Step("cap", 30.0)]  # one episode of two cap steps
    assert limits_held_until(one, hour) == (30.0 + hour, hour)  # from the last cap step
    # Raised, capped again: the second episode holds two hours, the third four.
    two = [*one, Step("uncap", 2 * hour), Step("cap", 3 * hour)]
    assert limits_held_until(two, hour) == (5 * hour, 2 * hour)
    three = [*two, Step("uncap", 6 * hour), Step("cap", 7 * hour)]
    assert limits_held_until(three, hour) == (11 * hour, 4 * hour)
    # Episodes more than a day of holds before the last one no longer count.
    late = [*one, Step("uncap", 2 * hour), Step("cap", 30 * hour)]
    assert limits_held_until(late, hour)[1] == hour
    # At most 2**4 holds; other steps between caps split episodes too.
    many = [Step("cap" if i % 2 else "evict", i * 60.0) for i in range(40)]
    assert limits_held_until(many, hour)[1] == 16 * hour
    assert limits_held_until([], hour) == (-math.inf, hour)
    assert limits_held_until(one, 0.0) == (30.0, 0.0)
    # The ceiling: a day at most, however often the domain was capped; never below
    # the hold itself.
    assert limits_held_until(many, 2 * hour, max_s=24 * hour)[1] == 24 * hour
    assert limits_held_until(three, hour, max_s=3 * hour) == (10 * hour, 3 * hour)
    assert limits_held_until(one, hour, max_s=60.0)[1] == hour
    with pytest.raises(ValueError, match="limit_hold_max_s"):
        LadderSettings(protect_priority=1000, limit_hold_s=hour, limit_hold_max_s=60.0)


def test_at_the_floors_reshape_waits_for_the_escalation_grace() -> None:
    floored = [node("a", limit=350.0, draw=350.0)]
    waiting_ladder = replace(LADDER, escalate_after_s=45.0)

    def out(now: float) -> object:
        return next_action(
            breach(since=100.0),
            [SERVICE],
            [],
            now=now,
            settings=waiting_ladder,
            evictions_allowed=2,
            gpus=floored,
            capping=SETTINGS,
        )

    early = out(120.0)
    assert isinstance(early, Wait) and early.until == 145.0
    assert isinstance(out(145.0), Reshape)
    # A cap that frees power is taken at once, escalation grace or not.
    capped = next_action(
        breach(since=100.0),
        [SERVICE],
        [],
        now=100.0,
        settings=waiting_ladder,
        evictions_allowed=2,
        gpus=[node("a")],
        capping=SETTINGS,
    )
    assert isinstance(capped, Cap)


def test_a_calm_domain_without_caps_or_reshapes_is_idle() -> None:
    assert isinstance(act(calm(), [node("a")], []), Idle)


@settings(max_examples=100, deadline=None)
@given(
    nodes=st.lists(node_strategy, min_size=1, max_size=5, unique_by=lambda n: n.node),
    to_clear=st.floats(1.0, 20_000.0),
)
def test_reshape_and_evict_come_only_when_capping_frees_nothing(
    nodes: list[NodeGpus], to_clear: float
) -> None:
    action = act(breach(to_clear), nodes, [], now=100.0)
    plan = plan_cap(nodes, to_clear, cap_w=100_000.0, settings=SETTINGS)
    if isinstance(action, Reshape | Evict):
        assert plan.freed_w < 1.0 and action.note  # and the ladder says why
    else:
        assert isinstance(action, Cap) and action.plan.freed_w >= 1.0


# ---- the guard -------------------------------------------------------------------------------


def test_a_capped_domain_nearing_its_cap_is_capped_further_before_it_breaches() -> None:
    """Out of breach, holding limits, within 3% of the cap: another cap step, down to 94%
    (plus the margin), low priority only; below the line the hold goes on as before."""
    held = replace(LADDER, limit_hold_s=3600.0)
    gpus = [node("low", limit=660.0, draw=660.0), node("high", 2000), node("free")]

    def out(
        measured: float,
        history: list[Step],
        *,
        nodes: list[NodeGpus] = gpus,
        capping: CapSettings = SETTINGS,
    ) -> object:
        return next_action(
            calm(measured),
            [SERVICE],
            history,
            now=100.0,
            settings=held,
            evictions_allowed=2,
            gpus=nodes,
            capping=capping,
        )

    step = out(98_000.0, [Step("cap", 0.0)])
    assert isinstance(step, Cap) and step.guard
    assert cut(step.plan.changes, "high") == 0.0  # never past the second threshold
    assert step.plan.freed_w == pytest.approx((98_000.0 - 94_000.0) * 1.1, rel=0.01)
    # Within the settle period of the last step it waits, saying why.
    waiting = out(98_000.0, [Step("cap", 90.0)])
    assert isinstance(waiting, Wait) and waiting.until == 120.0 and "guard" in waiting.reason
    # Under the guard line the limits are held, as before.
    assert isinstance(out(96_000.0, [Step("cap", 0.0)]), Wait)
    # Off, or with nothing left to lower, it holds and never reshapes or evicts.
    off = out(98_000.0, [Step("cap", 0.0)], capping=replace(SETTINGS, guard=0.0))
    assert isinstance(off, Wait) and "holding" in off.reason
    floored = [node("low", limit=350.0, draw=350.0)]
    assert isinstance(out(99_900.0, [Step("cap", 0.0)], nodes=floored), Wait)


def test_a_domain_without_limits_is_left_to_its_breaches() -> None:
    uncapped = [node("a", limit=700.0, draw=690.0)]
    assert isinstance(act(calm(99_000.0), uncapped, []), Idle)
