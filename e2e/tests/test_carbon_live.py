"""Live carbon-aware caps on a real cluster: a dirtier grid lowers a domain's cap, the
controller sheds load there and the extender stops admitting into it.

A local fake of the UK Carbon Intensity API (the recorded shapes of
``tests/fixtures/intensity/ukci_*.json``, with the time of now and a value the test sets)
is the ``intensity:`` source of ``powercap serve --controller=track`` and of ``powercap
controller``, each under its own ServiceAccount as shipped (both move their caps with the
grid: the extender's for admission, the controller's for acting). ``intensity.domains``
names rack 1, so rack 1's cap follows the grid while rack 2's does not. Two racks of two
8-GPU fake nodes,
each capped at 6 kW; one ``batch`` service of four 1-GPU replicas at a constant 800 W.
Rack 2 starts cordoned, so all four land in rack 1 (4.2 kW with idle), then it is opened.
The power simulator, fed from the API server's pods and scraped by a real Prometheus, is
the controller's measured power. Then:

1. At 100 g/kWh rack 1's cap is its configured 6 kW (``powercap_domain_cap_ratio`` 1).
2. The fake source rises to 450 g/kWh: the policy ``150:1.0,450:0.5`` halves rack 1's cap,
   which ``/metrics`` shows (3 kW, fraction 0.5) within a few polls.
3. The extender admits less there: a filter call for one more replica fails rack 1's
   nodes with a message naming rack 1 and its 3 kW cap, and passes rack 2's.
4. The controller acts against the lower cap: rack 1 (4.2 kW measured) is in breach, the
   controller evicts (``PowerCapEvict`` Events, the actions counter), and the Deployment's
   replacements are bound in rack 2 — never in rack 1 — until rack 1 reads under 3 kW.
5. Emissions are counted for rack 1 at the configured EUA price.
6. The grid cleans up (100 g/kWh): rack 1's cap is back at 6 kW.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

from e2e.cluster import TEST_LOG_DIR, cluster
from e2e.controlled import evict_events, fast_controller, k8s_apis, pod_feed, pods, samples
from e2e.deploy import (
    GPU,
    NAMESPACE,
    SERVICE_LABEL,
    api_client,
    create_nodes,
    deployment_object,
    powercap_config,
    wait_for,
)
from e2e.powersim import PowerSimulator, SimClock, StaticPods, grid_profiles, sim_nodes
from e2e.prometheus import ScrapeJob, prometheus
from e2e.rbac import NAMESPACE as LEASE_NAMESPACE
from e2e.scenarios import batch_scenario
from e2e.scheduler import start_controller, start_extender, start_scheduler
from placement.scenario.building import problem_from_spec
from placement.scenario.spec import spec_from_data

pytestmark = [pytest.mark.e2e, pytest.mark.controller]

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "intensity"

RACK_CAP_W = 6000.0
REPLICA_W = 800.0
IDLE_W = 500.0
REPLICAS = 4
CLEAN_G, DIRTY_G = 100.0, 450.0
POLICY = "150:1.0,450:0.5"  # 450 g/kWh and above: half the cap
LOWERED_W = RACK_CAP_W * 0.5
EUA_EUR_PER_T = 80.0
RACK_1 = ("gpu-a1", "gpu-a2")
RACK_2 = ("gpu-b1", "gpu-b2")

SCENARIO = batch_scenario(
    "e2e-carbon-live",
    racks={"rack-1": RACK_1, "rack-2": RACK_2},
    rack_cap_w=RACK_CAP_W,
    site_cap_w=4 * RACK_CAP_W,
    replicas=REPLICAS,
    replica_w=REPLICA_W,
    idle_w=IDLE_W,
)


# ---------------------------------------------------------------- the fake source


def _half_hour(now: float) -> datetime:
    return datetime.fromtimestamp(now - now % 1800, UTC)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%MZ")


class FakeUkci:
    """The Carbon Intensity API's ``/intensity`` and ``/intensity/{from}/fw24h`` in their
    recorded shapes, every entry rewritten to the current half hour on and ``g_per_kwh``."""

    def __init__(self) -> None:
        self.g_per_kwh = CLEAN_G
        self._latest = json.loads((FIXTURES / "ukci_intensity.json").read_text())
        self._ahead = json.loads((FIXTURES / "ukci_fw24h.json").read_text())
        self.requests = 0

    def body(self, path: str) -> bytes:
        now = time.time()
        start = _half_hour(now).timestamp()
        if path == "/intensity":
            (entry,) = self._latest["data"]
            entries = [entry]
        elif path.startswith("/intensity/") and path.endswith("/fw24h"):
            template = self._ahead["data"][1]  # a future entry: actual is null
            entries = [template] * 48
        else:
            raise KeyError(path)
        data = []
        for k, entry in enumerate(entries):
            moment = datetime.fromtimestamp(start + 1800 * k, UTC)
            until = datetime.fromtimestamp(start + 1800 * (k + 1), UTC)
            intensity = dict(entry["intensity"])
            intensity["forecast"] = self.g_per_kwh
            if intensity.get("actual") is not None:
                intensity["actual"] = self.g_per_kwh
            data.append({**entry, "from": _iso(moment), "to": _iso(until), "intensity": intensity})
        return json.dumps({"data": data}).encode()


@contextmanager
def fake_ukci() -> Iterator[tuple[FakeUkci, str]]:
    fake = FakeUkci()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fake.requests += 1
            try:
                payload = fake.body(self.path.split("?", 1)[0])
            except KeyError:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="fake-ukci", daemon=True)
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------- helpers


def metric(port: int, name: str, **labels: str) -> float:
    return samples(port).get((name, tuple(sorted(labels.items()))), float("nan"))


def rack_1_cap(port: int) -> tuple[float, float]:
    """Rack 1's (cap watts, cap ratio) on ``/metrics``."""
    return (
        metric(port, "powercap_domain_cap_watts", domain="rack-1"),
        metric(port, "powercap_domain_cap_ratio", domain="rack-1"),
    )


