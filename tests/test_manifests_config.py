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
from extender.webhook.settings import Limits

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
    """The scheduler calls the verbs on loopback, where the sidecar serves them and
    nothing else can reach them: no container port, no Service port is theirs."""
    (extender,) = _scheduler_config()["extenders"]
    url = urlsplit(extender["urlPrefix"])
    assert url.hostname == "127.0.0.1", "the extender is a sidecar: call it on loopback"
    sidecar = _containers()["extender"]
    assert _flag(sidecar, "host") == url.hostname
    assert int(_flag(sidecar, "port")) == url.port
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert url.port not in ports.values(), "the verbs' port is loopback-only"
    service = _one(BASE / "service.yaml", "Service")
    for port in service["spec"]["ports"]:
        assert ports[port["targetPort"]] != url.port


def test_probes_service_and_scrapes_use_the_metrics_address() -> None:
    """The kubelet, the Service, the ServiceMonitor and the NetworkPolicy all point at the
    metrics address (``--metrics-address``), and only at it."""
    sidecar = _containers()["extender"]
    host, metrics_port = _flag(sidecar, "metrics-address").rsplit(":", 1)
    assert host == "0.0.0.0", "the kubelet and Prometheus reach the pod IP"
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert ports == {"http-metrics": int(metrics_port)}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        spec = sidecar[probe]
        assert spec["httpGet"]["port"] == "http-metrics", probe
        assert spec["httpGet"]["path"] == ("/readyz" if probe == "readinessProbe" else "/healthz")
        # The probe waits less than a period, and less than a client may take to send.
        assert 1 <= spec["timeoutSeconds"] < spec["periodSeconds"], probe
        assert spec["timeoutSeconds"] < Limits().read_timeout_s, probe
    service = _one(BASE / "service.yaml", "Service")
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("http-metrics", int(metrics_port), "http-metrics")
    ]
    monitor = _one(REPO / "manifests" / "monitoring" / "servicemonitor.yaml", "ServiceMonitor")
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [
        ("http-metrics", "/metrics")
    ]
    policy = _one(BASE / "networkpolicy.yaml", "NetworkPolicy")
    admitted = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
    assert admitted == ["http-metrics"], "from the network, the metrics address only"
    assert policy["spec"]["policyTypes"] == ["Ingress"]


def test_mtls_scheduler_config_differs_only_in_how_it_calls_the_extender() -> None:
    """``config/kube-scheduler-mtls.yaml`` is the sidecar file with the extender called
    over HTTPS, with a client certificate; nothing else may drift."""
    sidecar = _scheduler_config()
    mtls: dict[str, Any] = yaml.safe_load((CONFIG / "kube-scheduler-mtls.yaml").read_text())
    (plain,) = sidecar.pop("extenders")
    (secure,) = mtls.pop("extenders")
    assert mtls == sidecar
    differs = {k for k in plain.keys() | secure.keys() if plain.get(k) != secure.get(k)}
    assert differs == {"urlPrefix", "enableHTTPS", "tlsConfig"}
    assert secure["enableHTTPS"] is True
    assert urlsplit(secure["urlPrefix"]).scheme == "https"
    tls = secure["tlsConfig"]
    assert set(tls) == {"serverName", "caFile", "certFile", "keyFile"}
    assert tls.get("insecure", False) is False
    assert tls["serverName"] == urlsplit(secure["urlPrefix"]).hostname


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
def test_queries_use_no_deprecated_name(source: str) -> None:
    exprs = _alert_exprs() if source == "alerts" else _dashboard_exprs()
    used = {m for e in exprs for m in re.findall(r"\bpowercap_[a-z_]+\b", e)}
    deprecated = {f.name for f in _families() if _deprecated(f)}
    assert deprecated >= {"powercap_plan_gap", "powercap_emissions_kg"}
    old = {m for m in used if m in deprecated or m.removesuffix("_total") in deprecated}
    assert not old, f"{source} read deprecated metrics: {sorted(old)}"


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_queries_use_exported_metrics(source: str) -> None:
    exprs = _alert_exprs() if source == "alerts" else _dashboard_exprs()
    used = {m for e in exprs for m in re.findall(r"\bpowercap_[a-z_]+\b", e)}
    assert used, f"no query of the {source} reads a powercap metric"
    unknown = used - _exported_series()
    assert not unknown, f"{source} read metrics the extender does not export: {sorted(unknown)}"


