"""The scenario file format (``kind: Scenario``) as pydantic models, with its shorthands."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from placement.grid import Grid, parse_duration
from placement.validation import ProblemsError, validation_problems

API_VERSION = "powercap.io/v1alpha1"


class ScenarioError(ProblemsError):
    """A scenario that cannot be used; ``problems`` lists every ``path: message``."""

    def __init__(self, problems: list[str], source: str = "scenario") -> None:
        super().__init__(problems, source)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class Metadata(_Model):
    name: str = "scenario"


class GridSpec(_Model):
    period: str | int = "24h"
    step: str | int = "10m"
    offset: str | int = 0

    def to_grid(self) -> Grid:
        offset = 0 if self.offset in (0, "0", "0s") else parse_duration(self.offset)
        return Grid(parse_duration(self.period), parse_duration(self.step), offset)


class DomainSpec(_Model):
    name: str = Field(min_length=1)
    parent: str | None = None
    cap: float | list[float]


class NodeSpec(_Model):
    name: str = Field(min_length=1)
    domain: str
    gpus: int = Field(ge=0)
    idle_watts: float = Field(alias="idleWatts", ge=0, default=0.0)


class NodeGroupSpec(_Model):
    """``count`` nodes in ``domain``, or ``countPerDomain`` in each of ``domains``.

    Nodes are named ``{namePrefix}-{i:04d}`` with ``i`` counting across the group from 1.
    """

    name_prefix: str = Field(alias="namePrefix", min_length=1)
    domain: str | None = None
    domains: list[str] | None = None
    count: int | None = Field(default=None, ge=0)
    count_per_domain: int | None = Field(alias="countPerDomain", default=None, ge=0)
    gpus: int = Field(ge=0)
    idle_watts: float = Field(alias="idleWatts", ge=0, default=0.0)

    def expand(self) -> list[NodeSpec]:
        if self.domain is not None and self.count is not None:
            targets = [self.domain] * self.count
        elif self.domains is not None and self.count_per_domain is not None:
            targets = [d for d in self.domains for _ in range(self.count_per_domain)]
        else:
            raise ValueError("give either domain and count, or domains and countPerDomain")
        return [
            NodeSpec(
                name=f"{self.name_prefix}-{i:04d}",
                domain=d,
                gpus=self.gpus,
                idle_watts=self.idle_watts,
            )
            for i, d in enumerate(targets, start=1)
        ]


class DiurnalSpec(_Model):
    """A daily bump: ``low`` watts off-peak rising to ``high`` at ``peakAt``.

    ``width`` is the full width at half height of the bump (a wrapped Gaussian).
    """

    low: float = Field(ge=0)
    high: float = Field(ge=0)
    peak_at: str = Field(alias="peakAt")
    width: str | int = "8h"


class CsvProfileSpec(_Model):
    """Watts per replica from a CSV column.

    Without ``timeColumn`` the column holds exactly T values, one per slot. With it,
    rows are a time series (unix seconds or ISO 8601) folded onto the grid, taking
    ``quantile`` of the values that fall in each slot.
    """

    path: str
    column: str
    time_column: str | None = Field(alias="timeColumn", default=None)
    quantile: float = Field(default=0.95, ge=0, le=1)
    scale: float = Field(default=1.0, gt=0)


class ProfileRef(_Model):
    diurnal: DiurnalSpec | None = None
    constant: float | None = None
    csv: CsvProfileSpec | None = None


class ServiceSpec(_Model):
    name: str = Field(min_length=1)
    replicas: int = Field(ge=0)
    gpus_per_replica: int = Field(alias="gpusPerReplica", ge=1, default=1)
    priority: int = 0
    nameplate_watts: float = Field(alias="nameplateWatts", ge=0)
    profile: list[float] | ProfileRef
    # Provisioning at a GPU power limit (docs/power-limits.md): a fraction of the
    # GPU's default limit (0.8) or watts per GPU ("560W"); the default limit itself; a
    # throughput curve [[fraction, relative throughput], ...] ending at [1.0, 1.0]; and
    # one replica's tokens/s at the default limit (throughput is in relative units unless
    # every service gives it).
    power_limit: float | str | None = Field(alias="powerLimit", default=None)
    gpu_limit_watts: float = Field(alias="gpuLimitWatts", gt=0, default=700.0)
    throughput_curve: list[tuple[float, float]] | None = Field(
        alias="throughputCurve", default=None
    )
    tokens_per_second: float | None = Field(alias="tokensPerSecond", gt=0, default=None)


class ScenarioSpec(_Model):
    """The file, as written."""

    api_version: Literal["powercap.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["Scenario"]
    metadata: Metadata = Metadata()
    grid: GridSpec = GridSpec()
    headroom: float = Field(default=0.0, ge=0, lt=1)
    domains: list[DomainSpec]
    nodes: list[NodeSpec] = []
    node_groups: list[NodeGroupSpec] = Field(alias="nodeGroups", default=[])
    services: list[ServiceSpec] = []
    current: dict[str, dict[str, int]] = {}

    @field_validator("domains")
    @classmethod
    def _some_domain(cls, v: list[DomainSpec]) -> list[DomainSpec]:
        if not v:
            raise ValueError("at least one domain is needed")
        return v

    def to_yaml(self) -> str:
        return yaml.safe_dump(
            self.model_dump(by_alias=True, exclude_defaults=True, mode="json"), sort_keys=False
        )


def _pydantic_problems(err: ValidationError) -> list[str]:
    return validation_problems(err, reference="the scenario reference")


def spec_from_data(data: Any, source: str = "scenario") -> ScenarioSpec:
    """Validate already-parsed YAML/JSON; raises :class:`ScenarioError`."""
    if not isinstance(data, Mapping):
        raise ScenarioError(["(top level): expected a mapping with apiVersion, kind, ..."], source)
    try:
        return ScenarioSpec.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(_pydantic_problems(exc), source) from exc
