"""kubectl against a throwaway test cluster (:class:`Kubectl`), for the e2e tests that
apply manifests, custom resources and charts as an admin would."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from e2e.cluster import Cluster


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
