"""``manifests/`` agrees with ``config/`` and with the extender, without a cluster.

kustomize reads nothing outside its directory, so ``manifests/base/config/`` holds copies of
the ``config/`` files the deployed scheduler runs. They must stay byte-for-byte equal to their
originals (there are no intended differences: ``config/kube-scheduler.yaml`` is written for the
sidecar layout already). The names that tie the pieces together — ports, paths, the Lease, the
scheduler name, metric names in alerts — must match too. ``e2e/tests/test_manifests.py`` checks that
the API server and each component accept the files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from extender.config.loading import load_config
from extender.telemetry import CarbonMetrics, ControllerMetrics, Telemetry

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config"
BASE = REPO / "manifests" / "base"
COPIES = BASE / "config"
EXAMPLES = REPO / "manifests" / "examples"
RULES = REPO / "manifests" / "monitoring" / "prometheusrule.yaml"
DASHBOARD = REPO / "manifests" / "monitoring" / "grafana-dashboard.json"
# The config files the deployed scheduler and extender read (powercap.yaml reads profiles/).
DEPLOYED = [
    "kube-scheduler.yaml",
    "powercap.yaml",
    *sorted(f"profiles/{p.name}" for p in (CONFIG / "profiles").glob("*.yaml")),
]


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _one(path: Path, kind: str) -> dict[str, Any]:
    (found,) = [d for d in _docs(path) if d["kind"] == kind]
    return found


def _scheduler_config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CONFIG / "kube-scheduler.yaml").read_text())
    return loaded


def _containers() -> dict[str, dict[str, Any]]:
    spec = _one(BASE / "deployment.yaml", "Deployment")["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec["containers"]}


def _flag(container: dict[str, Any], name: str) -> str:
    for arg in container["command"]:
        if arg.startswith(f"--{name}="):
            return str(arg.split("=", 1)[1])
    raise AssertionError(f"container {container['name']} has no --{name}=")


@pytest.mark.parametrize("rel", DEPLOYED)
def test_copy_equals_original(rel: str) -> None:
    copy, original = COPIES / rel, CONFIG / rel
    assert copy.is_file(), f"manifests/base/config/{rel} is missing: cp config/{rel} {copy}"
    assert copy.read_bytes() == original.read_bytes(), (
        f"manifests/base/config/{rel} differs from config/{rel}; the deployed scheduler must "
        f"run the shipped config: cp config/{rel} manifests/base/config/{rel}"
    )


def test_no_copy_without_original() -> None:
    copies = sorted(str(p.relative_to(COPIES)) for p in COPIES.rglob("*.yaml"))
    assert copies == sorted(DEPLOYED)


def test_configmaps_carry_every_copy() -> None:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    carried = sorted(
        str(Path(f).relative_to("config"))
        for generator in kustomization["configMapGenerator"]
        for f in generator["files"]
    )
    assert carried == sorted(DEPLOYED)


def test_scheduler_reaches_its_sidecar() -> None:
    (extender,) = _scheduler_config()["extenders"]
    url = urlsplit(extender["urlPrefix"])
    assert url.hostname == "127.0.0.1", "the extender is a sidecar: call it on loopback"
    sidecar = _containers()["extender"]
    assert int(_flag(sidecar, "port")) == url.port
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    service = _one(BASE / "service.yaml", "Service")
    for port in service["spec"]["ports"]:
        assert ports[port["targetPort"]] == url.port


def test_containers_read_the_mounted_files() -> None:
    containers = _containers()
    scheduler, sidecar = containers["kube-scheduler"], containers["extender"]
    mounts = {m["name"]: m for c in containers.values() for m in c["volumeMounts"]}
    scheduler_dir = mounts["scheduler-config"]["mountPath"]
    assert _flag(scheduler, "config") == f"{scheduler_dir}/kube-scheduler.yaml"
    config_path = Path(_flag(sidecar, "config"))
    assert mounts["powercap-config"]["mountPath"] == str(config_path)
    assert mounts["powercap-config"]["subPath"] == config_path.name
    # powercap.yaml's profileFiles are relative to its own directory.
    powercap = yaml.safe_load((CONFIG / "powercap.yaml").read_text())
    for pattern in powercap["profileFiles"]:
        assert mounts["powercap-profiles"]["mountPath"] == str(
            config_path.parent / Path(pattern).parent
        )


def test_leader_election_lease_is_granted() -> None:
    election = _scheduler_config()["leaderElection"]
    namespace = _one(BASE / "namespace.yaml", "Namespace")["metadata"]["name"]
    assert election["resourceNamespace"] == namespace
    role = next(
        d
        for d in _docs(BASE / "rbac.yaml")
        if d["kind"] == "Role" and d["metadata"]["name"].endswith("leader-election")
    )
    named = [r for r in role["rules"] if "resourceNames" in r]
    assert [election["resourceName"]] == [n for r in named for n in r["resourceNames"]]


def test_examples_use_the_scheduler() -> None:
    (profile,) = _scheduler_config()["profiles"]
    deployment = _one(EXAMPLES / "vllm-deployment.yaml", "Deployment")
    assert deployment["spec"]["template"]["spec"]["schedulerName"] == profile["schedulerName"]
    isvc = _one(EXAMPLES / "kserve-inferenceservice.yaml", "InferenceService")
    assert isvc["spec"]["predictor"]["schedulerName"] == profile["schedulerName"]


def test_the_extender_binds_for_the_scheduler_it_runs_beside() -> None:
    (profile,) = _scheduler_config()["profiles"]
    assert load_config(COPIES / "powercap.yaml").scheduler.name == profile["schedulerName"]


def _families() -> list[Any]:
    """Every metric family ``powercap serve`` can export: the extender's, and the
    controller's and the live caps loop's, which join its registry only when they run."""
    telemetry = Telemetry()
    controller = ControllerMetrics(telemetry.registry)
    CarbonMetrics(telemetry.registry, cap=controller.cap)
    return list(telemetry.registry.collect())


def _exported_series() -> set[str]:
    """Every series name the extender's /metrics can carry."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum")}
    names: set[str] = set()
    for family in _families():
        names.add(family.name)
        names.update(family.name + s for s in suffixes.get(family.type, ()))
    return names


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]


