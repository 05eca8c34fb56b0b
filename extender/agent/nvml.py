"""The NVML calls the agent makes, as a typed Protocol, and the adapter to ``pynvml``.

``pynvml`` is the module of the ``nvidia-ml-py`` distribution (NVIDIA's own bindings). It is
imported lazily, in :func:`load_pynvml`, so nothing else in the agent needs the library, and
a machine without a driver fails there with one clear message.

Units are NVML's: milliwatts for every limit and for the draw. What each call returns, as
``pynvml`` returns it (the fake in :mod:`extender.agent.fake` returns the same shapes):

* ``nvmlDeviceGetCount()`` → ``int``;
* ``nvmlDeviceGetHandleByIndex(i)`` → an opaque handle (a ctypes pointer);
* ``nvmlDeviceGetUUID(h)`` → ``str`` such as ``"GPU-5e0c3f64-…"`` (``bytes`` from bindings
  older than 11.515; both are accepted);
* ``nvmlDeviceGetPowerManagementLimitConstraints(h)`` → a two-item ``list``
  ``[min_mW, max_mW]``;
* ``nvmlDeviceGetPowerManagementDefaultLimit(h)``, ``nvmlDeviceGetPowerManagementLimit(h)``,
  ``nvmlDeviceGetEnforcedPowerLimit(h)``, ``nvmlDeviceGetPowerUsage(h)`` → ``int`` mW;
* ``nvmlDeviceSetPowerManagementLimit(h, mW)`` → ``None``; needs root (CAP_SYS_ADMIN).

Failures raise ``pynvml.NVMLError`` — in fact a subclass per code, such as
``NVMLError_NoPermission`` (code 4) or ``NVMLError_NotSupported`` (code 3), each with the code
in ``.value``. :class:`PynvmlLibrary` turns them into :class:`NvmlError`, so the agent and
the fake share one error type. ``nvmlDeviceGetPowerManagementLimit`` (the limit set through
NVML, as opposed to the enforced one, the least of every source of limits) is the one call
beyond the issue's list: the agent writes it back unchanged once at start to learn whether
it may set limits at all, before any request needs it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

# nvmlReturn_t codes (nvml.h), the ones the agent tells apart
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999

# The reason label of a code, in metrics and in NodePowerLimit status.
REASONS: dict[int, str] = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "InvalidArgument",
    NVML_ERROR_NOT_SUPPORTED: "NotSupported",
    NVML_ERROR_NO_PERMISSION: "NoPermission",
    NVML_ERROR_NOT_FOUND: "NotFound",
    NVML_ERROR_DRIVER_NOT_LOADED: "DriverNotLoaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "LibraryNotFound",
    NVML_ERROR_GPU_IS_LOST: "GpuIsLost",
}


def reason_of(code: int) -> str:
    """The reason label of an NVML return code (``Unknown`` for the rest)."""
    return REASONS.get(code, "Unknown")


class NvmlError(Exception):
    """An NVML call failed: ``code`` is the nvmlReturn_t, ``message`` NVML's own text
    (``nvmlErrorString``, e.g. ``Insufficient Permissions``)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"NVML error {code} ({reason_of(code)}): {message}")
        self.code = code
        self.message = message

    @property
    def reason(self) -> str:
        return reason_of(self.code)


class Nvml(Protocol):
    """The NVML calls the agent makes, named as in NVML; every failure raises
    :class:`NvmlError`. Handles are opaque."""

    def nvmlInit(self) -> None: ...

    def nvmlShutdown(self) -> None: ...

    def nvmlDeviceGetCount(self) -> int: ...

    def nvmlDeviceGetHandleByIndex(self, index: int) -> object: ...

    def nvmlDeviceGetUUID(self, handle: object) -> str | bytes: ...

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: object) -> list[int]: ...

    def nvmlDeviceGetPowerManagementDefaultLimit(self, handle: object) -> int: ...

    def nvmlDeviceGetPowerManagementLimit(self, handle: object) -> int: ...

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: object) -> int: ...

    def nvmlDeviceGetPowerUsage(self, handle: object) -> int: ...

    def nvmlDeviceSetPowerManagementLimit(self, handle: object, limit: int) -> None: ...


class NvmlUnavailable(RuntimeError):
    """``nvidia-ml-py`` is not installed; the message names the fix."""


