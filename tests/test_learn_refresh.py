"""``serve`` re-learning profiles: the ``learn:`` section in the config loader, and the swap
of a refreshed config into a running extender (decider, mirror, planner)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from unittest.mock import MagicMock

import numpy as np
import pytest

from extender import runtime
from extender.config.loading import config_from_data
from extender.config.model import ConfigError
from tests.scheduler_payloads import small_extender


def minimal(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "apiVersion": "powercap.io/v1alpha1",
        "kind": "PowercapConfig",
        "grid": {"period": "24h", "step": "1h"},
        "domains": [{"name": "site", "cap": 50000}],
    }
    data.update(extra)
    return data


def test_no_learn_section_means_no_refresh() -> None:
    assert config_from_data(minimal()).learn is None


def test_refresh_learns_from_power_url_by_default() -> None:
    config = config_from_data(
        minimal(power={"url": "http://prom:9090"}, learn={"refresh": "6h", "since": "7d"})
    )
    assert config.learn is not None
    assert config.learn.interval_s == 6 * 3600
    assert config.learn.url == "http://prom:9090"
    assert config.learn.since_s == 7 * 86400


def test_learn_without_a_prometheus_is_a_problem() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_data(minimal(learn={"refresh": "6h"}))
    assert any(p.startswith("learn.prometheus:") for p in err.value.problems)


def test_learn_problems_come_with_the_others() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_data(
            minimal(
                controller={"enabled": True},  # without power: a problem of its own
                learn={"refresh": "6h", "prometheus": "http://p:9090", "resolution": "2h"},
            )
        )
    fields = {p.split(":", 1)[0] for p in err.value.problems}
    assert {"controller.enabled", "learn.resolution"} <= fields


def test_swap_replaces_the_config_everywhere_and_replans() -> None:
    ext = small_extender(planner=True)
    ext.planner.plan_now()  # type: ignore[union-attr]
    before = ext.planner.latest  # type: ignore[union-attr]
    name, entry = next(iter(ext.config.services.items()))
    learned = np.full(ext.config.grid.slots, 123.0)
    services = {**ext.config.services, name: replace(entry, profile=learned)}
    new = replace(ext.config, services=services)

    runtime.swap_config(ext, new)

    assert ext.config is new
    assert ext.decider.config is new and ext.decider.resolver.config is new
    assert ext.planner is not None and ext.planner.config is new
    assert ext.planner.latest is not before, "no re-plan after the swap"


def test_serve_builds_a_refresher_that_swaps() -> None:
    config = config_from_data(minimal(power={"url": "http://prom:9090"}, learn={"refresh": "1h"}))
    ext = runtime.from_cluster(config, MagicMock())
    assert ext.refresher is not None
    assert ext.refresher.settings.interval_s == 3600
    assert ext.refresher.current() is ext.config
    new = replace(config, name="refreshed")
    ext.refresher.on_config(new)
    assert ext.config is new and ext.decider.config is new
    assert ext.mirror is not None and ext.mirror.config is new
    assert ext.mirror.resolver.config is new


def test_no_refresher_without_refresh() -> None:
    ext = runtime.from_cluster(config_from_data(minimal()), MagicMock())
    assert ext.refresher is None
