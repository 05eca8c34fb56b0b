"""What is wrong with a set of PowerDomains and PowerProfiles that the API server cannot see
(it checks one object at a time): unknown parents, cycles, more than one root, caps below
the idle power of the nodes under them, profiles of the wrong length for the grid.

:func:`check_domains` and :func:`check_profiles` are pure: they return one :class:`Finding`
per object and problem — the condition to set on it (``InvalidParent``, ``Ready``) and the
Event to emit — worded as the scenario and config errors are: the path (``PowerDomain/rack-1
spec.parent``), what is wrong, and the fix. A bad object marks only itself (and, for a
parent that is wrong, the domains below it) not ready; every other object stays usable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from extender.config.resources import Condition, PowerDomain, PowerProfile
from placement.grid import Grid

Reason = Literal[
    "UnknownParent", "ParentCycle", "ExtraRoot", "CapBelowIdle", "ScheduleLength", "ProfileLength"
]
CONDITION_OF: dict[Reason, str] = {
    "UnknownParent": "InvalidParent",
    "ParentCycle": "InvalidParent",
    "ExtraRoot": "InvalidParent",
    "CapBelowIdle": "Ready",
    "ScheduleLength": "Ready",
    "ProfileLength": "Ready",
}


@dataclass(frozen=True)
class Finding:
    """One problem of one object: the condition to set (``InvalidParent`` True, or
    ``Ready`` False) and a Warning Event, both with ``reason`` and ``message``."""

    kind: Literal["PowerDomain", "PowerProfile"]
    name: str
    namespace: str | None
    path: str
    reason: Reason
    message: str

    @property
    def condition_type(self) -> str:
        return CONDITION_OF[self.reason]

    @property
    def condition_status(self) -> Literal["True", "False"]:
        return "True" if self.condition_type == "InvalidParent" else "False"

    @property
    def text(self) -> str:
        """``PowerDomain/rack-1 spec.parent: unknown domain 'row-9'; create …``"""
        return f"{self.kind}/{self.name} {self.path}: {self.message}"


def _domain(d: PowerDomain, path: str, reason: Reason, message: str) -> Finding:
    return Finding("PowerDomain", d.metadata.name, None, path, reason, message)


def _cycles(parents: Mapping[str, str | None]) -> list[list[str]]:
    """Every cycle of the parent links, each once, in link order from its least name."""
    cycles: list[list[str]] = []
    done: set[str] = set()
    for start in sorted(parents):
        seen: list[str] = []
        node: str | None = start
        while node is not None and node in parents and node not in done and node not in seen:
            seen.append(node)
            node = parents[node]
        if node is not None and node in seen:
            loop = seen[seen.index(node) :]
            first = loop.index(min(loop))
            cycles.append(loop[first:] + loop[:first])
        done.update(seen)
    return cycles


def check_domains(
    domains: Sequence[PowerDomain],
    grid: Grid,
    idle_watts: Mapping[str, float] | None = None,
) -> list[Finding]:
    """The problems of ``domains`` as a tree on ``grid``. ``idle_watts`` maps a domain to
    the idle power of the nodes under it (all levels; absent: not checked)."""
    by_name = {d.metadata.name: d for d in domains}
    parents = {d.metadata.name: d.spec.parent for d in domains}
    out: list[Finding] = []
    for d in domains:
        parent = d.spec.parent
        if parent is not None and parent not in by_name:
            known = ", ".join(sorted(by_name)[:6]) or "none"
            out.append(
                _domain(
                    d,
                    "spec.parent",
                    "UnknownParent",
                    f"unknown domain {parent!r} (known: {known}); create the PowerDomain "
                    f"{parent!r} or fix the parent",
                )
            )
    for loop in _cycles(parents):
        shown = " -> ".join([*loop, loop[0]])
        for name in loop:
            out.append(
                _domain(
                    by_name[name],
                    "spec.parent",
                    "ParentCycle",
                    f"the parents form a cycle ({shown}); point one of them at a domain "
                    "outside it, or drop its parent to make it the root",
                )
            )
    roots = sorted(n for n, p in parents.items() if p is None)
    if len(roots) > 1:
        for name in roots[1:]:
            out.append(
                _domain(
                    by_name[name],
                    "spec.parent",
                    "ExtraRoot",
                    f"{len(roots)} roots ({', '.join(roots[:4])}); give every domain but one "
                    f"a parent (the root is {roots[0]!r})",
                )
            )
    for d in domains:
        schedule = d.spec.cap.schedule
        if schedule is not None and len(schedule) != grid.slots:
            out.append(
                _domain(
                    d,
                    "spec.cap.schedule",
                    "ScheduleLength",
                    f"{len(schedule)} values, the grid has {grid.slots} slots (or give one "
                    "number as cap.watts)",
                )
            )
            continue
        idle = (idle_watts or {}).get(d.metadata.name)
        if idle is None:
            continue
        lowest = d.spec.cap.watts if d.spec.cap.watts is not None else min(schedule or [0.0])
        if lowest < idle:
            out.append(
                _domain(
                    d,
                    "spec.cap",
                    "CapBelowIdle",
                    f"the cap ({lowest:g} W) is below the idle power of the nodes under it "
                    f"({idle:g} W), so no replica fits; raise the cap or move nodes out of "
                    "the domain",
                )
            )
    return out


def check_profiles(profiles: Sequence[PowerProfile], grid: Grid) -> list[Finding]:
    """The profiles whose ``watts`` do not have one value per slot of ``grid``."""
    out: list[Finding] = []
    for p in profiles:
        watts = p.spec.watts
        if watts is not None and len(watts) != grid.slots:
            out.append(
                Finding(
                    "PowerProfile",
                    p.metadata.name,
                    p.metadata.namespace,
                    "spec.watts",
                    "ProfileLength",
                    f"{len(watts)} values, the grid has {grid.slots} slots; give one value "
                    "per slot (or use diurnal or constant)",
                )
            )
    return out


def invalid_below(domains: Sequence[PowerDomain], findings: Sequence[Finding]) -> set[str]:
    """The domains that cannot be used: those with a finding, and every domain below one
    (its place in the tree, or the cap above it, is unknown)."""
    bad = {f.name for f in findings if f.kind == "PowerDomain"}
    parents = {d.metadata.name: d.spec.parent for d in domains}
    changed = True
    while changed:
        changed = False
        for name, parent in parents.items():
            if name not in bad and parent in bad:
                bad.add(name)
                changed = True
    return bad


def _condition(
    kind: str, status: str, reason: str, message: str, when: tuple[str, int | None]
) -> Condition:
    now, generation = when
    return Condition.model_validate(
        {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "observedGeneration": generation,
            "lastTransitionTime": now,
        }
    )


def domain_conditions(
    domains: Sequence[PowerDomain], findings: Sequence[Finding], now: str
) -> dict[str, list[Condition]]:
    """The ``Ready`` and ``InvalidParent`` conditions of every domain (``Breached`` is the
    controller's), at ``now`` (RFC 3339) and each domain's generation. A domain below one
    with a wrong parent is not ready either, and says which. ``lastTransitionTime`` is
    ``now``: whoever writes the status keeps the old time when a condition's status did
    not change (:func:`merge_conditions`)."""
    unusable = invalid_below(domains, findings)
    mine: dict[str, list[Finding]] = {}
    for f in findings:
        if f.kind == "PowerDomain":
            mine.setdefault(f.name, []).append(f)
    parents = {d.metadata.name: d.spec.parent for d in domains}
    out: dict[str, list[Condition]] = {}
    for d in domains:
        name = d.metadata.name
        when = (now, d.metadata.generation)
        own = mine.get(name, [])
        parent_problems = [f for f in own if f.condition_type == "InvalidParent"]
        if parent_problems:
            first = parent_problems[0]
            invalid = _condition("InvalidParent", "True", first.reason, first.text, when)
        else:
            invalid = _condition("InvalidParent", "False", "ParentKnown", "", when)
        if own:
            ready = _condition(
                "Ready", "False", own[0].reason, "; ".join(f.text for f in own), when
            )
        elif name in unusable:
            above = parents[name]
            while above is not None and above in unusable and not mine.get(above):
                above = parents.get(above)
            ready = _condition(
                "Ready",
                "False",
                "InvalidAncestor",
                f"PowerDomain/{name}: domain {above!r} above it is not usable (see its "
                "conditions); fix that one",
                when,
            )
        else:
            ready = _condition("Ready", "True", "Valid", "", when)
        out[name] = [ready, invalid]
    return out


def merge_conditions(old: Sequence[Condition], new: Sequence[Condition]) -> list[Condition]:
    """``new``, keeping each condition's ``lastTransitionTime`` from ``old`` where its
    status did not change (so a status write changes only what changed)."""
    before = {c.type: c for c in old}
    out: list[Condition] = []
    for c in new:
        prior = before.get(c.type)
        if prior is not None and prior.status == c.status:
            c = c.model_copy(update={"last_transition_time": prior.last_transition_time})
        out.append(c)
    return out


def event_of(finding: Finding) -> dict[str, Any]:
    """The Warning Event (``events.k8s.io/v1`` fields) that reports ``finding`` on its object."""
    regarding: dict[str, Any] = {
        "apiVersion": "powercap.io/v1alpha1",
        "kind": finding.kind,
        "name": finding.name,
        "fieldPath": finding.path,
    }
    if finding.namespace is not None:
        regarding["namespace"] = finding.namespace
    return {
        "type": "Warning",
        "reason": finding.reason,
        "action": "Validate",
        "note": finding.text,
        "regarding": regarding,
    }
