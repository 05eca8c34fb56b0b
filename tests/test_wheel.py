"""The wheel ships the three layers and the KWOK harness, and no tests.

Built with the venv's own setuptools (``--no-build-isolation``, offline) from a copy of the
checkout, so the build leaves no build/ or *.egg-info in the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parent.parent

PACKAGES = ("placement", "extender", "powercap")
HARNESS = (
    "e2e/__init__.py",
    "e2e/backend.py",
    "e2e/cluster.py",
    "e2e/toolchain.py",
    # the wrapper modules the toolchain builds from
    "e2e/wrappers/kubernetes/go.mod",
    "e2e/wrappers/kubernetes/go.sum",
    "e2e/wrappers/etcd/go.mod",
    "e2e/wrappers/etcd/go.sum",
    "e2e/wrappers/helm/go.mod",
    "e2e/wrappers/helm/go.sum",
)
# what the build reads; tests/ is copied too, so a wider package include would show
SOURCES = ("pyproject.toml", "README.md", "LICENSE", *PACKAGES, "e2e", "tests")
# `license = "Apache-2.0"` (an SPDX expression) needs setuptools 77; the dev extra pins it
SETUPTOOLS_MIN = (77,)


def _setuptools_version() -> tuple[int, ...] | None:
    try:
        version = metadata.version("setuptools")
    except metadata.PackageNotFoundError:
        return None
    return tuple(int(part) for part in version.split(".")[:2] if part.isdigit())


def _build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info", ".*_cache")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=ignore)
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(path, source / name)
    out = tmp_path / "dist"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--quiet",
            "-w",
            str(out),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = out.glob("*.whl")
    return wheel


def _module_files(package: str) -> set[str]:
    return {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / package).rglob("*.py")
        if "__pycache__" not in path.parts
    }


def test_wheel_ships_the_layers_and_the_harness_and_no_tests(tmp_path: Path) -> None:
    version = _setuptools_version()
    if version is None or version < SETUPTOOLS_MIN:
        found = "no setuptools" if version is None else "setuptools " + ".".join(map(str, version))
        pytest.fail(
            f"{found} in this venv cannot build the wheel offline; "
            "pip install -e '.[dev]' (make venv) brings setuptools>=77"
        )
    wheel = _build_wheel(tmp_path)
    _check_wheel(wheel)
    _run_console_script(wheel, tmp_path / "site")


def _run_console_script(wheel: Path, site: Path) -> None:
    """The wheel's ``powercap`` console script, run from the unpacked wheel (first on the
    path, so the checkout is not what runs), validates the example config."""
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    (entry_points,) = site.glob("*.dist-info/entry_points.txt")
    scripts = entry_points.read_text().split("[console_scripts]", 1)[1]
    target = next(
        line.split("=", 1)[1].strip()
        for line in scripts.splitlines()
        if line.split("=", 1)[0].strip() == "powercap"
    )
    module, function = target.split(":")
    program = (
        "import sys, " + module + "\n"
        "assert " + module + ".__file__.startswith(sys.argv[1]), " + module + ".__file__\n"
        "sys.argv = ['powercap', 'config', 'validate', sys.argv[2]]\n"
        + module
        + "."
        + function
        + "()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", program, str(site), str(ROOT / "config" / "powercap.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=site,
        env={**os.environ, "PYTHONPATH": str(site)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("OK "), proc.stdout


def _check_wheel(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_text = archive.read(entry_points).decode()

    for package in PACKAGES:
        missing = sorted(_module_files(package) - names)
        assert not missing, f"{package}/ modules missing from {wheel.name}: {missing}"
    missing_harness = [name for name in HARNESS if name not in names]
    assert not missing_harness, f"the KWOK harness is missing from {wheel.name}: {missing_harness}"

    tests = sorted(
        name
        for name in names
        if name.startswith(("tests/", "e2e/tests/"))
        or PurePosixPath(name).name.startswith("test_")
        or PurePosixPath(name).name == "conftest.py"
    )
    assert not tests, f"{wheel.name} ships test files: {tests}"

    # `powercap whatif --kwok` finds the harness through this entry point
    assert "[powercap.clusters]" in entry_text
    assert "kwok = e2e.backend:run_on_kwok" in entry_text
