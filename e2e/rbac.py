"""The shipped RBAC on a test cluster, and a kubeconfig per ServiceAccount holding its token.

The e2e tests run ``powercap serve``, ``powercap controller`` and kube-scheduler as the
manifests run them: as the ServiceAccounts of ``manifests/base``, never as the cluster's
admin. :func:`account_kubeconfig` does what a cluster admin and the kubelet would:

1. :func:`apply_rbac` — ``kubectl kustomize manifests/base``, keep the Namespace, the
   ServiceAccounts and every Role, ClusterRole and binding (:data:`RBAC_KINDS`), and
   ``kubectl apply`` them with the admin kubeconfig. Once per cluster; the kustomization is
   the one users apply, so a rule missing there fails the test that needs it;
2. :func:`mint_token` — ``kubectl create token`` (the TokenRequest API, as a projected
   ServiceAccount token in a pod is made) for the account, bound to the API server's
   audience, valid for :data:`TOKEN_DURATION`;
3. a kubeconfig with the admin kubeconfig's server and CA, and the token as the user's
   credential, written to ``<run dir>/<account>.kubeconfig`` and reused for the cluster's
   life.

Tests keep the admin kubeconfig (``Cluster.kubeconfig``) for what the components must not
do themselves: creating nodes, workloads, CRDs.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster import Cluster, binary

REPO = Path(__file__).resolve().parent.parent
BASE = REPO / "manifests" / "base"
NAMESPACE = "powercap-system"
SCHEDULER_ACCOUNT = "powercap-scheduler"
CONTROLLER_ACCOUNT = "powercap-controller"
RBAC_KINDS = frozenset(
    {"Namespace", "ServiceAccount", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}
)
# Longer than any test; the API server accepts it (kwokctl sets no maximum).
TOKEN_DURATION = "12h"
_APPLIED_MARK = "rbac-applied"


def kubectl(c: Cluster, *args: str, stdin: str | None = None) -> str:
    """``kubectl ARGS`` as the cluster's admin; returns stdout, raises ``RuntimeError`` with
    stderr when it fails. The discovery cache stays in the cluster's run directory."""
    cmd = [
        str(binary("kubectl")),
        f"--kubeconfig={c.kubeconfig}",
        f"--cache-dir={c.run_dir / 'kubectl-cache'}",
        *args,
    ]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"`kubectl {' '.join(args)}` failed: {proc.stderr.strip()}")
    return proc.stdout


def rbac_objects(c: Cluster) -> list[dict[str, Any]]:
    """The objects of ``manifests/base`` of the kinds in :data:`RBAC_KINDS`, as kustomize
    builds them."""
    built = kubectl(c, "kustomize", str(BASE))
    return [d for d in yaml.safe_load_all(built) if d and d.get("kind") in RBAC_KINDS]


def apply_rbac(c: Cluster) -> None:
    """Apply :func:`rbac_objects` to ``c``, once per cluster."""
    mark = c.run_dir / _APPLIED_MARK
    if mark.exists():
        return
    objects = rbac_objects(c)
    kinds = {o["kind"] for o in objects}
    missing = RBAC_KINDS - kinds
    if missing:  # a renamed file or a dropped resource must not pass as "no rights"
        raise RuntimeError(f"manifests/base builds no {', '.join(sorted(missing))}")
    kubectl(c, "apply", "-f", "-", stdin=yaml.safe_dump_all(objects))
    mark.write_text("\n".join(sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objects)))


def mint_token(c: Cluster, account: str) -> str:
    """A token of the ServiceAccount ``account`` of :data:`NAMESPACE`, from the
    TokenRequest API."""
    token = kubectl(
        c, "create", "token", account, f"--namespace={NAMESPACE}", f"--duration={TOKEN_DURATION}"
    ).strip()
    if not token:
        raise RuntimeError(f"kubectl create token {account} printed no token")
    return token


def account_kubeconfig(c: Cluster, account: str) -> Path:
    """A kubeconfig that authenticates to ``c`` as the ServiceAccount ``account`` of
    :data:`NAMESPACE` (the RBAC applied first); the same file on every call for a cluster."""
    path = c.run_dir / f"{account}.kubeconfig"
    if path.exists():
        return path
    apply_rbac(c)
    admin: dict[str, Any] = yaml.safe_load(c.kubeconfig.read_text())
    context = next(x for x in admin["contexts"] if x["name"] == admin["current-context"])
    cluster = next(x for x in admin["clusters"] if x["name"] == context["context"]["cluster"])
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kwok", "cluster": cluster["cluster"]}],
        "users": [{"name": account, "user": {"token": mint_token(c, account)}}],
        "contexts": [{"name": account, "context": {"cluster": "kwok", "user": account}}],
        "current-context": account,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)  # a credential
    return path


def whoami(kubeconfig: Path, c: Cluster) -> str:
    """The user name the API server sees for ``kubeconfig`` (``kubectl auth whoami``)."""
    proc = subprocess.run(
        [
            str(binary("kubectl")),
            f"--kubeconfig={kubeconfig}",
            f"--cache-dir={c.run_dir / 'kubectl-cache'}",
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl auth whoami failed: {proc.stderr.strip()}")
    return proc.stdout.strip()
