"""The Helm chart (``charts/powercap``) with the pinned helm: lint, render, the schema's
verdicts, server-side dry-run against the pinned kube-apiserver with the pinned CRDs, and
the same objects as the kustomize base.

``helm`` and ``kubectl`` come from the toolchain cache (``make tools``); a missing one fails
the test naming ``make tools``, nothing is skipped. The comparison with ``manifests/base``
(plus ``manifests/monitoring``) holds every field of every object equal once the differences
that are the chart's by design are taken out; :func:`normalise` lists them.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.cluster import TEST_LOG_DIR, binary
from e2e.tests.test_manifests import NAMESPACE, Api, install_crds, powercap_crds
from e2e.tests.test_manifests import api as api  # the cluster fixture, shared
from extender.config.loading import load_config
from extender.webhook.settings import Limits
from powercap.commands.agent import agent as agent_command

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "powercap"
RELEASE = "powercap"
AGENT_NAMESPACE = "powercap-agent"
MONITORING_ON = (
    "monitoring.serviceMonitor.enabled=true",
    "monitoring.prometheusRule.enabled=true",
    "monitoring.dashboard.enabled=true",
    "monitoring.kubeScheduler.enabled=true",
)
POWER_RESOURCES = "powerResources.create=true"
# Every switch on: the monitoring objects, kube-scheduler's metrics, the agent (the CRDs are
# on by default).
EVERYTHING = (*MONITORING_ON, "agent.enabled=true")
# Renders the dry-run covers: every switch on, the extender apart over mTLS, the controller
# off with an image by digest, the agent with its other settings and without the CRDs.
VARIANTS: dict[str, tuple[str, ...]] = {
    "everything": EVERYTHING,
    "mtls": (*EVERYTHING, "extender.tls.enabled=true"),
    "no-controller": (
        "controller.enabled=false",
        "image.repository=registry.example/powercap",
        "image.digest=sha256:" + "0" * 64,
    ),
    "agent-settings": (
        "crds.install=false",
        "agent.enabled=true",
        # the namespace exists (the fixture's, as `kubectl label` would leave it)
        "agent.createNamespace=false",
        "agent.privileged=true",
        "agent.dryRun=true",
        "agent.restoreOnExit=false",
        "agent.resyncSeconds=12",
        "agent.metricsPort=9100",
        "agent.runtimeClassName=",
        "agent.image.repository=registry.example/powercap-agent",
        "agent.image.digest=sha256:" + "1" * 64,
        "agent.admissionPolicy.enabled=false",
        "agent.networkPolicy.enabled=false",
    ),
    # The example's PowerDomains, PowerProfiles and PowerPolicies, the CRDs installed apart.
    "power-resources": ("crds.install=false", POWER_RESOURCES),
}
# Labels Helm charts carry and kustomize's `labels:` does not (or only on some objects).
STANDARD_LABELS = {
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
}
# Annotations the chart adds: Helm's, keeping the CRDs on uninstall (crds.keep).
HELM_ANNOTATIONS = {"helm.sh/resource-policy"}
# kustomize's configMapGenerator appends a hash of the content to a ConfigMap's name.
HASHED = re.compile(r"^(?P<name>.+)-[a-z0-9]{10}$")
# The extender's bounds: the chart passes each as a flag, the base leaves them at their defaults.
LIMIT_FLAGS = {
    "--max-body-bytes": Limits.max_body_bytes,
    "--max-candidates": Limits.max_candidates,
    "--read-timeout": Limits.read_timeout_s,
    "--max-concurrent": Limits.max_concurrent,
    "--max-queued": Limits.max_queued,
    "--max-binds": Limits.max_binds,
    "--inline-max-bytes": Limits.inline_max_bytes,
    # the agent's: the chart passes it, the DaemonSet of manifests/agent runs with the default
    "--resync": inspect.signature(agent_command).parameters["resync"].default,
}
HELM_HOMES = ("CACHE", "CONFIG", "DATA")
NVIDIA_RUNTIME_CLASS = {
    "apiVersion": "node.k8s.io/v1",
    "kind": "RuntimeClass",
    "metadata": {"name": "nvidia"},
    "handler": "nvidia",
}
POWERCAP_IMAGE = re.compile(r"^(?:.+/)?powercap-scheduler(?P<ref>[:@].+)$")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # Helm's cache, config and data beside the e2e logs, never in the home directory.
    home = TEST_LOG_DIR / "helm-home"
    env = {**os.environ, **{f"HELM_{p}_HOME": str(home / p.lower()) for p in HELM_HOMES}}
    proc = subprocess.run(
        [str(binary("helm")), *args], capture_output=True, text=True, check=False, env=env
    )
    if check:
        assert proc.returncode == 0, f"`helm {' '.join(args)}` failed:\n{proc.stderr}"
    return proc


def render(*sets: str, values: Path | None = None) -> str:
    args = ["template", RELEASE, str(CHART), f"--namespace={NAMESPACE}"]
    args += [f"--set={s}" for s in sets]
    if values is not None:
        args.append(f"--values={values}")
    return helm(*args).stdout


def objects(manifest: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(manifest) if d]


def key(obj: dict[str, Any]) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return (obj["kind"], meta["name"], meta.get("namespace", ""))


def test_helm_is_the_pinned_version() -> None:
    out = helm("version", "--template={{ .Version }}").stdout
    assert out == "v4.3.2", out


def test_helm_lint_passes() -> None:
    for sets in VARIANTS.values():
        proc = helm("lint", "--strict", str(CHART), *[f"--set={s}" for s in sets])
        assert "0 chart(s) failed" in proc.stdout, proc.stdout


def test_every_template_renders_in_some_variant() -> None:
    """No template escapes the dry-run below by rendering nothing in every variant."""
    sources: set[str] = set()
    for sets in VARIANTS.values():
        sources |= set(re.findall(r"^# Source: powercap/(templates/\S+)$", render(*sets), re.M))
    templates = {p.relative_to(CHART).as_posix() for p in (CHART / "templates").glob("*.yaml")}
    assert templates - sources == set(), f"templates no variant renders: {templates - sources}"


def test_a_bad_config_value_fails_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"config": {"domains": [{"name": "site", "cap": "lots"}]}}))
    for command in ("template", "lint"):
        args = [command, *([RELEASE] if command == "template" else []), str(CHART)]
        proc = helm(*args, f"--values={bad}", check=False)
        assert proc.returncode != 0, f"helm {command} accepted cap: lots"
        out = proc.stdout + proc.stderr
        assert "/config/domains/0/cap" in out and "want number" in out, out


def test_an_unknown_config_key_fails_naming_it() -> None:
    proc = helm(
        "template",
        RELEASE,
        str(CHART),
        "--set=config.domains[0].name=site",
        "--set=config.domains[0].cap=1000",
        "--set=config.headrom=0.1",
        check=False,
    )
    assert proc.returncode != 0
    assert "headrom" in proc.stderr, proc.stderr


def test_a_config_given_is_used_with_the_release_settings(tmp_path: Path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text(
        yaml.safe_dump(
            {
                "scheduler": {"name": "gpu-power"},
                "controller": {"dryRun": False},
                "config": {"domains": [{"name": "hall", "cap": 500000}]},
            }
        )
    )
    rendered = objects(render(values=mine))
    (cm,) = [o for o in rendered if key(o) == ("ConfigMap", "powercap-config", NAMESPACE)]
    config = yaml.safe_load(cm["data"]["powercap.yaml"])
    assert config["domains"] == [{"name": "hall", "cap": 500000}]
    assert config["apiVersion"] == "powercap.io/v1alpha1" and config["kind"] == "PowercapConfig"
    assert config["scheduler"]["name"] == "gpu-power"
    assert config["controller"] == {"dryRun": False, "lease": {"namespace": NAMESPACE}}
    (sched,) = [o for o in rendered if key(o)[1] == "powercap-scheduler-config"]
    kube = yaml.safe_load(sched["data"]["kube-scheduler.yaml"])
    assert [p["schedulerName"] for p in kube["profiles"]] == ["gpu-power"]
    assert kube["leaderElection"]["resourceName"] == "gpu-power"
    # the example's profiles belong to the example config only
    (profiles,) = [o for o in rendered if key(o)[1] == "powercap-profiles"]
    assert not profiles.get("data")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_chart_is_accepted_by_the_api_server(api: Api, variant: str) -> None:
    manifest = render(*VARIANTS[variant])
    rendered = objects(manifest)
    if POWER_RESOURCES in VARIANTS[variant]:
        # Their kinds exist once the CRDs do; removed after, so that the release installed
        # below owns them (Helm refuses to adopt a CRD another client created).
        install_crds(api, powercap_crds())
        try:
            out = api.dry_run(f"helm template ({variant})", manifest, None)
        finally:
            names = [f"crd/{p.name.removesuffix('.yaml')}" for p in powercap_crds()]
            api.run("delete", *names, "--wait=true", "--timeout=60s")
    else:
        out = api.dry_run(f"helm template ({variant})", manifest, None)
    assert len(out.strip().splitlines()) == len(rendered), out
    if POWER_RESOURCES in VARIANTS[variant]:
        kinds = {o["kind"] for o in rendered}
        assert {"PowerDomain", "PowerProfile", "PowerPolicy"} <= kinds, kinds
    # Pod admission (Pod Security: `restricted` in the release namespace, `privileged` in the
    # agent's; the priority class; the RuntimeClass) judges pods, not Deployments or
    # DaemonSets: dry-run each template as a pod under its real ServiceAccount, in its
    # namespace. The nvidia RuntimeClass is the GPU Operator's on a real cluster.
    accounts = [o for o in rendered if o["kind"] == "ServiceAccount"]
    api.run("apply", "-f", "-", stdin=yaml.safe_dump_all([*accounts, NVIDIA_RUNTIME_CLASS]))
    workloads = [o for o in rendered if o["kind"] in ("Deployment", "DaemonSet")]
    assert workloads
    for workload in workloads:
        template = workload["spec"]["template"]
        meta = workload["metadata"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {**template["metadata"], "name": meta["name"]},
            "spec": template["spec"],
        }
        api.dry_run(
            f"the pod template of {workload['kind']} {meta['name']} ({variant})",
            yaml.safe_dump(pod),
            meta["namespace"],
        )


# What the chart renders with EVERYTHING on (and the CRDs, on by default) and the example's
# powercap.io objects.
KUSTOMIZED = ("base", "monitoring", "monitoring/kube-scheduler", "crds", "agent", "resources")


def _kustomized() -> list[dict[str, Any]]:
    kubectl = str(binary("kubectl"))
    built: list[dict[str, Any]] = []
    for directory in KUSTOMIZED:
        proc = subprocess.run(
            [kubectl, "kustomize", str(REPO / "manifests" / directory)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, f"kubectl kustomize manifests/{directory}:\n{proc.stderr}"
        built += objects(proc.stdout)
    return built


def _rename(node: Any, names: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: _rename(v, names) for k, v in node.items()}
    if isinstance(node, list):
        return [_rename(v, names) for v in node]
    if isinstance(node, str):
        return names.get(node, node)
    return node


def _strip_labels(node: Any) -> Any:
    """``node`` without the standard labels (anywhere a ``labels`` map is) and without the
    chart's ``checksum/*`` pod annotations and Helm's resource policy; empty maps left
    behind go too."""
    if isinstance(node, list):
        return [_strip_labels(v) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k == "labels" and isinstance(v, dict):
            v = {n: x for n, x in v.items() if n not in STANDARD_LABELS}
        elif k == "annotations" and isinstance(v, dict):
            v = {
                n: x
                for n, x in v.items()
                if not n.startswith("checksum/") and n not in HELM_ANNOTATIONS
            }
        else:
            v = _strip_labels(v)
        if v != {}:
            out[k] = v
    return out


def _container(c: dict[str, Any]) -> dict[str, Any]:
    """The image up to its registry (the one setting that differs), the default pull policy
    (IfNotPresent for a pinned tag) made explicit, the extender's bounds and the agent's
    resync taken out after checking that they are the defaults the manifests run with."""
    c = dict(c)
    if m := POWERCAP_IMAGE.match(c["image"]):
        c["image"] = "powercap-scheduler" + m["ref"]
    c.setdefault("imagePullPolicy", "IfNotPresent")
    command = []
    for arg in c.get("command", []):
        flag, _, value = arg.partition("=")
        if flag in LIMIT_FLAGS:
            assert float(value) == LIMIT_FLAGS[flag], f"{arg}: not the default the base runs with"
            continue
        command.append(arg)
    c["command"] = command
    return c


def _data(data: dict[str, str]) -> dict[str, Any]:
    """ConfigMap data parsed (YAML or JSON): the chart writes documents it has read, so the
    text is not the same, the content must be."""
    return {name: yaml.safe_load(text) for name, text in data.items()}


def normalise(obj: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """What must agree between the chart and kustomize: everything, except the standard
    labels, the checksum annotations, Helm's resource policy on the CRDs, the ConfigMap name
    hashes, the powercap image's registry, the explicit default pull policy, extender bounds
    and agent resync, and the text (not the content) of ConfigMap data."""
    obj = _strip_labels(_rename(obj, names))
    if obj["kind"] in ("Deployment", "DaemonSet"):
        spec = obj["spec"]["template"]["spec"]
        spec["containers"] = [_container(c) for c in spec["containers"]]
    if obj["kind"] == "ConfigMap":
        obj["data"] = _data(obj.get("data", {}))
    return obj


@pytest.fixture(scope="module")
def both() -> Iterator[tuple[dict[tuple[str, str, str], Any], dict[tuple[str, str, str], Any]]]:
    kustomized = _kustomized()
    names = {
        o["metadata"]["name"]: m["name"]
        for o in kustomized
        if o["kind"] == "ConfigMap" and (m := HASHED.match(o["metadata"]["name"]))
    }
    base = {key(o): normalise(o, names) for o in kustomized}
    base = {(k[0], names.get(k[1], k[1]), k[2]): v for k, v in base.items()}
    chart = {key(o): normalise(o, {}) for o in objects(render(*EVERYTHING, POWER_RESOURCES))}
    yield base, chart


def test_the_chart_renders_the_objects_of_the_kustomize_base(
    both: tuple[dict[tuple[str, str, str], Any], dict[tuple[str, str, str], Any]],
) -> None:
    base, chart = both
    # The release namespace is Helm's to create (`--create-namespace`), not the chart's; the
    # agent's is the chart's (agent.createNamespace), with its Pod Security labels.
    assert set(base) - set(chart) == {("Namespace", NAMESPACE, "")}
    assert set(chart) - set(base) == set()
    kinds = {k[0] for k in chart}
    assert {"CustomResourceDefinition", "DaemonSet", "ServiceMonitor"} <= kinds, kinds


def test_each_object_has_the_same_content(
    both: tuple[dict[tuple[str, str, str], Any], dict[tuple[str, str, str], Any]],
) -> None:
    base, chart = both
    differing: list[str] = []
    for k in sorted(set(base) & set(chart)):
        want = yaml.safe_dump(base[k], sort_keys=True).splitlines()
        got = yaml.safe_dump(chart[k], sort_keys=True).splitlines()
        if want != got:
            diff = difflib.unified_diff(want, got, "kustomize", "chart", lineterm="")
            differing.append(f"{k}:\n" + "\n".join(diff))
    assert not differing, "the chart and manifests/ differ:\n" + "\n\n".join(differing)


def test_install_upgrade_uninstall(api: Api) -> None:
    """A real release on the test cluster: installed into a namespace Helm creates, upgraded
    (a changed config rolls the pods through their checksum annotation; the agent added, in
    the privileged namespace the chart makes), uninstalled without leaving an object behind
    but the CRDs."""
    namespace = "powercap-release"
    agent_namespace = "powercap-agent-release"
    cluster = [
        f"--kubeconfig={api.cluster.kubeconfig}",
        f"--namespace={namespace}",
    ]

    def annotations() -> dict[str, str]:
        got = api.run(
            "get", "deployment", "powercap-scheduler", f"--namespace={namespace}", "-o", "yaml"
        ).stdout
        found: dict[str, str] = yaml.safe_load(got)["spec"]["template"]["metadata"]["annotations"]
        return found

    helm("install", RELEASE, str(CHART), "--create-namespace", *cluster)
    status = helm("status", RELEASE, *cluster).stdout
    assert "STATUS: deployed" in status, status
    before = annotations()
    helm(
        "upgrade",
        RELEASE,
        str(CHART),
        "--set=controller.dryRun=false",
        f"--set={POWER_RESOURCES}",
        "--set=agent.enabled=true",
        f"--set=agent.namespace={agent_namespace}",
        *cluster,
    )
    labels = api.run(
        "get", "namespace", agent_namespace, "-o", "jsonpath={.metadata.labels}"
    ).stdout
    assert '"pod-security.kubernetes.io/enforce":"privileged"' in labels, labels
    api.run("get", "daemonset", "powercap-agent", f"--namespace={agent_namespace}")
    config = api.run(
        "get",
        "configmap",
        "powercap-config",
        f"--namespace={namespace}",
        "-o",
        "jsonpath={.data.powercap\\.yaml}",
    ).stdout
    assert yaml.safe_load(config)["controller"]["dryRun"] is False
    # The example's tree, made on the upgrade (the first install brought their CRDs).
    domains = api.run("get", "powerdomains", "-o", "name").stdout.split()
    assert len(domains) == 9 and "powerdomain.powercap.io/rack-1-01" in domains, domains
    policies = api.run("get", "powerpolicies", f"--namespace={namespace}", "-o", "name").stdout
    assert "powerpolicy.powercap.io/chat-eu" in policies, policies
    after = annotations()
    assert after["checksum/config"] != before["checksum/config"]
    assert after["checksum/scheduler-config"] == before["checksum/scheduler-config"]
    helm("uninstall", RELEASE, *cluster)
    selector = f"app.kubernetes.io/instance={RELEASE}"
    # The release's namespace and kube-system (the authentication reader's RoleBinding);
    # other namespaces hold the ServiceAccounts the dry-run test created for real.
    left = "".join(
        api.run(
            "get",
            "all,configmaps,serviceaccounts,roles,rolebindings,networkpolicies,"
            "powerprofiles,powerpolicies",
            f"--namespace={where}",
            f"--selector={selector}",
            "-o",
            "name",
        ).stdout
        for where in (namespace, agent_namespace, "kube-system")
    )
    cluster_left = api.run(
        "get",
        "clusterroles,clusterrolebindings,validatingadmissionpolicies,powerdomains",
        f"--selector={selector}",
        "-o",
        "name",
    ).stdout
    assert not (left + cluster_left).strip(), f"left behind after uninstall:\n{left}{cluster_left}"
    # The agent's namespace is deleted (or being deleted: no namespace controller here).
    gone = api.run(
        "get",
        "namespace",
        agent_namespace,
        "--ignore-not-found",
        "-o",
        "jsonpath={.metadata.deletionTimestamp}",
    ).stdout
    present = api.run("get", "namespace", agent_namespace, "--ignore-not-found", "-o", "name")
    assert gone or not present.stdout.strip(), f"{agent_namespace} left after uninstall"
    # The CRDs stay (crds.keep), and with them every NodePowerLimit of the cluster.
    kept = api.run("get", "crd", f"--selector={selector}", "-o", "name").stdout.split()
    shipped = sorted(
        p.name.removesuffix(".yaml")
        for p in (REPO / "manifests" / "crds").glob("*.powercap.io.yaml")
    )
    assert sorted(kept) == [f"customresourcedefinition.apiextensions.k8s.io/{n}" for n in shipped]
    assert shipped, "no CRD shipped"


def test_prometheus_values_set_the_power_source(tmp_path: Path) -> None:
    """prometheus.url and prometheus.selector replace the config's power.url and
    power.selector; the rest of power: stays the example's."""
    values = tmp_path / "values.yaml"
    selector = {"job": "dcgm", "namespace": "gpu"}
    values.write_text(
        yaml.safe_dump({"prometheus": {"url": "http://prom.obs:9090", "selector": selector}})
    )
    rendered = objects(render(values=values))
    (cm,) = [o for o in rendered if key(o) == ("ConfigMap", "powercap-config", NAMESPACE)]
    power = yaml.safe_load(cm["data"]["powercap.yaml"])["power"]
    example = yaml.safe_load((REPO / "config" / "powercap.yaml").read_text())["power"]
    assert power == {**example, "url": "http://prom.obs:9090", "selector": selector}
    bad = helm("template", "x", str(CHART), "--set=prometheus.url=prom:9090", check=False)
    assert bad.returncode != 0 and "prometheus/url" in bad.stderr, bad.stderr


