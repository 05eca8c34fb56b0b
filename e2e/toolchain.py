"""Build the pinned upstream binaries the e2e harness runs, once, into a cache outside the repo.

    python -m e2e.toolchain                    # build what is missing, print progress and timings
    python -m e2e.toolchain --print-env        # same, then print `export ...` lines for `eval`
    python -m e2e.toolchain --update-wrappers  # after changing a pinned version (see below)

Layout: ``${POWERCAP_CACHE:-~/.cache/powercap}/toolchain/<component>-<version>/bin/``. Each
component directory gets a ``.stamp`` (JSON of the build recipe) once built; a later run whose
recipe matches and whose binaries (and files) are present does nothing. Go components are built
from the Go module proxy through a wrapper module copied to ``<component>-<version>/src/``.

The wrapper modules are committed, each a ``go.mod`` with its ``go.sum``, under
``e2e/wrappers/<wrapper>/``: the go.sum pins the hash of every module the build reads, so a
module the proxy (or a tampered module cache) serves differently fails the build rather than
entering a binary. A build copies both files, runs ``go mod verify`` (the module cache against
the go.sum) and builds with ``-mod=readonly`` (no go.mod or go.sum change, no hash taken on
trust). ``--update-wrappers`` regenerates them from the pinned versions: the go.mod, then every
hash the build needs, fetched through the proxy and checked against the checksum database.
The CRDs the manifests need are fetched from the module proxy too, as files picked out of their
projects' Go module zips (:mod:`e2e.crds`), into ``crd-<project>-<version>/crds/``.
Progress goes to stderr so that stdout carries only ``--print-env`` output.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from e2e import crds

# Pinned versions. k8s.io/kubernetes is published on the proxy as v1.N.P and its staging
# modules (k8s.io/api, k8s.io/client-go, ...) as v0.N.P of the same release.
KUBERNETES_VERSION = "v1.36.5"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"
# Modules the etcd server's go.mod points at with local replace directives (they block
# `go install`); the wrapper requires them at the server's version.
ETCD_SIBLINGS = ("api/v3", "client/pkg/v3", "client/v3", "pkg/v3")
KUBE_COMMANDS = ("kube-apiserver", "kube-scheduler", "kube-controller-manager")
# kubectl (with its built-in kustomize) is built from the same k8s.io/kubernetes release, but as
# a cache entry of its own: adding it rebuilds nothing that is already there, and never rewrites
# a control-plane binary a running cluster may be executing.
KUBECTL_COMMANDS = ("kubectl",)
KWOK_COMMANDS = ("kwok", "kwokctl")
# Helm renders, lints and installs charts/powercap; built from its module like the rest.
HELM_VERSION = "v4.3.2"
HELM_MODULE = "helm.sh/helm/v4"
HELM_COMMANDS = ("helm",)
PROMETHEUS_INSTALL = "sudo apt-get update && sudo apt-get install -y prometheus"
# -mod=readonly: go.mod and go.sum are read, never written; a hash missing from the committed
# go.sum is an error, not a lookup (the build command says so again, for the reader).
GO_ENV = {"GOFLAGS": "-mod=readonly", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
# The committed wrapper modules (go.mod and go.sum), one directory each.
WRAPPERS = Path(__file__).resolve().parent / "wrappers"
KUBERNETES_WRAPPER = "kubernetes"
ETCD_WRAPPER = "etcd"
HELM_WRAPPER = "helm"
STAMP = ".stamp"
# No symbol table or DWARF: about a third smaller, and nothing here is run under a debugger.
STRIP = "-s -w"
GO_ENV_SHELL = [f"{k}={v}" for k, v in GO_ENV.items()]


class StepError(Exception):
    """A build step failed; ``retry`` is the command to run by hand."""

    def __init__(self, message: str, retry: str) -> None:
        super().__init__(message)
        self.retry = retry


def log(message: str) -> None:
    print(f"[toolchain] {message}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    base = os.environ.get("POWERCAP_CACHE") or str(Path.home() / ".cache" / "powercap")
    return Path(base).expanduser() / "toolchain"


def run(cmd: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run ``cmd``, streaming its stderr; return stdout. Raise StepError on failure."""
    full_env = {**os.environ, **GO_ENV, **(env or {})}
    assignments = GO_ENV_SHELL + [f"{k}={shlex.quote(v)}" for k, v in (env or {}).items()]
    retry = f"cd {shlex.quote(str(cwd))} && {' '.join(assignments)} {shlex.join(cmd)}"
    log(f"$ {shlex.join(cmd)}")
    try:
        proc = subprocess.run(
            list(cmd), cwd=cwd, env=full_env, stdout=subprocess.PIPE, text=True, check=False
        )
    except OSError as exc:
        raise StepError(f"cannot run {cmd[0]}: {exc}", retry) from exc
    if proc.returncode != 0:
        if proc.stdout.strip():  # e.g. `go mod download -json` reports its error on stdout
            print(proc.stdout.rstrip(), file=sys.stderr)
        raise StepError(f"{cmd[0]} exited with status {proc.returncode}", retry)
    return proc.stdout