def load_pynvml() -> ModuleType:
    """The ``pynvml`` module, imported now."""
    try:
        return importlib.import_module("pynvml")
    except ImportError as exc:
        raise NvmlUnavailable(
            "the Python module pynvml is missing: install the nvidia-ml-py package "
            "(a dependency of powercap-scheduler)"
        ) from exc


class PynvmlLibrary:
    """:class:`Nvml` on the real ``pynvml`` module: the same calls, with
    ``pynvml.NVMLError`` turned into :class:`NvmlError`."""

    def __init__(self, module: ModuleType | None = None) -> None:
        self._m: Any = module if module is not None else load_pynvml()

    def _call(self, name: str, *args: object) -> Any:
        try:
            return getattr(self._m, name)(*args)
        except self._m.NVMLError as exc:
            code = int(getattr(exc, "value", NVML_ERROR_UNKNOWN))
            raise NvmlError(code, str(exc)) from exc

    def nvmlInit(self) -> None:
        self._call("nvmlInit")

    def nvmlShutdown(self) -> None:
        self._call("nvmlShutdown")

    def nvmlDeviceGetCount(self) -> int:
        return int(self._call("nvmlDeviceGetCount"))

    def nvmlDeviceGetHandleByIndex(self, index: int) -> object:
        return self._call("nvmlDeviceGetHandleByIndex", index)

    def nvmlDeviceGetUUID(self, handle: object) -> str | bytes:
        value = self._call("nvmlDeviceGetUUID", handle)
        return value if isinstance(value, bytes) else str(value)

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: object) -> list[int]:
        low, high = self._call("nvmlDeviceGetPowerManagementLimitConstraints", handle)
        return [int(low), int(high)]

    def nvmlDeviceGetPowerManagementDefaultLimit(self, handle: object) -> int:
        return int(self._call("nvmlDeviceGetPowerManagementDefaultLimit", handle))

    def nvmlDeviceGetPowerManagementLimit(self, handle: object) -> int:
        return int(self._call("nvmlDeviceGetPowerManagementLimit", handle))

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: object) -> int:
        return int(self._call("nvmlDeviceGetEnforcedPowerLimit", handle))

    def nvmlDeviceGetPowerUsage(self, handle: object) -> int:
        return int(self._call("nvmlDeviceGetPowerUsage", handle))

    def nvmlDeviceSetPowerManagementLimit(self, handle: object, limit: int) -> None:
        self._call("nvmlDeviceSetPowerManagementLimit", handle, limit)


def uuid_text(value: str | bytes) -> str:
    """A UUID as text, whichever type the bindings returned."""
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class GpuReading:
    """One GPU as NVML reports it, in milliwatts; ``error`` when a read failed (the other
    fields are then 0)."""

    index: int
    uuid: str
    min_mw: int
    max_mw: int
    default_mw: int
    limit_mw: int  # the limit set through NVML (what a set changes)
    enforced_mw: int  # the least of every limit, what the GPU holds to
    power_mw: int
    error: NvmlError | None = None


def read_gpu(nvml: Nvml, index: int) -> tuple[object | None, GpuReading]:
    """The handle and reading of GPU ``index``; never raises :class:`NvmlError` (a failed
    read is in ``reading.error``, with ``None`` for the handle when it could not be had)."""
    handle: object | None = None
    uuid = ""
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        uuid = uuid_text(nvml.nvmlDeviceGetUUID(handle))
        low, high = nvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)
        default = nvml.nvmlDeviceGetPowerManagementDefaultLimit(handle)
        limit = nvml.nvmlDeviceGetPowerManagementLimit(handle)
        enforced = nvml.nvmlDeviceGetEnforcedPowerLimit(handle)
    except NvmlError as exc:
        return handle, GpuReading(
            index, uuid, 0, 0, default_mw=0, limit_mw=0, enforced_mw=0, power_mw=0, error=exc
        )
    try:
        power = nvml.nvmlDeviceGetPowerUsage(handle)
    except NvmlError:  # some boards report no draw; the limits still hold
        power = 0
    return handle, GpuReading(
        index,
        uuid,
        low,
        high,
        default_mw=default,
        limit_mw=limit,
        enforced_mw=enforced,
        power_mw=power,
    )
