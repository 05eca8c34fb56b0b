"""The monitoring manifests against a real Prometheus scraping a real ``powercap serve`` and
``powercap controller``, laid out as shipped (two processes, two ServiceAccounts, two jobs).

A rack-pair KWOK cluster with pods bound by the test, the power simulator, a data
Prometheus (the controller's ``power.url``) and a monitoring Prometheus scraping the
extender as the job ``powercap-scheduler`` and the controller as ``powercap-controller``
and running the rules of ``manifests/monitoring/prometheusrule.yaml``
(``PowercapPowerDataStale`` shortened to 2 s).
With the data Prometheus down during a surge, the controller takes no action and the
stale-data alert fires; with it back, the controller evicts; then every rule evaluates and
every dashboard query and alert operand returns series.

The setup and each step in full: docs/deploy.md, "How the monitoring is tested".
"""

from __future__ import annotations

import json
import re
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from e2e.agents import simulated_agents
from e2e.cluster import TEST_LOG_DIR, cluster, free_ports
from e2e.controlled import (
    create_bare_pods,
    evict_events,
    fast_controller,
    k8s_apis,
    pod_feed,
    samples,
)
from e2e.deploy import (
    NAMESPACE,
    api_client,
    create_nodes,
    powercap_config,
    wait_for,
)
from e2e.powersim import PowerSimulator, SimClock, StaticPods, grid_profiles, sim_nodes
from e2e.prometheus import Prometheus, ScrapeJob, prometheus
from e2e.rbac import CONTROLLER_ACCOUNT, kubectl, mint_token
from e2e.rbac import NAMESPACE as LEASE_NAMESPACE
from e2e.scenarios import batch_scenario
from e2e.scheduler import start_controller, start_extender, start_scheduler
from placement.scenario.building import problem_from_spec
from placement.scenario.spec import spec_from_data

pytestmark = [pytest.mark.e2e, pytest.mark.controller]

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "manifests" / "monitoring" / "prometheusrule.yaml"
DASHBOARD = REPO / "manifests" / "monitoring" / "grafana-dashboard.json"
KUBE_SCHEDULER_METRICS = (
    REPO / "manifests" / "monitoring" / "kube-scheduler" / "kube-scheduler-metrics.yaml"
)
# The Services' names: the job labels the ServiceMonitor gives.
JOB = "powercap-scheduler"
CONTROLLER_JOB = "powercap-controller"
KUBE_SCHEDULER_JOB = "powercap-kube-scheduler"
PROMETHEUS_ACCOUNT = "prometheus"
STALE_ALERT = "PowercapPowerDataStale"
STALE_FOR = "2s"  # the manifest says 5m
RACK_CAP_W = 4000.0
IDLE_W = 500.0
REPLICA_W = 500.0
PODS = 4
SURGE_W = 4000.0
# Grafana's variables, as the dashboard would fill them for one domain.
# $job as Grafana fills it with "All" selected: a regex of every job it found.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$domain": "rack-1",
    "$job": f"{JOB}|{CONTROLLER_JOB}|{KUBE_SCHEDULER_JOB}",
}

SCENARIO = batch_scenario(
    "e2e-observability",
    racks={"rack-1": ["gpu-a1"], "rack-2": ["gpu-b1"]},
    rack_cap_w=RACK_CAP_W,
    site_cap_w=2 * RACK_CAP_W,
    replicas=PODS,
    replica_w=REPLICA_W,
    idle_w=IDLE_W,
)


def rules_for_test() -> list[dict[str, Any]]:
    """The PrometheusRule's groups, with the stale-data alert's ``for`` shortened."""
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["spec"]["groups"]
    found = 0
    for group in groups:
        for rule in group["rules"]:
            if rule.get("alert") == STALE_ALERT:
                rule["for"] = STALE_FOR
                found += 1
    assert found == 1, f"{STALE_ALERT} is not in {RULES.name} exactly once"
    return groups