def filter_one_more(port: int, nodes: Sequence[str]) -> dict[str, Any]:
    """The extender's filter answer (its verbs on ``port``) for one more ``batch``
    replica over ``nodes``."""
    gpus = {GPU: "1"}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "batch-probe",
            "namespace": NAMESPACE,
            "uid": "uid-batch-probe",
            "labels": {SERVICE_LABEL: "batch"},
        },
        "spec": {
            "schedulerName": "powercap-scheduler",
            "containers": [
                {"name": "server", "image": "x", "resources": {"requests": gpus, "limits": gpus}}
            ],
        },
    }
    body = orjson.dumps({"Pod": pod, "NodeNames": list(nodes)})
    request = urllib.request.Request(f"http://127.0.0.1:{port}/filter", data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=5) as r:
        answer: dict[str, Any] = orjson.loads(r.read())
    return answer


def test_a_dirtier_grid_lowers_the_cap_the_controller_sheds_and_filter_admits_less() -> None:
    problem = problem_from_spec(spec_from_data(SCENARIO))
    with cluster(TEST_LOG_DIR, prefix="powercap-carbon") as c, fake_ukci() as (grid, grid_url):
        client = api_client(c.kubeconfig)
        core, apps = k8s_apis(client)[:2]
        create_nodes(client, problem)
        for name in RACK_2:
            core.patch_node(name, {"spec": {"unschedulable": True}})
        sim_pods = StaticPods()
        sim = PowerSimulator(
            sim_nodes(problem),
            grid_profiles(problem),
            sim_pods,
            clock=SimClock(start_s=time.time()),
        )
        address = sim.start()
        try:
            with (
                pod_feed(core, sim_pods),
                prometheus([ScrapeJob("powersim", [address])], TEST_LOG_DIR) as prom,
            ):
                prom.wait_for_targets()
                config = powercap_config(problem)
                config["planner"]["enabled"] = False  # scoring and caps alone decide
                lease = {
                    "namespace": LEASE_NAMESPACE,
                    "duration": "3s",
                    "renewDeadline": "2s",
                    "retryPeriod": "1s",
                }
                config |= fast_controller(prom.url, sim.non_gpu_watts(RACK_1[0]), 2, lease=lease)
                config["intensity"] = {
                    "kind": "ukci",
                    "url": grid_url,
                    "timeout": "1s",
                    "retries": 0,
                    "staleness": "1h",
                    "fallbackCapFraction": 0.8,
                    "period": "1s",
                    "policy": POLICY,
                    "floor": 0.5,
                    "domains": ["rack-1"],
                    "euaPrice": EUA_EUR_PER_T,
                }
                path = c.run_dir / "powercap.json"
                path.write_bytes(orjson.dumps(config))
                extender, ports = start_extender(c, path)
                scheduler = start_scheduler(c, ports.verbs)
                port = ports.metrics  # what /metrics shows
                controller, metrics = start_controller(c, path)  # the controller's /metrics

                def logs() -> str:
                    return (
                        f"\n--- powercap serve (tail) ---\n{extender.tail(40)}"
                        f"\n--- powercap controller (tail) ---\n{controller.tail(25)}"
                        f"\n--- kube-scheduler (tail) ---\n{scheduler.tail(15)}"
                    )

                # 1. A clean grid: rack 1 at its configured cap; every replica in rack 1.
                wait_for(
                    "rack 1 at its configured cap",
                    lambda: rack_1_cap(port) == (RACK_CAP_W, 1.0),
                    30.0,
                    every_s=0.25,
                )
                assert (
                    metric(port, "powercap_carbon_intensity_grams_per_kwh", source="ukci")
                    == CLEAN_G
                ), logs()
                apps.create_namespaced_deployment(NAMESPACE, deployment_object(problem, 0))

                def all_bound() -> bool:
                    return sum(1 for p in pods(core) if p["spec"].get("nodeName")) == REPLICAS

                wait_for("every replica bound in rack 1", all_bound, 60.0)
                before = {p["metadata"]["name"]: p["spec"]["nodeName"] for p in pods(core)}
                assert set(before.values()) <= set(RACK_1), before
                for name in RACK_2:
                    core.patch_node(name, {"spec": {"unschedulable": False}})
                calm = 2 * IDLE_W + REPLICAS * REPLICA_W

                def reads_calm() -> bool:
                    m = samples(metrics)
                    return (
                        m.get(("powercap_controller_leader", ())) == 1.0
                        and m.get(("powercap_domain_measured_watts", (("domain", "rack-1"),)))
                        == calm
                    )

                wait_for(f"the leader to read {calm:.0f} W in rack 1", reads_calm, 30.0)
                assert metric(metrics, "powercap_domain_in_breach", domain="rack-1") == 0.0

                # 2. The grid gets dirtier: rack 1's cap halves; rack 2's does not move.
                grid.g_per_kwh = DIRTY_G
                try:
                    wait_for(
                        "rack 1's cap lowered on /metrics",
                        lambda: rack_1_cap(port) == (LOWERED_W, 0.5),
                        15.0,
                        every_s=0.25,
                    )
                except TimeoutError as exc:
                    raise AssertionError(f"{exc}; now {rack_1_cap(port)}{logs()}") from exc
                assert metric(port, "powercap_domain_cap_watts", domain="rack-2") == RACK_CAP_W

                # 3. Filter admits no more into rack 1, naming the domain and its cap
                # (asked about rack 1 alone: reasons come when no node passes).
                answer = filter_one_more(ports.verbs, RACK_1)
                assert answer.get("NodeNames") == [], answer
                failed = answer.get("FailedNodes") or {}
                assert set(failed) >= set(RACK_1), answer
                for node in RACK_1:
                    message = failed[node]
                    assert "rack-1" in message and f"cap {LOWERED_W:.0f} W" in message, message
                    assert "lowered from 6000 W by the live carbon caps" in message, message
                answer = filter_one_more(ports.verbs, [*RACK_1, *RACK_2])
                assert set(answer.get("NodeNames") or []) == set(RACK_2), answer

                # 4. The controller sheds rack 1 to its lowered cap; replacements go to rack 2.
                seen_breach = False

                def shed() -> bool:
                    nonlocal seen_breach
                    breach = metric(metrics, "powercap_domain_in_breach", domain="rack-1")
                    watts = metric(metrics, "powercap_domain_measured_watts", domain="rack-1")
                    seen_breach = seen_breach or breach == 1.0
                    return seen_breach and breach == 0.0 and watts < LOWERED_W

                try:
                    wait_for(
                        "rack 1 in breach, then under its lowered cap", shed, 40.0, every_s=0.25
                    )
                except TimeoutError as exc:
                    raise AssertionError(f"{exc}{logs()}") from exc
                evicted = {e["involvedObject"]["name"] for e in evict_events(core)}
                assert evicted and evicted <= set(before), evicted
                assert all("rack-1" in e["message"] for e in evict_events(core)), evict_events(core)
                acted = metric(
                    metrics,
                    "powercap_controller_actions_total",
                    kind="evict",
                    domain="rack-1",
                    dry_run="false",
                )
                assert acted == len(evicted), logs()

                def replaced() -> bool:
                    fresh = [p for p in pods(core) if p["metadata"]["name"] not in before]
                    return len(fresh) >= len(evicted) and all(
                        p["spec"].get("nodeName") for p in fresh
                    )

                wait_for("the replacements bound", replaced, 30.0)
                fresh = [p for p in pods(core) if p["metadata"]["name"] not in before]
                assert {p["spec"]["nodeName"] for p in fresh} <= set(RACK_2), fresh

                # 5. Emissions counted and priced for rack 1.
                grams = metric(port, "powercap_emissions_grams_total", domain="rack-1")
                eur = metric(port, "powercap_emissions_cost_eur_total", domain="rack-1")
                # A scrape may fall between the two increments of one poll: a second of difference.
                assert grams > 0 and eur == pytest.approx(grams / 1e6 * EUA_EUR_PER_T, rel=0.1)

                # 6. A clean grid again: the cap comes back.
                grid.g_per_kwh = CLEAN_G
                try:
                    wait_for(
                        "rack 1's cap restored",
                        lambda: rack_1_cap(port) == (RACK_CAP_W, 1.0),
                        15.0,
                        every_s=0.25,
                    )
                except TimeoutError as exc:
                    raise AssertionError(f"{exc}; now {rack_1_cap(port)}{logs()}") from exc
                assert (
                    metric(port, "powercap_carbon_source_status", source="ukci", status="live")
                    == 1.0
                )
        finally:
            sim.stop()
