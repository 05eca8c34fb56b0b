"""Where live carbon intensity comes from: the ``intensity:`` section of the powercap config.

:class:`IntensitySourceSpec` is one source as written (``kind``, its kind's fields, the
request and staleness settings, ``fallbackCapFraction``, and how the live caps use it:
``period``, ``policy``, ``floor``, ``domains``, ``forecast``, ``budgets`` as
:class:`BudgetSpec`, ``euaPrice``); the section is one source or a list of them, one per
grid zone. :func:`resolve_intensity` checks the whole section against the tree and
:func:`resolve_intensity_source` one source; both return resolved
:class:`IntensitySettings` (with :class:`BudgetSettings`) or ``path: message`` problems,
so the config loader reports them with every other problem at once. Secrets are named by
environment variable, never written here, and a problem with such a field never repeats
its value (it may be the secret, pasted in by mistake). A kind that sends credentials
(``electricitymaps``, ``watttime``) is refused a plain ``http://`` URL unless
``allowInsecureHttp: true``. This module imports no HTTP client.

Every field, the sources and what ``powercap serve`` does with them: docs/carbon.md,
"Live sources" and "Live caps and the budget throttle".
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from placement.carbon.intensity import Unit, parse_unit, parse_zone
from placement.carbon.policy import DEFAULT_POLICY, CapPolicy
from placement.tree import PowerTree
from placement.validation import seconds_or_problem, validation_problems

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
# What each kind sends with every request, by the field naming it; such a kind is refused a
# plain http:// URL unless allowInsecureHttp says so.
_CREDENTIALS: dict[str, str] = {
    "electricitymaps": "the token (tokenEnv)",
    "watttime": "the username and password (usernameEnv, passwordEnv)",
}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# How a secret field is meant to be filled; said whenever its value cannot be used, since
# that value may be the secret pasted in by mistake and is therefore never repeated.
ENV_NAME_HINT = (
    "takes the NAME of an environment variable holding the secret (such as EM_TOKEN), "
    "not the secret itself"
)


class BudgetSpec(BaseModel):
    """An emission budget: at most ``kg`` CO2e from ``domain`` per ``window`` (a day or a
    calendar month on the grid's clock)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    domain: str = Field(min_length=1)
    kg: float = Field(gt=0)
    window: Literal["day", "month"] = "day"


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
    # Send credentials over plain http:// anyway (a test double, a proxy on the same host).
    allow_insecure_http: bool = Field(default=False, alias="allowInsecureHttp")
    timeout: str | int = "5s"
    retries: int = Field(default=2, ge=0, le=10)
    backoff: str | int = "1s"
    staleness: str | int = "1h"
    # Required: how caps behave when carbon data is gone must be a stated choice.
    fallback_cap_fraction: float = Field(alias="fallbackCapFraction", gt=0, le=1)
    # How the live caps loop of ``powercap serve`` uses the source (extender/carbon/loop.py).
    period: str | int = "5m"
    policy: str = "150:1.0,450:0.7"  # DEFAULT_POLICY
    floor: float = Field(default=DEFAULT_POLICY.floor, ge=0, le=1)
    domains: list[str] | None = Field(default=None, min_length=1)
    forecast: bool = True
    budgets: list[BudgetSpec] = []
    eua_price: float | None = Field(default=None, alias="euaPrice", ge=0)

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
                f"expected the name of an environment variable: this field {ENV_NAME_HINT}"
            )
        return v


@dataclass(frozen=True)
class BudgetSettings:
    """A resolved :class:`BudgetSpec`."""

    domain: str
    kg: float
    window: Literal["day", "month"] = "day"


@dataclass(frozen=True)
class IntensitySettings:
    """The resolved ``intensity:`` section, which
    :func:`extender.carbon.sources.build_source` turns into a running source."""

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
    period_s: float = 300.0
    policy: CapPolicy = DEFAULT_POLICY
    # ``None``: the root(s) of the tree. Names are checked against the tree by the config
    # loader, which knows it.
    domains: tuple[str, ...] | None = None
    forecast: bool = True
    budgets: tuple[BudgetSettings, ...] = ()
    eua_price_eur_per_t: float | None = None


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
    credentials = _CREDENTIALS.get(kind)
    if credentials and url and url.startswith("http://") and not spec.allow_insecure_http:
        problems.append(
            f"{where}.url: kind {kind} sends {credentials} with every request, and plain "
            "http:// would show it to anyone on the path; use https://, or set "
            "allowInsecureHttp: true to send it unencrypted all the same"
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
    period = seconds_or_problem(spec.period, f"{where}.period", problems)
    policy = DEFAULT_POLICY
    try:
        policy = CapPolicy.parse(spec.policy, spec.floor)
    except ValueError as exc:
        problems.append(f"{where}.policy: {exc}")
    if spec.fallback_cap_fraction < spec.floor:
        problems.append(
            f"{where}.fallbackCapFraction: {spec.fallback_cap_fraction:g} is below the floor "
            f"{spec.floor:g}; raise it or lower floor"
        )
    seen: set[tuple[str, str]] = set()
    for i, budget in enumerate(spec.budgets):
        key = (budget.domain, budget.window)
        if key in seen:
            problems.append(
                f"{where}.budgets[{i}]: a second {budget.window} budget for {budget.domain}; "
                "keep one"
            )
        seen.add(key)
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
            period_s=period,
            policy=policy,
            domains=None if spec.domains is None else tuple(spec.domains),
            forecast=spec.forecast,
            budgets=tuple(BudgetSettings(b.domain, b.kg, b.window) for b in spec.budgets),
            eua_price_eur_per_t=spec.eua_price,
        ),
        [],
    )


