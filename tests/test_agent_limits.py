"""The agent's pure decision (extender/agent/limits.py) and the NodePowerLimit model."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extender.agent.limits import (
    Constraints,
    clamp,
    requested_watts,
    target,
    unmatched,
    watts_to_mw,
    withdrawn,
)
from extender.agent.resource import GpuLimit, NodePowerLimitSpec, RequestError, parse


@st.composite
def constraints(draw: st.DrawFn) -> Constraints:
    low = draw(st.integers(1_000, 500_000))
    high = draw(st.integers(low, 1_000_000))
    default = draw(st.integers(low, high))
    return Constraints(low, high, default)


@given(constraints(), st.integers(1, 2_000_000))
def test_target_is_within_the_constraints(c: Constraints, asked: int) -> None:
    t = target(asked, c)
    assert c.min_mw <= t.mw <= c.max_mw
    assert t.requested_mw == asked
    # inside the range the request is taken as it is; outside it is the nearest bound
    assert t.clamped == (not c.min_mw <= asked <= c.max_mw)
    if not t.clamped:
        assert t.mw == asked
    else:
        assert t.mw == (c.min_mw if asked < c.min_mw else c.max_mw)


@given(constraints())
def test_no_request_means_the_default(c: Constraints) -> None:
    t = target(None, c)
    assert (t.mw, t.requested_mw, t.clamped) == (c.default_mw, None, False)


@given(constraints(), st.integers(1, 2_000_000))
def test_clamp_is_idempotent(c: Constraints, asked: int) -> None:
    assert clamp(clamp(asked, c), c) == clamp(asked, c)


def test_watts_to_milliwatts_rounds() -> None:
    assert watts_to_mw(250) == 250_000
    assert watts_to_mw(0.0004) == 0
    assert watts_to_mw(312.5) == 312_500


def test_per_gpu_entries_win_uuid_first() -> None:
    spec = NodePowerLimitSpec(
        watts_per_gpu=300,
        gpus=[GpuLimit(index=1, watts=250), GpuLimit(uuid="GPU-b", watts=200)],
    )
    assert requested_watts(spec, 0, "GPU-a") == 300  # wattsPerGpu
    assert requested_watts(spec, 1, "GPU-x") == 250  # by index
    assert requested_watts(spec, 1, "GPU-b") == 200  # the UUID wins over the index
    assert requested_watts(None, 0, "GPU-a") is None
    only_entries = NodePowerLimitSpec(gpus=[GpuLimit(index=0, watts=250)])
    assert requested_watts(only_entries, 1, "GPU-x") is None  # not named: default


def test_withdrawn() -> None:
    assert withdrawn(None)
    assert withdrawn(NodePowerLimitSpec())
    assert not withdrawn(NodePowerLimitSpec(watts_per_gpu=100))
    assert not withdrawn(NodePowerLimitSpec(gpus=[GpuLimit(index=0, watts=1)]))


def test_entries_naming_no_gpu_are_listed() -> None:
    spec = NodePowerLimitSpec(gpus=[GpuLimit(index=7, watts=1), GpuLimit(uuid="GPU-z", watts=1)])
    assert unmatched(spec, {0: "GPU-a"}) == [
        "spec.gpus[0] (index 7)",
        "spec.gpus[1] (uuid GPU-z)",
    ]
    assert unmatched(spec, {7: "GPU-z"}) == []


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"wattsPerGpu": 0}, "spec.wattsPerGpu"),
        ({"gpus": [{"watts": 100}]}, "spec.gpus.0"),
        ({"gpus": [{"index": 0, "uuid": "GPU-a", "watts": 100}]}, "spec.gpus.0"),
        ({"gpus": [{"index": 0, "watts": -1}]}, "spec.gpus.0.watts"),
        ({"watsPerGpu": 100}, "spec.watsPerGpu"),
    ],
)
def test_a_bad_request_names_the_field(spec: dict[str, object], field: str) -> None:
    obj = {"metadata": {"name": "gpu-node-1"}, "spec": spec}
    with pytest.raises(RequestError) as info:
        parse(obj)
    assert field in str(info.value)
    assert "gpu-node-1" in str(info.value)
