"""Turning validation failures into ``path: message`` lines users can act on.

Scenario files and the extender's config report problems the same way: every problem
at once, each named by its path (``services[3].profile``) with the fix.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ValidationError

# pydantic names the union branch or validator it tried inside a location; users want
# the field, so these parts are left out of the path.
_INTERNAL_LOC_PARTS = frozenset(
    {"list[float]", "ProfileRef", "str", "float", "int", "function-after"}
)


class ProblemsError(ValueError):
    """An input that cannot be used; ``problems`` lists every ``path: message``."""

    def __init__(self, problems: list[str], source: str) -> None:
        self.problems = problems
        self.source = source
        super().__init__(f"{source}: " + "; ".join(problems))


def field_path(loc: Sequence[int | str], prefix: str = "") -> str:
    """``('services', 3, 'profile')`` → ``services[3].profile`` (after ``prefix``)."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in _INTERNAL_LOC_PARTS:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def validation_problems(
    err: ValidationError,
    reference: str,
    prefix: str = "",
    *,
    kind_name: str | None = None,
) -> list[str]:
    """One ``path: message`` per path (union branches repeat a path; the first wins).

    ``reference`` is what an unknown field should be checked against; with
    ``kind_name``, a wrong ``kind`` also says which kind of file was expected.
    """
    problems: dict[str, str] = {}
    for e in err.errors():
        where = field_path(e["loc"], prefix)
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = f"unknown field (check the spelling against {reference})"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif kind_name and e["type"] == "literal_error" and e["loc"] and e["loc"][-1] == "kind":
            msg = f"{msg} (this file is a {e['input']!r}, not {kind_name}?)"
        problems.setdefault(where, f"{where}: {msg}")
    return list(problems.values())


def seconds_or_problem(value: str | int, where: str, problems: list[str]) -> float:
    """``value`` (``"90s"``, ``"5m"``, ``"500ms"``, or seconds) in seconds, fractions
    allowed; on a bad one, append ``"<where>: <why>"`` to ``problems`` and return 0 so
    checking can go on."""
    from placement.grid import parse_seconds

    try:
        return parse_seconds(value)
    except ValueError as exc:
        problems.append(f"{where}: {exc}")
        return 0.0
