"""Build the container image of the Containerfile with buildah, once per change of its inputs.

    python -m e2e.image                        # build what is missing; print the image name
    python -m e2e.image --base IMAGE           # build on another Debian bookworm python image

The image is ``localhost/powercap-scheduler:<version of pyproject.toml>``, built by
``buildah bud --isolation chroot`` (no daemon, no user namespaces needed). Its label
``io.powercap.build-key`` holds a hash of everything the build reads: the Containerfile,
the lock files, the tracked files under the copied paths and the base image's name. A run
whose key matches the label of the existing image does nothing, so an unchanged tree
costs one ``buildah inspect``.

The base (``ARG BASE`` of the Containerfile) is, in this order: ``--base``; the default
base if present locally; ``localhost/powercap-base:bookworm`` if present; the default base
pulled from its registry; else that local base, made from Debian packages with
``mmdebstrap`` (python3, python3-venv, ca-certificates; bookworm's python3 is 3.11) and
committed with buildah. Hosts without a reachable registry take the last path once.

The builder stage reaches PyPI through the host's network; the host's CA bundle is
mounted over the base's during ``RUN`` steps, so a host behind a TLS-inspecting proxy
builds as well as one without. Progress goes to stderr, the image name to stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import deque
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = "localhost/powercap-scheduler"
DEFAULT_BASE = "docker.io/library/python:3.11-slim-bookworm"
LOCAL_BASE = "localhost/powercap-base:bookworm"
# Debian packages of the local base: the venv module brings pip (ensurepip) for the builder.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
KEY_LABEL = "io.powercap.build-key"
SOURCE_URL = "https://github.com/powercap/powercap"
# What the Containerfile copies (besides the lock files); they make the build key.
BUILD_INPUTS = (
    "Containerfile",
    "requirements",
    "pyproject.toml",
    "README.md",
    "LICENSE",
    "placement",
    "extender",
    "powercap",
    "e2e",
)
# Copied with e2e/ but left out of the wheel (pyproject.toml): no rebuild when they change.
NOT_BUILT = ("e2e/tests",)
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
TOOLS_INSTALL = "sudo apt-get install -y buildah mmdebstrap"


class ImageError(RuntimeError):
    """The image cannot be built; the message says what to do."""


def log(message: str) -> None:
    print(f">> {message}", file=sys.stderr, flush=True)


def version() -> str:
    """The project version, from pyproject.toml."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def image_name() -> str:
    return f"{REPOSITORY}:{version()}"


def require_buildah() -> str:
    path = shutil.which("buildah")
    if path is None:
        raise ImageError(
            f"buildah is not installed: run `make image` (as root it installs buildah and "
            f"mmdebstrap) or `{TOOLS_INSTALL}`"
        )
    return path


