"""The time grid every profile and cap schedule lives on."""

from __future__ import annotations

import re
from dataclasses import dataclass

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | int | float) -> int:
    """Seconds in a Go-style duration such as ``24h``, ``10m`` or ``1h30m``, a whole
    number of them (grid periods, steps and offsets). A bare number is taken as seconds.
    Raises ``ValueError`` naming the accepted form."""
    seconds = parse_seconds(text)
    if seconds != int(seconds):
        raise ValueError(f"a duration must be a positive whole number of seconds, got {text!r}")
    return int(seconds)


def parse_seconds(text: str | int | float) -> float:
    """Seconds in a Go-style duration that may be fractional (``500ms``, ``1.5s``,
    ``2m``): for timings (periods, timeouts) rather than grid boundaries. A bare number
    is taken as seconds. Raises ``ValueError`` naming the accepted form."""
    if isinstance(text, bool):
        raise ValueError(f"expected a duration such as '15s' or '500ms', got {text!r}")
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        stripped = text.strip()
        pos = 0
        seconds = 0.0
        for match in _DURATION.finditer(stripped):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos = match.end()
        if pos != len(stripped) or not stripped:
            raise ValueError(f"expected a duration such as '15s' or '500ms', got {text!r}")
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"a duration must be positive, got {text!r}")
    return seconds


def format_duration(seconds: int) -> str:
    """Shortest Go-style spelling of ``seconds`` (``86400`` → ``24h``)."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class Grid:
    """A periodic grid: ``period_s`` long, cut into ``step_s`` slots.

    ``offset_s`` shifts wall-clock time before slotting, so a grid can follow a
    time zone: slot = ((unix_seconds + offset_s) mod period_s) // step_s.
    """

    period_s: int = 86400
    step_s: int = 600
    offset_s: int = 0

    def __post_init__(self) -> None:
        if self.step_s <= 0 or self.period_s <= 0:
            raise ValueError("grid period and step must be positive")
        if self.period_s % self.step_s:
            raise ValueError(
                f"grid step {format_duration(self.step_s)} does not divide "
                f"period {format_duration(self.period_s)}"
            )

    @property
    def slots(self) -> int:
        """Number of slots T in one period."""
        return self.period_s // self.step_s

    @property
    def step_hours(self) -> float:
        return self.step_s / 3600.0

    def slot_of(self, unix_seconds: float) -> int:
        """Slot index of a wall-clock instant."""
        return int(((int(unix_seconds) + self.offset_s) % self.period_s) // self.step_s)

    def slot_label(self, slot: int) -> str:
        """Start of ``slot`` as a time of day, ``HH:MM`` (``+Nd`` when the period spans days)."""
        start = slot * self.step_s
        days, rest = divmod(start, 86400)
        label = f"{rest // 3600:02d}:{(rest % 3600) // 60:02d}"
        return f"{label}+{days}d" if days else label
