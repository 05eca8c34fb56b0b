"""``powercap agent``: its options' errors, ``--check`` without a GPU, and its HTTP face."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from extender.agent import check
from extender.agent.fake import FakeNvml
from extender.agent.loop import Agent, AgentLoop
from extender.agent.metrics import AgentMetrics
from extender.agent.nvml import NVML_ERROR_LIBRARY_NOT_FOUND, NvmlError
from extender.agent.serving import agent_app
from powercap.cli import app

runner = CliRunner()


def test_node_name_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NODE_NAME", raising=False)
    result = runner.invoke(app, ["agent"])
    assert result.exit_code == 2
    assert "--node-name" in result.output and "NODE_NAME" in result.output


def test_bad_metrics_address_names_the_option() -> None:
    result = runner.invoke(app, ["agent", "--node-name=n", "--metrics-address=nonsense"])
    assert result.exit_code == 2
    assert "--metrics-address" in result.output


def test_check_reads_only(capsys: pytest.CaptureFixture[str]) -> None:
    nvml = FakeNvml.of("H100-SXM5-80GB", 2)
    assert check.main(nvml) == 0
    out = capsys.readouterr().out
    assert "NVML reports 2 GPU(s)" in out
    assert "limit constraints 200-700 W, default 700 W, set 700 W, enforced 700 W" in out
    assert nvml.sets == []


class NoLibrary(FakeNvml):
    def nvmlInit(self) -> None:  # noqa: N802 (NVML's name)
        raise NvmlError(NVML_ERROR_LIBRARY_NOT_FOUND, "NVML Shared Library Not Found")


def test_check_without_a_gpu_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert check.main(NoLibrary([])) == 1
    assert "no NVIDIA GPU here" in capsys.readouterr().err


class Nothing:
    def fetch(self) -> tuple[dict[str, Any] | None, str]:
        return None, ""

    def wait(self, resource_version: str, timeout_s: int) -> None:
        return None

    def write_status(self, obj: dict[str, Any], status: dict[str, Any]) -> bool:
        return True


def test_health_readiness_and_metrics() -> None:
    nvml = FakeNvml.of("L4", 1)
    metrics = AgentMetrics()
    agent = Agent(nvml, metrics=metrics)
    agent.start()
    loop = AgentLoop(agent, Nothing())
    client = TestClient(agent_app(loop, metrics))  # no lifespan: the loop is driven here
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503
    loop.round()
    assert client.get("/readyz").status_code == 200
    body = client.get("/metrics").text
    uuid = nvml.gpus[0].uuid
    assert f'powercap_agent_gpu_power_limit_watts{{gpu="0",uuid="{uuid}"}} 72.0' in body
    assert "powercap_agent_can_set_limits 1.0" in body
    assert client.get("/filter").status_code == 404


class Requested(Nothing):
    """A request of 50 W per GPU; a round waits a little, as a watch would."""

    def fetch(self) -> tuple[dict[str, Any] | None, str]:
        return {"metadata": {"name": "n", "generation": 1}, "spec": {"wattsPerGpu": 50}}, "1"

    def wait(self, resource_version: str, timeout_s: int) -> None:
        time.sleep(0.05)


def test_the_servers_lifespan_runs_the_loop_and_restores_on_the_way_out() -> None:
    """What SIGTERM does to the served app: uvicorn ends the lifespan, the loop stops and
    every GPU goes back to its default."""
    nvml = FakeNvml.of("L4", 2)
    metrics = AgentMetrics()
    agent = Agent(nvml, metrics=metrics)
    agent.start()
    loop = AgentLoop(agent, Requested(), resync_s=1, restore_on_exit=True)
    with TestClient(agent_app(loop, metrics)) as client:
        deadline = time.monotonic() + 10
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the loop never completed a round"
            time.sleep(0.02)
        assert [g.limit_mw for g in nvml.gpus] == [50_000, 50_000]
    assert [g.limit_mw for g in nvml.gpus] == [72_000, 72_000]
    assert not nvml.initialised
