"""What each ServiceAccount of ``manifests/base`` may and may not do, as the API server says.

One cluster (the pinned kube-apiserver, RBAC authorization on) with KEDA's ScaledObject CRD
and the RBAC objects of ``manifests/base`` applied as users apply them (:mod:`e2e.rbac`).
Then a table of ``kubectl auth can-i --as=system:serviceaccount:powercap-system:<account>
VERB RESOURCE`` questions, each with the answer the manifests must give: the scheduler's
account binds and reads but cannot evict, reshape, read secrets or touch the controller's
Lease and memory; the controller's evicts, reshapes and keeps its memory ConfigMap but
cannot bind, delete, read secrets or any other ConfigMap. Finally the minted tokens
themselves: each authenticates as its account and is refused what its account may not do.

The same table, with the reasons: docs/deploy.md, "RBAC".
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from e2e import crds, toolchain
from e2e.cluster import TEST_LOG_DIR, Cluster, binary, cluster
from e2e.deploy import api_client, wait_established
from e2e.rbac import (
    CONTROLLER_ACCOUNT,
    NAMESPACE,
    SCHEDULER_ACCOUNT,
    account_kubeconfig,
    apply_rbac,
    kubectl,
    whoami,
)

pytestmark = pytest.mark.e2e

WORKLOADS = "default"  # any namespace the workloads run in
SCALED_OBJECTS = "scaledobjects.keda.sh"
# Written "resource/subresource" in the table; kubectl reads "resource/x" as the object
# named x, so these go to it as `pods --subresource=...`.
REPO = Path(__file__).resolve().parents[2]
SUBRESOURCES = frozenset(
    {
        "pods/binding",
        "pods/eviction",
        "powerdomains.powercap.io/status",
        "nodepowerlimits.powercap.io/status",
    }
)
NODE_POWER_LIMITS = "nodepowerlimits.powercap.io"


@dataclass(frozen=True)
class Case:
    """One question: may ``account`` do ``verb`` on ``resource`` (in ``namespace``; ``None``
    for a cluster-scoped resource, ``"*"`` for every namespace)?"""

    account: str
    verb: str
    resource: str
    allowed: bool
    namespace: str | None = WORKLOADS

    @property
    def id(self) -> str:
        where = "" if self.namespace is None else f" in {self.namespace}"
        may = "may" if self.allowed else "may not"
        return f"{self.account.removeprefix('powercap-')} {may} {self.verb} {self.resource}{where}"


def may(account: str, verb: str, resource: str, namespace: str | None = WORKLOADS) -> Case:
    return Case(account, verb, resource, True, namespace)


def may_not(account: str, verb: str, resource: str, namespace: str | None = WORKLOADS) -> Case:
    return Case(account, verb, resource, False, namespace)


S, C = SCHEDULER_ACCOUNT, CONTROLLER_ACCOUNT
TABLE = [
    # kube-scheduler and the extender sidecar
    may(S, "create", "pods/binding"),
    may(S, "list", "nodes", None),
    may(S, "watch", "nodes", None),
    may(S, "get", "pods"),
    may(S, "list", "pods", "*"),
    may(S, "watch", "pods", "*"),
    may(S, "create", "events"),
    may(S, "update", "leases/powercap-scheduler", NAMESPACE),
    # kube-scheduler's preemption deletes pods (system:kube-scheduler); the pod shares its
    # identity with the extender, so the account may.
    may(S, "delete", "pods"),
    may_not(S, "get", "secrets"),
    may_not(S, "list", "secrets", "*"),
    may_not(S, "create", "pods/eviction"),
    # resources.enabled: the powercap.io resources and the workloads, read only
    may(S, "list", "powerdomains.powercap.io", None),
    may(S, "watch", "powerdomains.powercap.io", None),
    may(S, "list", "powerprofiles.powercap.io", "*"),
    may(S, "watch", "powerpolicies.powercap.io", "*"),
    may(S, "list", "deployments.apps", "*"),
    may(S, "watch", "statefulsets.apps", "*"),
    may(S, "list", SCALED_OBJECTS, "*"),
    may(S, "watch", SCALED_OBJECTS, "*"),
    may(S, "watch", "inferenceservices.serving.kserve.io", "*"),
    may_not(S, "patch", "powerdomains.powercap.io", None),
    may_not(S, "update", "deployments.apps"),
    may_not(S, "patch", SCALED_OBJECTS),
    may_not(S, "create", "pods"),
    may_not(S, "delete", "nodes", None),
    may_not(S, "patch", "nodes", None),
    may_not(S, "update", "leases/powercap-controller", NAMESPACE),
    may_not(S, "get", "configmaps/powercap-controller-state", NAMESPACE),
    may_not(S, "update", "configmaps/powercap-controller-state", NAMESPACE),
    may_not(S, "patch", NODE_POWER_LIMITS, None),
    # the companion controller
    may(C, "create", "pods/eviction"),
    may(C, "list", SCALED_OBJECTS, "*"),
    may(C, "patch", SCALED_OBJECTS),
    may(C, "list", "nodes", None),
    may(C, "watch", "nodes", None),
    may(C, "list", "pods", "*"),
    may(C, "watch", "pods", "*"),
    may(C, "list", "poddisruptionbudgets.policy", "*"),
    may(C, "list", "powerdomains.powercap.io", None),
    may(C, "watch", "powerprofiles.powercap.io", "*"),
    may(C, "patch", "powerdomains.powercap.io/status", None),
    may_not(C, "patch", "powerdomains.powercap.io", None),
    may_not(S, "patch", "powerdomains.powercap.io/status", None),
    may(C, "create", "events"),
    may(C, "create", "leases", NAMESPACE),
    may(C, "get", "leases/powercap-controller", NAMESPACE),
    may(C, "update", "leases/powercap-controller", NAMESPACE),
    # power limits: it reads every NodePowerLimit, creates one (empty) for a node without,
    # and writes their spec; the status is the agents'
    may(C, "list", NODE_POWER_LIMITS, None),
    may(C, "create", NODE_POWER_LIMITS, None),
    may(C, "patch", NODE_POWER_LIMITS, None),
    may_not(C, "delete", NODE_POWER_LIMITS, None),
    may_not(C, "update", "nodepowerlimits.powercap.io/status", None),
    may_not(C, "patch", "nodepowerlimits.powercap.io/status", None),
    # its memory for the next leader, and no other ConfigMap
    may(C, "get", "configmaps/powercap-controller-state", NAMESPACE),
    may(C, "update", "configmaps/powercap-controller-state", NAMESPACE),
    may_not(C, "get", "configmaps/powercap-config", NAMESPACE),
    may_not(C, "get", "configmaps/extension-apiserver-authentication", "kube-system"),
    may_not(C, "list", "configmaps", "*"),
    may_not(C, "create", "pods/binding"),
    may_not(C, "get", "secrets"),
    may_not(C, "list", "secrets", "*"),
    may_not(C, "delete", "nodes", None),
    may_not(C, "patch", "nodes", None),
    may_not(C, "delete", "pods"),
    may_not(C, "create", "pods"),
    may_not(C, "patch", "pods"),
    may_not(C, "delete", SCALED_OBJECTS),
    may_not(C, "update", "leases/powercap-scheduler", NAMESPACE),
    may_not(C, "create", "leases", WORKLOADS),
    may_not(C, "update", "deployments.apps"),
    may_not(C, "delete", "deployments.apps"),
]


@pytest.fixture(scope="module")
def rbac_cluster() -> Iterator[Cluster]:
    """A cluster with the CRDs whose resources the table names (the ScaledObject's and the
    InferenceService's, so ``scaledobjects.keda.sh`` resolves; powercap's own, NodePowerLimit
    among them) and the RBAC of ``manifests/base`` applied."""
    binary("kubectl")
    installed = crds.installed(toolchain.cache_root())
    wanted = [p for p in installed if "scaledobjects" in p.name or "inferenceservices" in p.name]
    assert len(wanted) == 2, (
        f"the CRDs of KEDA and KServe are missing; run `make tools` ({installed})"
    )
    with cluster(TEST_LOG_DIR, prefix="powercap-rbac") as c:
        for crd in wanted:
            kubectl(c, "apply", "--server-side", "-f", str(crd))
        kubectl(c, "apply", "-k", str(REPO / "manifests" / "crds"))
        wait_established(
            api_client(c.kubeconfig),
            [
                "scaledobjects.keda.sh",
                "inferenceservices.serving.kserve.io",
                "powerdomains.powercap.io",
                "powerprofiles.powercap.io",
                "powerpolicies.powercap.io",
                NODE_POWER_LIMITS,
            ],
        )
        apply_rbac(c)
        yield c


def resource_args(resource: str) -> list[str]:
    """``kubectl auth can-i``'s arguments for ``resource`` as the table writes it."""
    if resource in SUBRESOURCES:
        parent, sub = resource.split("/")
        return [parent, f"--subresource={sub}"]
    return [resource]


