"""The promises of the Containerfile and the lock files that can be checked without a build
(the image itself is tested by e2e/tests/test_image.py)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from e2e import image
from e2e.image import BUILD_INPUTS, image_name

ROOT = Path(__file__).resolve().parent.parent
CONTAINERFILE = (ROOT / "Containerfile").read_text()


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", CONTAINERFILE)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for word, rest in instructions():
        if word == "FROM":
            result.append([])
        if result:
            result[-1].append((word, rest))
    return result


def test_base_is_an_argument_every_stage_starts_from() -> None:
    first = instructions()[0]
    assert first[0] == "ARG" and first[1].startswith("BASE="), first
    assert all(s[0][1].split()[0] == "${BASE}" for s in stages())
    assert len(stages()) == 2


def test_runtime_stage_is_non_root_and_runs_powercap() -> None:
    final = stages()[-1]
    assert ("USER", "65532:65532") in final
    assert ("ENTRYPOINT", '["powercap"]') in final
    # nothing is installed or run in the runtime stage: no compilers, no package manager
    assert not [i for i in final if i[0] == "RUN"]
    assert any(w == "COPY" and r.startswith("--from=builder /opt/powercap") for w, r in final)


def test_every_install_checks_hashes_or_takes_no_dependencies() -> None:
    runs = [r for w, r in instructions() if w == "RUN"]
    installs = [c for r in runs for c in r.split("&&") if " install " in c]
    assert installs
    for command in installs:
        if "-r " in command:
            assert "--require-hashes" in command and "--only-binary=:all:" in command, command
        else:
            assert "--no-deps" in command, command
    assert any("requirements/runtime.lock" in c for c in installs)


def test_the_build_key_covers_everything_copied() -> None:
    """e2e/image.py reuses an image while its inputs hash the same; a COPY source it does
    not hash would let a stale image through."""
    for word, rest in instructions():
        if word == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert source.split("/")[0] in BUILD_INPUTS, source


def locked(name: str) -> set[str]:
    text = (ROOT / "requirements" / name).read_text()
    return {m.group(1).lower() for m in re.finditer(r"^([A-Za-z0-9_.-]+)==", text, re.M)}


def requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0].lower().replace("_", "-")


def test_locks_hold_what_pyproject_asks_for() -> None:
    with (ROOT / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    runtime, dev = locked("runtime.lock"), locked("dev.lock")
    for spec in project["dependencies"]:
        assert requirement_name(spec) in runtime, f"{spec}: run `make lock`"
    extras = project["optional-dependencies"]
    for spec in [*extras["dev"], *extras["report"]]:
        assert requirement_name(spec) in dev, f"{spec}: run `make lock`"
    # charts are the optional `report` extra: not in the image
    assert "matplotlib" not in runtime
    assert "matplotlib" in dev


def test_every_locked_requirement_has_a_hash() -> None:
    for name in ("runtime.lock", "dev.lock", "build.lock"):
        text = (ROOT / "requirements" / name).read_text()
        blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
        assert blocks
        for block in blocks:
            assert "--hash=sha256:" in block, f"{name}: {block.splitlines()[0]}"


def test_manifests_run_the_image_make_image_builds() -> None:
    for name in ("deployment.yaml", "controller.yaml"):
        text = (ROOT / "manifests" / "base" / name).read_text()
        images = re.findall(r"image:\s*(\S*powercap-scheduler\S*)", text)
        assert images == [image_name()], (name, images)


def test_without_buildah_the_image_build_says_what_to_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(image.ImageError, match=r"make image.*apt-get install -y buildah"):
        image.require_buildah()


def test_build_key_follows_the_copied_files_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Outside a git work tree the key walks the copied paths; e2e/tests is not built."""
    monkeypatch.setattr(image, "ROOT", tmp_path)
    for name in ("Containerfile", "pyproject.toml", "powercap/cli.py", "e2e/tests/test_x.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    key = image.build_key("base")
    (tmp_path / "e2e/tests/test_x.py").write_text("changed")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/x.md").write_text("not copied")
    assert image.build_key("base") == key
    (tmp_path / "powercap/cli.py").write_text("changed")
    changed = image.build_key("base")
    assert changed != key
    assert image.build_key("another-base") != changed
