"""kubectl against a throwaway test cluster (:class:`Kubectl`), for the e2e tests that
apply manifests, custom resources and charts as an admin would."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from e2e.cluster import Cluster, binary


@dataclass
class Kubectl:
    """The pinned kubectl with ``cluster``'s kubeconfig; subclasses add what a test needs."""

    cluster: Cluster
    kubectl: Path

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``kubectl ARGS``; with ``check``, a non-zero exit fails the test with stderr."""
        cmd = [
            str(self.kubectl),
            f"--kubeconfig={self.cluster.kubeconfig}",
            # Discovery cache beside the cluster, never in ~/.kube.
            f"--cache-dir={self.cluster.run_dir / 'kubectl-cache'}",
            *args,
        ]
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"`kubectl {' '.join(args)}` failed (exit {proc.returncode}):\n{proc.stderr}"
            )
        return proc


def wait_established(c: Cluster, names: Iterable[str], *, timeout_s: float = 60.0) -> None:
    """Wait until each CRD of ``names`` has the ``Established`` condition True.

    Polled with ``kubectl get`` rather than ``kubectl wait --for=condition=Established``:
    that one fails at once, instead of waiting, on a CRD the API server has not yet given
    any status conditions — which a loaded machine shows right after the apply."""
    jsonpath = '{.status.conditions[?(@.type=="Established")].status}'
    for name in names:
        deadline = time.monotonic() + timeout_s
        while True:
            proc = subprocess.run(
                [
                    str(binary("kubectl")),
                    f"--kubeconfig={c.kubeconfig}",
                    f"--cache-dir={c.run_dir / 'kubectl-cache'}",
                    "get",
                    f"crd/{name}",
                    "-o",
                    f"jsonpath={jsonpath}",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode == 0 and proc.stdout.strip() == "True":
                break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"CRD {name} not Established within {timeout_s:g} s: "
                    f"{proc.stdout.strip() or proc.stderr.strip() or 'no conditions'}"
                )
            time.sleep(0.5)
