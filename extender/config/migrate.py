"""``powercap config migrate``: the custom resources of a config file.

:func:`migrate_config_file` checks the file as ``powercap config validate`` does (a config
with problems is not migrated), reads the profiles it defines and those of its
``profileFiles`` as written (not resolved: a diurnal profile stays a diurnal shorthand),
and returns the resources of :func:`~extender.config.resources.resources_from_config`.
:func:`render_resources` prints them as multi-document YAML for ``kubectl apply -f -``.
:func:`configmap_deprecation` is the warning a live process (``powercap serve``,
``powercap controller``) and ``powercap config validate`` give a config that still keeps
the tree in the file.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from extender.config.checking import check_config_file
from extender.config.loading import _read_document
from extender.config.model import Config, ConfigError, ConfigSpec, ProfileDocument
from extender.config.resources import Resource, resources_from_config


def _written_profiles(spec: ConfigSpec, base_dir: Path) -> dict[str, Any]:
    profiles: dict[str, Any] = dict(spec.profiles)
    for pattern in spec.profile_files:
        full = pattern if Path(pattern).is_absolute() else str(base_dir / pattern)
        for path in sorted(glob.glob(full)):
            doc = ProfileDocument.model_validate(_read_document(Path(path)))
            profiles[doc.metadata.name] = doc.profile
    return profiles


def migrate_config_file(path: Path, namespace: str) -> list[Resource]:
    """The resources of the config at ``path``, namespaced ones in ``namespace``; raises
    :class:`~extender.config.model.ConfigError` listing the file's problems, or
    :class:`~extender.config.resources.ResourceError` for what has no resource form."""
    check = check_config_file(path)
    if not check.ok:
        raise ConfigError(list(check.problems), str(path))
    spec = ConfigSpec.model_validate(_read_document(path))
    return resources_from_config(spec, namespace, _written_profiles(spec, path.parent))


def resource_object(resource: Resource) -> dict[str, Any]:
    """``resource`` as the object to apply: unset fields and empty labels left out."""
    obj = resource.model_dump(by_alias=True, exclude_none=True, mode="json")
    if not obj["metadata"].get("labels"):
        obj["metadata"].pop("labels", None)
    obj.pop("status", None)
    return obj


def migrate_header(source: str) -> str:
    """The comment ``powercap config migrate`` puts above the resources of ``source``."""
    return (
        f"The custom resources of {source} (powercap config migrate); apply the CRDs first:\n"
        "kubectl apply -k manifests/crds. Replicas come from the workloads, not from here."
    )


def render_resources(resources: Sequence[Resource], header: str = "") -> str:
    """Multi-document YAML of ``resources``, after a ``#`` comment ``header``."""
    lead = "".join(f"# {line}\n" for line in header.splitlines())
    docs = [resource_object(r) for r in resources]
    return lead + yaml.safe_dump_all(docs, sort_keys=False, width=100)


def configmap_deprecation(config: Config) -> str | None:
    """The deprecation warning for ``config`` run against a live cluster, or ``None``.

    With ``resources.enabled`` false the tree, the profiles and the services come from the
    file's ``domains``, ``profiles`` and ``services`` (the ConfigMap form): deprecated in
    favour of the ``powercap.io`` resources, still working for this release. The text says
    what is deprecated, that it keeps working, and the fix. Only for a live cluster: a
    scenario or an offline plan reads files by design and must not call this."""
    if config.resources.enabled:
        return None
    return (
        f"{config.source}: deprecated: the power tree, profiles and services in the config "
        "file (domains, profiles, services) with resources.enabled false. They keep working "
        "for this release. Move them to PowerDomain, PowerProfile and PowerPolicy objects: "
        "kubectl apply -k manifests/crds, then powercap config migrate "
        f"{config.source} | kubectl apply -f -, then set resources: {{enabled: true}} in the "
        "config (the file's domains, profiles and services stay as the fallback); see "
        "docs/api.md"
    )
