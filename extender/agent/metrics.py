"""The agent's Prometheus metrics, on a registry of its own.

* ``powercap_agent_gpu_power_limit_watts{gpu,uuid}`` — the enforced power limit, the
  meaning of DCGM's ``DCGM_FI_DEV_ENFORCED_POWER_LIMIT`` (NVML's enforced limit);
* ``powercap_agent_gpu_power_limit_default_watts``, ``…_min_watts``, ``…_max_watts``
  ``{gpu,uuid}`` — the GPU's constraints;
* ``powercap_agent_gpu_power_watts{gpu,uuid}`` — the draw (``DCGM_FI_DEV_POWER_USAGE``);
* ``powercap_agent_apply_errors_total{reason}`` — failed sets and reads, by NVML reason
  (``NoPermission``, ``NotSupported``, ``GpuIsLost``, …);
* ``powercap_agent_can_set_limits`` — 1 when the agent may set limits, 0 when NVML refused
  for want of privilege or support (the controller then goes to the next rung);
* ``powercap_agent_gpus`` — GPUs NVML reports.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from extender.agent.nvml import GpuReading

GPU_LABELS = ("gpu", "uuid")


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.limit = Gauge(
            "powercap_agent_gpu_power_limit_watts",
            "Enforced power limit of the GPU (as DCGM_FI_DEV_ENFORCED_POWER_LIMIT), W",
            GPU_LABELS,
            registry=r,
        )
        self.default = Gauge(
            "powercap_agent_gpu_power_limit_default_watts",
            "Default power limit of the GPU, W",
            GPU_LABELS,
            registry=r,
        )
        self.min = Gauge(
            "powercap_agent_gpu_power_limit_min_watts",
            "Least power limit the GPU accepts, W",
            GPU_LABELS,
            registry=r,
        )
        self.max = Gauge(
            "powercap_agent_gpu_power_limit_max_watts",
            "Greatest power limit the GPU accepts, W",
            GPU_LABELS,
            registry=r,
        )
        self.power = Gauge(
            "powercap_agent_gpu_power_watts", "Power draw of the GPU, W", GPU_LABELS, registry=r
        )
        self.errors = Counter(
            "powercap_agent_apply_errors",
            "NVML calls of the agent that failed, by NVML reason",
            ("reason",),
            registry=r,
        )
        self.can_set = Gauge(
            "powercap_agent_can_set_limits",
            "1 when the agent may set GPU power limits, 0 when NVML refuses (privilege, support)",
            registry=r,
        )
        self.gpus = Gauge("powercap_agent_gpus", "GPUs NVML reports on the node", registry=r)
        self._seen: set[tuple[str, str]] = set()

    def readings(self, readings: list[GpuReading]) -> None:
        """Set the per-GPU gauges; drop the series of GPUs no longer there."""
        now = set()
        for g in readings:
            if g.error is not None:
                continue
            labels = (str(g.index), g.uuid)
            now.add(labels)
            self.limit.labels(*labels).set(g.enforced_mw / 1000)
            self.default.labels(*labels).set(g.default_mw / 1000)
            self.min.labels(*labels).set(g.min_mw / 1000)
            self.max.labels(*labels).set(g.max_mw / 1000)
            self.power.labels(*labels).set(g.power_mw / 1000)
        for labels in self._seen - now:
            for gauge in (self.limit, self.default, self.min, self.max, self.power):
                gauge.remove(*labels)
        self._seen = now
        self.gpus.set(len(readings))

    def render(self) -> bytes:
        return generate_latest(self.registry)
