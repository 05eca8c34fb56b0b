"""Checking a powercap config file offline, every problem in one pass
(``powercap config validate``).

:func:`load_config` stops at the schema when the schema is wrong: a misspelled key
hides an unknown parent domain until the next try. :func:`check_config_file` goes on:
it reports the schema's problems, then sets the parts they are in aside — a misspelled
key is dropped, a bad value falls back to its default (a domain's bad cap to a
placeholder, so the tree still builds) — and runs the cross-checks of
:func:`~extender.config.loading.config_from_spec` (the tree, profiles, services, every
section) on what is left. A problem found in a part set aside is not reported twice;
where nothing sensible is left to check (no usable ``domains:``), only the schema's
problems are reported for that part.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import ValidationError

from extender.config.intensity import intensity_schema_problems
from extender.config.loading import _pydantic_problems, _read_document, config_from_spec
from extender.config.model import Config, ConfigError, ConfigSpec
from placement.scenario.spec import API_VERSION
from placement.validation import field_path

# A cap that stands in for a domain's unusable one while the tree is checked.
_PLACEHOLDER_CAP = 1.0
# Rounds of setting parts aside before giving up on the cross-checks.
_ROUNDS = 4


@dataclass(frozen=True)
class ConfigCheck:
    """What :func:`check_config_file` found: every ``path: problem`` (empty: valid), and
    the resolved :class:`Config` when there is none."""

    source: str
    problems: tuple[str, ...]
    config: Config | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def _real_loc(data: Any, loc: Sequence[int | str]) -> tuple[int | str, ...]:
    """The longest prefix of ``loc`` that exists in ``data`` (pydantic puts union
    branch names such as ``list[float]`` into locations) plus the next key, which may
    be missing (a required field) or an unknown one."""
    out: list[int | str] = []
    node = data
    for part in loc:
        if isinstance(node, Mapping) and isinstance(part, str):
            out.append(part)
            if part not in node:
                break
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            out.append(part)
            node = node[part]
        else:
            break
    return tuple(out)


class _Aside:
    """The parts of a config set aside, by path; a later problem under one is dropped."""

    def __init__(self) -> None:
        self.paths: set[str] = set()
        self.tree_unusable = False

    def covers(self, problem: str) -> bool:
        where = problem.split(":", 1)[0]
        if self.tree_unusable and where.startswith(("domains", "intensity")):
            return True
        return any(where == p or where.startswith((p + ".", p + "[")) for p in self.paths)


def _set_aside(data: MutableMapping[str, Any], loc: tuple[int | str, ...], aside: _Aside) -> None:
    """Make the part of ``data`` at ``loc`` valid, or remove it, so the rest can be
    checked; never deletes a list item (later paths would shift)."""
    aside.paths.add(field_path(loc))
    if not loc:
        return
    head = loc[0]
    if loc == ("apiVersion",):
        data["apiVersion"] = API_VERSION
        return
    if loc == ("kind",):
        data["kind"] = "PowercapConfig"
        return
    if head == "domains":
        domains = data.get("domains")
        if len(loc) >= 3 and isinstance(domains, list) and isinstance(loc[1], int):
            item = domains[loc[1]]
            field = loc[2]
            if field == "cap":
                item["cap"] = _PLACEHOLDER_CAP
                return
            if field not in ("name", "parent"):  # an unknown key: drop it
                item.pop(field, None)
                return
        # A domain without a usable name or parent, or no usable list at all: the tree
        # cannot be told apart from the mistake.
        aside.tree_unusable = True
        data["domains"] = [{"name": "(unusable)", "cap": _PLACEHOLDER_CAP}]
        return
    # Anything else: drop the key (its default applies); a list item's whole list.
    while loc and isinstance(loc[-1], int):
        loc = loc[:-1]
    parent: Any = data
    for part in loc[:-1]:
        parent = parent[part]
    if isinstance(parent, MutableMapping):
        parent.pop(loc[-1], None)


def check_config_data(data: Any, base_dir: Path = Path("."), source: str = "config") -> ConfigCheck:
    """Every problem of already-parsed config data, the schema's and the cross-checks'."""
    if not isinstance(data, Mapping):
        return ConfigCheck(
            source,
            ("(top level): expected a mapping with apiVersion, kind: PowercapConfig, domains",),
        )
    work: dict[str, Any] = copy.deepcopy(dict(data))
    problems: list[str] = []
    aside = _Aside()
    spec: ConfigSpec | None = None
    tried: set[tuple[int | str, ...]] = set()
    for round_ in range(_ROUNDS):
        try:
            spec = ConfigSpec.model_validate(work)
            break
        except ValidationError as exc:
            if round_ == 0:
                problems += _pydantic_problems(exc)
                problems += intensity_schema_problems(data.get("intensity"))
            locs: set[tuple[int | str, ...]] = set()
            for e in exc.errors():
                loc = _real_loc(work, e["loc"])
                # Setting a part aside did not clear its error (a branch of a union, a
                # required field): set aside the part around it.
                while loc in tried and len(loc) > 1:
                    loc = loc[:-1]
                locs.add(loc)
            tried |= locs
            # Set aside the deepest parts first: a shallower one may contain them.
            for loc in sorted(locs, key=len, reverse=True):
                try:
                    _set_aside(work, loc, aside)
                except (KeyError, IndexError, TypeError):
                    # The part is gone already (inside one set aside before).
                    continue
    if spec is None:
        return ConfigCheck(source, tuple(problems))
    try:
        config = config_from_spec(spec, base_dir, source)
    except ConfigError as exc:
        problems += [p for p in exc.problems if not aside.covers(p) and p not in problems]
        return ConfigCheck(source, tuple(problems))
    return ConfigCheck(source, tuple(problems), None if problems else config)


def check_config_file(path: Path) -> ConfigCheck:
    """Read ``path`` and report every problem of it; never raises on a bad file."""
    try:
        data = _read_document(path)
    except OSError as exc:
        return ConfigCheck(str(path), (f"cannot read file: {exc.strerror}",))
    except (yaml.YAMLError, orjson.JSONDecodeError) as exc:
        return ConfigCheck(str(path), (f"not valid YAML/JSON: {exc}",))
    return check_config_data(data, path.parent, str(path))
