"""The companion controller in a process of its own (``powercap controller``), and the
extender beside it that only tracks measured power (``powercap serve --controller=track``).

Against the stand-ins of ``tests/test_controller.py`` (Kubernetes client, Lease store,
power source): the controller process mirrors the cluster, takes the Lease and acts, and
serves health, readiness and metrics but no scheduler verb; the tracking extender feeds
a breach's overage into its ledger without a Lease, a write or a metric of the
controller's; the two commands check what they are given before touching a cluster.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from extender.cluster.mirror import pod_record
from extender.cluster.pods import DemandResolver
from extender.config.loading import config_from_data, load_config
from extender.controller.actions import KubernetesClusterApi
from extender.controller.mode import ControllerMode
from extender.runtime import Extender, controller_from_cluster, from_cluster
from powercap import cli
from tests.scheduler_payloads import node, pod
from tests.test_controller import IDLE, T0, FakeCluster, FakePower, config_data
from tests.test_lease import LeaseStore
from tests.test_mirror import _Raw

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent
SHIPPED_CONFIG = REPO / "config" / "powercap.yaml"
NODES = (("a1", "rack-a"), ("a2", "rack-a"), ("b1", "rack-b"))
PODS = (("batch-0", "a1"), ("batch-1", "a1"), ("batch-2", "a2"))


class MirroredCluster(FakeCluster):
    """:class:`FakeCluster` that also answers the mirror's lists and watches of Nodes and
    Pods, and records the Events posted."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[Any] = []
        self.api_client: Any = None

    def list_node(self, **kw: Any) -> _Raw:
        if kw.get("watch"):
            return _Raw(chunks=[])
        items = [node(name, rack, idle_watts=IDLE) for name, rack in NODES]
        return _Raw(orjson.dumps({"metadata": {"resourceVersion": "3"}, "items": items}))

    def list_pod_for_all_namespaces(self, **kw: Any) -> Any:
        if "spec.nodeName=" in kw.get("field_selector", ""):
            return super().list_pod_for_all_namespaces(**kw)  # the controller's read
        if kw.get("watch"):
            return _Raw(chunks=[])
        items = list(self.pods.values())
        return _Raw(orjson.dumps({"metadata": {"resourceVersion": "4"}, "items": items}))

    def create_namespaced_event(self, ns: str, body: Any, **_: Any) -> _Raw:
        self.events.append(body)
        return _Raw()


def cluster_with_pods() -> MirroredCluster:
    cluster = MirroredCluster()
    for name, node_name in PODS:
        cluster.pods[name] = pod(
            name, service="batch", gpus=1, node_name=node_name, phase="Running"
        )
    return cluster


def controller_process(cluster: MirroredCluster) -> tuple[Extender, LeaseStore]:
    config = config_from_data(config_data())
    store = LeaseStore()
    ext = controller_from_cluster(
        config,
        cluster,
        cluster_api=KubernetesClusterApi(cluster, cluster, cluster),
        lease_api=store,
        power_source=FakePower(config),
    )
    return ext, store


def wait_ready(client: TestClient) -> None:
    deadline = time.monotonic() + 5
    while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.02)


# --- the controller process -------------------------------------------------------------------
def test_the_controller_process_mirrors_takes_the_lease_and_serves_only_health() -> None:
    cluster = cluster_with_pods()
    ext, store = controller_process(cluster)
    assert ext.controller is not None and ext.elector is not None
    assert ext.controller_loop is not None and ext.mirror is not None
    assert ext.planner is None  # nothing here would read a plan
    assert ext.controller.api is not None  # it acts, once it leads
    app = ext.health_app()
    with TestClient(app) as client:
        wait_ready(client)
        assert client.get("/healthz").text == "ok"
        assert client.get("/readyz").status_code == 200
        assert ext.state.node_names() == ["a1", "a2", "b1"]
        assert {p.name for p in ext.state.pods.values()} == {name for name, _ in PODS}
        metrics = client.get("/metrics").text
        assert "powercap_controller_leader" in metrics
        assert "powercap_build_info{" in metrics
        assert "powercap_domain_measured_watts" in metrics
        # No scheduler verb answers here.
        for verb in ("/filter", "/prioritize", "/bind", "/preempt"):
            assert client.post(verb, content=b"{}").status_code == 404, verb
    assert {r.path for r in app.routes} == {"/healthz", "/readyz", "/metrics"}  # type: ignore[attr-defined]
    assert ext.elector.try_acquire_or_renew()
    assert ext.controller.leader()
    assert store.spec()["holderIdentity"] == ext.elector.identity
    # The mirror feeds no pending pod to a decider: only the extender warns about those.
    assert cluster.events == []


def test_the_controller_process_is_not_ready_before_its_mirror_has_synced() -> None:
    cluster = cluster_with_pods()
    ext, _ = controller_process(cluster)
    with TestClient(ext.health_app()) as client:
        ext.mirror.stop()  # type: ignore[union-attr]
        ext.state.synced = False
        answer = client.get("/readyz")
        assert answer.status_code == 503
        assert "mirror" in answer.text


def test_the_controller_process_needs_an_enabled_controller() -> None:
    off = config_from_data(config_data(enabled=False))
    with pytest.raises(ValueError, match=r"controller\.enabled is false"):
        controller_from_cluster(off, MirroredCluster())


