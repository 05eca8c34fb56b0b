"""An NVML fake for tests: no GPU here, and tests never change a real GPU's settings.

It answers the calls of :class:`~extender.agent.nvml.Nvml` with the shapes the real
``pynvml`` returns (a ``[min, max]`` list of milliwatts for the constraints, ``str`` UUIDs
``GPU-`` + 36 characters, ``int`` milliwatts elsewhere, ``None`` from a set) and fails the way
NVML fails, with the real codes and ``nvmlErrorString`` texts:

* setting a limit without root → ``NVML_ERROR_NO_PERMISSION`` (4, "Insufficient
  Permissions");
* a board whose power limit cannot be changed (many consumer and some virtualised GPUs) →
  ``NVML_ERROR_NOT_SUPPORTED`` (3, "Not Supported"), on the constraints and on the set;
* a limit outside ``[min, max]`` → ``NVML_ERROR_INVALID_ARGUMENT`` (2, "Invalid Argument");
  NVML does not clamp, the agent must;
* a GPU fallen off the bus → ``NVML_ERROR_GPU_IS_LOST`` (15, "GPU is lost") on every call
  with its handle; a removed GPU lowers ``nvmlDeviceGetCount``.

:data:`BOARDS` are the power-limit constraints of real boards as ``nvidia-smi -q -d POWER``
prints them ("Min Power Limit", "Max Power Limit", "Default Power Limit").
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from extender.agent.nvml import (
    NVML_ERROR_GPU_IS_LOST,
    NVML_ERROR_INVALID_ARGUMENT,
    NVML_ERROR_NO_PERMISSION,
    NVML_ERROR_NOT_SUPPORTED,
    NVML_ERROR_UNINITIALIZED,
    NvmlError,
)

MESSAGES = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
}


def nvml_error(code: int) -> NvmlError:
    """The error NVML raises for ``code``, with its text."""
    return NvmlError(code, MESSAGES.get(code, "Unknown Error"))


@dataclass(frozen=True)
class Board:
    """A board's power-limit constraints in milliwatts."""

    name: str
    min_mw: int
    max_mw: int
    default_mw: int


# (min, max, default) W as nvidia-smi reports them for these boards.
BOARDS: dict[str, Board] = {
    "H100-SXM5-80GB": Board("NVIDIA H100 80GB HBM3", 200_000, 700_000, 700_000),
    "A100-SXM4-80GB": Board("NVIDIA A100-SXM4-80GB", 100_000, 400_000, 400_000),
    "L4": Board("NVIDIA L4", 40_000, 72_000, 72_000),
    "T4": Board("Tesla T4", 60_000, 70_000, 70_000),
}


@dataclass
class FakeGpu:
    """One fake GPU. ``settable`` False answers NO_PERMISSION to a set (no root);
    ``supported`` False answers NOT_SUPPORTED to the constraints and to a set; ``lost``
    answers GPU_IS_LOST to every call."""

    uuid: str
    board: Board
    limit_mw: int = 0  # the limit set through NVML; 0 means the default
    power_mw: int = 0
    settable: bool = True
    supported: bool = True
    lost: bool = False

    def __post_init__(self) -> None:
        if self.limit_mw == 0:
            self.limit_mw = self.board.default_mw


@dataclass
class FakeNvml:
    """:class:`~extender.agent.nvml.Nvml` over :attr:`gpus` (index = position). Every set
    that succeeded is in :attr:`sets` as ``(uuid, mW)``. Thread-safe."""

    gpus: list[FakeGpu]
    sets: list[tuple[str, int]] = field(default_factory=list)
    initialised: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def of(
        cls, board: str, count: int, *, settable: bool = True, supported: bool = True
    ) -> FakeNvml:
        """``count`` GPUs of one :data:`BOARDS` entry, drawing a third of their default."""
        b = BOARDS[board]
        return cls(
            [
                FakeGpu(
                    uuid=f"GPU-{i:08x}-5e0c-3f64-9a1d-{list(BOARDS).index(board):012d}",
                    board=b,
                    power_mw=b.default_mw // 3,
                    settable=settable,
                    supported=supported,
                )
                for i in range(count)
            ]
        )

    def _gpu(self, handle: object) -> FakeGpu:
        if not self.initialised:
            raise nvml_error(NVML_ERROR_UNINITIALIZED)
        assert isinstance(handle, FakeGpu), f"not a handle of this fake: {handle!r}"
        if handle.lost:
            raise nvml_error(NVML_ERROR_GPU_IS_LOST)
        return handle

    def nvmlInit(self) -> None:
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        if not self.initialised:
            raise nvml_error(NVML_ERROR_UNINITIALIZED)
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> object:
        if not 0 <= index < self.nvmlDeviceGetCount():
            raise nvml_error(NVML_ERROR_INVALID_ARGUMENT)
        return self._gpu(self.gpus[index])

    def nvmlDeviceGetUUID(self, handle: object) -> str | bytes:
        return self._gpu(handle).uuid

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: object) -> list[int]:
        gpu = self._gpu(handle)
        if not gpu.supported:
            raise nvml_error(NVML_ERROR_NOT_SUPPORTED)
        return [gpu.board.min_mw, gpu.board.max_mw]

    def nvmlDeviceGetPowerManagementDefaultLimit(self, handle: object) -> int:
        gpu = self._gpu(handle)
        if not gpu.supported:
            raise nvml_error(NVML_ERROR_NOT_SUPPORTED)
        return gpu.board.default_mw

    def nvmlDeviceGetPowerManagementLimit(self, handle: object) -> int:
        return self._gpu(handle).limit_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: object) -> int:
        return self._gpu(handle).limit_mw

    def nvmlDeviceGetPowerUsage(self, handle: object) -> int:
        gpu = self._gpu(handle)
        return min(gpu.power_mw, gpu.limit_mw)

    def nvmlDeviceSetPowerManagementLimit(self, handle: object, limit: int) -> None:
        gpu = self._gpu(handle)
        if not gpu.supported:
            raise nvml_error(NVML_ERROR_NOT_SUPPORTED)
        if not gpu.settable:
            raise nvml_error(NVML_ERROR_NO_PERMISSION)
        if not gpu.board.min_mw <= limit <= gpu.board.max_mw:
            raise nvml_error(NVML_ERROR_INVALID_ARGUMENT)
        with self._lock:
            gpu.limit_mw = int(limit)
            self.sets.append((gpu.uuid, int(limit)))
