"""Reading and writing scenario files (YAML or JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import yaml

from placement.problem import Problem
from placement.scenario.building import problem_from_spec
from placement.scenario.servegen import PathLike
from placement.scenario.spec import ScenarioError, ScenarioSpec, spec_from_data


def read_spec(path: Path) -> ScenarioSpec:
    """Parse a YAML or JSON scenario file."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ScenarioError([f"cannot read file: {exc.strerror}"], str(path)) from exc
    try:
        data = orjson.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        raise ScenarioError([f"not valid YAML/JSON: {exc}"], str(path)) from exc
    return spec_from_data(data, str(path))


def load_problem(path: Path) -> Problem:
    """Read, validate and build the problem of a scenario file."""
    spec = read_spec(path)
    try:
        return problem_from_spec(spec, path.parent)
    except ScenarioError as exc:
        raise ScenarioError(exc.problems, str(path)) from exc


def write_spec(spec: ScenarioSpec, path: PathLike) -> Path:
    """Write ``spec`` to ``path`` in the explicit scenario form; returns the path.

    A ``.json`` suffix writes JSON, anything else YAML (:meth:`ScenarioSpec.to_yaml`).
    Missing parent folders are created. Either form loads back with
    :func:`placement.scenario.files.load_problem`.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix == ".json":
        data = spec.model_dump(by_alias=True, exclude_defaults=True, mode="json")
        text = json.dumps(data, indent=1) + "\n"
    else:
        text = spec.to_yaml()
    target.write_text(text)
    return target
