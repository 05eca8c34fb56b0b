"""The HTML report of ``powercap carbon report``."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from placement.carbon.emissions import (
    root_name,
)
from placement.carbon.intensity import (
    SlotWindow,
)
from placement.problem import Problem
from powercap.carbon_setup import Side
from powercap.report import require_matplotlib


def write_carbon_report(
    directory: Path,
    problem: Problem,
    forecast: np.ndarray[Any, np.dtype[np.float64]],
    *,
    window: SlotWindow,
    oblivious: Side,
    aware: Side,
    payload: dict[str, Any],
    domains: list[str] | None,
) -> Path:
    """``carbon.html``, ``carbon-caps.png`` and ``carbon-emissions.png`` in ``directory``."""
    require_matplotlib()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    _caps_chart(
        out / "carbon-caps.png",
        problem,
        forecast=forecast,
        window=window,
        aware=aware,
        names=domains or [root_name(problem)],
    )
    _emissions_chart(
        out / "carbon-emissions.png", problem, window=window, oblivious=oblivious, aware=aware
    )
    index = out / "carbon.html"
    index.write_text(_html(problem, payload), encoding="utf-8")
    return index


def _stepped(values: np.ndarray[Any, np.dtype[np.float64]]) -> Any:
    """``values`` with the last repeated, so a post-step line reaches the period's end."""
    return np.append(values, values[-1])


def _caps_chart(
    path: Path,
    problem: Problem,
    *,
    forecast: np.ndarray[Any, np.dtype[np.float64]],
    window: SlotWindow,
    aware: Side,
    names: list[str],
) -> None:
    """The intensity forecast over the period and, for the first four of ``names``, the
    scenario's cap, the carbon-aware cap and the aware plan's load."""
    from powercap.report import _figure, _hour_ticks, _save

    grid = problem.grid
    edges = np.arange(grid.slots + 1) * grid.step_hours
    fig = _figure(10.0, 4.2)
    ax = fig.subplots()
    ax.step(edges, _stepped(forecast), where="post", color="#2b6cb0", lw=2, label="intensity")
    ax.set_ylabel("gCO2e/kWh", color="#2b6cb0")
    ax.set_ylim(0, float(forecast.max()) * 1.15 if forecast.max() > 0 else 1.0)
    _hour_ticks(ax, problem)
    right = ax.twinx()
    for name in names[:4]:
        d = problem.tree.index[name]
        right.step(
            edges,
            _stepped(problem.tree.caps[d] / 1000),
            where="post",
            color="#888",
            ls="--",
            label=f"{name} cap (scenario)",
        )
        right.step(
            edges,
            _stepped(aware.problem.tree.caps[d] / 1000),
            where="post",
            color="#111",
            lw=2,
            label=f"{name} cap (carbon-aware)",
        )
        load = aware.plan.assignment.load(aware.problem)[d] / 1000
        right.step(
            edges, _stepped(load), where="post", color="#2f9e44", label=f"{name} load (aware)"
        )
    right.set_ylabel("kW")
    low = min(float(aware.problem.tree.caps[problem.tree.index[n]].min()) for n in names[:4])
    right.set_ylim(
        0,
        max(float(problem.tree.caps[problem.tree.index[n]].max()) for n in names[:4]) / 1000 * 1.08,
    )
    ax.set_title(
        f"{problem.name}: {'mean daily ' if window.slots > grid.slots else ''}intensity and "
        f"cap schedule (lowest cap {low / 1000:,.0f} kW)",
        fontsize=11,
    )
    handles = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], loc="lower left", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def _emissions_chart(
    path: Path, problem: Problem, *, window: SlotWindow, oblivious: Side, aware: Side
) -> None:
    """Cumulative site emissions of both plans over the accounting window."""
    from powercap.report import _figure, _save

    fig = _figure(10.0, 4.2)
    ax = fig.subplots()
    hours = np.arange(window.slots + 1) * problem.grid.step_hours
    for side, label, color in (
        (oblivious, "carbon-oblivious", "#888"),
        (aware, "carbon-aware", "#2f9e44"),
    ):
        # Within a slot the rate is constant, so a straight line between slot edges is exact.
        running = np.concatenate(([0.0], np.cumsum(side.emissions.kg[0])))
        ax.plot(
            hours,
            running,
            color=color,
            lw=2,
            label=f"{label}: {side.emissions.site_kg:,.0f} kg",
        )
    ax.set_xlabel(f"hours from {window.label().split(' + ')[0]}")
    ax.set_ylabel("cumulative kg CO2e (site)")
    ax.set_xlim(0, float(hours[-1]))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    ax.set_title(f"{problem.name}: emissions over {window.hours:g} h", fontsize=11)
    _save(fig, path)


def _html(problem: Problem, payload: dict[str, Any]) -> str:
    esc = html.escape
    rows = []
    for key, label in (
        ("hosted", "hosted replicas"),
        ("energy_kwh", "energy kWh"),
        ("emissions_kg", "emissions kg CO2e"),
        ("cost_eur", "EUA cost EUR"),
    ):
        o, a = payload["oblivious"].get(key), payload["aware"].get(key)
        if o is None:
            continue
        rows.append(f"<tr><td>{label}</td><td>{o:,}</td><td>{a:,}</td></tr>")
    s = payload["savings"]
    saved = f"{s['kg']:,} kg" + ("" if s["eur"] is None else f", {s['eur']:,} EUR")
    intensity = payload["intensity"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>powercap carbon — {esc(problem.name)}</title>
<style>body {{ font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; }}
table {{ border-collapse: collapse; }} td, th {{ padding: .25em .8em; border-bottom: 1px solid
#e6e9ef; text-align: right; }} td:first-child {{ text-align: left; }}
img {{ max-width: 100%; }}</style></head><body>
<h1>powercap carbon report — {esc(problem.name)}</h1>
<p>{esc(intensity["window"])}, intensity from {esc(intensity["source"])}: mean
{intensity["mean_g_per_kwh"]:.0f} g/kWh. Strategy {esc(payload["strategy"])}; price
{esc(str(payload["price"]))}.</p>
<table><tr><th></th><th>carbon-oblivious</th><th>carbon-aware</th></tr>{"".join(rows)}</table>
<p>Saved: {esc(saved)}; hosted difference {s["hosted_difference"]:+d} replicas.</p>
<img src="carbon-caps.png" alt="intensity and cap schedule">
<img src="carbon-emissions.png" alt="cumulative emissions">
</body></html>
"""