@dataclass
class Component:
    """One cache entry: a directory of binaries built by ``build`` from a recipe."""

    name: str
    version: str
    binaries: tuple[str, ...]
    build: Callable[[Component], None]
    recipe: dict[str, object] = field(default_factory=dict)
    # Other outputs that must exist, relative to ``root`` (e.g. fetched CRD files).
    files: tuple[str, ...] = ()

    @property
    def root(self) -> Path:
        return cache_root() / f"{self.name}-{self.version}"

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    @property
    def src_dir(self) -> Path:
        return self.root / "src"

    def stamp_content(self) -> dict[str, object]:
        content: dict[str, object] = {
            "component": self.name,
            "version": self.version,
            "binaries": list(self.binaries),
            "recipe": self.recipe,
        }
        if self.files:  # only when present, so stamps written before `files` existed still match
            content["files"] = list(self.files)
        return content

    def missing(self) -> list[str]:
        """Outputs (binaries, files) that are not there."""
        absent = [b for b in self.binaries if not os.access(self.bin_dir / b, os.X_OK)]
        return absent + [f for f in self.files if not (self.root / f).is_file()]

    def is_built(self) -> bool:
        stamp = self.root / STAMP
        try:
            recorded = json.loads(stamp.read_text())
        except (OSError, ValueError):
            return False
        if recorded.get("recipe_of") != self.stamp_content():
            return False
        return not self.missing()

    def mark_built(self, seconds: float) -> None:
        record = {"recipe_of": self.stamp_content(), "build_seconds": round(seconds, 1)}
        (self.root / STAMP).write_text(json.dumps(record, indent=2) + "\n")


def go_download_json(module: str, cwd: Path) -> dict[str, str]:
    out = run(["go", "mod", "download", "-json", module], cwd)
    data: dict[str, str] = json.loads(out)
    if data.get("Error"):
        raise StepError(f"go mod download {module}: {data['Error']}", f"go mod download {module}")
    return data


def render_wrapper(module: str, requires: dict[str, str], *, replaces: dict[str, str]) -> str:
    """The text of a wrapper go.mod: ``requires`` and ``replaces`` (module → version)."""
    lines = [f"module {module}", "", "go 1.26.0", ""]
    if requires:
        lines += ["require ("] + [f"\t{m} {v}" for m, v in sorted(requires.items())] + [")", ""]
    if replaces:
        lines += ["replace ("]
        lines += [f"\t{m} => {m} {v}" for m, v in sorted(replaces.items())]
        lines += [")", ""]
    return "\n".join(lines)


def write_wrapper(
    src: Path, module: str, requires: dict[str, str], *, replaces: dict[str, str]
) -> None:
    """Write a fresh wrapper go.mod (and drop any old go.sum, which no longer matches)."""
    src.mkdir(parents=True, exist_ok=True)
    (src / "go.mod").write_text(render_wrapper(module, requires, replaces=replaces))
    (src / "go.sum").unlink(missing_ok=True)


GO_MOD_LINE = re.compile(r"^\s*(\S+)\s+(v\S+)\s*$")
REPLACE_LINE = re.compile(r"^\s*(\S+)\s*=>\s*(\S+)\s+(v\S+)\s*$")


def wrapper_modules(go_mod: str) -> tuple[dict[str, str], dict[str, str]]:
    """The ``require`` and ``replace`` blocks of a wrapper go.mod written by
    :func:`render_wrapper`, as module → version (a replacement's target version)."""
    requires: dict[str, str] = {}
    replaces: dict[str, str] = {}
    block = ""
    for line in go_mod.splitlines():
        if line.rstrip().endswith("("):
            block = line.split()[0]
        elif line.strip() == ")":
            block = ""
        elif block == "require" and (m := GO_MOD_LINE.match(line)):
            requires[m.group(1)] = m.group(2)
        elif block == "replace" and (m := REPLACE_LINE.match(line)):
            replaces[m.group(1)] = m.group(3)
    return requires, replaces


