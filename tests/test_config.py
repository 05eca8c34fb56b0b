"""The powercap config: the shipped example loads; every mistake is named with its fix;
a bad config refuses to start the server (exit code, message, no traceback)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
import yaml
from typer.testing import CliRunner

from extender.config.kubernetes import KubernetesSettings
from extender.config.loading import config_from_data, load_config
from extender.config.model import ConfigError
from placement.grid import parse_seconds
from powercap.commands.serve import register

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config"


def minimal(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "apiVersion": "powercap.io/v1alpha1",
        "kind": "PowercapConfig",
        "grid": {"period": "24h", "step": "1h"},
        "domains": [{"name": "site", "cap": 50000}, {"name": "r1", "parent": "site", "cap": 20000}],
    }
    data.update(extra)
    return data


def problems_of(data: Any) -> list[str]:
    with pytest.raises(ConfigError) as err:
        config_from_data(data)
    return err.value.problems


def test_example_config_loads() -> None:
    config = load_config(CONFIG / "powercap.yaml")
    assert config.grid.slots == 144
    assert config.headroom == 0.05
    assert config.tree.names[0] == "site"
    eu = config.services["chat-eu"]
    assert eu.profile_name == "llama3-70b-chat-eu"
    assert eu.profile is not None and eu.profile.shape == (144,)
    # the profile file's diurnal bump peaks at 10:00
    assert config.grid.slot_label(int(np.argmax(eu.profile))) in ("09:50", "10:00")
    assert config.policy.missing_profile == "nameplate"
    assert config.planner.debounce_s == 5.0 and config.planner.interval_s == 900.0
    assert config.scheduler.name == "powercap-scheduler"
    assert config.scheduler.assumed_pod_ttl_s == 30.0


def test_minimal_config_defaults() -> None:
    config = config_from_data(minimal())
    assert config.policy.missing_profile == "nameplate"
    assert config.policy.default_nameplate_watts == 5600.0
    assert config.nodes.domain_label == "powercap.io/domain"
    assert config.services == {}


def test_scheduler_section() -> None:
    default = config_from_data(minimal()).scheduler
    assert (default.name, default.assumed_pod_ttl_s) == ("powercap-scheduler", 30.0)
    written = config_from_data(minimal(scheduler={"name": "gpu", "assumedPodTTL": "2m"}))
    assert (written.scheduler.name, written.scheduler.assumed_pod_ttl_s) == ("gpu", 120.0)
    assert default.failure_reasons == "whenNoneFit"
    always = config_from_data(minimal(scheduler={"failureReasons": "always"}))
    assert always.scheduler.failure_reasons == "always"
    assert always.scheduler.reasons_if_some_pass and not default.reasons_if_some_pass


def test_inline_and_named_profiles() -> None:
    config = config_from_data(
        minimal(
            profiles={"flat": {"constant": 1000}},
            services={
                "a": {"profile": "flat", "gpusPerReplica": 8},
                "b": {"profile": [500] * 24},
                "c": {},
            },
        )
    )
    assert config.services["a"].profile is config.profiles["flat"]
    assert config.services["b"].profile is not None
    assert config.services["c"].profile is None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"kind": "Scenario"}, "kind: "),
        ({"apiVersion": "v1"}, "apiVersion: "),
        ({"domains": []}, "domains"),
        ({"headroom": 1.5}, "headroom: "),
        ({"polcy": {}}, "polcy: unknown field"),
        ({"policy": {"missingProfile": "ignore"}}, "policy.missingProfile: "),
        ({"policy": {"defaultNameplateWatts": 0}}, "policy.defaultNameplateWatts: "),
        ({"services": {"a": {"gpusPerReplica": 0}}}, "services.a.gpusPerReplica: "),
        ({"services": {"a": {"profile": "nope"}}}, "services.a.profile: unknown profile 'nope'"),
        ({"services": {"a": {"profile": [1, 2]}}}, "services.a.profile: 2 values, the grid has 24"),
        ({"profiles": {"p": [-1] * 24}}, "profiles.p: value 0 is negative"),
        (
            {"profiles": {"p": {"diurnal": {"low": 1, "high": 2, "peakAt": "25:00"}}}},
            "profiles.p: ",
        ),
        ({"planner": {"debounce": "soon"}}, "planner.debounce: expected a duration"),
        ({"scheduler": {"assumedPodTTL": "soon"}}, "scheduler.assumedPodTTL: expected a duration"),
        ({"scheduler": {"assumedPodTTL": 0}}, "scheduler.assumedPodTTL: a duration must be"),
        ({"scheduler": {"name": ""}}, "scheduler.name: "),
        (
            {"scheduler": {"failureReasons": "never"}},
            "scheduler.failureReasons: Input should be 'whenNoneFit' or 'always'",
        ),
        ({"profileFiles": ["nowhere/*.yaml"]}, "profileFiles[0]: 'nowhere/*.yaml' matches no file"),
        (
            {"domains": [{"name": "site", "cap": 1}, {"name": "r", "parent": "sight", "cap": 1}]},
            "domains[1].parent: unknown domain 'sight'",
        ),
        ({"domains": [{"name": "site", "cap": [1, 2]}]}, "domains[0].cap: 2 values"),
    ],
)
def test_errors_name_the_path(change: dict[str, Any], expected: str) -> None:
    problems = problems_of(minimal(**change))
    assert any(expected in p for p in problems), problems


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(
        minimal(services={"a": {"profile": "x"}, "b": {"profile": "y"}}, planner={"interval": "x"})
    )
    assert len(problems) == 3


def test_not_a_mapping() -> None:
    assert "expected a mapping" in problems_of([1, 2])[0]


def test_profile_files(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "a.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "powercap.io/v1alpha1",
                "kind": "PowerProfile",
                "metadata": {"name": "a"},
                "profile": {"constant": 100},
            }
        )
    )
    (tmp_path / "profiles" / "b.yaml").write_text(
        "apiVersion: powercap.io/v1alpha1\nkind: PowerProfile\nmetadata: {name: b}\nprofile: [1]\n"
    )
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(minimal(profileFiles=["profiles/*.yaml"])))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.problems == [
        "profileFiles[0] (b.yaml).profile: 1 values, the grid has 24 slots"
    ]


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """powercap (test harness)."""

    register(app)
    return app


def test_serve_refuses_a_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(minimal(services={"a": {"profile": "nope"}})))
    result = CliRunner().invoke(cli(), ["serve", "--config", str(path)])
    assert result.exit_code == 2
    assert "services.a.profile: unknown profile 'nope'" in result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_serve_needs_exactly_one_source(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli(), ["serve"])
    assert result.exit_code == 2
    assert "exactly one of --config" in result.output
    result = CliRunner().invoke(cli(), ["serve", "--scenario", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2
    assert "invalid scenario" in result.output and "Traceback" not in result.output


# The field names of KubeSchedulerConfiguration v1 that the shipped file uses, as the
# Go types in k8s.io/kube-scheduler/config/v1 spell their JSON tags.
_SCHEDULER_FIELDS = {
    "": {"apiVersion", "kind", "clientConnection", "leaderElection", "profiles", "extenders",
         "percentageOfNodesToScore", "parallelism"},
    "clientConnection": {"qps", "burst", "kubeconfig", "contentType", "acceptContentTypes"},
    "leaderElection": {"leaderElect", "resourceName", "resourceNamespace", "leaseDuration",
                       "renewDeadline", "retryPeriod", "resourceLock"},
    "profiles": {"schedulerName", "percentageOfNodesToScore", "plugins", "pluginConfig"},
    "extenders": {"urlPrefix", "filterVerb", "preemptVerb", "prioritizeVerb", "weight",
                  "bindVerb", "enableHTTPS", "tlsConfig", "httpTimeout", "nodeCacheCapable",
                  "managedResources", "ignorable"},
    "managedResources": {"name", "ignoredByScheduler"},
}  # fmt: skip


def test_kube_scheduler_config_uses_real_field_names() -> None:
    doc = yaml.safe_load((CONFIG / "kube-scheduler.yaml").read_text())
    assert doc["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    assert set(doc) <= _SCHEDULER_FIELDS[""]
    assert set(doc["clientConnection"]) <= _SCHEDULER_FIELDS["clientConnection"]
    assert set(doc["leaderElection"]) <= _SCHEDULER_FIELDS["leaderElection"]
    (profile,) = doc["profiles"]
    assert set(profile) <= _SCHEDULER_FIELDS["profiles"]
    assert profile["schedulerName"] == "powercap-scheduler"
    assert profile["percentageOfNodesToScore"] == 100
    (extender,) = doc["extenders"]
    assert set(extender) <= _SCHEDULER_FIELDS["extenders"]
    assert extender["nodeCacheCapable"] is True and extender["ignorable"] is False
    assert extender["urlPrefix"].startswith("http://127.0.0.1:")
    (managed,) = extender["managedResources"]
    assert managed == {"name": "nvidia.com/gpu", "ignoredByScheduler": False}
    # the verbs are the app's routes
    from extender.webhook.app import create_app
    from tests.scheduler_payloads import small_extender

    ext = small_extender()
    paths = {getattr(r, "path", "") for r in create_app(ext.decider, ext.telemetry).routes}
    for verb in ("filterVerb", "prioritizeVerb", "bindVerb", "preemptVerb"):
        assert "/" + extender[verb] in paths


def test_power_section_is_resolved_with_the_rest_of_the_config() -> None:
    config = config_from_data(
        minimal(power={"url": "http://prometheus:9090", "nonGpuWatts": {"default": 900}})
    )
    assert config.power is not None
    assert "DCGM_FI_DEV_POWER_USAGE" in config.power.query
    assert config.power.non_gpu_watts("gpu-1") == 900.0
    assert config_from_data(minimal()).power is None  # no section: no readings
    # Its problems are reported with everyone else's, by path.
    found = problems_of(
        minimal(power={"url": "http://p:9090", "preset": "custom", "staleness": "soon"}),
    )
    assert any(p.startswith("power.query") for p in found), found
    assert any(p.startswith("power.staleness") for p in found), found


def test_intensity_section_is_resolved_with_the_rest_of_the_config() -> None:
    config = config_from_data(minimal(intensity={"kind": "ukci", "fallbackCapFraction": 0.8}))
    assert [s.kind for s in config.intensity] == ["ukci"]
    assert config_from_data(minimal()).intensity == ()
    found = problems_of(minimal(intensity={"kind": "electricitymaps"}))
    assert any(p.startswith("intensity.") for p in found), found


def test_intensity_problems_come_with_the_other_sections_problems() -> None:
    # A schema error elsewhere stops validation before the tree exists; the intensity
    # section's own field errors are still reported in the same pass.
    data = minimal(
        intensity=[{"kind": "ukci"}, {"kind": "nope", "fallbackCapFraction": 0.8}],
        controller={"enabled": "perhaps"},
    )
    found = problems_of(data)
    assert any(p.startswith("controller.enabled") for p in found), found
    assert any(p.startswith("intensity[0].fallbackCapFraction") for p in found), found
    assert any(p.startswith("intensity[1].kind") for p in found), found
    shape = problems_of(minimal(intensity="ukci", controller={"enabled": "perhaps"}))
    assert any(p.startswith("intensity: expected a source") for p in shape), shape


def test_kubernetes_timeouts_default_below_the_schedulers_http_timeout() -> None:
    settings = config_from_data(minimal()).kubernetes
    assert settings == KubernetesSettings(
        connect_timeout_s=3.0, read_timeout_s=10.0, bind_timeout_s=4.0, scheduler_http_timeout_s=5.0
    )
    # The shipped scheduler gives the extender as long as the default assumes.
    (extender,) = yaml.safe_load((CONFIG / "kube-scheduler.yaml").read_text())["extenders"]
    assert parse_seconds(extender["httpTimeout"]) == settings.scheduler_http_timeout_s
    custom = config_from_data(
        minimal(
            kubernetes={
                "connectTimeout": "500ms",
                "readTimeout": 30,
                "bindTimeout": "8s",
                "schedulerHttpTimeout": "10s",
            }
        )
    ).kubernetes
    assert custom == KubernetesSettings(0.5, 30.0, 8.0, 10.0)


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            {"bindTimeout": "5s"},
            ["kubernetes.bindTimeout: must be shorter than schedulerHttpTimeout"],
        ),
        (
            {"bindTimeout": "12s", "schedulerHttpTimeout": "10s"},
            ["kubernetes.bindTimeout: must be shorter than schedulerHttpTimeout (12s ≥ 10s)"],
        ),
        ({"connectTimeout": "0s"}, ["kubernetes.connectTimeout: a duration must be positive"]),
        (
            {"readTimeout": "soon", "bindTimeout": -1},
            ["kubernetes.readTimeout: expected a duration", "kubernetes.bindTimeout: a duration"],
        ),
        ({"timeout": "5s"}, ["kubernetes.timeout: unknown field"]),
    ],
)
def test_kubernetes_timeout_problems_name_the_field(
    section: dict[str, Any], expected: list[str]
) -> None:
    found = problems_of(minimal(kubernetes=section))
    assert len(found) == len(expected), found
    for problem, start in zip(found, expected, strict=True):
        assert problem.startswith(start), found
