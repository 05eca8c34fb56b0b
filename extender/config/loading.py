"""Reading and checking the powercap config file (``kind: PowercapConfig``).

:func:`load_config` reads a YAML or JSON file and :func:`config_from_data` validates
parsed data; :func:`config_from_spec` checks what pydantic cannot — the tree and caps
exactly as a scenario's, named profiles and ``profileFiles``, services, and each section
through its module's ``resolve_*`` — and builds the resolved
:class:`~extender.config.model.Config`. Every problem is collected first, so
:class:`~extender.config.model.ConfigError` lists them all, each as ``path: what is wrong
and the fix``. Profiles are resolved by
:func:`placement.scenario.profiles.profile_values`, as a scenario's are.
:func:`config_from_problem` makes the config of a scenario for ``serve --scenario``.

The whole file, section by section: docs/extender.md, "Configuration".
"""

from __future__ import annotations

import glob
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml
from numpy.typing import NDArray
from pydantic import ValidationError

from extender.config.controller import ControllerSettings, resolve_controller
from extender.config.intensity import (
    IntensitySettings,
    intensity_schema_problems,
    resolve_intensity,
)
from extender.config.kubernetes import KubernetesSettings, resolve_kubernetes
from extender.config.learn import LearnRefreshSettings, resolve_learn
from extender.config.model import (
    Config,
    ConfigError,
    ConfigSpec,
    PlannerSettings,
    PlannerSpec,
    PolicySpec,
    ProfileDocument,
    SchedulerSettings,
    SchedulerSpec,
    ScoringSpec,
    ServiceEntry,
)
from extender.config.power import PowerSettings, resolve_power_source
from placement.grid import Grid
from placement.problem import Problem
from placement.scenario.building import problem_from_spec
from placement.scenario.profiles import profile_values
from placement.scenario.spec import (
    API_VERSION,
    ScenarioError,
    ScenarioSpec,
)
from placement.tree import PowerTree
from placement.validation import seconds_or_problem, validation_problems


def _pydantic_problems(err: ValidationError, prefix: str = "") -> list[str]:
    return validation_problems(
        err, reference="config/powercap.yaml", prefix=prefix, kind_name="a powercap config"
    )


# The config has always said this of a non-finite profile value (scenarios say more).
_NOT_FINITE = "is not finite"


def _read_document(path: Path) -> Any:
    text = path.read_bytes()
    if path.suffix == ".json":
        return orjson.loads(text)
    return yaml.safe_load(text)


def _problem_of(spec: ConfigSpec, base_dir: Path, problems: list[str]) -> Problem | None:
    """The grid and the power tree of the config as a fleetless :class:`Problem`, or
    ``None`` with every problem in them appended to ``problems``."""
    # The tree and its caps are validated exactly as a scenario's are.
    try:
        skeleton = ScenarioSpec.model_validate(
            {
                "apiVersion": API_VERSION,
                "kind": "Scenario",
                "metadata": spec.metadata.model_dump(),
                "grid": spec.grid.model_dump(),
                "headroom": spec.headroom,
                "domains": [d.model_dump(exclude_none=True) for d in spec.domains],
            }
        )
        return problem_from_spec(skeleton, base_dir)
    except ValidationError as exc:
        problems += _pydantic_problems(exc)
    except ScenarioError as exc:
        problems += exc.problems
    return None


def _names_only_tree(spec: ConfigSpec, grid: Grid) -> PowerTree | None:
    """The tree of the config's domain names and parents with placeholder caps, or ``None``
    when the names and parents themselves do not make a tree."""
    try:
        return PowerTree.build(
            [d.name for d in spec.domains],
            [d.parent for d in spec.domains],
            np.ones((len(spec.domains), grid.slots)),
        )
    except ValueError:
        return None


