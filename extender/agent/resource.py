"""``NodePowerLimit`` (``powercap.io/v1alpha1``, cluster-scoped): the power limits the
controller asks of one node's GPUs, and what the agent applied.

The object is named after its node. The controller writes ``spec``; the agent reads it and
writes only ``status`` (the ``/status`` subresource). ``spec`` is either one value for every
GPU (``wattsPerGpu``) or per-GPU entries (``gpus``, each naming an ``index`` or a ``uuid``),
or both (an entry wins over ``wattsPerGpu``). A ``NodePowerLimit`` with neither, or none
at all, withdraws the request: the agent restores every GPU's default limit.

The models here are the source of the CRD: :mod:`extender.crds` generates
``manifests/crds/nodepowerlimits.powercap.io.yaml`` with every other powercap CRD
(``make crds``; a unit test fails when a committed file is stale).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

GROUP = "powercap.io"
VERSION = "v1alpha1"
KIND = "NodePowerLimit"
PLURAL = "nodepowerlimits"
SINGULAR = "nodepowerlimit"
CRD_NAME = f"{PLURAL}.{GROUP}"
DESCRIPTION = (
    "The power limits the controller asks of one node's GPUs (spec) and what the node's "
    "powercap agent applied (status). Named after the node."
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class GpuLimit(_Model):
    """The limit asked of one GPU, named by its NVML ``index`` or its ``uuid``."""

    index: int | None = Field(None, ge=0, description="NVML index of the GPU")
    uuid: str | None = Field(None, min_length=1, description="UUID of the GPU (GPU-...)")
    watts: float = Field(gt=0, description="requested power limit in watts")

    @model_validator(mode="after")
    def _one_name(self) -> GpuLimit:
        if (self.index is None) == (self.uuid is None):
            raise ValueError("name the GPU by exactly one of index or uuid")
        return self


class NodePowerLimitSpec(_Model):
    """What the controller asks of the node's GPUs. Empty: the request is withdrawn."""

    watts_per_gpu: float | None = Field(
        None, alias="wattsPerGpu", gt=0, description="requested power limit of every GPU, W"
    )
    gpus: list[GpuLimit] = Field(
        default_factory=list, description="per-GPU requests; they win over wattsPerGpu"
    )


class GpuStatus(_Model):
    """One GPU as the agent last saw it. Watts; the limit is the enforced one, as
    DCGM_FI_DEV_ENFORCED_POWER_LIMIT reports it."""

    index: int
    uuid: str = ""
    min_watts: float | None = Field(None, alias="minWatts")
    max_watts: float | None = Field(None, alias="maxWatts")
    default_watts: float | None = Field(None, alias="defaultWatts")
    requested_watts: float | None = Field(None, alias="requestedWatts")
    target_watts: float | None = Field(None, alias="targetWatts")
    enforced_watts: float | None = Field(None, alias="enforcedWatts")
    reason: str | None = Field(
        None, description="why the target is not enforced: NoPermission, NotSupported, …"
    )
    message: str | None = None


class Condition(_Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    observed_generation: int | None = Field(None, alias="observedGeneration")
    last_transition_time: str = Field(alias="lastTransitionTime")


class NodePowerLimitStatus(_Model):
    """What the agent applied. ``canSetLimits`` false means the agent lacks the privilege
    to set limits (the controller goes to the next rung of its ladder); unset means not
    known yet (a dry run)."""

    observed_generation: int | None = Field(None, alias="observedGeneration")
    can_set_limits: bool | None = Field(None, alias="canSetLimits")
    gpus: list[GpuStatus] = Field(default_factory=list)
    conditions: list[Condition] = Field(default_factory=list)


class NodePowerLimit(_Model):
    """The whole object (metadata as the API server gives it)."""

    api_version: Literal["powercap.io/v1alpha1"] = Field("powercap.io/v1alpha1", alias="apiVersion")
    kind: Literal["NodePowerLimit"] = "NodePowerLimit"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: NodePowerLimitSpec = Field(default_factory=NodePowerLimitSpec)
    status: NodePowerLimitStatus | None = None


class RequestError(ValueError):
    """A NodePowerLimit the agent cannot follow; the message names the field and the fix."""


def parse(obj: dict[str, Any]) -> NodePowerLimit:
    """``obj`` (as the API server returned it) as a model; :class:`RequestError` naming each
    bad field otherwise."""
    try:
        return NodePowerLimit.model_validate(obj)
    except ValidationError as exc:
        name = obj.get("metadata", {}).get("name", "?")
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise RequestError(
            f"NodePowerLimit {name}: {problems} (fix the object's spec; see docs/power-limits.md)"
        ) from exc
