"""The carbon options of ``powercap plan`` and ``powercap compare`` (grid intensity, emission
budgets, cap policies) and ``powercap carbon report``, through typer's runner."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
import yaml
from typer.testing import CliRunner, Result

from placement.assignment import Assignment
from placement.carbon.emissions import (
    domain_intensity,
    placement_emissions,
    plan_emissions,
    with_carbon,
)
from placement.carbon.intensity import day_window, on_grid
from placement.carbon.intensity_csv import read_intensity_csv
from placement.carbon.policy import CapPolicy, carbon_aware
from placement.problem import CarbonTerms
from placement.scenario.files import load_problem
from placement.strategies import run_strategy
from powercap import cli
from powercap.commands.carbon import register

runner = CliRunner()
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DAY = "2020-06-02"
# Every CSV written here is hourly from midnight UTC on this day.
CSV_START = datetime(2020, 6, 1, tzinfo=UTC)


def scenario_doc(
    name: str, domains: list[dict[str, Any]], racks: list[str], replicas: int
) -> dict[str, Any]:
    """A scenario of three 8-GPU nodes in each of ``racks`` (within ``domains``) and two
    services of ``replicas`` replicas, ``chat`` peaking at noon and ``batch`` at 02:00."""
    return {
        "apiVersion": "powercap.io/v1alpha1",
        "kind": "Scenario",
        "metadata": {"name": name},
        "grid": {"period": "24h", "step": "1h"},
        "domains": domains,
        "nodeGroups": [
            {
                "namePrefix": "gpu",
                "domains": racks,
                "countPerDomain": 3,
                "gpus": 8,
                "idleWatts": 1000,
            }
        ],
        "services": [
            {
                "name": service,
                "replicas": replicas,
                "gpusPerReplica": 4,
                "priority": 100,
                "nameplateWatts": 4000,
                "profile": {"diurnal": {"low": 800, "high": 3000, "peakAt": peak, "width": "6h"}},
            }
            for service, peak in (("chat", "12:00"), ("batch", "02:00"))
        ],
    }


# One site on one grid: what `carbon report` compares plans on.
ONE_SITE = scenario_doc(
    "carbon-small",
    [
        {"name": "site", "cap": 30_000},
        {"name": "rack-a", "parent": "site", "cap": 20_000},
        {"name": "rack-b", "parent": "site", "cap": 20_000},
    ],
    ["rack-a", "rack-b"],
    6,
)
# Two sites on different grids (gb dirty, fr clean): where `plan` can move load.
TWO_SITES = scenario_doc(
    "two-sites",
    [
        {"name": "world", "cap": 200_000},
        {"name": "gb", "parent": "world", "cap": 60_000},
        {"name": "fr", "parent": "world", "cap": 60_000},
        {"name": "gb-rack", "parent": "gb", "cap": 40_000},
        {"name": "fr-rack", "parent": "fr", "cap": 40_000},
    ],
    ["gb-rack", "fr-rack"],
    5,
)


def write_scenario(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def write_hourly_csv(path: Path, hours: int, value: Callable[[int], str]) -> Path:
    """An intensity CSV of ``hours`` rows from :data:`CSV_START`; ``value(h)`` is hour h's."""
    lines = ["Time,Carbon Intensity"]
    for h in range(hours):
        at = CSV_START + timedelta(hours=h)
        lines.append(f"{at:%Y-%m-%d %H:%M:%S},{value(h)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def sine_csv(path: Path, level: float, swing: float) -> Path:
    """June and July, hourly: ``level`` plus a daily sine of amplitude ``swing``."""
    return write_hourly_csv(
        path, 24 * 62, lambda h: f"{level + swing * np.sin(2 * np.pi * h / 24):.3f}"
    )


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """:data:`TWO_SITES` and two grids: ``dirty`` (450 ± 50 g/kWh), ``clean`` (60 ± 20)."""
    return {
        "scenario": write_scenario(tmp_path / "two-sites.yaml", TWO_SITES),
        "dirty": sine_csv(tmp_path / "dirty.csv", 450.0, 50.0),
        "clean": sine_csv(tmp_path / "clean.csv", 60.0, 20.0),
    }


@pytest.fixture
def one_site(tmp_path: Path) -> Path:
    return write_scenario(tmp_path / "site.yaml", ONE_SITE)


@pytest.fixture
def day_night(tmp_path: Path) -> Path:
    """Two days, hourly: clean nights (100 g/kWh), dirty days (500 g/kWh)."""
    return write_hourly_csv(tmp_path / "ci.csv", 48, lambda h: "500" if 8 <= h % 24 < 20 else "100")


@pytest.fixture
def carbon_app() -> typer.Typer:
    """A fresh app with only the ``carbon`` commands registered: the plugin stands alone."""
    fresh = typer.Typer()

    @fresh.callback()
    def main() -> None:
        """A host app with one plugin."""

    register(fresh)
    return fresh


def invoke(*args: str | Path) -> Result:
    """``powercap ARGS`` on the real app."""
    return runner.invoke(cli.app, [str(a) for a in args])


def carbon_report(app: typer.Typer, *args: str) -> Result:
    return runner.invoke(app, ["carbon", "report", *args])


def grids(files: dict[str, Path]) -> list[str]:
    return ["--intensity", f"gb={files['dirty']}", "--intensity", f"fr={files['clean']}"]


def plan_json(files: dict[str, Path], *extra: str, strategy: str = "cpsat") -> dict[str, Any]:
    day = ["--day", DAY] if "--intensity" in extra else []
    result = invoke(
        "plan", files["scenario"], "-s", strategy, "-t", "5", "-f", "json", *day, *extra
    )
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


# ---------------------------------------------------------------- plan and compare


def test_plan_json_has_emissions_per_domain(files: dict[str, Path]) -> None:
    data = plan_json(files, *grids(files))
    e = data["emissions"]
    assert set(e["by_domain_kg"]) == {"world", "gb", "fr", "gb-rack", "fr-rack"}
    assert e["kg"] == pytest.approx(e["by_domain_kg"]["gb"] + e["by_domain_kg"]["fr"], abs=1e-2)
    assert e["budget"] is None
    assert e["window"] == f"{DAY} (1 day)"
    assert data["carbon"]["intensity"] == {"gb": str(files["dirty"]), "fr": str(files["clean"])}


def test_carbon_aware_plan_emits_no_more_than_oblivious_at_equal_hosted(
    files: dict[str, Path],
) -> None:
    aware = plan_json(files, *grids(files))
    oblivious = plan_json(files)
    assert aware["metrics"]["hosted_total"] == oblivious["metrics"]["hosted_total"]
    # Price the oblivious placement with the same terms.
    problem = load_problem(files["scenario"])
    day = datetime.fromisoformat(DAY).date()
    rows = {
        site: on_grid(read_intensity_csv(files[kind]), problem.grid, day)
        for site, kind in (("gb", "dirty"), ("fr", "clean"))
    }
    priced = with_carbon(problem, CarbonTerms(domain_intensity(problem, rows)))
    counts = np.zeros((problem.services.size, problem.fleet.size), dtype=np.int64)
    for service, nodes in oblivious["placement"].items():
        for node, k in nodes.items():
            counts[problem.services.index[service], problem.fleet.index[node]] = k
    oblivious_kg = plan_emissions(priced, Assignment(counts)).site_kg
    assert aware["emissions"]["kg"] <= oblivious_kg + 1e-3
    # The clean site is full before the dirty one is used.
    fr = aware["metrics"]["domains"]
    assert next(d for d in fr if d["domain"] == "fr")["replicas"] >= 6


@pytest.mark.parametrize("strategy", ["cpsat", "greedy", "peak-sum", "nameplate"])
def test_budget_holds_and_tighter_hosts_no_more(files: dict[str, Path], strategy: str) -> None:
    free = plan_json(files, *grids(files), strategy=strategy)
    idle, total = free["emissions"]["idle_kg"], free["emissions"]["kg"]
    hosted = free["metrics"]["hosted_total"]
    for fraction in (0.8, 0.5):
        budget = idle + fraction * (total - idle)
        data = plan_json(
            files, *grids(files), "--emission-budget", f"{budget:.3f}", strategy=strategy
        )
        b = data["emissions"]["budget"]
        assert b["holds"] is True
        assert b["domain"] == "world"
        assert b["emissions_kg"] <= budget + 1e-3
        if strategy == "cpsat":
            # Exact on this size; the sequential heuristics are not monotone in the
            # budget (a service skipped for its emissions leaves room for another).
            assert data["metrics"]["hosted_total"] <= hosted
            hosted = data["metrics"]["hosted_total"]


def test_budget_on_a_named_domain(files: dict[str, Path]) -> None:
    data = plan_json(files, *grids(files), "--emission-budget", "1e9", "--budget-domain", "gb")
    assert data["emissions"]["budget"]["domain"] == "gb"
    assert data["emissions"]["budget"]["holds"] is True


def test_compare_json_reports_every_strategy_against_the_budget(files: dict[str, Path]) -> None:
    result = invoke(
        "compare", files["scenario"], "-t", "5", "-f", "json", "--day", DAY,
        *grids(files), "--emission-budget", "700",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data["strategies"]) == {"nameplate", "peak-sum", "greedy", "cpsat"}
    for entry in data["strategies"].values():
        assert entry["emissions"]["budget"]["holds"] is True
    assert data["carbon"]["window"] == f"{DAY} (1 day)"


def test_compare_table_shows_emissions(files: dict[str, Path]) -> None:
    result = invoke(
        "compare", files["scenario"], "-t", "5", "--day", DAY, *grids(files),
        "--emission-budget", "700",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "kg CO2e" in result.stdout
    assert "left" in result.stdout


def test_plan_table_shows_emissions_and_budget(files: dict[str, Path]) -> None:
    result = invoke(
        "plan", files["scenario"], "-t", "5", "--day", DAY, *grids(files),
        "--emission-budget", "700",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "kg CO2e over" in result.stdout
    assert "holds" in result.stdout


def test_month_window_counts_every_day(files: dict[str, Path]) -> None:
    day = plan_json(files, *grids(files), strategy="greedy")
    month = plan_json(files, *grids(files), "--window", "month", strategy="greedy")
    assert month["emissions"]["periods"] == 30
    assert month["emissions"]["window"] == "2020-06 (30 days)"
    # A synthetic series repeats every day, so a month is 30 of its days.
    assert month["emissions"]["kg"] == pytest.approx(30 * day["emissions"]["kg"], rel=1e-5)


def test_policy_scales_the_named_sites_caps(files: dict[str, Path]) -> None:
    data = plan_json(files, *grids(files), "--policy", "100:1.0,400:0.5", "--floor", "0.3")
    policy = data["carbon"]["policy"]
    assert policy["domains"] == ["gb", "fr"]
    caps = {d["domain"]: d["cap_at_peak_w"] for d in data["metrics"]["domains"]}
    assert caps["gb"] < 60_000 * 0.6  # 400–500 g/kWh → at most ~0.5 of the cap
    assert caps["fr"] == pytest.approx(60_000)


def test_bare_csv_is_the_sites_grid(files: dict[str, Path]) -> None:
    data = plan_json(files, "--intensity", str(files["clean"]), strategy="greedy")
    assert data["carbon"]["intensity"] == {"world": str(files["clean"])}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--intensity", "/nowhere/ci.csv"], "cannot read the file"),
        (["--intensity", "mars=/tmp/x.csv"], "--intensity: unknown domain 'mars'"),
        (["--emission-budget", "100"], "--emission-budget needs --intensity"),
        (["--policy", "100:1"], "--policy needs --intensity"),
        (["@grids", "--emission-budget", "1", "--day", DAY], "below the idle floor"),
        (["@grids", "--emission-budget", "1e9", "--budget-domain", "mars"], "--budget-domain"),
        (["@grids", "--budget-domain", "gb"], "--budget-domain needs --emission-budget"),
        (["@grids", "--emission-budget", "-5"], "--emission-budget"),
        (["@grids", "--day", "2019-01-01"], "--day: 2019-01-01 is not covered"),
        (["@grids", "--policy", "400:0.5,100:1"], "--policy/--floor"),
        (["@grids", "--domain", "mars", "--day", DAY], "--domain: unknown domain 'mars'"),
        (["@grids", "--value-column", "nope"], "--value-column"),
    ],
)
def test_bad_input_names_the_option(files: dict[str, Path], args: list[str], message: str) -> None:
    expanded = [a for arg in args for a in (grids(files) if arg == "@grids" else [arg])]
    for command in ("plan", "compare"):
        result = invoke(command, files["scenario"], "-s" if command == "plan" else "-t", *(
            ["greedy"] if command == "plan" else ["1"]
        ), *expanded)  # fmt: skip
        assert result.exit_code == 2, result.output
        assert message in result.output.replace("\n", " "), result.output


def test_idle_floor_message_names_the_floor(files: dict[str, Path]) -> None:
    result = invoke("plan", files["scenario"], *grids(files), "--emission-budget", "1")
    assert result.exit_code == 2
    # 3 nodes at 1 kW on each grid all day: the floor is their idle emissions.
    text = result.output.replace("\n", " ")
    assert "raise --emission-budget to at least" in text
    assert "'world'" in text


def test_real_grids_plan(files: dict[str, Path]) -> None:
    ci = DATA / "carbon-intensity"
    assert (ci / "gb_ci.csv").is_file(), (
        f"{ci / 'gb_ci.csv'} is missing: this test reads the shared public data in "
        "../shared/data beside the repository (see its README)"
    )
    data = plan_json(
        files,
        "--intensity", f"gb={ci / 'gb_ci.csv'}",
        "--intensity", f"fr={ci / 'fr_ci.csv'}",
        "--emission-budget", "600",
    )  # fmt: skip
    assert data["emissions"]["budget"]["holds"] is True
    assert data["emissions"]["by_domain_kg"]["fr"] < data["emissions"]["by_domain_kg"]["gb"]


# ---------------------------------------------------------------- carbon report


def test_json_matches_the_core_on_both_plans(
    carbon_app: typer.Typer, one_site: Path, day_night: Path
) -> None:
    result = carbon_report(
        carbon_app,
        str(one_site),
        "--intensity",
        str(day_night),
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
    problem = load_problem(one_site)
    series = read_intensity_csv(day_night)
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
    carbon_app: typer.Typer, one_site: Path, day_night: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "report"
    result = carbon_report(
        carbon_app,
        str(one_site),
        "--intensity",
        str(day_night),
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
    carbon_app: typer.Typer, one_site: Path, day_night: Path, extra: list[str], message: str
) -> None:
    args = [a.replace("{ci}", str(day_night)) for a in extra]
    result = carbon_report(carbon_app, str(one_site), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_real_data_over_a_month(carbon_app: typer.Typer, one_site: Path) -> None:
    ci = DATA / "carbon-intensity" / "gb_ci.csv"
    eua = DATA / "eua-prices" / "market_prices.csv"
    for path in (ci, eua):
        assert path.is_file(), f"{path} is missing: ../shared/data must sit beside the repository"
    result = carbon_report(
        carbon_app,
        str(one_site),
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
