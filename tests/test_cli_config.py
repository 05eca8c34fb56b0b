"""``powercap config validate``: every problem of a config in one pass, offline."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from extender.config.checking import check_config_data
from powercap import cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "powercap.yaml"

runner = CliRunner()


def _copy_example(tmp_path: Path, text: str) -> Path:
    shutil.copytree(ROOT / "config" / "profiles", tmp_path / "profiles")
    path = tmp_path / "powercap.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_example_config_is_valid_and_summarised() -> None:
    result = runner.invoke(cli.app, ["config", "validate", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("OK ")
    summary = result.stdout.replace("\n", "")
    assert "9 domains" in summary and "4 services" in summary and "4 profiles" in summary
    assert "power: dcgm" in summary and "controller: dry run" in summary


def test_three_independent_mistakes_are_all_named(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    broken = (
        text.replace(
            "{name: rack-1-02, parent: row-1, cap: 42000}",
            "{name: rack-1-02, parent: row-1, cap: -42000}",
        )
        .replace(
            "{name: rack-2-03, parent: row-2, cap: 42000}",
            "{name: rack-2-03, parent: row-3, cap: 42000}",
        )
        .replace("  planWeight: 0.6 ", "  planWieght: 0.6 ")
    )
    assert broken.count("-42000") == 1 and "row-3" in broken and "planWieght" in broken
    result = runner.invoke(cli.app, ["config", "validate", str(_copy_example(tmp_path, broken))])
    assert result.exit_code == 1, result.output
    lines = [line.strip() for line in result.stderr.splitlines()]
    assert "3 problems" in lines[0]
    assert lines[1:] == [
        "scoring.planWieght: unknown field (check the spelling against config/powercap.yaml)",
        "domains[4].cap: caps must be finite and positive watts",
        "domains[8].parent: unknown domain 'row-3'; declare it or drop the parent",
    ]
    assert result.stdout == ""


def _example_data() -> dict[str, object]:
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_schema_and_tree_problems_come_together() -> None:
    data = _example_data()
    data["domains"] = [
        {"name": "site", "cap": "lots"},  # schema: not a number
        {"name": "row-1", "parent": "site", "cap": 100, "colour": "red"},  # schema: unknown key
        {"name": "rack", "parent": "row-9", "cap": 50},  # tree: unknown parent
    ]
    data["services"] = {"chat": {"profile": "nope", "replicas": -1}}
    data["profileFiles"] = []
    data["intensity"] = None
    check = check_config_data(data, ROOT / "config", "inline")
    wheres = [p.split(":", 1)[0] for p in check.problems]
    assert wheres == [
        "domains[0].cap",
        "domains[1].colour",
        "services.chat.replicas",
        "domains[2].parent",
        "services.chat.profile",
    ], check.problems
    assert check.config is None and not check.ok


def test_a_bad_field_is_set_aside_and_its_neighbours_still_checked() -> None:
    data = _example_data()
    data["planner"] = {"strategy": "magic", "debounce": "5x"}
    data["domains"][0]["cap"] = "lots"  # type: ignore[index]
    check = check_config_data(data, ROOT / "config", "inline")
    # strategy is the schema's, debounce the cross-check's; the placeholder standing in
    # for the bad cap is not reported again by the tree check
    assert [p.split(":", 1)[0] for p in check.problems] == [
        "domains[0].cap",
        "planner.strategy",
        "planner.debounce",
    ], check.problems


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- just a list\n", "(top level): expected a mapping"),
        ("domains: [\n", "not valid YAML/JSON"),
    ],
)
def test_unreadable_configs_exit_1(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    result = runner.invoke(cli.app, ["config", "validate", str(path)])
    assert result.exit_code == 1
    assert expected in result.stderr


def test_a_missing_file_exits_1(tmp_path: Path) -> None:
    result = runner.invoke(cli.app, ["config", "validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert "cannot read file" in result.stderr


def test_sections_naming_domains_are_checked_against_the_tree_despite_schema_errors() -> None:
    data = _example_data()
    data["scoring"] = {"planWieght": 0.6}  # schema: a misspelled key
    data["domains"][1]["cap"] = -5  # type: ignore[index]  # the tree: a negative cap
    data["intensity"] = {
        "kind": "ukci",
        "fallbackCapFraction": 0.8,
        "domains": ["row-9"],  # names a domain the tree lacks
        "budgets": [{"domain": "rack-9", "kg": 10, "window": "day"}],
    }
    check = check_config_data(data, ROOT / "config", "inline")
    wheres = [p.split(":", 1)[0] for p in check.problems]
    assert wheres[:2] == ["scoring.planWieght", "domains[1].cap"], check.problems
    assert "intensity.domains[0]" in wheres and "intensity.budgets[0].domain" in wheres
    assert any("unknown domain 'row-9'" in p for p in check.problems)


def test_a_bad_value_inside_a_union_is_set_aside_with_its_field() -> None:
    data = _example_data()
    services = data["services"]
    assert isinstance(services, dict)
    services["chat-eu"]["profile"] = {"diurnal": {"low": "lots", "high": 10}}
    data["domains"][2]["parent"] = "row-7"  # type: ignore[index]
    check = check_config_data(data, ROOT / "config", "inline")
    wheres = [p.split(":", 1)[0] for p in check.problems]
    assert any(w.startswith("services.chat-eu.profile") for w in wheres), check.problems
    # the tree is still checked
    assert "domains[2].parent" in wheres, check.problems


def test_migrate_prints_the_resources_of_the_example() -> None:
    result = runner.invoke(cli.app, ["config", "migrate", str(EXAMPLE), "--namespace", "infer"])
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(result.stdout))
    kinds = [d["kind"] for d in docs]
    assert kinds.count("PowerDomain") == 9
    assert kinds.count("PowerProfile") == 4 and kinds.count("PowerPolicy") == 4
    rack = next(d for d in docs if d["metadata"]["name"] == "rack-1-01")
    assert rack["spec"] == {"parent": "row-1", "cap": {"watts": 42000.0}}
    chat = next(
        d for d in docs if d["kind"] == "PowerPolicy" and d["metadata"]["name"] == "chat-eu"
    )
    assert chat["metadata"]["namespace"] == "infer"
    assert chat["spec"]["profileRef"] == "llama3-70b-chat-eu"
    assert "replicas" not in chat["spec"]
    assert result.stdout.startswith("# The custom resources of")


def test_migrate_refuses_a_config_with_problems(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8").replace(
        "parent: row-1, cap: 42000}", "parent: row-9, cap: 42000}", 1
    )
    path = _copy_example(tmp_path, text)
    result = runner.invoke(cli.app, ["config", "migrate", str(path)])
    assert result.exit_code == 1
    assert "unknown domain 'row-9'" in result.stderr
    assert result.stdout == ""


def test_migrate_names_a_profile_with_no_resource_form(tmp_path: Path) -> None:
    (tmp_path / "w.csv").write_text("w\n" + "100\n" * 144)
    text = EXAMPLE.read_text(encoding="utf-8").replace(
        "chat-apac: {diurnal:", "from-csv: {csv: {path: w.csv, column: w}}\n  chat-apac: {diurnal:"
    )
    path = _copy_example(tmp_path, text)
    result = runner.invoke(cli.app, ["config", "migrate", str(path)])
    assert result.exit_code == 1, result.output
    assert "profiles.from-csv: a CSV profile has no resource form" in result.stderr


def test_the_shipped_resources_are_the_example_config_migrated() -> None:
    from extender.cluster.custom import rebuild
    from extender.config.loading import load_config
    from extender.config.migrate import migrate_config_file, migrate_header, render_resources

    shipped = ROOT / "config" / "resources.yaml"
    resources = migrate_config_file(EXAMPLE, "powercap-system")
    regenerated = render_resources(resources, migrate_header("config/powercap.yaml"))
    assert shipped.read_text(encoding="utf-8") == regenerated, (
        "config/resources.yaml is not the migrated config/powercap.yaml; regenerate it: "
        "powercap config migrate config/powercap.yaml > config/resources.yaml"
    )
    # The objects as applied make the file's tree, caps, profiles and services.
    config = load_config(EXAMPLE)
    assert config.resources.enabled
    objects = [d for d in yaml.safe_load_all(shipped.read_text(encoding="utf-8")) if d]
    rebuilt = rebuild(objects, config)
    assert rebuilt.config is not None, rebuilt.problems
    assert rebuilt.config.tree.names == config.tree.names
    assert (rebuilt.config.tree.caps == config.tree.caps).all()
    assert rebuilt.config.profiles.keys() == config.profiles.keys()
    assert rebuilt.config.services.keys() == config.services.keys()
