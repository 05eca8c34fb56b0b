"""The pure decision of the agent: what limit each GPU gets.

A request in watts becomes a target in NVML's milliwatts, clamped to the GPU's
``[min, max]`` (NVML refuses anything outside with INVALID_ARGUMENT; it never clamps);
a GPU with no request — the request withdrawn, or naming other GPUs only — gets its
default limit back. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass

from extender.agent.resource import NodePowerLimitSpec


@dataclass(frozen=True)
class Constraints:
    """A GPU's power-limit constraints, milliwatts."""

    min_mw: int
    max_mw: int
    default_mw: int


@dataclass(frozen=True)
class Target:
    """The limit a GPU is to have: ``mw``; ``requested_mw`` is ``None`` when it is the
    default because nothing was asked; ``clamped`` when the request lay outside the
    constraints."""

    mw: int
    requested_mw: int | None
    clamped: bool


def watts_to_mw(watts: float) -> int:
    return round(watts * 1000)


def clamp(requested_mw: int, c: Constraints) -> int:
    """``requested_mw`` within ``[min, max]``."""
    return max(c.min_mw, min(c.max_mw, requested_mw))


def target(requested_mw: int | None, c: Constraints) -> Target:
    """The limit for one GPU: the request clamped, or the default when there is none."""
    if requested_mw is None:
        return Target(c.default_mw, None, clamped=False)
    mw = clamp(requested_mw, c)
    return Target(mw, requested_mw, clamped=mw != requested_mw)


def requested_watts(spec: NodePowerLimitSpec | None, index: int, uuid: str) -> float | None:
    """What ``spec`` asks of GPU ``index``/``uuid`` in watts: a per-GPU entry naming it
    (by UUID first, then index), else ``wattsPerGpu``, else ``None`` (nothing asked)."""
    if spec is None:
        return None
    for entry in spec.gpus:
        if entry.uuid is not None and entry.uuid == uuid:
            return entry.watts
    for entry in spec.gpus:
        if entry.index is not None and entry.index == index:
            return entry.watts
    return spec.watts_per_gpu


def withdrawn(spec: NodePowerLimitSpec | None) -> bool:
    """Whether ``spec`` asks nothing (no object, or neither field set)."""
    return spec is None or (spec.watts_per_gpu is None and not spec.gpus)


def unmatched(spec: NodePowerLimitSpec, gpus: dict[int, str]) -> list[str]:
    """The per-GPU entries of ``spec`` that name no GPU of ``gpus`` (index → UUID), as
    ``gpus[i]`` strings for a status message."""
    uuids = set(gpus.values())
    out = []
    for i, entry in enumerate(spec.gpus):
        if entry.uuid is not None and entry.uuid not in uuids:
            out.append(f"spec.gpus[{i}] (uuid {entry.uuid})")
        elif entry.index is not None and entry.index not in gpus:
            out.append(f"spec.gpus[{i}] (index {entry.index})")
    return out
