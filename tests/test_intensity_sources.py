"""Carbon-intensity sources against a local HTTP fake serving the documented response
shapes (tests/fixtures/intensity/): success, retries, refused credentials, timeouts, unit
conversion, staleness and fallback, malformed answers — and the config section."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from pydantic import ValidationError

from extender.carbon.sources import (
    LBS_PER_MWH_TO_G_PER_KWH,
    CarbonAwareSdk,
    CsvIntensity,
    ElectricityMaps,
    IntensitySource,
    Resilient,
    SourceDataError,
    SourceRejected,
    SourceUnavailable,
    Status,
    UkCarbonIntensity,
    WattTime,
    build_source,
)
from extender.config.intensity import (
    IntensitySettings,
    IntensitySourceSpec,
    resolve_intensity_source,
)
from placement.carbon.intensity import Unit
from placement.validation import ProblemsError, validation_problems

FIXTURES = Path(__file__).parent / "fixtures" / "intensity"


def utc(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


NOW = utc("2026-03-02T12:10:00")


@dataclass
class Reply:
    """One answer of the fake: a fixture file name or a literal body."""

    status: int = 200
    fixture: str | None = None
    body: str = ""
    delay_s: float = 0.0

    def payload(self) -> bytes:
        if self.fixture is not None:
            return (FIXTURES / self.fixture).read_bytes()
        return self.body.encode()


@dataclass
class Seen:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


@dataclass
class Fake:
    """Routes by path (without the query): each route answers its replies in order and
    repeats the last one. Unknown paths answer 404."""

    url: str = ""
    routes: dict[str, list[Reply]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def route(self, path: str, *replies: Reply) -> None:
        self.routes[path] = list(replies)

    def next(self, path: str) -> Reply:
        with self.lock:
            replies = self.routes.get(path)
            if not replies:
                return Reply(404, body='{"error": "not found"}')
            return replies.pop(0) if len(replies) > 1 else replies[0]

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]


@pytest.fixture
def fake() -> Iterator[Fake]:
    state = Fake()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parsed = urlparse(self.path)
            with state.lock:
                state.seen.append(
                    Seen(
                        parsed.path,
                        parse_qs(parsed.query),
                        {k.lower(): v for k, v in self.headers.items()},
                    )
                )
            reply = state.next(parsed.path)
            if reply.delay_s:
                time.sleep(reply.delay_s)
            payload = reply.payload()
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


# ---------------------------------------------------------------- UK Carbon Intensity


def test_ukci_latest_prefers_actual(fake: Fake) -> None:
    fake.route("/intensity", Reply(fixture="ukci_intensity.json"))
    reading = UkCarbonIntensity(fake.url).latest(NOW)
    assert reading is not None
    assert reading.g_per_kwh == 176.0
    assert reading.at_s == utc("2026-03-02T12:00:00")


def test_ukci_latest_falls_back_to_forecast_when_actual_is_null(fake: Fake) -> None:
    body = (
        '{"data": [{"from": "2026-03-02T12:00Z", "to": "2026-03-02T12:30Z", '
        '"intensity": {"forecast": 190, "actual": null, "index": "moderate"}}]}'
    )
    fake.route("/intensity", Reply(body=body))
    reading = UkCarbonIntensity(fake.url).latest(NOW)
    assert reading is not None and reading.g_per_kwh == 190.0


def test_ukci_forecast_asks_from_now_and_clips_to_the_horizon(fake: Fake) -> None:
    fake.route("/intensity/2026-03-02T12:10Z/fw24h", Reply(fixture="ukci_fw24h.json"))
    series = UkCarbonIntensity(fake.url).forecast(NOW, 3600)
    # 12:00, 12:30 and 13:00 start before 13:10; 13:30 does not.
    assert series.values.tolist() == [182.0, 170.0, 151.0]
    assert series.times.tolist() == [
        utc("2026-03-02T12:00:00"),
        utc("2026-03-02T12:30:00"),
        utc("2026-03-02T13:00:00"),
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"data": []}', "ukci: data[0]: missing"),
        (
            '{"data": [{"from": "2026-03-02T12:00Z", "intensity": {"forecast": "high"}}]}',
            "ukci: data[0].intensity.forecast: expected a number, got 'high'",
        ),
        (
            '{"data": [{"from": "noon", "intensity": {"forecast": 100}}]}',
            "ukci: data[0].from: 'noon' is not an ISO 8601 time",
        ),
        (
            '{"data": [{"from": "2026-03-02T12:00", "intensity": {"forecast": 100}}]}',
            "has no UTC offset",
        ),
        ('{"data": [{"from": "2026-03-02T12:00Z"}]}', "ukci: data[0].intensity: missing"),
        ("<html>bad gateway</html>", "ukci: GET /intensity did not answer JSON"),
    ],
)
def test_malformed_answers_name_the_source_and_field(fake: Fake, body: str, message: str) -> None:
    fake.route("/intensity", Reply(body=body))
    with pytest.raises(SourceDataError) as err:
        UkCarbonIntensity(fake.url).latest(NOW)
    assert message in str(err.value)


# ---------------------------------------------------------------- Electricity Maps


def test_electricitymaps_sends_the_token_and_reads_all_three_endpoints(fake: Fake) -> None:
    fake.route("/v3/carbon-intensity/latest", Reply(fixture="electricitymaps_latest.json"))
    fake.route("/v3/carbon-intensity/history", Reply(fixture="electricitymaps_history.json"))
    fake.route("/v3/carbon-intensity/forecast", Reply(fixture="electricitymaps_forecast.json"))
    source = ElectricityMaps("DE", "secret-token", fake.url)

    reading = source.latest(NOW)
    assert reading is not None
    assert (reading.at_s, reading.g_per_kwh) == (utc("2026-03-02T12:00:00"), 412.0)
    assert source.history(NOW).values.tolist() == [398.0, 405.0, 412.0]
    assert source.forecast(NOW, 2 * 3600).values.tolist() == [412.0, 380.0, 355.0]

    assert all(s.headers["auth-token"] == "secret-token" for s in fake.seen)
    assert all(s.query["zone"] == ["DE"] for s in fake.seen)


def test_refused_credentials_are_not_retried_and_say_so(fake: Fake) -> None:
    fake.route("/v3/carbon-intensity/latest", Reply(401, body='{"message": "unauthorized"}'))
    clock = Clock(NOW)
    source = ElectricityMaps("DE", "wrong", fake.url)
    with pytest.raises(SourceRejected, match="credentials were refused"):
        source.latest(NOW)

    resilient = Resilient(source, retries=3, clock=clock, sleep=clock.sleep)
    status = resilient.latest()
    assert status.status is Status.FALLBACK
    assert status.attempts == 1
    assert clock.sleeps == []
    assert status.error is not None and "HTTP 401" in status.error


# ---------------------------------------------------------------- WattTime


def test_watttime_logs_in_and_converts_lbs_per_mwh(fake: Fake) -> None:
    fake.route("/login", Reply(fixture="watttime_login.json"))
    fake.route("/v3/forecast", Reply(fixture="watttime_forecast.json"))
    fake.route("/v3/signal-index", Reply(fixture="watttime_signal_index.json"))
    source = WattTime("CAISO_NORTH", "user", "pass", base_url=fake.url)

    series = source.forecast(NOW, 3600)
    assert series.values.tolist() == pytest.approx([453.59237, 408.233133, 362.873896, 317.514659])
    reading = source.latest(NOW)  # 12:10 → the 12:10 point, 800 lbs/MWh
    assert reading is not None
    assert reading.g_per_kwh == pytest.approx(800 * LBS_PER_MWH_TO_G_PER_KWH)
    assert reading.g_per_kwh == pytest.approx(362.873896)
    assert source.signal_index(NOW) == 73.0

    login = fake.seen[0]
    assert login.path == "/login"
    assert login.headers["authorization"].startswith("Basic ")
    # One login serves the later calls.
    assert fake.paths().count("/login") == 1
    data_calls = [s for s in fake.seen if s.path.startswith("/v3/")]
    assert all(s.headers["authorization"] == "Bearer fake-bearer-token-1" for s in data_calls)
    assert all(s.query["signal_type"] == ["co2_moer"] for s in data_calls)
    assert all(s.query["region"] == ["CAISO_NORTH"] for s in data_calls)


def test_watttime_logs_in_again_when_the_token_expired(fake: Fake) -> None:
    fake.route("/login", Reply(fixture="watttime_login.json"))
    fake.route(
        "/v3/forecast",
        Reply(fixture="watttime_forecast.json"),
        Reply(401, body="{}"),
        Reply(fixture="watttime_forecast.json"),
    )
    source = WattTime("CAISO_NORTH", "user", "pass", base_url=fake.url)
    source.forecast(NOW, 3600)
    source.forecast(NOW, 3600)
    assert fake.paths() == ["/login", "/v3/forecast", "/v3/forecast", "/login", "/v3/forecast"]


def test_watttime_refused_login_is_a_clear_error(fake: Fake) -> None:
    fake.route("/login", Reply(403, body='{"error": "bad"}'))
    with pytest.raises(SourceRejected, match=r"watttime:CAISO_NORTH: GET /login answered HTTP 403"):
        WattTime("CAISO_NORTH", "user", "wrong", base_url=fake.url).forecast(NOW, 3600)


def test_watttime_rejects_units_it_cannot_convert(fake: Fake) -> None:
    body = (
        (FIXTURES / "watttime_forecast.json")
        .read_text()
        .replace("lbs_co2_per_mwh", "kg_co2_per_mwh")
    )
    fake.route("/login", Reply(fixture="watttime_login.json"))
    fake.route("/v3/forecast", Reply(body=body))
    with pytest.raises(SourceDataError, match=r"meta\.units: expected 'lbs_co2_per_mwh'"):
        WattTime("CAISO_NORTH", "user", "pass", base_url=fake.url).forecast(NOW, 3600)


# ---------------------------------------------------------------- Carbon Aware SDK


def test_carbon_aware_sdk_latest_and_forecast(fake: Fake) -> None:
    fake.route("/emissions/bylocation", Reply(fixture="carbon_aware_bylocation.json"))
    fake.route("/emissions/forecasts/current", Reply(fixture="carbon_aware_forecast.json"))
    source = CarbonAwareSdk("eastus", fake.url)
    reading = source.latest(NOW)
    assert reading is not None
    assert (reading.at_s, reading.g_per_kwh) == (utc("2026-03-02T11:55:00"), 398.25)
    assert source.forecast(NOW, 900).values.tolist() == [390.0, 371.5, 350.0]
    assert all(s.query["location"] == ["eastus"] for s in fake.seen)


def test_carbon_aware_sdk_names_a_bad_rating(fake: Fake) -> None:
    fake.route("/emissions/bylocation", Reply(body='[{"time": "2026-03-02T11:55:00Z"}]'))
    with pytest.raises(SourceDataError, match=r"carbon-aware-sdk:eastus: \[0\]\.rating: missing"):
        CarbonAwareSdk("eastus", fake.url).latest(NOW)


# ---------------------------------------------------------------- CSV


def test_csv_latest_is_the_value_at_now_in_g_per_kwh(tmp_path: Path) -> None:
    path = tmp_path / "ci.csv"
    # Wall-clock London times (GMT in March), kg/MWh = g/kWh.
    path.write_text("when,region,ci\n2026-03-02 12:00,GB,200\n2026-03-02 12:30,GB,150\n")
    source = CsvIntensity(path, "when", "ci", tz="Europe/London", unit="kg/MWh")
    reading = source.latest(NOW)
    assert reading is not None and (reading.at_s, reading.g_per_kwh) == (
        utc("2026-03-02T12:00:00"),
        200.0,
    )
    assert source.latest(utc("2026-03-02T13:00:00")) is None  # past the file's span
    assert source.forecast(NOW, 3600).values.tolist() == [200.0, 150.0]

    path.write_text("when,region,ci\n2026-03-02 12:00,GB,bad\n")
    with pytest.raises(SourceDataError, match="column 'ci'"):
        source.latest(NOW + 1)  # a rewritten file is read again


def test_csv_converts_lbs_per_mwh(tmp_path: Path) -> None:
    path = tmp_path / "moer.csv"
    path.write_text("time,moer\n2026-03-02T12:00:00Z,1000\n2026-03-02T13:00:00Z,500\n")
    reading = CsvIntensity(path, unit="lbs/MWh").latest(NOW)
    assert reading is not None and reading.g_per_kwh == pytest.approx(453.59237)


def test_csv_outside_its_span_falls_back(tmp_path: Path) -> None:
    path = tmp_path / "ci.csv"
    path.write_text("time,ci\n2020-01-01T00:00Z,100\n2020-01-01T01:00Z,120\n")
    clock = Clock(NOW)
    status = Resilient(
        CsvIntensity(path), fallback_cap_fraction=0.7, clock=clock, sleep=clock.sleep
    ).latest()
    assert status.status is Status.FALLBACK
    assert status.fallback_cap_fraction == 0.7
    assert status.error is not None and "no value for 2026-03-02T12:10Z" in status.error


# ---------------------------------------------------------------- retries, timeouts


def test_5xx_is_retried_with_exponential_backoff(fake: Fake) -> None:
    fake.route(
        "/intensity",
        Reply(503, body="{}"),
        Reply(500, body="{}"),
        Reply(fixture="ukci_intensity.json"),
    )
    clock = Clock(NOW)
    resilient = Resilient(
        UkCarbonIntensity(fake.url), retries=3, backoff_s=0.5, clock=clock, sleep=clock.sleep
    )
    status = resilient.latest()
    assert status.status is Status.LIVE
    assert status.reading is not None and status.reading.g_per_kwh == 176.0
    assert status.attempts == 3
    assert clock.sleeps == [0.5, 1.0]


def test_retries_run_out_into_fallback(fake: Fake) -> None:
    fake.route("/intensity", Reply(502, body="{}"))
    clock = Clock(NOW)
    resilient = Resilient(
        UkCarbonIntensity(fake.url),
        retries=2,
        backoff_s=1.0,
        fallback_cap_fraction=0.5,
        clock=clock,
        sleep=clock.sleep,
    )
    status = resilient.latest()
    assert (status.status, status.reading, status.attempts) == (Status.FALLBACK, None, 3)
    assert status.fallback_cap_fraction == 0.5
    assert status.error == "ukci: GET /intensity answered HTTP 502"
    assert clock.sleeps == [1.0, 2.0]
    assert fake.paths() == ["/intensity"] * 3


def test_a_slow_server_times_out(fake: Fake) -> None:
    fake.route("/intensity", Reply(fixture="ukci_intensity.json", delay_s=2.0))
    source = UkCarbonIntensity(fake.url, timeout_s=0.2)
    # The server would answer after 2 s; a client without a real timeout would get it.
    with pytest.raises(SourceUnavailable, match=r"ukci: GET /intensity timed out after 0\.2 s"):
        source.latest(NOW)


def test_timeouts_are_retried(fake: Fake) -> None:
    fake.route(
        "/emissions/bylocation",
        Reply(fixture="carbon_aware_bylocation.json", delay_s=1.0),
        Reply(fixture="carbon_aware_bylocation.json"),
    )
    clock = Clock(NOW)
    resilient = Resilient(
        CarbonAwareSdk("eastus", fake.url, timeout_s=0.2), clock=clock, sleep=clock.sleep
    )
    status = resilient.latest()
    assert status.status is Status.LIVE and status.attempts == 2


# ---------------------------------------------------------------- staleness


def test_last_good_value_is_served_until_the_staleness_limit(fake: Fake) -> None:
    fake.route("/intensity", Reply(fixture="ukci_intensity.json"), Reply(503, body="{}"))
    clock = Clock(NOW)  # the reading is for 12:00, 10 minutes old
    resilient = Resilient(
        UkCarbonIntensity(fake.url),
        retries=1,
        staleness_s=1800,
        fallback_cap_fraction=0.6,
        clock=clock,
        sleep=clock.sleep,
    )
    live = resilient.latest()
    assert live.status is Status.LIVE and live.age_s == 600

    clock.now = utc("2026-03-02T12:25:00")
    last = resilient.latest()
    assert last.status is Status.LAST_GOOD
    assert last.reading == live.reading and last.age_s == 1500
    assert last.error == "ukci: GET /intensity answered HTTP 503"

    clock.now = utc("2026-03-02T12:30:01")  # 1801 s after 12:00
    gone = resilient.latest()
    assert gone.status is Status.FALLBACK and gone.reading is None
    assert gone.fallback_cap_fraction == 0.6
    assert gone.error == "ukci: GET /intensity answered HTTP 503"


def test_a_fresh_fetch_of_an_old_value_is_not_live(fake: Fake) -> None:
    fake.route("/intensity", Reply(fixture="ukci_intensity.json"))
    clock = Clock(utc("2026-03-02T14:00:00"))  # the answer is still for 12:00
    status = Resilient(
        UkCarbonIntensity(fake.url), staleness_s=3600, clock=clock, sleep=clock.sleep
    ).latest()
    assert status.status is Status.FALLBACK
    assert status.error is not None and "older than the staleness limit" in status.error


def test_forecast_last_good_then_fallback(fake: Fake) -> None:
    fake.route(
        "/v3/carbon-intensity/forecast",
        Reply(fixture="electricitymaps_forecast.json"),
        Reply(500, body="{}"),
    )
    clock = Clock(NOW)
    resilient = Resilient(
        ElectricityMaps("DE", "t", fake.url),
        retries=0,
        staleness_s=3600,
        clock=clock,
        sleep=clock.sleep,
    )
    first = resilient.forecast(6 * 3600)
    assert first.status is Status.LIVE and first.series is not None

    clock.now = NOW + 1800
    second = resilient.forecast(6 * 3600)
    assert second.status is Status.LAST_GOOD and second.series is first.series
    assert second.age_s == 1800

    clock.now = NOW + 3601
    third = resilient.forecast(6 * 3600)
    assert third.status is Status.FALLBACK and third.series is None
    assert third.error == "electricitymaps:DE: GET /v3/carbon-intensity/forecast answered HTTP 500"


def test_resilient_rejects_nonsense_settings() -> None:
    source = CarbonAwareSdk("eastus", "http://127.0.0.1:9")
    with pytest.raises(ValueError):
        Resilient(source, fallback_cap_fraction=0.0)
    with pytest.raises(ValueError):
        Resilient(source, staleness_s=0)


# ---------------------------------------------------------------- the config section


def resolve(section: dict[str, object]) -> tuple[IntensitySettings | None, list[str]]:
    try:
        spec = IntensitySourceSpec.model_validate(section)
    except ValidationError as err:
        return None, validation_problems(err, "docs/carbon.md", prefix="intensity")
    return resolve_intensity_source(spec)


def test_config_electricitymaps_defaults() -> None:
    settings, problems = resolve(
        {
            "kind": "electricitymaps",
            "zone": "DE",
            "tokenEnv": "EM_TOKEN",
            "fallbackCapFraction": 0.8,
            "staleness": "90m",
        }
    )
    assert problems == []
    assert settings is not None
    assert settings.url == "https://api.electricitymap.org"
    assert (settings.staleness_s, settings.timeout_s, settings.retries) == (5400, 5, 2)


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            {"kind": "electricitymaps", "fallbackCapFraction": 0.8},
            [
                "intensity.zone: kind electricitymaps needs zone",
                "intensity.tokenEnv: kind electricitymaps needs tokenEnv",
            ],
        ),
        (
            {"kind": "ukci", "zone": "GB", "fallbackCapFraction": 0.8},
            ["intensity.zone: kind ukci does not use zone; remove it"],
        ),
        (
            {"kind": "carbon-aware-sdk", "location": "eastus", "fallbackCapFraction": 0.8},
            ["intensity.url: kind carbon-aware-sdk needs the URL of its WebAPI deployment"],
        ),
        (
            {
                "kind": "csv",
                "path": "ci.csv",
                "unit": "t/GWh",
                "timezone": "Mars/Olympus",
                "fallbackCapFraction": 0.8,
            },
            ["intensity.unit: unknown intensity unit", "intensity.timezone: unknown time zone"],
        ),
        (
            {"kind": "ukci", "timeout": "soon", "fallbackCapFraction": 0.8},
            ["intensity.timeout: expected a duration"],
        ),
        ({"kind": "ukci"}, ["intensity.fallbackCapFraction: required field is missing"]),
        (
            {"kind": "ukci", "fallbackCapFraction": 1.5},
            ["intensity.fallbackCapFraction: Input should be less than or equal to 1"],
        ),
        (
            {
                "kind": "electricitymaps",
                "zone": "DE",
                "tokenEnv": "sk-live 9f8e7d",
                "fallbackCapFraction": 0.8,
            },
            ["intensity.tokenEnv: Value error, expected the name of an environment variable"],
        ),
        (
            {"kind": "electricitymaps", "zone": "DE", "token": "abc", "fallbackCapFraction": 0.8},
            ["intensity.token: unknown field"],
        ),
        ({"kind": "gridstatus", "fallbackCapFraction": 0.8}, ["intensity.kind: Input should be"]),
    ],
)
def test_config_problems_are_named_by_path(section: dict[str, object], expected: list[str]) -> None:
    settings, problems = resolve(section)
    assert settings is None
    assert len(problems) == len(expected), problems
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(start), problem


def test_build_source_reads_secrets_from_the_environment(fake: Fake) -> None:
    fake.route("/v3/carbon-intensity/latest", Reply(fixture="electricitymaps_latest.json"))
    settings, _ = resolve(
        {
            "kind": "electricitymaps",
            "url": fake.url,
            "allowInsecureHttp": True,  # the fake serves plain http
            "zone": "DE",
            "tokenEnv": "EM_TOKEN",
            "fallbackCapFraction": 0.8,
            "retries": 0,
        }
    )
    assert settings is not None
    resilient = build_source(settings, env={"EM_TOKEN": "from-env"})
    assert resilient.fallback_cap_fraction == 0.8 and resilient.retries == 0
    assert resilient.source.latest(NOW) is not None
    assert fake.seen[0].headers["auth-token"] == "from-env"

    with pytest.raises(
        ProblemsError, match=r"intensity\.tokenEnv: the environment variable it names is not set"
    ):
        build_source(settings, env={})


# Alphanumeric, so it passes for a variable name: only its absence from the environment
# shows that it is not one.
PASTED_TOKEN = "a8Fk29xQzT0k3nWb7Lr1"


@pytest.mark.parametrize(
    ("section", "fields"),
    [
        ({"kind": "electricitymaps", "zone": "DE", "tokenEnv": PASTED_TOKEN}, ["tokenEnv"]),
        (
            {
                "kind": "watttime",
                "region": "CAISO_NORTH",
                "usernameEnv": PASTED_TOKEN,
                "passwordEnv": PASTED_TOKEN + "x",
            },
            ["usernameEnv", "passwordEnv"],
        ),
    ],
)
def test_a_secret_pasted_where_its_variable_name_belongs_is_never_echoed(
    section: dict[str, object], fields: list[str]
) -> None:
    settings, problems = resolve({**section, "fallbackCapFraction": 0.8})
    assert problems == [] and settings is not None
    with pytest.raises(ProblemsError) as err:
        build_source(settings, env={})
    assert len(err.value.problems) == len(fields)
    for problem, name in zip(err.value.problems, fields, strict=True):
        assert problem.startswith(f"intensity.{name}: "), problem
        assert "NAME of an environment variable" in problem, problem
    assert PASTED_TOKEN not in str(err.value)
    assert PASTED_TOKEN not in " ".join(err.value.problems)


def test_a_secret_that_is_no_variable_name_is_not_echoed_either() -> None:
    pasted = "sk-live 9f8e7d"
    _, problems = resolve(
        {"kind": "electricitymaps", "zone": "DE", "tokenEnv": pasted, "fallbackCapFraction": 0.8}
    )
    (problem,) = problems
    assert problem.startswith("intensity.tokenEnv: ") and "NAME" in problem, problem
    assert pasted not in problem and "9f8e7d" not in problem


@pytest.mark.parametrize(
    ("section", "refused"),
    [
        ({"kind": "electricitymaps", "zone": "DE", "tokenEnv": "EM_TOKEN"}, "the token (tokenEnv)"),
        (
            {"kind": "watttime", "region": "R", "usernameEnv": "U", "passwordEnv": "P"},
            "the username and password (usernameEnv, passwordEnv)",
        ),
        ({"kind": "ukci"}, None),  # no credentials: http is its own business
        ({"kind": "carbon-aware-sdk", "location": "eastus"}, None),
    ],
)
def test_credentials_over_plain_http_need_allow_insecure_http(
    section: dict[str, object], refused: str | None
) -> None:
    base = {**section, "fallbackCapFraction": 0.8}
    settings, problems = resolve({**base, "url": "http://carbon.internal:8080"})
    if refused is None:
        assert problems == [] and settings is not None
        return
    assert settings is None
    (problem,) = problems
    assert problem.startswith(f"intensity.url: kind {section['kind']} sends {refused}"), problem
    assert "use https://, or set allowInsecureHttp: true" in problem
    for allowed in (
        {**base, "url": "https://carbon.internal:8443"},
        {**base, "url": "http://carbon.internal:8080", "allowInsecureHttp": True},
    ):
        settings, problems = resolve(allowed)
        assert problems == [] and settings is not None, problems


def test_build_source_csv(tmp_path: Path) -> None:
    path = tmp_path / "ci.csv"
    path.write_text("time,ci\n2026-03-02T12:00Z,500\n2026-03-02T13:00Z,400\n")
    settings, problems = resolve(
        {"kind": "csv", "path": str(path), "unit": "lbs/MWh", "fallbackCapFraction": 0.9}
    )
    assert problems == [] and settings is not None and settings.unit is Unit.lbs_per_mwh
    reading = build_source(settings, env={}).source.latest(NOW)
    assert reading is not None and reading.g_per_kwh == pytest.approx(500 * 0.45359237)


# ---------------------------------------------------------------- every HTTP source alike

SourceMaker = Callable[[str, float], IntensitySource]

# name → (constructor from base URL and timeout, fixture per path, the path ``latest``
# reads, the recorded value in g/kWh, the instant it holds from)
EVERY_SOURCE: dict[str, tuple[SourceMaker, dict[str, str], str, float, int]] = {
    "ukci": (
        lambda url, t: UkCarbonIntensity(url, timeout_s=t),
        {"/intensity": "ukci_intensity.json"},
        "/intensity",
        176.0,
        utc("2026-03-02T12:00:00"),
    ),
    "electricitymaps": (
        lambda url, t: ElectricityMaps("DE", "token", url, timeout_s=t),
        {"/v3/carbon-intensity/latest": "electricitymaps_latest.json"},
        "/v3/carbon-intensity/latest",
        412.0,
        utc("2026-03-02T12:00:00"),
    ),
    "watttime": (
        lambda url, t: WattTime("CAISO_NORTH", "user", "pass", base_url=url, timeout_s=t),
        {"/login": "watttime_login.json", "/v3/forecast": "watttime_forecast.json"},
        "/v3/forecast",
        800 * LBS_PER_MWH_TO_G_PER_KWH,
        utc("2026-03-02T12:10:00"),
    ),
    "carbon-aware-sdk": (
        lambda url, t: CarbonAwareSdk("eastus", url, timeout_s=t),
        {"/emissions/bylocation": "carbon_aware_bylocation.json"},
        "/emissions/bylocation",
        398.25,
        utc("2026-03-02T11:55:00"),
    ),
}


def _serve(fake: Fake, routes: dict[str, str], path: str, *replies: Reply) -> None:
    for p, fixture in routes.items():
        fake.route(p, *(replies if p == path and replies else (Reply(fixture=fixture),)))


@pytest.mark.parametrize("kind", sorted(EVERY_SOURCE))
def test_every_source_times_out_retries_then_holds_the_last_good_value_then_falls_back(
    fake: Fake, kind: str
) -> None:
    make, routes, path, value, at_s = EVERY_SOURCE[kind]
    fixture = routes[path]
    # Success, in g/kWh.
    _serve(fake, routes, path)
    reading = make(fake.url, 2.0).latest(NOW)
    assert reading is not None and reading.at_s == at_s
    assert reading.g_per_kwh == pytest.approx(value)
    # A slow answer times out.
    _serve(fake, routes, path, Reply(fixture=fixture, delay_s=1.0))
    with pytest.raises(SourceUnavailable, match=r"timed out after 0\.2 s"):
        make(fake.url, 0.2).latest(NOW)
    # A timeout and a 5xx are retried with back-off; the third try is live.
    _serve(
        fake,
        routes,
        path,
        Reply(fixture=fixture, delay_s=1.0),
        Reply(503, body="{}"),
        Reply(fixture=fixture),
        Reply(502, body="{}"),
    )
    clock = Clock(NOW)
    resilient = Resilient(
        make(fake.url, 0.2),
        retries=2,
        backoff_s=0.5,
        staleness_s=3600,
        fallback_cap_fraction=0.7,
        clock=clock,
        sleep=clock.sleep,
    )
    live = resilient.latest()
    assert live.status is Status.LIVE and live.attempts == 3 and clock.sleeps == [0.5, 1.0]
    # The source now fails (502 from here on): the last good value holds while it is
    # younger than the staleness limit, then the fallback cap.
    clock.now = at_s + 3000
    held = resilient.latest()
    assert held.status is Status.LAST_GOOD and held.reading == live.reading
    assert held.error is not None and "HTTP 502" in held.error
    clock.now = at_s + 3601
    gone = resilient.latest()
    assert gone.status is Status.FALLBACK and gone.reading is None
    assert gone.fallback_cap_fraction == 0.7
