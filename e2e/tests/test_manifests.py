"""Every YAML file in ``manifests/`` and ``config/`` is accepted by what really reads it.

One throwaway cluster (the pinned kube-apiserver) with the pinned upstream CRDs installed
(:mod:`e2e.crds`); then each file takes one route: kustomize and server-side dry-run, a
plain dry-run, pod admission for the Deployments' pod templates, the component that reads
a ``config/`` file (kube-scheduler, the extender's config loader, the scenario loader), the
ConfigMap that carries it, and ``promtool`` for the rules and the dashboard's queries.
A missing tool or CRD fails the test, naming ``make tools``; nothing is skipped.

Each route in full: docs/deploy.md, "How the manifests are tested".
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import crds, toolchain
from e2e.cluster import TEST_LOG_DIR, binary, cluster
from e2e.kubectl import Kubectl
from extender.config.loading import config_from_data, load_config
from placement.scenario.files import load_problem

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
MONITORING = MANIFESTS / "monitoring"
CONFIG = REPO / "config"
NAMESPACE = "powercap-system"
EXAMPLES_NAMESPACE = "default"
KUSTOMIZATION = "kustomization.yaml"
ESTABLISHED_TIMEOUT_S = 60.0


def _yaml_files(root: Path, suffixes: tuple[str, ...] = (".yaml", ".yml")) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in suffixes and p.is_file())


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def kustomize_dirs() -> list[Path]:
    """Directories under ``manifests/`` built with kustomize."""
    return sorted(p.parent for p in MANIFESTS.rglob(KUSTOMIZATION))


def _inside_kustomization(path: Path) -> bool:
    return any(path.is_relative_to(d) for d in kustomize_dirs())


def plain_manifests() -> list[Path]:
    """YAML files under ``manifests/`` that are applied as they are (no kustomization)."""
    return [p for p in _yaml_files(MANIFESTS) if not _inside_kustomization(p)]


def kustomization_inputs(directory: Path) -> set[Path]:
    """Files a kustomization names: its ``resources`` that are files, and generator files
    (``name=path`` or plain ``path``)."""
    spec: dict[str, Any] = yaml.safe_load((directory / KUSTOMIZATION).read_text()) or {}
    named: set[Path] = set()
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_file():
            named.add(path)
    for generator in spec.get("configMapGenerator", []) + spec.get("secretGenerator", []):
        for entry in generator.get("files", []):
            named.add((directory / str(entry).split("=", 1)[-1]).resolve())
    return named


@dataclass
class Api(Kubectl):
    """kubectl against the test cluster."""

    def dry_run(self, what: str, manifest: str, namespace: str | None) -> str:
        """``kubectl apply --dry-run=server`` of ``manifest`` (into ``namespace`` when given,
        else where each object says, as ``kubectl apply -k`` does); fails the test, naming
        ``what``, on an error or on any warning from the server."""
        where = [f"--namespace={namespace}"] if namespace else []
        proc = self.run(
            "apply",
            "--dry-run=server",
            "--validate=strict",
            *where,
            "-f",
            "-",
            stdin=manifest,
            check=False,
        )
        assert proc.returncode == 0, f"{what} rejected by the API server:\n{proc.stderr}"
        warnings = [line for line in proc.stderr.splitlines() if "Warning" in line]
        assert not warnings, f"{what}: the API server warned:\n" + "\n".join(warnings)
        return proc.stdout


def _install_crds(api: Api, files: list[Path]) -> None:
    names = []
    for path in files:
        # Server-side: the KServe CRD is too big for client-side apply's annotation.
        api.run("apply", "--server-side", "-f", str(path))
        names.append(str(yaml.safe_load(path.read_text())["metadata"]["name"]))
    deadline = time.monotonic() + ESTABLISHED_TIMEOUT_S
    for name in names:
        query = '{.status.conditions[?(@.type=="Established")].status}'
        while api.run("get", "crd", name, "-o", f"jsonpath={query}").stdout != "True":
            assert time.monotonic() < deadline, f"CRD {name} not Established after 60 s"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def api() -> Iterator[Api]:
    """A cluster with the pinned CRDs installed and the ``powercap-system`` Namespace of
    ``manifests/base`` and ``powercap-agent`` of ``manifests/agent`` created (objects cannot
    be dry-run into a namespace that does not exist)."""
    kubectl = binary("kubectl")
    binary("kube-scheduler")
    crd_files = crds.installed(toolchain.cache_root())
    with cluster(TEST_LOG_DIR, prefix="powercap-manifests") as c:
        a = Api(c, kubectl)
        _install_crds(a, crd_files)
        a.run("apply", "-f", str(MANIFESTS / "base" / "namespace.yaml"))
        a.run("apply", "-f", str(MANIFESTS / "agent" / "namespace.yaml"))
        yield a


def test_every_manifest_file_is_checked() -> None:
    """No YAML (or JSON) file in a kustomization directory escapes the dry-run by not being
    named."""
    assert kustomize_dirs(), "no kustomization under manifests/"
    unnamed: list[str] = []
    for directory in kustomize_dirs():
        named = kustomization_inputs(directory)
        for path in _yaml_files(directory, (".yaml", ".yml", ".json")):
            if path.name == KUSTOMIZATION or _inside_nested(path, directory):
                continue
            if path.resolve() not in named:
                unnamed.append(_rel(path))
    assert not unnamed, f"YAML files no kustomization names (so never checked): {unnamed}"


def _inside_nested(path: Path, directory: Path) -> bool:
    """Whether ``path`` belongs to a kustomization below ``directory``."""
    return any(d != directory and path.is_relative_to(d) for d in kustomize_dirs())


@pytest.mark.parametrize("directory", kustomize_dirs(), ids=_rel)
def test_kustomization_accepted(api: Api, directory: Path) -> None:
    built = api.run("kustomize", str(directory)).stdout
    objects = [d for d in yaml.safe_load_all(built) if d]
    assert objects, f"{_rel(directory)} builds to nothing"
    out = api.dry_run(f"kubectl kustomize {_rel(directory)}", built, None)
    # One line per object: a kustomization that silently dropped one would show here.
    assert len(out.strip().splitlines()) == len(objects), out


@pytest.mark.parametrize("path", plain_manifests(), ids=_rel)
def test_manifest_accepted(api: Api, path: Path) -> None:
    api.dry_run(_rel(path), path.read_text(), EXAMPLES_NAMESPACE)


def test_pod_templates_pass_pod_admission(api: Api) -> None:
    """A Deployment's template is only admitted when its ReplicaSet creates pods: dry-run
    the pods now, so Pod Security and the priority class are judged by the test."""
    built = api.run("kustomize", str(MANIFESTS / "base")).stdout
    objects = [d for d in yaml.safe_load_all(built) if d]
    # Pod admission looks the ServiceAccount up: create those for real (the cluster is ours).
    accounts = [d for d in objects if d["kind"] == "ServiceAccount"]
    api.run("apply", "-f", "-", stdin=yaml.safe_dump_all(accounts))
    deployments = [d for d in objects if d["kind"] == "Deployment"]
    assert deployments
    for deployment in deployments:
        template = deployment["spec"]["template"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {**template["metadata"], "name": deployment["metadata"]["name"]},
            "spec": template["spec"],
        }
        namespace = deployment["metadata"].get("namespace", NAMESPACE)
        api.dry_run(
            f"the pod template of Deployment {deployment['metadata']['name']}",
            yaml.safe_dump(pod),
            namespace,
        )


def _promtool_check(groups: list[dict[str, Any]], work: Path) -> None:
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    assert Path(promtool).exists(), "promtool is missing: install Prometheus with `make tools`"
    rules = work / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": groups}))
    proc = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, f"promtool check rules:\n{proc.stdout}\n{proc.stderr}"


def test_prometheus_rules_pass_promtool(tmp_path: Path) -> None:
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    _promtool_check(rule["spec"]["groups"], tmp_path)


def test_dashboard_queries_pass_promtool(tmp_path: Path) -> None:
    """Every query of the Grafana dashboard parses, checked as a recording rule."""
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    targets = [t for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert targets
    rules = [
        {"record": f"powercap:dashboard_query:{i}", "expr": t["expr"]}
        for i, t in enumerate(targets)
    ]
    _promtool_check([{"name": "grafana-dashboard", "rules": rules}], tmp_path)


def config_files() -> list[Path]:
    return _yaml_files(CONFIG)


def _tls_files(config: dict[str, Any], work: Path) -> None:
    """Point each extender's ``tlsConfig`` files at certificates made here: kube-scheduler
    opens them when it reads the file, and the paths are those of a deployed pod."""
    import trustme

    for i, extender in enumerate(config.get("extenders") or []):
        tls = extender.get("tlsConfig")
        if not tls:
            continue
        ca = trustme.CA()
        client = ca.issue_cert("kube-scheduler")
        made = {
            "caFile": ca.cert_pem.bytes(),
            "certFile": client.cert_chain_pems[0].bytes(),
            "keyFile": client.private_key_pem.bytes(),
        }
        for key, pem in made.items():
            if key in tls:
                target = work / f"extender-{i}-{key}.pem"
                target.write_bytes(pem)
                tls[key] = str(target)


def _check_scheduler_config(api: Api, path: Path) -> None:
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    config.setdefault("clientConnection", {})["kubeconfig"] = str(api.cluster.kubeconfig)
    work = api.cluster.run_dir / f"scheduler-config-{path.stem}"
    work.mkdir(exist_ok=True)
    _tls_files(config, work)
    given, written = work / "in.yaml", work / "out.yaml"
    given.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [
            str(binary("kube-scheduler")),
            f"--config={given}",
            f"--write-config-to={written}",
            "--secure-port=0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"kube-scheduler rejects {_rel(path)}:\n{proc.stderr}"
    assert yaml.safe_load(written.read_text())["kind"] == "KubeSchedulerConfiguration"


def _check_profile(path: Path) -> None:
    minimal = {
        "apiVersion": "powercap.io/v1alpha1",
        "kind": "PowercapConfig",
        "domains": [{"name": "site", "cap": 1}],
        "profileFiles": [path.name],
    }
    config = config_from_data(minimal, path.parent, _rel(path))
    assert config.profiles, f"{_rel(path)} defines no profile"


@pytest.mark.parametrize("path", config_files(), ids=_rel)
def test_config_file_valid(api: Api, path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict) and "kind" in doc, f"{_rel(path)}: no kind, no route"
    kind = doc["kind"]
    if kind == "KubeSchedulerConfiguration":
        _check_scheduler_config(api, path)
    elif kind == "PowercapConfig":
        load_config(path)
    elif kind == "PowerProfile":
        _check_profile(path)
    elif kind == "Scenario":
        load_problem(path)
    else:  # not one of our kinds: an API object
        api.dry_run(_rel(path), path.read_text(), EXAMPLES_NAMESPACE)


@pytest.mark.parametrize("path", config_files(), ids=_rel)
def test_config_file_as_configmap(api: Api, path: Path) -> None:
    name = "config-" + "-".join(path.relative_to(CONFIG).with_suffix("").parts).lower()
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name.replace("_", "-").replace(".", "-")},
        "data": {path.name: path.read_text()},
    }
    api.dry_run(f"{_rel(path)} as a ConfigMap", yaml.safe_dump(configmap), NAMESPACE)


PRIORITY_KEY = "powercap.io/priority"
SETTERS_GROUP = "powercap.io:priority-setters"
POLICY_TIMEOUT_S = 30.0


def _pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "server", "image": "registry.invalid/x:0"}]},
    }


def _deployment(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, **labels}},
                "spec": {"containers": [{"name": "server", "image": "registry.invalid/x:0"}]},
            },
        },
    }


def _cronjob(name: str, annotations: dict[str, str]) -> dict[str, Any]:
    template = {
        "metadata": {"annotations": annotations},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "job", "image": "registry.invalid/x:0"}],
        },
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name},
        "spec": {"schedule": "0 * * * *", "jobTemplate": {"spec": {"template": template}}},
    }


def test_only_priority_setters_may_set_the_priority_label(api: Api) -> None:
    """``manifests/base/admission.yaml`` applied for real: a tenant (RBAC ``edit`` in a
    namespace) may not set ``powercap.io/priority`` on a pod, a Deployment's template or a
    CronJob's (label or annotation), nor change it on a pod; a member of the setters' group
    may, kube-controller-manager creates the pods of a Deployment whose template carries it,
    and the tenant may still update such a pod, or remove the label."""
    api.run("apply", "-f", str(MANIFESTS / "base" / "admission.yaml"))
    ns = EXAMPLES_NAMESPACE
    api.run("create", "rolebinding", "tenant-edit", "--clusterrole=edit", "--user=tenant", "-n", ns)
    api.run(
        "create", "rolebinding", "platform-edit", "--clusterrole=edit", "--user=platform", "-n", ns
    )
    tenant = ["--as=tenant"]
    platform = ["--as=platform", f"--as-group={SETTERS_GROUP}"]

    def create(who: list[str], obj: dict[str, Any], dry: bool = True) -> tuple[bool, str]:
        flags = ["--dry-run=server"] if dry else []
        proc = api.run(
            *who, "create", *flags, "-n", ns, "-f", "-", stdin=yaml.safe_dump(obj), check=False
        )
        return proc.returncode == 0, proc.stderr

    def refused_once_active(obj: dict[str, Any], policy: str) -> str:
        # The API server enforces each new policy once its informers have it: wait for
        # every one of the three, not only the first.
        deadline = time.monotonic() + POLICY_TIMEOUT_S
        while (answer := create(tenant, obj))[0]:
            assert time.monotonic() < deadline, f"{policy} never refused the tenant"
            time.sleep(0.2)
        assert policy in answer[1], answer
        return answer[1]

    claimed = _pod("claims-priority", {PRIORITY_KEY: "999"})
    refused = refused_once_active(claimed, "powercap-priority-pods")
    assert "PriorityClass" in refused, refused
    refused_once_active(_deployment("claims", {PRIORITY_KEY: "999"}), "powercap-priority-templates")
    refused_once_active(_cronjob("claims", {PRIORITY_KEY: "999"}), "powercap-priority-cronjobs")
    # Without the key the tenant is not bothered.
    assert create(tenant, _pod("plain", {"app": "x"})) == (True, "")

    # A priority setter may; kube-controller-manager then creates the pod from the template.
    ok, err = create(platform, _deployment("approved", {PRIORITY_KEY: "999"}), dry=False)
    assert ok, err
    assert create(platform, _cronjob("approved", {PRIORITY_KEY: "999"}))[0]
    selector = ["-n", ns, "-l", "app=approved", "-o", "jsonpath={.items[*].metadata.name}"]
    deadline = time.monotonic() + POLICY_TIMEOUT_S
    while not (names := api.run("get", "pods", *selector).stdout.split()):
        assert time.monotonic() < deadline, "kube-controller-manager created no pod"
        time.sleep(0.2)
    (pod,) = names
    # The tenant may update the pod as long as the label stays as it is ...
    api.run(*tenant, "label", "pod", pod, "-n", ns, "owner=tenant")
    # ... not change it ...
    changed = api.run(
        *tenant, "label", "pod", pod, "-n", ns, f"{PRIORITY_KEY}=5000", "--overwrite", check=False
    )
    assert changed.returncode != 0 and "powercap-priority-pods" in changed.stderr, changed.stderr
    # ... and may drop it, which only lowers the pod's claim.
    api.run(*tenant, "label", "pod", pod, "-n", ns, f"{PRIORITY_KEY}-")
