"""``powercap config``: check a powercap config file offline.

::

    powercap config validate config/powercap.yaml
    powercap config migrate config/powercap.yaml | kubectl apply -f -

:func:`config_validate` needs no cluster and no Prometheus: it reads the file (and the
``profileFiles`` it names) and reports every problem in one pass — the schema's (a
misspelled key, a value out of range) and those that need the tree (an unknown parent
domain, a negative cap, a profile a service names but nobody defines, an intensity zone
on an unknown domain) — each as ``path: what is wrong and the fix``, on stderr, exit 1.
A valid file prints one ``OK`` line with its size and exits 0; one that keeps the tree
in the file (``resources.enabled`` false) adds the deprecation warning on stderr, as
``powercap serve`` and ``powercap controller`` log it at start. :func:`config_migrate`
prints the custom resources of a valid file (docs/api.md). It runs the checks
``powercap serve`` and ``powercap controller`` run at start (they refuse to start on the
same problems), through :func:`extender.config.checking.check_config_file`.
:func:`register` adds the group to the ``powercap`` CLI.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from extender.config.checking import check_config_file
from extender.config.migrate import (
    configmap_deprecation,
    migrate_config_file,
    migrate_header,
    render_resources,
)
from extender.config.model import Config, ConfigError
from extender.config.resources import ResourceError
from powercap.console import stderr, stdout

config_app = typer.Typer(
    help="Check powercap config files (kind: PowercapConfig).",
    no_args_is_help=True,
    add_completion=False,
)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def describe_config(config: Config) -> str:
    """One line: the config's name and size, and what runs on it."""
    tree = config.tree
    parts = [
        _plural(tree.size, "domain"),
        _plural(int(tree.leaves.size), "leaf domain"),
        _plural(len(config.profiles), "profile"),
        _plural(len(config.services), "service"),
        f"power: {config.power.preset if config.power is not None else 'none'}",
        _plural(len(config.intensity), "intensity zone"),
    ]
    if config.controller.enabled:
        parts.append("controller: " + ("dry run" if config.controller.dry_run else "acting"))
    else:
        parts.append("controller: off")
    return f"{config.name!r} — " + ", ".join(parts)


@config_app.command("validate")
def config_validate(
    file: Annotated[Path, typer.Argument(help="powercap config (PowercapConfig YAML or JSON).")],
) -> None:
    """Check a config file offline: print OK with its size, or every problem, each with
    its path and the fix (exit code 1)."""
    check = check_config_file(file)
    if not check.ok or check.config is None:
        console = stderr()
        console.print(Text(f"{file}: {_plural(len(check.problems), 'problem')}", style="bold red"))
        for problem in check.problems:
            console.print(Text(f"  {problem}", style="red"))
        raise typer.Exit(1)
    stdout().print(
        Text.assemble(("OK ", "bold green"), f"{file}: {describe_config(check.config)}"),
        soft_wrap=True,
    )
    deprecation = configmap_deprecation(check.config)
    if deprecation is not None:
        stderr().print(Text(f"warning: {deprecation}", style="yellow"))


@config_app.command("migrate")
def config_migrate(
    file: Annotated[Path, typer.Argument(help="powercap config (PowercapConfig YAML or JSON).")],
    namespace: Annotated[
        str, typer.Option(help="Namespace of the PowerProfiles and PowerPolicies.")
    ] = "powercap-system",
) -> None:
    """Print the custom resources of a config file (multi-document YAML for
    `kubectl apply -f -`): a PowerDomain per domain, a PowerProfile per profile, a
    PowerPolicy per service. services[].replicas is left out: demand comes from the
    workloads. A config with problems is not migrated (exit code 1)."""
    try:
        resources = migrate_config_file(file, namespace)
    except (ConfigError, ResourceError) as exc:
        console = stderr()
        console.print(Text(f"{file}: {_plural(len(exc.problems), 'problem')}", style="bold red"))
        for problem in exc.problems:
            console.print(Text(f"  {problem}", style="red"))
        raise typer.Exit(1) from exc
    sys.stdout.write(render_resources(resources, migrate_header(str(file))))


def register(app: typer.Typer) -> None:
    """Add the ``config`` command group to ``app``."""
    app.add_typer(config_app, name="config")
