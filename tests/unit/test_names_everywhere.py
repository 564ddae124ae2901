"""Names DPorch accepts (any but whitespace, control characters and '/') reach every output
escaped: the dashboard, graphs, log files, script modules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from porch import graph
from porch.host import load_script
from porch.logfiles import LogFileSink

pytestmark = pytest.mark.timeout(30)

STATIC = Path(__file__).resolve().parents[2] / "porch" / "static"
ODD = ['<b>&"x"', "stage.one", "1st_stage", "a#b;c", "a\\b", "-dash", ".dot", "caf\u00e9"]


def test_dashboard_writes_names_as_text_never_as_html() -> None:
    script = (STATIC / "dashboard.js").read_text(encoding="utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink


@pytest.mark.parametrize("name", ODD)
def test_mermaid_and_dot_keep_odd_names_inside_their_quotes(name: str) -> None:
    nodes = [graph.Node(name, "running", ("sink_x",)), graph.Node("sink_x", "running", ())]
    mermaid = graph.render(nodes, "mermaid")
    labels = re.findall(r'^    n\d+\["(.*)"\]$', mermaid, re.M)
    assert len(labels) == 2 and all('"' not in label for label in labels), mermaid
    dot = graph.render(nodes, "dot")
    quoted = re.findall(r'"((?:[^"\\]|\\.)*)"', dot.splitlines()[3])
    assert quoted[0].replace('\\"', '"').replace("\\\\", "\\") == name, dot


@pytest.mark.parametrize("name", ODD)
def test_log_files_take_any_valid_name(tmp_path: Path, name: str) -> None:
    sink = LogFileSink(tmp_path)
    sink.line(name, "stdout", "hello")
    sink.close()
    assert sink.path_of(name).parent == tmp_path
    assert sink.path_of(name).read_text(encoding="utf-8").endswith("stdout hello\n")


def test_script_module_names_are_identifiers_whatever_the_pipeline_name(tmp_path: Path) -> None:
    path = tmp_path / "step.py"
    path.write_text("def step():\n    return 1\n", encoding="utf-8")
    script = load_script(path, 0, "stage.one")
    assert script.module.__name__ == "porch_script_stage_one_0_step"
