"""The CustomResourceDefinitions the manifests use, taken from their projects' Go modules.

The manifests carry a KEDA ScaledObject, prometheus-operator ServiceMonitor and PrometheusRule,
and a KServe InferenceService. To check them against the real API server the e2e tests install
these projects' own CRDs first. Each project publishes its generated CRD YAML inside its Go
module, so ``go mod download -json MODULE@VERSION`` (the checksum database verifies the zip) and
a copy of the listed files out of the module directory gives exactly the upstream definitions,
pinned and cached, with nothing hand-written in this repository.

:mod:`e2e.toolchain` fetches them (``make tools``) into
``<toolchain cache>/crd-<project>-<version>/crds/`` beside a ``SOURCE.json`` naming the module,
its version and its go.sum hash; :func:`installed` returns the files for a test.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

CRD_DIR = "crds"
SOURCE_RECORD = "SOURCE.json"


@dataclass(frozen=True)
class CrdSource:
    """CRD files inside one Go module at one version; ``paths`` are module-relative."""

    project: str
    module: str
    version: str
    paths: tuple[str, ...]

    @property
    def component(self) -> str:
        """Toolchain component name; its cache directory is ``<component>-<version>``."""
        return f"crd-{self.project}"


# Pinned versions: the newest each project serves on the Go module proxy reachable here whose
# module zip carries the generated CRDs (prometheus-operator's root module is served at v0.85.0
# only; its CRDs live in that root module, not in the separately versioned pkg/apis module).
SOURCES: tuple[CrdSource, ...] = (
    CrdSource(
        "keda",
        "github.com/kedacore/keda/v2",
        "v2.21.0",
        ("config/crd/bases/keda.sh_scaledobjects.yaml",),
    ),
    CrdSource(
        "prometheus-operator",
        "github.com/prometheus-operator/prometheus-operator",
        "v0.85.0",
        (
            "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
            "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml",
        ),
    ),
    CrdSource(
        "kserve",
        "github.com/kserve/kserve",
        "v0.16.0",
        ("config/crd/full/serving.kserve.io_inferenceservices.yaml",),
    ),
)


class CrdsMissing(RuntimeError):
    """The pinned CRDs are not fetched; the message names the fix."""


def relative_paths(source: CrdSource) -> tuple[str, ...]:
    """Where ``source``'s files land, relative to its component directory."""
    return tuple(f"{CRD_DIR}/{PurePosixPath(p).name}" for p in source.paths)


def copy_crds(
    source: CrdSource, module_dir: Path, dest_root: Path, *, module_sum: str
) -> list[Path]:
    """Copy ``source``'s CRD files from the downloaded ``module_dir`` into ``dest_root/crds/``
    and record where they came from. Raises ``FileNotFoundError`` naming the first file the
    module does not have (a version bump that moved them)."""
    for rel in source.paths:
        if not (module_dir / rel).is_file():
            raise FileNotFoundError(
                f"{source.module}@{source.version} has no {rel}; find the CRDs' new place "
                f"in {module_dir} and update e2e/crds.py"
            )
    out_dir = dest_root / CRD_DIR
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    copied: list[Path] = []
    for rel, name in zip(source.paths, relative_paths(source), strict=True):
        target = dest_root / name
        # copyfile, not copy2: the module cache is read-only and the cache copy must stay
        # removable by a plain `rm -rf`.
        shutil.copyfile(module_dir / rel, target)
        copied.append(target)
    record = {
        "module": source.module,
        "version": source.version,
        "sum": module_sum,
        "files": dict(zip(relative_paths(source), source.paths, strict=True)),
    }
    (dest_root / SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return copied


def installed(toolchain_root: Path) -> list[Path]:
    """Every pinned CRD file under ``toolchain_root`` (the toolchain cache), in
    :data:`SOURCES` order. Raises :class:`CrdsMissing` naming ``make tools`` when any is
    absent, so a test fails with the fix rather than skipping."""
    files: list[Path] = []
    missing: list[str] = []
    for source in SOURCES:
        root = toolchain_root / f"{source.component}-{source.version}"
        for rel in relative_paths(source):
            path = root / rel
            if path.is_file():
                files.append(path)
            else:
                missing.append(str(path))
    if missing:
        raise CrdsMissing(
            f"CRDs not fetched: {', '.join(missing)}; fetch the pinned CRDs with `make tools` "
            "(or `python -m e2e.toolchain`)"
        )
    return files
