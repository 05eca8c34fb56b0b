"""The ``powercap.io`` custom resources and the workloads, watched live.

With ``resources.enabled`` the extender lists and watches PowerDomains, PowerProfiles and
PowerPolicies (the mirror's :class:`~extender.cluster.mirror.Reflector`, so a ``410 Gone``
relists) and, on every change, rebuilds the config from them
(:func:`rebuild`: :func:`~extender.config.resources.config_from_resources` on the file's
other sections, then the file's own checks). A set that builds is handed to ``on_config``
(the runtime swaps it in without a restart); a set that does not keeps the last good one,
and its problems are logged once per distinct set, each naming the object, the field and
the fix (:mod:`extender.config.conditions`). With ``resources.workloads`` the Deployments,
StatefulSets, KEDA ScaledObjects and KServe InferenceServices are watched too (only the
fields the demand reads are kept) and :func:`~extender.cluster.demand.demand_from_workloads`
over them is handed to ``on_demand`` whenever it changes.

Watching rather than listing at each re-plan: a re-plan is triggered *by* a change of the
demand, so something must notice the change; a watch costs one open connection per kind
and only the events of changed objects, where a list per re-plan would fetch every
workload of the cluster each time and still miss the changes between re-plans.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from extender.cluster.client import DEFAULT_TIMEOUTS
from extender.cluster.demand import SERVICE_LABEL, Demand, demand_from_workloads
from extender.cluster.events import Event, EventSink
from extender.cluster.mirror import Gone, KubernetesSource, Reflector, Source
from extender.cluster.pods import PodRef
from extender.config.conditions import Finding, check_domains, check_profiles
from extender.config.kubernetes import KubernetesSettings
from extender.config.loading import config_from_spec
from extender.config.model import Config, ConfigError
from extender.config.resources import (
    PowerDomain,
    PowerProfile,
    ResourceError,
    config_from_resources,
    parse_resources,
)

log = logging.getLogger(__name__)

GROUP, VERSION = "powercap.io", "v1alpha1"
# plural → kind, the order the objects are rebuilt in
POWERCAP_KINDS = {
    "powerdomains": "PowerDomain",
    "powerprofiles": "PowerProfile",
    "powerpolicies": "PowerPolicy",
}
# (api group path, plural, kind) of the workloads the demand is read from
WORKLOAD_KINDS = (
    ("apis/apps/v1", "deployments", "Deployment"),
    ("apis/apps/v1", "statefulsets", "StatefulSet"),
    ("apis/keda.sh/v1alpha1", "scaledobjects", "ScaledObject"),
    ("apis/serving.kserve.io/v1beta1", "inferenceservices", "InferenceService"),
)


# --- pure ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rebuilt:
    """What a set of resources makes: the config, or (``config`` None) why not."""

    config: Config | None
    problems: tuple[str, ...] = ()
    findings: tuple[Finding, ...] = ()
    # The PowerDomains as parsed (empty when a field of some object could not be read).
    domains: tuple[PowerDomain, ...] = ()


def rebuild(objects: Iterable[Mapping[str, Any]], base: Config) -> Rebuilt:
    """The config that ``objects`` (raw PowerDomains, PowerProfiles, PowerPolicies) make
    with ``base``'s other sections (``base.spec``, the file as written). Never raises: an
    invalid set comes back with ``config`` None and its problems, each ``Kind/name path:
    message and fix``."""
    if base.spec is None:
        return Rebuilt(None, ("config: not read from a file; nothing to rebuild from",))
    try:
        resources = parse_resources(objects)
    except ResourceError as exc:
        return Rebuilt(None, tuple(exc.problems))
    domains = [r for r in resources if isinstance(r, PowerDomain)]
    profiles = [r for r in resources if isinstance(r, PowerProfile)]
    if not domains:
        return Rebuilt(
            None, ("PowerDomain: none exists; create the tree (powercap config migrate)",)
        )
    findings = check_domains(domains, base.grid) + check_profiles(profiles, base.grid)
    if findings:
        return Rebuilt(None, tuple(f.text for f in findings), tuple(findings), tuple(domains))
    try:
        spec = config_from_resources(resources, base.spec)
        config = config_from_spec(spec, source="powercap.io resources")
    except (ResourceError, ConfigError) as exc:
        return Rebuilt(None, tuple(exc.problems), domains=tuple(domains))
    return Rebuilt(config, domains=tuple(domains))


def structure_change(old: Config, new: Config) -> str | None:
    """Why ``new`` cannot replace ``old`` in a running extender (its domains, their parents
    or the grid differ: the ledger's shape and the nodes' leaves depend on them), or
    ``None`` when only caps, profiles and services changed."""
    if old.grid != new.grid:
        return "the grid changed"
    if old.tree.names != new.tree.names:
        added = sorted(set(new.tree.names) - set(old.tree.names))
        gone = sorted(set(old.tree.names) - set(new.tree.names))
        return f"domains changed (added {added or 'none'}, removed {gone or 'none'})"
    if list(old.tree.parents) != list(new.tree.parents):
        return "a domain's parent changed"
    return None


def trim_workload(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Only what :func:`demand_from_workloads` reads of a workload (a Deployment's pod
    template alone can be kilobytes; a cluster has thousands)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    template = (spec.get("template") or {}).get("metadata") or {}
    kept: dict[str, Any] = {
        key: spec[key]
        for key in ("replicas", "maxReplicaCount", "scaleTargetRef", "predictor")
        if key in spec
    }
    if "predictor" in kept and isinstance(kept["predictor"], Mapping):
        kept["predictor"] = {
            k: v for k, v in kept["predictor"].items() if k in ("minReplicas", "maxReplicas")
        }
    if template.get("labels"):
        kept["template"] = {"metadata": {"labels": template["labels"]}}
    return {
        "kind": obj.get("kind"),
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "labels": meta.get("labels") or {},
        },
        "spec": kept,
    }


@dataclass
class Store:
    """Objects of several kinds by (kind, namespace, name), replaced per kind on a list."""

    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @staticmethod
    def key(kind: str, obj: Mapping[str, Any]) -> tuple[str, str, str]:
        meta = obj.get("metadata") or {}
        return (kind, str(meta.get("namespace") or ""), str(meta.get("name") or ""))

    def replace(self, kind: str, items: Iterable[dict[str, Any]]) -> None:
        with self.lock:
            for k in [k for k in self.objects if k[0] == kind]:
                del self.objects[k]
            for obj in items:
                self.objects[self.key(kind, obj)] = {**obj, "kind": kind}

    def apply(self, kind: str, event: str, obj: dict[str, Any]) -> None:
        with self.lock:
            if event == "DELETED":
                self.objects.pop(self.key(kind, obj), None)
            else:
                self.objects[self.key(kind, obj)] = {**obj, "kind": kind}

    def values(self) -> list[dict[str, Any]]:
        with self.lock:
            return sorted(self.objects.values(), key=lambda o: self.key(str(o["kind"]), o))


_MISSING = "powercap:not-served"


# --- the source ---------------------------------------------------------------------------
class ListSource(KubernetesSource):
    """Any resource of every namespace through a client's list function (``list``: e.g.
    ``CustomObjectsApi.list_cluster_custom_object`` with its group, version and plural
    bound), raw, with the mirror's paging and watch handling."""

    def __init__(
        self,
        list_fn: Callable[..., Any],
        name: str,
        page_size: int = 500,
        *,
        timeouts: KubernetesSettings = DEFAULT_TIMEOUTS,
    ) -> None:
        self.core = list_fn
        self.resource = name
        self.page_size = page_size
        self.timeouts = timeouts

    def list(self) -> tuple[list[dict[str, Any]], str]:
        """Every object; a kind the server does not serve (its CRD is not installed, e.g.
        no KEDA) lists as empty."""
        from kubernetes.client.exceptions import ApiException

        try:
            return super().list()
        except ApiException as exc:
            if exc.status != 404:
                raise
            return [], _MISSING

    def watch(self, resource_version: str, timeout_s: int) -> Iterator[dict[str, Any]]:
        if resource_version == _MISSING:
            # Look again now and then: the CRD may be installed later.
            time.sleep(min(timeout_s, 60))
            raise Gone(f"{self.resource} is not served")
        yield from super().watch(resource_version, timeout_s)

    def _call(self, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.core(_preload_content=False, **kwargs)
        except ApiException as exc:
            if exc.status == 410:
                raise Gone(str(exc.reason)) from exc
            raise


# --- the watch ------------------------------------------------------------------------------
class ResourceWatch:
    """Reflectors for the powercap.io kinds (and, with ``workloads``, the workload kinds)
    feeding :func:`rebuild` → ``on_config`` and :func:`demand_from_workloads` →
    ``on_demand`` (see the module doc). ``sources`` maps a plural to its source."""

    def __init__(
        self,
        base: Config,
        sources: Mapping[str, Source],
        *,
        on_config: Callable[[Config], object],
        on_demand: Callable[[Demand], None] | None = None,
        events: EventSink | None = None,
    ) -> None:
        self.base = base
        self.events = events
        self.on_config = on_config
        self.on_demand = on_demand
        self.resources = Store()
        self.workloads = Store()
        self.demand: Demand | None = None
        self.last_problems: tuple[str, ...] = ()
        # The latest set's PowerDomains and their findings, for their status.
        self.domains: tuple[PowerDomain, ...] = ()
        self.findings: tuple[Finding, ...] = ()
        self.rebuilds = 0
        self._stop = threading.Event()
        self._changed = threading.Lock()
        self.reflectors: list[Reflector] = []
        self._listed: set[str] = set()  # the plurals listed at least once
        kinds = dict(POWERCAP_KINDS)
        workload_kinds = {plural: kind for _path, plural, kind in WORKLOAD_KINDS}
        for plural, source in sources.items():
            if plural in kinds:
                self.reflectors.append(self._reflector(plural, kinds[plural], source, False))
            elif plural in workload_kinds:
                self.reflectors.append(
                    self._reflector(plural, workload_kinds[plural], source, True)
                )
            else:
                raise ValueError(f"unknown resource {plural!r}")

    def _reflector(self, plural: str, kind: str, source: Source, workload: bool) -> Reflector:
        store = self.workloads if workload else self.resources
        keep: Callable[[dict[str, Any]], dict[str, Any]] = trim_workload if workload else dict
        changed = self.workloads_changed if workload else self.resources_changed

        def replace(items: list[dict[str, Any]]) -> None:
            store.replace(kind, [keep(o) for o in items])
            self._listed.add(plural)
            changed()

        def event(kind_of_event: str, obj: dict[str, Any]) -> None:
            store.apply(kind, kind_of_event, keep(obj))
            changed()

        reflector = Reflector(plural, source, replace, on_event=event)
        return reflector

    def _synced(self, workload: bool) -> bool:
        names = {p for _a, p, _k in WORKLOAD_KINDS} if workload else set(POWERCAP_KINDS)
        return all(r.name in self._listed for r in self.reflectors if r.name in names)

    def resources_changed(self) -> None:
        """Rebuild from the resources once every powercap.io kind has listed."""
        if not self._synced(workload=False):
            return
        with self._changed:
            result = rebuild(self.resources.values(), self.base)
            if result.domains:
                self.domains, self.findings = result.domains, result.findings
            if result.config is None:
                if result.problems != self.last_problems:
                    log.error(
                        "the powercap.io resources do not make a valid tree; keeping the "
                        "last good one:\n  %s",
                        "\n  ".join(result.problems),
                    )
                    self._emit(result.findings)
                self.last_problems = result.problems
                return
            if self.last_problems:
                log.info("the powercap.io resources are valid again")
            self.last_problems = ()
            self.rebuilds += 1
            self.on_config(result.config)

    def _emit(self, findings: Iterable[Finding]) -> None:
        """A Warning Event on each object with a finding (once per distinct set)."""
        if self.events is None:
            return
        for f in findings:
            obj = self.resources.objects.get((f.kind, f.namespace or "", f.name), {})
            uid = str((obj.get("metadata") or {}).get("uid") or "")
            self.events.emit(
                Event(
                    # Events about a cluster-scoped object live in the default namespace.
                    PodRef(f.namespace or "default", f.name, uid),
                    f.reason,
                    f.text,
                    kind=f.kind,
                    api_version=f"{GROUP}/{VERSION}",
                )
            )

    def workloads_changed(self) -> None:
        """Recompute the demand once every workload kind has listed; hand it on when it
        changed."""
        if not self._synced(workload=True) or self.on_demand is None:
            return
        with self._changed:
            demand = demand_from_workloads(self.workloads.values(), SERVICE_LABEL)
            old = self.demand
            if old is not None and _replicas(old) == _replicas(demand):
                return
            self.demand = demand
            for note in demand.notes:
                log.warning("demand: %s", note)
            self.on_demand(demand)

    def start(self) -> None:
        for reflector in self.reflectors:
            threading.Thread(
                target=reflector.run,
                args=(self._stop,),
                name=f"powercap-{reflector.name}",
                daemon=True,
            ).start()

    def stop(self) -> None:
        self._stop.set()


def _replicas(demand: Demand) -> dict[str, int]:
    return {name: entry.replicas for name, entry in demand.services.items()}


def sources_for(api_client: Any, config: Config) -> dict[str, Source]:
    """The sources :class:`ResourceWatch` reads for ``config.resources``."""
    from kubernetes import client

    timeouts = config.kubernetes
    custom = client.CustomObjectsApi(api_client)
    apps = client.AppsV1Api(api_client)

    def custom_list(group: str, version: str, plural: str) -> Callable[..., Any]:
        return functools.partial(custom.list_cluster_custom_object, group, version, plural)

    out: dict[str, Source] = {
        plural: ListSource(custom_list(GROUP, VERSION, plural), plural, timeouts=timeouts)
        for plural in POWERCAP_KINDS
    }
    if config.resources.workloads:
        lists = {
            "deployments": apps.list_deployment_for_all_namespaces,
            "statefulsets": apps.list_stateful_set_for_all_namespaces,
            "scaledobjects": custom_list("keda.sh", "v1alpha1", "scaledobjects"),
            "inferenceservices": custom_list("serving.kserve.io", "v1beta1", "inferenceservices"),
        }
        for _path, plural, _kind in WORKLOAD_KINDS:
            out[plural] = ListSource(lists[plural], plural, timeouts=timeouts)
    return out
