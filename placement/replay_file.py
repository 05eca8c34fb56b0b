"""The replay file: measured per-replica watts per service on a fixed step, as JSON
(``{"step_s": 600, "watts": {service: [...]}}``), read by ``whatif --kwok --replay``."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import orjson

from placement.scenario.servegen import STEP_S, PathLike


def write_replay(
    path: PathLike, watts: Mapping[str, Sequence[float]], step_s: int = STEP_S
) -> None:
    """Write ``{"step_s": 600, "watts": {service: [...]}}`` as JSON to ``path``."""
    payload = {"step_s": step_s, "watts": {k: list(v) for k, v in watts.items()}}
    Path(path).write_text(json.dumps(payload, separators=(",", ":")) + "\n")


def read_replay(path: Path) -> tuple[int, dict[str, list[float]]]:
    """``(step_s, {service: watts})`` from a replay file
    (``{"step_s": 600, "watts": {service: [w0, w1, ...]}}``); raises ``ValueError``
    naming the file and what is wrong."""
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read: {exc}") from None
    if not isinstance(data, dict) or set(data) != {"step_s", "watts"}:
        raise ValueError(f'{path}: expected {{"step_s": 600, "watts": {{service: [...]}}}}')
    step_s, watts = data["step_s"], data["watts"]
    if not isinstance(step_s, int) or isinstance(step_s, bool) or step_s <= 0:
        raise ValueError(f"{path}: step_s must be a whole number of seconds > 0, got {step_s!r}")
    if not isinstance(watts, dict) or not watts:
        raise ValueError(f"{path}: watts must map each service to its series")
    out: dict[str, list[float]] = {}
    for name, series in watts.items():
        ok = (
            isinstance(series, list)
            and series
            and all(
                isinstance(w, int | float)
                and not isinstance(w, bool)
                and math.isfinite(w)
                and w >= 0
                for w in series
            )
        )
        if not ok:
            raise ValueError(f"{path}: watts.{name} must be a non-empty list of watts >= 0")
        out[str(name)] = [float(w) for w in series]
    return step_s, out
