"""``plan`` and ``compare`` with ``--power-limit``: uncapped vs capped provisioning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from powercap import cli

runner = CliRunner()

# Two services whose peaks reach 3.8 kW per replica: at 0.6 of a 700 W limit a 4-GPU
# replica is bound at 4000 - 4 × 280 = 2880 W, so 6 replicas fit under 20 kW, not 5.
SCENARIO: dict[str, Any] = {
    "apiVersion": "powercap.io/v1alpha1",
    "kind": "Scenario",
    "metadata": {"name": "limits"},
    "grid": {"period": "24h", "step": "2h"},
    "domains": [{"name": "site", "cap": 20_000}],
    "nodeGroups": [{"namePrefix": "n", "domain": "site", "count": 4, "gpus": 8}],
    "services": [
        {
            "name": "chat",
            "replicas": 10,
            "gpusPerReplica": 4,
            "nameplateWatts": 4000,
            "profile": [1000.0] * 6 + [3800.0] * 6,
        }
    ],
}


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    path = tmp_path / "limits.yaml"
    path.write_text(yaml.safe_dump(SCENARIO), encoding="utf-8")
    return path


def run(*args: str) -> Any:
    result = runner.invoke(cli.app, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_plan_reports_uncapped_and_capped_provisioning(scenario: Path) -> None:
    out = run("plan", str(scenario), "-s", "greedy", "--power-limit", "0.6", "-f", "json")
    trade = out["provisioning"]
    assert trade["uncapped"]["hosted"] == 5
    assert trade["capped"]["hosted"] == 6
    assert trade["capped"]["limits"] == {"chat": 0.6}
    assert trade["capped"]["throughputHosted"] == pytest.approx(6 * 0.8)
    assert trade["uncapped"]["throughputHosted"] == pytest.approx(5.0)
    assert trade["capped"]["unit"] == "replicas"
    assert trade["capped"]["violations"] == trade["uncapped"]["violations"] == 0
    assert out["metrics"]["hosted_total"] == 6


def test_watts_and_fraction_give_the_same_plan(scenario: Path) -> None:
    a = run("plan", str(scenario), "-s", "greedy", "--power-limit", "420W", "-f", "json")
    b = run("plan", str(scenario), "-s", "greedy", "--power-limit", "0.6", "-f", "json")
    assert a["provisioning"] == b["provisioning"]


def test_without_a_limit_there_is_no_provisioning_block(scenario: Path) -> None:
    out = run("plan", str(scenario), "-s", "greedy", "-f", "json")
    assert "provisioning" not in out


def test_compare_shows_the_trade_per_strategy(scenario: Path) -> None:
    out = run("compare", str(scenario), "-t", "5", "--power-limit", "0.6", "-f", "json")
    for name, entry in out["strategies"].items():
        trade = entry["provisioning"]
        assert trade["capped"]["hosted"] >= trade["uncapped"]["hosted"], name
    assert out["strategies"]["cpsat"]["provisioning"]["capped"]["hosted"] == 6


def test_table_output_shows_the_trade(scenario: Path) -> None:
    result = runner.invoke(cli.app, ["plan", str(scenario), "-s", "greedy", "--power-limit", "0.6"])
    assert result.exit_code == 0, result.output
    assert "provisioning at a power limit" in result.stdout
    assert "hosted capped" in result.stdout


@pytest.mark.parametrize("value", ["9000W", "1.5", "fast", "0.1"])
def test_bad_limits_exit_2_naming_the_option(scenario: Path, value: str) -> None:
    result = runner.invoke(cli.app, ["plan", str(scenario), "--power-limit", value])
    assert result.exit_code == 2
    assert "--power-limit" in result.output or "floor" in result.output
