"""powercap's CRDs on the real kube-apiserver: installed as users install them
(``kubectl apply -k manifests/crds``), valid objects accepted, invalid ones refused by the
schema and the CEL rules with the field named, the printer columns of ``kubectl get``, and
``powercap config migrate`` of the example config accepted and converted back.

A missing tool fails the test naming ``make tools``; nothing is skipped.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from e2e.cluster import TEST_LOG_DIR, binary, cluster
from e2e.deploy import api_client, wait_established
from e2e.kubectl import Kubectl
from extender.config.loading import config_from_spec, load_config
from extender.config.migrate import migrate_config_file, render_resources
from extender.config.model import ConfigSpec
from extender.config.resources import config_from_resources, parse_resources
from extender.crds.definitions import definitions

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "manifests" / "crds"
EXAMPLE = REPO / "config" / "powercap.yaml"
NAMESPACE = "powercap-system"
API = "powercap.io/v1alpha1"


@dataclass
class Api(Kubectl):
    def create(self, obj: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return self.run("create", "-f", "-", stdin=json.dumps(obj), check=False)


@pytest.fixture(scope="module")
def api() -> Iterator[Api]:
    kubectl = binary("kubectl")
    with cluster(TEST_LOG_DIR, prefix="powercap-crds") as c:
        a = Api(c, kubectl)
        a.run("apply", "-k", str(CRDS))
        wait_established(api_client(c.kubeconfig), [d.name for d in definitions()])
        a.run("create", "namespace", NAMESPACE)
        yield a


def domain(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "PowerDomain", "metadata": {"name": name}, "spec": spec}


def namespaced(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": name, "namespace": NAMESPACE}
    return {"apiVersion": API, "kind": kind, "metadata": meta, "spec": spec}


def test_valid_objects_are_accepted(api: Api) -> None:
    objects = [
        domain("valid-root", {"cap": {"watts": 100000}, "carbonZone": "GB"}),
        domain(
            "valid-rack",
            {
                "parent": "valid-root",
                "cap": {"schedule": [42000.0] * 144},
                "emissionBudget": {"kg": 500, "window": "day"},
            },
        ),
        namespaced("PowerProfile", "valid-flat", {"watts": [300.0] * 144, "quantile": 0.99}),
        namespaced(
            "PowerProfile",
            "valid-learned",
            {
                "diurnal": {"low": 400, "high": 3000, "peakAt": "10:00", "width": "8h"},
                "source": "learned",
                "learned": {"at": "2026-12-01T00:00:00Z", "window": "14d"},
            },
        ),
        namespaced(
            "PowerPolicy",
            "valid-chat",
            {
                "service": "chat-eu",
                "profileRef": "valid-learned",
                "priority": 100,
                "gpusPerReplica": 8,
                "nameplateWatts": 5600,
                "powerLimit": {"fraction": 0.8},
                "throughputCurve": [
                    {"fraction": 0.6, "throughput": 0.8},
                    {"fraction": 1.0, "throughput": 1.0},
                ],
            },
        ),
    ]
    for obj in objects:
        proc = api.create(obj)
        assert proc.returncode == 0, f"{obj['kind']}/{obj['metadata']['name']}: {proc.stderr}"


INVALID = [
    pytest.param(
        domain("bad-zero", {"cap": {"watts": 0}}),
        ["spec.cap.watts", "should be greater than 0"],
        id="cap-zero",
    ),
    pytest.param(
        domain("bad-negative", {"parent": "valid-root", "cap": {"watts": -5}}),
        ["spec.cap.watts", "should be greater than 0"],
        id="cap-negative",
    ),
    pytest.param(
        domain("bad-length", {"cap": {"schedule": [1000.0] * 143}}),
        ["spec.cap.schedule", "give 144 values, one per slot of the grid"],
        id="schedule-length",
    ),
    pytest.param(
        domain("bad-schedule-zero", {"cap": {"schedule": [1000.0] * 143 + [0.0]}}),
        ["spec.cap.schedule", "every value must be positive watts"],
        id="schedule-zero",
    ),
    pytest.param(
        domain("bad-both", {"cap": {"watts": 5, "schedule": [1000.0] * 144}}),
        ["spec.cap", "give exactly one of cap.watts or cap.schedule"],
        id="cap-both",
    ),
    pytest.param(
        domain("bad-self", {"parent": "bad-self", "cap": {"watts": 1000}}),
        ["spec.parent", "a domain cannot be its own parent"],
        id="parent-self",
    ),
    pytest.param(
        namespaced("PowerProfile", "bad-short", {"watts": [1.0] * 24}),
        ["spec.watts", "give 144 values"],
        id="profile-length",
    ),
    pytest.param(
        namespaced("PowerProfile", "bad-two", {"watts": [1.0] * 144, "constant": 3}),
        ["spec", "give exactly one of watts, diurnal or constant"],
        id="profile-two-forms",
    ),
    pytest.param(
        namespaced("PowerProfile", "bad-learned", {"constant": 3, "source": "learned"}),
        ["spec.learned", "set learned.at and learned.window"],
        id="learned-without-when",
    ),
    pytest.param(
        namespaced("PowerPolicy", "bad-limit", {"powerLimit": {"fraction": 0.8, "wattsPerGpu": 5}}),
        ["spec.powerLimit", "give exactly one of powerLimit.fraction or powerLimit.wattsPerGpu"],
        id="power-limit-both",
    ),
]


@pytest.mark.parametrize(("obj", "expected"), INVALID)
def test_invalid_objects_are_refused(api: Api, obj: dict[str, Any], expected: list[str]) -> None:
    proc = api.create(obj)
    assert proc.returncode != 0, f"accepted: {obj}"
    print(proc.stderr.strip())
    for text in expected:
        assert text in proc.stderr, f"{text!r} not in the API server's answer:\n{proc.stderr}"


def test_migrated_example_is_accepted_and_converts_back(api: Api) -> None:
    """`powercap config migrate config/powercap.yaml | kubectl apply -f -`, then the objects
    as the API server returns them make the same config again (replicas aside)."""
    text = render_resources(migrate_config_file(EXAMPLE, NAMESPACE))
    api.run("apply", "-f", "-", stdin=text)
    listed: list[dict[str, Any]] = []
    for kind in ("powerdomains", "powerprofiles", "powerpolicies"):
        items = json.loads(api.run("get", kind, "-A", "-o", "json").stdout)["items"]
        # only the migrated ones (the other tests add their own)
        listed += [i for i in items if not i["metadata"]["name"].startswith("valid-")]
    resources = parse_resources(listed)
    settings = ConfigSpec.model_validate(yaml.safe_load(EXAMPLE.read_text()))
    back = config_from_spec(config_from_resources(resources, settings), EXAMPLE.parent)
    original = load_config(EXAMPLE)
    assert back.tree.names == original.tree.names
    np.testing.assert_array_equal(back.tree.caps, original.tree.caps)
    for name, values in original.profiles.items():
        np.testing.assert_allclose(back.profiles[name], values)
    assert {n: s.profile_name for n, s in back.services.items()} == {
        n: s.profile_name for n, s in original.services.items()
    }


def test_printer_columns(api: Api) -> None:
    api.run("apply", "-f", "-", stdin=render_resources(migrate_config_file(EXAMPLE, NAMESPACE)))
    status = {
        "status": {
            "observedGeneration": 1,
            "predictedPeakWatts": 39850,
            "predictedPeakAt": "10:00",
            "measuredWatts": 43120,
            "measuredAt": "2026-12-06T10:02:00Z",
            "headroomWatts": 2150,
            "breached": True,
            "state": "Breached",
        }
    }
    api.run(
        "patch",
        "powerdomain",
        "rack-1-01",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )
    out = api.run("get", "powerdomains", "site", "row-1", "rack-1-01").stdout
    print(out)
    header, *rows = out.splitlines()
    assert header.split() == [
        "NAME", "PARENT", "CAP", "PREDICTED", "PEAK", "AT", "MEASURED", "HEADROOM", "STATUS", "AGE"
    ]  # fmt: skip
    rack = next(r.split() for r in rows if r.startswith("rack-1-01"))
    assert rack[:8] == [
        "rack-1-01",
        "row-1",
        "42000",
        "39850",
        "10:00",
        "43120",
        "2150",
        "Breached",
    ]
    site = next(r.split() for r in rows if r.startswith("site "))
    # no parent and no status yet: those columns are empty
    assert site[:2] == ["site", "240000"]
    # the short name and the category
    assert "rack-1-01" in api.run("get", "pdom").stdout
    everything = api.run("get", "powercap", "-A").stdout
    print(everything)
    assert "powerprofile.powercap.io/llama3-70b-chat-eu" in everything
    assert "powerpolicy.powercap.io/chat-eu" in everything