def _named_profiles(
    spec: ConfigSpec, *, grid: Grid, base_dir: Path, problems: list[str]
) -> dict[str, NDArray[np.float64]]:
    """The profiles under ``profiles:`` and in the ``profileFiles:`` documents, by name;
    what cannot be resolved is left out and appended to ``problems``."""
    profiles: dict[str, NDArray[np.float64]] = {}
    for name, value in spec.profiles.items():
        try:
            profiles[name] = profile_values(value, grid, base_dir, not_finite=_NOT_FINITE)
        except ValueError as exc:
            problems.append(f"profiles.{name}: {exc}")
    for i, pattern in enumerate(spec.profile_files):
        full = pattern if Path(pattern).is_absolute() else str(base_dir / pattern)
        matches = sorted(glob.glob(full))
        if not matches:
            problems.append(f"profileFiles[{i}]: {pattern!r} matches no file")
        for path in map(Path, matches):
            where = f"profileFiles[{i}] ({path.name})"
            try:
                doc = ProfileDocument.model_validate(_read_document(path))
            except (OSError, yaml.YAMLError, orjson.JSONDecodeError) as exc:
                problems.append(f"{where}: cannot read: {exc}")
                continue
            except ValidationError as exc:
                problems += _pydantic_problems(exc, where)
                continue
            if doc.metadata.name in profiles:
                problems.append(f"{where}: profile {doc.metadata.name!r} is defined twice")
                continue
            try:
                profiles[doc.metadata.name] = profile_values(
                    doc.profile, grid, path.parent, not_finite=_NOT_FINITE
                )
            except ValueError as exc:
                problems.append(f"{where}.profile: {exc}")
    return profiles


def _service_entries(
    spec: ConfigSpec,
    profiles: Mapping[str, NDArray[np.float64]],
    *,
    grid: Grid,
    base_dir: Path,
    problems: list[str],
) -> dict[str, ServiceEntry]:
    """Every service under ``services:`` with its profile resolved (a name looked up in
    ``profiles``, or one given inline); problems are appended to ``problems``."""
    services: dict[str, ServiceEntry] = {}
    for name, svc in spec.services.items():
        where = f"services.{name}.profile"
        profile: NDArray[np.float64] | None = None
        profile_name: str | None = None
        if isinstance(svc.profile, str):
            profile_name = svc.profile
            profile = profiles.get(svc.profile)
            # A named profile that failed to resolve was reported above already.
            if profile is None and svc.profile not in spec.profiles:
                known = ", ".join(sorted(profiles)) or "none defined"
                problems.append(
                    f"{where}: unknown profile {svc.profile!r} (known: {known}); define it "
                    "under profiles or in a profileFiles document"
                )
        elif svc.profile is not None:
            try:
                profile = profile_values(svc.profile, grid, base_dir, not_finite=_NOT_FINITE)
                profile_name = name
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
        services[name] = ServiceEntry(
            name=name,
            profile=profile,
            profile_name=profile_name,
            priority=svc.priority,
            gpus_per_replica=svc.gpus_per_replica,
            nameplate_watts=svc.nameplate_watts,
            replicas=svc.replicas,
        )
    return services


def _planner_settings(spec: PlannerSpec, problems: list[str]) -> PlannerSettings:
    """The ``planner:`` section with its durations in seconds; a bad duration is
    appended to ``problems``."""
    return PlannerSettings(
        enabled=spec.enabled,
        strategy=spec.strategy,
        debounce_s=seconds_or_problem(spec.debounce, "planner.debounce", problems),
        time_limit_s=seconds_or_problem(spec.time_limit, "planner.timeLimit", problems),
        interval_s=seconds_or_problem(spec.interval, "planner.interval", problems),
        workers=spec.workers,
    )


def _scheduler_settings(spec: SchedulerSpec, problems: list[str]) -> SchedulerSettings:
    """The ``scheduler:`` section with its TTL in seconds; a bad TTL is appended to
    ``problems``."""
    ttl_s = seconds_or_problem(spec.assumed_pod_ttl, "scheduler.assumedPodTTL", problems)
    return SchedulerSettings(
        name=spec.name, assumed_pod_ttl_s=ttl_s, failure_reasons=spec.failure_reasons
    )