def _deprecated(family: Any) -> bool:
    return str(family.documentation).startswith("Deprecated:")


def test_dashboard_covers_every_metric() -> None:
    families = {f.name for f in _families() if not _deprecated(f)}
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
    # ... and granted to the controller's own ServiceAccount, not the scheduler's.
    binding = next(
        d
        for d in _docs(BASE / "rbac.yaml")
        if d["kind"] == "RoleBinding" and d["roleRef"]["name"] == "powercap-controller-lease"
    )
    assert [s["name"] for s in binding["subjects"]] == ["powercap-controller"]


def test_controller_memory_configmap_is_granted() -> None:
    """The ConfigMap the shipped config's controller keeps its memory in, in the Lease's
    namespace, is the one rbac.yaml lets it get and update (and create)."""
    controller = load_config(CONFIG / "powercap.yaml").controller
    role = next(
        d
        for d in _docs(BASE / "rbac.yaml")
        if d["kind"] == "Role" and d["metadata"]["name"] == "powercap-controller-state"
    )
    assert role["metadata"]["namespace"] == controller.lease.namespace
    assert all(r["resources"] == ["configmaps"] for r in role["rules"])
    named = [r for r in role["rules"] if "resourceNames" in r]
    assert [n for r in named for n in r["resourceNames"]] == [controller.state_config_map]
    assert {v for r in named for v in r["verbs"]} == {"get", "update"}
    unnamed = [r for r in role["rules"] if "resourceNames" not in r]
    assert [v for r in unnamed for v in r["verbs"]] == ["create"]
    binding = next(
        d
        for d in _docs(BASE / "rbac.yaml")
        if d["kind"] == "RoleBinding" and d["metadata"]["name"] == "powercap-controller-state"
    )
    assert binding["roleRef"]["name"] == "powercap-controller-state"
    # ... to the controller's own ServiceAccount, not the scheduler's.
    assert [s["name"] for s in binding["subjects"]] == ["powercap-controller"]


def test_admission_policies_guard_the_label_the_controller_reads() -> None:
    """Every ValidatingAdmissionPolicy of admission.yaml, one per kind of object that
    carries pod labels, guards the shipped config's priority label; who may set it is the
    ClusterRole the policies ask the authorizer about."""
    label = load_config(CONFIG / "powercap.yaml").controller.priority_label
    docs = _docs(BASE / "admission.yaml")
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"}
    bound = {
        d["spec"]["policyName"]
        for d in docs
        if d["kind"] == "ValidatingAdmissionPolicyBinding"
        and d["spec"]["validationActions"] == ["Deny"]
    }
    assert bound == set(policies)
    resources = {
        r
        for p in policies.values()
        for rule in p["spec"]["matchConstraints"]["resourceRules"]
        for r in rule["resources"]
    }
    assert resources == {
        "pods",
        "deployments",
        "replicasets",
        "statefulsets",
        "daemonsets",
        "jobs",
        "cronjobs",
    }
    role = _one(BASE / "admission.yaml", "ClusterRole")
    (rule,) = role["rules"]
    asked = (
        f"authorizer.group('{rule['apiGroups'][0]}').resource('{rule['resources'][0]}')"
        f".namespace(request.namespace).check('{rule['verbs'][0]}').allowed()"
    )
    for name, policy in policies.items():
        (condition,) = policy["spec"]["matchConditions"]
        assert asked in "".join(condition["expression"].split()), name
        variables = [v["expression"] for v in policy["spec"]["variables"]]
        assert all(f"'{label}'" in v for v in variables), name
    assert (
        "admission.yaml" in yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"]
    )


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