def _sections(raw: Any, where: str) -> list[tuple[str, Any]] | None:
    """``(path, section)`` for one source or a list of them; ``None`` for anything else."""
    if isinstance(raw, Mapping):
        return [(where, raw)]
    if isinstance(raw, list) and raw:
        return [(f"{where}[{i}]", section) for i, section in enumerate(raw)]
    return None


def intensity_schema_problems(raw: Any, where: str = "intensity") -> list[str]:
    """The problems of each source's fields alone (no tree needed), so a config with
    errors elsewhere reports these with them rather than after they are fixed."""
    items = _sections(raw, where)
    if items is None:
        return [] if raw is None else [_SHAPE_PROBLEM.format(where=where)]
    problems: list[str] = []
    for path, section in items:
        try:
            IntensitySourceSpec.model_validate(section)
        except ValidationError as exc:
            problems += validation_problems(exc, "docs/carbon.md", prefix=path)
    return problems


_SHAPE_PROBLEM = (
    "{where}: expected a source (a mapping with kind:) or a list of them, one per grid zone"
)


def resolve_intensity(
    raw: Any, tree: PowerTree, where: str = "intensity"
) -> tuple[tuple[IntensitySettings, ...], list[str]]:
    """Every source of an ``intensity:`` section — one mapping, or a list of them, one per
    grid zone — resolved and checked against ``tree``; or ``()`` and the problems.

    With more than one source each names its ``domains``, and no domain follows two
    sources (neither listed twice nor below a domain another source lists): a domain's
    power is on one grid. Budget and policy domains must exist; one window of one domain
    has one budget in the whole section."""
    items = _sections(raw, where)
    if items is None:
        return (), [_SHAPE_PROBLEM.format(where=where)]
    problems: list[str] = []
    resolved: list[tuple[str, IntensitySettings]] = []
    for path, section in items:
        try:
            spec = IntensitySourceSpec.model_validate(section)
        except ValidationError as exc:
            problems += validation_problems(exc, "docs/carbon.md", prefix=path)
            continue
        settings, found = resolve_intensity_source(spec, path)
        problems += found
        if settings is not None:
            if len(items) > 1 and settings.domains is None:
                problems.append(
                    f"{path}.domains: with more than one source, name the domains whose "
                    "caps and emissions follow this one"
                )
            resolved.append((path, settings))
    problems += _check_domains(resolved, tree)
    if problems:
        return (), problems
    return tuple(settings for _, settings in resolved), []


def _check_domains(resolved: Sequence[tuple[str, IntensitySettings]], tree: PowerTree) -> list[str]:
    names = tuple(tree.names)
    problems: list[str] = []
    covered: dict[int, str] = {}  # listed domain → the path of the source listing it
    budgets: dict[tuple[str, str], str] = {}
    for path, settings in resolved:
        for i, name in enumerate(settings.domains or ()):
            d = tree.index.get(name)
            if d is None:
                problems.append(f"{path}.domains[{i}]: {tree.unknown_domain_message(name)}")
                continue
            for other, by in covered.items():
                if by != path and (tree.membership[other, d] or tree.membership[d, other]):
                    problems.append(
                        f"{path}.domains[{i}]: {name} overlaps {names[other]} of {by}; a "
                        "domain's power is on one grid, so it follows one source"
                    )
            covered.setdefault(d, path)
        for i, b in enumerate(settings.budgets):
            if b.domain not in tree.index:
                problems.append(
                    f"{path}.budgets[{i}].domain: {tree.unknown_domain_message(b.domain)}"
                )
            key = (b.domain, b.window)
            first = budgets.setdefault(key, path)
            if first != path:
                problems.append(
                    f"{path}.budgets[{i}]: {first} has a {b.window} budget for {b.domain} "
                    "already; keep one"
                )
    return problems
