"""``powercap carbon report`` through typer's runner, on a fresh app."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
import yaml
from typer.testing import CliRunner

from placement.carbon.emissions import placement_emissions
from placement.carbon.intensity import day_window, on_grid
from placement.carbon.intensity_csv import read_intensity_csv
from placement.carbon.policy import CapPolicy, carbon_aware
from placement.scenario.files import load_problem
from placement.strategies import run_strategy
from powercap.commands.carbon import register

runner = CliRunner()
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

SCENARIO: dict[str, Any] = {
    "apiVersion": "powercap.io/v1alpha1",
    "kind": "Scenario",
    "metadata": {"name": "carbon-small"},
    "grid": {"period": "24h", "step": "1h"},
    "domains": [
        {"name": "site", "cap": 30_000},
        {"name": "rack-a", "parent": "site", "cap": 20_000},
        {"name": "rack-b", "parent": "site", "cap": 20_000},
    ],
    "nodeGroups": [
        {
            "namePrefix": "gpu",
            "domains": ["rack-a", "rack-b"],
            "countPerDomain": 3,
            "gpus": 8,
            "idleWatts": 1000,
        }
    ],
    "services": [
        {
            "name": name,
            "replicas": 6,
            "gpusPerReplica": 4,
            "priority": 100,
            "nameplateWatts": 4000,
            "profile": {"diurnal": {"low": 800, "high": 3000, "peakAt": peak, "width": "6h"}},
        }
        for name, peak in (("chat", "12:00"), ("batch", "02:00"))
    ],
}


@pytest.fixture
def app() -> typer.Typer:
    fresh = typer.Typer()

    @fresh.callback()
    def main() -> None:
        """A host app with one plugin."""

    register(fresh)
    return fresh


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(SCENARIO), encoding="utf-8")
    return path


@pytest.fixture
def intensity(tmp_path: Path) -> Path:
    """Two days, hourly: clean nights (100 g/kWh), dirty days (500 g/kWh)."""
    start = datetime(2020, 6, 1, tzinfo=UTC)
    lines = ["Time,Carbon Intensity"]
    for h in range(48):
        at = start + timedelta(hours=h)
        lines.append(f"{at:%Y-%m-%d %H:%M:%S},{500 if 8 <= at.hour < 20 else 100}")
    path = tmp_path / "ci.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def invoke(app: typer.Typer, *args: str) -> Any:
    return runner.invoke(app, ["carbon", "report", *args])


def test_json_matches_the_core_on_both_plans(
    app: typer.Typer, scenario: Path, intensity: Path
) -> None:
    result = invoke(
        app,
        str(scenario),
        "--intensity",
        str(intensity),
        "--day",
        "2020-06-01",
        "--strategy",
        "greedy",
        "--policy",
        "100:1.0,500:0.6",
        "--floor",
        "0.5",
        "--price",
        "40",
        "--allocation",
        "0.5",
        "--emission-budget",
        "300",
        "--format",
        "json",
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    problem = load_problem(scenario)
    series = read_intensity_csv(intensity)
    window = day_window(series, problem.grid, date(2020, 6, 1))
    policy = CapPolicy.parse("100:1.0,500:0.6", 0.5)
    aware = carbon_aware(problem, on_grid(series, problem.grid, date(2020, 6, 1)), policy)
    expected = {}
    for label, prob in (("oblivious", problem), ("aware", aware)):
        e = placement_emissions(prob, run_strategy("greedy", prob).assignment, window)
        expected[label] = e
        assert out[label]["emissions_kg"] == pytest.approx(e.site_kg, abs=1e-3)
        assert out[label]["cost_eur"] == pytest.approx(e.tonnes * 40, abs=0.01)
        assert out[label]["allowance"]["surplus_t"] == pytest.approx(0.5 - e.tonnes, abs=1e-6)
        assert out[label]["budget"]["fits"] is (e.site_kg <= 300)
        assert out[label]["violations"] == 0
    saved = expected["oblivious"].site_kg - expected["aware"].site_kg
    assert out["savings"]["kg"] == pytest.approx(saved, abs=1e-3)
    assert out["savings"]["eur"] == pytest.approx(saved / 1000 * 40, abs=0.01)
    # Dirty daytime caps the site at 60%: the aware plan hosts less and emits less.
    assert out["aware"]["hosted"] < out["oblivious"]["hosted"]
    assert saved > 0
    assert out["policy"] == {
        "points": [[100.0, 1.0], [500.0, 0.6]],
        "floor": 0.5,
        "domains": ["site"],
    }
    assert out["intensity"]["window"] == "2020-06-01 00:00 UTC + 24h"


def test_table_and_report(
    app: typer.Typer, scenario: Path, intensity: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "report"
    result = invoke(
        app,
        str(scenario),
        "--intensity",
        str(intensity),
        "--time-limit",
        "2",
        "--emission-budget",
        "100",
        "--report",
        str(out_dir),
    )
    assert result.exit_code == 0, result.output
    for text in (
        "carbon-oblivious",
        "carbon-aware",
        "emissions kg CO2e",
        "budget 100 kg",
        "over by",
    ):
        assert text in result.stdout
    assert "EUA cost" not in result.stdout  # no price given
    for name in ("carbon.html", "carbon-caps.png", "carbon-emissions.png"):
        assert (out_dir / name).stat().st_size > 0
    assert "carbon-caps.png" in (out_dir / "carbon.html").read_text()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "--intensity is required"),
        (["--intensity", "{ci}", "--time-column", "When"], "set --time-column"),
        (["--intensity", "{ci}", "--price", "3", "--price-series", "{ci}"], "not both"),
        (["--intensity", "{ci}", "--policy", "100:0.5,200:0.9"], "--policy/--floor"),
        (["--intensity", "{ci}", "--day", "2020-07-01"], "pick a day from 2020-06-01"),
        (["--intensity", "{ci}", "--day", "June"], "--day: expected YYYY-MM-DD"),
        (["--intensity", "{ci}", "--domain", "rack-z"], "unknown domain 'rack-z'"),
        (["--intensity", "{ci}", "--strategy", "best"], "--strategy: unknown strategy"),
        (["--intensity", "{ci}", "--price-series", "{ci}"], "no price column 'settle'"),
        (["--intensity", "{ci}", "--window", "month"], "covers 2020-06-01"),
    ],
)
def test_errors_name_the_option_and_exit_2(
    app: typer.Typer, scenario: Path, intensity: Path, extra: list[str], message: str
) -> None:
    args = [a.replace("{ci}", str(intensity)) for a in extra]
    result = invoke(app, str(scenario), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_real_data_over_a_month(app: typer.Typer, scenario: Path) -> None:
    ci = DATA / "carbon-intensity" / "gb_ci.csv"
    eua = DATA / "eua-prices" / "market_prices.csv"
    for path in (ci, eua):
        assert path.is_file(), f"{path} is missing: ../shared/data must sit beside the repository"
    result = invoke(
        app,
        str(scenario),
        "--intensity",
        str(ci),
        "--time-column",
        "Time",
        "--value-column",
        "Carbon Intensity",
        "--day",
        "2020-06-15",
        "--window",
        "month",
        "--strategy",
        "greedy",
        "--price-series",
        str(eua),
        "--format",
        "json",
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["intensity"]["window"] == "2020-06-01 00:00 UTC + 720h"
    assert out["intensity"]["slots"] == 720
    assert 50 < out["intensity"]["mean_g_per_kwh"] < 400
    e = out["oblivious"]
    assert e["cost_eur"] == pytest.approx(e["emissions_kg"] / 1000 * 20, rel=0.3)  # ~20 EUR/t
    assert np.isclose(e["kg_per_kwh"] * 1000, out["intensity"]["mean_g_per_kwh"], rtol=0.2)
