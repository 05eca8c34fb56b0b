"""A read-only look at the GPUs through real NVML (``make gpu-check``, ``powercap agent
--check``): each GPU's constraints, default, set and enforced limits and draw. It makes no
set call at all, so it can run on any machine, a production node included.

``python -m extender.agent.check`` prints the report; exit 0 when NVML answered (any number
of GPUs), 1 when there is no NVIDIA driver or GPU here, with a sentence saying so.
"""

from __future__ import annotations

import sys

from extender.agent.nvml import (
    NVML_ERROR_DRIVER_NOT_LOADED,
    NVML_ERROR_LIBRARY_NOT_FOUND,
    Nvml,
    NvmlError,
    NvmlUnavailable,
    PynvmlLibrary,
    read_gpu,
)

NO_GPU = (NVML_ERROR_LIBRARY_NOT_FOUND, NVML_ERROR_DRIVER_NOT_LOADED)


def report(nvml: Nvml) -> list[str]:
    """Lines describing every GPU (reads only). Raises :class:`NvmlError` when NVML
    cannot start."""
    nvml.nvmlInit()
    try:
        count = nvml.nvmlDeviceGetCount()
        lines = [f"NVML reports {count} GPU(s)"]
        for index in range(count):
            _, g = read_gpu(nvml, index)
            if g.error is not None:
                lines.append(f"GPU {index} {g.uuid or '?'}: cannot be read: {g.error}")
                continue
            w = {k: v / 1000 for k, v in vars(g).items() if k.endswith("_mw")}
            lines.append(
                f"GPU {index} {g.uuid}: limit constraints {w['min_mw']:g}-{w['max_mw']:g} W,"
                f" default {w['default_mw']:g} W, set {w['limit_mw']:g} W,"
                f" enforced {w['enforced_mw']:g} W, drawing {w['power_mw']:g} W"
            )
        return lines
    finally:
        nvml.nvmlShutdown()


def main(nvml: Nvml | None = None) -> int:
    """Print :func:`report` of the real NVML (or ``nvml``); 1 with a plain message when
    there is no NVIDIA GPU or driver."""
    try:
        lib = nvml if nvml is not None else PynvmlLibrary()
        lines = report(lib)
    except NvmlUnavailable as exc:
        print(f"gpu-check: {exc}", file=sys.stderr)
        return 1
    except NvmlError as exc:
        if exc.code in NO_GPU:
            print(
                f"gpu-check: no NVIDIA GPU here (NVML: {exc.message}); nothing to check",
                file=sys.stderr,
            )
        else:
            print(f"gpu-check: NVML failed: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    print("gpu-check: read only, no setting was changed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
