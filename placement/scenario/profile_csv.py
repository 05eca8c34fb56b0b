"""Reading a service's power profile from a CSV file onto the grid."""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from placement.grid import Grid
from placement.scenario.spec import CsvProfileSpec


def _parse_instant(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return datetime.fromisoformat(text).timestamp()


def csv_profile(spec: CsvProfileSpec, grid: Grid, base_dir: Path) -> NDArray[np.float64]:
    """Read a profile from CSV as :class:`CsvProfileSpec` describes."""
    path = Path(spec.path)
    if not path.is_absolute():
        path = base_dir / path
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from exc
    if rows and spec.column not in rows[0]:
        raise ValueError(f"{path} has no column {spec.column!r} (columns: {', '.join(rows[0])})")
    try:
        values = np.array([float(r[spec.column]) for r in rows], dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"{path}: column {spec.column!r} is not numeric: {exc}") from exc
    if spec.time_column is None:
        return values * spec.scale
    if spec.time_column not in rows[0]:
        raise ValueError(f"{path} has no column {spec.time_column!r}")
    slots = np.array([grid.slot_of(_parse_instant(r[spec.time_column])) for r in rows])
    out = np.full(grid.slots, np.nan)
    for t in range(grid.slots):
        chosen = values[slots == t]
        if chosen.size:
            out[t] = np.quantile(chosen, spec.quantile)
    if np.isnan(out).any():
        missing = grid.slot_label(int(np.flatnonzero(np.isnan(out))[0]))
        raise ValueError(f"{path}: no rows fall in the slot at {missing}")
    return out * spec.scale