def config_from_spec(
    spec: ConfigSpec, base_dir: Path = Path("."), source: str = "config"
) -> Config:
    """Check cross-references and build the :class:`Config`; raises :class:`ConfigError`
    listing every problem. A wrong tree does not stop the rest: profiles and services
    are still checked on the grid, and every section that does not need the tree; only
    what names domains (``intensity:``) waits for a tree that builds."""
    problems: list[str] = []
    grid: Grid | None = None
    try:
        grid = spec.grid.to_grid()
    except ValueError as exc:
        problems.append(f"grid: {exc}")
    problem = _problem_of(spec, base_dir, problems) if grid is not None else None
    tree = problem.tree if problem is not None else None
    if tree is None and grid is not None:
        # A tree whose names and parents hold but whose caps do not still lets what names
        # domains be checked; the config is refused all the same.
        tree = _names_only_tree(spec, grid)
    profiles: dict[str, NDArray[np.float64]] = {}
    services: dict[str, ServiceEntry] = {}
    if grid is not None:
        profiles = _named_profiles(spec, grid=grid, base_dir=base_dir, problems=problems)
        services = _service_entries(spec, profiles, grid=grid, base_dir=base_dir, problems=problems)
    planner = _planner_settings(spec.planner, problems)
    scheduler = _scheduler_settings(spec.scheduler, problems)
    power: PowerSettings | None = None
    if spec.power is not None:
        power, power_problems = resolve_power_source(spec.power, "power")
        problems += power_problems
    intensity: tuple[IntensitySettings, ...] = ()
    if spec.intensity is not None and tree is not None:
        intensity, intensity_problems = resolve_intensity(spec.intensity, tree, "intensity")
        problems += intensity_problems
    controller, controller_problems = resolve_controller(spec.controller, "controller")
    problems += controller_problems
    if spec.controller.enabled and spec.power is None:
        problems.append(
            "controller.enabled: the controller acts on measured power; add a power: "
            "section (where Prometheus is), or set controller.enabled: false"
        )
    learn: LearnRefreshSettings | None = None
    # Only a written learn: section is checked: without one there is nothing to refresh,
    # and a config without power: must not be asked where Prometheus is.
    if "learn" in spec.model_fields_set:
        learn, learn_problems = resolve_learn(
            spec.learn,
            power.url if power is not None else None,
            grid.step_s if grid is not None else 600,
            where="learn",
        )
        problems += learn_problems
    kubernetes, kubernetes_problems = resolve_kubernetes(spec.kubernetes, "kubernetes")
    problems += kubernetes_problems
    if problems or grid is None or problem is None or tree is None:
        raise ConfigError(problems, source)
    return Config(
        name=spec.metadata.name,
        grid=grid,
        tree=tree,
        headroom=spec.headroom,
        profiles=profiles,
        services=services,
        nodes=spec.nodes,
        policy=spec.policy,
        planner=planner,
        scoring=spec.scoring,
        scheduler=scheduler,
        power=power,
        intensity=intensity,
        controller=controller or ControllerSettings(),
        learn=learn,
        kubernetes=kubernetes or KubernetesSettings(),
        source=source,
        resources=spec.resources,
        spec=spec,
    )


def config_from_data(data: Any, base_dir: Path = Path("."), source: str = "config") -> Config:
    """Validate already-parsed YAML/JSON; raises :class:`ConfigError`."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            ["(top level): expected a mapping with apiVersion, kind: PowercapConfig, domains"],
            source,
        )
    try:
        spec = ConfigSpec.model_validate(data)
    except ValidationError as exc:
        # intensity: is checked against the tree later; its own fields are reported now.
        extra = intensity_schema_problems(data.get("intensity"))
        raise ConfigError(_pydantic_problems(exc) + extra, source) from exc
    return config_from_spec(spec, base_dir, source)


def load_config(path: Path) -> Config:
    """Read and validate a config file; raises :class:`ConfigError`."""
    try:
        data = _read_document(path)
    except OSError as exc:
        raise ConfigError([f"cannot read file: {exc.strerror}"], str(path)) from exc
    except (yaml.YAMLError, orjson.JSONDecodeError) as exc:
        raise ConfigError([f"not valid YAML/JSON: {exc}"], str(path)) from exc
    return config_from_data(data, path.parent, str(path))


def config_from_problem(
    problem: Problem,
    policy: PolicySpec | None = None,
    planner: PlannerSettings | None = None,
    *,
    scoring: ScoringSpec | None = None,
    source: str = "scenario",
) -> Config:
    """The config of a scenario: every service is its own named profile, and the
    scenario's fleet is kept as the static cluster (``serve --scenario``)."""
    svc = problem.services
    rows = [svc.profiles[s] for s in range(svc.size)]
    profiles = dict(zip(svc.names, rows, strict=True))
    services = {
        name: ServiceEntry(
            name=name,
            profile=rows[s],
            profile_name=name,
            priority=int(svc.priority[s]),
            gpus_per_replica=int(svc.gpus[s]),
            nameplate_watts=float(svc.nameplate[s]),
            replicas=int(svc.demand[s]),
        )
        for s, name in enumerate(svc.names)
    }
    return Config(
        name=problem.name,
        grid=problem.grid,
        tree=problem.tree,
        headroom=problem.headroom,
        profiles=profiles,
        services=services,
        policy=policy or PolicySpec(),
        planner=planner or PlannerSettings(),
        scoring=scoring or ScoringSpec(),
        source=source,
        problem=problem,
    )
