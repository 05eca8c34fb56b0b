"""The power-domain tree: site → row → rack/PDU, each with a cap in watts per slot."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class PowerTree:
    """Domains in topological order (every parent before its children).

    ``caps`` is a (domains × T) matrix; a constant cap is a row of equal values.
    ``membership[a, d]`` is true when ``a`` is ``d`` or one of its ancestors, so the
    ancestors of ``d`` are ``np.flatnonzero(membership[:, d])``.
    """

    names: tuple[str, ...]
    parents: NDArray[np.int64]  # -1 for the root(s)
    caps: NDArray[np.float64]
    membership: NDArray[np.bool_] = field(repr=False)
    depth: NDArray[np.int64] = field(repr=False)
    index: dict[str, int] = field(repr=False, compare=False)

    @staticmethod
    def build(
        names: Sequence[str], parents: Sequence[str | None], caps: NDArray[np.float64]
    ) -> PowerTree:
        """Build a tree from parallel lists; reorders so parents precede children.

        Raises ``ValueError`` for unknown parents, duplicate names or cycles.
        """
        if len(set(names)) != len(names):
            raise ValueError("duplicate domain names")
        position = {n: i for i, n in enumerate(names)}
        for n, p in zip(names, parents, strict=True):
            if p is not None and p not in position:
                raise ValueError(f"domain {n!r}: unknown parent {p!r}")
        order: list[int] = []
        placed: set[str] = set()
        remaining = list(range(len(names)))
        while remaining:
            ready = [i for i in remaining if parents[i] is None or parents[i] in placed]
            if not ready:
                cycle = sorted(names[i] for i in remaining)
                raise ValueError(f"domains form a cycle: {', '.join(cycle)}")
            for i in ready:
                order.append(i)
                placed.add(names[i])
            remaining = [i for i in remaining if names[i] not in placed]
        ordered = tuple(names[i] for i in order)
        index = {n: i for i, n in enumerate(ordered)}
        parent_idx = np.array(
            [-1 if parents[i] is None else index[str(parents[i])] for i in order], dtype=np.int64
        )
        d = len(ordered)
        membership = np.eye(d, dtype=bool)
        depth = np.zeros(d, dtype=np.int64)
        for i in range(d):  # parents come first, so their rows are complete
            p = parent_idx[i]
            if p >= 0:
                membership[:, i] |= membership[:, p]
                depth[i] = depth[p] + 1
        caps_arr = np.asarray(caps, dtype=np.float64)[order]
        caps_arr.setflags(write=False)
        membership.setflags(write=False)
        return PowerTree(ordered, parent_idx, caps_arr, membership, depth, index)

    @property
    def size(self) -> int:
        return len(self.names)

    @property
    def leaves(self) -> NDArray[np.int64]:
        """Indices of domains with no children."""
        has_child = np.zeros(self.size, dtype=bool)
        has_child[self.parents[self.parents >= 0]] = True
        return np.flatnonzero(~has_child)

    def unknown_domain_message(self, name: str, *, kind: str = "domain", detail: str = "") -> str:
        """``unknown {kind} {name!r}{detail}; domains are: …``: the message for a name that
        is not a domain here, listing the first 10 domains (then ``, …`` if there are more).
        Callers put where the name came from in front."""
        listing = ", ".join(self.names[:10]) + (", …" if self.size > 10 else "")
        return f"unknown {kind} {name!r}{detail}; domains are: {listing}"

    @cached_property
    def levels(self) -> tuple[NDArray[np.int64], ...]:
        """Domains by depth, the root(s) first: for passes down the tree, one
        vectorised step per level (a datacenter's tree has a handful)."""
        return tuple(np.flatnonzero(self.depth == k) for k in range(int(self.depth.max()) + 1))

    @cached_property
    def paths(self) -> tuple[NDArray[np.int64], ...]:
        """Per domain, :meth:`ancestors` (itself and every domain above it, root first),
        computed once: adding a replica touches these few rows, not a mask of all."""
        out = tuple(np.flatnonzero(self.membership[:, d]) for d in range(self.size))
        for path in out:
            path.setflags(write=False)
        return out

    def sum_on_path(self, values: NDArray[np.float64]) -> NDArray[np.float64]:
        """Per domain, the sum of ``values`` over it and its ancestors
        (``values @ membership`` without the (domains × domains) product)."""
        out = np.array(values, dtype=np.float64)
        for level in self.levels[1:]:
            out[level] += out[self.parents[level]]
        return out

    def all_on_path(self, mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
        """Per domain, whether ``mask`` holds for it and every ancestor."""
        out = np.array(mask, dtype=bool)
        for level in self.levels[1:]:
            out[level] &= out[self.parents[level]]
        return out

    def ancestors(self, domain: int) -> NDArray[np.int64]:
        """``domain`` and every domain above it, root first."""
        return np.flatnonzero(self.membership[:, domain])

    def with_caps(self, caps: NDArray[np.float64]) -> PowerTree:
        """The same tree with another (domains × T) cap matrix."""
        caps_arr = np.array(caps, dtype=np.float64)
        if caps_arr.shape != self.caps.shape:
            raise ValueError(f"caps shape {caps_arr.shape} != {self.caps.shape}")
        caps_arr.setflags(write=False)
        return PowerTree(
            self.names, self.parents, caps_arr, self.membership, self.depth, self.index
        )
