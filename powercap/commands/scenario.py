"""``powercap scenario``: write the default scenario, build one from ServeGen traces,
validate a file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.text import Text

from placement.scenario.files import load_problem
from placement.scenario.spec import ScenarioError
from powercap.console import (
    fail,
    print_scenario_problems,
    progress_display,
    progress_step,
    stderr,
    stdout,
    write_output,
)
from powercap.plans import describe_problem

if TYPE_CHECKING:
    from placement.powermodel import PowerCurve
    from placement.scenario.spec import ScenarioSpec


scenario_app = typer.Typer(
    help="Write, convert and check scenario files.", no_args_is_help=True, add_completion=False
)


def _spec_yaml(spec: ScenarioSpec) -> str:
    return spec.to_yaml()


@scenario_app.command("default")
def scenario_default(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")
    ] = None,
) -> None:
    """Write the embedded default scenario as YAML."""
    from placement.scenario.default import default_spec

    write_output(_spec_yaml(default_spec()), output)


@scenario_app.command("from-servegen")
def scenario_from_servegen(
    dirs: Annotated[
        list[Path],
        typer.Argument(
            help="Folders of ServeGen chunk-N-trace.csv files (or folders above them).",
            show_default=False,
        ),
    ],
    services: Annotated[
        int, typer.Option("--services", min=1, help="Clients to turn into services.")
    ] = 40,
    train_days: Annotated[
        int, typer.Option("--train-days", min=1, help="Leading days of each trace to learn from.")
    ] = 7,
    quantile: Annotated[
        float, typer.Option("--quantile", min=0.0, max=1.0, help="Sizing and profile quantile.")
    ] = 0.95,
    curve: Annotated[
        str | None,
        typer.Option(
            "--curve",
            help="Power curve 'rate:watts,...' (req/s per model instance → watts per GPU), "
            "e.g. '0:118,0.5:408,2:473,4:495'. Default: H100, Llama-3-70B TP4.",
        ),
    ] = None,
    gpus_per_instance: Annotated[
        int | None, typer.Option("--gpus-per-instance", min=1, help="Tensor-parallel GPUs.")
    ] = None,
    instances_per_replica: Annotated[
        int | None, typer.Option("--instances-per-replica", min=1, help="Model instances.")
    ] = None,
    rows: Annotated[int | None, typer.Option("--rows", min=1)] = None,
    racks_per_row: Annotated[int | None, typer.Option("--racks-per-row", min=1)] = None,
    nodes_per_rack: Annotated[int | None, typer.Option("--nodes-per-rack", min=1)] = None,
    gpus_per_node: Annotated[int | None, typer.Option("--gpus-per-node", min=1)] = None,
    idle_watts: Annotated[float | None, typer.Option("--idle-watts", min=0.0)] = None,
    nameplate_watts: Annotated[
        float | None, typer.Option("--nameplate-watts", help="Rated watts above idle per 8 GPUs.")
    ] = None,
    rack_cap: Annotated[float | None, typer.Option("--rack-cap", help="Watts per rack.")] = None,
    row_cap: Annotated[float | None, typer.Option("--row-cap", help="Watts per row.")] = None,
    site_cap: Annotated[
        float | None, typer.Option("--site-cap", help="Watts for the site.")
    ] = None,
    rack_cap_fraction: Annotated[
        float | None,
        typer.Option("--rack-cap-fraction", help="Rack cap as a share of its nameplate."),
    ] = None,
    row_fraction: Annotated[
        float | None, typer.Option("--row-fraction", help="Row cap as a share of its racks'.")
    ] = None,
    site_fraction: Annotated[
        float | None, typer.Option("--site-fraction", help="Site cap as a share of its rows'.")
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="0: the busiest clients; other: a random draw.")
    ] = 0,
    demand_scale: Annotated[float, typer.Option("--demand-scale", min=0.0)] = 1.0,
    max_replicas: Annotated[int, typer.Option("--max-replicas", min=1)] = 64,
    name: Annotated[str, typer.Option("--name", help="metadata.name of the scenario.")] = (
        "servegen"
    ),
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="File to write, .yaml or .json (default: stdout)."),
    ] = None,
) -> None:
    """Build a scenario from ServeGen production traces (real clients, real asynchrony).

    Topology options left out keep the defaults of placement.scenario.servegen.Topology.
    """
    from placement.scenario.servegen import Topology, build_servegen

    given: dict[str, Any] = {
        "rows": rows,
        "racks_per_row": racks_per_row,
        "nodes_per_rack": nodes_per_rack,
        "gpus_per_node": gpus_per_node,
        "idle_watts": idle_watts,
        "nameplate_watts": nameplate_watts,
        "rack_cap": rack_cap,
        "row_cap": row_cap,
        "site_cap": site_cap,
        "rack_cap_fraction": rack_cap_fraction,
        "row_fraction": row_fraction,
        "site_fraction": site_fraction,
    }
    try:
        topology = Topology(**{k: v for k, v in given.items() if v is not None})
        power = _servegen_power(
            curve,
            gpus_per_instance=gpus_per_instance,
            instances_per_replica=instances_per_replica,
        )
        with progress_display() as progress:
            built = progress_step(
                progress,
                f"reading ServeGen traces from {', '.join(str(d) for d in dirs)}",
                lambda: build_servegen(
                    dirs,
                    services=services,
                    train_days=train_days,
                    curve=power,
                    topology=topology,
                    quantile=quantile,
                    seed=seed,
                    name=name,
                    demand_scale=demand_scale,
                    max_replicas=max_replicas,
                ),
            )
    except ValueError as exc:
        raise fail(str(exc)) from None
    _write_built_spec(built.spec, output)


def _servegen_power(
    curve: str | None, *, gpus_per_instance: int | None, instances_per_replica: int | None
) -> PowerCurve:
    """The H100 calibration with the curve options given in place of its own; unset ones
    keep it (bare idle, host power, capacity). Raises ``ValueError`` for a bad ``curve``."""
    from dataclasses import replace

    from placement.powermodel import H100_LLAMA70B_TP4, parse_curve

    given: dict[str, Any] = {
        "gpus_per_instance": gpus_per_instance,
        "instances_per_replica": instances_per_replica,
    }
    if curve is not None:
        given["points"] = parse_curve(curve)
    return replace(H100_LLAMA70B_TP4, **{k: v for k, v in given.items() if v is not None})


def _write_built_spec(spec: ScenarioSpec, output: Path | None) -> None:
    """Write a built scenario to ``output`` (JSON for a ``.json`` name, else YAML; stdout
    without one) and its size to stderr; exit 2 listing the problems of an invalid one."""
    from placement.scenario.building import problem_from_spec

    try:
        problem = problem_from_spec(spec)
    except ScenarioError as exc:  # a bug in the builder rather than in the user's input
        print_scenario_problems(exc)
        raise typer.Exit(2) from None
    if output is not None and output.suffix == ".json":
        data = spec.model_dump(by_alias=True, exclude_defaults=True, mode="json")
        text = orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n"
    else:
        text = spec.to_yaml()
    write_output(text, output)
    stderr().print(
        f"{problem.name}: {describe_problem(problem)}; "
        f"{int(problem.services.demand.sum()):,} replicas demanded"
    )


@scenario_app.command("validate")
def scenario_validate(
    file: Annotated[Path, typer.Argument(help="Scenario file (YAML or JSON).")],
) -> None:
    """Check a scenario file: print OK with its size, or every problem (exit code 1)."""
    try:
        problem = load_problem(file)
    except ScenarioError as exc:
        print_scenario_problems(exc)
        raise typer.Exit(1) from None
    svc = problem.services
    stdout().print(
        Text.assemble(
            ("OK ", "bold green"),
            f"{file}: {problem.name!r} — {describe_problem(problem)}; "
            f"{int(svc.demand.sum()):,} replicas demanded",
        )
    )


def register(app: typer.Typer) -> None:
    """Add the ``scenario`` command group to ``app``."""
    app.add_typer(scenario_app, name="scenario")
