"""Power readings through a real Prometheus scraping the power simulator and powercap.

Two racks of two 8-GPU fake nodes running two services on a compressed clock (an hourly
slot every 6 s), with noise. Prometheus scrapes the simulator every second; the readings
of :class:`extender.controller.readings.PrometheusPowerSource` must equal, per node and per domain,
what the simulator served at the simulated instant Prometheus recorded (the noise is
seeded by that instant, so even noisy values are exact). Then a surge must show up; a
stopped exporter must make the readings missing (DCGM-style, unstamped samples: Prometheus
marks them stale at once) or stale once older than the limit (stamped samples) — never
zero, and every domain above them unknown. The same Prometheus scrapes ``powercap serve``
(scenario mode: no API server) and must hold its predicted headroom per domain.

A second, rogue simulator is scraped too, under another job: it reports the same nodes
drawing 50 kW more each. The source reads through ``power.selector: {job: powersim}``, so
the rogue changes none of the readings above (nor stands in for the real exporter once
that stops), while a source without a selector reads it.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest

from e2e.cluster import TEST_LOG_DIR, Process, free_ports
from e2e.powersim import (
    SIM_TIME_METRIC,
    PowerSimulator,
    SimClock,
    StaticPods,
    grid_profiles,
    midnight,
    pods_of,
    sim_nodes,
)
from e2e.prometheus import Prometheus, ScrapeJob, prometheus
from e2e.scenarios import racks_scenario, round_robin
from e2e.scheduler import ExtenderPorts, powercap_command, serve_address_args, wait_ready
from extender.cluster.state import ClusterState
from extender.config.power import PowerSourceSpec, resolve_power_source
from extender.controller.readings import (
    Freshness,
    PowerReadings,
    PrometheusPowerSource,
    domain_watts,
)
from placement.scenario.building import problem_from_spec
from placement.scenario.spec import spec_from_data

pytestmark = pytest.mark.e2e


GPU_IDLE_W = 40.0  # 8 × 40 W of each node's 500 W idle on its GPUs, 180 W elsewhere
STALENESS_S = 3
JOB = "powersim"
ROGUE_JOB = "rogue"
ROGUE_W = 50_000.0  # per node, on top of what the real simulator serves
SCENARIO = racks_scenario(
    "e2e-powersim",
    racks=2,
    nodes_per_rack=2,
    rack_cap_w=10000.0,
    services=[("chat-day", 6, "15:00"), ("batch-night", 4, "03:00")],
)


def poll(
    what: str, read: Callable[[], PowerReadings], done: Callable[[PowerReadings], bool]
) -> PowerReadings:
    deadline = time.monotonic() + 20.0
    while True:
        r = read()
        if done(r):
            return r
        if time.monotonic() > deadline:
            states = {n: (p.status.value, p.reason) for n, p in r.nodes.items()}
            raise AssertionError(f"timed out waiting for {what}: {r.error or states}")
        time.sleep(0.25)


@contextlib.contextmanager
def extender_on(scenario: Path, log: Path) -> Iterator[str]:
    """``powercap serve --scenario`` (a static cluster, no API server) on free loopback
    ports until the block ends; yields the ``host:port`` of its metrics to scrape."""
    ports = ExtenderPorts(*free_ports(2))
    argv = [*powercap_command(), "serve", "--scenario", str(scenario), "--no-planner"]
    with log.open("ab") as out:
        popen = subprocess.Popen(
            [*argv, *serve_address_args(ports)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    proc = Process("powercap", popen, log)
    try:
        wait_ready(proc, ports.metrics)
        yield f"127.0.0.1:{ports.metrics}"
    finally:
        proc.stop()


def sim_time_at(prom: Prometheus, at: float) -> float:
    # The real simulator's clock: the rogue serves one too.
    (series,) = prom.query(f'{SIM_TIME_METRIC}{{job="{JOB}"}}', at)
    return float(series["value"][1])


def test_readings_follow_the_simulator_through_prometheus(tmp_path: Path) -> None:
    problem = problem_from_spec(spec_from_data(SCENARIO))
    scenario = tmp_path / "scenario.json"
    scenario.write_bytes(orjson.dumps(SCENARIO))
    nodes = sim_nodes(problem)
    names = [n.name for n in nodes]
    pods = StaticPods(pods_of(problem, round_robin(problem)))
    clock = SimClock(start_s=midnight(time.time()) + 9 * 3600, speed=600.0)

    def model(timestamps: bool = False) -> PowerSimulator:
        return PowerSimulator(
            nodes,
            grid_profiles(problem),
            pods,
            clock=clock,
            gpu_idle_watts=GPU_IDLE_W,
            noise=0.05,
            seed=11,
            timestamps=timestamps,
        )

    sim = model()
    calm = model()  # the same model without surges: what the nodes would draw anyway
    rogue = model()  # another exporter of the same metric, for the same nodes
    rogue.surge(extra_watts=ROGUE_W, start_s=-math.inf)
    state = ClusterState(problem.grid, problem.tree)
    fleet = problem.fleet
    for n in range(fleet.size):
        state.upsert_node(
            names[n],
            int(fleet.domain[n]),
            int(fleet.gpus[n]),
            idle_watts=float(fleet.idle_watts[n]),
        )

    address = sim.start()
    rogue_address = rogue.start()
    try:
        with (
            extender_on(scenario, tmp_path / "powercap.log") as extender,
            prometheus(
                [
                    ScrapeJob(JOB, [address]),
                    ScrapeJob(ROGUE_JOB, [rogue_address]),
                    ScrapeJob("powercap", [extender]),
                ],
                TEST_LOG_DIR,
            ) as prom,
        ):
            section = {
                "url": prom.url,
                "nonGpuWatts": {"default": sim.non_gpu_watts(names[0])},
                "staleness": f"{STALENESS_S}s",
                "timeout": "2s",
            }
            spec = PowerSourceSpec.model_validate({**section, "selector": {"job": JOB}})
            settings, problems = resolve_power_source(spec)
            assert settings is not None, problems
            source = PrometheusPowerSource(settings)
            trusting_settings, _ = resolve_power_source(PowerSourceSpec.model_validate(section))
            assert trusting_settings is not None
            trusting = PrometheusPowerSource(trusting_settings)
            prom.wait_for_targets()

            # 0. Prometheus scrapes powercap's own metrics too: the predicted headroom of
            # every domain (caps minus the idle of the nodes beneath; no pods yet).
            headroom = {
                series["metric"]["domain"]: float(series["value"][1])
                for series in prom.query("powercap_domain_predicted_headroom_watts")
            }
            expected = (problem.effective_caps - problem.idle_by_domain[:, None]).min(axis=1)
            assert headroom == pytest.approx(dict(zip(problem.tree.names, expected, strict=True)))

            def read() -> PowerReadings:
                # Half a second back: every scrape stamped before then is stored.
                return source.read(names, at=time.time() - 0.5)

            def read_everything() -> PowerReadings:
                return trusting.read(names, at=time.time() - 0.5)

            # The rogue is in Prometheus: a source without a selector adds its watts.
            poll(
                "the rogue's watts without a selector",
                read_everything,
                lambda r: r.complete and bool((r.watts(names) > ROGUE_W).all()),
            )

            # 1. Exactly what was served, per node and per domain.
            first = poll("fresh readings", read, lambda r: r.complete)
            served = sim.snapshot(sim_time_at(prom, first.at))
            for name in names:
                assert first.nodes[name].watts == pytest.approx(served.node_watts[name], rel=1e-9)
                age = first.nodes[name].age_s
                assert age is not None and 0 <= age <= STALENESS_S
            by_domain = dict(zip(problem.tree.names, domain_watts(first, state), strict=True))
            assert by_domain == pytest.approx(served.domain_watts(nodes), rel=1e-9)
            # The clock is compressed: a later reading is in a later simulated hour.
            later = poll(
                "the next slot",
                read,
                lambda r: r.complete and sim_time_at(prom, r.at) >= served.sim_s + 3600,
            )
            now = sim.snapshot(sim_time_at(prom, later.at))
            assert later.watts(names) == pytest.approx([now.node_watts[n] for n in names])

            # 2. A surge on rack-1 shows up there and only there.
            surge = sim.surge(extra_watts=1000.0, domains=["rack-1"])

            def surged(r: PowerReadings) -> bool:
                return r.complete and sim_time_at(prom, r.at) >= surge.start_s

            during = poll("the surge", read, surged)
            t = sim_time_at(prom, during.at)
            with_surge, without = sim.snapshot(t), calm.snapshot(t)
            for node in nodes:
                rise = during.nodes[node.name].watts - without.node_watts[node.name]
                assert during.nodes[node.name].watts == pytest.approx(
                    with_surge.node_watts[node.name], rel=1e-9
                )
                assert rise == pytest.approx(1000.0 if "rack-1" in node.domains else 0.0, abs=1e-6)
            site = dict(zip(problem.tree.names, domain_watts(during, state), strict=True))["site"]
            assert site == pytest.approx(without.domain_watts(nodes)["site"] + 2000.0)
            sim.clear_surges()

            # 3. A dead exporter: Prometheus marks its series stale, the nodes go missing.
            sim.stop()
            prom.wait_for_targets(up=False, jobs=["powersim"])
            gone = poll(
                "every node missing",
                read,
                lambda r: all(p.status is Freshness.MISSING for p in r.nodes.values()),
            )
            assert np.isnan(gone.watts(names)).all()
            assert np.isnan(domain_watts(gone, state)).all()
            # Without the selector the rogue alone would pass for the dead exporter.
            assert (read_everything().watts(names) > ROGUE_W).all()

            # 4. An exporter that stamps its samples, on the same address: once it stops,
            # Prometheus keeps its last samples, which age past the limit and are stale.
            stamped = model(timestamps=True)
            stamped.start(port=int(address.rsplit(":", 1)[1]))
            try:
                back = poll("fresh readings again", read, lambda r: r.complete)
                served = stamped.snapshot(sim_time_at(prom, back.at))
                assert back.watts(names) == pytest.approx(
                    [served.node_watts[n] for n in names], rel=1e-9
                )
            finally:
                stamped.stop()
            stale = poll("stale readings", read, lambda r: not r.complete)
            # What Prometheus last stored, at the simulated instant stored with it.
            last = stamped.snapshot(sim_time_at(prom, stale.at))
            for name in names:
                reading = stale.nodes[name]
                assert reading.status is Freshness.STALE, reading
                assert math.isnan(reading.watts)
                assert reading.age_s is not None and reading.age_s > STALENESS_S
                assert reading.last_watts == pytest.approx(last.node_gpu_watts[name], rel=1e-9)
            assert np.isnan(domain_watts(stale, state)).all()
            source.close()
            trusting.close()
    finally:
        sim.stop()
        rogue.stop()


def test_a_short_lookback_forgets_a_stopped_exporter_within_it() -> None:
    """A replay's Prometheus looks back seconds, not 5 minutes (``lookback_s``): the last
    samples of an exporter that stamps them (no staleness markers) leave instant queries
    once that much older, so each query reads a few samples a series, not thousands."""
    problem = problem_from_spec(spec_from_data(SCENARIO))
    sim = PowerSimulator(
        sim_nodes(problem),
        grid_profiles(problem),
        StaticPods(pods_of(problem, round_robin(problem))),
        clock=SimClock(start_s=midnight(time.time()), speed=600.0),
        timestamps=True,
    )
    address = sim.start()
    try:
        with prometheus([ScrapeJob(JOB, [address], 0.2)], TEST_LOG_DIR, lookback_s=2.0) as prom:
            prom.wait_for_targets()
            assert len(prom.query(f'DCGM_FI_DEV_POWER_USAGE{{job="{JOB}"}}')) == 32
            sim.stop()
            stopped = time.time()
            prom.wait_for_targets(up=False, jobs=[JOB])
            # Still there within the lookback of the last scrape...
            assert prom.query(f'DCGM_FI_DEV_POWER_USAGE{{job="{JOB}"}}', at=stopped)
            # ...and gone once it has passed (the default would keep it 5 minutes).
            deadline = time.monotonic() + 20.0
            while prom.query(f'DCGM_FI_DEV_POWER_USAGE{{job="{JOB}"}}'):
                assert time.monotonic() < deadline, "the series outlived a 2 s lookback"
                time.sleep(0.2)
    finally:
        sim.stop()