# --- the extender beside it ----------------------------------------------------------------
def tracking_extender(cluster: MirroredCluster, mode: ControllerMode) -> tuple[Extender, FakePower]:
    config = config_from_data(config_data())
    power = FakePower(config)
    ext = from_cluster(config, cluster, power_source=power, controller=mode)
    resolver = DemandResolver(config)
    for name, rack in NODES:
        ext.state.upsert_node(name, config.tree.index[rack], 8, idle_watts=IDLE)
    for raw in cluster.pods.values():
        record = pod_record(raw, resolver)
        assert record is not None
        ext.state.add_pod(record)
    return ext, power


def test_a_tracking_extender_feeds_the_overage_into_its_ledger_and_acts_on_nothing() -> None:
    cluster = cluster_with_pods()
    ext, power = tracking_extender(cluster, ControllerMode.TRACK)
    assert ext.controller is not None and ext.controller_loop is not None
    assert ext.elector is None  # no Lease: it never competes with the controller process
    assert ext.controller.api is None
    assert not ext.controller.leader()
    assert b"powercap_controller" not in ext.telemetry.render()
    rack = ext.config.tree.index["rack-a"]
    # Rack a (cap 20 kW) measured at 23 kW, past the 30 s grace.
    power.watts = {"a1": 14_000.0, "a2": 9_000.0, "b1": IDLE}
    for at in (0.0, 15.0, 30.0):
        report = ext.controller.tick(T0 + at)
    assert report.events is not None and ext.controller.breach.in_breach[rack]
    assert report.decisions == {} and report.actions == []
    slot = ext.config.grid.slot_of(T0)
    assert ext.state.feedback[rack, slot] > 0  # filter now sees the measured overage
    assert cluster.writes == 0 and cluster.reads == 0  # not one API call of the controller's
    assert cluster.events == []


def test_run_mode_is_the_default_and_off_runs_no_controller() -> None:
    cluster = cluster_with_pods()
    config = config_from_data(config_data())
    store = LeaseStore()
    default = from_cluster(
        config,
        cluster,
        cluster_api=KubernetesClusterApi(cluster, cluster, cluster),
        lease_api=store,
        power_source=FakePower(config),
    )
    assert default.elector is not None and default.controller is not None
    assert default.controller.api is not None
    off, _ = tracking_extender(cluster, ControllerMode.OFF)
    assert off.controller is None and off.controller_loop is None and off.elector is None


# --- the commands --------------------------------------------------------------------------------
def controller_disabled_config(tmp_path: Path) -> Path:
    data = yaml.safe_load(SHIPPED_CONFIG.read_text())
    data["controller"]["enabled"] = False
    data["profileFiles"] = [str(REPO / "config" / p) for p in data["profileFiles"]]
    path = tmp_path / "powercap.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_controller_command_refuses_a_config_without_the_controller(tmp_path: Path) -> None:
    path = controller_disabled_config(tmp_path)
    assert not load_config(path).controller.enabled
    result = runner.invoke(cli.app, ["controller", "--config", str(path)])
    assert result.exit_code == 2
    assert "controller.enabled is false" in result.output


@pytest.mark.parametrize("address", ["8889", ":8889", "host:", "host:http", "host:70000"])
def test_controller_command_refuses_a_bad_metrics_address(address: str) -> None:
    result = runner.invoke(
        cli.app, ["controller", "--config", str(SHIPPED_CONFIG), "--metrics-address", address]
    )
    assert result.exit_code == 2
    assert "--metrics-address: expected HOST:PORT" in result.output


def test_controller_command_lists_config_problems(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("apiVersion: powercap.io/v1alpha1\nkind: PowercapConfig\ndomains: 3\n")
    result = runner.invoke(cli.app, ["controller", "--config", str(path)])
    assert result.exit_code == 2
    assert "invalid config" in result.output and "domains" in result.output


def test_controller_command_serves_the_health_app_on_the_metrics_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kubernetes.client import ApiClient

    from extender.webhook.serving import HealthServer
    from powercap.commands import controller as command

    served: list[HealthServer] = []
    cluster = MirroredCluster()
    cluster.api_client = ApiClient()  # the controller builds its API clients on it
    monkeypatch.setattr(command, "kubernetes_core", lambda kubeconfig: cluster)
    monkeypatch.setattr(HealthServer, "run", lambda self: served.append(self))
    result = runner.invoke(
        cli.app,
        ["controller", "--config", str(SHIPPED_CONFIG), "--metrics-address", "127.0.0.1:0"],
    )
    assert result.exit_code == 0, result.output
    (server,) = served
    assert server.address.host == "127.0.0.1" and server.port > 0
    paths = {getattr(r, "path", None) for r in server.app.routes}
    assert paths == {"/healthz", "/readyz", "/metrics"}


@pytest.mark.parametrize("mode", list(ControllerMode))
def test_serve_passes_the_controller_mode(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    import uvicorn

    from extender import runtime
    from powercap.commands import serve

    given: dict[str, Any] = {}

    def from_cluster_stub(config: Any, core: Any, **kw: Any) -> Any:
        given.update(kw)
        raise SystemExit(0)  # the wiring is what is tested; nothing is served

    monkeypatch.setattr(serve, "kubernetes_core", lambda kubeconfig: MirroredCluster())
    monkeypatch.setattr(runtime, "from_cluster", from_cluster_stub)
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: None)
    result = runner.invoke(
        cli.app, ["serve", "--config", str(SHIPPED_CONFIG), "--controller", mode]
    )
    assert result.exit_code == 0, result.output
    assert given["controller"] is ControllerMode(mode)


def test_serve_refuses_an_unknown_controller_mode() -> None:
    result = runner.invoke(
        cli.app, ["serve", "--config", str(SHIPPED_CONFIG), "--controller", "sometimes"]
    )
    assert result.exit_code == 2
    assert "sometimes" in result.output
