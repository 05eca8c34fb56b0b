"""The node agent's loop on the real kube-apiserver, with the NVML fake for the GPUs.

One throwaway cluster with ``manifests/crds`` and ``manifests/agent`` applied as users apply
them (the CRD, the agent's namespace, ServiceAccount, RBAC and admission policy) and two
fake GPU nodes. Each agent runs :class:`~extender.agent.loop.AgentLoop` in this process with
a token of the agent's ServiceAccount bound to its node (as a DaemonSet pod's projected token
is), never as the admin. The admin plays the controller: it writes a ``NodePowerLimit``, and
the fake's limits change and the status is written; withdrawing the request and stopping the
agent restore the defaults; a fake without root is reported as such. Then the rights: what
the agent's account may and may not do, the admission policy refusing another node's status,
and the DaemonSet's pod passing pod admission. A missing tool fails naming ``make tools``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.cluster import TEST_LOG_DIR, binary, cluster
from e2e.deploy import api_client, wait_established
from e2e.kubectl import Kubectl
from extender.agent.fake import FakeNvml
from extender.agent.kube import KubernetesRequests
from extender.agent.loop import Agent, AgentLoop
from extender.agent.metrics import AgentMetrics
from extender.agent.resource import CRD_NAME

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
AGENT = REPO / "manifests" / "agent"
CRDS = REPO / "manifests" / "crds"
NAMESPACE = "powercap-agent"
ACCOUNT = "powercap-agent"
USER = f"system:serviceaccount:{NAMESPACE}:{ACCOUNT}"
NODES = ("gpu-1", "gpu-2")
TIMEOUT_S = 30.0


@dataclass
class Env(Kubectl):
    def get(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.run("get", CRD_NAME, name, "-o", "json").stdout)
        return out

    def request(self, name: str, spec: dict[str, Any]) -> None:
        obj = {
            "apiVersion": "powercap.io/v1alpha1",
            "kind": "NodePowerLimit",
            "metadata": {"name": name},
            "spec": spec,
        }
        self.run("apply", "--server-side", "-f", "-", stdin=json.dumps(obj))


def wait_for(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not check():
        assert time.monotonic() < deadline, f"not within {TIMEOUT_S:g} s: {what}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    kubectl = binary("kubectl")
    with cluster(TEST_LOG_DIR, prefix="powercap-agent") as c:
        e = Env(c, kubectl)
        e.run("apply", "-k", str(CRDS))
        wait_established(api_client(c.kubeconfig), [CRD_NAME])
        e.run("apply", "-k", str(AGENT))
        for node in NODES:
            e.run(
                "apply",
                "-f",
                "-",
                stdin=yaml.safe_dump(
                    {
                        "apiVersion": "v1",
                        "kind": "Node",
                        "metadata": {
                            "name": node,
                            "labels": {"nvidia.com/gpu.present": "true"},
                            "annotations": {"kwok.x-k8s.io/node": "fake"},
                        },
                    }
                ),
            )
        yield e


def agent_kubeconfig(env: Env, node: str) -> Path:
    """A kubeconfig holding a token of the agent's account bound to ``node``, as the
    projected token of the DaemonSet's pod on that node is."""
    path = env.cluster.run_dir / f"agent-{node}.kubeconfig"
    if path.exists():
        return path
    uid = env.run("get", "node", node, "-o", "jsonpath={.metadata.uid}").stdout
    token = env.run(
        "create",
        "token",
        ACCOUNT,
        f"--namespace={NAMESPACE}",
        "--bound-object-kind=Node",
        f"--bound-object-name={node}",
        f"--bound-object-uid={uid}",
        "--duration=1h",
    ).stdout.strip()
    admin: dict[str, Any] = yaml.safe_load(env.cluster.kubeconfig.read_text())
    context = next(x for x in admin["contexts"] if x["name"] == admin["current-context"])
    server = next(x for x in admin["clusters"] if x["name"] == context["context"]["cluster"])
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kwok", "cluster": server["cluster"]}],
        "users": [{"name": ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": ACCOUNT, "context": {"cluster": "kwok", "user": ACCOUNT}}],
        "current-context": ACCOUNT,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def requests_for(env: Env, node: str) -> KubernetesRequests:
    from kubernetes import config

    loader: Any = config  # the client ships no type information
    api_client = loader.new_client_from_config(config_file=str(agent_kubeconfig(env, node)))
    return KubernetesRequests(api_client, node)


@contextmanager
def running_agent(env: Env, node: str, nvml: FakeNvml) -> Iterator[AgentLoop]:
    agent = Agent(nvml, metrics=AgentMetrics())
    agent.start()
    loop = AgentLoop(agent, requests_for(env, node), resync_s=1, restore_on_exit=True)
    loop.start()
    try:
        yield loop
    finally:
        loop.stop()


def limits(nvml: FakeNvml) -> list[int]:
    return [g.limit_mw for g in nvml.gpus]


def condition(obj: dict[str, Any]) -> dict[str, Any]:
    conditions = (obj.get("status") or {}).get("conditions") or [{}]
    found: dict[str, Any] = conditions[0]
    return found


def test_request_applied_reported_withdrawn_and_restored_on_exit(env: Env) -> None:
    nvml = FakeNvml.of("H100-SXM5-80GB", 2)
    node = NODES[0]
    with running_agent(env, node, nvml) as loop:
        wait_for("the agent's first round", lambda: loop.ready)
        # the controller's write: 300 W each, GPU 1 asked below its 200 W minimum
        env.request(node, {"wattsPerGpu": 300, "gpus": [{"index": 1, "watts": 150}]})
        wait_for("the fake's limits to change", lambda: limits(nvml) == [300_000, 200_000])

        def reported() -> bool:
            obj = env.get(node)
            status = obj.get("status") or {}
            return status.get("observedGeneration") == obj["metadata"]["generation"] and [
                g.get("enforcedWatts") for g in status.get("gpus", [])
            ] == [300, 200]

        wait_for("the status to report the enforced limits", reported)
        obj = env.get(node)
        assert obj["status"]["canSetLimits"] is True
        assert obj["status"]["gpus"][1]["requestedWatts"] == 150
        assert "clamped to 200 W" in obj["status"]["gpus"][1]["message"]
        assert (condition(obj)["status"], condition(obj)["reason"]) == ("True", "Applied")

        # withdrawn: the spec emptied
        env.run(
            "patch",
            CRD_NAME,
            node,
            "--type=merge",
            "-p",
            json.dumps({"spec": {"wattsPerGpu": None, "gpus": None}}),
        )
        wait_for("the defaults to be restored", lambda: limits(nvml) == [700_000, 700_000])
        wait_for("the status to say so", lambda: condition(env.get(node))["reason"] == "Defaults")

        # asked again, then the agent stops (uninstalled, SIGTERM): defaults again
        env.request(node, {"wattsPerGpu": 250})
        wait_for("the limits of the new request", lambda: limits(nvml) == [250_000, 250_000])
    assert limits(nvml) == [700_000, 700_000]


def test_no_permission_is_reported_in_status(env: Env) -> None:
    nvml = FakeNvml.of("A100-SXM4-80GB", 2, settable=False)
    node = NODES[1]
    with running_agent(env, node, nvml):
        env.request(node, {"wattsPerGpu": 300})

        def refused() -> bool:
            return (env.get(node).get("status") or {}).get("canSetLimits") is False

        wait_for("the status to say the agent cannot set limits", refused)
        obj = env.get(node)
        assert condition(obj)["reason"] == "NoPermission"
        assert [g["reason"] for g in obj["status"]["gpus"]] == ["NoPermission"] * 2
        assert [g["enforcedWatts"] for g in obj["status"]["gpus"]] == [400, 400]
    assert nvml.sets == [] and limits(nvml) == [400_000, 400_000]


@pytest.mark.parametrize(
    ("verb", "resource", "allowed"),
    [
        ("get", "nodepowerlimits.powercap.io", True),
        ("watch", "nodepowerlimits.powercap.io", True),
        ("update", "nodepowerlimits.powercap.io/status", True),
        ("update", "nodepowerlimits.powercap.io", False),  # the spec is the controller's
        ("create", "nodepowerlimits.powercap.io", False),
        ("delete", "nodepowerlimits.powercap.io", False),
        ("patch", "nodes", False),
        ("get", "secrets", False),
        ("list", "pods", False),
    ],
)
def test_agent_account_rights(env: Env, verb: str, resource: str, allowed: bool) -> None:
    name, _, sub = resource.partition("/")
    extra = [f"--subresource={sub}"] if sub else []
    proc = env.run("auth", "can-i", f"--as={USER}", verb, name, *extra, check=False)
    assert proc.stdout.strip() == ("yes" if allowed else "no"), (verb, resource, proc.stdout)


def test_agent_cannot_write_another_nodes_status(env: Env) -> None:
    """The admission policy: gpu-1's token may not write gpu-2's status."""
    from kubernetes.client.exceptions import ApiException

    env.request(NODES[1], {"wattsPerGpu": 200})
    other = env.get(NODES[1])
    source = requests_for(env, NODES[0])
    with pytest.raises(ApiException) as refused:
        source.write_status(other, {"canSetLimits": True})
    assert refused.value.status == 403, refused.value
    assert "its own node" in str(refused.value.body)
    # its own node's status it may write
    env.request(NODES[0], {"wattsPerGpu": 200})
    assert source.write_status(env.get(NODES[0]), {"canSetLimits": True})


def test_daemonset_pod_passes_pod_admission(env: Env) -> None:
    """The DaemonSet's pod (root, CAP_SYS_ADMIN, the nvidia RuntimeClass) is admitted in its
    namespace: the pod dry-run as the DaemonSet controller would create it."""
    env.run(
        "apply",
        "-f",
        "-",
        stdin=yaml.safe_dump(
            {
                "apiVersion": "node.k8s.io/v1",
                "kind": "RuntimeClass",
                "metadata": {"name": "nvidia"},
                "handler": "nvidia",
            }
        ),
    )
    ds = yaml.safe_load((AGENT / "daemonset.yaml").read_text())
    template = ds["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**template["metadata"], "name": "powercap-agent-probe"},
        "spec": {**template["spec"], "nodeName": NODES[0]},
    }
    proc = env.run(
        "apply",
        "--dry-run=server",
        f"--namespace={NAMESPACE}",
        "-f",
        "-",
        stdin=yaml.safe_dump(pod),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr
