"""Carbon-intensity series: CSV reading (columns, zones, units, bad rows) and resampling."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from placement.carbon.intensity import (
    IntensitySeries,
    Unit,
    day_window,
    month_window,
    on_grid,
    on_window,
    parse_unit,
    whole_days,
)
from placement.carbon.intensity_csv import (
    IntensityCsvError,
    parse_intensity_csv,
    read_intensity_csv,
)
from placement.grid import Grid

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def unix(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


# ---------------------------------------------------------------- CSV


def test_reads_the_two_column_form_with_defaults() -> None:
    series = parse_intensity_csv(
        "Time,Carbon Intensity\n2020-01-01 00:00:00,100\n2020-01-01 00:30:00,150.5\n"
    )
    assert series.times.tolist() == [unix("2020-01-01 00:00"), unix("2020-01-01 00:30")]
    assert series.values.tolist() == [100.0, 150.5]
    assert series.spacing_s == 1800
    assert not series.values.flags.writeable


def test_named_columns_among_many_case_insensitively() -> None:
    text = "id,when,region,gco2\n1,2020-01-01T00:00Z,GB,80\n2,2020-01-01T01:00Z,GB,90\n"
    series = parse_intensity_csv(text, time_column="WHEN", value_column="gco2")
    assert series.values.tolist() == [80.0, 90.0]
    assert series.times[1] - series.times[0] == 3600


def test_many_columns_without_a_value_column_says_which_to_name() -> None:
    with pytest.raises(IntensityCsvError, match="name the value column") as err:
        parse_intensity_csv("t,a,b\n2020-01-01,1,2\n")
    assert err.value.column == "value"


def test_unknown_column_lists_the_columns() -> None:
    with pytest.raises(IntensityCsvError, match=r"no time column 'Zeit'.*'Time'") as err:
        parse_intensity_csv("Time,ci\n2020-01-01,1\n", time_column="Zeit")
    assert err.value.column == "time"


def test_naive_times_are_read_in_the_given_zone() -> None:
    text = "t,v\n2020-07-01 02:00,1\n2020-07-01 03:00,2\n"
    series = parse_intensity_csv(text, tz="Europe/Berlin")  # CEST = UTC+2 in July
    assert series.times[0] == unix("2020-07-01 00:00")


def test_explicit_offsets_win_over_the_zone() -> None:
    text = "t,v\n2020-07-01T02:00:00+01:00,1\n1593568800,2\n"  # second: Unix seconds
    series = parse_intensity_csv(text, tz="Asia/Tokyo")
    assert series.times.tolist() == [unix("2020-07-01 01:00"), unix("2020-07-01 02:00")]


def test_repeated_autumn_hour_is_resolved_by_order() -> None:
    # Clocks go back at 03:00 CEST on 2020-10-25: 02:00–02:59 happens twice.
    rows = ["01:30", "02:00", "02:30", "02:00", "02:30", "03:00"]
    text = "t,v\n" + "".join(f"2020-10-25 {r},1\n" for r in rows)
    series = parse_intensity_csv(text, tz="Europe/Berlin")
    assert np.diff(series.times).tolist() == [1800] * 5


def test_a_time_in_the_spring_gap_is_an_error() -> None:
    text = "t,v\n2020-03-29 01:30,1\n2020-03-29 02:30,1\n"
    with pytest.raises(IntensityCsvError, match=r"row 3.*does not exist in Europe/Berlin"):
        parse_intensity_csv(text, tz="Europe/Berlin")


@pytest.mark.parametrize(
    ("unit", "factor"),
    [("g/kWh", 1.0), ("kg/MWh", 1.0), ("lbs/MWh", 0.45359237), ("LB/MWh", 0.45359237)],
)
def test_units_are_converted_to_grams_per_kwh(unit: str, factor: float) -> None:
    series = parse_intensity_csv("t,v\n2020-01-01,1000\n", unit=unit)
    assert series.values[0] == pytest.approx(1000 * factor)


def test_unknown_unit_and_zone_name_the_choices() -> None:
    with pytest.raises(IntensityCsvError, match="g/kWh, kg/MWh, lbs/MWh"):
        parse_intensity_csv("t,v\n2020-01-01,1\n", unit="t/GWh")
    with pytest.raises(IntensityCsvError, match="IANA"):
        parse_intensity_csv("t,v\n2020-01-01,1\n", tz="Mars/Olympus")
    assert parse_unit(Unit.kg_per_mwh) is Unit.kg_per_mwh


def test_bad_rows_are_all_named_with_row_and_column() -> None:
    text = (
        "Time,CI\n"
        "2020-01-01 00:00,100\n"
        "yesterday,100\n"  # row 3
        "2020-01-01 01:00,\n"  # row 4
        "2020-01-01 01:30,-5\n"  # row 5
        "2020-01-01 01:30,abc\n"  # row 6
        "2020-01-01 00:00,7\n"  # row 7: repeats row 2
        "2020-01-01 02:00\n"  # row 8: short
    )
    with pytest.raises(IntensityCsvError) as err:
        parse_intensity_csv(text, source="ci.csv")
    problems = err.value.problems
    assert problems[0].startswith("row 3, column 'Time': 'yesterday' is not a time")
    assert "row 4, column 'CI': empty value" in problems[1]
    assert "row 5, column 'CI': -5 is not a finite, non-negative" in problems[2]
    assert "row 6, column 'CI': 'abc' is not a number" in problems[3]
    assert "row 7" in problems[4] and "sort the file" in problems[4]
    assert problems[5] == "row 8: 1 cells, expected 2"
    assert str(err.value).startswith("ci.csv: ")


def test_empty_and_header_only_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(IntensityCsvError, match="empty"):
        parse_intensity_csv("")
    with pytest.raises(IntensityCsvError, match="no data rows"):
        parse_intensity_csv("t,v\n\n")
    with pytest.raises(IntensityCsvError, match="cannot read"):
        read_intensity_csv(tmp_path / "missing.csv")


# ---------------------------------------------------------------- resampling


def hourly(values: list[float], start: str = "2020-01-01 00:00") -> IntensitySeries:
    t0 = unix(start)
    return IntensitySeries.from_arrays([t0 + 3600 * k for k in range(len(values))], values)


def test_upsampling_holds_each_sample_through_its_hour() -> None:
    series = hourly([100.0, 200.0, 300.0])
    window = on_window(series, Grid(step_s=1800), unix("2020-01-01 00:00"), slots=6)
    assert window.intensity.tolist() == [100, 100, 200, 200, 300, 300]


def test_downsampling_is_the_time_weighted_mean() -> None:
    series = IntensitySeries.from_arrays(
        [unix("2020-01-01 00:00"), unix("2020-01-01 00:15"), unix("2020-01-01 01:00")],
        [100.0, 300.0, 50.0],
    )
    # first hour: 15 min at 100, 45 min at 300 → 250; second hour holds 50 (one spacing).
    window = on_window(series, Grid(step_s=3600), unix("2020-01-01 00:00"), slots=1)
    assert window.intensity.tolist() == [250.0]


def test_day_on_the_grid_and_periodic_mean() -> None:
    day1 = [float(h) for h in range(24)]
    day2 = [float(h + 10) for h in range(24)]
    series = hourly(day1 + day2)
    grid = Grid(step_s=7200)  # 12 slots of 2h
    first = on_grid(series, grid, date(2020, 1, 1))
    assert first.tolist() == [2 * k + 0.5 for k in range(12)]
    both = on_grid(series, grid, date(2020, 1, 1), days=2)
    np.testing.assert_allclose(both, first + 5.0)


def test_grid_offset_shifts_the_day_to_local_midnight() -> None:
    series = hourly([float(h) for h in range(48)], start="2019-12-31 00:00")
    grid = Grid(step_s=3600, offset_s=3600)  # local = UTC+1: local midnight is 23:00 UTC
    profile = on_grid(series, grid, date(2020, 1, 1))
    assert profile[0] == 23.0 and profile[1] == 24.0
    window = day_window(series, grid, date(2020, 1, 1))
    assert window.grid_slots.tolist() == list(range(24))
    np.testing.assert_array_equal(window.intensity, profile)


def test_a_window_outside_the_data_names_the_covered_span() -> None:
    series = hourly([1.0] * 24)
    with pytest.raises(ValueError, match="covers 2020-01-01 00:00 UTC to 2020-01-02 00:00 UTC"):
        on_grid(series, Grid(), date(2020, 1, 2))


def test_whole_days_and_month_window() -> None:
    series = hourly([1.0] * 24 * 31, start="2020-01-01 00:00")
    grid = Grid()
    days = whole_days(series, grid)
    assert days[0] == date(2020, 1, 1) and days[-1] == date(2020, 1, 31) and len(days) == 31
    month = month_window(series, grid, date(2020, 1, 17))
    assert month.slots == 31 * 144 and month.hours == 31 * 24
    assert month.grid_slots[:3].tolist() == [0, 1, 2] and month.grid_slots[144] == 0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0, 1000, allow_nan=False), min_size=1, max_size=48),
    st.sampled_from([300, 600, 900, 1200, 1800, 3600]),
)
def test_resampling_keeps_the_energy_weighted_sum(values: list[float], step: int) -> None:
    series = IntensitySeries.from_arrays(
        [unix("2020-01-01 00:00") + 3600 * k for k in range(len(values))], values
    )
    slots = len(values) * 3600 // step
    window = on_window(series, Grid(step_s=step), series.start_s, slots=slots)
    # Every hour is split into whole slots, so slot means times slot hours add up to the
    # hourly values — nothing lost or counted twice at the edges.
    assert window.intensity.sum() * step / 3600 == pytest.approx(sum(values), abs=1e-6)
    assert window.intensity.min() >= min(values) - 1e-9
    assert window.intensity.max() <= max(values) + 1e-9


# ---------------------------------------------------------------- real data


def test_real_gb_intensity_reads_and_resamples() -> None:
    path = DATA / "carbon-intensity" / "gb_ci.csv"
    assert path.is_file(), (
        f"{path} is missing: the shared data folder (../shared/data beside the repository) "
        "holds the lets-wait-awhile carbon-intensity files these tests read"
    )
    series = read_intensity_csv(path, "Time", "Carbon Intensity")
    assert series.spacing_s == 1800
    assert series.start_s == unix("2019-12-20 00:00")
    assert 50 < series.values.min() < series.values.max() < 500
    profile = on_grid(series, Grid(), date(2020, 6, 1))
    assert profile.shape == (144,)
    # 10-minute slots inside a 30-minute sample equal it exactly.
    first = series.values[series.times == unix("2020-06-01 00:00")][0]
    assert profile[:3] == pytest.approx([first] * 3)
    assert date(2021, 1, 8) in whole_days(series, Grid())
