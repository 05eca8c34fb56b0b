"""Live grid carbon intensity for the extender: five sources behind one interface, and
:class:`Resilient`, which makes a failing source explicit instead of guessing.

Every source answers in gCO2e/kWh with UTC timestamps (Unix seconds):

* ``latest(now)`` — the intensity that holds at ``now`` as a :class:`Reading`, or ``None``
  when the source has no value for that instant;
* ``forecast(now, horizon_s)`` — an :class:`~placement.carbon.intensity.IntensitySeries` from
  about ``now`` on, clipped to ``now + horizon_s`` (a source may return less).

Sources: :class:`UkCarbonIntensity` (api.carbonintensity.org.uk), :class:`ElectricityMaps`
(v3), :class:`WattTime` (v3, MOER converted from lbs/MWh), :class:`CarbonAwareSdk` (the
Green Software Foundation's WebAPI) and :class:`CsvIntensity` (a file read with
:func:`placement.carbon.intensity_csv.read_intensity_csv`).

A source raises :class:`SourceError` on failure: :class:`SourceUnavailable` (timeouts,
connection errors, HTTP 5xx and 429 — worth retrying), :class:`SourceRejected` (other 4xx:
credentials, zone — retrying cannot help) or :class:`SourceDataError` (an answer not in
the documented shape, naming the field). :class:`Resilient` retries the first kind with
exponential backoff, keeps the last good value and serves it while it is younger than
the staleness limit, and after that reports :attr:`Status.FALLBACK`: the caller then
applies the configured fallback cap.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
import numpy as np

from extender.config.intensity import ENV_NAME_HINT, IntensitySettings
from placement.carbon.intensity import IntensitySeries, Unit
from placement.carbon.intensity_csv import read_intensity_csv
from placement.validation import ProblemsError

_T = TypeVar("_T")

# WattTime reports MOER in pounds of CO2 per MWh: 453.59237 g / 1000 kWh.
LBS_PER_MWH_TO_G_PER_KWH = 0.45359237


# ---------------------------------------------------------------- interface


@dataclass(frozen=True, slots=True)
class Reading:
    """One intensity value: ``g_per_kwh`` holds from ``at_s`` (Unix seconds, UTC)."""

    at_s: int
    g_per_kwh: float
    source: str


class IntensitySource(Protocol):
    """What :class:`Resilient` wraps; ``name`` appears in every error and status."""

    name: str

    def latest(self, now: float) -> Reading | None: ...

    def forecast(self, now: float, horizon_s: float) -> IntensitySeries: ...


class SourceError(Exception):
    """A source could not answer; the message names the source."""

    retryable = False


class SourceUnavailable(SourceError):
    """Timeout, connection failure, HTTP 5xx or 429: the next attempt may succeed."""

    retryable = True


class SourceRejected(SourceError):
    """An HTTP 4xx other than 429 (wrong credentials, unknown zone): retrying cannot help."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class SourceDataError(SourceError):
    """An answer that is not in the documented shape; the message names the field."""


# ---------------------------------------------------------------- HTTP


