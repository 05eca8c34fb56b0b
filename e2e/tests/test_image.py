"""The container image (Containerfile, built by `make image` through :mod:`e2e.image`), run
with ``buildah run --isolation chroot``: its ``powercap`` prints the package version, runs
as uid/gid 65532 with nothing on the root filesystem it could write, has no matplotlib
(``--report`` says how to get it), and ``powercap serve --scenario`` inside answers
``/readyz`` and a ``/filter`` call from the host.

Chroot isolation shares the host's network namespace (``--network host`` says so
explicitly), so the servers inside listen on free host loopback ports. buildah cannot
mount a container's root read-only; the test does the equivalent for a non-root user: it
checks that the only places uid 65532 may write are ``/tmp``, ``/var/tmp`` and
``/run/lock`` (world-writable in Debian) and mounts an empty read-only directory over
each of them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from e2e import image
from e2e.cluster import free_ports

pytestmark = pytest.mark.e2e

# World-writable in a Debian root filesystem (mode 1777); each gets a read-only mount.
WRITABLE = ("/tmp", "/var/tmp", "/run/lock")
READY_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def built() -> str:
    try:
        image.require_buildah()
        return image.build()
    except image.ImageError as exc:
        pytest.fail(f"the container image cannot be built: {exc}")


@pytest.fixture(scope="module")
def container(built: str) -> Iterator[str]:
    name = image.buildah("from", "--pull-never", built).stdout.strip()
    try:
        yield name
    finally:
        image.buildah("rm", name, check=False)


@pytest.fixture(scope="module")
def read_only(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """``--volume`` arguments that leave uid 65532 nowhere to write."""
    empty = tmp_path_factory.mktemp("empty")
    empty.chmod(0o755)
    return [arg for path in WRITABLE for arg in ("--volume", f"{empty}:{path}:ro")]


def run_argv(container: str, argv: Sequence[str], volumes: Sequence[str] = ()) -> list[str]:
    return [
        "buildah",
        "run",
        "--isolation",
        "chroot",
        "--network",
        "host",
        *volumes,
        container,
        "--",
        *argv,
    ]


def run_in(
    container: str, argv: Sequence[str], volumes: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        run_argv(container, argv, volumes), capture_output=True, text=True, timeout=120
    )


def test_image_config_runs_powercap_as_65532(built: str) -> None:
    proc = image.buildah("inspect", "--type", "image", built)
    config = json.loads(proc.stdout)["OCIv1"]["config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["powercap"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == image.version()
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels[image.KEY_LABEL] == image.build_key(image.choose_base(None))


def test_version_inside(container: str, read_only: list[str]) -> None:
    proc = run_in(container, ["powercap", "--version"], read_only)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"powercap {image.version()}\n"


def test_nothing_on_the_root_filesystem_is_writable(container: str, read_only: list[str]) -> None:
    ids = run_in(container, ["sh", "-c", "id -u; id -g"], read_only)
    assert ids.stdout.split() == ["65532", "65532"], ids.stderr
    # Without the read-only mounts: what the user could write on the image's own root.
    writable = run_in(
        container,
        ["find", "/", "-xdev", "-writable", "-not", "-type", "l", "-not", "-path", "/proc/*"],
    )
    assert sorted(writable.stdout.split()) == sorted(WRITABLE), writable.stdout
    # With them: nowhere.
    probe = "for d in / /opt/powercap /etc " + " ".join(WRITABLE) + "; do "
    probe += 'touch "$d/.probe" 2>/dev/null && echo "$d"; done; true'
    wrote = run_in(container, ["sh", "-c", probe], read_only)
    assert wrote.returncode == 0, wrote.stderr
    assert wrote.stdout == ""


def test_report_names_the_extra_missing_from_the_image(
    container: str, read_only: list[str]
) -> None:
    proc = run_in(container, ["powercap", "compare", "--report", "/tmp/report"], read_only)
    assert proc.returncode == 2
    flat = " ".join(proc.stderr.replace("│", " ").split())
    assert "pip install 'powercap-scheduler[report]'" in flat, proc.stderr


def test_serve_answers_readyz_and_filter_from_the_host(
    container: str, read_only: list[str], tmp_path: Path
) -> None:
    scenario = run_in(container, ["powercap", "scenario", "default"], read_only)
    assert scenario.returncode == 0, scenario.stderr
    (tmp_path / "default.yaml").write_text(scenario.stdout)
    tmp_path.chmod(0o755)
    (tmp_path / "default.yaml").chmod(0o644)
    verbs, metrics = free_ports(2)
    argv = run_argv(
        container,
        [
            "powercap",
            "serve",
            "--scenario",
            "/scenario/default.yaml",
            "--host",
            "127.0.0.1",
            "--port",
            str(verbs),
            "--metrics-address",
            f"127.0.0.1:{metrics}",
        ],
        [*read_only, "--volume", f"{tmp_path}:/scenario:ro"],
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        ready = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{metrics}/readyz", timeout=2.0)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        assert ready is not None and ready.status_code == 200, log.read_text()
        body = {
            "Pod": {
                "metadata": {
                    "name": "chat-eu-0",
                    "namespace": "llm",
                    "uid": "uid-llm-chat-eu-0",
                    "labels": {"powercap.io/service": "chat-eu"},
                },
                "spec": {
                    "containers": [
                        {
                            "name": "vllm",
                            "resources": {
                                "requests": {"nvidia.com/gpu": "8"},
                                "limits": {"nvidia.com/gpu": "8"},
                            },
                        }
                    ]
                },
                "status": {"phase": "Pending"},
            },
            "Nodes": None,
            "NodeNames": ["gpu-0001", "gpu-0002"],
        }
        reply = httpx.post(f"http://127.0.0.1:{verbs}/filter", json=body, timeout=10.0)
        assert reply.status_code == 200, reply.text
        result = reply.json()
        assert not result.get("Error"), result
        assert set(result["NodeNames"]) == {"gpu-0001", "gpu-0002"}, result
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)
