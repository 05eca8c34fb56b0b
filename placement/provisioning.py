"""Provisioning services at a GPU power limit: the clipped problem and the throughput it
keeps.

A :class:`~placement.throughput.Provisioning` holds, per service, the power limit the
scenario sets (``own``, NaN where none), the one in force (``applied``; 1.0 is uncapped),
the GPU's default limit, the throughput curve, the tokens/s of one replica at the default
limit (NaN: relative units) and the measured profile and nameplate before any clipping, so
a problem can be re-provisioned at another limit (:func:`at_limit`) or uncapped
(:func:`uncapped`) without going back to the file. The clipping model is
:func:`placement.throughput.capped_profile`.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from numpy.typing import NDArray

from placement.problem import Problem
from placement.throughput import (
    DEFAULT_CURVE,
    H100_DEFAULT_WATTS,
    Provisioning,
    capped_profile,
    parse_limit,
)


def plain(problem: Problem) -> Provisioning:
    """The provisioning of a problem built without one: uncapped H100s, default curve."""
    svc = problem.services
    n = svc.size
    return Provisioning(
        own=np.full(n, np.nan),
        applied=np.ones(n),
        gpu_watts=np.full(n, H100_DEFAULT_WATTS),
        curves=(DEFAULT_CURVE,) * n,
        tokens_per_s=np.full(n, np.nan),
        base_profiles=svc.profiles,
        base_nameplate=svc.nameplate,
    )


def provisioning_of(problem: Problem) -> Provisioning:
    return problem.provisioning if problem.provisioning is not None else plain(problem)


def provision(problem: Problem, prov: Provisioning) -> Problem:
    """``problem`` with every service's profile and nameplate clipped at ``prov.applied``
    (from the unclipped ones ``prov`` keeps). Raises ``ValueError`` naming the service
    when a limit is below its curve's floor."""
    svc = problem.services
    profiles = np.array(prov.base_profiles, dtype=np.float64)
    nameplate = np.array(prov.base_nameplate, dtype=np.float64)
    for s in range(svc.size):
        f = float(prov.applied[s])
        curve = prov.curves[s]
        if f < curve.floor - 1e-9:
            raise ValueError(
                f"services[{s}] ({svc.names[s]}): power limit {f:.3g} is below its throughput "
                f"curve's floor {curve.floor:.3g}; raise the limit or extend throughputCurve"
            )
        if f < 1.0:
            profiles[s], nameplate[s] = capped_profile(
                prov.base_profiles[s],
                float(prov.base_nameplate[s]),
                gpus=int(svc.gpus[s]),
                fraction=f,
                gpu_watts=float(prov.gpu_watts[s]),
            )
    services = replace(svc, profiles=profiles, nameplate=nameplate)
    return replace(problem, services=services, provisioning=prov)


def at_limit(problem: Problem, limit: float | str | None) -> Problem:
    """``problem`` with ``limit`` (a fraction, or ``"560W"`` per GPU) applied to every
    service that sets none of its own; services with their own keep it. ``None`` keeps
    the scenario's limits as they are."""
    prov = provisioning_of(problem)
    applied = np.array(prov.own, dtype=np.float64)
    for s in range(applied.size):
        if np.isnan(applied[s]):
            applied[s] = (
                1.0
                if limit is None
                else parse_limit(limit, float(prov.gpu_watts[s]), where="--power-limit")
            )
    return provision(problem, replace(prov, applied=applied))


def uncapped(problem: Problem) -> Problem:
    """``problem`` with no service at a power limit (the measured profiles)."""
    prov = provisioning_of(problem)
    return provision(problem, replace(prov, applied=np.ones(prov.applied.size)))


def limited(problem: Problem) -> bool:
    """Whether any service of ``problem`` runs below its default limit."""
    return problem.provisioning is not None and bool(np.any(problem.provisioning.applied < 1.0))


def throughput_hosted(problem: Problem, hosted: NDArray[np.int64]) -> float:
    """Σ_s hosted[s] × one replica's throughput at its limit (tokens/s, or relative)."""
    return float(np.dot(hosted, provisioning_of(problem).replica_throughput()))


def limits_by_service(problem: Problem) -> dict[str, float]:
    """The services of ``problem`` below their default limit, with the fraction applied."""
    prov = provisioning_of(problem)
    names = problem.services.names
    return {names[s]: float(prov.applied[s]) for s in range(len(names)) if prov.applied[s] < 1.0}


def throughput_unit(problem: Problem) -> str:
    """``tokens/s`` when every service gives ``tokensPerSecond``, else ``replicas``
    (relative units: an uncapped replica counts 1)."""
    return "tokens/s" if provisioning_of(problem).in_tokens else "replicas"
