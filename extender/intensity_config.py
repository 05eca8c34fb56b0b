"""Where live carbon intensity comes from: an ``intensity:`` config section.

::

    intensity:
      kind: electricitymaps      # electricitymaps | watttime | ukci | carbon-aware-sdk | csv
      zone: DE                   # electricitymaps: the zone
      tokenEnv: EM_TOKEN         # the environment variable holding the auth-token
      timeout: 5s                # per request
      retries: 2                 # after a timeout, 5xx or 429; waits backoff, 2·backoff, …
      backoff: 1s
      staleness: 1h              # the last good value is used while younger than this
      fallbackCapFraction: 0.8   # then caps are this fraction of nameplate

Per kind: ``watttime`` takes ``region`` with ``usernameEnv`` and ``passwordEnv``;
``carbon-aware-sdk`` takes ``location`` and needs ``url`` (a WebAPI deployment has no
public address); ``ukci`` takes nothing else; ``csv`` takes ``path`` and optionally
``timeColumn``, ``valueColumn``, ``timezone`` and ``unit``. ``url`` defaults to each
service's public address.

Secrets never appear in the config: it names environment variables, and the source
reads them when it is built. :func:`resolve_intensity_source` checks what pydantic
cannot and returns ``path: message`` problems, so the config loader can report them with
every other problem at once. This module imports no HTTP client.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from placement.intensity import Unit, parse_unit, parse_zone
from placement.validation import seconds_or_problem

Kind = Literal["electricitymaps", "watttime", "ukci", "carbon-aware-sdk", "csv"]

DEFAULT_URLS: dict[str, str] = {
    "electricitymaps": "https://api.electricitymap.org",
    "watttime": "https://api.watttime.org",
    "ukci": "https://api.carbonintensity.org.uk",
}

# What each kind reads besides the common settings; anything else given is a mistake
# worth naming (a zone on a WattTime source would otherwise be silently ignored).
_FIELDS: dict[str, tuple[str, ...]] = {
    "electricitymaps": ("zone", "tokenEnv"),
    "watttime": ("region", "usernameEnv", "passwordEnv"),
    "ukci": (),
    "carbon-aware-sdk": ("location",),
    "csv": ("path", "timeColumn", "valueColumn", "timezone", "unit"),
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    "electricitymaps": ("zone", "tokenEnv"),
    "watttime": ("region", "usernameEnv", "passwordEnv"),
    "ukci": (),
    "carbon-aware-sdk": ("location",),
    "csv": ("path",),
}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class IntensitySourceSpec(BaseModel):
    """The ``intensity:`` section, as written."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    kind: Kind
    url: str | None = None
    zone: str | None = Field(default=None, min_length=1)
    region: str | None = Field(default=None, min_length=1)
    location: str | None = Field(default=None, min_length=1)
    path: str | None = Field(default=None, min_length=1)
    time_column: str | None = Field(default=None, alias="timeColumn", min_length=1)
    value_column: str | None = Field(default=None, alias="valueColumn", min_length=1)
    timezone: str | None = None
    unit: str | None = None
    token_env: str | None = Field(default=None, alias="tokenEnv")
    username_env: str | None = Field(default=None, alias="usernameEnv")
    password_env: str | None = Field(default=None, alias="passwordEnv")
    timeout: str | int = "5s"
    retries: int = Field(default=2, ge=0, le=10)
    backoff: str | int = "1s"
    staleness: str | int = "1h"
    # Required: how caps behave when carbon data is gone must be a stated choice.
    fallback_cap_fraction: float = Field(alias="fallbackCapFraction", gt=0, le=1)

    @field_validator("url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, got {v!r}")
        return None if v is None else v.rstrip("/")

    @field_validator("token_env", "username_env", "password_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_NAME.fullmatch(v):
            # Whatever this is, it is not a variable name: most likely the secret itself.
            raise ValueError(
                "expected the name of an environment variable holding the secret "
                "(such as EM_TOKEN), not the secret itself"
            )
        return v


@dataclass(frozen=True)
class IntensitySettings:
    """The resolved ``intensity:`` section, which
    :func:`extender.intensity_sources.build_source` turns into a running source."""

    kind: Kind
    url: str | None
    fallback_cap_fraction: float
    zone: str | None = None
    region: str | None = None
    location: str | None = None
    path: str | None = None
    time_column: str | None = None
    value_column: str | None = None
    timezone: str = "UTC"
    unit: Unit = Unit.g_per_kwh
    token_env: str | None = None
    username_env: str | None = None
    password_env: str | None = None
    timeout_s: float = 5.0
    retries: int = 2
    backoff_s: float = 1.0
    staleness_s: float = 3600.0


_ALIASES = {
    "zone": "zone",
    "region": "region",
    "location": "location",
    "path": "path",
    "timeColumn": "time_column",
    "valueColumn": "value_column",
    "timezone": "timezone",
    "unit": "unit",
    "tokenEnv": "token_env",
    "usernameEnv": "username_env",
    "passwordEnv": "password_env",
}


def resolve_intensity_source(
    spec: IntensitySourceSpec, where: str = "intensity"
) -> tuple[IntensitySettings | None, list[str]]:
    """Settings from a spec, or ``None`` and the ``where.field: message`` problems."""
    problems: list[str] = []
    kind = spec.kind
    for alias, attr in _ALIASES.items():
        given = getattr(spec, attr) is not None
        if given and alias not in _FIELDS[kind]:
            problems.append(f"{where}.{alias}: kind {kind} does not use {alias}; remove it")
        if not given and alias in _REQUIRED[kind]:
            problems.append(f"{where}.{alias}: kind {kind} needs {alias}")
    url = spec.url
    if kind == "csv":
        if url is not None:
            problems.append(f"{where}.url: kind csv reads a file; give path instead of url")
    elif url is None:
        url = DEFAULT_URLS.get(kind)
        if url is None:
            problems.append(
                f"{where}.url: kind {kind} needs the URL of its WebAPI deployment "
                "(such as http://carbon-aware-api.carbon.svc:8080)"
            )
    unit = Unit.g_per_kwh
    if spec.unit is not None:
        try:
            unit = parse_unit(spec.unit)
        except ValueError as exc:
            problems.append(f"{where}.unit: {exc}")
    if spec.timezone is not None:
        try:
            parse_zone(spec.timezone)
        except ValueError as exc:
            problems.append(f"{where}.timezone: {exc}")
    timeout = seconds_or_problem(spec.timeout, f"{where}.timeout", problems)
    backoff = seconds_or_problem(spec.backoff, f"{where}.backoff", problems)
    staleness = seconds_or_problem(spec.staleness, f"{where}.staleness", problems)
    if problems:
        return None, problems
    return (
        IntensitySettings(
            kind=kind,
            url=url,
            fallback_cap_fraction=spec.fallback_cap_fraction,
            zone=spec.zone,
            region=spec.region,
            location=spec.location,
            path=spec.path,
            time_column=spec.time_column,
            value_column=spec.value_column,
            timezone=spec.timezone or "UTC",
            unit=unit,
            token_env=spec.token_env,
            username_env=spec.username_env,
            password_env=spec.password_env,
            timeout_s=timeout,
            retries=spec.retries,
            backoff_s=backoff,
            staleness_s=staleness,
        ),
        [],
    )
