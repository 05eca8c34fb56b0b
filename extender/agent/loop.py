"""The agent's reconcile loop.

:class:`Agent` holds NVML: :meth:`Agent.start` initialises it and learns whether limits
may be set (it writes each GPU's current limit back unchanged — NVML has no other way to
ask); :meth:`Agent.reconcile` reads every GPU, works out its target
(:mod:`extender.agent.limits`), sets the limits that differ, reads them back and returns
the status to write; :meth:`Agent.restore_defaults` puts every GPU back on its default
limit. One lock serialises them, so a restore on exit never races a round.

:class:`AgentLoop` runs the rounds: fetch the node's ``NodePowerLimit``, reconcile, write
its status when it changed, then wait for a change of the object or ``resync_s`` (the
periodic re-read that notices a limit changed behind the agent's back, a GPU lost, the draw
moved). :meth:`AgentLoop.stop` restores the defaults when ``restore_on_exit``.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any, Literal

from extender.agent.kube import RequestSource
from extender.agent.limits import Constraints, requested_watts, target, unmatched, watts_to_mw
from extender.agent.metrics import AgentMetrics
from extender.agent.nvml import (
    NVML_ERROR_NO_PERMISSION,
    NVML_ERROR_NOT_SUPPORTED,
    GpuReading,
    Nvml,
    NvmlError,
    read_gpu,
)
from extender.agent.resource import (
    Condition,
    GpuStatus,
    NodePowerLimit,
    NodePowerLimitStatus,
    RequestError,
    parse,
)

log = logging.getLogger(__name__)

CONDITION = "Applied"
REFUSALS = (NVML_ERROR_NO_PERMISSION, NVML_ERROR_NOT_SUPPORTED)
NO_PERMISSION_SENTENCE = (
    "cannot set GPU power limits: NVML answered 'Insufficient Permissions' "
    "(NVML_ERROR_NO_PERMISSION); the agent's container must run as root (UID 0) with "
    "CAP_SYS_ADMIN, see docs/power-limits.md; limits stay as they are and "
    "NodePowerLimit status says canSetLimits: false"
)
NOT_SUPPORTED_SENTENCE = (
    "cannot set the power limit of GPU %s (%s): NVML answered 'Not Supported' "
    "(NVML_ERROR_NOT_SUPPORTED); this board or its driver does not allow power limits"
)


def _w(mw: int) -> float:
    return mw / 1000


class Agent:
    """NVML on one node, for the loop and the exit path."""

    def __init__(self, nvml: Nvml, *, metrics: AgentMetrics, dry_run: bool = False) -> None:
        self.nvml = nvml
        self.metrics = metrics
        self.dry_run = dry_run
        self.can_set: bool | None = None  # unknown until a set is tried
        self._lock = threading.Lock()
        self._closed = False  # after close(): NVML is shut down, nothing more is set
        self._told: set[str] = set()  # refusals already logged, once each

    def start(self) -> None:
        """Initialise NVML (raises :class:`NvmlError`, e.g. LibraryNotFound on a node
        without the driver); outside a dry run, learn whether limits may be set."""
        with self._lock:
            self.nvml.nvmlInit()
            if not self.dry_run:
                self._probe()

    def _probe(self) -> None:
        for index in range(self.nvml.nvmlDeviceGetCount()):
            handle, reading = read_gpu(self.nvml, index)
            if handle is None or reading.error is not None:
                continue
            try:  # the limit it has, written back: a change of nothing
                self.nvml.nvmlDeviceSetPowerManagementLimit(handle, reading.limit_mw)
            except NvmlError as exc:
                self._refused(reading, exc)
                return
        if self.can_set is None:
            self.can_set = True
        self.metrics.can_set.set(1 if self.can_set else 0)

    def _refused(self, reading: GpuReading, exc: NvmlError) -> None:
        self.metrics.errors.labels(exc.reason).inc()
        if exc.code not in REFUSALS:
            log.warning("GPU %d (%s): setting its power limit failed: %s", *_id(reading), exc)
            return
        self.can_set = False
        self.metrics.can_set.set(0)
        if exc.reason in self._told:
            return
        self._told.add(exc.reason)
        if exc.code == NVML_ERROR_NO_PERMISSION:
            log.error(NO_PERMISSION_SENTENCE)
        else:
            log.error(NOT_SUPPORTED_SENTENCE, *_id(reading))

    def reconcile(
        self, request: NodePowerLimit | None, *, hold: bool = False
    ) -> NodePowerLimitStatus:
        """One round: every GPU to its target; the status of what holds now. With
        ``hold`` (the request could not be read) nothing is set, only read and reported."""
        with self._lock:
            if self._closed:
                raise AgentClosed("the agent is closed")
            return self._reconcile(request, hold=hold)

    def _reconcile(self, request: NodePowerLimit | None, *, hold: bool) -> NodePowerLimitStatus:
        spec = request.spec if request is not None else None
        count = self.nvml.nvmlDeviceGetCount()
        readings: list[GpuReading] = []
        gpus: list[GpuStatus] = []
        problems: list[tuple[str, str]] = []  # (reason, message)
        for index in range(count):
            handle, reading = read_gpu(self.nvml, index)
            if reading.error is not None or handle is None:
                err = reading.error
                reason = err.reason if err is not None else "Unknown"
                self.metrics.errors.labels(reason).inc()
                message = f"GPU {index}: reading it failed: {err}"
                problems.append((reason, message))
                gpus.append(
                    GpuStatus(index=index, uuid=reading.uuid, reason=reason, message=message)
                )
                readings.append(reading)
                continue
            c = Constraints(reading.min_mw, reading.max_mw, reading.default_mw)
            asked = requested_watts(spec, index, reading.uuid)
            t = target(None if asked is None else watts_to_mw(asked), c)
            why: str | None = None
            note: str | None = None
            if t.clamped:
                note = (
                    f"requested {asked:g} W is outside [{_w(c.min_mw):g}, {_w(c.max_mw):g}] W; "
                    f"clamped to {_w(t.mw):g} W"
                )
            if hold:
                why, note = (
                    "InvalidRequest",
                    "the request cannot be read: the limit is left as it is",
                )
            elif reading.limit_mw != t.mw:
                if self.dry_run:
                    why, note = "DryRun", f"would set {_w(t.mw):g} W (dry run)"
                else:
                    try:
                        self.nvml.nvmlDeviceSetPowerManagementLimit(handle, t.mw)
                    except NvmlError as exc:
                        self._refused(reading, exc)
                        why, note = exc.reason, f"setting {_w(t.mw):g} W failed: {exc}"
                        problems.append((exc.reason, f"GPU {index}: {note}"))
                    else:
                        log.info(
                            "GPU %d (%s): power limit %g W -> %g W",
                            index,
                            reading.uuid,
                            _w(reading.limit_mw),
                            _w(t.mw),
                        )
                        if self.can_set is None:
                            self.can_set = True
                            self.metrics.can_set.set(1)
                        _, reading = read_gpu(self.nvml, index)
            readings.append(reading)
            gpus.append(
                GpuStatus(
                    index=index,
                    uuid=reading.uuid,
                    min_watts=_w(c.min_mw),
                    max_watts=_w(c.max_mw),
                    default_watts=_w(c.default_mw),
                    requested_watts=asked,
                    target_watts=_w(reading.limit_mw if hold else t.mw),
                    enforced_watts=_w(reading.enforced_mw) if reading.error is None else None,
                    reason=why,
                    message=note,
                )
            )
        self.metrics.readings(readings)
        if spec is not None:
            for entry in unmatched(spec, {r.index: r.uuid for r in readings}):
                problems.append(("UnknownGpu", f"{entry} names no GPU of this node"))
        generation = request.metadata.get("generation") if request is not None else None
        return NodePowerLimitStatus(
            observed_generation=generation,
            can_set_limits=self.can_set,
            gpus=gpus,
            conditions=[self._condition(spec is None or _empty(request), problems, generation)],
        )

    def _condition(
        self, withdrawn: bool, problems: list[tuple[str, str]], generation: int | None
    ) -> Condition:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        status: Literal["True", "False", "Unknown"]
        if self.dry_run:
            status, reason, message = "Unknown", "DryRun", "dry run: no limit is set"
        elif problems:
            status, reason = "False", problems[0][0]
            message = "; ".join(m for _, m in problems)
        elif withdrawn:
            status, reason, message = "True", "Defaults", "no request: every GPU on its default"
        else:
            status, reason, message = "True", "Applied", "every GPU holds its requested limit"
        return Condition(
            type=CONDITION,
            status=status,
            reason=reason,
            message=message,
            observed_generation=generation,
            last_transition_time=now,
        )

    def restore_defaults(self) -> int:
        """Every GPU back on its default limit; returns how many were changed. Failures
        are logged and counted, never raised (this runs on the way out)."""
        with self._lock:
            return self._restore_defaults()

    def _restore_defaults(self) -> int:
        changed = 0
        if self.dry_run or self._closed:
            return 0
        try:
            count = self.nvml.nvmlDeviceGetCount()
        except NvmlError as exc:
            log.error("restoring default power limits: %s", exc)
            return 0
        for index in range(count):
            handle, reading = read_gpu(self.nvml, index)
            if handle is None or reading.error is not None:
                continue
            if reading.limit_mw == reading.default_mw:
                continue
            try:
                self.nvml.nvmlDeviceSetPowerManagementLimit(handle, reading.default_mw)
            except NvmlError as exc:
                self._refused(reading, exc)
            else:
                changed += 1
                log.info(
                    "GPU %d (%s): default power limit %g W restored",
                    index,
                    reading.uuid,
                    _w(reading.default_mw),
                )
        return changed

    def close(self, *, restore: bool) -> int:
        """The way out, in one hold of the lock so no round slips in between: restore the
        defaults when ``restore`` (returns how many GPUs changed), shut NVML down; every
        later :meth:`reconcile` raises :class:`AgentClosed`."""
        with self._lock:
            restored = self._restore_defaults() if restore else 0
            self._closed = True
            try:
                self.nvml.nvmlShutdown()
            except NvmlError as exc:
                log.debug("nvmlShutdown: %s", exc)
            return restored


class AgentClosed(RuntimeError):
    """A round after :meth:`Agent.close`."""


def _id(reading: GpuReading) -> tuple[int, str]:
    return reading.index, reading.uuid


def _empty(request: NodePowerLimit | None) -> bool:
    return request is None or (request.spec.watts_per_gpu is None and not request.spec.gpus)


def status_document(status: NodePowerLimitStatus) -> dict[str, Any]:
    return status.model_dump(by_alias=True, exclude_none=True, mode="json")


def carry_transitions(new: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
    """``new`` with each condition's ``lastTransitionTime`` taken from ``old`` when its
    status did not change (so an unchanged status compares equal and is not rewritten)."""
    before = {c.get("type"): c for c in (old or {}).get("conditions") or []}
    for cond in new.get("conditions") or []:
        prev = before.get(cond["type"])
        if prev is not None and prev.get("status") == cond["status"]:
            cond["lastTransitionTime"] = prev.get("lastTransitionTime", cond["lastTransitionTime"])
    return new


class AgentLoop:
    """The rounds of :class:`Agent` against a :class:`RequestSource`."""

    def __init__(
        self,
        agent: Agent,
        source: RequestSource,
        *,
        resync_s: float = 30.0,
        restore_on_exit: bool = True,
    ) -> None:
        self.agent = agent
        self.source = source
        self.resync_s = resync_s
        self.restore_on_exit = restore_on_exit
        self.stopping = threading.Event()
        self.rounds = 0
        self._thread: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        return self.rounds > 0

    def round(self) -> tuple[dict[str, Any] | None, str]:
        """Fetch, reconcile, write the status when it changed; returns the object and the
        resourceVersion to wait from."""
        obj, rv = self.source.fetch()
        request: NodePowerLimit | None = None
        problem: str | None = None
        if obj is not None:
            try:
                request = parse(obj)
            except RequestError as exc:
                problem = str(exc)
        if problem is not None:
            # a request the agent cannot read changes nothing; the status says why
            log.error("%s", problem)
            status = self.agent.reconcile(None, hold=True)
            status.conditions = [
                Condition(
                    type=CONDITION,
                    status="False",
                    reason="InvalidRequest",
                    message=problem,
                    last_transition_time=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                )
            ]
        else:
            status = self.agent.reconcile(request)
        if self.stopping.is_set():
            return obj, rv
        if obj is not None:
            old = obj.get("status")
            doc = carry_transitions(status_document(status), old)
            if doc != old and self.source.write_status(obj, doc):
                rv = ""  # our own write is a change: fetch again rather than wake on it
        self.rounds += 1
        return obj, rv

    def run(self) -> None:
        """Rounds until :meth:`stop`; errors are logged and retried after a pause."""
        while not self.stopping.is_set():
            try:
                _, rv = self.round()
                if rv and not self.stopping.is_set():
                    self.source.wait(rv, max(1, round(self.resync_s)))
            except Exception:  # the API server or NVML failed this round: try again
                if self.stopping.is_set():
                    return  # the round was cut by the way out
                log.exception("agent round failed; retrying in %g s", self.resync_s)
                self.stopping.wait(self.resync_s)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="powercap-agent", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the rounds; with ``restore_on_exit`` put every GPU back on its default
        (at once: a round waiting on a watch is not waited for)."""
        self.stopping.set()
        restored = self.agent.close(restore=self.restore_on_exit)
        if self.restore_on_exit:
            log.info("on exit: %d GPU(s) restored to their default power limit", restored)