def buildah(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["buildah", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise ImageError(f"buildah {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def image_exists(name: str) -> bool:
    return buildah("inspect", "--type", "image", name, check=False).returncode == 0


def image_id(name: str) -> str | None:
    proc = buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", name, check=False)
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def image_label(name: str, label: str) -> str | None:
    proc = buildah(
        "inspect",
        "--type",
        "image",
        "--format",
        f'{{{{index .OCIv1.Config.Labels "{label}"}}}}',
        name,
        check=False,
    )
    value = proc.stdout.strip()
    return value if proc.returncode == 0 and value and value != "<no value>" else None


def tracked_files() -> list[Path]:
    """The files under BUILD_INPUTS, tracked or new but not ignored (every file outside a
    git work tree)."""
    proc = subprocess.run(
        [
            "git",
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
            "--",
            *BUILD_INPUTS,
            *(f":(exclude){path}" for path in NOT_BUILT),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode == 0:
        names = sorted(n for n in proc.stdout.split("\0") if n)
        return [ROOT / n for n in names if (ROOT / n).is_file()]
    files: list[Path] = []
    for name in BUILD_INPUTS:
        path = ROOT / name
        if path.is_file():
            files.append(path)
        else:
            files += sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and "__pycache__" not in p.parts
                and not any(p.is_relative_to(ROOT / n) for n in NOT_BUILT)
            )
    return files


def build_key(base: str) -> str:
    """A hash of the build's inputs: file names and contents (as in the work tree) and base."""
    digest = hashlib.sha256(f"base={base}\n".encode())
    for path in tracked_files():
        digest.update(f"{path.relative_to(ROOT)}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def revision() -> str:
    proc = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


def make_local_base() -> str:
    """A Debian bookworm root filesystem from Debian packages, committed as LOCAL_BASE."""
    if shutil.which("mmdebstrap") is None:
        raise ImageError(
            f"{DEFAULT_BASE} cannot be pulled and mmdebstrap, which makes a local base, is "
            f"not installed: run `make image` as root or `{TOOLS_INSTALL}`"
        )
    log(f"making {LOCAL_BASE} with mmdebstrap ({', '.join(BASE_PACKAGES)}); about a minute")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="powercap-base-") as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        proc = subprocess.run(
            [
                "mmdebstrap",
                "--quiet",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                # no documentation, manual pages or translations in an image
                "--dpkgopt=path-exclude=/usr/share/doc/*",
                "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                "--dpkgopt=path-exclude=/usr/share/man/*",
                "--dpkgopt=path-exclude=/usr/share/locale/*",
                "--dpkgopt=path-exclude=/usr/share/info/*",
                "bookworm",
                str(tarball),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise ImageError(f"mmdebstrap failed ({proc.returncode}):\n{proc.stderr}")
        container = buildah("from", "scratch").stdout.strip()
        try:
            buildah("add", container, str(tarball), "/")
            buildah(
                "config", "--cmd", "/bin/bash", "--label", "io.powercap.base=mmdebstrap", container
            )
            buildah("commit", "--quiet", container, LOCAL_BASE)
        finally:
            buildah("rm", container, check=False)
    log(f"{LOCAL_BASE} made in {time.monotonic() - started:.0f} s")
    return LOCAL_BASE


def choose_base(base: str | None) -> str:
    if base is not None:
        return base
    for candidate in (DEFAULT_BASE, LOCAL_BASE):
        if image_exists(candidate):
            return candidate
    log(f"pulling {DEFAULT_BASE}")
    pulled = buildah("pull", "--quiet", DEFAULT_BASE, check=False)
    if pulled.returncode == 0:
        return DEFAULT_BASE
    reason = pulled.stderr.strip().splitlines()[-1] if pulled.stderr.strip() else "no output"
    log(f"cannot pull {DEFAULT_BASE} ({reason})")
    return make_local_base()


def run_showing_steps(cmd: Sequence[str]) -> tuple[int, list[str]]:
    """Run ``buildah bud``, echoing each Containerfile step as progress; return its exit
    status and the last lines of its output (for an error message)."""
    tail: deque[str] = deque(maxlen=60)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line)
            if " STEP " in line and (": RUN " in line or ": FROM " in line):
                step = " ".join(line.split())
                log(f"  {step[:110]}{'…' if len(step) > 110 else ''}")
    return proc.returncode, list(tail)


def build(base: str | None = None, *, force: bool = False) -> str:
    """Build the image unless one with the same build key exists; return its name."""
    require_buildah()
    name = image_name()
    chosen = choose_base(base)
    key = build_key(chosen)
    if not force and image_label(name, KEY_LABEL) == key:
        log(f"{name} is up to date (build key {key[:12]})")
        return name
    previous = image_id(name)
    log(f"building {name} on {chosen} with buildah (a few minutes: PyPI downloads)")
    started = time.monotonic()
    cmd = [
        "buildah",
        "bud",
        "--isolation",
        "chroot",
        "--network",
        "host",
        "--file",
        str(ROOT / "Containerfile"),
        "--build-arg",
        f"BASE={chosen}",
        "--build-arg",
        f"VERSION={version()}",
        "--build-arg",
        f"REVISION={revision()}",
        "--build-arg",
        f"SOURCE={SOURCE_URL}",
        "--label",
        f"{KEY_LABEL}={key}",
        "--tag",
        name,
    ]
    if HOST_CA_BUNDLE.is_file():
        cmd += ["--volume", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
    cmd.append(str(ROOT))
    returncode, tail = run_showing_steps(cmd)
    if returncode != 0:
        raise ImageError(f"buildah bud failed ({returncode}):\n" + "".join(tail))
    log(f"built {name} in {time.monotonic() - started:.0f} s")
    if previous is not None and previous != image_id(name):
        # the image this one replaces, now untagged; kept if a container still uses it
        buildah("rmi", previous, check=False)
    return name


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.image", description=__doc__.split("\n")[0])
    parser.add_argument("--base", help=f"the BASE image (default: {DEFAULT_BASE} or a local one)")
    parser.add_argument("--force", action="store_true", help="build even if up to date")
    args = parser.parse_args(argv)
    try:
        print(build(args.base, force=args.force))
    except ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
