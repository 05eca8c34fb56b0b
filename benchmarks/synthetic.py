"""A deterministic, power-bound synthetic datacenter for planner benchmarks.

``synthetic_problem()`` builds the DESIGN quality-bar instance: one site, 9 rows,
~140 racks, 1,000 8×H100 servers (8 GPUs, 2,000 W idle each), 50 inference services
with diurnal per-replica profiles peaking at different hours of the day, and T = 144
slots of 10 minutes. It is power-bound: the services ask for more GPUs than the fleet
has, and the caps admit far fewer replicas at nameplate (8,200 W per 8-GPU replica
above idle) than there are GPUs, so the placement is decided by how well peaks are
interleaved. The same seed always gives the same problem.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from placement.fleet import Fleet
from placement.grid import Grid
from placement.problem import Problem
from placement.services import Services
from placement.tree import PowerTree

IDLE_W = 2000.0  # per 8-GPU node
NAMEPLATE_8GPU_W = 8200.0  # per 8-GPU replica, above idle
# Hours (UTC) where regional traffic peaks; batch work runs at night.
REGION_PEAKS_H = (3.0, 10.0, 14.0, 17.0, 20.0)
BATCH_PEAK_H = 2.0


def _bump(hours: NDArray[np.float64], centre: float, fwhm: float) -> NDArray[np.float64]:
    """A wrapped Gaussian bump over the day, 1 at ``centre``."""
    dist = np.abs(hours - centre) % 24.0
    dist = np.minimum(dist, 24.0 - dist)
    sigma = fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    return np.asarray(np.exp(-0.5 * (dist / sigma) ** 2))


def synthetic_problem(
    nodes: int = 1000,
    racks: int = 140,
    rows: int = 9,
    *,
    services: int = 50,
    seed: int = 0,
    demand_factor: float = 1.25,
) -> Problem:
    """The benchmark instance; see the module docstring.

    ``demand_factor`` is total GPUs asked for over GPUs in the fleet. Racks get
    ``nodes / racks`` servers each (7 or 8 for the defaults) and a cap of 2,700–3,300 W
    above idle per server, rows 92% of their racks' sum, the site 85% of its rows'.
    """
    if min(nodes, racks, rows) < 1 or racks > nodes or rows > racks:
        raise ValueError("need 1 <= rows <= racks <= nodes")
    rng = np.random.default_rng(seed)
    grid = Grid()
    slots = grid.slots
    hours = np.asarray((np.arange(slots) + 0.5) * grid.step_s / 3600.0, dtype=np.float64)

    # Fleet: contiguous blocks of nodes per rack, racks per row.
    node_rack = np.arange(nodes) * racks // nodes
    rack_row = np.arange(racks) * rows // racks
    per_rack = np.bincount(node_rack, minlength=racks).astype(np.float64)

    rack_caps = per_rack * (IDLE_W + rng.uniform(2700.0, 3300.0, racks))
    row_caps = 0.92 * np.bincount(rack_row, weights=rack_caps, minlength=rows)
    site_cap = 0.85 * row_caps.sum()

    names = ["site"] + [f"row-{r + 1}" for r in range(rows)]
    names += [f"rack-{rack_row[k] + 1}-{k + 1:03d}" for k in range(racks)]
    parents: list[str | None] = [None] + ["site"] * rows
    parents += [f"row-{rack_row[k] + 1}" for k in range(racks)]
    cap_values = np.concatenate([[site_cap], row_caps, rack_caps])
    caps = np.repeat(cap_values[:, None], slots, axis=1).round(0)
    tree = PowerTree.build(names, parents, caps)

    rack_index = np.array([tree.index[names[1 + rows + k]] for k in range(racks)])
    fleet = Fleet(
        names=tuple(f"gpu-{n + 1:04d}" for n in range(nodes)),
        domain=rack_index[node_rack].astype(np.int64),
        gpus=np.full(nodes, 8, dtype=np.int64),
        idle_watts=np.full(nodes, IDLE_W),
    )

    svc = _services(rng, services, gpus_total=8 * nodes, demand_factor=demand_factor, hours=hours)
    return Problem(
        name=f"synthetic-{nodes}n-{racks}r-{services}s-seed{seed}",
        grid=grid,
        tree=tree,
        fleet=fleet,
        services=svc,
    )


def site_problem(
    nodes: int = 10_240,
    racks: int = 1_280,
    rows: int = 64,
    *,
    halls: int = 4,
    services: int = 200,
    seed: int = 0,
    demand_factor: float = 1.25,
) -> Problem:
    """A site-scale instance with a hall level: site → ``halls`` → ``rows`` → ``racks``.

    The defaults are the DESIGN "raised" planner bar: 10,240 servers of 8 GPUs (81,920
    GPUs; 2 kW idle and 8.2 kW nameplate above idle each, 104 MW IT nameplate — a
    ~150 MW facility at a PUE of ~1.45), 1,280 racks of 8 servers, 64 rows, 4 halls,
    200 services, T = 144. Racks are capped at 2,700–3,300 W above idle per server
    (about half of nameplate), rows at 92% of their racks' sum, halls at 95% of their
    rows' and the site at 88% of its halls', so every level binds somewhere. Profiles
    and demand are drawn as in :func:`synthetic_problem` (GPUs asked for are
    ``demand_factor`` × the fleet's). Built with array operations only: a second or so.
    """
    if min(nodes, racks, rows, halls) < 1 or racks > nodes or rows > racks or halls > rows:
        raise ValueError("need 1 <= halls <= rows <= racks <= nodes")
    rng = np.random.default_rng(seed)
    grid = Grid()
    slots = grid.slots
    hours = np.asarray((np.arange(slots) + 0.5) * grid.step_s / 3600.0, dtype=np.float64)

    node_rack = np.arange(nodes) * racks // nodes
    rack_row = np.arange(racks) * rows // racks
    row_hall = np.arange(rows) * halls // rows
    per_rack = np.bincount(node_rack, minlength=racks).astype(np.float64)
    rack_caps = per_rack * (IDLE_W + rng.uniform(2700.0, 3300.0, racks))
    row_caps = 0.92 * np.bincount(rack_row, weights=rack_caps, minlength=rows)
    hall_caps = 0.95 * np.bincount(row_hall, weights=row_caps, minlength=halls)
    site_cap = 0.88 * hall_caps.sum()

    hall_names = [f"hall-{h + 1}" for h in range(halls)]
    row_names = [f"row-{row_hall[r] + 1}-{r + 1:02d}" for r in range(rows)]
    rack_names = [f"rack-{rack_row[k] + 1:02d}-{k + 1:04d}" for k in range(racks)]
    names = ["site", *hall_names, *row_names, *rack_names]
    parents: list[str | None] = [None, *(["site"] * halls)]
    parents += [hall_names[row_hall[r]] for r in range(rows)]
    parents += [row_names[rack_row[k]] for k in range(racks)]
    cap_values = np.concatenate([[site_cap], hall_caps, row_caps, rack_caps])
    caps = np.repeat(cap_values[:, None], slots, axis=1).round(0)
    tree = PowerTree.build(names, parents, caps)

    rack_index = np.array([tree.index[n] for n in rack_names], dtype=np.int64)
    fleet = Fleet(
        names=tuple(f"gpu-{n + 1:05d}" for n in range(nodes)),
        domain=rack_index[node_rack],
        gpus=np.full(nodes, 8, dtype=np.int64),
        idle_watts=np.full(nodes, IDLE_W),
    )
    svc = _services(rng, services, gpus_total=8 * nodes, demand_factor=demand_factor, hours=hours)
    return Problem(
        name=f"site-{nodes}n-{racks}r-{rows}w-{halls}h-{services}s-seed{seed}",
        grid=grid,
        tree=tree,
        fleet=fleet,
        services=svc,
    )


def _services(
    rng: np.random.Generator,
    services: int,
    *,
    gpus_total: int,
    demand_factor: float,
    hours: NDArray[np.float64],
) -> Services:
    """``services`` inference services with diurnal profiles on ``hours`` (one per
    slot) and demand of ``demand_factor`` × ``gpus_total`` GPUs in all."""
    slots = hours.size
    # Mostly whole-node replicas, a few with 1, 2 or 4 GPUs.
    gpus = rng.choice([1, 2, 4, 8], size=services, p=[0.06, 0.06, 0.08, 0.80]).astype(np.int64)
    batch = rng.random(services) < 0.2
    centre = np.where(
        batch,
        BATCH_PEAK_H + rng.uniform(-2.0, 2.0, services),
        rng.choice(REGION_PEAKS_H, size=services) + rng.uniform(-1.5, 1.5, services),
    )
    fwhm = np.where(batch, rng.uniform(3.0, 6.0, services), rng.uniform(5.0, 10.0, services))
    peak_8 = rng.uniform(3500.0, 4600.0, services)
    trough_8 = rng.uniform(700.0, 1500.0, services)
    profiles = np.empty((services, slots))
    for s in range(services):  # one draw per service, in order: the stream fixes the problem
        shape = _bump(hours, float(centre[s]), float(fwhm[s]))
        noise = 1.0 + 0.03 * rng.standard_normal(slots)  # measured p95s are not smooth
        full = np.clip((trough_8[s] + (peak_8[s] - trough_8[s]) * shape) * noise, 0, None)
        profiles[s] = (full * gpus[s] / 8.0).round(1)
    # Demand in replicas: a Dirichlet share of the total, scaled so that GPUs asked for
    # are ``demand_factor`` × the fleet's (small replicas do not get more replicas).
    share = rng.dirichlet(np.full(services, 2.0))
    replicas = demand_factor * gpus_total / float(share @ gpus)
    demand = np.maximum(1, np.round(share * replicas)).astype(np.int64)
    priority = np.where(batch, 0, rng.choice([100, 200], size=services, p=[0.7, 0.3]))
    return Services(
        names=tuple(
            f"{'batch' if batch[s] else 'chat'}-{s + 1:02d}-{gpus[s]}g" for s in range(services)
        ),
        demand=demand,
        gpus=gpus,
        priority=priority.astype(np.int64),
        nameplate=np.asarray(NAMEPLATE_8GPU_W * gpus / 8.0, dtype=np.float64),
        profiles=profiles,
    )
