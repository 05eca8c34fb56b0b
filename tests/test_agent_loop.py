"""The agent's loop against the NVML fake (extender/agent/fake.py): clamping to the
constraints, NO_PERMISSION and NOT_SUPPORTED, a GPU lost or gone, withdrawal and exit
restoring the defaults, dry run, the metrics, and the adapter over pynvml's own errors."""

from __future__ import annotations

import logging
import types
from typing import Any

import pynvml
import pytest

from extender.agent.fake import BOARDS, FakeGpu, FakeNvml
from extender.agent.loop import NO_PERMISSION_SENTENCE, Agent, AgentClosed, AgentLoop
from extender.agent.metrics import AgentMetrics
from extender.agent.nvml import (
    NVML_ERROR_NO_PERMISSION,
    NVML_ERROR_NOT_SUPPORTED,
    NvmlError,
    PynvmlLibrary,
)
from extender.agent.resource import NodePowerLimit, parse

H100 = BOARDS["H100-SXM5-80GB"]


def request(spec: dict[str, Any], generation: int = 1) -> NodePowerLimit:
    return parse({"metadata": {"name": "gpu-1", "generation": generation}, "spec": spec})


def started(nvml: FakeNvml, *, dry_run: bool = False) -> tuple[Agent, AgentMetrics]:
    metrics = AgentMetrics()
    agent = Agent(nvml, metrics=metrics, dry_run=dry_run)
    agent.start()
    return agent, metrics


