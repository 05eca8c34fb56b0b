"""The action ladder: reshape, wait for it, evict, and restore when headroom returns."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from placement.control.breach import BreachSettings, BreachState, step
from placement.control.ladder import (
    DomainStatus,
    Evict,
    Idle,
    LadderSettings,
    RateLimit,
    Reshape,
    Restore,
    ScaleChange,
    ScaledService,
    Step,
    Wait,
    eviction_budget,
    next_action,
    rate_budget,
    reshape_plan,
    restore_plan,
)

CFG = LadderSettings(protect_priority=100, reshape_settle_s=300, evict_settle_s=60)


def breach(to_clear: float = 1500.0, since: float = 0.0, cap: float = 10_000.0) -> DomainStatus:
    return DomainStatus(
        in_breach=True,
        stale=False,
        breach_since=since,
        to_clear_w=to_clear,
        measured_w=cap * 0.95 + to_clear,
        cap_w=cap,
    )


def calm(measured: float, cap: float = 10_000.0) -> DomainStatus:
    return DomainStatus(
        in_breach=False,
        stale=False,
        breach_since=math.nan,
        to_clear_w=0.0,
        measured_w=measured,
        cap_w=cap,
    )


def services() -> list[ScaledService]:
    return [
        ScaledService(
            "chat-eu", 100, replicas=10, in_domain=4, watts_per_replica=900, max_replicas=12
        ),
        ScaledService(
            "batch",
            10,
            replicas=6,
            in_domain=2,
            watts_per_replica=500,
            max_replicas=8,
            min_replicas=1,
        ),
        ScaledService(
            "summarise",
            20,
            replicas=5,
            in_domain=3,
            watts_per_replica=700,
            max_replicas=5,
            min_replicas=2,
        ),
    ]


def test_no_data_means_no_action() -> None:
    stale = dataclasses.replace(breach(), stale=True, to_clear_w=math.nan)
    assert isinstance(
        next_action(stale, services(), [], now=0, settings=CFG, evictions_allowed=5), Wait
    )


def test_reshape_lowers_the_lowest_priorities_first_and_never_protected() -> None:
    action = next_action(breach(1500), services(), [], now=10, settings=CFG, evictions_allowed=5)
    assert isinstance(action, Reshape)
    # batch (priority 10) gives both its in-domain replicas (1000 W), summarise (20)
    # one of the three it may lose down to its minimum of 2 (700 W); chat-eu is protected.
    assert action.changes == (
        ScaleChange("batch", from_max=8, to_max=4, original_max=8),
        ScaleChange("summarise", from_max=5, to_max=4, original_max=5),
    )
    assert action.expected_w == 1700


def test_reshape_counts_down_from_running_replicas_and_keeps_the_original() -> None:
    # Already lowered once to 7 (original 8) and only 6 run: the new maximum is 6 − 1.
    svc = [
        ScaledService(
            "batch",
            10,
            replicas=6,
            in_domain=3,
            watts_per_replica=500,
            max_replicas=7,
            original_max=8,
        )
    ]
    changes, expected = reshape_plan(svc, 400, CFG)
    assert changes == (ScaleChange("batch", 7, 5, 8),)
    assert expected == 500


def test_wait_for_the_effect_of_a_step_then_escalate_to_eviction() -> None:
    history = [Step("reshape", 10)]
    wait = next_action(breach(), services(), history, now=200, settings=CFG, evictions_allowed=5)
    assert wait == Wait("waiting for the effect of reshape", 310)
    evict = next_action(
        breach(800), services(), history, now=310, settings=CFG, evictions_allowed=5
    )
    assert evict == Evict(overage_w=800, max_victims=5)
    # After an eviction, the shorter eviction settle period applies.
    history.append(Step("evict", 320))
    assert next_action(
        breach(300), services(), history, now=350, settings=CFG, evictions_allowed=5
    ) == Wait("waiting for the effect of evict", 380)
    assert next_action(
        breach(300), services(), history, now=380, settings=CFG, evictions_allowed=2
    ) == Evict(300, 2)


def test_eviction_waits_for_the_rate_limit() -> None:
    history = [Step("reshape", 0)]
    action = next_action(breach(), services(), history, now=1000, settings=CFG, evictions_allowed=0)
    assert action == Wait("eviction rate limit reached")


def test_steps_of_an_earlier_breach_do_not_count() -> None:
    history = [Step("reshape", 10), Step("evict", 400)]
    action = next_action(
        breach(since=2000), services(), history, now=2000, settings=CFG, evictions_allowed=5
    )
    assert isinstance(action, Reshape)


def test_more_reshape_rounds_when_configured() -> None:
    cfg = dataclasses.replace(CFG, reshape_rounds=2)
    history = [Step("reshape", 0)]
    assert isinstance(
        next_action(breach(), services(), history, now=300, settings=cfg, evictions_allowed=5),
        Reshape,
    )
    history.append(Step("reshape", 300))
    assert isinstance(
        next_action(breach(), services(), history, now=600, settings=cfg, evictions_allowed=5),
        Evict,
    )


def test_nothing_to_reshape_goes_straight_to_eviction() -> None:
    only_protected = [services()[0]]
    assert next_action(
        breach(900), only_protected, [], now=0, settings=CFG, evictions_allowed=3
    ) == Evict(900, 3)
    at_minimum = [
        ScaledService(
            "s", 1, replicas=2, in_domain=2, watts_per_replica=100, max_replicas=2, min_replicas=2
        )
    ]
    assert isinstance(
        next_action(breach(), at_minimum, [], now=0, settings=CFG, evictions_allowed=3), Evict
    )


def test_restore_waits_for_settle_and_headroom_and_is_paced_by_it() -> None:
    lowered = [
        ScaledService(
            "batch",
            10,
            replicas=4,
            in_domain=0,
            watts_per_replica=500,
            max_replicas=4,
            original_max=8,
        ),
        ScaledService(
            "summarise",
            20,
            replicas=4,
            in_domain=2,
            watts_per_replica=700,
            max_replicas=4,
            original_max=5,
        ),
    ]
    history = [Step("evict", 1000)]
    assert next_action(
        calm(5000), lowered, history, now=1100, settings=CFG, evictions_allowed=5
    ) == Wait("letting evict settle before restoring", 1300)
    # 9000 W is the restore line (10% margin): 8800 W measured leaves room for nothing.
    assert next_action(
        calm(8800), lowered, history, now=1300, settings=CFG, evictions_allowed=5
    ) == Wait("waiting for headroom to restore")
    # 1900 W of headroom: summarise (more important) first, one replica (700 W), then
    # two of batch (1000 W).
    action = next_action(calm(7100), lowered, history, now=1300, settings=CFG, evictions_allowed=5)
    assert action == Restore((ScaleChange("summarise", 4, 5, 5), ScaleChange("batch", 4, 6, 8)))


def test_a_service_held_by_another_breach_is_not_restored() -> None:
    held = ScaledService(
        "batch",
        10,
        replicas=4,
        in_domain=1,
        watts_per_replica=500,
        max_replicas=4,
        original_max=8,
        held_elsewhere=True,
    )
    assert restore_plan([held], 10_000) == ()
    assert next_action(calm(0), [held], [], now=0, settings=CFG, evictions_allowed=5) == Wait(
        "waiting for headroom to restore"
    )


def test_nothing_lowered_is_idle() -> None:
    assert (
        next_action(
            calm(5000), services(), [Step("evict", 0)], now=10, settings=CFG, evictions_allowed=5
        )
        == Idle()
    )


def test_rate_budgets_use_a_sliding_window() -> None:
    per_domain = RateLimit(limit=2, window_s=60)
    cluster = RateLimit(limit=5, window_s=300)
    assert rate_budget([], 0, per_domain) == 2
    assert rate_budget([10, 50], 60, per_domain) == 0
    assert rate_budget([10, 50], 70, per_domain) == 1  # 10 left the window at 70
    assert rate_budget([10, 50, 55], 60, per_domain) == 0  # never negative
    assert (
        eviction_budget([50], [0, 10, 20, 30, 50], 60, per_domain=per_domain, cluster=cluster) == 0
    )
    assert eviction_budget([50], [20, 50], 60, per_domain=per_domain, cluster=cluster) == 1


# ------------------------------------------------------------------ a whole episode


def test_a_breach_episode_reshapes_evicts_clears_and_restores_the_original() -> None:
    """Drive the breach tracker and the ladder together on a toy domain whose power is
    a function of the replicas running in it."""
    cap = 10_000.0
    bcfg = BreachSettings(tolerance=0.0, hysteresis=0.05, grace_s=60)
    lcfg = LadderSettings(
        protect_priority=100, reshape_settle_s=120, evict_settle_s=60, restore_settle_s=120
    )
    base = 4500.0  # protected services and idle
    # batch's ScaledObject: maxReplicaCount, the annotation, replicas running (all here)
    top: int = 8
    original: int | None = None
    running = 8
    surge = 1700.0  # a traffic surge the prediction missed; gone at t = 600
    state = BreachState.initial(1)
    history: list[Step] = []
    actions: list[str] = []
    for now in range(0, 1800, 30):
        watts = base + 500.0 * running + (surge if now < 600 else 0.0)
        measured = np.array([watts])
        state, events = step(state, measured, np.array([cap]), now=float(now), settings=bcfg)
        status = DomainStatus.of(state, events, measured, caps=np.array([cap]), domain=0)
        svc = [
            ScaledService(
                "batch",
                10,
                replicas=running,
                in_domain=running,
                watts_per_replica=500,
                max_replicas=top,
                original_max=original,
            )
        ]
        action = next_action(
            status, svc, history, now=float(now), settings=lcfg, evictions_allowed=2
        )
        if isinstance(action, Reshape):
            (change,) = action.changes
            top, original = change.to_max, change.original_max
            running = min(running, top)
            history.append(Step("reshape", now))
        elif isinstance(action, Evict):
            history.append(Step("evict", now))  # nothing left to evict in this toy
        elif isinstance(action, Restore):
            (change,) = action.changes
            top = running = change.to_max
            if change.to_max == change.original_max:
                original = None
            history.append(Step("restore", now))
        if not isinstance(action, Wait | Idle):
            actions.append(f"{now}:{type(action).__name__}")
    # 10200 W at t=0 and a breach at t=60 (grace); 700 W to shed below 9500 W: two
    # replicas of batch (max 8 → 6), 9200 W, cleared. During the surge the restore line
    # (9000 W) is not met; when it ends, 7500 W leaves room for both replicas again.
    assert actions == ["60:Reshape", "600:Restore"]
    assert (top, original, running) == (8, None, 8)
    assert not state.in_breach[0]


# ------------------------------------------------------------------ properties


@st.composite
def scaled(draw: st.DrawFn) -> ScaledService:
    replicas = draw(st.integers(0, 12))
    max_replicas = draw(st.integers(1, 14))
    original = draw(st.one_of(st.none(), st.integers(max_replicas, 16)))
    return ScaledService(
        name=draw(st.text("abcdef", min_size=1, max_size=4)),
        priority=draw(st.sampled_from([0, 10, 50, 100, 200])),
        replicas=replicas,
        in_domain=draw(st.integers(0, replicas)),
        watts_per_replica=draw(st.sampled_from([0.0, 100.0, 450.0, 900.0])),
        max_replicas=max_replicas,
        min_replicas=draw(st.integers(0, 3)),
        original_max=original,
        held_elsewhere=draw(st.booleans()),
    )


@settings(max_examples=80, deadline=None)
@given(st.lists(scaled(), max_size=5, unique_by=lambda s: s.name), st.floats(0, 20_000))
def test_reshape_respects_floors_protection_and_covers_when_it_can(
    svc: list[ScaledService], shed: float
) -> None:
    changes, expected = reshape_plan(svc, shed, CFG)
    by_name = {s.name: s for s in svc}
    freed = 0.0
    for c in changes:
        s = by_name[c.service]
        assert s.priority < CFG.protect_priority
        assert s.floor <= c.to_max < min(s.max_replicas, s.replicas) + 1
        assert c.to_max <= c.from_max == s.max_replicas
        assert c.original_max == (s.original_max if s.original_max is not None else s.max_replicas)
        taken = min(s.max_replicas, s.replicas) - c.to_max
        assert 0 < taken <= s.in_domain
        freed += taken * s.watts_per_replica
    assert expected == freed
    room = sum(
        max(0, min(s.in_domain, min(s.max_replicas, s.replicas) - s.floor)) * s.watts_per_replica
        for s in svc
        if s.priority < CFG.protect_priority
    )
    assert freed >= min(shed, room) - 1e-6  # covers, or uses every replica it may


@settings(max_examples=80, deadline=None)
@given(st.lists(scaled(), max_size=5, unique_by=lambda s: s.name), st.floats(-1000, 20_000))
def test_restore_never_exceeds_the_original_or_the_headroom(
    svc: list[ScaledService], headroom: float
) -> None:
    changes = restore_plan(svc, headroom)
    by_name = {s.name: s for s in svc}
    added = 0.0
    for c in changes:
        s = by_name[c.service]
        assert s.lowered and not s.held_elsewhere
        assert s.max_replicas == c.from_max < c.to_max <= c.original_max == s.original_max
        added += (c.to_max - c.from_max) * s.watts_per_replica
    assert added <= max(headroom, 0.0) + 1e-6