def install_wrapper(name: str, src: Path) -> None:
    """Copy the committed wrapper ``name`` (go.mod and go.sum) into ``src`` and check the
    module cache against its go.sum (``go mod verify``)."""
    committed = WRAPPERS / name
    src.mkdir(parents=True, exist_ok=True)
    for file in ("go.mod", "go.sum"):
        if not (committed / file).is_file():
            raise StepError(
                f"{committed / file} is missing; regenerate the wrappers",
                "python -m e2e.toolchain --update-wrappers",
            )
        shutil.copyfile(committed / file, src / file)
    run(["go", "mod", "verify"], src)


def check_wrapper(name: str, requires: dict[str, str], *, replaces: dict[str, str]) -> None:
    """Raise :class:`StepError` unless the committed wrapper ``name`` requires and replaces
    exactly what the pinned versions call for (a version changed without
    ``--update-wrappers`` would build the old one under the new name)."""
    committed = wrapper_modules((WRAPPERS / name / "go.mod").read_text())
    if committed != (requires, replaces):
        raise StepError(
            f"the committed wrapper {WRAPPERS / name}/go.mod does not match the pinned "
            "versions; regenerate it",
            "python -m e2e.toolchain --update-wrappers",
        )


def go_build(ldflags: str, *, output: str, packages: Sequence[str]) -> list[str]:
    """The ``go build`` command run in a wrapper: the committed go.mod and go.sum only."""
    return [
        "go",
        "build",
        "-mod=readonly",
        "-trimpath",
        "-ldflags",
        ldflags,
        "-o",
        output,
        *packages,
    ]


STAGING_RE = re.compile(r"^\s*(k8s\.io/[\w.-]+)\s*=>\s*\./staging/src/\1\s*$", re.M)


