"""``powercap``: the command line, one command group per module in :mod:`powercap.commands`.

Results go to stdout (a rich table, or exactly one JSON object with ``--format json``);
progress, warnings and errors go to stderr, so ``powercap plan --format json | jq`` works.
Exit codes: 0 success, 1 a validation found problems, 2 bad input (a scenario that does not
load, an unknown strategy, a bad option).

Every module of :mod:`powercap.commands` has ``register(app)``; other packages add
commands the same way through the ``powercap.commands`` entry-point group (see
:func:`load_plugins`).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, entry_points, version
from typing import Annotated

import typer
from rich.text import Text

from powercap.commands import (
    agent,
    carbon,
    config,
    controller,
    planning,
    profiles,
    scenario,
    serve,
    whatif,
)
from powercap.console import stderr

PLUGIN_GROUP = "powercap.commands"
DISTRIBUTION = "powercap-scheduler"

app = typer.Typer(
    name="powercap",
    help="Power-aware placement of LLM inference services into a datacenter power tree.",
    no_args_is_help=True,
    # --install-completion / --show-completion for bash, zsh, fish and PowerShell
    add_completion=True,
    rich_markup_mode="rich",
    # Locals of a solver frame are large numpy arrays; printing them helps nobody.
    pretty_exceptions_show_locals=False,
)


def package_version() -> str:
    """The installed version of the ``powercap-scheduler`` distribution."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"powercap {package_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    _version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version of powercap and exit.",
        ),
    ] = False,
) -> None:
    """Power-aware placement of LLM inference services into a datacenter power tree."""


for _commands in (planning, whatif, scenario, carbon, serve, controller, profiles, config, agent):
    _commands.register(app)


def load_plugins(target: typer.Typer) -> list[str]:
    """Let installed packages add commands to ``target``.

    Every entry point of the ``powercap.commands`` group is loaded and called as
    ``register(target)``. A plugin that fails to import or register is reported on
    stderr and skipped: one broken extra must not take the whole CLI down. Returns the
    names of the plugins that registered.
    """
    loaded: list[str] = []
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            register = ep.load()
            register(target)
        except Exception as exc:  # any failure in foreign code: warn and carry on
            stderr().print(
                Text(
                    f"warning: powercap plugin {ep.name!r} ({ep.value}) failed to load: "
                    f"{type(exc).__name__}: {exc}",
                    style="yellow",
                )
            )
        else:
            loaded.append(ep.name)
    return loaded


_plugins_loaded = False


def main() -> None:
    """Console-script entry point: load plugins once, then run the CLI."""
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        load_plugins(app)
    app()
