"""`porchctl graph` rendering: Mermaid, DOT and JSON for the pipeline graph."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import pytest

from porch.graph import COLORS, FORMATS, Node, render, state_class

pytestmark = pytest.mark.timeout(30)

DIAMOND = [
    Node("source", "running", ("left-side", "right_side")),
    Node("left-side", "waiting for sources", ("sink",)),
    Node("right_side", "backoff", ("sink",)),
    Node("sink", "failed", ()),
]
EDGES = [
    ("source", "left-side"),
    ("source", "right_side"),
    ("left-side", "sink"),
    ("right_side", "sink"),
]

SAFE_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MERMAID_NODE = re.compile(r'    (?P<id>\S+)\["(?P<label>[^"]*)"\]')
MERMAID_EDGE = re.compile(r"    (?P<a>\S+) (?P<arrow>-->|-\.->) (?P<b>\S+)")
MERMAID_CLASSDEF = re.compile(r"    classDef (?P<cls>\w+) (?P<style>\S+(?: \S+)*)")
MERMAID_CLASS = re.compile(r"    class (?P<id>\S+) (?P<cls>\w+)")


@dataclass
class Mermaid:
    """A Mermaid flowchart taken apart line by line; any unexpected line fails the parse."""

    labels: dict[str, str] = field(default_factory=dict)
    edges: list[tuple[str, str, str]] = field(default_factory=list)
    classdefs: dict[str, str] = field(default_factory=dict)
    classes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Mermaid:
        header, *lines = text.rstrip("\n").split("\n")
        assert header == "flowchart LR"
        chart = cls()
        for line in lines:
            chart.take(line)
        return chart

    def take(self, line: str) -> None:
        if m := MERMAID_NODE.fullmatch(line):
            assert m["id"] not in self.labels, f"node id declared twice: {line}"
            self.labels[m["id"]] = m["label"]
        elif m := MERMAID_EDGE.fullmatch(line):
            assert m["a"] in self.labels and m["b"] in self.labels, f"edge before nodes: {line}"
            self.edges.append((m["a"], m["arrow"], m["b"]))
        elif m := MERMAID_CLASSDEF.fullmatch(line):
            self.classdefs[m["cls"]] = m["style"]
        elif m := MERMAID_CLASS.fullmatch(line):
            assert m["cls"] in self.classdefs, f"class used before classDef: {line}"
            self.classes[m["id"]] = m["cls"]
        else:
            raise AssertionError(f"not a line this renderer writes: {line!r}")

    def id_of(self, name: str) -> str:
        (found,) = [i for i, label in self.labels.items() if label.split("<br/>")[0] == name]
        return found


def test_formats_are_exported() -> None:
    assert FORMATS == ("mermaid", "dot", "json")


def test_unknown_format_is_rejected() -> None:
    with pytest.raises(ValueError, match="svg"):
        render(DIAMOND, "svg")


def test_duplicate_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="twice"):
        render([Node("twice", "running", ()), Node("twice", "failed", ())], "json")


def test_mermaid_diamond_has_four_nodes_and_four_edges() -> None:
    chart = Mermaid.parse(render(DIAMOND, "mermaid"))
    assert len(chart.labels) == 4
    assert len(chart.edges) == 4
    assert all(SAFE_ID.fullmatch(node_id) for node_id in chart.labels)
    named = {(chart.id_of(a), chart.id_of(b)) for a, b in EDGES}
    assert {(a, b) for a, _, b in chart.edges} == named
    assert {arrow for _, arrow, _ in chart.edges} == {"-->"}


def test_mermaid_labels_carry_name_and_state() -> None:
    chart = Mermaid.parse(render(DIAMOND, "mermaid"))
    assert sorted(chart.labels.values()) == sorted(f"{n.name}<br/>{n.state}" for n in DIAMOND)


def test_mermaid_colours_nodes_by_state() -> None:
    chart = Mermaid.parse(render(DIAMOND, "mermaid"))
    assert chart.classes == {
        chart.id_of("source"): "running",
        chart.id_of("left-side"): "waiting",
        chart.id_of("right_side"): "waiting",
        chart.id_of("sink"): "failed",
    }
    assert COLORS["running"][0] in chart.classdefs["running"]
    assert COLORS["failed"][0] in chart.classdefs["failed"]
    # Only the classes in use are defined.
    assert set(chart.classdefs) == {"running", "waiting", "failed"}


def test_mermaid_missing_target_is_a_dashed_unknown_node() -> None:
    nodes = [Node("only-one", "running", ("not-deployed",))]
    chart = Mermaid.parse(render(nodes, "mermaid"))
    ghost = chart.id_of("not-deployed")
    assert chart.labels[ghost] == "not-deployed<br/>unknown"
    assert chart.edges == [(chart.id_of("only-one"), "-.->", ghost)]
    assert chart.classes[ghost] == "unknown"
    assert "stroke-dasharray" in chart.classdefs["unknown"]


def test_mermaid_missing_target_named_twice_is_one_node() -> None:
    nodes = [Node("aaa", "running", ("gone",)), Node("bbb", "running", ("gone",))]
    chart = Mermaid.parse(render(nodes, "mermaid"))
    assert len(chart.labels) == 3
    assert len(chart.edges) == 2


def test_mermaid_escapes_quotes_and_markup_in_labels() -> None:
    nodes = [Node('say "hi" <b>#1</b>', "running", ())]
    chart = Mermaid.parse(render(nodes, "mermaid"))
    (label,) = chart.labels.values()
    assert label == "say #quot;hi#quot; #lt;b#gt;#35;1#lt;/b#gt;<br/>running"


def test_mermaid_shows_a_remote_host() -> None:
    chart = Mermaid.parse(render([Node("far-away", "running", (), host="box2")], "mermaid"))
    assert list(chart.labels.values()) == ["far-away<br/>running<br/>box2"]


@pytest.mark.parametrize(
    ("state", "cls"),
    [
        ("running", "running"),
        ("starting", "waiting"),
        ("waiting for sources", "waiting"),
        ("backoff", "waiting"),
        ("failed", "failed"),
        ("stopped", "stopped"),
        ("finished", "stopped"),
        ("stopping", "stopped"),
        ("something new", "unknown"),
    ],
)
def test_every_worker_state_has_a_colour_class(state: str, cls: str) -> None:
    assert state_class(state) == cls


def test_empty_graph_renders_in_every_format() -> None:
    assert render([], "mermaid") == "flowchart LR\n"
    assert render([], "dot").startswith("digraph porch {")
    assert json.loads(render([], "json")) == {"nodes": [], "edges": []}


def test_dot_diamond() -> None:
    text = render(DIAMOND, "dot")
    lines = text.rstrip("\n").split("\n")
    assert lines[0] == "digraph porch {"
    assert lines[-1] == "}"
    assert "    rankdir=LR;" in lines
    edges = [line for line in lines if " -> " in line]
    assert sorted(edges) == sorted(f'    "{a}" -> "{b}";' for a, b in EDGES)
    source = next(line for line in lines if line.startswith('    "source" ['))
    assert f'fillcolor="{COLORS["running"][0]}"' in source
    assert 'label="source\\nrunning"' in source
    sink = next(line for line in lines if line.startswith('    "sink" ['))
    assert f'fillcolor="{COLORS["failed"][0]}"' in sink


def test_dot_quotes_names_and_dashes_missing_targets() -> None:
    text = render([Node('odd"name\\x', "stopped", ("missing-one",))], "dot")
    assert '"odd\\"name\\\\x" -> "missing-one";' in text
    missing = next(line for line in text.split("\n") if line.startswith('    "missing-one" ['))
    assert 'style="rounded,dashed"' in missing


def test_json_round_trips() -> None:
    nodes = [*DIAMOND, Node("remote-1", "stopped", ("source",), host="box2")]
    text = render(nodes, "json")
    assert text.startswith('{\n  "nodes": [')  # indent 2
    data = json.loads(text)
    back = [Node(n["name"], n["state"], tuple(n["targets"]), n["host"]) for n in data["nodes"]]
    assert back == nodes
    assert [(e["from"], e["to"]) for e in data["edges"]] == [*EDGES, ("remote-1", "source")]


def test_json_keeps_missing_targets_as_edges_only() -> None:
    data = json.loads(render([Node("alone", "running", ("gone",))], "json"))
    assert [n["name"] for n in data["nodes"]] == ["alone"]
    assert data["edges"] == [{"from": "alone", "to": "gone"}]
