"""Carbon-aware cap schedules: a piecewise-linear policy from grid intensity to a cap fraction."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from numpy.typing import NDArray

from placement.carbon.emissions import root_name
from placement.problem import Problem


@dataclass(frozen=True)
class CapPolicy:
    """A piecewise-linear map from intensity (g/kWh) to a cap fraction, with a floor.

    Between points the fraction is interpolated; below the first point it is the first
    fraction, above the last the last; it never drops under ``floor``. Fractions lie in
    (0, 1] and never rise with intensity, so a dirtier grid never buys a higher cap and
    a carbon-aware cap never exceeds the cap it scales.
    """

    intensities: tuple[float, ...]
    fractions: tuple[float, ...]
    floor: float = 0.0

    def __post_init__(self) -> None:
        xs, ys = self.intensities, self.fractions
        if not xs or len(xs) != len(ys):
            raise ValueError("a cap policy needs one fraction per intensity, at least one point")
        if any(not math.isfinite(x) or x < 0 for x in xs):
            raise ValueError("policy intensities must be finite and non-negative (g/kWh)")
        if any(b <= a for a, b in pairwise(xs)):
            raise ValueError("policy intensities must be strictly increasing")
        if any(not (0.0 < y <= 1.0) for y in ys):
            raise ValueError("policy fractions must be in (0, 1]: a cap can only be lowered")
        if any(b > a for a, b in pairwise(ys)):
            raise ValueError(
                "policy fractions must not rise with intensity (a dirtier grid never "
                "earns a higher cap)"
            )
        if not (0.0 <= self.floor <= 1.0):
            raise ValueError("the policy floor must be in [0, 1]")

    @staticmethod
    def parse(text: str, floor: float = 0.0) -> CapPolicy:
        """``"200:1.0,400:0.8,600:0.6"`` — intensity:fraction pairs, in order."""
        xs: list[float] = []
        ys: list[float] = []
        for part in (p.strip() for p in text.split(",")):
            pieces = part.split(":")
            try:
                if len(pieces) != 2:
                    raise ValueError
                xs.append(float(pieces[0]))
                ys.append(float(pieces[1]))
            except ValueError:
                raise ValueError(
                    f"bad policy point {part!r}; write intensity:fraction pairs such as "
                    "'200:1.0,400:0.8,600:0.6'"
                ) from None
        return CapPolicy(tuple(xs), tuple(ys), floor)

    def fraction(self, intensity: float) -> float:
        """Cap fraction for one (live) intensity value."""
        return float(self.fractions_of(np.array([intensity], dtype=np.float64))[0])

    def fractions_of(self, intensity: NDArray[np.float64]) -> NDArray[np.float64]:
        """Cap fractions for an array of intensities (a forecast)."""
        values = np.interp(intensity, self.intensities, self.fractions)
        return np.maximum(values, self.floor)

    def describe(self) -> str:
        points = ",".join(
            f"{x:g}:{y:g}" for x, y in zip(self.intensities, self.fractions, strict=True)
        )
        return f"{points} floor {self.floor:g}"


# Full power on a clean grid (≤ 150 g/kWh: wind- or nuclear-heavy hours), 30% less on a
# coal-heavy one (≥ 450 g/kWh), linear between; the floor keeps any user policy from
# starving the site below half its cap.
DEFAULT_POLICY = CapPolicy((150.0, 450.0), (1.0, 0.7), floor=0.5)


def cap_schedule(
    problem: Problem,
    intensity: NDArray[np.float64],
    policies: Mapping[str, CapPolicy],
) -> NDArray[np.float64]:
    """(domains × T) caps: each named domain's cap times its policy's fraction in every
    slot; other domains keep theirs. ``intensity`` is the (T,) forecast on the grid."""
    tree = problem.tree
    values = np.asarray(intensity, dtype=np.float64)
    if values.shape != (problem.grid.slots,):
        raise ValueError(
            f"intensity has {values.size} values; the grid has {problem.grid.slots} slots"
        )
    unknown = [d for d in policies if d not in tree.index]
    if unknown:
        raise ValueError(tree.unknown_domain_message(unknown[0]))
    caps = np.array(tree.caps, dtype=np.float64)
    for name, policy in policies.items():
        d = tree.index[name]
        caps[d] = caps[d] * policy.fractions_of(values)
    return caps


def carbon_aware(
    problem: Problem,
    intensity: NDArray[np.float64],
    policy: CapPolicy = DEFAULT_POLICY,
    *,
    domains: Sequence[str] | None = None,
) -> Problem:
    """The problem with carbon-aware caps on ``domains`` (default: the root, the site).

    Only the named domains are scaled: the site's cap binds everything beneath it, and
    scaling racks too would cut the same watts twice.
    """
    names = list(domains) if domains is not None else [root_name(problem)]
    caps = cap_schedule(problem, intensity, dict.fromkeys(names, policy))
    return problem.with_caps(caps)


def carbon_aware_rows(
    problem: Problem,
    intensity: NDArray[np.float64],
    policy: CapPolicy = DEFAULT_POLICY,
    *,
    domains: Sequence[str] | None = None,
) -> Problem:
    """Like :func:`carbon_aware`, with a (domains × T) intensity: each named domain's
    cap follows its own row (the grid its site draws from, see
    :func:`domain_intensity`). ``domains`` defaults to the site."""
    tree = problem.tree
    rows = np.asarray(intensity, dtype=np.float64)
    if rows.shape != (tree.size, problem.grid.slots):
        raise ValueError(
            f"intensity is {rows.shape}; expected (domains, slots) = "
            f"({tree.size}, {problem.grid.slots})"
        )
    names = list(domains) if domains is not None else [root_name(problem)]
    unknown = [d for d in names if d not in tree.index]
    if unknown:
        raise ValueError(tree.unknown_domain_message(unknown[0]))
    caps = np.array(tree.caps, dtype=np.float64)
    for name in names:
        d = tree.index[name]
        caps[d] = caps[d] * policy.fractions_of(rows[d])
    return problem.with_caps(caps)
