"""A pipeline run's graph as its record keeps it (``results["graph"]``): Mermaid text, and a PNG or
SVG picture coloured by state (matplotlib, the ``shoal[graph]`` extra, imported only to draw)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from shoal.errors import NotFoundError, ShoalError

#: Fill colour of a step by its run's state.
STATE_COLOURS = {
    "completed": "#9be29b",
    "cached": "#9cc9f0",
    "running": "#f7e08a",
    "pending": "#e6e6e6",
    "failed": "#f29a9a",
    "upstream_failed": "#f6c7a5",
    "cancelled": "#c9c9c9",
    "pruned": "#d9c3f0",
}


def graph_of(run: Any, states: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The recorded graph of pipeline run ``run`` (a Run), each step's state taken from ``states``
    (uid -> state, the steps' runs as recorded now) where given."""
    graph = (run.results or {}).get("graph")
    if not isinstance(graph, Mapping):
        raise NotFoundError(
            f"run {run.uid[:12]} of {run.function} has no pipeline graph (it is not a pipeline run, or it has not ended)"
        )
    steps = [dict(step) for step in graph.get("steps", [])]
    for step in steps:
        step["state"] = (states or {}).get(step["uid"], step.get("state", "pending"))
    return {"steps": steps, "edges": list(graph.get("edges", []))}


def mermaid(graph: Mapping[str, Any]) -> str:
    """Mermaid ``flowchart`` text: one node per step (name and state), one arrow per reference."""
    ids = {step["uid"]: f"s{index}" for index, step in enumerate(graph["steps"])}
    lines = ["flowchart LR"]
    for step in graph["steps"]:
        lines.append(f'    {ids[step["uid"]]}["{step["name"]}<br/>{step["state"]}"]:::{step["state"]}')
    for edge in graph["edges"]:
        if edge["from"] in ids and edge["to"] in ids:
            lines.append(f"    {ids[edge['from']]} -->|{edge['key']}| {ids[edge['to']]}")
    for state in sorted({step["state"] for step in graph["steps"]}):
        lines.append(f"    classDef {state} fill:{STATE_COLOURS.get(state, '#ffffff')},stroke:#555")
    return "\n".join(lines) + "\n"


def layers(graph: Mapping[str, Any]) -> dict[str, int]:
    """Each step's column: the length of the longest chain of references leading to it (steps are
    recorded in submission order, so producers come first)."""
    depth: dict[str, int] = {}
    incoming: dict[str, list[str]] = {}
    for edge in graph["edges"]:
        incoming.setdefault(edge["to"], []).append(edge["from"])
    for step in graph["steps"]:
        depth[step["uid"]] = 1 + max((depth.get(p, 0) for p in incoming.get(step["uid"], [])), default=-1)
    return depth


def draw(graph: Mapping[str, Any], path: str | os.PathLike) -> str:
    """Write a picture of the graph to ``path`` (.png or .svg); returns the path."""
    target = os.fspath(path)
    if not target.lower().endswith((".png", ".svg")):
        raise ShoalError(f"the picture's file name must end in .png or .svg, got {target!r}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import FancyBboxPatch
    except ImportError:
        raise ShoalError("drawing a graph needs matplotlib: pip install 'shoal[graph]'") from None
    depth = layers(graph)
    rows: dict[int, int] = {}
    where: dict[str, tuple[float, float]] = {}
    for step in graph["steps"]:
        column = depth[step["uid"]]
        rows[column] = rows.get(column, 0) + 1
        where[step["uid"]] = (column * 3.0, -rows[column] * 1.2)
    width = max(rows, default=0) + 1
    height = max(rows.values(), default=1)
    figure, axes = plt.subplots(figsize=(max(4.0, width * 2.6), max(2.0, height * 0.9)))
    for edge in graph["edges"]:
        if edge["from"] in where and edge["to"] in where:
            (x0, y0), (x1, y1) = where[edge["from"]], where[edge["to"]]
            axes.annotate(
                "", xy=(x1 - 1.1, y1), xytext=(x0 + 1.1, y0), arrowprops={"arrowstyle": "->", "color": "#555"}
            )
    for step in graph["steps"]:
        x, y = where[step["uid"]]
        colour = STATE_COLOURS.get(step["state"], "#ffffff")
        axes.add_patch(
            FancyBboxPatch((x - 1.1, y - 0.4), 2.2, 0.8, boxstyle="round,pad=0.05", facecolor=colour, edgecolor="#555")
        )
        axes.text(x, y, f"{step['name']}\n{step['state']}", ha="center", va="center", fontsize=8)
    axes.set_xlim(-1.5, (width - 1) * 3.0 + 1.5)
    axes.set_ylim(-height * 1.2 - 0.8, -0.2)
    axes.axis("off")
    figure.tight_layout()
    figure.savefig(target)
    plt.close(figure)
    return target
