"""Option types the commands share."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from placement.carbon.policy import DEFAULT_POLICY
from placement.strategies import STRATEGY_NAMES
from powercap.console import OutputFormat
from powercap.report import ChartsUnavailable, require_matplotlib


def check_strategy(value: str) -> str:
    if value not in STRATEGY_NAMES:
        raise typer.BadParameter(
            f"unknown strategy {value!r}; choose one of {', '.join(STRATEGY_NAMES)}"
        )
    return value


def complete_strategy(incomplete: str) -> list[str]:
    return [n for n in STRATEGY_NAMES if n.startswith(incomplete)]


ScenarioArg = Annotated[
    Path | None,
    typer.Argument(
        help="Scenario file (YAML or JSON). Omit it for the embedded default scenario.",
        show_default=False,
    ),
]


StrategyOpt = Annotated[
    str,
    typer.Option(
        "--strategy",
        "-s",
        help=f"One of: {', '.join(STRATEGY_NAMES)}.",
        callback=check_strategy,
        autocompletion=complete_strategy,
    ),
]


TimeLimitOpt = Annotated[
    float,
    typer.Option("--time-limit", "-t", min=0.0, help="CP-SAT time limit in seconds."),
]


WorkersOpt = Annotated[int, typer.Option("--workers", min=1, help="CP-SAT worker threads.")]


FormatOpt = Annotated[
    OutputFormat,
    typer.Option("--format", "-f", help="table for people, json for programs (stdout)."),
]


def report_dir(value: Path | None) -> Path | None:
    """``--report``'s callback: charts need the ``report`` extra (matplotlib); say so
    before any planning starts rather than after."""
    if value is not None:
        try:
            require_matplotlib()
        except ChartsUnavailable as exc:
            raise typer.BadParameter(str(exc)) from exc
    return value


ReportOpt = Annotated[
    Path | None,
    typer.Option(
        "--report",
        callback=report_dir,
        help="Also write an HTML report with charts into this directory "
        "(needs the report extra: matplotlib).",
    ),
]


CSV_OPTIONS = {"time": "--time-column", "value": "--value-column"}


class WindowKind(StrEnum):
    day = "day"
    month = "month"


# The options `powercap plan` and `powercap compare` take to plan with grid intensity;
# CSV parsing and the policy are shared with `carbon report`.
IntensitySpecsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--intensity",
        help="Carbon-intensity CSV for the site, or DOMAIN=CSV for one domain's grid "
        "(repeat for sites on different grids; a domain's racks inherit its grid).",
        show_default=False,
    ),
]


TimeColumnOpt = Annotated[
    str | None, typer.Option("--time-column", help="Time column (default: the first).")
]


ValueColumnOpt = Annotated[
    str | None,
    typer.Option("--value-column", help="Intensity column (default: the only other one)."),
]


TzOpt = Annotated[
    str, typer.Option("--tz", help="IANA time zone of times written without an offset.")
]


UnitOpt = Annotated[
    str, typer.Option("--unit", help="Unit of the values: g/kWh, kg/MWh or lbs/MWh.")
]


DayOpt = Annotated[
    str | None,
    typer.Option(
        "--day",
        help="Day of the series to plan for, YYYY-MM-DD (default: the last whole day all "
        "series cover).",
    ),
]


WindowOpt = Annotated[
    WindowKind,
    typer.Option(
        "--window",
        help="Emission window: the day, or its calendar month (the plan is held all month; "
        "emissions use the month's intensity per slot of the day).",
    ),
]


PolicyOpt = Annotated[
    str | None,
    typer.Option(
        "--policy",
        "--cap-policy",
        help="Carbon-aware caps: intensity:fraction pairs in g/kWh, e.g. "
        f"'200:1.0,400:0.8,600:0.6' (with --floor or --domain alone: {DEFAULT_POLICY.describe()}).",
        show_default=False,
    ),
]


FloorOpt = Annotated[
    float | None,
    typer.Option("--floor", help="Lowest cap fraction of the policy.", show_default=False),
]


PolicyDomainsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--domain",
        help="Domain whose cap follows the policy (repeat; default: the domains given a "
        "grid with DOMAIN=CSV, else the site).",
        show_default=False,
    ),
]


BudgetOpt = Annotated[
    float | None,
    typer.Option(
        "--emission-budget",
        help="kg CO2e over the window for --budget-domain, idle included: a constraint "
        "every strategy respects.",
        show_default=False,
    ),
]


BudgetDomainOpt = Annotated[
    str | None,
    typer.Option(
        "--budget-domain", help="Domain the emission budget holds for (default: the site)."
    ),
]
