"""Render the pipeline graph (`porchctl graph`) as Mermaid, Graphviz DOT or JSON.

A replicated pipeline is one node (its name, the state derived from its replicas' and how many
are in which state); its replica processes are listed in the node, not drawn as nodes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NotRequired, TypedDict

FORMATS = ("mermaid", "dot", "json")
UNKNOWN = "unknown"

# State value (porch.control.WorkerState) -> colour class; anything else is drawn as unknown.
STATE_CLASSES = {
    "running": "running",
    "starting": "waiting",
    "waiting for sources": "waiting",
    "backoff": "waiting",
    "stopping": "stopped",
    "stopped": "stopped",
    "finished": "stopped",
    "failed": "failed",
}

# Colour class -> (fill, stroke); the order is the order the classDefs are written in.
COLORS = {
    "running": ("#b7e4a8", "#2e7d32"),
    "waiting": ("#ffe08a", "#b7791f"),
    "failed": ("#f4a6a6", "#c62828"),
    "stopped": ("#dddddd", "#757575"),
    UNKNOWN: ("#ffffff", "#9e9e9e"),
}


@dataclass(frozen=True)
class Replica:
    """One replica process (NAME#TAG-K) of a replicated pipeline's node."""

    name: str
    state: str
    host: str = "local"


@dataclass(frozen=True)
class Node:
    """One pipeline in the graph: its state and the pipelines it sends to (and, when it runs
    as replicas, each replica process)."""

    name: str
    state: str
    targets: tuple[str, ...]
    host: str = "local"
    replicas: tuple[Replica, ...] = ()


class ReplicaJson(TypedDict):
    """A replica of a node in `--format json`."""

    name: str
    state: str
    host: str


class NodeJson(TypedDict):
    """A node in `--format json` (and porchd's `graph` reply); `replicas` only for a
    replicated pipeline."""

    name: str
    state: str
    host: str
    targets: list[str]
    replicas: NotRequired[list[ReplicaJson]]


EdgeJson = TypedDict("EdgeJson", {"from": str, "to": str})


class GraphJson(TypedDict):
    """The graph as `--format json` data (only real pipelines are nodes)."""

    nodes: list[NodeJson]
    edges: list[EdgeJson]


def from_result(result: Mapping[str, object]) -> list[Node]:
    """The nodes of porchd's `graph` reply; ValueError when it is not one."""
    nodes = result.get("nodes", [])
    if not isinstance(nodes, list):
        raise ValueError("graph reply: `nodes` is not a list")
    return [_node(node) for node in nodes]


def _node(raw: object) -> Node:
    if not isinstance(raw, dict) or "name" not in raw:
        raise ValueError(f"graph reply: a node without a name: {str(raw)[:80]}")
    targets, replicas = raw.get("targets", ()), raw.get("replicas", ())
    return Node(
        name=str(raw["name"]),
        state=str(raw.get("state", "")),
        targets=tuple(str(t) for t in targets) if isinstance(targets, list | tuple) else (),
        host=str(raw.get("host", "local")),
        replicas=tuple(
            Replica(str(r.get("name", "?")), str(r.get("state", "")), str(r.get("host", "local")))
            for r in (replicas if isinstance(replicas, list | tuple) else ())
            if isinstance(r, dict)
        ),
    )


def replica_summary(node: Node) -> str:
    """`3 replicas`, or `3 replicas: 2 running, 1 failed` when they are not all in the node's
    state; "" for a pipeline that is not replicated."""
    if not node.replicas:
        return ""
    states = [r.state for r in node.replicas]
    total = f"{len(states)} replica" + ("s" if len(states) != 1 else "")
    if all(state == node.state for state in states):
        return total
    counts = {state: states.count(state) for state in states}
    return total + ": " + ", ".join(f"{n} {state}" for state, n in counts.items())


def _label_parts(node: Node) -> list[str]:
    parts = [node.name, node.state]
    if node.replicas:
        parts.append(replica_summary(node))
    if node.host and node.host != "local":
        parts.append(node.host)
    return parts


def state_class(state: str) -> str:
    """The colour class of a state value."""
    return STATE_CLASSES.get(state, UNKNOWN)


def render(nodes: Sequence[Node], fmt: str) -> str:
    """The graph of `nodes` in `fmt` (one of FORMATS)."""
    renderer = RENDERERS.get(fmt)
    if renderer is None:
        raise ValueError(f"unknown graph format {fmt!r}; use one of {', '.join(FORMATS)}")
    return renderer(nodes, _missing(nodes))


def _missing(nodes: Sequence[Node]) -> list[Node]:
    """A placeholder for every target that is not among `nodes`, in order of first mention."""
    names = [node.name for node in nodes]
    if len(set(names)) != len(names):
        twice = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"duplicate pipeline names in graph: {', '.join(twice)}")
    known = set(names)
    missing: dict[str, Node] = {}
    for node in nodes:
        for target in node.targets:
            if target not in known and target not in missing:
                missing[target] = Node(target, UNKNOWN, (), host="")
    return list(missing.values())


