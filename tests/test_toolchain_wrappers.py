"""The e2e toolchain builds from committed wrapper modules whose go.sum pins every module.

Each wrapper under ``e2e/wrappers/`` is a go.mod with its go.sum. These tests check, without
a network, that the committed files agree with the pinned versions, that the go.sum holds
the hashes the build needs (``go mod verify`` and a ``-mod=readonly`` load of every package
built, in a temporary copy, when Go and the modules are on this machine), and that a build
verifies the module cache and never writes go.mod or go.sum (``-mod=readonly``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from e2e import toolchain

WRAPPED = {
    toolchain.KUBERNETES_WRAPPER: [
        f"k8s.io/kubernetes/cmd/{b}"
        for b in (*toolchain.KUBE_COMMANDS, *toolchain.KUBECTL_COMMANDS)
    ],
    toolchain.ETCD_WRAPPER: ["go.etcd.io/etcd/server/v3"],
    toolchain.HELM_WRAPPER: [f"{toolchain.HELM_MODULE}/cmd/helm"],
}


def sums(wrapper: str) -> set[tuple[str, str]]:
    """(module, version) of every line of the committed go.sum; ``version/go.mod`` for the
    hash of a go.mod alone."""
    lines = (toolchain.WRAPPERS / wrapper / "go.sum").read_text().splitlines()
    return {(line.split()[0], line.split()[1]) for line in lines if line.strip()}


def test_the_wrappers_require_the_pinned_versions() -> None:
    kube = (toolchain.WRAPPERS / toolchain.KUBERNETES_WRAPPER / "go.mod").read_text()
    requires, replaces = toolchain.wrapper_modules(kube)
    assert requires == {"k8s.io/kubernetes": toolchain.KUBERNETES_VERSION}
    staging = "v0." + toolchain.KUBERNETES_VERSION.split(".", 1)[1]
    assert "k8s.io/client-go" in replaces and set(replaces.values()) == {staging}
    # What --update-wrappers would write for these staging modules, to the byte.
    want = toolchain.kubernetes_modules(toolchain.KUBERNETES_VERSION, sorted(replaces))
    assert (requires, replaces) == want
    assert kube == toolchain.render_wrapper(
        "powercap.local/toolchain/kubernetes", requires, replaces=replaces
    )
    helm = (toolchain.WRAPPERS / toolchain.HELM_WRAPPER / "go.mod").read_text()
    assert helm == toolchain.render_wrapper(
        "powercap.local/toolchain/helm", toolchain.helm_modules(toolchain.HELM_VERSION), replaces={}
    )
    etcd = (toolchain.WRAPPERS / toolchain.ETCD_WRAPPER / "go.mod").read_text()
    assert etcd == toolchain.render_wrapper(
        "powercap.local/toolchain/etcd", toolchain.etcd_modules(toolchain.ETCD_VERSION), replaces={}
    )


@pytest.mark.parametrize("wrapper", sorted(WRAPPED))
def test_the_committed_go_sum_covers_what_the_wrapper_requires(wrapper: str) -> None:
    requires, replaces = toolchain.wrapper_modules(
        (toolchain.WRAPPERS / wrapper / "go.mod").read_text()
    )
    found = sums(wrapper)
    for module, version in requires.items():
        assert (module, version) in found, f"{wrapper}/go.sum: no hash of {module} {version}"
        assert (module, f"{version}/go.mod") in found, f"{wrapper}/go.sum: no go.mod hash"
    # The staging modules the kube commands import are pinned by hash too.
    if replaces:
        assert ("k8s.io/client-go", f"{replaces['k8s.io/client-go']}") in found


def go_env(tmp_path: Path) -> dict[str, str]:
    """Go with the local module cache only: nothing fetched, nothing written back."""
    return {
        **os.environ,
        "GOFLAGS": "-mod=readonly",
        "GOPROXY": "off",
        "GOTOOLCHAIN": "local",
        "CGO_ENABLED": "0",
        "GOCACHE": str(tmp_path / "gocache"),
    }


@pytest.mark.parametrize("wrapper", sorted(WRAPPED))
def test_go_verifies_the_committed_go_sum_in_a_copy(wrapper: str, tmp_path: Path) -> None:
    if shutil.which("go") is None:
        pytest.fail("no go on PATH: install Go >= 1.26 (make tools builds the toolchain with it)")
    copy = tmp_path / wrapper
    shutil.copytree(toolchain.WRAPPERS / wrapper, copy)
    env = go_env(tmp_path)
    load = subprocess.run(
        ["go", "list", "-mod=readonly", "-deps", *WRAPPED[wrapper]],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if "module lookup disabled" in load.stderr:
        pytest.fail(
            f"the modules of {wrapper} are not in the local module cache: run make tools first"
        )
    # A hash the build needs and the go.sum lacks: "missing go.sum entry".
    assert load.returncode == 0, load.stderr[-2000:]
    verify = subprocess.run(
        ["go", "mod", "verify"], cwd=copy, env=env, capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0 and "all modules verified" in verify.stdout, verify.stderr
    # Nothing was written back: the copy is the committed wrapper.
    for name in ("go.mod", "go.sum"):
        assert (copy / name).read_bytes() == (toolchain.WRAPPERS / wrapper / name).read_bytes()


def test_a_build_verifies_the_modules_then_builds_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kubernetes, etcd and helm builds, with the go commands recorded instead of run."""
    commands: list[tuple[list[str], Path]] = []
    kube_mod = tmp_path / "kubernetes.mod"
    kube_mod.write_text(
        "module k8s.io/kubernetes\n\nreplace (\n"
        + "".join(
            f"\t{m} => ./staging/src/{m}\n"
            for m in toolchain.wrapper_modules(
                (toolchain.WRAPPERS / toolchain.KUBERNETES_WRAPPER / "go.mod").read_text()
            )[1]
        )
        + ")\n"
    )
    info = tmp_path / "kubernetes.info"
    info.write_text('{"Time": "2026-01-02T03:04:05Z"}')

    def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
        commands.append((list(cmd), cwd))
        if cmd[:3] == ["go", "mod", "download"]:
            return f'{{"GoMod": "{kube_mod}", "Info": "{info}"}}'
        return ""

    monkeypatch.setattr(toolchain, "run", run)
    monkeypatch.setenv("POWERCAP_CACHE", str(tmp_path / "cache"))
    assert toolchain.GO_ENV["GOFLAGS"] == "-mod=readonly"
    for component in toolchain.components():
        wrappers = {
            toolchain.build_kubernetes: toolchain.KUBERNETES_WRAPPER,
            toolchain.build_etcd: toolchain.ETCD_WRAPPER,
            toolchain.build_helm: toolchain.HELM_WRAPPER,
        }
        if component.build not in wrappers:
            continue
        commands.clear()
        component.build(component)
        verbs = [cmd[1:3] for cmd, _ in commands]
        assert ["mod", "verify"] in verbs, verbs
        builds = [cmd for cmd, _ in commands if cmd[1] == "build"]
        assert len(builds) == 1 and "-mod=readonly" in builds[0], builds
        # go mod verify checks the module cache before anything is compiled from it.
        assert verbs.index(["mod", "verify"]) < verbs.index(builds[0][1:3])
        # The build ran in a copy of the committed wrapper, go.sum included.
        wrapper = toolchain.WRAPPERS / wrappers[component.build]
        src = commands[-1][1]
        for name in ("go.mod", "go.sum"):
            assert (src / name).read_bytes() == (wrapper / name).read_bytes()


def test_helm_is_stamped_with_its_version() -> None:
    """`helm version` prints what the build stamps into Helm's internal version package."""
    flags = toolchain.helm_ldflags(toolchain.HELM_VERSION)
    assert f"-X helm.sh/helm/v4/internal/version.version={toolchain.HELM_VERSION}" in flags
    (helm,) = [c for c in toolchain.components() if c.build is toolchain.build_helm]
    assert helm.binaries == ("helm",) and helm.recipe == {"ldflags": flags}


def test_a_pinned_version_the_wrapper_does_not_match_stops_the_build() -> None:
    with pytest.raises(toolchain.StepError, match="does not match the pinned versions") as err:
        toolchain.check_wrapper(
            toolchain.ETCD_WRAPPER, toolchain.etcd_modules("v3.6.99"), replaces={}
        )
    assert err.value.retry == "python -m e2e.toolchain --update-wrappers"