def sample(metrics: AgentMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def limits(nvml: FakeNvml) -> list[int]:
    return [g.limit_mw for g in nvml.gpus]


def test_request_is_applied_clamped_and_reported() -> None:
    nvml = FakeNvml.of("H100-SXM5-80GB", 3)
    agent, metrics = started(nvml)
    spec = {"wattsPerGpu": 350, "gpus": [{"index": 1, "watts": 100}, {"index": 2, "watts": 900}]}
    status = agent.reconcile(request(spec, generation=4))
    # 100 W is under the H100's 200 W minimum, 900 W over its 700 W maximum
    assert limits(nvml) == [350_000, 200_000, 700_000]
    assert [g.enforced_watts for g in status.gpus] == [350, 200, 700]
    assert [g.requested_watts for g in status.gpus] == [350, 100, 900]
    assert status.gpus[1].message is not None and "clamped to 200 W" in status.gpus[1].message
    assert (status.gpus[0].min_watts, status.gpus[0].max_watts) == (200, 700)
    assert status.observed_generation == 4
    assert status.can_set_limits is True
    (cond,) = status.conditions
    assert (cond.type, cond.status, cond.reason) == ("Applied", "True", "Applied")
    uuid = nvml.gpus[1].uuid
    assert sample(metrics, "powercap_agent_gpu_power_limit_watts", gpu="1", uuid=uuid) == 200
    assert sample(metrics, "powercap_agent_gpu_power_limit_min_watts", gpu="1", uuid=uuid) == 200
    assert sample(metrics, "powercap_agent_gpu_power_limit_max_watts", gpu="1", uuid=uuid) == 700
    assert (
        sample(metrics, "powercap_agent_gpu_power_limit_default_watts", gpu="1", uuid=uuid) == 700
    )
    assert sample(metrics, "powercap_agent_can_set_limits") == 1
    # a second round with the limits already in place sets nothing more
    sets = len(nvml.sets)
    agent.reconcile(request(spec, generation=4))
    assert len(nvml.sets) == sets


def test_gpu_named_by_uuid_and_unknown_entries() -> None:
    nvml = FakeNvml.of("A100-SXM4-80GB", 2)
    agent, _ = started(nvml)
    spec = {"gpus": [{"uuid": nvml.gpus[1].uuid, "watts": 250}, {"index": 5, "watts": 200}]}
    status = agent.reconcile(request(spec))
    assert limits(nvml) == [400_000, 250_000]  # GPU 0 not named: its default
    cond = status.conditions[0]
    assert (cond.status, cond.reason) == ("False", "UnknownGpu")
    assert "spec.gpus[1] (index 5)" in cond.message


def test_withdrawal_restores_the_defaults() -> None:
    nvml = FakeNvml.of("L4", 2)
    agent, _ = started(nvml)
    agent.reconcile(request({"wattsPerGpu": 50}))
    assert limits(nvml) == [50_000, 50_000]
    status = agent.reconcile(request({}, generation=2))  # spec emptied
    assert limits(nvml) == [72_000, 72_000]
    assert status.conditions[0].reason == "Defaults"
    agent.reconcile(request({"wattsPerGpu": 60}, generation=3))
    agent.reconcile(None)  # object deleted
    assert limits(nvml) == [72_000, 72_000]


def test_no_permission_is_reported_plainly(caplog: pytest.LogCaptureFixture) -> None:
    nvml = FakeNvml.of("H100-SXM5-80GB", 2, settable=False)
    with caplog.at_level(logging.ERROR):
        agent, metrics = started(nvml)
        status = agent.reconcile(request({"wattsPerGpu": 300}))
        agent.reconcile(request({"wattsPerGpu": 300}))
    assert limits(nvml) == [700_000, 700_000]  # nothing changed
    assert status.can_set_limits is False
    assert [g.reason for g in status.gpus] == ["NoPermission", "NoPermission"]
    assert [g.enforced_watts for g in status.gpus] == [700, 700]
    cond = status.conditions[0]
    assert (cond.status, cond.reason) == ("False", "NoPermission")
    assert "Insufficient Permissions" in cond.message
    assert sample(metrics, "powercap_agent_can_set_limits") == 0
    # the start-up probe and two rounds of two GPUs each refused
    assert sample(metrics, "powercap_agent_apply_errors_total", reason="NoPermission") == 5
    said = [r.getMessage() for r in caplog.records if "CAP_SYS_ADMIN" in r.getMessage()]
    assert said == [NO_PERMISSION_SENTENCE]  # one plain sentence, once


def test_not_supported_board_is_reported() -> None:
    nvml = FakeNvml.of("T4", 1, supported=False)
    agent, metrics = started(nvml)
    status = agent.reconcile(request({"wattsPerGpu": 65}))
    (gpu,) = status.gpus
    assert gpu.reason == "NotSupported"
    assert status.conditions[0].reason == "NotSupported"
    assert sample(metrics, "powercap_agent_apply_errors_total", reason="NotSupported") == 1
    assert nvml.sets == []


def test_a_lost_gpu_and_a_removed_gpu() -> None:
    nvml = FakeNvml.of("H100-SXM5-80GB", 3)
    agent, metrics = started(nvml)
    agent.reconcile(request({"wattsPerGpu": 400}))
    gone = nvml.gpus[2]
    nvml.gpus[1].lost = True
    nvml.gpus.remove(gone)
    status = agent.reconcile(request({"wattsPerGpu": 400}))
    assert [g.reason for g in status.gpus] == [None, "GpuIsLost"]
    assert status.conditions[0].reason == "GpuIsLost"
    assert sample(metrics, "powercap_agent_gpus") == 2
    assert sample(metrics, "powercap_agent_apply_errors_total", reason="GpuIsLost") == 1
    # the series of the lost and the removed GPU are gone, the healthy one stays
    name = "powercap_agent_gpu_power_limit_watts"
    assert sample(metrics, name, gpu="2", uuid=gone.uuid) is None
    assert sample(metrics, name, gpu="1", uuid=nvml.gpus[1].uuid) is None
    assert sample(metrics, name, gpu="0", uuid=nvml.gpus[0].uuid) == 400


def test_dry_run_sets_nothing() -> None:
    nvml = FakeNvml.of("L4", 1)
    agent, _ = started(nvml, dry_run=True)
    status = agent.reconcile(request({"wattsPerGpu": 50}))
    assert nvml.sets == [] and limits(nvml) == [72_000]
    assert status.gpus[0].reason == "DryRun"
    assert status.can_set_limits is None
    assert agent.restore_defaults() == 0


class Requests:
    """The request store as the loop sees it (the API server version is in
    e2e/tests/test_agent.py)."""

    def __init__(self, obj: dict[str, Any] | None) -> None:
        self.obj = obj
        self.statuses: list[dict[str, Any]] = []

    def fetch(self) -> tuple[dict[str, Any] | None, str]:
        return self.obj, "1"

    def wait(self, resource_version: str, timeout_s: int) -> None:
        return None

    def write_status(self, obj: dict[str, Any], status: dict[str, Any]) -> bool:
        self.statuses.append(status)
        if self.obj is not None:
            self.obj = {**self.obj, "status": status}
        return True


def test_loop_writes_status_only_on_change_and_restores_on_exit() -> None:
    nvml = FakeNvml.of("H100-SXM5-80GB", 2)
    agent, _ = started(nvml)
    store = Requests({"metadata": {"name": "gpu-1", "generation": 1}, "spec": {"wattsPerGpu": 300}})
    loop = AgentLoop(agent, store, resync_s=1, restore_on_exit=True)
    loop.round()
    loop.round()
    assert len(store.statuses) == 1  # the second round changed nothing
    assert store.statuses[0]["gpus"][0]["enforcedWatts"] == 300
    assert loop.ready
    loop.stop()
    assert limits(nvml) == [700_000, 700_000]


def test_exit_without_restore_keeps_the_limits() -> None:
    nvml = FakeNvml.of("H100-SXM5-80GB", 1)
    agent, _ = started(nvml)
    loop = AgentLoop(
        agent,
        Requests({"metadata": {"name": "n"}, "spec": {"wattsPerGpu": 250}}),
        restore_on_exit=False,
    )
    loop.round()
    loop.stop()
    assert limits(nvml) == [250_000]


def test_an_invalid_request_changes_nothing_and_says_why() -> None:
    nvml = FakeNvml.of("L4", 1)
    agent, _ = started(nvml)
    store = Requests({"metadata": {"name": "n"}, "spec": {"wattsPerGpu": 50}})
    loop = AgentLoop(agent, store)
    loop.round()
    assert limits(nvml) == [50_000]
    store.obj = {"metadata": {"name": "n"}, "spec": {"wattsPerGpu": -5}}
    loop.round()
    status = store.statuses[-1]
    cond = status["conditions"][0]
    assert cond["reason"] == "InvalidRequest" and "spec.wattsPerGpu" in cond["message"]
    assert status["gpus"][0]["reason"] == "InvalidRequest"
    assert status["gpus"][0]["targetWatts"] == 50
    assert limits(nvml) == [50_000]  # not withdrawn: left as it is


def _pynvml_like(fail_with: int | None) -> types.ModuleType:
    """A module with pynvml's error classes and a GPU whose set fails with ``fail_with``."""
    module = types.ModuleType("pynvml_like")
    module.NVMLError = pynvml.NVMLError  # type: ignore[attr-defined]

    def set_limit(handle: object, limit: int) -> None:
        if fail_with is not None:
            raise pynvml.NVMLError(fail_with)  # pynvml picks the subclass by code

    module.nvmlDeviceSetPowerManagementLimit = set_limit  # type: ignore[attr-defined]
    module.nvmlDeviceGetPowerManagementLimitConstraints = lambda h: [100_000, 400_000]  # type: ignore[attr-defined]
    module.nvmlDeviceGetUUID = lambda h: b"GPU-0"  # type: ignore[attr-defined]
    return module


@pytest.mark.parametrize(
    ("code", "reason", "text"),
    [
        (NVML_ERROR_NO_PERMISSION, "NoPermission", "Insufficient Permissions"),
        (NVML_ERROR_NOT_SUPPORTED, "NotSupported", "Not Supported"),
    ],
)
def test_adapter_turns_pynvml_errors_into_nvml_errors(code: int, reason: str, text: str) -> None:
    assert isinstance(pynvml.NVMLError(code), pynvml.NVMLError)
    lib = PynvmlLibrary(_pynvml_like(code))
    with pytest.raises(NvmlError) as info:
        lib.nvmlDeviceSetPowerManagementLimit(object(), 200_000)
    assert (info.value.code, info.value.reason, info.value.message) == (code, reason, text)


def test_adapter_passes_return_shapes() -> None:
    lib = PynvmlLibrary(_pynvml_like(None))
    assert lib.nvmlDeviceGetPowerManagementLimitConstraints(object()) == [100_000, 400_000]
    assert lib.nvmlDeviceGetUUID(object()) == b"GPU-0"  # old bindings: bytes, read as text
    lib.nvmlDeviceSetPowerManagementLimit(object(), 200_000)


def test_fake_follows_nvml_on_out_of_range_and_uninitialised() -> None:
    nvml = FakeNvml([FakeGpu("GPU-a", H100)])
    with pytest.raises(NvmlError) as before:
        nvml.nvmlDeviceGetCount()
    assert (before.value.reason, before.value.code) == ("Uninitialized", 1)
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(NvmlError) as out:
        nvml.nvmlDeviceSetPowerManagementLimit(handle, 100_000)  # NVML does not clamp
    assert out.value.reason == "InvalidArgument"


def test_no_round_sets_anything_after_close() -> None:
    nvml = FakeNvml.of("L4", 1)
    agent, _ = started(nvml)
    agent.reconcile(request({"wattsPerGpu": 50}))
    assert agent.close(restore=True) == 1
    with pytest.raises(AgentClosed):
        agent.reconcile(request({"wattsPerGpu": 50}))
    assert limits(nvml) == [72_000] and not nvml.initialised
