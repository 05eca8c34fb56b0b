"""How long a Kubernetes API call may take: the ``kubernetes:`` section of the powercap config.

::

    kubernetes:
      connectTimeout: 3s         # TCP connect and TLS handshake, every call
      readTimeout: 10s           # a silence this long ends a call (lists, events, lease,
                                 # evictions, ScaledObject patches, pod reads)
      bindTimeout: 4s            # the whole Binding call, connect included
      schedulerHttpTimeout: 5s   # kube-scheduler's httpTimeout for this extender

An API server that accepts a connection and never answers (stopped, overloaded, behind a
broken proxy) would otherwise hold a call for ever: a bind past kube-scheduler's
``httpTimeout``, a lease renewal past its deadline. Every call therefore carries a connect
and a read timeout; a bind carries one bound for connect and read together, shorter than
``schedulerHttpTimeout`` (kube-scheduler's ``httpTimeout`` for the extender, 5 s in
config/kube-scheduler.yaml and kube-scheduler's default), so the scheduler always gets an
answer from the extender rather than giving up on it. The mirror's watches keep their
server-side timeout and read for ``readTimeout`` longer than it.

:class:`KubernetesSpec` is the section as written; :func:`resolve_kubernetes` returns
:class:`KubernetesSettings` (seconds) or ``kubernetes.<field>: message`` problems, so the
config loader reports them with every other problem. This module imports no client.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from placement.validation import seconds_or_problem

# kube-scheduler's default extender httpTimeout, and config/kube-scheduler.yaml's.
SCHEDULER_HTTP_TIMEOUT_S = 5.0


class KubernetesSpec(BaseModel):
    """The ``kubernetes:`` section, as written."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    connect_timeout: str | int = Field(default="3s", alias="connectTimeout")
    read_timeout: str | int = Field(default="10s", alias="readTimeout")
    bind_timeout: str | int = Field(default="4s", alias="bindTimeout")
    scheduler_http_timeout: str | int = Field(default="5s", alias="schedulerHttpTimeout")


@dataclass(frozen=True)
class KubernetesSettings:
    """The resolved ``kubernetes:`` section, in seconds: what
    :mod:`extender.cluster.client` turns into each call's ``_request_timeout``."""

    connect_timeout_s: float = 3.0
    read_timeout_s: float = 10.0
    bind_timeout_s: float = 4.0
    scheduler_http_timeout_s: float = SCHEDULER_HTTP_TIMEOUT_S


def resolve_kubernetes(
    spec: KubernetesSpec, where: str = "kubernetes"
) -> tuple[KubernetesSettings | None, list[str]]:
    """Settings from a spec, or ``None`` and the ``where.field: message`` problems: every
    value a positive duration, and ``bindTimeout`` shorter than ``schedulerHttpTimeout``."""
    problems: list[str] = []
    connect = seconds_or_problem(spec.connect_timeout, f"{where}.connectTimeout", problems)
    read = seconds_or_problem(spec.read_timeout, f"{where}.readTimeout", problems)
    bind = seconds_or_problem(spec.bind_timeout, f"{where}.bindTimeout", problems)
    scheduler = seconds_or_problem(
        spec.scheduler_http_timeout, f"{where}.schedulerHttpTimeout", problems
    )
    if bind and scheduler and bind >= scheduler:
        problems.append(
            f"{where}.bindTimeout: must be shorter than schedulerHttpTimeout ({bind:g}s ≥ "
            f"{scheduler:g}s), or kube-scheduler gives up on a bind the extender is still "
            "making; lower it, or raise both with the scheduler's httpTimeout"
        )
    if problems:
        return None, problems
    return KubernetesSettings(connect, read, bind, scheduler), []
