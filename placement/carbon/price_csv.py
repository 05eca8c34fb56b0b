"""Reading EUA price series from CSV files."""

from __future__ import annotations

import csv
import math
from datetime import date, datetime
from pathlib import Path

import numpy as np

from placement.carbon.market import EuaPrice, PriceSeriesError


def read_eua_csv(
    path: Path | str, price_column: str = "settle", date_column: str | None = None
) -> EuaPrice:
    """Daily EUA prices from a CSV with a header (e.g. ETS-Watch's ``market_prices.csv``:
    ``datetime`` and ``settle``). ``date_column`` defaults to the first column. Rows with
    an empty price are skipped (no trade that day); other bad rows are errors."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise PriceSeriesError([f"cannot read the file: {exc.strerror or exc}"], source) from None
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        raise PriceSeriesError(["the file is empty; expected a header row"], source)
    header = [h.strip() for h in rows[0]]
    if price_column not in header:
        raise PriceSeriesError(
            [f"no price column {price_column!r}; the columns are: {', '.join(header)}"], source
        )
    p_col = header.index(price_column)
    if date_column is not None and date_column not in header:
        raise PriceSeriesError(
            [f"no date column {date_column!r}; the columns are: {', '.join(header)}"], source
        )
    d_col = 0 if date_column is None else header.index(date_column)
    days: list[date] = []
    prices: list[float] = []
    problems: list[str] = []
    for number, row in enumerate(rows[1:], start=2):
        if not row or len(row) <= max(p_col, d_col):
            continue
        d_text, p_text = row[d_col].strip(), row[p_col].strip()
        if not p_text:
            continue
        try:
            day = datetime.fromisoformat(d_text).date()
            price = float(p_text)
        except ValueError:
            problems.append(
                f"row {number}: expected a date (2020-06-01) and a price, got {d_text!r}, "
                f"{p_text!r}"
            )
        else:
            if not math.isfinite(price) or price < 0:
                problems.append(f"row {number}: price {p_text} is not a non-negative number")
            elif days and day <= days[-1]:
                problems.append(f"row {number}: {day} is not after the previous row; sort the file")
            else:
                days.append(day)
                prices.append(price)
        if len(problems) >= 10:
            break
    if problems:
        raise PriceSeriesError(problems, source)
    if not days:
        raise PriceSeriesError([f"no prices in column {price_column!r}"], source)
    return EuaPrice(
        days=np.array(days, dtype="datetime64[D]"),
        settles=np.array(prices, dtype=np.float64),
        source=source,
    )