def _alert_exprs() -> list[str]:
    rule = _one(RULES, "PrometheusRule")
    return [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_queries_use_exported_metrics(source: str) -> None:
    exprs = _alert_exprs() if source == "alerts" else _dashboard_exprs()
    used = {m for e in exprs for m in re.findall(r"\bpowercap_[a-z_]+\b", e)}
    assert used, f"no query of the {source} reads a powercap metric"
    unknown = used - _exported_series()
    assert not unknown, f"{source} read metrics the extender does not export: {sorted(unknown)}"


def test_dashboard_covers_every_metric() -> None:
    families = {f.name for f in _families()}
    assert "powercap_controller_actions" in families, "the controller's metrics are missing"
    shown = {m for e in _dashboard_exprs() for m in re.findall(r"\bpowercap_[a-z_]+\b", e)}
    exported = _exported_series()
    missing = {f for f in families if not any(s.startswith(f) and s in exported for s in shown)}
    assert not missing, f"metrics the dashboard does not show: {sorted(missing)}"


def test_controller_lease_is_granted() -> None:
    """The shipped config's controller Lease is the one rbac.yaml lets it get and update."""
    lease = load_config(CONFIG / "powercap.yaml").controller.lease
    role = next(
        d
        for d in _docs(BASE / "rbac.yaml")
        if d["kind"] == "Role" and d["metadata"]["name"] == "powercap-controller-lease"
    )
    assert role["metadata"]["namespace"] == lease.namespace
    named = [r for r in role["rules"] if "resourceNames" in r]
    assert [n for r in named for n in r["resourceNames"]] == [lease.name]
    assert {v for r in named for v in r["verbs"]} == {"get", "update"}


def test_alerts_cover_the_controller() -> None:
    """A sustained breach, stale power data and extender errors each have an alert."""
    exprs = _alert_exprs()
    for metric in (
        "powercap_domain_in_breach",
        "powercap_power_data_stale",
        "powercap_extender_decisions_total",
    ):
        assert any(metric in e for e in exprs), f"no alert reads {metric}"
    errors = next(e for e in exprs if "bad_request" in e)
    assert "api_error" in errors
