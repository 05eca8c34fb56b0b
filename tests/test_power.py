"""Power readings without a Prometheus: the ``power:`` config, query building, parsing of
Prometheus /api/v1/query answers (shaped as Prometheus 2.42 returns them), staleness,
NaN-not-zero, sums by domain — and the power simulator's model."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import orjson
import pytest
from pydantic import BaseModel, ValidationError

from e2e.cluster import free_ports
from e2e.powersim import (
    METRIC,
    BoundPod,
    GridProfile,
    PowerSimulator,
    SimClock,
    SimNode,
    StaticPods,
    bound_pod,
    grid_profiles,
    midnight,
    pods_of,
    replay_profiles,
    sim_nodes,
)
from extender.cluster.state import ClusterState
from extender.config.power import (
    PowerSettings,
    PowerSourceSpec,
    preset_queries,
    resolve_power_source,
    series_selector,
)
from extender.controller.readings import (
    Freshness,
    PowerQueryError,
    PrometheusPowerSource,
    domain_watts,
    leaf_watts,
    parse_vector,
    readings_from_vectors,
    rollup_watts,
)
from placement.assignment import Assignment
from placement.grid import Grid
from placement.tree import PowerTree
from placement.validation import validation_problems
from tests.scheduler_payloads import small_problem

NOW = 1_795_747_957.955

# --- recorded answers (the shape of Prometheus 2.42's /api/v1/query) ----------------------


def vector(rows: dict[str, str], label: str = "Hostname", at: float = NOW) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": {label: node}, "value": [at, v]} for node, v in rows.items()],
        },
    }


DCGM_VALUES = vector({"gpu-1": "1841.958041958042", "gpu-2": "1441.5"})
DCGM_STAMPS = vector({"gpu-1": "1795747957.92", "gpu-2": "1795747957.92"})
MATRIX = {
    "status": "success",
    "data": {
        "resultType": "matrix",
        "result": [
            {
                "metric": {"Hostname": "gpu-1", "__name__": METRIC, "gpu": "0"},
                "values": [[1795747955.92, "350"], [1795747956.92, "350"]],
            }
        ],
    },
}
SCALAR = {"status": "success", "data": {"resultType": "scalar", "result": [NOW, "1"]}}
BAD_QUERY = {
    "status": "error",
    "errorType": "bad_data",
    "error": 'invalid parameter "query": 1:5: parse error: unclosed left parenthesis',
}


def settings(**kw: Any) -> PowerSettings:
    base: dict[str, Any] = {
        "url": "http://127.0.0.1:1",
        "query": preset_queries("dcgm", "Hostname")[0],
        "timestamp_query": preset_queries("dcgm", "Hostname")[1],
        "node_label": "Hostname",
        "preset": "dcgm",
        "staleness_s": 10.0,
    }
    base.update(kw)
    return PowerSettings(**base)


# --- config --------------------------------------------------------------------------------


def test_dcgm_preset_is_the_default_and_sums_by_hostname() -> None:
    resolved, problems = resolve_power_source(PowerSourceSpec())
    assert problems == [] and resolved is not None
    assert resolved.query == "sum by (Hostname) (DCGM_FI_DEV_POWER_USAGE)"
    assert resolved.timestamp_query == "min by (Hostname) (timestamp(DCGM_FI_DEV_POWER_USAGE))"
    assert resolved.node_label == "Hostname"
    assert (resolved.staleness_s, resolved.timeout_s) == (60.0, 5.0)


def test_kepler_preset_adds_the_rates_of_the_gpu_and_cpu_energy_counters() -> None:
    resolved, problems = resolve_power_source(PowerSourceSpec.model_validate({"preset": "kepler"}))
    assert problems == [] and resolved is not None
    assert resolved.node_label == "node_name"
    cpu = 'kepler_node_cpu_joules_total{zone=~"package|dram"}'
    assert resolved.query == (
        "sum by (node_name) (rate(kepler_node_gpu_joules_total[1m])) "
        f"+ sum by (node_name) (rate({cpu}[1m]))"
    )
    assert resolved.timestamp_query == (
        f"min by (node_name) (timestamp(kepler_node_gpu_joules_total) or timestamp({cpu}))"
    )


def test_kepler_09_preset_takes_the_rate_of_the_platform_energy_counter() -> None:
    spec = PowerSourceSpec.model_validate(
        {"preset": "kepler-0.9", "nodeLabel": "exported_instance"}
    )
    resolved, problems = resolve_power_source(spec)
    assert problems == [] and resolved is not None
    assert resolved.query == (
        "sum by (exported_instance) (rate(kepler_node_platform_joules_total[1m]))"
    )
    assert resolved.timestamp_query == (
        "min by (exported_instance) (timestamp(kepler_node_platform_joules_total))"
    )
    bare, _ = resolve_power_source(PowerSourceSpec.model_validate({"preset": "kepler-0.9"}))
    assert bare is not None and bare.node_label == "instance"


def test_a_selector_limits_the_dcgm_queries_to_the_trusted_exporter() -> None:
    spec = PowerSourceSpec.model_validate(
        {"selector": {"job": "dcgm-exporter", "namespace": "gpu-operator"}}
    )
    resolved, problems = resolve_power_source(spec)
    assert problems == [] and resolved is not None
    series = 'DCGM_FI_DEV_POWER_USAGE{job="dcgm-exporter",namespace="gpu-operator"}'
    assert resolved.query == f"sum by (Hostname) ({series})"
    assert resolved.timestamp_query == f"min by (Hostname) (timestamp({series}))"
    assert resolved.selector == 'job="dcgm-exporter",namespace="gpu-operator"'
    # Values are quoted for PromQL, whatever they hold.
    spec = PowerSourceSpec.model_validate({"selector": {"job": 'a"b\\c'}})
    resolved, problems = resolve_power_source(spec)
    assert resolved is not None
    assert resolved.query == 'sum by (Hostname) (DCGM_FI_DEV_POWER_USAGE{job="a\\"b\\\\c"})'


def test_a_matcher_string_selector_limits_the_kepler_queries() -> None:
    selector = '{job="kepler", namespace=~"kepler|monitoring",}'
    matchers = 'job="kepler",namespace=~"kepler|monitoring"'
    resolved, problems = resolve_power_source(
        PowerSourceSpec.model_validate({"preset": "kepler", "selector": selector})
    )
    assert problems == [] and resolved is not None
    # both counters carry the selector; the CPU one its zones too
    gpu = f"kepler_node_gpu_joules_total{{{matchers}}}"
    cpu = f'kepler_node_cpu_joules_total{{{matchers},zone=~"package|dram"}}'
    assert resolved.query == (
        f"sum by (node_name) (rate({gpu}[1m])) + sum by (node_name) (rate({cpu}[1m]))"
    )
    assert resolved.timestamp_query == (
        f"min by (node_name) (timestamp({gpu}) or timestamp({cpu}))"
    )
    resolved, problems = resolve_power_source(
        PowerSourceSpec.model_validate({"preset": "kepler-0.9", "selector": selector})
    )
    assert problems == [] and resolved is not None
    series = f"kepler_node_platform_joules_total{{{matchers}}}"
    assert resolved.query == f"sum by (instance) (rate({series}[1m]))"
    assert resolved.timestamp_query == f"min by (instance) (timestamp({series}))"
    # The braces are optional; escapes PromQL accepts are kept as written.
    assert series_selector('job!~"dcgm\\\\.old"') == 'job!~"dcgm\\\\.old"'


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ({}, "an empty selector selects every series"),
        ("", "an empty selector selects every series"),
        ("{}", "an empty selector selects every series"),
        ({"job-name": "x"}, "'job-name' is not a Prometheus label name"),
        ('__name__="DCGM_FI_DEV_GPU_TEMP"', "the metric name is the preset's"),
        ("job=dcgm", "expected a label matcher"),
        ('job="a" namespace="b"', "expected a comma between matchers"),
        ('job="a\\q"', "has an escape PromQL does not accept"),
    ],
)
def test_selector_problems_name_the_field(selector: Any, message: str) -> None:
    resolved, problems = resolve_power_source(
        PowerSourceSpec.model_validate({"selector": selector})
    )
    assert resolved is None
    (problem,) = problems
    assert problem.startswith("power.selector: ") and message in problem, problem


def test_a_custom_query_carries_its_own_selector() -> None:
    spec = PowerSourceSpec.model_validate(
        {
            "preset": "custom",
            "query": "sum by (node) (w)",
            "nodeLabel": "node",
            "selector": {"a": "b"},
        }
    )
    resolved, problems = resolve_power_source(spec)
    assert resolved is None
    assert problems == ["power.selector: preset custom takes its selector inside power.query"]


def test_custom_query_node_label_and_non_gpu_watts() -> None:
    spec = PowerSourceSpec.model_validate(
        {
            "url": "http://prom:9090/",
            "preset": "custom",
            "query": 'sum by (node) (my_power_watts{site="a"})',
            "nodeLabel": "node",
            "nonGpuWatts": {"default": 1200, "nodes": {"gpu-9": 1500}},
            "staleness": "2m",
            "timeout": 3,
        }
    )
    resolved, problems = resolve_power_source(spec)
    assert problems == [] and resolved is not None
    assert resolved.url == "http://prom:9090"
    assert resolved.timestamp_query is None  # ages unknown: Prometheus's staleness decides
    assert (resolved.staleness_s, resolved.timeout_s) == (120.0, 3.0)
    assert resolved.non_gpu_watts("gpu-1") == 1200 and resolved.non_gpu_watts("gpu-9") == 1500


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"preset": "custom"}, ["power.query: preset custom needs", "power.nodeLabel: preset"]),
        ({"query": "up"}, ["power.query: preset dcgm builds its own PromQL"]),
        ({"nodeLabel": "host-name"}, ["power.nodeLabel: 'host-name' is not a Prometheus label"]),
        ({"staleness": "soon"}, ["power.staleness: expected a duration"]),
        (
            {"preset": "kepler-0.9", "nonGpuWatts": {"default": 800}},
            ["power.nonGpuWatts: the kepler-0.9 preset reads whole-platform power"],
        ),
    ],
)
def test_config_problems_name_their_path(data: dict[str, Any], expected: list[str]) -> None:
    resolved, problems = resolve_power_source(PowerSourceSpec.model_validate(data))
    assert resolved is None
    assert len(problems) == len(expected)
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(start), problem


def test_schema_errors_carry_the_power_path() -> None:
    class Doc(BaseModel):  # how the PowercapConfig embeds the section
        power: PowerSourceSpec

    with pytest.raises(ValidationError) as err:
        Doc.model_validate(
            {"power": {"url": "prom:9090", "preset": "dcgmx", "nonGpuWatts": {"nodes": {"a": -1}}}}
        )
    problems = validation_problems(err.value, reference="config/powercap.yaml")
    assert [p.split(":")[0] for p in problems] == [
        "power.url",
        "power.preset",
        "power.nonGpuWatts.nodes",
    ]


# --- parsing and judging ---------------------------------------------------------------------


def test_parse_vector_reads_values_by_node_label() -> None:
    values, problems = parse_vector(DCGM_VALUES["data"]["result"], "Hostname")
    assert values == {"gpu-1": pytest.approx(1841.958041958042), "gpu-2": 1441.5}
    assert problems == []


def test_parse_vector_flags_unlabelled_and_duplicate_series() -> None:
    result = [
        {"metric": {"Hostname": "gpu-1", "gpu": "0"}, "value": [NOW, "300"]},
        {"metric": {"Hostname": "gpu-1", "gpu": "1"}, "value": [NOW, "310"]},
        {"metric": {"instance": "x"}, "value": [NOW, "5"]},
    ]
    values, problems = parse_vector(result, "Hostname")
    assert math.isnan(values["gpu-1"])  # two answers for one node: neither is trusted
    assert any("several series; aggregate by (Hostname)" in p for p in problems)
    assert any("without the 'Hostname' label" in p for p in problems)


@pytest.mark.parametrize("answer", [MATRIX, SCALAR])
def test_parse_vector_rejects_what_is_not_an_instant_vector(answer: dict[str, Any]) -> None:
    with pytest.raises(PowerQueryError, match="instant vector"):
        parse_vector(answer["data"]["result"], "Hostname")


def judge(values: dict[str, float], stamps: dict[str, float] | None, **kw: Any) -> Any:
    return readings_from_vectors(
        values, stamps, ["gpu-1", "gpu-2", "gpu-3"], settings=settings(**kw), at=NOW
    )


def test_fresh_readings_add_non_gpu_watts() -> None:
    r = judge(
        {"gpu-1": 1800.0, "gpu-2": 900.0, "gpu-3": 0.0},
        {"gpu-1": NOW - 1, "gpu-2": NOW - 2, "gpu-3": NOW - 3},
        non_gpu_default_w=1000.0,
        non_gpu_node_w={"gpu-2": 500.0},
    )
    assert r.complete
    assert r.watts(["gpu-1", "gpu-2", "gpu-3"]).tolist() == [2800.0, 1400.0, 1000.0]
    assert r.nodes["gpu-2"].age_s == pytest.approx(2.0)


def test_old_samples_are_stale_and_absent_nodes_missing_never_zero() -> None:
    r = judge({"gpu-1": 1800.0, "gpu-2": 900.0}, {"gpu-1": NOW - 1, "gpu-2": NOW - 11})
    assert r.nodes["gpu-1"].status is Freshness.FRESH
    stale, missing = r.nodes["gpu-2"], r.nodes["gpu-3"]
    assert stale.status is Freshness.STALE and "11s old (limit 10s)" in stale.reason
    assert math.isnan(stale.watts) and stale.last_watts == 900.0
    assert missing.status is Freshness.MISSING and "Hostname='gpu-3'" in missing.reason
    watts = r.watts(["gpu-1", "gpu-2", "gpu-3", "never-heard-of"])
    assert watts[0] == 1800.0 and np.isnan(watts[1:]).all()
    assert not r.complete and {n.node for n in r.not_fresh} == {"gpu-2", "gpu-3"}


def test_a_value_without_a_current_sample_is_stale() -> None:
    # A rate() over a window still answers after the exporter died; timestamp() does not.
    r = judge({"gpu-1": 1800.0, "gpu-2": 900.0, "gpu-3": 1.0}, {"gpu-1": NOW})
    assert r.nodes["gpu-2"].status is Freshness.STALE
    assert "no current sample" in r.nodes["gpu-2"].reason


def test_nan_and_negative_values_are_missing() -> None:
    r = judge({"gpu-1": math.nan, "gpu-2": -5.0, "gpu-3": 10.0}, None)
    assert r.nodes["gpu-1"].status is Freshness.MISSING
    assert r.nodes["gpu-2"].status is Freshness.MISSING
    # Without a timestamp query an age is unknown and not held against the node.
    assert r.nodes["gpu-3"].status is Freshness.FRESH and r.nodes["gpu-3"].age_s is None


def test_series_of_unexpected_nodes_are_reported() -> None:
    r = judge({"gpu-1": 1.0, "dcgm-exporter-x7k2p": 5.0}, None)
    assert r.unknown == ("dcgm-exporter-x7k2p",)


# --- the source, against a canned Prometheus -----------------------------------------------


class CannedPrometheus:
    """Answers /api/v1/query from a {query: (status, body)} table; records requests."""

    def __init__(self, answers: dict[str, tuple[int, dict[str, Any]]]) -> None:
        self.answers = answers
        self.requests: list[dict[str, list[str]]] = []
        canned = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                params = parse_qs(url.query)
                canned.requests.append(params)
                status, body = canned.answers.get(params["query"][0], (200, vector({})))
                data = orjson.dumps(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def canned() -> Iterator[CannedPrometheus]:
    s = settings()
    server = CannedPrometheus(
        {s.query: (200, DCGM_VALUES), str(s.timestamp_query): (200, DCGM_STAMPS)}
    )
    yield server
    server.close()


def test_source_queries_both_at_one_instant_through_the_client(canned: CannedPrometheus) -> None:
    source = PrometheusPowerSource(settings(url=canned.url, non_gpu_default_w=100.0))
    r = source.read(["gpu-1", "gpu-2", "gpu-3"], at=NOW)
    source.close()
    assert r.error is None
    assert r.nodes["gpu-1"].watts == pytest.approx(1941.958041958042)
    assert r.nodes["gpu-1"].age_s == pytest.approx(NOW - 1795747957.92)
    assert r.nodes["gpu-3"].status is Freshness.MISSING
    assert [q["query"][0] for q in canned.requests] == [
        "sum by (Hostname) (DCGM_FI_DEV_POWER_USAGE)",
        "min by (Hostname) (timestamp(DCGM_FI_DEV_POWER_USAGE))",
    ]
    assert {q["time"][0] for q in canned.requests} == {f"{NOW:.3f}"}


def test_a_query_error_makes_every_node_missing(canned: CannedPrometheus) -> None:
    s = settings(url=canned.url, preset="custom", query="sum(", timestamp_query=None)
    canned.answers["sum("] = (400, BAD_QUERY)
    r = PrometheusPowerSource(s).read(["gpu-1", "gpu-2"], at=NOW)
    assert r.error is not None and "400" in r.error and "unclosed left parenthesis" in r.error
    assert all(n.status is Freshness.MISSING for n in r.nodes.values())
    assert np.isnan(r.watts(["gpu-1", "gpu-2"])).all()


def test_a_matrix_answer_is_an_error_not_a_reading(canned: CannedPrometheus) -> None:
    s = settings(url=canned.url, preset="custom", query="x[1m]", timestamp_query=None)
    canned.answers["x[1m]"] = (200, MATRIX)
    r = PrometheusPowerSource(s).read(["gpu-1"], at=NOW)
    assert r.error is not None and "instant vector" in r.error


def test_an_unreachable_prometheus_makes_every_node_missing() -> None:
    (port,) = free_ports(1)
    r = PrometheusPowerSource(settings(url=f"http://127.0.0.1:{port}", timeout_s=2.0)).read(
        ["gpu-1"]
    )
    assert r.error is not None and "failed" in r.error
    assert r.nodes["gpu-1"].status is Freshness.MISSING and math.isnan(r.nodes["gpu-1"].watts)


# --- sums by domain ----------------------------------------------------------------------------


def test_leaf_sums_are_nan_when_any_node_is_unknown() -> None:
    # domains: 0 site, 1 row, 2 rack-a, 3 rack-b, 4 rack-empty
    direct = leaf_watts(np.array([100.0, 200.0, np.nan, 50.0, 7.0]), np.array([2, 2, 3, 3, -1]), 5)
    assert direct[2] == 300.0 and np.isnan(direct[3]) and direct[4] == 0.0
    assert direct[0] == direct[1] == 0.0  # inner domains hold no nodes directly
    with pytest.raises(ValueError, match="readings for"):
        leaf_watts(np.zeros(2), np.zeros(3, dtype=np.int64), 5)


def test_rollup_spreads_nan_up_the_tree_only() -> None:
    tree = PowerTree.build(
        ["site", "row-1", "row-2", "rack-a", "rack-b", "rack-c"],
        [None, "site", "site", "row-1", "row-1", "row-2"],
        np.full((6, 4), 1e6),
    )
    direct = np.zeros(tree.size)
    direct[tree.index["rack-a"]] = 300.0
    direct[tree.index["rack-b"]] = np.nan
    direct[tree.index["rack-c"]] = 40.0
    total = dict(zip(tree.names, rollup_watts(tree.membership, direct), strict=True))
    assert total["rack-a"] == 300.0 and total["rack-c"] == 40.0 and total["row-2"] == 40.0
    assert np.isnan(total["rack-b"]) and np.isnan(total["row-1"]) and np.isnan(total["site"])
    direct[tree.index["rack-b"]] = 60.0
    total = dict(zip(tree.names, rollup_watts(tree.membership, direct), strict=True))
    assert total["site"] == 400.0 and total["row-1"] == 360.0


def test_domain_watts_follows_the_mirrors_node_map() -> None:
    problem = small_problem()
    state = ClusterState(problem.grid, problem.tree)
    fleet = problem.fleet
    for n in range(fleet.size):
        state.upsert_node(fleet.names[n], int(fleet.domain[n]), int(fleet.gpus[n]))
    values = {name: 1000.0 + i for i, name in enumerate(fleet.names)}
    stamps = dict.fromkeys(fleet.names, NOW)
    r = readings_from_vectors(values, stamps, fleet.names, settings=settings(), at=NOW)
    got = domain_watts(r, state)
    leaf = np.zeros(problem.tree.size)
    np.add.at(leaf, fleet.domain, [values[n] for n in fleet.names])
    np.testing.assert_allclose(got, problem.tree.membership.astype(float) @ leaf)
    del values[fleet.names[0]]
    r = readings_from_vectors(values, stamps, fleet.names, settings=settings(), at=NOW)
    got = domain_watts(r, state)
    hit = problem.tree.ancestors(int(fleet.domain[0]))
    assert np.isnan(got[hit]).all()
    assert np.isfinite(np.delete(got, hit)).all()


# --- the simulator's model ---------------------------------------------------------------------


def simulator(**kw: Any) -> tuple[PowerSimulator, StaticPods]:
    grid = Grid()
    nodes = [
        SimNode("n1", 4, 800.0, ("rack-a", "site")),
        SimNode("n2", 2, 400.0, ("rack-b", "site")),
    ]
    profile = GridProfile(grid, np.arange(grid.slots, dtype=np.float64) * 10.0)
    pods = StaticPods(
        [
            BoundPod("default", "chat-0", "n1", "chat", gpus=2),
            BoundPod("default", "chat-1", "n1", "chat", gpus=1),
            BoundPod("default", "chat-2", "n2", "chat", gpus=2),
            BoundPod("default", "other-0", "n2", "unknown-service", gpus=0),
        ]
    )
    clock = SimClock(start_s=6 * 600.0, speed=0.0)  # slot 6: 60 W per replica
    return PowerSimulator(nodes, {"chat": profile}, pods, clock=clock, **kw), pods


def test_pods_draw_their_profile_slot_spread_over_their_gpus() -> None:
    sim, _ = simulator(gpu_idle_watts=150.0)
    snap = sim.snapshot()
    n1 = [s.watts for s in snap.gpus if s.node == "n1"]
    assert n1 == [180.0, 180.0, 210.0, 150.0]  # 60 W over 2 GPUs, 60 W on 1, one idle
    assert sim.non_gpu_watts("n1") == 200.0
    assert snap.node_gpu_watts["n1"] == 720.0 and snap.node_watts["n1"] == 920.0  # idle + 2×60
    assert snap.node_watts["n2"] == 460.0
    assert snap.unprofiled == ("unknown-service",)
    assert snap.domain_watts(list(sim.nodes.values())) == {
        "rack-a": 920.0,
        "rack-b": 460.0,
        "site": 1380.0,
    }


def test_compressed_clock_moves_through_the_slots() -> None:
    wall = [1000.0]
    clock = SimClock(start_s=0.0, speed=600.0, wall=lambda: wall[0])
    assert clock.now() == 0.0
    wall[0] += 2.5
    assert clock.now() == 1500.0 and Grid().slot_of(clock.now()) == 2


def test_surges_hit_their_nodes_and_domains_in_their_window() -> None:
    sim, _ = simulator()
    sim.surge(factor=2.0, domains=["rack-a"])
    sim.surge(extra_watts=100.0, nodes=["n2"], start_s=0.0, until_s=10.0)  # over already
    snap = sim.snapshot()
    assert snap.node_watts["n1"] == 800.0 + 2 * 120.0 and snap.node_watts["n2"] == 460.0
    sim.surge(extra_watts=100.0, nodes=["n2"])
    assert sim.snapshot().node_watts["n2"] == 560.0
    sim.clear_surges()
    assert sim.snapshot().node_watts["n1"] == 920.0


def test_noise_is_seeded_and_multiplicative() -> None:
    a, _ = simulator(noise=0.05, seed=7)
    b, _ = simulator(noise=0.05, seed=7)
    c, _ = simulator(noise=0.05, seed=8)
    snap = a.snapshot()
    assert snap.node_watts == b.snapshot().node_watts
    assert snap.node_watts != c.snapshot().node_watts
    above_idle = snap.node_watts["n1"] - 800.0
    assert above_idle != 120.0 and abs(above_idle - 120.0) < 120.0 * 0.05 * 8


def test_replay_series_start_at_midnight_of_day_zero_and_repeat() -> None:
    day = midnight(1_795_747_957.0)
    series = replay_profiles({"step_s": 600, "watts": {"chat": [1.0, 2.0, 3.0]}}, day)["chat"]
    assert series.watts_at(day) == 1.0 and series.watts_at(day + 1199) == 2.0
    assert series.watts_at(day + 1800) == 1.0  # past the end: from the start again
    with pytest.raises(ValueError, match=r"step_s.*greater than 0"):
        replay_profiles({"step_s": 0, "watts": {"chat": [1.0]}}, day)
    with pytest.raises(ValueError, match=r"watts: Value error, chat: value 1 is -2\.0"):
        replay_profiles({"step_s": 600, "watts": {"chat": [1.0, -2.0]}}, day)


def test_exposition_has_the_dcgm_labels() -> None:
    sim, _ = simulator()
    text = sim.render(sim.snapshot()).decode()
    assert f"# TYPE {METRIC} gauge" in text
    held = next(line for line in text.splitlines() if 'pod="chat-0"' in line)
    for label in ("gpu=", "UUID=", "modelName=", 'Hostname="n1"', "namespace=", "container="):
        assert label in held
    idle = next(line for line in text.splitlines() if 'Hostname="n1"' in line and 'gpu="3"' in line)
    assert "pod=" not in idle and idle.endswith(" 200.0")


def test_scenario_helpers_build_pods_and_profiles() -> None:
    problem = small_problem()
    counts = np.zeros((problem.services.size, problem.fleet.size), dtype=np.int64)
    counts[0, 0] = 2
    pods = pods_of(problem, Assignment(counts))
    assert [p.node for p in pods] == [problem.fleet.names[0]] * 2
    assert len({p.name for p in pods}) == 2
    nodes = sim_nodes(problem)
    assert nodes[0].domains[0] == problem.tree.names[int(problem.fleet.domain[0])]
    assert nodes[0].domains[-1] == problem.tree.names[0]
    assert set(grid_profiles(problem)) == set(problem.services.names)


def test_pod_watch_events_keep_the_bound_pods() -> None:
    def raw(phase: str = "Running", node: str | None = "n1") -> dict[str, Any]:
        gpus = {"nvidia.com/gpu": "2"}
        return {
            "metadata": {
                "name": "chat-7d9f-abcde",
                "namespace": "llm",
                "labels": {"powercap.io/service": "chat"},
            },
            "spec": {
                "nodeName": node,
                "containers": [{"name": "vllm", "resources": {"requests": gpus, "limits": gpus}}],
            },
            "status": {"phase": phase},
        }

    pods = StaticPods()
    pods.apply("ADDED", raw(node=None))
    assert pods.bound_pods() == []  # pending: no node, no power
    pods.apply("MODIFIED", raw())
    assert pods.bound_pods() == [BoundPod("llm", "chat-7d9f-abcde", "n1", "chat", 2, "vllm")]
    pods.apply("MODIFIED", raw(phase="Succeeded"))
    assert pods.bound_pods() == []
    pods.apply("MODIFIED", raw())
    pods.apply("DELETED", raw())
    assert pods.bound_pods() == []
    assert bound_pod({"metadata": {"name": "x"}, "spec": {"nodeName": "n1"}}) is None
