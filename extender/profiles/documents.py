"""Learned profiles as documents: profile YAML files and the profiles ConfigMap."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import yaml
from numpy.typing import NDArray

from extender.profiles.samples import LearnResult, LearnSettings, iso_time
from placement.grid import Grid, format_duration
from placement.learning import (
    LearnedProfile,
)

log = logging.getLogger(__name__)


API_VERSION = "powercap.io/v1alpha1"


DEFAULT_CONFIGMAP = "powercap-profiles"


DEFAULT_NAMESPACE = "powercap-system"


# Watts are written to a tenth: finer is below what a power meter resolves.
DECIMALS = 1


# --- pure: documents -----------------------------------------------------------------------
def _rounded(profile: NDArray[np.float64]) -> list[float]:
    return [round(float(v), DECIMALS) for v in profile]


def _span(seconds: int) -> str:
    """A history length as people say it: ``14d``, ``36h``, ``90m``."""
    return f"{seconds // 86400}d" if seconds % 86400 == 0 else format_duration(seconds)


def describe(learned: LearnedProfile, grid: Grid, since_s: int, *, pods: int) -> str:
    """The ``description`` of a learned profile: what it is and what it came from."""
    q = f"p{learned.quantile * 100:g}"
    text = (
        f"{q} per {format_duration(grid.step_s)} slot of {_span(since_s)} of "
        f"history: {pods} pod{'s' if pods != 1 else ''}, {learned.samples} samples, "
        f"{learned.coverage:.0%} of slots with at least {learned.min_samples}"
    )
    if learned.filled.any():
        text += f", {int(learned.filled.sum())} filled from the nearest slot"
    if learned.clamped.any():
        text += f", {int(learned.clamped.sum())} below the GPU idle clamped to 0"
    return text


def profile_document(learned: LearnedProfile, description: str) -> dict[str, Any]:
    """A ``kind: PowerProfile`` document named after the service."""
    return {
        "apiVersion": API_VERSION,
        "kind": "PowerProfile",
        "metadata": {"name": learned.service},
        "description": description,
        "profile": _rounded(learned.profile),
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the files inside a ConfigMap) as literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def profile_text(document: Mapping[str, Any], header: str = "") -> str:
    """A PowerProfile file: an optional comment header, then the document with the
    profile as a flow list."""
    body = yaml.dump(
        dict(document), Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=100
    )
    lines = "".join(f"# {line}\n" for line in header.splitlines())
    return lines + body


def configmap_document(
    files: Mapping[str, str], name: str, namespace: str, *, annotations: Mapping[str, str]
) -> dict[str, Any]:
    """A v1 ConfigMap with one key per profile file."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": "powercap",
                "app.kubernetes.io/component": "profiles",
            },
            "annotations": dict(annotations),
        },
        "data": dict(sorted(files.items())),
    }


def dump_yaml(document: Mapping[str, Any]) -> str:
    return yaml.dump(dict(document), Dumper=_Dumper, sort_keys=False, width=100)


def output_files(result: LearnResult, settings: LearnSettings, learned_at: float) -> dict[str, str]:
    """``{file name: PowerProfile text}``, one per service."""
    files: dict[str, str] = {}
    for name, lp in result.learned.items():
        description = describe(lp, settings.grid, settings.since_s, pods=result.pods.get(name, 0))
        header = (
            f"Learned from {settings.url}, {iso_time(settings.start)} to {iso_time(settings.end)} "
            f"at {iso_time(learned_at)}.\nWatts per replica above node idle, per slot."
        )
        files[f"{name}.yaml"] = profile_text(profile_document(lp, description), header)
    return files