class _Http:
    """GET JSON with a real timeout (connect, read and write each), mapping every failure
    to a :class:`SourceError` that names the source and the path."""

    def __init__(
        self,
        name: str,
        base_url: str,
        timeout_s: float,
        headers: Mapping[str, str] | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.client = client or httpx.Client(timeout=httpx.Timeout(timeout_s))
        self.timeout = httpx.Timeout(timeout_s)
        self.headers = dict(headers or {})

    def get_json(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        auth: httpx.BasicAuth | None = None,
    ) -> Any:
        url = self.base_url + path
        try:
            response = self.client.get(
                url,
                params=dict(params or {}),
                headers={**self.headers, **(headers or {})},
                auth=auth,
                timeout=self.timeout,
            )
        except httpx.TimeoutException:
            raise SourceUnavailable(
                f"{self.name}: GET {path} timed out after {self.timeout.read:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise SourceUnavailable(f"{self.name}: GET {path} failed: {exc}") from None
        status = response.status_code
        if status == 429 or status >= 500:
            raise SourceUnavailable(f"{self.name}: GET {path} answered HTTP {status}")
        if status in (401, 403):
            raise SourceRejected(
                f"{self.name}: GET {path} answered HTTP {status}: the credentials were "
                "refused; check the token or user name and password",
                status,
            )
        if status >= 400:
            raise SourceRejected(
                f"{self.name}: GET {path} answered HTTP {status}: {response.text[:200]}",
                status,
            )
        try:
            return response.json()
        except ValueError:
            raise SourceDataError(f"{self.name}: GET {path} did not answer JSON") from None


# ---------------------------------------------------------------- parsing helpers


def _field(body: Any, path: str, source: str, within: str = "") -> Any:
    """``body`` followed along ``path`` (``data[0].intensity.forecast``); ``within`` is
    where ``body`` itself sits in the answer, so an error names the whole path."""
    here = body
    walked = within
    for part in path.replace("[", ".[").split("."):
        if not part:
            continue
        walked += part if part.startswith("[") or not walked else "." + part
        if part.startswith("["):
            index = int(part[1:-1])
            if not isinstance(here, list) or len(here) <= index:
                raise SourceDataError(f"{source}: {walked}: missing (expected a non-empty list)")
            here = here[index]
        else:
            if not isinstance(here, Mapping) or part not in here:
                raise SourceDataError(f"{source}: {walked}: missing")
            here = here[part]
    return here


def _number(value: Any, where: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SourceDataError(f"{source}: {where}: expected a number, got {value!r}")
    if value < 0:
        raise SourceDataError(f"{source}: {where}: a negative intensity ({value})")
    return float(value)


def _instant(value: Any, where: str, source: str) -> int:
    """Unix seconds of an ISO 8601 time that carries its offset (all these APIs send UTC;
    a time without an offset would be a guess, so it is an error)."""
    if not isinstance(value, str):
        raise SourceDataError(f"{source}: {where}: expected an ISO 8601 time, got {value!r}")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise SourceDataError(f"{source}: {where}: {value!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise SourceDataError(f"{source}: {where}: {value!r} has no UTC offset")
    return int(moment.timestamp())


def _list(body: Any, where: str, source: str) -> list[Any]:
    if not isinstance(body, list):
        raise SourceDataError(f"{source}: {where}: expected a list, got {type(body).__name__}")
    return body


def _series(
    points: list[tuple[int, float]], now: float, horizon_s: float | None, source: str
) -> IntensitySeries:
    """A series from (time, value) points: sorted, duplicates dropped (the first kept),
    clipped to ``[.., now + horizon_s)``; an empty result is a :class:`SourceDataError`."""
    end = math.inf if horizon_s is None else now + horizon_s
    kept: dict[int, float] = {}
    for at, value in sorted(points, key=lambda p: p[0]):
        if at < end:
            kept.setdefault(at, value)
    if not kept:
        raise SourceDataError(f"{source}: no data points before {_iso(end)}")
    return IntensitySeries.from_arrays(list(kept), list(kept.values()), source)


def _at(series: IntensitySeries, now: float) -> Reading | None:
    """The sample of ``series`` that holds at ``now`` (a step function), if any."""
    if now < series.start_s or now >= series.end_s:
        return None
    i = int(np.searchsorted(series.times, now, side="right")) - 1
    return Reading(int(series.times[i]), float(series.values[i]), series.source)


def _iso(unix_s: float) -> str:
    if math.isinf(unix_s):
        return "the end"
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%MZ")


# ---------------------------------------------------------------- UK Carbon Intensity


class UkCarbonIntensity:
    """National Grid ESO's Carbon Intensity API for Great Britain (no key).

    ``latest`` reads ``GET /intensity`` (the current half hour; ``actual`` when measured,
    else ``forecast``); ``forecast`` reads ``GET /intensity/{from}/fw24h`` (half-hourly
    forecasts for 24 h)."""

    def __init__(
        self,
        base_url: str = "https://api.carbonintensity.org.uk",
        timeout_s: float = 5.0,
        client: httpx.Client | None = None,
    ) -> None:
        self.name = "ukci"
        self._http = _Http(self.name, base_url, timeout_s, {"Accept": "application/json"}, client)

    def latest(self, now: float) -> Reading | None:
        body = self._http.get_json("/intensity")
        where = "data[0]"
        entry = _field(body, where, self.name)
        at = _instant(_field(entry, "from", self.name, where), "data[0].from", self.name)
        intensity = _field(entry, "intensity", self.name, where)
        actual = intensity.get("actual") if isinstance(intensity, Mapping) else None
        key = "actual" if actual is not None else "forecast"
        value = _number(
            _field(entry, f"intensity.{key}", self.name, where),
            f"data[0].intensity.{key}",
            self.name,
        )
        return Reading(at, value, self.name)

    def forecast(self, now: float, horizon_s: float) -> IntensitySeries:
        start = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%MZ")
        body = self._http.get_json(f"/intensity/{start}/fw24h")
        points: list[tuple[int, float]] = []
        for i, entry in enumerate(_list(_field(body, "data", self.name), "data", self.name)):
            where = f"data[{i}]"
            at = _instant(_field(entry, "from", self.name, where), f"{where}.from", self.name)
            value = _field(entry, "intensity.forecast", self.name, where)
            points.append((at, _number(value, f"{where}.intensity.forecast", self.name)))
        return _series(points, now, horizon_s, self.name)


# ---------------------------------------------------------------- Electricity Maps


class ElectricityMaps:
    """Electricity Maps API v3 for one zone (``DE``, ``US-CAL-CISO``), authenticated by the
    ``auth-token`` header. ``latest`` reads ``/v3/carbon-intensity/latest``, ``history``
    the past 24 h (``/history``), ``forecast`` ``/forecast``; values are
    ``carbonIntensity`` in gCO2eq/kWh at ``datetime``."""

    def __init__(
        self,
        zone: str,
        token: str,
        base_url: str = "https://api.electricitymap.org",
        *,
        timeout_s: float = 5.0,
        client: httpx.Client | None = None,
    ) -> None:
        self.name = f"electricitymaps:{zone}"
        self.zone = zone
        self._http = _Http(self.name, base_url, timeout_s, {"auth-token": token}, client)

    def _points(self, body: Any, key: str) -> list[tuple[int, float]]:
        points = []
        for i, entry in enumerate(_list(_field(body, key, self.name), key, self.name)):
            where = f"{key}[{i}]"
            at = _instant(
                _field(entry, "datetime", self.name, where), f"{where}.datetime", self.name
            )
            value = _field(entry, "carbonIntensity", self.name, where)
            points.append((at, _number(value, f"{where}.carbonIntensity", self.name)))
        return points

    def latest(self, now: float) -> Reading | None:
        body = self._http.get_json("/v3/carbon-intensity/latest", {"zone": self.zone})
        at = _instant(_field(body, "datetime", self.name), "datetime", self.name)
        value = _number(_field(body, "carbonIntensity", self.name), "carbonIntensity", self.name)
        return Reading(at, value, self.name)

    def history(self, now: float) -> IntensitySeries:
        """The past 24 hours, hourly."""
        body = self._http.get_json("/v3/carbon-intensity/history", {"zone": self.zone})
        return _series(self._points(body, "history"), now, None, self.name)

    def forecast(self, now: float, horizon_s: float) -> IntensitySeries:
        body = self._http.get_json("/v3/carbon-intensity/forecast", {"zone": self.zone})
        return _series(self._points(body, "forecast"), now, horizon_s, self.name)


# ---------------------------------------------------------------- WattTime


class WattTime:
    """WattTime API v3 for one region (``CAISO_NORTH``): the marginal operating emissions
    rate (MOER, signal ``co2_moer``), converted from lbs/MWh to g/kWh.

    A bearer token comes from ``GET /login`` with basic auth and is fetched again once
    when a call answers 401 (tokens expire after 30 minutes). ``latest`` is the forecast
    point holding at ``now`` (the first point of a fresh forecast is the current MOER);
    ``signal_index`` is WattTime's 0–100 percentile, not an intensity."""

    def __init__(
        self,
        region: str,
        username: str,
        password: str,
        *,
        base_url: str = "https://api.watttime.org",
        timeout_s: float = 5.0,
        client: httpx.Client | None = None,
    ) -> None:
        self.name = f"watttime:{region}"
        self.region = region
        self._auth = httpx.BasicAuth(username, password)
        self._http = _Http(self.name, base_url, timeout_s, None, client)
        self._token: str | None = None

    def _login(self) -> str:
        body = self._http.get_json("/login", auth=self._auth)
        token = _field(body, "token", self.name)
        if not isinstance(token, str) or not token:
            raise SourceDataError(f"{self.name}: token: expected a string, got {token!r}")
        self._token = token
        return token

    def _get(self, path: str) -> Any:
        params = {"region": self.region, "signal_type": "co2_moer"}
        for attempt in range(2):
            token = self._token or self._login()
            try:
                return self._http.get_json(path, params, {"Authorization": f"Bearer {token}"})
            except SourceRejected as exc:
                # An expired token answers 401: log in again once, then give up.
                if exc.status != 401 or attempt == 1:
                    raise
                self._token = None
        raise AssertionError("unreachable")

    def forecast(self, now: float, horizon_s: float) -> IntensitySeries:
        body = self._get("/v3/forecast")
        units = _field(body, "meta.units", self.name)
        if units != "lbs_co2_per_mwh":
            raise SourceDataError(
                f"{self.name}: meta.units: expected 'lbs_co2_per_mwh', got {units!r}"
            )
        points = []
        for i, entry in enumerate(_list(_field(body, "data", self.name), "data", self.name)):
            where = f"data[{i}]"
            at = _instant(
                _field(entry, "point_time", self.name, where), f"{where}.point_time", self.name
            )
            moer = _number(_field(entry, "value", self.name, where), f"{where}.value", self.name)
            points.append((at, moer * LBS_PER_MWH_TO_G_PER_KWH))
        return _series(points, now, horizon_s, self.name)

    def latest(self, now: float) -> Reading | None:
        return _at(self.forecast(now, 3600.0), now)

    def signal_index(self, now: float) -> float:
        """The current MOER as a percentile (0 cleanest … 100 dirtiest) of the next day."""
        body = self._get("/v3/signal-index")
        value = _number(_field(body, "data[0].value", self.name), "data[0].value", self.name)
        if value > 100:
            raise SourceDataError(f"{self.name}: data[0].value: {value} is not a percentile")
        return value


# ---------------------------------------------------------------- Carbon Aware SDK


class CarbonAwareSdk:
    """The Green Software Foundation Carbon Aware SDK's WebAPI, which fronts WattTime or
    Electricity Maps behind its own location names (``eastus``). ``latest`` reads
    ``/emissions/bylocation`` (the most recent ``rating`` at or before ``now``, already in
    g/kWh); ``forecast`` reads ``/emissions/forecasts/current`` (``forecastData``)."""

    def __init__(
        self,
        location: str,
        base_url: str = "http://localhost:8080",
        timeout_s: float = 5.0,
        *,
        client: httpx.Client | None = None,
    ) -> None:
        self.name = f"carbon-aware-sdk:{location}"
        self.location = location
        self._http = _Http(self.name, base_url, timeout_s, None, client)

    def latest(self, now: float) -> Reading | None:
        body = self._http.get_json("/emissions/bylocation", {"location": self.location})
        best: Reading | None = None
        for i, entry in enumerate(_list(body, "(top level)", self.name)):
            where = f"[{i}]"
            at = _instant(_field(entry, "time", self.name, where), f"[{i}].time", self.name)
            rating = _number(_field(entry, "rating", self.name, where), f"[{i}].rating", self.name)
            if at <= now and (best is None or at > best.at_s):
                best = Reading(at, rating, self.name)
        return best

    def forecast(self, now: float, horizon_s: float) -> IntensitySeries:
        body = self._http.get_json("/emissions/forecasts/current", {"location": self.location})
        data = _field(body, "[0].forecastData", self.name)
        points = []
        for i, entry in enumerate(_list(data, "[0].forecastData", self.name)):
            where = f"[0].forecastData[{i}]"
            at = _instant(
                _field(entry, "timestamp", self.name, where), f"{where}.timestamp", self.name
            )
            value = _number(_field(entry, "value", self.name, where), f"{where}.value", self.name)
            points.append((at, value))
        return _series(points, now, horizon_s, self.name)


# ---------------------------------------------------------------- CSV


class CsvIntensity:
    """A carbon-intensity CSV (see
    :func:`placement.carbon.intensity_csv.parse_intensity_csv` for the columns, time zone
    and unit). The file is read again when its modification time changes, so a job that
    rewrites it keeps the source current. ``latest`` is the value holding at ``now``;
    ``None`` outside the file's span."""

    def __init__(
        self,
        path: Path | str,
        time_column: str | None = None,
        value_column: str | None = None,
        *,
        tz: str = "UTC",
        unit: str | Unit = Unit.g_per_kwh,
    ) -> None:
        self.path = Path(path)
        self.name = f"csv:{self.path}"
        self._columns = (time_column, value_column)
        self._tz, self._unit = tz, unit
        self._cached: tuple[float, IntensitySeries] | None = None

    def series(self) -> IntensitySeries:
        try:
            mtime = os.stat(self.path).st_mtime
        except OSError as exc:
            raise SourceUnavailable(f"{self.name}: cannot read the file: {exc.strerror}") from None
        if self._cached is None or self._cached[0] != mtime:
            try:
                series = read_intensity_csv(self.path, *self._columns, tz=self._tz, unit=self._unit)
            except ValueError as exc:
                raise SourceDataError(f"{self.name}: {exc}") from None
            self._cached = (mtime, series)
        return self._cached[1]

    def latest(self, now: float) -> Reading | None:
        reading = _at(self.series(), now)
        return None if reading is None else Reading(reading.at_s, reading.g_per_kwh, self.name)

    def forecast(self, now: float, horizon_s: float) -> IntensitySeries:
        series = self.series()
        i = max(int(np.searchsorted(series.times, now, side="right")) - 1, 0)
        points = [
            (int(t), float(v)) for t, v in zip(series.times[i:], series.values[i:], strict=True)
        ]
        return _series(points, now, horizon_s, self.name)


# ---------------------------------------------------------------- resilience


class Status(StrEnum):
    LIVE = "live"  # fetched now
    LAST_GOOD = "last-good"  # the fetch failed; an earlier value within the staleness limit
    FALLBACK = "fallback"  # nothing usable: apply the configured fallback cap


@dataclass(frozen=True)
class IntensityStatus:
    """What :meth:`Resilient.latest` found. ``reading`` is set unless ``status`` is
    fallback; ``error`` says why the source failed (also when a last good value is
    served); ``fallback_cap_fraction`` is the cap to apply when ``status`` is fallback."""

    status: Status
    reading: Reading | None
    age_s: float | None
    error: str | None
    fallback_cap_fraction: float
    attempts: int


@dataclass(frozen=True)
class ForecastStatus:
    """What :meth:`Resilient.forecast` found; ``series`` is ``None`` only on fallback."""

    status: Status
    series: IntensitySeries | None
    age_s: float | None
    error: str | None
    fallback_cap_fraction: float
    attempts: int


class Resilient:
    """Retries, the last good value, and an explicit fallback around one source.

    Each call makes up to ``1 + retries`` attempts; after a retryable failure (timeout,
    5xx, 429) it waits ``backoff_s · 2^k`` before attempt ``k + 1``. A rejected request
    (4xx) or malformed answer is not retried. A reading is usable while its age — ``now``
    minus the time it refers to — is at most ``staleness_s``, so set the limit above the
    source's own period (30 min for GB, an hour for Electricity Maps). A forecast is
    usable while its fetch is at most ``staleness_s`` old. Timeouts are the source's own
    (each HTTP source takes ``timeout_s``). ``clock`` and ``sleep`` are injectable."""

    def __init__(
        self,
        source: IntensitySource,
        *,
        retries: int = 2,
        backoff_s: float = 1.0,
        staleness_s: float = 3600.0,
        fallback_cap_fraction: float = 1.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if retries < 0 or backoff_s < 0 or staleness_s <= 0:
            raise ValueError("retries and backoff must be >= 0 and staleness > 0")
        if not 0 < fallback_cap_fraction <= 1:
            raise ValueError("the fallback cap fraction must be in (0, 1]")
        self.source = source
        self.retries = retries
        self.backoff_s = backoff_s
        self.staleness_s = staleness_s
        self.fallback_cap_fraction = fallback_cap_fraction
        self._clock = clock
        self._sleep = sleep
        self._last: Reading | None = None
        self._last_forecast: tuple[float, IntensitySeries] | None = None

    def _attempt(self, call: Callable[[], _T]) -> tuple[_T | None, str | None, int]:
        error: str | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                return call(), None, attempt + 1
            except SourceError as exc:
                error = str(exc)
                if not exc.retryable:
                    return None, error, attempt + 1
        return None, error, self.retries + 1

    def latest(self) -> IntensityStatus:
        """The intensity now: live, the last good value, or fallback — never a guess."""
        now = self._clock()
        reading, error, attempts = self._attempt(lambda: self.source.latest(now))
        if reading is None and error is None:
            error = f"{self.source.name}: no value for {_iso(now)}"
        if reading is not None:
            age = now - reading.at_s
            if age <= self.staleness_s:
                if self._last is None or reading.at_s >= self._last.at_s:
                    self._last = reading
                return IntensityStatus(
                    Status.LIVE, reading, age, None, self.fallback_cap_fraction, attempts
                )
            error = (
                f"{self.source.name}: the latest value is from {_iso(reading.at_s)}, "
                f"older than the staleness limit of {self.staleness_s:g} s"
            )
        if self._last is not None:
            age = now - self._last.at_s
            if age <= self.staleness_s:
                return IntensityStatus(
                    Status.LAST_GOOD, self._last, age, error, self.fallback_cap_fraction, attempts
                )
        return IntensityStatus(
            Status.FALLBACK, None, None, error, self.fallback_cap_fraction, attempts
        )

    def forecast(self, horizon_s: float) -> ForecastStatus:
        """A forecast from now: fetched, the last good one, or fallback."""
        now = self._clock()
        series, error, attempts = self._attempt(lambda: self.source.forecast(now, horizon_s))
        if series is not None:
            self._last_forecast = (now, series)
            return ForecastStatus(
                Status.LIVE, series, 0.0, None, self.fallback_cap_fraction, attempts
            )
        if self._last_forecast is not None:
            fetched, last = self._last_forecast
            if now - fetched <= self.staleness_s:
                return ForecastStatus(
                    Status.LAST_GOOD,
                    last,
                    now - fetched,
                    error,
                    self.fallback_cap_fraction,
                    attempts,
                )
        return ForecastStatus(
            Status.FALLBACK, None, None, error, self.fallback_cap_fraction, attempts
        )


# ---------------------------------------------------------------- from the config


def build_source(
    settings: IntensitySettings,
    env: Mapping[str, str] | None = None,
    where: str = "intensity",
    *,
    client: httpx.Client | None = None,
) -> Resilient:
    """The source an ``intensity:`` section describes, wrapped in :class:`Resilient`.

    Secrets are read here from the environment variables the section names (``env``,
    ``os.environ`` by default); a variable that is unset or empty raises
    :class:`~placement.validation.ProblemsError` naming the config field, never the value
    written in it (a secret pasted in where its variable's name belongs would be shown)."""
    variables = os.environ if env is None else env
    problems: list[str] = []

    def secret(name: str | None, alias: str) -> str:
        value = variables.get(name or "", "")
        if not value:
            # The name is not repeated: a secret pasted in as the name would be shown.
            problems.append(
                f"{where}.{alias}: the environment variable it names is not set or empty; "
                f"{alias} {ENV_NAME_HINT}"
            )
        return value

    source: IntensitySource
    url = settings.url or ""
    timeout = settings.timeout_s
    if settings.kind == "electricitymaps":
        token = secret(settings.token_env, "tokenEnv")
        source = ElectricityMaps(settings.zone or "", token, url, timeout_s=timeout, client=client)
    elif settings.kind == "watttime":
        user = secret(settings.username_env, "usernameEnv")
        password = secret(settings.password_env, "passwordEnv")
        source = WattTime(
            settings.region or "", user, password, base_url=url, timeout_s=timeout, client=client
        )
    elif settings.kind == "ukci":
        source = UkCarbonIntensity(url, timeout, client)
    elif settings.kind == "carbon-aware-sdk":
        source = CarbonAwareSdk(settings.location or "", url, timeout, client=client)
    else:
        source = CsvIntensity(
            settings.path or "",
            settings.time_column,
            settings.value_column,
            tz=settings.timezone,
            unit=settings.unit,
        )
    if problems:
        raise ProblemsError(problems, "config")
    return Resilient(
        source,
        retries=settings.retries,
        backoff_s=settings.backoff_s,
        staleness_s=settings.staleness_s,
        fallback_cap_fraction=settings.fallback_cap_fraction,
    )
