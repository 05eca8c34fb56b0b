"""Breach tracking: measured power against the caps of the current slot, all domains at once.

A domain is *over* on a tick when its measured watts exceed ``cap × (1 + tolerance)``.
It *enters breach* once it has been over on every tick for at least ``grace_s`` seconds,
and it *clears* on the first tick its measured watts fall below ``cap × (1 − hysteresis)``;
between the two thresholds a domain keeps whatever state it has. A tick without data for
a domain (NaN) neither starts nor clears a breach: the domain is reported *stale*, an
in-breach domain stays in breach and a pending one loses its grace timer (as an alerting
rule's ``for:`` does when its series vanishes), because a gap is not evidence that the
domain stayed over. :func:`step` applies these rules (:class:`BreachSettings`,
:class:`BreachState`) and reports a :class:`TickEvents`; :func:`resume` carries on the
breaches another tracker recorded (a previous leader's).

The module also holds the sums up the tree (:func:`direct_watts`, :func:`roll_up`,
:func:`measured_by_domain`; a node without data makes its domain and every ancestor NaN)
and the feedback into the extender's ledger (:func:`feedback_watts`, and
:class:`HeldFeedback`, which keeps it per slot of the period for ``feedback.hold``).

Everything here is pure: the state is a frozen value, time is an input and
:func:`step` returns a new state, never touching the old one. More: docs/controller.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from placement.frozen import read_only

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]


@dataclass(frozen=True)
class BreachSettings:
    """``tolerance`` and ``hysteresis`` are fractions of the cap (0.02 = 2%)."""

    tolerance: float = 0.0
    hysteresis: float = 0.05
    grace_s: float = 60.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise ValueError(f"tolerance must be ≥ 0, got {self.tolerance}")
        if not (math.isfinite(self.hysteresis) and 0 <= self.hysteresis < 1):
            raise ValueError(f"hysteresis must be in [0, 1), got {self.hysteresis}")
        if not (math.isfinite(self.grace_s) and self.grace_s >= 0):
            raise ValueError(f"grace_s must be ≥ 0, got {self.grace_s}")


@dataclass(frozen=True)
class BreachState:
    """Per domain (arrays of length D, read-only).

    ``over_since``: start of the current unbroken run of ticks over the breach threshold,
    NaN when the last tick was not over (or had no data). ``breach_since``: when the
    domain entered its current breach, NaN when it is not in breach.
    """

    over_since: FloatArray
    breach_since: FloatArray

    @staticmethod
    def initial(domains: int) -> BreachState:
        """No domain over, none in breach."""
        return BreachState(
            over_since=read_only(np.full(domains, np.nan)),
            breach_since=read_only(np.full(domains, np.nan)),
        )

    @property
    def in_breach(self) -> BoolArray:
        return ~np.isnan(self.breach_since)

    @property
    def size(self) -> int:
        return int(self.breach_since.shape[0])


@dataclass(frozen=True)
class TickEvents:
    """What one tick changed and measured, per domain (arrays of length D).

    ``overage_w`` is ``measured − cap`` clipped at 0 (what dashboards and placement
    feedback use). ``to_clear_w`` is what must be shed for an in-breach domain to clear,
    ``measured − cap × (1 − hysteresis)``, 0 for domains not in breach. Both are NaN where
    the tick has no data.
    """

    entered: BoolArray
    cleared: BoolArray
    stale: BoolArray
    pending: BoolArray  # over the threshold, grace period not yet served
    overage_w: FloatArray
    to_clear_w: FloatArray


def step(
    state: BreachState,
    measured: FloatArray,
    caps: FloatArray,
    *,
    now: float,
    settings: BreachSettings,
) -> tuple[BreachState, TickEvents]:
    """Advance every domain by one control tick taken at ``now`` (seconds, any epoch).

    ``measured`` is watts per domain (NaN = no data), ``caps`` the raw caps of the current
    slot (e.g. ``tree.caps[:, slot]``). Raises ``ValueError`` on shape mismatches or caps
    that are not finite.
    """
    measured = np.asarray(measured, dtype=np.float64)
    caps = np.asarray(caps, dtype=np.float64)
    d = state.size
    if measured.shape != (d,) or caps.shape != (d,):
        raise ValueError(
            f"expected ({d},) measured and caps, got {measured.shape} and {caps.shape}"
        )
    if not np.isfinite(caps).all():
        raise ValueError("caps must be finite")
    if not math.isfinite(now):
        raise ValueError(f"now must be finite, got {now}")

    stale = np.isnan(measured)
    seen = ~stale
    # NaN compares False, so stale domains are neither over nor under.
    with np.errstate(invalid="ignore"):
        over = seen & (measured > caps * (1.0 + settings.tolerance))
        under = seen & (measured < caps * (1.0 - settings.hysteresis))

    over_since = np.where(over, np.where(np.isnan(state.over_since), now, state.over_since), np.nan)
    was = state.in_breach
    served = over & (now - over_since >= settings.grace_s)
    entered = ~was & served
    cleared = was & under
    breach_since = np.where(entered, now, np.where(cleared, np.nan, state.breach_since))
    in_breach = ~np.isnan(breach_since)

    overage = np.where(seen, np.clip(measured - caps, 0.0, None), np.nan)
    to_clear = np.where(
        in_breach, np.clip(measured - caps * (1.0 - settings.hysteresis), 0.0, None), 0.0
    )
    to_clear = np.where(in_breach & stale, np.nan, to_clear)
    events = TickEvents(
        entered=read_only(entered),
        cleared=read_only(cleared),
        stale=read_only(stale),
        pending=read_only(over & ~in_breach),
        overage_w=read_only(overage),
        to_clear_w=read_only(to_clear),
    )
    return BreachState(read_only(over_since), read_only(breach_since)), events


def resume(
    state: BreachState,
    since: FloatArray,
    measured: FloatArray,
    *,
    caps: FloatArray,
    settings: BreachSettings,
) -> tuple[BreachState, BoolArray]:
    """Carry on the breaches another tracker recorded (the process that led before):
    ``since[d]`` is when its breach of ``d`` began (NaN: none recorded). Call it before
    :func:`step` with the same ``measured`` and ``caps``.

    A domain with a recorded breach that is over the threshold now, or that this tracker
    has in breach too, is in breach since the earlier of the two starts, as if this
    tracker had watched it all along, so steps taken since then count as taken in this
    breach; :func:`step` then goes on from there. One with data that is neither is
    dropped: it may have cleared since, and a record of unknown age is no reason to act
    on a domain that is not over its cap. One without data (NaN) is left for later.
    Returns the state and which domains are settled (taken or dropped)."""
    since = np.asarray(since, dtype=np.float64)
    measured = np.asarray(measured, dtype=np.float64)
    if since.shape != (state.size,) or measured.shape != (state.size,):
        raise ValueError(f"expected ({state.size},) since and measured")
    recorded = ~np.isnan(since)
    seen = ~np.isnan(measured)
    with np.errstate(invalid="ignore"):
        over = seen & (measured > np.asarray(caps) * (1.0 + settings.tolerance))
    take = recorded & (over | (seen & state.in_breach))
    breach_since = np.where(take, np.fmin(state.breach_since, since), state.breach_since)
    return BreachState(state.over_since, read_only(breach_since)), recorded & seen


# ------------------------------------------------------------------ measurements → domains


def direct_watts(
    node_domain: NDArray[np.int64], node_watts: FloatArray, domains: int
) -> FloatArray:
    """Watts of the nodes attached directly to each domain, (domains,).

    A domain with no nodes draws 0; a domain with any node lacking data (NaN) is NaN.
    """
    node_domain = np.asarray(node_domain, dtype=np.int64)
    node_watts = np.asarray(node_watts, dtype=np.float64)
    out = np.zeros(domains, dtype=np.float64)
    np.add.at(out, node_domain, np.nan_to_num(node_watts, nan=0.0))
    missing = np.zeros(domains, dtype=bool)
    missing[node_domain[np.isnan(node_watts)]] = True
    out[missing] = np.nan
    return out


def roll_up(membership: BoolArray, direct: FloatArray) -> FloatArray:
    """Total watts of every domain: its own nodes plus everything below it.

    ``membership`` is :attr:`placement.tree.PowerTree.membership` (``[a, d]`` true when
    ``a`` is ``d`` or an ancestor). A NaN anywhere below a domain makes it NaN: a partial
    sum would read as a drop in power and could clear a breach that is still there.
    """
    direct = np.asarray(direct, dtype=np.float64)
    known = np.nan_to_num(direct, nan=0.0)
    total = membership.astype(np.float64) @ known
    total[(membership & np.isnan(direct)[None, :]).any(axis=1)] = np.nan
    return total


def measured_by_domain(
    membership: BoolArray, node_domain: NDArray[np.int64], node_watts: FloatArray
) -> FloatArray:
    """:func:`roll_up` of :func:`direct_watts`: per-node measurements to every domain."""
    return roll_up(membership, direct_watts(node_domain, node_watts, membership.shape[0]))


# ------------------------------------------------------------------ feedback to placement


def feedback_watts(
    parents: NDArray[np.int64],
    in_breach: BoolArray,
    measured: FloatArray,
    *,
    caps: FloatArray,
    predicted: FloatArray,
) -> FloatArray:
    """Extra watts to add per domain with ``Ledger.add_watts`` while domains are in breach.

    For an in-breach domain with data the ledger should carry at least
    ``max(measured − cap, measured − predicted)`` more in the current slot: the overage on
    top of the prediction, and at least enough that the ledger reads what was measured,
    so no replica with a non-zero profile fits there until the breach clears.
    ``predicted`` is the ledger's current-slot load per domain.

    ``add_watts(w, d)`` raises ``d`` and every ancestor, so amounts are placed bottom-up
    and a domain only gets what its breached descendants do not already give it: every
    domain is raised by exactly ``max(own need, Σ raises of its children)``. Domains not
    in breach or without data need nothing of their own. Parents must precede children
    (the order :class:`placement.tree.PowerTree` keeps); ``parents`` is its ``parents``.
    """
    measured = np.asarray(measured, dtype=np.float64)
    need = np.maximum(measured - caps, measured - np.asarray(predicted, dtype=np.float64))
    need = np.where(in_breach & ~np.isnan(measured), np.clip(need, 0.0, None), 0.0)
    raised = np.zeros_like(need)  # what each domain gets from itself and below
    add = np.zeros_like(need)
    for d in range(need.shape[0] - 1, -1, -1):  # children before parents
        add[d] = max(0.0, need[d] - raised[d])
        raised[d] += add[d]
        p = int(parents[d])
        if p >= 0:
            raised[p] += raised[d]
    return add


@dataclass(frozen=True)
class HeldFeedback:
    """The feedback of past breaches, per domain and slot of the period (D × T arrays,
    read-only), in :func:`feedback_watts`'s ``add`` form.

    A breach says the domain's pods draw more than predicted *at that time of day*; the
    overage is kept for its slot and ``hold_s`` seconds after it was last seen, so the
    replica the controller evicted is not replaced in the same domain as soon as the
    breach clears, only to breach again at the same time tomorrow. ``until`` is when
    each entry lapses.
    """

    adds: FloatArray
    until: FloatArray

    @staticmethod
    def empty(domains: int, slots: int) -> HeldFeedback:
        return HeldFeedback(
            read_only(np.zeros((domains, slots))), read_only(np.full((domains, slots), -np.inf))
        )

    def record(
        self, adds: FloatArray, seen: BoolArray, slot: int, *, now: float, hold_s: float
    ) -> HeldFeedback:
        """A copy where each domain in ``seen`` (in breach, with data) holds ``adds`` in
        ``slot`` until ``now + hold_s``; other entries unchanged."""
        if not seen.any():
            return self
        new_adds, new_until = self.adds.copy(), self.until.copy()
        new_adds[seen, slot] = np.clip(adds[seen], 0.0, None)
        new_until[seen, slot] = now + hold_s
        return HeldFeedback(read_only(new_adds), read_only(new_until))

    def active(self, now: float) -> FloatArray:
        """``adds`` where the entry has not lapsed at ``now`` (one recorded at ``now``
        counts, so a hold of zero keeps feedback exactly while the breach lasts)."""
        return np.where(self.until >= now, self.adds, 0.0)