def _edges(nodes: Sequence[Node]) -> list[tuple[str, str]]:
    """Each (from, to) once, in node then target order."""
    return list(dict.fromkeys((node.name, target) for node in nodes for target in node.targets))


# Mermaid


def _mermaid_text(text: str) -> str:
    # Mermaid's quoted labels take entity codes; '#' goes first so the codes themselves survive.
    for char, code in (("#", "#35;"), ('"', "#quot;"), ("<", "#lt;"), (">", "#gt;")):
        text = text.replace(char, code)
    return text


def _mermaid_label(node: Node) -> str:
    return "<br/>".join(_mermaid_text(part) for part in _label_parts(node))


def _mermaid(real: Sequence[Node], missing: Sequence[Node]) -> str:
    nodes = [*real, *missing]
    # Names may hold '-', which Mermaid reads as part of an edge, so nodes get ids n0, n1, ...
    ids = {node.name: f"n{i}" for i, node in enumerate(nodes)}
    absent = {node.name for node in missing}
    lines = ["flowchart LR"]
    lines += [f'    {ids[node.name]}["{_mermaid_label(node)}"]' for node in nodes]
    for source, target in _edges(real):
        arrow = "-.->" if target in absent else "-->"
        lines.append(f"    {ids[source]} {arrow} {ids[target]}")
    used = {state_class(node.state) for node in nodes}
    for cls, (fill, stroke) in COLORS.items():
        if cls in used:
            dash = ",stroke-dasharray:5 5" if cls == UNKNOWN else ""
            lines.append(f"    classDef {cls} fill:{fill},stroke:{stroke},color:#000{dash}")
    lines += [f"    class {ids[node.name]} {state_class(node.state)}" for node in nodes]
    return "\n".join(lines) + "\n"


# Graphviz DOT


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def _dot_node(node: Node, placeholder: bool) -> str:
    fill, stroke = COLORS[state_class(node.state)]
    parts = _label_parts(node)
    # The "\n" inside a DOT label is DOT's own line break, so join after quoting each part.
    label = "\\n".join(_dot_quote(part)[1:-1] for part in parts)
    style = "rounded,dashed" if placeholder else "rounded,filled"
    attrs = f'label="{label}", style="{style}", fillcolor="{fill}", color="{stroke}"'
    return f"    {_dot_quote(node.name)} [{attrs}];"


def _dot(real: Sequence[Node], missing: Sequence[Node]) -> str:
    lines = [
        "digraph porch {",
        "    rankdir=LR;",
        '    node [shape=box, fontname="Helvetica"];',
    ]
    lines += [_dot_node(node, placeholder=False) for node in real]
    lines += [_dot_node(node, placeholder=True) for node in missing]
    lines += [f"    {_dot_quote(a)} -> {_dot_quote(b)};" for a, b in _edges(real)]
    lines.append("}")
    return "\n".join(lines) + "\n"


# JSON


def to_dict(nodes: Sequence[Node]) -> GraphJson:
    """The graph as `--format json` data (also the dashboard's /api/graph)."""
    _missing(nodes)  # the same duplicate check as every format
    return _data(nodes)


def _data(real: Sequence[Node]) -> GraphJson:
    # Only real pipelines are nodes (so the JSON round-trips); an edge may point at a missing one.
    return {"nodes": [node_json(n) for n in real],
            "edges": [{"from": a, "to": b} for a, b in _edges(real)]}  # fmt: skip


def node_json(node: Node) -> NodeJson:
    """One node as `--format json` and porchd's `graph` reply write it."""
    data: NodeJson = {"name": node.name, "state": node.state, "host": node.host,
                      "targets": list(node.targets)}  # fmt: skip
    if node.replicas:
        data["replicas"] = [{"name": r.name, "state": r.state, "host": r.host}
                            for r in node.replicas]  # fmt: skip
    return data


def _json(real: Sequence[Node], missing: Sequence[Node]) -> str:
    return json.dumps(_data(real), indent=2) + "\n"


RENDERERS: dict[str, Callable[[Sequence[Node], Sequence[Node]], str]] = {
    "mermaid": _mermaid,
    "dot": _dot,
    "json": _json,
}