@pytest.mark.parametrize("given", [False, True], ids=["example", "given"])
def test_the_rendered_config_loads_as_the_extender_reads_it(tmp_path: Path, given: bool) -> None:
    """The config and profile ConfigMaps, written out as the pods mount them, pass the
    extender's loader (what `powercap serve` and `powercap controller` run at start)."""
    values = None
    if given:
        profile = "llama3-70b-chat-eu.yaml"
        values = tmp_path / "values.yaml"
        values.write_text(
            yaml.safe_dump(
                {
                    "config": {
                        "domains": [
                            {"name": "hall-a", "cap": 600000},
                            {"name": "rack-a01", "parent": "hall-a", "cap": 42000},
                        ],
                        "profileFiles": ["profiles/*.yaml"],
                        "services": {"chat-eu": {"profile": "llama3-70b-chat-eu"}},
                    },
                    "profileFiles": {profile: (REPO / "config" / "profiles" / profile).read_text()},
                }
            )
        )
    rendered = {key(o)[1]: o for o in objects(render(values=values)) if o["kind"] == "ConfigMap"}
    mounted = tmp_path / "etc-powercap"
    (mounted / "profiles").mkdir(parents=True)
    config_path = mounted / "powercap.yaml"
    config_path.write_text(rendered["powercap-config"]["data"]["powercap.yaml"])
    for name, text in rendered["powercap-profiles"]["data"].items():
        (mounted / "profiles" / name).write_text(text)
    config = load_config(config_path)
    assert config.scheduler.name == "powercap-scheduler"
    assert config.controller.dry_run is True


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ("agent.namespace=Powercap_Agent", "/agent/namespace"),
        ("agent.metricsPort=0", "/agent/metricsPort"),
        ("agent.resyncSeconds=0", "/agent/resyncSeconds"),
        ("agent.image.digest=latest", "/agent/image/digest"),
        ("agent.privileged=yes", "/agent/privileged"),
        ("agent.nodeSelector.pool=1", "/agent/nodeSelector/pool"),
        ("agent.resync=30", "resync"),
        (
            "monitoring.kubeScheduler.prometheusServiceAccount.namespace=",
            "/monitoring/kubeScheduler/prometheusServiceAccount/namespace",
        ),
        ("extender.limits.inlineMaxBytes=-1", "/extender/limits/inlineMaxBytes"),
        ("crds.install=maybe", "/crds/install"),
    ],
)
def test_a_bad_agent_or_monitoring_value_fails_naming_the_field(setting: str, field: str) -> None:
    for command in ("template", "lint"):
        args = [command, *([RELEASE] if command == "template" else []), str(CHART)]
        proc = helm(*args, "--set=agent.enabled=true", f"--set={setting}", check=False)
        assert proc.returncode != 0, f"helm {command} accepted {setting}"
        out = proc.stdout + proc.stderr
        assert field in out, out


