"""Reading carbon-intensity CSV files (time, gCO2e/kWh) into an :class:`IntensitySeries`."""

from __future__ import annotations

import csv
import math
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from placement.carbon.intensity import IntensitySeries, Unit, parse_unit, parse_zone
from placement.validation import ProblemsError

# A file with thousands of bad rows is one mistake (wrong column, wrong unit); listing
# them all buries the first, which is the one to look at.
MAX_PROBLEMS = 10


class IntensityCsvError(ProblemsError):
    """A CSV that cannot be read as an intensity series. ``column`` is ``"time"`` or
    ``"value"`` when the fix is to pick another column, so a CLI can name its option."""

    def __init__(self, problems: list[str], source: str, column: str | None = None) -> None:
        super().__init__(problems, source)
        self.column = column


def read_intensity_csv(
    path: Path | str,
    time_column: str | None = None,
    value_column: str | None = None,
    *,
    tz: str = "UTC",
    unit: str | Unit = Unit.g_per_kwh,
) -> IntensitySeries:
    """Read a carbon-intensity CSV with a header row (see :func:`parse_intensity_csv`)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise IntensityCsvError([f"cannot read the file: {exc.strerror or exc}"], source) from None
    return parse_intensity_csv(text, time_column, value_column, tz=tz, unit=unit, source=source)


def parse_intensity_csv(
    text: str,
    time_column: str | None = None,
    value_column: str | None = None,
    *,
    tz: str = "UTC",
    unit: str | Unit = Unit.g_per_kwh,
    source: str = "<csv>",
) -> IntensitySeries:
    """An intensity series from CSV text with a header row.

    ``time_column`` defaults to the first column; ``value_column`` to the only other
    column (a file with more columns must name it). Times are ISO 8601
    (``2020-01-31 13:30:00``, ``…T13:30Z``, ``…+01:00``) or Unix seconds. A time without
    an offset is wall-clock time in ``tz`` (an IANA zone; daylight-saving repeats are
    resolved by order, times that do not exist are errors); a time with an offset keeps
    its own. Values are converted from ``unit`` to g/kWh. Rows must be in time order.

    Raises :class:`IntensityCsvError` listing the first problems, each naming the row
    (the header is row 1) and column, with the fix.
    """
    zone = _zone_or_error(tz, source)
    try:
        factor = parse_unit(unit).to_g_per_kwh
    except ValueError as exc:
        raise IntensityCsvError([str(exc)], source) from None
    rows = list(csv.reader(text.splitlines()))
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise IntensityCsvError(["the file is empty; expected a header row and data"], source)
    header = [cell.strip() for cell in rows[0]]
    t_col = _column(header, time_column, 0, "time", source)
    if value_column is None and len(header) != 2:
        raise IntensityCsvError(
            [f"the file has {len(header)} columns ({', '.join(header)}); name the value column"],
            source,
            column="value",
        )
    v_col = _column(header, value_column, 1, "value", source)
    if t_col == v_col:
        raise IntensityCsvError(
            [f"time and value columns are both {header[t_col]!r}; pick two different columns"],
            source,
            column="value",
        )

    problems: list[str] = []
    times: list[int] = []
    values: list[float] = []
    previous: int | None = None
    for number, row in enumerate(rows[1:], start=2):
        if not row or not any(cell.strip() for cell in row):
            continue  # blank lines carry nothing
        if len(row) <= max(t_col, v_col):
            problems.append(f"row {number}: {len(row)} cells, expected {len(header)}")
            continue
        t_text, v_text = row[t_col].strip(), row[v_col].strip()
        instant = _instant(t_text, zone, previous)
        if isinstance(instant, str):
            problems.append(f"row {number}, column {header[t_col]!r}: {instant}")
        value = _value(v_text)
        if isinstance(value, str):
            problems.append(f"row {number}, column {header[v_col]!r}: {value}")
        if isinstance(instant, int) and isinstance(value, float):
            if previous is not None and instant <= previous:
                problems.append(
                    f"row {number}, column {header[t_col]!r}: {t_text} is not after the "
                    "previous row; sort the file by time and remove duplicate rows"
                )
            else:
                times.append(instant)
                values.append(value * factor)
                previous = instant
        if len(problems) >= MAX_PROBLEMS:
            problems.append("… further rows not checked")
            break
    if problems:
        raise IntensityCsvError(problems, source)
    if not times:
        raise IntensityCsvError(["no data rows below the header"], source)
    return IntensitySeries.from_arrays(times, values, source)


def _zone_or_error(tz: str, source: str) -> ZoneInfo:
    try:
        return parse_zone(tz)
    except ValueError as exc:
        raise IntensityCsvError([str(exc)], source) from None


def _column(header: list[str], name: str | None, default: int, kind: str, source: str) -> int:
    if name is None:
        if default >= len(header):
            raise IntensityCsvError(
                [f"the file has one column ({header[0]!r}); expected a time and a value"],
                source,
                column=kind,
            )
        return default
    if name in header:
        return header.index(name)
    folded = [h.lower() for h in header]
    if name.strip().lower() in folded:
        return folded.index(name.strip().lower())
    raise IntensityCsvError(
        [f"no {kind} column {name!r}; the columns are: {', '.join(repr(h) for h in header)}"],
        source,
        column=kind,
    )


def _instant(text: str, zone: ZoneInfo, previous: int | None) -> int | str:
    """Unix seconds of ``text``, or why it is not a time."""
    if not text:
        return "empty time; fill it in or remove the row"
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(number):
            return int(number)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return f"{text!r} is not a time; use ISO 8601 (2020-01-31 13:30:00) or Unix seconds"
    if moment.tzinfo is not None:
        return int(moment.timestamp())
    local = moment.replace(tzinfo=zone)
    unix = int(local.timestamp())
    back = datetime.fromtimestamp(unix, zone).replace(tzinfo=None)
    if back != moment:
        return f"{text} does not exist in {zone.key} (a daylight-saving gap); check the zone"
    if previous is not None and unix <= previous:
        # A wall-clock hour repeated when clocks go back: the second pass is fold=1.
        later = int(local.replace(fold=1).timestamp())
        if later > previous:
            return later
    return unix


def _value(text: str) -> float | str:
    if not text:
        return "empty value; fill it in or remove the row"
    try:
        value = float(text)
    except ValueError:
        return f"{text!r} is not a number"
    if not math.isfinite(value) or value < 0:
        return f"{text} is not a finite, non-negative intensity"
    return value
