"""What a running extender believes, from its ``/metrics``, set against the API server.

The extender's ledger is private to its process; its per-domain predicted headroom gauge
is the public face of it. :func:`ledger_disagreements` compares that gauge with the
headroom computed from the placement the API server reports, so a test can check that
the extender's books match the cluster (after a burst of binds, a restart, a relist).
"""

from __future__ import annotations

import urllib.request

import numpy as np
from numpy.typing import NDArray
from prometheus_client.parser import text_string_to_metric_families

from placement.assignment import Assignment
from placement.problem import Problem

HEADROOM = "powercap_domain_predicted_headroom_watts"
# The same sums of the same floats in another order differ by far less; one replica
# missing or counted twice is hundreds of watts.
TOLERANCE_W = 1e-3


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of the extender's ``/metrics`` on its metrics ``port``: name → sorted
    labels → value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            out.setdefault(sample.name, {})[labels] = float(sample.value)
    return out


def labelled(port: int, name: str) -> dict[str, float]:
    """One metric with (at most) one label, keyed by that label's value (``""`` when it
    has none); empty when the metric has no samples yet."""
    return {
        next(iter(dict(labels).values()), ""): value
        for labels, value in scrape(port).get(name, {}).items()
    }


def plan_gauges(port: int) -> dict[str, float]:
    """The latest plan's ``hosted_replicas`` and ``gap`` (empty until the first plan)."""
    samples = scrape(port)
    out: dict[str, float] = {}
    for key in ("hosted_replicas", "gap"):
        values = samples.get(f"powercap_plan_{key}", {})
        if values:
            out[key] = next(iter(values.values()))
    return out


def verb_summary(port: int) -> str:
    """The extender's verb calls so far, from its ``/metrics``: per verb the calls and
    their mean time in the extender (parse, decide, answer; a bind's API call included),
    then the calls answered 503 for want of a free slot (each one a pod the scheduler
    must schedule again)."""
    samples = scrape(port)
    sums = samples.get("powercap_extender_request_seconds_sum", {})
    counts = samples.get("powercap_extender_request_seconds_count", {})
    parts = []
    for labels, count in sorted(counts.items()):
        if count:
            verb = dict(labels).get("verb", "")
            mean_ms = 1000 * sums.get(labels, 0.0) / count
            parts.append(f"{verb} {count:,.0f} calls, mean {mean_ms:.2f} ms")
    busy = sum(
        value
        for labels, value in samples.get("powercap_extender_decisions_total", {}).items()
        if dict(labels).get("outcome") == "busy"
    )
    parts.append(f"{busy:,.0f} answered busy (503)")
    return "; ".join(parts)


def extender_headroom(port: int) -> dict[str, float]:
    """Per domain: the extender's least predicted ``cap − load`` over the period."""
    return labelled(port, HEADROOM)


def api_headroom(problem: Problem, assignment: Assignment) -> NDArray[np.float64]:
    """The same quantity, per domain in tree order, for a placement read from the API
    server."""
    headroom: NDArray[np.float64] = (problem.effective_caps - assignment.load(problem)).min(axis=1)
    return headroom


def ledger_disagreements(
    problem: Problem, assignment: Assignment, port: int
) -> dict[str, tuple[float, float]]:
    """Domains whose headroom differs between the extender and the API server by more
    than :data:`TOLERANCE_W`, as ``domain → (extender, api server)``; empty when they agree.
    A domain the extender does not report counts as a disagreement (NaN on its side)."""
    ours = extender_headroom(port)
    theirs = api_headroom(problem, assignment)
    out: dict[str, tuple[float, float]] = {}
    for d, name in enumerate(problem.tree.names):
        got, want = ours.get(name, float("nan")), float(theirs[d])
        if not abs(got - want) <= TOLERANCE_W:
            out[name] = (got, want)
    return out
