"""The ``powercap`` CLI, through typer's runner and once as the real console script."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from placement.scenario.files import load_problem
from powercap import cli

runner = CliRunner()

SMALL: dict[str, Any] = {
    "apiVersion": "powercap.io/v1alpha1",
    "kind": "Scenario",
    "metadata": {"name": "small"},
    "grid": {"period": "24h", "step": "1h"},
    "domains": [
        {"name": "site", "cap": 40_000},
        {"name": "row-1", "parent": "site", "cap": 24_000},
        {"name": "row-2", "parent": "site", "cap": 24_000},
        {"name": "rack-1a", "parent": "row-1", "cap": 13_000},
        {"name": "rack-1b", "parent": "row-1", "cap": 13_000},
        {"name": "rack-2a", "parent": "row-2", "cap": 13_000},
    ],
    "nodeGroups": [
        {
            "namePrefix": "gpu",
            "domains": ["rack-1a", "rack-1b", "rack-2a"],
            "countPerDomain": 3,
            "gpus": 8,
            "idleWatts": 1000,
        }
    ],
    "services": [
        {
            "name": name,
            "replicas": 8,
            "gpusPerReplica": 4,
            "priority": 100,
            "nameplateWatts": 4000,
            "profile": {"diurnal": {"low": 800, "high": 3000, "peakAt": peak, "width": "6h"}},
        }
        for name, peak in (("chat-eu", "10:00"), ("chat-us", "18:00"), ("batch", "02:00"))
    ],
}
JSON_KEYS = {"strategy", "placement", "metrics", "solver"}


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(SMALL), encoding="utf-8")
    return path


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    data = {**SMALL, "services": [{**SMALL["services"][0], "profile": [1.0] * 23}]}
    data["domains"] = [*SMALL["domains"], {"name": "rack-x", "parent": "nowhere", "cap": 1}]
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def invoke(*args: str) -> Any:
    return runner.invoke(cli.app, list(args))


# ---------------------------------------------------------------- plan


@pytest.mark.parametrize("strategy", ["greedy", "peak-sum", "nameplate", "cpsat"])
def test_plan_json_is_one_object_with_the_four_keys(small: Path, strategy: str) -> None:
    result = invoke("plan", str(small), "-s", strategy, "-t", "5", "--format", "json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert set(out) == JSON_KEYS
    assert out["strategy"] == strategy
    metrics = out["metrics"]
    hosted = sum(sum(nodes.values()) for nodes in out["placement"].values())
    assert hosted == metrics["hosted_total"]
    assert set(out["placement"]) == {"chat-eu", "chat-us", "batch"}
    assert metrics["violations"] == 0
    assert set(metrics["gains"]) == {"vs_nameplate", "vs_peak-sum"}
    assert len(metrics["domains"]) == 6
    assert out["solver"]["status"] in {"HEURISTIC", "OPTIMAL", "FEASIBLE"}
    # Progress went to stderr, not into the JSON.
    assert strategy in result.stderr


def test_plan_gains_match_the_baselines(small: Path) -> None:
    out = json.loads(invoke("plan", str(small), "-s", "greedy", "-f", "json").stdout)
    nameplate = json.loads(invoke("plan", str(small), "-s", "nameplate", "-f", "json").stdout)
    gain = out["metrics"]["hosted_total"] / nameplate["metrics"]["hosted_total"] - 1
    assert out["metrics"]["gains"]["vs_nameplate"] == pytest.approx(gain)
    assert nameplate["metrics"]["gains"]["vs_nameplate"] == 0.0


def test_plan_table_shows_summary_and_domains(small: Path) -> None:
    result = invoke("plan", str(small), "--strategy", "greedy")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in (
        "small — greedy",
        "hosted",
        "vs nameplate",
        "violations",
        "worst peak/cap",
        "stranded",
        "energy slack",
        "asynchrony",
        "HEURISTIC",
        "per domain",
        "rack-1a",
        "rack-2a",
        "peak/cap",
    ):
        assert text in out, text
    # Racks are listed under their row.
    assert out.index("row-1") < out.index("rack-1a") < out.index("row-2") < out.index("rack-2a")


def test_plan_with_report(small: Path, tmp_path: Path) -> None:
    report = tmp_path / "report"
    result = invoke("plan", str(small), "-s", "greedy", "-f", "json", "--report", str(report))
    assert result.exit_code == 0, result.output
    json.loads(result.stdout)
    assert (report / "index.html").is_file()
    assert "index.html" in result.stderr


def test_unknown_strategy_lists_the_choices(small: Path) -> None:
    result = invoke("plan", str(small), "--strategy", "magic")
    assert result.exit_code == 2
    assert "unknown strategy 'magic'" in result.stderr
    assert "nameplate, peak-sum, greedy, cpsat" in result.stderr


def test_bad_scenario_names_every_problem_and_exits_2(broken: Path) -> None:
    for command in ("plan", "compare", "whatif"):
        result = invoke(command, str(broken), "-f", "json")
        assert result.exit_code == 2, command
        assert result.stdout == ""
        assert "services[0].profile: 23 values, the grid has 24 slots" in result.stderr
        assert "domains[6].parent: unknown domain 'nowhere'" in result.stderr
        assert "Traceback" not in result.output
        assert not isinstance(result.exception, ValueError)


def test_missing_or_malformed_file_exits_2(tmp_path: Path) -> None:
    result = invoke("plan", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    assert "cannot read file" in result.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("domains: [unclosed", encoding="utf-8")
    result = invoke("plan", str(bad))
    assert result.exit_code == 2
    assert "not valid YAML/JSON" in result.stderr


# ---------------------------------------------------------------- compare and whatif


def test_compare_json_has_every_strategy(small: Path) -> None:
    result = invoke("compare", str(small), "-t", "5", "-f", "json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["scenario"] == "small"
    assert list(out["strategies"]) == ["nameplate", "peak-sum", "greedy", "cpsat"]
    for entry in out["strategies"].values():
        assert set(entry) == {"metrics", "solver"}
        assert "gains" in entry["metrics"] and "domains" not in entry["metrics"]
    cpsat, nameplate = out["strategies"]["cpsat"], out["strategies"]["nameplate"]
    assert cpsat["metrics"]["hosted_total"] >= nameplate["metrics"]["hosted_total"]
    assert cpsat["metrics"]["violations"] == 0


def test_compare_table_and_report(small: Path, tmp_path: Path) -> None:
    result = invoke("compare", str(small), "-t", "5", "--report", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    for text in (
        "strategies compared",
        "nameplate",
        "peak-sum",
        "greedy",
        "cpsat",
        "vs nameplate",
        "worst peak/cap",
        "stranded kW",
        "solve s",
        "gap",
    ):
        assert text in result.stdout, text
    assert (tmp_path / "r" / "heatmap-cpsat.png").is_file()


def test_whatif_json_before_and_after(small: Path) -> None:
    result = invoke(
        "whatif",
        str(small),
        "-s",
        "greedy",
        "--scale-caps",
        "1.5",
        "--add-nodes",
        "50%",
        "--scale-demand",
        "2",
        "-f",
        "json",
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["changes"] == {"scale_caps": 1.5, "add_nodes": 5, "scale_demand": 2.0}
    before, after = out["before"]["metrics"], out["after"]["metrics"]
    assert after["demand_total"] == 2 * before["demand_total"]
    assert after["gpus_total"] == before["gpus_total"] + 5 * 8
    assert after["hosted_total"] > before["hosted_total"]
    assert after["violations"] == before["violations"] == 0


def test_whatif_table(small: Path) -> None:
    result = invoke("whatif", str(small), "-s", "greedy", "--add-nodes", "3")
    assert result.exit_code == 0, result.output
    for text in ("what if +3 nodes", "before", "after", "hosted", "gain vs peak-sum"):
        assert text in result.stdout, text


def test_whatif_rejects_bad_changes(small: Path) -> None:
    result = invoke("whatif", str(small), "--add-nodes", "lots")
    assert result.exit_code == 2
    assert "node count" in result.stderr
    result = invoke("whatif", str(small), "--scale-caps", "0")
    assert result.exit_code == 2
    assert "positive" in result.stderr


# ---------------------------------------------------------------- scenario commands


def test_validate_ok_and_problems(small: Path, broken: Path) -> None:
    result = invoke("scenario", "validate", str(small))
    assert result.exit_code == 0
    assert "OK" in result.stdout and "6 domains" in result.stdout and "9 nodes" in result.stdout
    result = invoke("scenario", "validate", str(broken))
    assert result.exit_code == 1
    assert "2 problems" in result.stderr
    assert "services[0].profile" in result.stderr and "domains[6].parent" in result.stderr


def test_scenario_default_round_trips(tmp_path: Path) -> None:
    result = invoke("scenario", "default")
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(result.stdout)
    assert data["kind"] == "Scenario"
    target = tmp_path / "sub" / "default.yaml"
    assert invoke("scenario", "default", "-o", str(target)).exit_code == 0
    problem = load_problem(target)
    assert problem.fleet.size > 0 and problem.services.size > 0
    assert invoke("scenario", "validate", str(target)).exit_code == 0


def test_default_scenario_plans_quickly() -> None:
    result = invoke("plan", "-t", "3", "-f", "json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["strategy"] == "cpsat"
    assert out["metrics"]["violations"] == 0
    assert out["metrics"]["gains"]["vs_nameplate"] > 0


def write_traces(directory: Path, peaks_h: tuple[float, ...], days: int = 2) -> Path:
    """ServeGen-format client traces: one diurnal client per peak hour, ``days`` days."""
    directory.mkdir(parents=True)
    for i, peak in enumerate(peaks_h):
        rows = []
        for w in range(days * 144):
            hour = (w % 144) / 6
            dist = min(abs(hour - peak), 24 - abs(hour - peak))
            rate = 0.2 + (2.0 + i) * math.exp(-0.5 * (dist / 3) ** 2)
            rows.append(f"{w * 600},{rate:.4f},1.0,Gamma,1.0,1.0")
        (directory / f"chunk-{i}-trace.csv").write_text("\n".join(rows) + "\n")
    return directory


def test_scenario_from_servegen(tmp_path: Path) -> None:
    traces = write_traces(tmp_path / "m-test", (3.0, 11.0, 19.0))
    target = tmp_path / "sg.yaml"
    result = invoke(
        "scenario",
        "from-servegen",
        str(traces),
        "--services",
        "2",
        "--train-days",
        "1",
        "--rows",
        "1",
        "--racks-per-row",
        "2",
        "--nodes-per-rack",
        "2",
        "--rack-cap",
        "30000",
        "--max-replicas",
        "4",
        "--name",
        "tiny",
        "-o",
        str(target),
    )
    assert result.exit_code == 0, result.output
    problem = load_problem(target)
    assert problem.name == "tiny"
    assert problem.tree.size == 4 and problem.fleet.size == 4
    assert problem.services.size == 2
    assert set(problem.services.names) <= {"m-test-0", "m-test-1", "m-test-2"}
    assert float(problem.tree.caps[problem.tree.index["rack-1-01"]].max()) == 30000
    assert "2 services" in result.stderr
    # JSON by suffix, and a custom curve changes the profiles.
    as_json = tmp_path / "sg.json"
    result = invoke(
        "scenario",
        "from-servegen",
        str(traces),
        "--services",
        "2",
        "--train-days",
        "1",
        "--curve",
        "0:100,1:300,2:350",
        "-o",
        str(as_json),
    )
    assert result.exit_code == 0, result.output
    other = load_problem(as_json)
    assert other.services.profiles.max() < problem.services.profiles.max()


def test_scenario_from_servegen_errors(tmp_path: Path) -> None:
    traces = write_traces(tmp_path / "m-test", (3.0,), days=1)
    result = invoke("scenario", "from-servegen", str(tmp_path / "nowhere"), "--services", "1")
    assert result.exit_code == 2 and "not a directory" in result.stderr
    result = invoke(
        "scenario",
        "from-servegen",
        str(traces),
        "--services",
        "1",
        "--train-days",
        "1",
        "--curve",
        "0:100;2:300",
    )
    assert result.exit_code == 2 and "power curve" in result.stderr
    result = invoke(
        "scenario", "from-servegen", str(traces), "--services", "5", "--train-days", "1"
    )
    assert result.exit_code == 2 and "asked for 5 services" in result.stderr
    assert "Traceback" not in result.output


# ---------------------------------------------------------------- plugins


class FakeEntryPoint:
    def __init__(self, name: str, target: Any) -> None:
        self.name, self.value, self._target = name, f"fake:{name}", target

    def load(self) -> Any:
        if isinstance(self._target, Exception):
            raise self._target
        return self._target


def test_plugins_register_commands_and_failures_only_warn(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def register(app: typer.Typer) -> None:
        @app.command("hello")
        def hello() -> None:
            typer.echo("hello from a plugin")

    def broken_register(app: typer.Typer) -> None:
        raise RuntimeError("boom")

    points = [
        FakeEntryPoint("good", register),
        FakeEntryPoint("missing", ImportError("no module named nowhere")),
        FakeEntryPoint("broken", broken_register),
    ]
    seen: list[str] = []

    def fake_entry_points(group: str) -> list[FakeEntryPoint]:
        seen.append(group)
        return points

    monkeypatch.setattr(cli, "entry_points", fake_entry_points)
    app = typer.Typer()

    @app.command("noop")
    def noop() -> None:
        """A second command, so typer keeps subcommand dispatch."""

    assert cli.load_plugins(app) == ["good"]
    assert seen == ["powercap.commands"]
    err = capsys.readouterr().err
    assert "plugin 'missing'" in err and "no module named nowhere" in err
    assert "plugin 'broken'" in err and "boom" in err
    result = runner.invoke(app, ["hello"])
    assert result.exit_code == 0 and "hello from a plugin" in result.stdout


# ---------------------------------------------------------------- the real console script


def test_console_script_prints_exactly_one_json_object() -> None:
    script = Path(sys.executable).with_name("powercap")
    if not script.exists():
        pytest.fail(
            f"the powercap console script is missing beside {sys.executable}: "
            "install the package (pip install -e '.[dev]', as make venv does)"
        )
    proc = subprocess.run(
        [str(script), "plan", "--format", "json", "--time-limit", "3"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)  # raises on anything but one JSON document
    assert isinstance(out, dict) and set(out) == JSON_KEYS
    assert proc.stdout.lstrip().startswith("{") and proc.stdout.rstrip().endswith("}")