def kube_ldflags(version: str, build_date: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    flags = [STRIP]
    # hack/lib/version.sh stamps both packages; the apiserver reports component-base's.
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        for key, value in (
            ("gitVersion", version),
            ("gitMajor", major),
            ("gitMinor", minor),
            ("gitTreeState", "clean"),
            ("buildDate", build_date),
        ):
            flags.append(f"-X {pkg}.{key}={value}")
    return " ".join(flags)


def staging_modules(version: str, cwd: Path) -> tuple[list[str], dict[str, str]]:
    """The staging modules ``k8s.io/kubernetes@version`` replaces with its own directories,
    read from its go.mod, and its ``go mod download -json`` record."""
    info = go_download_json(f"k8s.io/kubernetes@{version}", cwd)
    staging = STAGING_RE.findall(Path(info["GoMod"]).read_text())
    if not staging:
        raise StepError("found no staging replace directives in k8s.io/kubernetes' go.mod", "")
    return staging, info


def kubernetes_modules(
    version: str, staging: Sequence[str]
) -> tuple[dict[str, str], dict[str, str]]:
    """What the kubernetes wrapper requires (``k8s.io/kubernetes@version``) and replaces
    (each staging module with v0.N.P of the same release)."""
    staging_version = "v0." + version.split(".", 1)[1]
    return {"k8s.io/kubernetes": version}, {m: staging_version for m in staging}


def etcd_modules(version: str) -> dict[str, str]:
    """What the etcd wrapper requires: the server and its sibling modules at ``version``."""
    base = "go.etcd.io/etcd"
    return {f"{base}/{m}": version for m in ("server/v3", *ETCD_SIBLINGS)}


def helm_modules(version: str) -> dict[str, str]:
    """What the helm wrapper requires: Helm's own module at ``version``."""
    return {HELM_MODULE: version}


def helm_ldflags(version: str) -> str:
    """Helm's Makefile stamps its version into ``internal/version`` (``helm version`` prints
    it); an empty ``metadata`` is what a tagged release build sets."""
    pkg = f"{HELM_MODULE}/internal/version"
    return " ".join(
        [
            STRIP,
            f"-X {pkg}.version={version}",
            f"-X {pkg}.metadata=",
            f"-X {pkg}.gitTreeState=clean",
        ]
    )


def build_helm(c: Component) -> None:
    check_wrapper(HELM_WRAPPER, helm_modules(c.version), replaces={})
    install_wrapper(HELM_WRAPPER, c.src_dir)
    c.bin_dir.mkdir(parents=True, exist_ok=True)
    output = str(c.bin_dir / "helm")
    package = f"{HELM_MODULE}/cmd/helm"
    run(go_build(helm_ldflags(c.version), output=output, packages=[package]), c.src_dir)


def build_kubernetes(c: Component) -> None:
    src = c.src_dir
    install_wrapper(KUBERNETES_WRAPPER, src)
    staging, info = staging_modules(c.version, src)
    requires, replaces = kubernetes_modules(c.version, staging)
    log(f"replacing {len(staging)} staging modules with {replaces[staging[0]]}")
    check_wrapper(KUBERNETES_WRAPPER, requires, replaces=replaces)
    # The release's publication time on the proxy: a reproducible buildDate.
    build_date = str(json.loads(Path(info["Info"]).read_text()).get("Time", "1970-01-01T00:00:00Z"))
    c.bin_dir.mkdir(parents=True, exist_ok=True)
    packages = [f"k8s.io/kubernetes/cmd/{b}" for b in c.binaries]
    ldflags = kube_ldflags(c.version, build_date)
    run(go_build(ldflags, output=str(c.bin_dir) + "/", packages=packages), src)


def fetch_crds(source: crds.CrdSource) -> Callable[[Component], None]:
    """A build step that downloads ``source``'s module zip and copies its CRD files."""

    def fetch(c: Component) -> None:
        c.root.mkdir(parents=True, exist_ok=True)
        info = go_download_json(f"{source.module}@{source.version}", c.root)
        try:
            crds.copy_crds(source, Path(info["Dir"]), c.root, module_sum=info.get("Sum", ""))
        except FileNotFoundError as exc:
            raise StepError(str(exc), f"ls {info['Dir']}") from exc

    return fetch


def build_etcd(c: Component) -> None:
    check_wrapper(ETCD_WRAPPER, etcd_modules(c.version), replaces={})
    install_wrapper(ETCD_WRAPPER, c.src_dir)
    c.bin_dir.mkdir(parents=True, exist_ok=True)
    output = str(c.bin_dir / "etcd")
    run(go_build(STRIP, output=output, packages=["go.etcd.io/etcd/server/v3"]), c.src_dir)


def fill_wrapper(
    directory: Path, requires: dict[str, str], *, replaces: dict[str, str], packages: list[str]
) -> None:
    """Write the wrapper go.mod in ``directory`` and a go.sum with every hash building
    ``packages`` needs (each fetched through the proxy and checked against the checksum
    database), then verify the module cache against it."""
    write_wrapper(
        directory, f"powercap.local/toolchain/{directory.name}", requires, replaces=replaces
    )
    run(["go", "list", "-mod=mod", "-deps", *packages], directory)
    run(["go", "mod", "verify"], directory)


def update_wrappers() -> None:
    """Regenerate the committed wrappers (``--update-wrappers``) from the pinned versions."""
    kube = WRAPPERS / KUBERNETES_WRAPPER
    write_wrapper(kube, f"powercap.local/toolchain/{kube.name}", {}, replaces={})
    staging, _ = staging_modules(KUBERNETES_VERSION, kube)
    requires, replaces = kubernetes_modules(KUBERNETES_VERSION, staging)
    commands = (*KUBE_COMMANDS, *KUBECTL_COMMANDS)
    packages = [f"k8s.io/kubernetes/cmd/{b}" for b in commands]
    fill_wrapper(kube, requires, replaces=replaces, packages=packages)
    etcd = WRAPPERS / ETCD_WRAPPER
    fill_wrapper(
        etcd, etcd_modules(ETCD_VERSION), replaces={}, packages=["go.etcd.io/etcd/server/v3"]
    )
    helm = WRAPPERS / HELM_WRAPPER
    fill_wrapper(
        helm, helm_modules(HELM_VERSION), replaces={}, packages=[f"{HELM_MODULE}/cmd/helm"]
    )
    log(f"wrote {kube}, {etcd} and {helm}; commit their go.mod and go.sum")


def build_kwok(c: Component) -> None:
    c.bin_dir.mkdir(parents=True, exist_ok=True)
    pkgs = [f"sigs.k8s.io/kwok/cmd/{b}@{c.version}" for b in c.binaries]
    run(
        ["go", "install", "-trimpath", "-ldflags", STRIP, *pkgs],
        c.root,
        env={"GOBIN": str(c.bin_dir)},
    )


def components() -> list[Component]:
    return [
        Component(
            "kubernetes",
            KUBERNETES_VERSION,
            KUBE_COMMANDS,
            build_kubernetes,
            {"ldflags": kube_ldflags(KUBERNETES_VERSION, "<module time>")},
        ),
        Component(
            "etcd",
            ETCD_VERSION,
            ("etcd",),
            build_etcd,
            {"siblings": list(ETCD_SIBLINGS), "ldflags": STRIP},
        ),
        Component("kwok", KWOK_VERSION, KWOK_COMMANDS, build_kwok, {"ldflags": STRIP}),
        Component(
            "kubectl",
            KUBERNETES_VERSION,
            KUBECTL_COMMANDS,
            build_kubernetes,
            {"ldflags": kube_ldflags(KUBERNETES_VERSION, "<module time>")},
        ),
        Component(
            "helm",
            HELM_VERSION,
            HELM_COMMANDS,
            build_helm,
            {"ldflags": helm_ldflags(HELM_VERSION)},
        ),
        *[
            Component(
                source.component,
                source.version,
                (),
                fetch_crds(source),
                {"module": source.module},
                files=crds.relative_paths(source),
            )
            for source in crds.SOURCES
        ],
    ]


def find_prometheus() -> Path | None:
    found = shutil.which("prometheus")
    if found:
        return Path(found)
    default = Path("/usr/bin/prometheus")
    return default if os.access(default, os.X_OK) else None


def ensure(c: Component) -> float:
    """Build ``c`` unless its stamp is current; return seconds spent."""
    start = time.monotonic()
    if c.is_built():
        log(f"{c.name} {c.version}: up to date in {c.bin_dir if c.binaries else c.root}")
        return time.monotonic() - start
    if shutil.which("go") is None:
        raise StepError("`go` is not on PATH (Go >= 1.26 is required)", "go version")
    if c.binaries:
        log(f"{c.name} {c.version}: building {', '.join(c.binaries)} into {c.bin_dir}")
    else:
        log(f"{c.name} {c.version}: fetching {len(c.files)} file(s) into {c.root}")
    (c.root / STAMP).unlink(missing_ok=True)
    c.build(c)
    missing = c.missing()
    if missing:
        raise StepError(f"build finished but {', '.join(missing)} missing", "")
    elapsed = time.monotonic() - start
    c.mark_built(elapsed)
    log(f"{c.name} {c.version}: done in {elapsed:.0f}s")
    return elapsed


def env_lines(comps: Sequence[Component], prometheus: Path | None) -> list[str]:
    lines = [f"export POWERCAP_TOOLCHAIN={shlex.quote(str(cache_root()))}"]
    dirs: list[str] = []
    for c in comps:
        if c.binaries:
            dirs.append(str(c.bin_dir))
        for b in c.binaries:
            var = "POWERCAP_" + b.upper().replace("-", "_")
            lines.append(f"export {var}={shlex.quote(str(c.bin_dir / b))}")
    if prometheus is not None:
        lines.append(f"export POWERCAP_PROMETHEUS={shlex.quote(str(prometheus))}")
    lines.append(f'export PATH={shlex.quote(":".join(dirs))}:"$PATH"')
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.toolchain", description=__doc__)
    parser.add_argument(
        "--print-env", action="store_true", help="print `export` lines for the built binaries"
    )
    parser.add_argument(
        "--update-wrappers",
        action="store_true",
        help="regenerate the committed wrapper modules (e2e/wrappers/) from the pinned versions",
    )
    args = parser.parse_args(argv)
    if args.update_wrappers:
        try:
            update_wrappers()
        except StepError as exc:
            log(f"FAILED updating the wrappers: {exc}")
            return 1
        return 0
    total_start = time.monotonic()
    comps = components()
    timings: list[tuple[str, float]] = []
    failures: list[str] = []
    for c in comps:
        try:
            timings.append((f"{c.name} {c.version}", ensure(c)))
        except StepError as exc:
            log(f"FAILED {c.name} {c.version}: {exc}")
            if exc.retry:
                log(f"  retry with: {exc.retry}")
            log(f"  or rerun: python -m e2e.toolchain (logs above; cache dir {c.root})")
            failures.append(c.name)
    prometheus = find_prometheus()
    if prometheus is None:
        log(f"FAILED prometheus: not installed; install it with: {PROMETHEUS_INSTALL}")
        failures.append("prometheus")
    else:
        log(f"prometheus: {prometheus}")
    for label, seconds in timings:
        log(f"  {label:<32} {seconds:7.1f}s")
    log(f"  {'total':<32} {time.monotonic() - total_start:7.1f}s")
    if failures:
        log(f"failed: {', '.join(failures)}")
        return 1
    if args.print_env:
        print("\n".join(env_lines(comps, prometheus)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
