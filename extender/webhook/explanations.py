"""Why a node fails a pod: the texts the scheduler shows for failed and unresolvable nodes.

A power failure names the domain on the node's path with the worst overage, the time of
day and the watts over (as :func:`placement.admission.first_breach` would), computed for
all domains at once and only when some node fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from extender.cluster.state import ClusterState

UNKNOWN_NODE = (
    "powercap: node is not in the power tree (no powercap.io/domain label naming a leaf "
    "domain of the config); its power cannot be checked"
)


@dataclass
class Explainer:
    """Why one more replica of ``profile`` on top of ``load`` (domains × T), plus
    ``held`` when given, does not fit under a leaf: the worst overage on the leaf's
    path, the rootmost on ties (as :func:`placement.admission.first_breach` picks it).
    Computed once for all domains, on the first failing node; messages are cached per
    culprit. Use it only at the state version it was made for."""

    load: NDArray[np.float64]
    profile: NDArray[np.float64]
    held: NDArray[np.float64] | None = None
    slot: NDArray[np.int64] | None = None  # per domain, the slot of its largest overage
    worst: NDArray[np.float64] | None = None  # per domain, that overage in watts
    culprit: NDArray[np.int64] | None = None  # per domain, the worst domain on its path
    # per (culprit, held): leaves under one over-cap row or hall share their text
    messages: dict[tuple[int, bool], str] = field(default_factory=dict)

    def message(self, state: ClusterState, leaf: int, held: bool = False) -> str:
        """The text for ``leaf``: :func:`held_text` when ``held`` (the power is the
        plan's), else :func:`breach_text`; notes a cap lowered by the live carbon caps."""
        culprit = self._culprits(state)
        return self._text(state, int(culprit[leaf]), held)

    def texts(
        self, state: ClusterState, leaves: NDArray[np.int64], held: bool = False
    ) -> NDArray[np.object_]:
        """:meth:`message` for many leaves at once (an object array of texts, one per
        leaf): each distinct culprit is spelled out once, however many nodes it fails."""
        culprits, inverse = np.unique(self._culprits(state)[leaves], return_inverse=True)
        table = np.empty(culprits.size, dtype=object)
        table[:] = [self._text(state, k, held) for k in culprits.tolist()]
        out: NDArray[np.object_] = table[inverse]
        return out

    def _culprits(self, state: ClusterState) -> NDArray[np.int64]:
        if self.culprit is None:
            self._find_culprits(state)
        assert self.culprit is not None
        return self.culprit

    def _text(self, state: ClusterState, k: int, held: bool) -> str:
        """The text for the leaves whose worst domain is ``k``."""
        message = self.messages.get((k, held))
        if message is None:
            assert self.slot is not None and self.worst is not None
            t = int(self.slot[k])
            args = (state.tree.names[k], state.slot_labels[t], float(self.worst[k]))
            cap = float(state.caps[k, t])
            message = held_text(*args, cap_watts=cap) if held else breach_text(*args, cap_watts=cap)
            configured = float(state.configured_caps[k, t])
            if cap < configured - 0.5:  # say why the cap is not the one in the config
                message += f"; lowered from {configured:.0f} W by the live carbon caps"
            self.messages[(k, held)] = message
        return message

    def _find_culprits(self, state: ClusterState) -> None:
        base = self.load if self.held is None else self.load + self.held
        over = base + self.profile - state.caps
        self.slot = over.argmax(axis=1)
        self.worst = over[np.arange(over.shape[0]), self.slot]
        self.culprit = worst_on_path(self.worst, state.tree.parents, state.levels)


def held_text(domain: str, time_of_day: str, over_watts: float, *, cap_watts: float) -> str:
    """Message for a node whose power the plan holds for other services' replicas."""
    return (
        f"powercap: the plan holds the rest of domain {domain}'s cap at {time_of_day} for "
        f"other services' planned replicas; this pod needs {over_watts:.0f} W more "
        f"(cap {cap_watts:.0f} W)"
    )


def breach_text(domain: str, time_of_day: str, over_watts: float, *, cap_watts: float) -> str:
    """``"powercap: " + Breach.message()`` without building the Breach (a frozen
    dataclass costs ~2 µs; a filter may explain hundreds of nodes). Tests hold the
    two texts equal."""
    return (
        f"powercap: domain {domain} would exceed its cap at {time_of_day} "
        f"by {over_watts:.0f} W (cap {cap_watts:.0f} W)"
    )


def too_few_gpus_text(total: int, needed: int) -> str:
    """Message for a node that has fewer GPUs in all than the pod needs."""
    return f"powercap: node has {total} GPUs in all; the pod needs {needed}"


def busy_gpus_text(free: int, needed: int) -> str:
    """Message for a node whose free GPUs (by powercap's count) are too few for now."""
    return f"powercap: node has {free} free GPUs by powercap's count; the pod needs {needed}"


def worst_on_path(
    worst: NDArray[np.float64], parents: NDArray[np.int64], levels: list[NDArray[np.int64]]
) -> NDArray[np.int64]:
    """Per domain ``d``: the domain on the path root → ``d`` with the largest
    ``worst``, the rootmost on ties. ``levels[k]`` lists the domains at depth ``k``;
    one vectorised step per level, so cheap for the shallow trees of datacenters."""
    culprit = np.arange(worst.size)
    best = worst.copy()
    for level in levels[1:]:
        up = parents[level]
        take = best[up] >= best[level]
        culprit[level] = np.where(take, culprit[up], culprit[level])
        best[level] = np.where(take, best[up], best[level])
    return culprit
