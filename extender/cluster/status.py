"""PowerDomain status: what the ledger predicts and the controller measures, written by the
leader, rate-limited and only on change.

Pure: :func:`domain_statuses` (the status of every domain from a :class:`Snapshot` of the
state and the controller's last tick) and :func:`changed_enough` (is a new status worth a
write?). :class:`StatusWriter` patches ``/status`` of each PowerDomain through the raw API
(``CustomObjectsApi.patch_cluster_custom_object_status``): a domain's status is written
when it changed enough and its last write is at least ``min_interval_s`` old, or at once
when its state, breach, conditions or generation changed. A failed write is logged and
retried at the next round.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from extender.config.resources import Condition

log = logging.getLogger(__name__)

# Watts that differ by less than this (or by less than WATTS_RELATIVE of the value) are the
# same for a status: measured power moves every scrape.
WATTS_ABSOLUTE = 50.0
WATTS_RELATIVE = 0.02
_WATTS = ("predictedPeakWatts", "measuredWatts", "headroomWatts")


def rfc3339(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Snapshot:
    """What the statuses are computed from, per domain in tree order: ``predicted``
    (domains × T, the ledger without the controller's feedback), ``caps`` (raw caps,
    domains × T), the slot of ``now``, and the controller's last tick (``measured`` watts
    at ``measured_at``, ``breach_since`` unix seconds or NaN; ``None`` without a
    controller)."""

    names: Sequence[str]
    predicted: NDArray[np.float64]
    caps: NDArray[np.float64]
    slot_labels: Sequence[str]
    slot: int
    measured: NDArray[np.float64] | None = None
    measured_at: float | None = None
    breach_since: NDArray[np.float64] | None = None


def domain_statuses(
    snap: Snapshot,
    conditions: Mapping[str, Sequence[Condition]],
    generations: Mapping[str, int | None],
) -> dict[str, dict[str, Any]]:
    """The ``status`` of every domain of ``snap`` that ``generations`` names (the
    PowerDomains that exist), as the API takes it."""
    out: dict[str, dict[str, Any]] = {}
    for d, name in enumerate(snap.names):
        if name not in generations:
            continue
        peak_slot = int(np.argmax(snap.predicted[d]))
        peak = float(snap.predicted[d, peak_slot])
        status: dict[str, Any] = {
            "observedGeneration": generations[name],
            "predictedPeakWatts": round(peak, 1),
            "predictedPeakAt": snap.slot_labels[peak_slot],
            "headroomWatts": round(float(snap.caps[d, snap.slot]) - peak, 1),
        }
        breached: bool | None = None
        if snap.measured is not None and snap.measured_at is not None:
            watts = float(snap.measured[d])
            if np.isfinite(watts):
                status["measuredWatts"] = round(watts, 1)
                status["measuredAt"] = rfc3339(snap.measured_at)
        if snap.breach_since is not None:
            since = float(snap.breach_since[d])
            breached = bool(np.isfinite(since))
            status["breached"] = breached
            if breached:
                status["breachedSince"] = rfc3339(since)
        own = [c.model_dump(by_alias=True, exclude_none=True) for c in conditions.get(name, [])]
        ready = next((c for c in own if c["type"] == "Ready"), None)
        if ready is not None and ready["status"] == "False":
            status["state"] = "Invalid"
        elif breached:
            status["state"] = "Breached"
        elif breached is None and ready is None:
            status["state"] = "Unknown"
        else:
            status["state"] = "Ok"
        status["conditions"] = own
        out[name] = status
    return out


def _watts_moved(old: Any, new: Any) -> bool:
    if old is None or new is None:
        return old is not new
    return bool(abs(new - old) > max(WATTS_ABSOLUTE, WATTS_RELATIVE * abs(old)))


def changed_enough(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> tuple[bool, bool]:
    """``(worth writing, urgent)``: a status worth writing differs from ``old`` (the last
    written) in anything but noise — watts by more than ``max(50 W, 2 %)``, the peak's time,
    the measurement's time only with its watts; an urgent one changed its state, breach,
    conditions or generation, and is written without waiting for the rate limit."""
    if old is None:
        return True, True
    urgent_keys = ("state", "breached", "breachedSince", "conditions", "observedGeneration")
    if any(old.get(k) != new.get(k) for k in urgent_keys):
        return True, True
    if any(_watts_moved(old.get(k), new.get(k)) for k in _WATTS):
        return True, False
    return old.get("predictedPeakAt") != new.get("predictedPeakAt"), False


@dataclass
class StatusWriter:
    """Writes the statuses it is given (:meth:`write`) through ``patch(name, status)``,
    rate-limited per domain (see the module doc)."""

    patch: Callable[[str, dict[str, Any]], object]
    min_interval_s: float = 30.0
    written: dict[str, dict[str, Any]] = field(default_factory=dict)
    written_at: dict[str, float] = field(default_factory=dict)
    writes: int = 0
    errors: int = 0

    def write(self, statuses: Mapping[str, dict[str, Any]], now: float) -> list[str]:
        """Patch the statuses worth writing now; returns the names written."""
        done: list[str] = []
        for name, status in statuses.items():
            worth, urgent = changed_enough(self.written.get(name), status)
            if not worth:
                continue
            recent = now - self.written_at.get(name, -np.inf) < self.min_interval_s
            if recent and not urgent:
                continue
            try:
                self.patch(name, status)
            except Exception as exc:
                self.errors += 1
                log.warning("PowerDomain/%s status: %s: %s", name, type(exc).__name__, exc)
                continue
            self.written[name] = status
            self.written_at[name] = now
            self.writes += 1
            done.append(name)
        return done


def kubernetes_patch(api_client: Any, timeouts: Any) -> Callable[[str, dict[str, Any]], object]:
    """``patch(name, status)``: a merge patch of ``/status`` of the PowerDomain ``name``."""
    from kubernetes import client

    from extender.cluster.client import call_timeout

    custom = client.CustomObjectsApi(api_client)

    def patch(name: str, status: dict[str, Any]) -> object:
        return custom.patch_cluster_custom_object_status(
            "powercap.io",
            "v1alpha1",
            "powerdomains",
            name,
            {"status": status},
            _request_timeout=call_timeout(timeouts),
        )

    return patch