def can_i(c: Cluster, case: Case) -> tuple[bool, str]:
    """The API server's answer to ``case`` (a SubjectAccessReview through ``kubectl auth
    can-i``, impersonating the account as the admin), and kubectl's output."""
    where = [] if case.namespace is None else ["--all-namespaces"]
    if case.namespace not in (None, "*"):
        where = [f"--namespace={case.namespace}"]
    proc = subprocess.run(
        [
            str(binary("kubectl")),
            f"--kubeconfig={c.kubeconfig}",
            f"--cache-dir={c.run_dir / 'kubectl-cache'}",
            "auth",
            "can-i",
            case.verb,
            *resource_args(case.resource),
            f"--as=system:serviceaccount:{NAMESPACE}:{case.account}",
            *where,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    answer = proc.stdout.strip()
    # can-i exits 0 for yes and 1 for no; anything else (or a resource the server does not
    # know, which it reports on stderr) is not an answer.
    assert proc.returncode in (0, 1) and answer in ("yes", "no"), proc.stderr
    assert "doesn't have a resource type" not in proc.stderr, proc.stderr
    return answer == "yes", proc.stderr


def test_the_table_asks_about_both_accounts() -> None:
    for account in (SCHEDULER_ACCOUNT, CONTROLLER_ACCOUNT):
        answers = {c.allowed for c in TABLE if c.account == account}
        assert answers == {True, False}, account


@pytest.mark.parametrize("case", TABLE, ids=lambda case: case.id)
def test_can_i(rbac_cluster: Cluster, case: Case) -> None:
    allowed, stderr = can_i(rbac_cluster, case)
    assert allowed == case.allowed, f"{case.id}: the API server says {allowed}. {stderr}"


@pytest.mark.parametrize("account", [SCHEDULER_ACCOUNT, CONTROLLER_ACCOUNT])
def test_a_minted_token_is_its_account_and_nothing_more(
    rbac_cluster: Cluster, account: str
) -> None:
    kubeconfig = account_kubeconfig(rbac_cluster, account)
    assert whoami(kubeconfig, rbac_cluster) == f"system:serviceaccount:{NAMESPACE}:{account}"
    base = [
        str(binary("kubectl")),
        f"--kubeconfig={kubeconfig}",
        f"--cache-dir={rbac_cluster.run_dir / 'kubectl-cache'}",
    ]
    # What both may do: list nodes.
    listed = subprocess.run([*base, "get", "nodes"], capture_output=True, text=True, check=False)
    assert listed.returncode == 0, listed.stderr
    # What neither may: read secrets.
    secrets = subprocess.run(
        [*base, "get", "secrets", "--namespace=kube-system"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert secrets.returncode != 0
    assert "forbidden" in secrets.stderr.lower(), secrets.stderr
