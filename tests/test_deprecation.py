"""The ConfigMap form's deprecation warning: live commands give it, offline ones never."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from extender.cluster.client import ClientConfigError
from extender.config.loading import config_from_data
from extender.config.migrate import configmap_deprecation
from powercap import cli
from tests.test_cli import SMALL

runner = CliRunner()


def config_data(*, resources: bool) -> dict[str, Any]:
    return {
        "apiVersion": "powercap.io/v1alpha1",
        "kind": "PowercapConfig",
        "metadata": {"name": "small"},
        "domains": [
            {"name": "site", "cap": 40_000},
            {"name": "rack-1", "parent": "site", "cap": 20_000},
        ],
        "profiles": {"chat": {"constant": 800}},
        "services": {"chat": {"profile": "chat", "gpusPerReplica": 8, "replicas": 2}},
        "power": {"url": "http://prometheus:9090", "preset": "dcgm"},
        "controller": {"enabled": True, "dryRun": True},
        "resources": {"enabled": resources},
    }


def write_config(tmp_path: Path, *, resources: bool) -> Path:
    path = tmp_path / "powercap.yaml"
    path.write_text(yaml.safe_dump(config_data(resources=resources)), encoding="utf-8")
    return path


def test_the_warning_says_what_is_deprecated_and_the_fix() -> None:
    message = configmap_deprecation(config_data_config(resources=False))
    assert message is not None
    assert "deprecated" in message and "domains, profiles, services" in message
    assert "keep working for this release" in message
    assert "powercap config migrate cfg.yaml | kubectl apply -f -" in message
    assert "kubectl apply -k manifests/crds" in message
    assert "resources: {enabled: true}" in message and "docs/api.md" in message
    assert message.startswith("cfg.yaml: ")


def test_no_warning_with_the_resources_enabled() -> None:
    assert configmap_deprecation(config_data_config(resources=True)) is None


def config_data_config(*, resources: bool) -> Any:
    return config_from_data(config_data(resources=resources), source="cfg.yaml")


def _refuse_the_cluster(kubeconfig: Any) -> Any:
    # The warning comes before the cluster is reached; stop there.
    raise ClientConfigError("no cluster in this test")


@pytest.mark.parametrize("command", ["serve", "controller"])
@pytest.mark.parametrize("resources", [False, True])
def test_live_commands_log_the_warning_once_at_start(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    command: str,
    resources: bool,
) -> None:
    from powercap.commands import controller, serve

    module = serve if command == "serve" else controller
    monkeypatch.setattr(module, "kubernetes_core", _refuse_the_cluster)
    path = write_config(tmp_path, resources=resources)
    with caplog.at_level(logging.WARNING):
        result = runner.invoke(cli.app, [command, "--config", str(path)])
    assert result.exit_code == 2 and "no cluster in this test" in result.output
    warnings = [r for r in caplog.records if "deprecated" in r.getMessage()]
    if resources:
        assert warnings == []
    else:
        (record,) = warnings
        assert record.levelno == logging.WARNING
        assert f"powercap config migrate {path}" in record.getMessage()


@pytest.mark.parametrize("resources", [False, True])
def test_validate_shows_the_warning_and_still_passes(tmp_path: Path, resources: bool) -> None:
    path = write_config(tmp_path, resources=resources)
    result = runner.invoke(cli.app, ["config", "validate", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("OK ")
    if resources:
        assert "deprecated" not in result.stderr
    else:
        assert result.stderr.startswith("warning: ")
        assert "deprecated" in result.stderr and "docs/api.md" in result.stderr.replace("\n", "")


@pytest.mark.parametrize(
    "args",
    [
        ["plan", "--strategy", "greedy"],
        ["compare", "-t", "5"],
        ["whatif", "--strategy", "greedy", "--scale-caps", "0.9"],
    ],
    ids=["plan", "compare", "whatif"],
)
def test_offline_commands_never_warn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, args: list[str]
) -> None:
    scenario = tmp_path / "small.yaml"
    scenario.write_text(yaml.safe_dump(SMALL), encoding="utf-8")
    with caplog.at_level(logging.DEBUG):
        result = runner.invoke(cli.app, [*args, str(scenario)])
    assert result.exit_code == 0, result.output
    assert "deprecated" not in result.output
    assert not [r for r in caplog.records if "deprecated" in r.getMessage()]
