"""Console helpers every command shares: the two consoles, errors, progress, loading the
scenario argument, text to stdout or a file, and the one JSON emitter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson
import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from extender.config.migrate import configmap_deprecation
from extender.config.model import Config
from placement.problem import Problem
from placement.scenario.files import load_problem
from placement.scenario.spec import ScenarioError
from placement.validation import ProblemsError

T = TypeVar("T")

log = logging.getLogger("powercap")


class OutputFormat(StrEnum):
    table = "table"
    json = "json"


def stdout() -> Console:
    """Console for results. Piped output keeps wide tables readable instead of 80 columns."""
    console = Console()
    return console if console.is_terminal else Console(width=max(console.width, 140))


def stderr() -> Console:
    # soft_wrap: an error line stays one line, whole for grep and copy-paste.
    return Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 2, *, prefix: str = "error") -> typer.Exit:
    """Print ``prefix: message`` on stderr and return the ``typer.Exit`` to raise."""
    stderr().print(Text(f"{prefix}: {message}", style="bold red"))
    return typer.Exit(code)


def print_scenario_problems(exc: ScenarioError) -> None:
    console = stderr()
    count = len(exc.problems)
    console.print(
        Text(f"{exc.source}: {count} problem{'s' if count != 1 else ''}", style="bold red")
    )
    for problem in exc.problems:
        console.print(Text(f"  {problem}", style="red"))


def load_scenario(scenario: Path | None) -> Problem:
    """The scenario's problem, or the embedded default; exit 2 listing every problem."""
    try:
        if scenario is None:
            from placement.scenario.default import default_problem

            return default_problem()
        return load_problem(scenario)
    except ScenarioError as exc:
        print_scenario_problems(exc)
        raise typer.Exit(2) from None


def json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def emit_json(payload: dict[str, Any]) -> None:
    data = orjson.dumps(
        payload,
        default=json_default,
        option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS,
    )
    typer.echo(data.decode())


@contextmanager
def progress_display() -> Iterator[Progress]:
    """Spinner and elapsed time per step, on stderr (a final summary when not a TTY)."""
    progress = Progress(
        SpinnerColumn(finished_text="[green]✓[/]"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=stderr(),
    )
    with progress:
        yield progress


def progress_step(progress: Progress, description: str, work: Callable[[], T]) -> T:
    task = progress.add_task(description, total=None)
    try:
        return work()
    finally:
        progress.update(task, total=1, completed=1)


def write_output(text: str, output: Path | None) -> None:
    if output is None:
        typer.echo(text, nl=not text.endswith("\n"))
        return
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise fail(f"cannot write {output}: {exc.strerror}") from None
    stderr().print(f"wrote {output}")


def print_problems(exc: ProblemsError, hint: str = "") -> None:
    console = stderr()
    console.print(Text(f"error: {exc.source}{hint}", style="bold red"))
    for line in exc.problems:
        console.print(Text(f"  {line}", style="red"))


def warn_deprecated(config: Config) -> None:
    """Log, once, that ``config`` keeps the tree in the file (the deprecated ConfigMap
    form, :func:`~extender.config.migrate.configmap_deprecation`); for the commands that
    run against a live cluster (``serve --config``, ``controller``), never offline ones."""
    message = configmap_deprecation(config)
    if message is not None:
        log.warning(message)
