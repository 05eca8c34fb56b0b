"""``powercap profiles learn`` against a real Prometheus holding two days of history.

The history is generated from known per-service profiles (T = 144 on the default grid):
DCGM-shaped per-GPU power at a 1-minute resolution, labelled with ``pod``/``namespace``
as the DCGM exporter labels GPUs a pod holds, each GPU drawing a 60 W idle plus its share
of its pod's watts (the profile's value times seeded noise), and kube-state-metrics'
``kube_pod_labels`` carrying each pod's ``powercap.io/service``. Besides the services'
pods there is a GPU no pod holds and a pod without the service label; neither may count.
One service scales from one pod to two on the second day.

``promtool tsdb create-blocks-from openmetrics`` turns the text into blocks, Prometheus
serves them, and the CLI runs as a subprocess. The range query is evaluated exactly on
the sample instants, so every learned value must equal ``np.quantile`` of the generated
per-pod watts in its slot (to the 0.1 W the files are written at), and lie where p95 of
the noise puts it relative to the known profile. The output must load through the
extender's config loader, as a ConfigMap mounted next to the config would.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from numpy.typing import NDArray

from e2e.cluster import TEST_LOG_DIR
from e2e.prometheus import prometheus, promtool_binary
from e2e.scheduler import powercap_command
from extender.config.loading import load_config
from placement.grid import Grid

pytestmark = pytest.mark.e2e

GRID = Grid()  # 24h in 10-minute slots
DAY = 86400
DAYS = 2
GPU_IDLE_W = 60.0
NOISE = 0.05  # σ of the multiplicative noise on a pod's watts
NAMESPACE = "llm"


@dataclass(frozen=True)
class Pod:
    name: str
    service: str | None  # None: a pod without the powercap.io/service label
    gpus: int
    from_day: int = 0  # runs from this day of the history to its end


def diurnal(low: float, high: float, peak_hour: float) -> NDArray[np.float64]:
    """A smooth daily curve on the grid: ``high`` at ``peak_hour``, ``low`` 12 h away."""
    hours = np.arange(GRID.slots) * GRID.step_s / 3600.0
    shape = 0.5 * (1 + np.cos(2 * np.pi * (hours - peak_hour) / 24))
    return low + (high - low) * shape


PROFILES = {
    "chat-eu": diurnal(450.0, 3400.0, 10.0),
    "chat-us": diurnal(450.0, 3400.0, 17.0),
    "batch-night": diurnal(50.0, 400.0, 2.0),
}
PODS = [
    Pod("chat-eu-0", "chat-eu", 2),
    Pod("chat-eu-1", "chat-eu", 2),
    Pod("chat-us-0", "chat-us", 2),
    Pod("chat-us-1", "chat-us", 2, from_day=1),
    Pod("batch-night-0", "batch-night", 1),
    Pod("debug", None, 1),  # holds a GPU, belongs to no service
]


@dataclass
class History:
    text: str
    origin: int  # first sample (a UTC midnight)
    end: int  # the instant after the last sample
    watts: dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]]  # per service


def history(now: float) -> History:
    """OpenMetrics text for ``DAYS`` days ending at the last UTC midnight before ``now``,
    and the per-pod watts above idle each service's samples really have."""
    end = int(now // DAY * DAY)
    origin = end - DAYS * DAY
    minutes = np.arange(origin, end, 60)
    rng = np.random.default_rng(20261127)
    dcgm: list[str] = []
    labels: list[str] = []
    samples: dict[str, tuple[list[NDArray[np.float64]], list[NDArray[np.float64]]]] = {}
    gpu = 0
    for pod in PODS:
        times = minutes[minutes >= origin + pod.from_day * DAY]
        profile = PROFILES.get(pod.service or "", np.full(GRID.slots, 250.0))
        slots = ((times % DAY) // GRID.step_s).astype(np.int64)
        pod_w = profile[slots] * np.maximum(0.0, 1 + NOISE * rng.standard_normal(times.size))
        # Each GPU reads its idle plus its share, at the millwatt the text carries.
        per_gpu = np.round(GPU_IDLE_W + pod_w / pod.gpus, 3)
        base = f'Hostname="node-{gpu // 8}",namespace="{NAMESPACE}",pod="{pod.name}"'
        for _ in range(pod.gpus):
            series = f'DCGM_FI_DEV_POWER_USAGE{{gpu="{gpu % 8}",{base},container="server"}}'
            dcgm += [f"{series} {w:.3f} {t}" for t, w in zip(times, per_gpu, strict=True)]
            gpu += 1
        label = f',label_powercap_io_service="{pod.service}"' if pod.service else ""
        series = f'kube_pod_labels{{namespace="{NAMESPACE}",pod="{pod.name}"{label}}}'
        labels += [f"{series} 1 {t}" for t in times]
        if pod.service:
            above_idle = (per_gpu - GPU_IDLE_W) * pod.gpus
            ts, ws = samples.setdefault(pod.service, ([], []))
            ts.append(times.astype(np.float64))
            ws.append(above_idle)
    # A GPU that no pod holds: the exporter leaves pod and namespace empty.
    idle = 'DCGM_FI_DEV_POWER_USAGE{gpu="7",Hostname="node-9",namespace="",pod=""}'
    dcgm += [f"{idle} {GPU_IDLE_W:.3f} {t}" for t in minutes]
    text = "\n".join(
        [
            "# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).",
            "# TYPE DCGM_FI_DEV_POWER_USAGE gauge",
            *dcgm,
            "# HELP kube_pod_labels Kubernetes labels converted to Prometheus labels.",
            "# TYPE kube_pod_labels gauge",
            *labels,
            "# EOF",
            "",
        ]
    )
    watts = {s: (np.concatenate(ts), np.concatenate(ws)) for s, (ts, ws) in samples.items()}
    return History(text, origin, end, watts)


def expected_profile(times: NDArray[np.float64], watts: NDArray[np.float64]) -> NDArray[Any]:
    slots = (times.astype(np.int64) % DAY) // GRID.step_s
    return np.array([np.quantile(watts[slots == t], 0.95) for t in range(GRID.slots)])


def backfill(h: History, work: Path) -> Path:
    source = work / "history.om.txt"
    source.write_text(h.text)
    data = work / "tsdb"
    proc = subprocess.run(
        [
            *(str(promtool_binary()), "tsdb", "create-blocks-from", "openmetrics"),
            *("-q", str(source), str(data)),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, f"promtool failed:\n{proc.stdout}\n{proc.stderr}"
    return data


def learn_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*powercap_command(), "profiles", "learn", "--prometheus", url, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


CUSTOM_QUERY = f"""sum by (namespace, pod) (
  label_replace(label_replace(DCGM_FI_DEV_POWER_USAGE{{pod!=""}} - {GPU_IDLE_W:g},
    "pod", "$1", "pod", "(.+)"), "namespace", "$1", "namespace", "(.+)"))
* on (namespace, pod) group_left (label_powercap_io_service)
  max by (namespace, pod, label_powercap_io_service)
    (kube_pod_labels{{label_powercap_io_service!=""}})"""

CONFIG_HEAD = """\
apiVersion: powercap.io/v1alpha1
kind: PowercapConfig
grid: {period: 24h, step: 10m}
domains:
  - {name: site, cap: 200000}
"""


def test_learned_profiles_match_the_history_and_load(tmp_path: Path) -> None:
    h = history(time.time())
    data = backfill(h, tmp_path)
    (tmp_path / "grid.yaml").write_text(CONFIG_HEAD)
    # The last sample is one minute before `end`; ending the window there keeps the
    # lookback from repeating it at `end` (which is slot 0 of the next day).
    window = ["--since", f"{DAYS}d", "--until", str(h.end - 60)]
    with prometheus([], TEST_LOG_DIR, storage=data, retention="30d") as prom:
        as_configmap = learn_cli(
            prom.url,
            *window,
            "--gpu-idle-watts",
            f"{GPU_IDLE_W:g}",
            "--config",
            str(tmp_path / "grid.yaml"),
            "--format",
            "configmap",
            "-o",
            str(tmp_path / "configmap.yaml"),
        )
        as_files = learn_cli(
            prom.url,
            *window,
            "--gpu-idle-watts",
            f"{GPU_IDLE_W:g}",
            "--service",
            "batch-night",
            "-o",
            str(tmp_path / "files"),
        )
        # A query of one's own (here the docs' exported-labels form, on labels named as
        # the exporter names them): the same samples, so the same profiles.
        custom = learn_cli(prom.url, *window, "--query", CUSTOM_QUERY, "-o", str(tmp_path / "q"))
        refused = learn_cli(prom.url, *window, "--query", "sum(")
        # chat-us has 30 samples a slot (one pod, then two, 10 a day each), batch-night 20.
        too_few = learn_cli(prom.url, *window, "--min-samples", "35")

    assert as_configmap.returncode == 0, as_configmap.stderr
    stderr = as_configmap.stderr
    assert "learned 3 service(s)" in stderr and "debug" not in stderr
    assert "wrote ConfigMap powercap-system/powercap-profiles" in stderr

    configmap = yaml.safe_load((tmp_path / "configmap.yaml").read_text())
    assert configmap["kind"] == "ConfigMap"
    assert sorted(configmap["data"]) == [f"{s}.yaml" for s in sorted(PROFILES)]
    # Mount it as the config's profiles/ directory, as the Deployment does.
    (tmp_path / "etc" / "profiles").mkdir(parents=True)
    for key, text in configmap["data"].items():
        (tmp_path / "etc" / "profiles" / key).write_text(text)
    services = "".join(f"  {s}: {{profile: {s}}}\n" for s in PROFILES)
    config = tmp_path / "etc" / "powercap.yaml"
    config.write_text(CONFIG_HEAD + "profileFiles: [profiles/*.yaml]\nservices:\n" + services)
    loaded = load_config(config)

    for service, known in PROFILES.items():
        learned = loaded.services[service].profile
        assert learned is not None and learned.shape == (GRID.slots,)
        # Exactly the p95 of what was generated (files carry 0.1 W).
        np.testing.assert_allclose(learned, expected_profile(*h.watts[service]), atol=0.051)
        # And where p95 of the noise puts it: above the profile, below +4σ in every
        # slot, about +1.645σ on average.
        ratio = learned / known
        assert (ratio > 1.0).all() and (ratio < 1 + 4 * NOISE).all(), service
        assert abs(ratio.mean() - (1 + 1.645 * NOISE)) < 0.02, (service, ratio.mean())
    rows = [line.split() for line in stderr.splitlines()]
    pods = {row[0]: int(row[1]) for row in rows if row and row[0] in PROFILES}
    assert pods == {"batch-night": 1, "chat-eu": 2, "chat-us": 2}

    assert as_files.returncode == 0, as_files.stderr
    assert sorted(p.name for p in (tmp_path / "files").iterdir()) == ["batch-night.yaml"]
    doc = yaml.safe_load((tmp_path / "files" / "batch-night.yaml").read_text())
    np.testing.assert_allclose(doc["profile"], loaded.profiles["batch-night"], atol=1e-9)

    assert custom.returncode == 0, custom.stderr
    for service in PROFILES:
        doc = yaml.safe_load((tmp_path / "q" / f"{service}.yaml").read_text())
        assert doc["profile"] == loaded.profiles[service].tolist(), service
    assert refused.returncode == 2
    assert "refused the query" in refused.stderr and "check --query" in refused.stderr

    # Too few samples: nothing written, the thin slots named, the fixes given.
    assert too_few.returncode == 1, too_few.stderr
    assert "thin: chat-us: all 144 slots with 30–30 samples" in too_few.stderr
    assert "--fill nearest" in too_few.stderr
    assert "--gpu-idle-watts not given" in too_few.stderr
    assert too_few.stdout == ""
