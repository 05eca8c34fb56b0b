"""The load → power curve: calibration, shape and the parser's errors."""

from __future__ import annotations

import numpy as np
import pytest

from placement.powermodel import H100_LLAMA70B_TP4, PowerCurve, parse_curve

CURVE = H100_LLAMA70B_TP4


def test_calibration_points_reproduced() -> None:
    # Measured means per GPU (shared/data/README.md), rates per TP4 instance.
    measured = {0.0: 118.0, 0.125: 134.0, 0.5: 408.0, 2.0: 473.0}
    rates = np.array(list(measured))
    np.testing.assert_allclose(CURVE.gpu_watts(rates), list(measured.values()))
    assert CURVE.gpu_watts(np.array([100.0]))[0] == pytest.approx(495.0)  # saturates


def test_replica_watts_is_above_node_idle() -> None:
    # 8 GPUs minus their 70 W bare idle (already in the node idle), plus host dynamics.
    assert CURVE.gpus_per_replica == 8
    assert CURVE.capacity_rps == pytest.approx(4.0)
    assert CURVE.idle_watts == pytest.approx(8 * (118 - 70))
    at_capacity = CURVE.replica_watts(np.array([4.0]))[0]
    assert at_capacity == pytest.approx(8 * (473 - 70) + 600)
    assert CURVE.max_watts == pytest.approx(8 * (495 - 70) + 600)
    assert CURVE.replica_watts(np.array([1e6]))[0] == pytest.approx(CURVE.max_watts)
    # Far below the 8.2 kW nameplate above a 2 kW node idle.
    assert CURVE.max_watts < 0.5 * 8200


def test_monotone_and_vectorised() -> None:
    rates = np.linspace(0.0, 12.0, 600)
    watts = CURVE.replica_watts(rates)
    assert watts.shape == rates.shape
    assert (np.diff(watts) >= 0).all()
    grid = CURVE.replica_watts(rates.reshape(3, -1))
    np.testing.assert_array_equal(grid.ravel(), watts)


def test_replica_splits_load_between_instances() -> None:
    one = PowerCurve(CURVE.points, instances_per_replica=1, host_dynamic_watts=0.0)
    two = PowerCurve(CURVE.points, instances_per_replica=2, host_dynamic_watts=0.0)
    assert two.replica_watts(np.array([1.0]))[0] == pytest.approx(
        2 * one.replica_watts(np.array([0.5]))[0]
    )


def test_negative_rates_rejected() -> None:
    with pytest.raises(ValueError, match="finite and >= 0"):
        CURVE.replica_watts(np.array([1.0, -0.1]))


def test_parse_curve() -> None:
    assert parse_curve("0:118, 0.125:134,0.5:408,2:473,4:495") == (
        (0.0, 118.0),
        (0.125, 134.0),
        (0.5, 408.0),
        (2.0, 473.0),
        (4.0, 495.0),
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("0:118", "at least two points"),
        ("0:118,2", "point 2 '2' is not 'rate:watts'"),
        ("0:118,x:473", "not two numbers"),
        ("0:118,2:473:1", "is not 'rate:watts'"),
        ("0:118,2:473,1:480", "rates must increase strictly"),
        ("0:118,2:473,2:480", "rates must increase strictly"),
        ("0:-5,2:473", "negative watts"),
        ("0.5:118,2:473", "first point must be at 0 req/s"),
        ("0:118,2:473,4:300", "must not fall"),
        ("0:118,inf:473", "not finite"),
    ],
)
def test_parse_curve_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_curve(text)


def test_curve_below_bare_idle_rejected() -> None:
    with pytest.raises(ValueError, match="bare idle"):
        PowerCurve(((0.0, 50.0), (2.0, 400.0)))
