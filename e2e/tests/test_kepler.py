"""Power readings through the ``kepler`` preset (Kepler 0.10's counters) and a real
Prometheus.

The power simulator serves Kepler 0.10's energy counters for two racks of two 8-GPU fake
nodes — ``kepler_node_gpu_joules_total`` per GPU and ``kepler_node_cpu_joules_total``
per RAPL zone, ``core`` among them though it is part of ``package`` — on a stopped clock,
without noise, so every node draws steady watts. Prometheus scrapes it every second; the
readings of :class:`extender.controller.readings.PrometheusPowerSource` (what the
controller acts on) must equal the simulated watts per node and per domain, GPUs plus
package plus DRAM, the core zone not counted twice. A surge on one rack must show up there
once the rate window has passed. A rogue exporter, scraped under another job, reports the
same nodes with other GPU and CPU watts: through ``power.selector: {job: kepler}`` it
changes none of the readings, while a source without a selector adds it in.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest

from e2e.cluster import TEST_LOG_DIR
from e2e.powersim import PowerSimulator, SimClock, StaticPods, grid_profiles, pods_of, sim_nodes
from e2e.prometheus import ScrapeJob, prometheus
from e2e.scenarios import racks_scenario, round_robin
from extender.cluster.state import ClusterState
from extender.config.power import PowerSourceSpec, resolve_power_source
from extender.controller.readings import PowerReadings, PrometheusPowerSource, domain_watts
from placement.scenario.building import problem_from_spec
from placement.scenario.spec import spec_from_data

pytestmark = pytest.mark.e2e

JOB = "kepler"
ROGUE_JOB = "rogue"
GPU_IDLE_W = 40.0  # the rest of each node's idle is drawn by its CPU package and DRAM
SURGE_W = 1000.0
RATE_WAIT_S = 100.0  # the presets' one-minute rate window, and then some
# rate() of a counter Prometheus stamps at its own scrape times, not the simulator's
# serving times: a few milliseconds of jitter over the one-minute window.
REL = 2e-3
SCENARIO = racks_scenario(
    "e2e-kepler",
    racks=2,
    nodes_per_rack=2,
    rack_cap_w=10000.0,
    services=[("chat-day", 6, "15:00"), ("batch-night", 4, "03:00")],
)


def poll(
    what: str,
    read: Callable[[], PowerReadings],
    done: Callable[[PowerReadings], bool],
    timeout_s: float = 30.0,
) -> PowerReadings:
    deadline = time.monotonic() + timeout_s
    while True:
        r = read()
        if done(r):
            return r
        if time.monotonic() > deadline:
            states = {n: (p.status.value, p.watts, p.reason) for n, p in r.nodes.items()}
            raise AssertionError(f"timed out waiting for {what}: {r.error or states}")
        time.sleep(0.5)


def test_the_kepler_preset_reads_gpu_and_cpu_watts_through_prometheus() -> None:
    problem = problem_from_spec(spec_from_data(SCENARIO))
    nodes = sim_nodes(problem)
    names = [n.name for n in nodes]
    pods = StaticPods(pods_of(problem, round_robin(problem)))
    # A stopped clock at 15:00 simulated: the day service at its peak, watts steady.
    clock = SimClock(start_s=15 * 3600.0, speed=0.0)
    sim = PowerSimulator(
        nodes,
        grid_profiles(problem),
        pods,
        clock=clock,
        gpu_idle_watts=GPU_IDLE_W,
        exporter="kepler",
    )
    rogue = PowerSimulator(
        nodes, grid_profiles(problem), pods, clock=clock, gpu_idle_watts=10.0, exporter="kepler"
    )
    rogue.surge(extra_watts=5000.0, start_s=-np.inf)
    state = ClusterState(problem.grid, problem.tree)
    fleet = problem.fleet
    for n in range(fleet.size):
        state.upsert_node(
            names[n],
            int(fleet.domain[n]),
            int(fleet.gpus[n]),
            idle_watts=float(fleet.idle_watts[n]),
        )
    expected = sim.snapshot()
    # the simulated nodes draw on their CPUs too, so the preset must read them
    assert all(sim.non_gpu_watts(n) > 0 for n in names)

    with (
        sim,
        rogue,
        prometheus(
            [ScrapeJob(JOB, [sim.start()]), ScrapeJob(ROGUE_JOB, [rogue.start()])], TEST_LOG_DIR
        ) as prom,
    ):
        section = {"url": prom.url, "preset": "kepler", "staleness": "5s", "timeout": "2s"}
        settings, problems = resolve_power_source(
            PowerSourceSpec.model_validate({**section, "selector": {"job": JOB}})
        )
        assert settings is not None, problems
        assert settings.node_label == "node_name"
        source = PrometheusPowerSource(settings)
        trusting_settings, _ = resolve_power_source(PowerSourceSpec.model_validate(section))
        assert trusting_settings is not None
        trusting = PrometheusPowerSource(trusting_settings)
        prom.wait_for_targets()

        def read() -> PowerReadings:
            return source.read(names, at=time.time() - 0.5)

        def steady(watts: dict[str, float]) -> Callable[[PowerReadings], bool]:
            def done(r: PowerReadings) -> bool:
                return r.complete and all(
                    r.nodes[n].watts == pytest.approx(watts[n], rel=REL) for n in names
                )

            return done

        # 1. Once the counters span the rate window (a minute), their rate is the
        # simulated watts (before that, rate() of a young series reads low).
        first = poll(
            "the simulated watts", read, steady(dict(expected.node_watts)), timeout_s=RATE_WAIT_S
        )
        for name in names:
            assert first.nodes[name].watts == pytest.approx(expected.node_watts[name], rel=REL)
        by_domain = dict(zip(problem.tree.names, domain_watts(first, state), strict=True))
        assert by_domain == pytest.approx(expected.domain_watts(nodes), rel=REL)
        # Adding every zone (core is inside package) would read more than the node draws.
        for name in names:
            assert first.nodes[name].watts < expected.node_watts[name] + 0.3 * sim.non_gpu_watts(
                name
            )

        # 2. The rogue job's series count only without the selector, in GPU and CPU alike.
        # (Polled as step 1 is: under load a scrape late by a second moves one rate()
        # read past the tolerance; a read that never settles still fails.)
        rogue_now = rogue.snapshot()
        both = {n: expected.node_watts[n] + rogue_now.node_watts[n] for n in names}
        everything = poll(
            "the rogue job's watts too",
            lambda: trusting.read(names, at=time.time() - 0.5),
            steady(both),
            timeout_s=RATE_WAIT_S,
        )
        for name in names:
            assert everything.nodes[name].watts == pytest.approx(
                expected.node_watts[name] + rogue_now.node_watts[name], rel=REL
            )

        # 3. A surge on rack-1 shows up there, and only there, after the rate window.
        sim.surge(extra_watts=SURGE_W, domains=["rack-1"])
        surged = sim.snapshot()
        rack_1 = {n.name for n in nodes if "rack-1" in n.domains}
        assert rack_1 and all(
            surged.node_watts[n] == pytest.approx(expected.node_watts[n] + SURGE_W) for n in rack_1
        )
        after = poll("the surge", read, steady(dict(surged.node_watts)), timeout_s=RATE_WAIT_S)
        for name in names:
            want = expected.node_watts[name] + (SURGE_W if name in rack_1 else 0.0)
            assert after.nodes[name].watts == pytest.approx(want, rel=REL)