def _agent_container(rendered: list[dict[str, Any]], namespace: str) -> dict[str, Any]:
    (ds,) = [o for o in rendered if key(o) == ("DaemonSet", "powercap-agent", namespace)]
    (container,) = ds["spec"]["template"]["spec"]["containers"]
    found: dict[str, Any] = container
    return found


def test_the_agent_values_reach_its_objects() -> None:
    """Each agent.* value lands where `powercap agent` and the API server read it; the
    namespace everywhere, the admission policy's CEL included."""
    rendered = objects(render(*VARIANTS["agent-settings"], "agent.namespace=gpu-power"))
    kinds = {o["kind"] for o in rendered}
    # no Namespace (agent.createNamespace=false), no CRD, no policy, no NetworkPolicy
    assert "Namespace" not in kinds and "CustomResourceDefinition" not in kinds
    names = {o["metadata"]["name"] for o in rendered}
    assert "powercap-agent-own-node" not in names
    assert not [o for o in rendered if key(o) == ("NetworkPolicy", "powercap-agent", "gpu-power")]
    container = _agent_container(rendered, "gpu-power")
    assert container["image"] == "registry.example/powercap-agent@sha256:" + "1" * 64
    assert container["command"] == [
        "powercap",
        "agent",
        "--metrics-address=0.0.0.0:9100",
        "--no-restore-on-exit",
        "--resync=12",
        "--dry-run",
    ]
    assert container["ports"] == [{"name": "http-metrics", "containerPort": 9100}]
    assert container["securityContext"]["privileged"] is True
    (ds,) = [o for o in rendered if o["kind"] == "DaemonSet"]
    assert "runtimeClassName" not in ds["spec"]["template"]["spec"]
    (binding,) = [o for o in rendered if key(o) == ("ClusterRoleBinding", "powercap-agent", "")]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "powercap-agent", "namespace": "gpu-power"}
    ]

    policy_on = objects(render("agent.enabled=true", "agent.namespace=gpu-power"))
    (policy,) = [
        o
        for o in policy_on
        if key(o) == ("ValidatingAdmissionPolicy", "powercap-agent-own-node", "")
    ]
    (condition,) = policy["spec"]["matchConditions"]
    assert "'system:serviceaccount:gpu-power:powercap-agent'" in condition["expression"]
    (ns,) = [o for o in policy_on if o["kind"] == "Namespace"]
    assert ns["metadata"]["name"] == "gpu-power"
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    # the main image when agent.image is left empty
    main = _agent_container(
        objects(render("agent.enabled=true", "image.repository=registry.example/pc")),
        AGENT_NAMESPACE,
    )
    assert main["image"] == "registry.example/pc:0.1.0"


def test_the_kube_scheduler_metrics_reader_is_bound_to_the_account_given() -> None:
    rendered = objects(
        render(
            "monitoring.kubeScheduler.enabled=true",
            "monitoring.kubeScheduler.prometheusServiceAccount.name=kube-prometheus-stack-prometheus",
            "monitoring.kubeScheduler.prometheusServiceAccount.namespace=observability",
        )
    )
    (binding,) = [
        o for o in rendered if key(o) == ("ClusterRoleBinding", "powercap-metrics-reader", "")
    ]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": "kube-prometheus-stack-prometheus",
            "namespace": "observability",
        }
    ]
    assert ("Service", "powercap-kube-scheduler", NAMESPACE) in {key(o) for o in rendered}


def test_inline_max_bytes_is_passed_to_the_extender() -> None:
    rendered = objects(render("extender.limits.inlineMaxBytes=0"))
    (deployment,) = [
        o for o in rendered if key(o) == ("Deployment", "powercap-scheduler", NAMESPACE)
    ]
    (extender,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "extender"
    ]
    assert "--inline-max-bytes=0" in extender["command"]