def alert_exprs() -> dict[str, str]:
    return {
        r["alert"]: r["expr"]
        for g in yaml.safe_load(RULES.read_text())["spec"]["groups"]
        for r in g["rules"]
        if "alert" in r
    }


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    out: list[str] = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = str(target["expr"])
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"a Grafana variable the test does not fill: {expr}"
            out.append(expr)
    assert out
    return out


_THRESHOLD = re.compile(r"^(?P<operand>.*\S)\s*(==|!=|>=|<=|>|<)\s*-?[0-9.]+(e[+-]?[0-9]+)?$")
_ABSENT = re.compile(r"^absent\((?P<inner>.*)\)$", re.S)


def operand(expr: str) -> str:
    """An alert expression without its final threshold comparison (the value it
    compares); for ``absent(x)``, the operand of ``x``."""
    expr = " ".join(expr.split())
    inner = _ABSENT.match(expr)
    if inner:
        expr = inner.group("inner")
    match = _THRESHOLD.match(expr)
    assert match, f"no threshold comparison at the end of {expr!r}"
    return match.group("operand")


def actions(port: int) -> float:
    """Every step the controller on ``port`` has counted (taken or failed)."""
    return sum(
        v
        for (name, _), v in samples(port).items()
        if name
        in ("powercap_controller_actions_total", "powercap_controller_action_failures_total")
    )


