"""The HTML/PNG report: files are written, PNGs are real, the page links them all."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from placement.metrics import Metrics, evaluate
from placement.problem import Problem
from placement.strategies import Plan, run_strategy
from powercap.report import best_strategy, domain_order, write_report
from tests.problems import SMALL_GRID, problem_from_dict

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tree_problem(rows: int, racks_per_row: int) -> Problem:
    """A site → rows → racks tree, two 8-GPU nodes per rack, two services out of phase."""
    domains: list[dict[str, Any]] = [{"name": "site", "cap": 14_000 * rows * racks_per_row}]
    racks = []
    for r in range(rows):
        domains.append({"name": f"row-{r}", "parent": "site", "cap": 16_000 * racks_per_row})
        for k in range(racks_per_row):
            racks.append(f"rack-{r}-{k:02d}")
            domains.append({"name": racks[-1], "parent": f"row-{r}", "cap": 18_000})
    day = [1000.0, 1500, 3000, 5000, 6000, 5000, 3000, 1500, 1000, 900, 800, 900]
    night = day[6:] + day[:6]
    return problem_from_dict(
        {
            "metadata": {"name": f"tree-{rows}x{racks_per_row}"},
            "grid": SMALL_GRID,
            "headroom": 0.05,
            "domains": domains,
            "nodeGroups": [
                {
                    "namePrefix": "gpu",
                    "domains": racks,
                    "countPerDomain": 2,
                    "gpus": 8,
                    "idleWatts": 1500,
                },
            ],
            "services": [
                {
                    "name": "chat-eu",
                    "replicas": 3 * len(racks),
                    "gpusPerReplica": 4,
                    "priority": 100,
                    "nameplateWatts": 7000,
                    "profile": day,
                },
                {
                    "name": "chat-us",
                    "replicas": 3 * len(racks),
                    "gpusPerReplica": 4,
                    "priority": 100,
                    "nameplateWatts": 7000,
                    "profile": night,
                },
            ],
        }
    )


def plans_for(
    problem: Problem, names: tuple[str, ...] = ("nameplate", "peak-sum", "greedy")
) -> tuple[dict[str, Plan], dict[str, Metrics]]:
    plans = {n: run_strategy(n, problem) for n in names}
    return plans, {n: evaluate(problem, p.assignment) for n, p in plans.items()}


def check_report(index: Path) -> str:
    """Every PNG is a PNG, the page references every one and only existing files."""
    assert index.name == "index.html" and index.is_file()
    page = index.read_text(encoding="utf-8")
    pngs = sorted(p.name for p in index.parent.glob("*.png"))
    assert pngs
    for name in pngs:
        assert (index.parent / name).read_bytes()[:8] == PNG_MAGIC, name
        assert f'src="{name}"' in page, f"{name} is not shown in the report"
    referenced = set(re.findall(r'src="([^"]+)"', page))
    assert referenced == set(pngs)
    assert "<table>" in page and "</html>" in page
    return page


def test_report_small_tree_writes_every_chart(tmp_path: Path) -> None:
    problem = tree_problem(rows=2, racks_per_row=2)
    plans, metrics = plans_for(problem)
    index = write_report(tmp_path / "out", problem, plans, metrics=metrics)
    page = check_report(index)
    names = {p.name for p in index.parent.glob("*.png")}
    assert {"strategies.png", "peak_over_cap.png"} <= names
    assert {f"heatmap-{n}.png" for n in plans} <= names
    # A small tree draws a profile chart for every domain.
    assert len([n for n in names if n.startswith("profile-")]) == problem.tree.size
    for name in ("nameplate", "peak-sum", "greedy", "chat-eu", "rack-1-01", problem.name):
        assert name in page
    assert best_strategy(plans, metrics) == "greedy"
    assert "Predicted power, greedy" in page


def test_report_large_tree_selects_profiles_and_focus(tmp_path: Path) -> None:
    # 1 + 3 + 45 domains: past the size where every domain gets a labelled row.
    problem = tree_problem(rows=3, racks_per_row=15)
    plans, metrics = plans_for(problem)
    index = write_report(tmp_path, problem, plans, metrics=metrics, focus="peak-sum")
    page = check_report(index)
    profiles = sorted(p.name for p in tmp_path.glob("profile-*.png"))
    # The root, the three rows, and the most loaded leaves only.
    assert profiles[:4] == [
        "profile-00-site.png",
        "profile-01-row-0.png",
        "profile-02-row-1.png",
        "profile-03-row-2.png",
    ]
    assert 4 < len(profiles) < problem.tree.size
    assert "Predicted power, peak-sum" in page


def test_report_with_cpsat_focuses_on_it(tmp_path: Path) -> None:
    problem = tree_problem(rows=1, racks_per_row=2)
    plans, metrics = plans_for(problem, ("nameplate", "greedy"))
    plans["cpsat"] = run_strategy("cpsat", problem, time_limit_s=5.0)
    metrics["cpsat"] = evaluate(problem, plans["cpsat"].assignment)
    assert best_strategy(plans, metrics) == "cpsat"
    check_report(write_report(tmp_path, problem, plans, metrics=metrics))


def test_report_escapes_names(tmp_path: Path) -> None:
    problem = tree_problem(rows=1, racks_per_row=1)
    problem = replace(problem, name="<b>x</b> & y")
    plans, metrics = plans_for(problem, ("greedy",))
    page = check_report(write_report(tmp_path, problem, plans, metrics=metrics))
    assert "&lt;b&gt;x&lt;/b&gt; &amp; y" in page and "<b>x</b>" not in page


def test_report_rejects_inconsistent_input(tmp_path: Path) -> None:
    problem = tree_problem(rows=1, racks_per_row=1)
    plans, metrics = plans_for(problem, ("greedy", "nameplate"))
    with pytest.raises(ValueError, match="same strategies"):
        write_report(tmp_path, problem, plans, metrics={"greedy": metrics["greedy"]})
    with pytest.raises(ValueError, match="at least one"):
        write_report(tmp_path, problem, {}, metrics={})
    with pytest.raises(ValueError, match="focus"):
        write_report(tmp_path, problem, plans, metrics=metrics, focus="cpsat")


def test_domain_order_is_depth_first() -> None:
    problem = tree_problem(rows=2, racks_per_row=2)
    names = [problem.tree.names[d] for d in domain_order(problem)]
    assert names == [
        "site",
        "row-0",
        "rack-0-00",
        "rack-0-01",
        "row-1",
        "rack-1-00",
        "rack-1-01",
    ]
    # The tree stores levels together; the report re-orders, it does not drop.
    assert sorted(names) == sorted(problem.tree.names)
