"""The node agent for GPU power limits (``powercap agent``, a DaemonSet on GPU nodes).

One module per job: :mod:`.nvml` (the few NVML calls, typed, and the adapter to
``nvidia-ml-py``), :mod:`.fake` (an NVML fake built from the real library's shapes),
:mod:`.limits` (the pure decision: requested → clamped target, withdrawn → default),
:mod:`.resource` (the ``NodePowerLimit`` request object and its CRD), :mod:`.kube` (reading
the request, writing its status), :mod:`.metrics`, :mod:`.loop` (the reconcile loop) and
:mod:`.check` (the read-only report of ``make gpu-check``). See docs/power-limits.md.
"""