# --- one ServiceAccount per component --------------------------------------------------------
SCHEDULER_ACCOUNT = "powercap-scheduler"
CONTROLLER_ACCOUNT = "powercap-controller"
SCALED_OBJECTS_ROLE = "powercap-controller-scaledobjects"
Rule = tuple[str, str, str, str]  # (API group, resource, verb, resource name or "")


def _controller_deployment() -> dict[str, Any]:
    return _one(BASE / "controller.yaml", "Deployment")


def _pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def _rbac_docs() -> list[dict[str, Any]]:
    return _docs(BASE / "rbac.yaml")


def _bound_rules(account: str, docs: list[dict[str, Any]]) -> set[Rule]:
    """Every rule of this repository's roles that the bindings in ``docs`` give ``account``
    of powercap-system, one tuple per group, resource, verb and name. Built-in roles
    (``system:*``) are not in the file; e2e/tests/test_rbac.py asks the API server about
    those."""
    roles = {
        (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
        for d in docs
        if d["kind"] in ("Role", "ClusterRole")
    }
    rules: set[Rule] = set()
    for binding in (d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        if {"kind": "ServiceAccount", "name": account, "namespace": "powercap-system"} not in (
            binding["subjects"]
        ):
            continue
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace") if ref["kind"] == "Role" else None
        role = roles.get((ref["kind"], namespace, ref["name"]))
        for rule in role["rules"] if role else []:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        for name in rule.get("resourceNames") or [""]:
                            rules.add((group, resource, verb, name))
    return rules


def test_each_deployment_runs_under_its_own_account() -> None:
    accounts = {d["metadata"]["name"] for d in _docs(BASE / "serviceaccount.yaml")}
    assert accounts == {SCHEDULER_ACCOUNT, CONTROLLER_ACCOUNT}
    scheduler = _one(BASE / "deployment.yaml", "Deployment")
    assert _pod_spec(scheduler)["serviceAccountName"] == SCHEDULER_ACCOUNT
    assert _pod_spec(_controller_deployment())["serviceAccountName"] == CONTROLLER_ACCOUNT
    # The sidecar leaves acting to the controller's Deployment: with `run` it would need
    # the controller's rights under the scheduler's identity.
    assert _flag(_containers()["extender"], "controller") == "track"


def test_the_controller_reads_the_extenders_config_and_serves_its_metrics_port() -> None:
    spec = _pod_spec(_controller_deployment())
    (container,) = spec["containers"]
    assert container["command"][:2] == ["powercap", "controller"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    config_path = Path(_flag(container, "config"))
    assert mounts["powercap-config"]["mountPath"] == str(config_path)
    assert mounts["powercap-config"]["subPath"] == config_path.name
    assert mounts["powercap-profiles"]["mountPath"] == str(config_path.parent / "profiles")
    # The same ConfigMaps as the extender's, so both run the one config.
    scheduler_volumes = {
        v["name"]: v for v in _pod_spec(_one(BASE / "deployment.yaml", "Deployment"))["volumes"]
    }
    for volume in spec["volumes"]:
        if "configMap" in volume:
            assert volume == scheduler_volumes[volume["name"]]
    port = int(_flag(container, "metrics-address").rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    service = _one(BASE / "controller.yaml", "Service")
    assert [ports[p["targetPort"]] for p in service["spec"]["ports"]] == [port]
    assert (
        service["spec"]["selector"] == _controller_deployment()["spec"]["selector"]["matchLabels"]
    )


def test_the_controller_pod_is_as_restricted_as_the_scheduler_pod() -> None:
    scheduler = _pod_spec(_one(BASE / "deployment.yaml", "Deployment"))
    controller = _pod_spec(_controller_deployment())
    assert controller["securityContext"] == scheduler["securityContext"]
    assert controller["securityContext"]["runAsNonRoot"] is True
    for container in controller["containers"]:
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }


def test_the_scheduler_account_holds_none_of_the_controllers_rights() -> None:
    docs = _rbac_docs()
    scheduler = _bound_rules(SCHEDULER_ACCOUNT, docs)
    assert ("", "pods/binding", "create", "") in scheduler
    assert ("coordination.k8s.io", "leases", "update", "powercap-scheduler") in scheduler
    held = {(g, r) for g, r, _, _ in scheduler}
    for forbidden in (
        ("", "pods/eviction"),
        ("", "secrets"),
        ("", "configmaps"),  # the controller's memory is the only one either may write
    ):
        assert forbidden not in held, forbidden
    # The workloads and the powercap.io resources it reads the demand and the tree from:
    # read only (reshaping ScaledObjects is the controller's).
    read_only = {"keda.sh", "apps", "serving.kserve.io", "powercap.io"}
    writes = {
        (g, r, v) for g, r, v, _ in scheduler if g in read_only and v not in ("list", "watch")
    }
    assert not writes, writes
    # Nor the controller's Lease: the two leaderships stay independent.
    lease = load_config(CONFIG / "powercap.yaml").controller.lease.name
    assert not any(name == lease for *_, name in scheduler)


def test_the_controller_account_holds_exactly_what_the_controller_calls() -> None:
    controller = load_config(CONFIG / "powercap.yaml").controller
    lease, memory = controller.lease.name, controller.state_config_map
    assert _bound_rules(CONTROLLER_ACCOUNT, _rbac_docs()) == {
        ("", "nodes", "list", ""),
        ("", "nodes", "watch", ""),
        ("", "pods", "list", ""),
        ("", "pods", "watch", ""),
        ("", "pods/eviction", "create", ""),
        ("policy", "poddisruptionbudgets", "list", ""),
        ("", "events", "create", ""),
        ("keda.sh", "scaledobjects", "list", ""),
        ("keda.sh", "scaledobjects", "patch", ""),
        ("powercap.io", "nodepowerlimits", "list", ""),
        ("powercap.io", "nodepowerlimits", "create", ""),
        ("powercap.io", "nodepowerlimits", "patch", ""),
        ("coordination.k8s.io", "leases", "create", ""),
        ("coordination.k8s.io", "leases", "get", lease),
        ("coordination.k8s.io", "leases", "update", lease),
        ("", "configmaps", "create", ""),
        ("", "configmaps", "get", memory),
        ("", "configmaps", "update", memory),
        *(
            ("powercap.io", plural, verb, "")
            for plural in ("powerdomains", "powerprofiles", "powerpolicies")
            for verb in ("list", "watch")
        ),
        ("powercap.io", "powerdomains/status", "patch", ""),
    }


def scaled_object_binding_problems(
    namespaces: tuple[str, ...], docs: list[dict[str, Any]]
) -> list[str]:
    """How the bindings of the ScaledObjects role in ``docs`` disagree with the controller's
    ``scaledObjects.namespaces``: none named means a cluster-wide list, so one
    ClusterRoleBinding; named ones mean a RoleBinding in each and no cluster-wide one."""
    bindings = [
        d
        for d in docs
        if d["kind"] in ("RoleBinding", "ClusterRoleBinding")
        and d["roleRef"]["name"] == SCALED_OBJECTS_ROLE
    ]
    cluster_wide = [b for b in bindings if b["kind"] == "ClusterRoleBinding"]
    in_namespaces = {b["metadata"]["namespace"] for b in bindings if b["kind"] == "RoleBinding"}
    problems: list[str] = []
    if not namespaces and not cluster_wide:
        problems.append("every namespace is listed, but no ClusterRoleBinding allows it")
    if namespaces and cluster_wide:
        problems.append(f"only {', '.join(namespaces)} are listed, yet the binding is cluster-wide")
    if namespaces and in_namespaces != set(namespaces):
        problems.append(f"RoleBindings in {sorted(in_namespaces)}, namespaces {list(namespaces)}")
    return problems


def test_scaled_object_rights_follow_the_configured_namespaces() -> None:
    namespaces = load_config(CONFIG / "powercap.yaml").controller.namespaces
    docs = _rbac_docs()
    assert scaled_object_binding_problems(namespaces, docs) == []
    # The check itself tells the two cases apart: the shipped cluster-wide binding does
    # not fit a config that names namespaces, and per-namespace bindings do.
    assert scaled_object_binding_problems(("llm",), docs)
    per_namespace = [
        d
        for d in docs
        if not (d["kind"] == "ClusterRoleBinding" and d["metadata"]["name"] == SCALED_OBJECTS_ROLE)
    ] + [
        {
            "kind": "RoleBinding",
            "metadata": {"name": SCALED_OBJECTS_ROLE, "namespace": "llm"},
            "roleRef": {"kind": "ClusterRole", "name": SCALED_OBJECTS_ROLE},
        }
    ]
    assert scaled_object_binding_problems(("llm",), per_namespace) == []
    assert scaled_object_binding_problems((), per_namespace)


# --- runbooks and the dashboard's job variable ------------------------------------------------
RUNBOOKS = REPO / "docs" / "runbooks.md"


def _github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces
    as hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def test_every_alert_links_a_runbook_section_that_exists() -> None:
    import tomllib

    source = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["urls"]["Source"]
    prefix = f"{source}/blob/main/docs/runbooks.md#"
    anchors = {
        _github_anchor(line.lstrip("#"))
        for line in RUNBOOKS.read_text().splitlines()
        if line.startswith("## ")
    }
    rule = _one(REPO / "manifests" / "monitoring" / "prometheusrule.yaml", "PrometheusRule")
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert alerts
    for alert in alerts:
        url = alert["annotations"].get("runbook_url", "")
        assert url.startswith(prefix), (alert["alert"], url)
        anchor = url.removeprefix(prefix)
        assert anchor in anchors, f"{alert['alert']}: no section #{anchor} in docs/runbooks.md"
        assert anchor == _github_anchor(alert["alert"]), alert["alert"]


def test_every_dashboard_query_selects_the_job_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert "job" in variables and variables["job"]["multi"] and variables["job"]["includeAll"]
    for expr in _dashboard_exprs():
        selectors = re.findall(r"\b(?:powercap|scheduler)_[a-z_]+\{([^}]*)\}|\bup\{([^}]*)\}", expr)
        assert selectors, expr
        for groups in selectors:
            assert 'job=~"$job"' in "".join(groups), expr
    # kube-scheduler's own metrics are on the dashboard
    shown = " ".join(_dashboard_exprs())
    for metric in (
        "scheduler_pending_pods",
        "scheduler_schedule_attempts_total",
        "scheduler_scheduling_attempt_duration_seconds_bucket",
        "scheduler_framework_extension_point_duration_seconds_bucket",
    ):
        assert metric in shown, metric


def test_the_resources_kustomization_applies_the_shipped_resources() -> None:
    """manifests/resources applies config/resources.yaml, the tree the shipped config reads
    with resources.enabled (a copy: kustomize reads nothing outside its directory)."""
    directory = REPO / "manifests" / "resources"
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["resources.yaml"]
    assert (directory / "resources.yaml").read_bytes() == (
        CONFIG / "resources.yaml"
    ).read_bytes(), (
        "manifests/resources/resources.yaml differs from config/resources.yaml: "
        "cp config/resources.yaml manifests/resources/resources.yaml"
    )
    assert load_config(CONFIG / "powercap.yaml").resources.enabled