def metric(port: int, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return samples(port).get(key, float("nan"))


def pod_names(core: Any) -> set[str]:
    listed = orjson.loads(core.list_namespaced_pod(NAMESPACE, _preload_content=False).data)
    return {
        p["metadata"]["name"] for p in listed["items"] if not p["metadata"].get("deletionTimestamp")
    }


def bad_request(port: int) -> None:
    """One filter request the extender cannot parse: a ``bad_request`` decision."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/filter", data=b"{not json", method="POST"
    )
    request.add_header("Content-Type", "application/json")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=5)
    assert raised.value.code == 400


def carbon_section(csv_path: Path) -> dict[str, Any]:
    """An ``intensity:`` section that gives the carbon panels and alerts their series
    without changing any cap: a CSV source at a clean 100 g/kWh (full caps under the
    default policy) around now, a budget too large to throttle, and an EUA price."""
    hour = int(time.time()) // 3600 * 3600
    rows = [f"{t},100" for t in range(hour - 86400, hour + 86400, 3600)]
    csv_path.write_text("time,intensity\n" + "\n".join(rows) + "\n")
    return {
        "kind": "csv",
        "path": str(csv_path),
        "fallbackCapFraction": 0.8,
        "period": "1s",
        "domains": ["rack-1"],
        "budgets": [{"domain": "rack-1", "kg": 1_000_000, "window": "day"}],
        "euaPrice": 80,
    }


def metrics_reader_token(c: Any) -> str:
    """A token of a ServiceAccount bound to the shipped ``powercap-metrics-reader``
    ClusterRole (``manifests/monitoring/kube-scheduler/``), as the monitoring
    Prometheus scrapes kube-scheduler with."""
    docs = yaml.safe_load_all(KUBE_SCHEDULER_METRICS.read_text())
    (role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    kubectl(c, "create", "serviceaccount", PROMETHEUS_ACCOUNT, f"--namespace={LEASE_NAMESPACE}")
    kubectl(c, "apply", "-f", "-", stdin=yaml.safe_dump(role))
    kubectl(
        c,
        "create",
        "clusterrolebinding",
        "powercap-metrics-reader-test",
        f"--clusterrole={role['metadata']['name']}",
        f"--serviceaccount={LEASE_NAMESPACE}:{PROMETHEUS_ACCOUNT}",
    )
    return mint_token(c, PROMETHEUS_ACCOUNT)


def secure_metrics_status(port: int, token: str | None) -> int:
    """The HTTP status of kube-scheduler's /metrics on its secure port for ``token``
    (``None``: anonymous), 0 while nothing listens on the port yet (kube-scheduler
    opens it a moment after it starts); its self-signed certificate is not verified."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(f"https://127.0.0.1:{port}/metrics")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError):
            return 0
        raise


def unschedulable_pod(core: Any) -> None:
    """A pod for the powercap-scheduler that asks for more GPUs than any node has: one
    scheduling attempt (unschedulable) fills kube-scheduler's attempt metrics, without a
    pod joining the ones the test counts (another namespace) or drawing power."""
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "too-big", "namespace": LEASE_NAMESPACE},
        "spec": {
            "schedulerName": "powercap-scheduler",
            # the namespace enforces the restricted Pod Security Standard
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "server",
                    "image": "registry.invalid/none:0",
                    "resources": {"limits": {"nvidia.com/gpu": "64"}},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
    core.create_namespaced_pod(LEASE_NAMESPACE, body)


def check_queries(prom: Prometheus) -> None:
    """Every rule healthy; every dashboard query and alert operand returns series."""
    for group in prom.rule_groups():
        for rule in group["rules"]:
            assert rule["health"] == "ok", f"rule {rule['name']}: {rule.get('lastError')}"
    loaded = {r["name"] for g in prom.rule_groups() for r in g["rules"]}
    assert set(alert_exprs()) <= loaded
    empty: list[str] = []
    for expr in [*dashboard_exprs(), *map(operand, alert_exprs().values())]:
        answer = prom.query_answer(expr)
        assert answer["status"] == "success", f"{expr}: {answer.get('error')}"
        if not answer["data"]["result"]:
            empty.append(expr)
    assert not empty, "queries without a series:\n" + "\n".join(empty)


def test_stale_data_alert_no_action_and_every_query_returns_series() -> None:
    problem = problem_from_spec(spec_from_data(SCENARIO))
    with cluster(TEST_LOG_DIR, prefix="powercap-obs") as c:
        client = api_client(c.kubeconfig)
        core = k8s_apis(client)[0]
        create_nodes(client, problem)
        create_bare_pods(core, ["gpu-a1"] * PODS)
        sim_pods = StaticPods()
        nodes = sim_nodes(problem)
        # Agents on the nodes, so the controller's power-limit series have values too; they
        # may not set limits, so the ladder goes on to the eviction this test checks.
        agents = simulated_agents(c, {n.name: n.gpus for n in nodes}, settable=False)
        sim = PowerSimulator(
            nodes,
            grid_profiles(problem),
            sim_pods,
            clock=SimClock(start_s=time.time()),
            limits=agents,
        )
        address = sim.start()
        try:
            with agents, pod_feed(core, sim_pods):
                data_jobs = [ScrapeJob("powersim", [address])]
                with prometheus(data_jobs, TEST_LOG_DIR) as data:
                    data.wait_for_targets()
                    data_port = int(data.url.rsplit(":", 1)[1])
                    config = powercap_config(problem)
                    # CP-SAT reports a gap, so the dashboard's plan-gap panel has a value.
                    config["planner"].update({"strategy": "cpsat", "timeLimit": "2s"})
                    lease = {
                        "namespace": LEASE_NAMESPACE,
                        "duration": "3s",
                        "renewDeadline": "2s",
                        "retryPeriod": "1s",
                    }
                    config |= fast_controller(
                        data.url, sim.non_gpu_watts("gpu-a1"), 60, lease=lease
                    )
                    config["intensity"] = carbon_section(c.run_dir / "intensity.csv")
                    path = c.run_dir / "powercap.json"
                    path.write_bytes(orjson.dumps(config))
                    extender, ports = start_extender(c, path)
                    port = ports.metrics  # scraped by the test and by Prometheus
                    controller, metrics = start_controller(c, path)

                    def logs() -> str:
                        return (
                            f"\n--- powercap controller (tail) ---\n{controller.tail(30)}"
                            f"\n--- powercap serve (tail) ---\n{extender.tail(15)}"
                        )

                    calm = IDLE_W + REPLICA_W * PODS

                    def reads_calm() -> bool:
                        m = samples(metrics)
                        rack = (("domain", "rack-1"),)
                        return (
                            m.get(("powercap_controller_leader", ())) == 1.0
                            and m.get(("powercap_domain_measured_watts", rack)) == calm
                        )

                    wait_for("the leader to read rack 1 calm", reads_calm, 30.0, every_s=0.25)

                    # The second kube-scheduler, its /metrics on the secure port behind
                    # the API server's authentication and authorization, scraped with
                    # the token of an account bound to the shipped metrics-reader role.
                    (secure_port,) = free_ports(1)
                    start_scheduler(c, ports.verbs, secure_port=secure_port)
                    unschedulable_pod(core)
                    reader = metrics_reader_token(c)
                    wait_for(
                        "kube-scheduler's secure port",
                        lambda: secure_metrics_status(secure_port, reader) == 200,
                        30.0,
                        every_s=0.25,
                    )
                    # Only an account granted get on /metrics reads it: not an anonymous
                    # caller, not one of powercap's own accounts.
                    assert secure_metrics_status(secure_port, None) in (401, 403)
                    other = mint_token(c, CONTROLLER_ACCOUNT)
                    assert secure_metrics_status(secure_port, other) == 403
                    monitoring = prometheus(
                        [
                            ScrapeJob(JOB, [f"127.0.0.1:{port}"]),
                            ScrapeJob(CONTROLLER_JOB, [f"127.0.0.1:{metrics}"]),
                            ScrapeJob(
                                KUBE_SCHEDULER_JOB,
                                [f"127.0.0.1:{secure_port}"],
                                scheme="https",
                                bearer_token=reader,
                                insecure_skip_verify=True,
                            ),
                        ],
                        TEST_LOG_DIR,
                        rule_groups=rules_for_test(),
                    )
                    with monitoring as mon:
                        mon.wait_for_targets()
                        bad_request(ports.verbs)
                        assert not mon.firing(STALE_ALERT)

                        # 1. The controller's Prometheus goes away; rack 1 surges.
                        data.process.stop()
                        sim.surge(extra_watts=SURGE_W, domains=["rack-1"])
                        down_at = time.monotonic()
                        try:
                            wait_for(
                                f"{STALE_ALERT} firing",
                                lambda: bool(mon.firing(STALE_ALERT)),
                                30.0,
                                every_s=0.25,
                            )
                        except TimeoutError as exc:
                            raise AssertionError(f"{exc}{logs()}") from exc
                        # A few periods more than the grace: with data it would have acted.
                        time.sleep(max(0.0, 4.0 - (time.monotonic() - down_at)))
                        assert metric(metrics, "powercap_power_data_stale") == 1.0
                        assert actions(metrics) == 0.0, logs()
                        assert not evict_events(core)
                        assert pod_names(core) == {f"batch-{i}" for i in range(PODS)}
                        rack_breach = metric(metrics, "powercap_domain_in_breach", domain="rack-1")
                        assert rack_breach == 0.0

                        # 2. Power data back at the same address: the surge is seen, acted on.
                        with prometheus(data_jobs, TEST_LOG_DIR, port=data_port) as again:
                            again.wait_for_targets()
                            try:
                                wait_for(
                                    "an eviction in rack 1",
                                    lambda: actions(metrics) >= 1.0,
                                    30.0,
                                    every_s=0.25,
                                )
                            except TimeoutError as exc:
                                raise AssertionError(f"{exc}{logs()}") from exc
                            assert evict_events(core)
                            assert metric(metrics, "powercap_power_data_stale") == 0.0
                            # Two scrapes of the moved counters, for increase() and rate().
                            time.sleep(2.5)

                            # 3. Every query of the rules and the dashboard.
                            check_queries(mon)
        finally:
            sim.stop()
